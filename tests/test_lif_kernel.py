"""Fused multi-step LIF kernel vs its PyTorch reference: values and gradients, every reset mode.

On the CPU the Triton kernel runs under ``TRITON_INTERPRET=1``, which Triton reads when a kernel is
decorated, i.e. at import. To leave the rest of the pytest process untouched, the CPU parity check
runs this file as a script in a subprocess (``python tests/test_lif_kernel.py`` registers the
interpreted Triton kernels as the CPU implementation of the ``htaf::lif_*`` ops there and prints
one JSON line per case); the GPU test runs the same cases in-process on CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# (name, leaky, decay_input, v_reset, detach_reset, surrogate, T, N, learn_k)
CASES = [
    ("lif_hard", True, True, 0.0, False, "htaf", 5, 37, False),
    ("lif_hard_detach", True, True, 0.0, True, "htaf", 4, 33, False),
    ("lif_soft", True, True, None, False, "htaf", 4, 29, False),
    ("lif_soft_detach", True, True, None, True, "sigmoid", 3, 31, False),
    ("lif_nodecay_hard_vr", True, False, -0.25, False, "atan", 4, 30, False),
    ("lif_nodecay_soft", True, False, None, False, "htaf", 3, 17, False),
    ("if_hard", False, True, 0.0, False, "htaf", 4, 19, False),
    ("if_soft_detach", False, True, None, True, "atan", 3, 23, False),
    ("plif_hard", True, True, 0.0, False, "htaf", 4, 41, True),
    ("plif_nodecay_soft", True, False, None, False, "sigmoid", 3, 27, True),
    ("T1", True, True, 0.0, False, "htaf", 1, 7, True),
    ("N1_T8", True, True, 0.0, False, "htaf", 8, 1, False),
    ("blocks_T3", True, True, 0.0, False, "htaf", 3, 1500, False),
    # T > MAX_T_RECOMPUTE: the forward saves H and the second backward kernel reads it
    ("long_T_hard", True, True, 0.0, False, "htaf", 19, 23, False),
    ("long_T_plif_soft", True, False, None, False, "sigmoid", 18, 1100, True),
    ("long_T_if_detach", False, True, -0.3, True, "atan", 17, 9, False),
    # every surrogate runs in the kernel through the shared device function (sign-native ones
    # with their ½ step factor)
    ("erf", True, True, 0.0, False, "erf", 3, 13, False),
    ("approx_sign", True, True, 0.0, False, "approx_sign", 3, 13, False),
    ("swish_sign_plif", True, True, None, False, "swish_sign", 3, 13, True),
    ("ste_unclipped", True, False, 0.0, True, "ste", 3, 13, False),
    ("fast_sigmoid", False, True, 0.0, False, "fast_sigmoid", 3, 13, False),
]
DTYPES = ("float32", "bfloat16")
BF16_CASES = {"lif_hard", "lif_soft_detach", "if_hard", "plif_hard", "T1", "long_T_hard"}  # bf16: a subset
PAIRS = [(c[0], d) for c in CASES for d in DTYPES if d == "float32" or c[0] in BF16_CASES]


def reference(x, v0, k, *, v_threshold, v_reset, decay_input, detach_reset, surrogate, leaky):
    """The PyTorch reference: a neuron's own time loop (``backend="torch"``) with decay ``k``."""
    from htaf.nn import IFNode, LIFNode

    kw = {"v_threshold": v_threshold, "v_reset": v_reset, "detach_reset": detach_reset,
          "surrogate": surrogate, "step_mode": "m", "backend": "torch"}
    node = LIFNode(decay_input=decay_input, **kw) if leaky else IFNode(**kw)
    node.decay = lambda: k
    node.v = v0
    return node(x), node.v


def run_case(case, dtype_name: str, device: str = "cpu") -> dict:
    """Kernel vs reference for one case; returns the max abs errors (and the scale of the grads)."""
    from htaf import kernels
    from htaf.surrogates import get_surrogate

    name, leaky, decay, v_reset, detach, sname, T, N, learn_k = case
    dtype = getattr(torch, dtype_name)
    surrogate = get_surrogate(sname)
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    x = (torch.randn(T, 2, N, generator=g) * 1.5 + 0.6).to(device=device, dtype=dtype)
    v0 = (torch.randn(2, N, generator=g) * 0.5).to(device=device, dtype=dtype)
    gs = torch.randn(T, 2, N, generator=g).to(device=device, dtype=dtype)
    gv = torch.randn(2, N, generator=g).to(device=device, dtype=dtype)
    kw = {"v_threshold": 1.0, "v_reset": v_reset, "decay_input": decay, "detach_reset": detach,
          "leaky": leaky}
    out = {}
    for backend in ("fused", "torch"):
        xi = x.clone().requires_grad_()
        vi = v0.clone().requires_grad_()
        w = torch.tensor(0.3, device=device, requires_grad=learn_k)
        k = w.sigmoid() if learn_k else 1 / 2.5
        if backend == "fused":
            s, v = kernels.lif_multistep(
                xi, vi, k, kind=surrogate.kernel_id, scale=surrogate.grad_scale(False),
                params=[torch.tensor(p, device=device) for p in surrogate.params], **kw)
        else:
            s, v = reference(xi, vi, k, surrogate=surrogate, **kw)
        loss = (s.float() * gs.float()).sum() + (v.float() * gv.float()).sum()
        wrt = [xi, vi] + ([w] if learn_k else [])
        grads = torch.autograd.grad(loss, wrt)
        out[backend] = (s, v, grads)
    (s1, v1, g1), (s2, v2, g2) = out["fused"], out["torch"]
    return {
        "case": name, "dtype": dtype_name,
        "spikes_binary": bool(((s1 == 0) | (s1 == 1)).all()),
        "spike_dtype": str(s1.dtype).replace("torch.", ""),
        "spike_mismatch": float((s1 != s2).float().mean()),
        "v_err": float((v1.detach().float() - v2.detach().float()).abs().max()),
        "v_scale": float(v2.detach().float().abs().max()),
        "grad_err": [float((a.float() - b.float()).abs().max()) for a, b in zip(g1, g2)],
        "grad_scale": [float(b.float().abs().max()) for b in g2],
    }


def check(res: dict) -> None:
    """Assertions shared by the CPU (interpreted) and GPU runs."""
    assert res["spikes_binary"]
    assert res["spike_dtype"] == res["dtype"]
    if res["dtype"] == "float32":
        assert res["spike_mismatch"] == 0.0
        assert res["v_err"] < 1e-5
        for err, scale in zip(res["grad_err"], res["grad_scale"]):
            assert err <= 1e-5 * max(1.0, scale), res
    else:  # both compute in fp32 from the same bf16 input; only the output rounding differs
        assert res["spike_mismatch"] == 0.0
        assert res["v_err"] <= 1e-2 * max(1.0, res["v_scale"])
        for err, scale in zip(res["grad_err"], res["grad_scale"]):
            assert err <= 2e-2 * max(1.0, scale), res


# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interpreted_results():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", HTAF_NO_NATIVE="1",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          check=False, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(r["case"], r["dtype"]): r for r in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.parametrize("case, dtype", PAIRS)
def test_kernel_matches_reference_interpreted(interpreted_results, case, dtype):
    check(interpreted_results[(case, dtype)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_reference_cuda(case, dtype):
    check(run_case(case, dtype, "cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lifnode_uses_kernel_on_cuda_large():
    from htaf.nn import LIFNode

    x = torch.randn(8, 64, 128, 32, 32, device="cuda", requires_grad=True)
    fused = LIFNode(step_mode="m")
    ref = LIFNode(step_mode="m", backend="torch")
    assert fused._use_fused(x)
    s1, s2 = fused(x), ref(x)
    assert torch.equal(s1, s2)
    g1, = torch.autograd.grad(s1.sum(), x)
    g2, = torch.autograd.grad(s2.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_kernels_compile_for_hopper():
    """The interpreter is more lenient than the compiler: compile every kernel to a cubin for
    sm_90a (no GPU needed), with the constexpr branches that differ most."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from htaf.kernels import triton_lif as lif

    if not hasattr(lif._lif_fwd_kernel, "arg_names"):
        pytest.skip("kernels were built for the interpreter in this process")
    target = GPUTarget("cuda", 90, 32)
    f32, bf16, i64 = "*fp32", "*bf16", "i64"
    scalars = {"v_th": "fp32", "v_reset": "fp32", "scale": "fp32", "p0_ptr": f32, "p1_ptr": f32,
               "p2_ptr": f32}

    def build(fn, types, constexprs, warps):
        sig = {n: types.get(n, scalars.get(n, bf16)) for n in fn.arg_names if n not in constexprs}
        try:
            triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=target,
                           options={"num_warps": warps})
        except RuntimeError as e:  # no NVIDIA backend/ptxas in this environment
            if "ptxas" in str(e) or "backend" in str(e).lower():
                pytest.skip(f"cannot compile for CUDA here: {e}")
            raise

    build(lif._lif_fwd_kernel, {"k_ptr": f32, "h_ptr": f32, "N": i64, "T": "i32"},
          {"HARD": True, "LEAKY": True, "DECAY_INPUT": True, "STORE_H": True, "BLOCK": 1024}, 8)
    common = {"LEAKY": True, "DECAY_INPUT": True, "DETACH": False, "KIND": 0, "NEED_GK": True}
    build(lif._lif_bwd_kernel, {"k_ptr": f32, "gk_ptr": f32, "N": i64},
          dict(T=4, T_PAD=4, HARD=False, BLOCK=1024, **common), 8)
    build(lif._lif_bwd_stored_kernel, {"k_ptr": f32, "gk_ptr": f32, "h_ptr": f32, "N": i64,
                                       "T": "i32"}, dict(HARD=True, BLOCK=1024, **common), 8)


_TRANSPOSED_GRAD = """
import torch
import tests.test_lif_kernel as t
t.register_interpreted_kernels()
from htaf import kernels
torch.manual_seed(0)
x = torch.randn(4, 6) * 1.5 + 0.6
w = torch.randn(6, 4)
grads = []
for backend in ("fused", "torch"):
    xi = x.clone().requires_grad_()
    p = [torch.tensor(0.5), torch.tensor(4.0), torch.tensor(1.0)]
    kw = dict(v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=False)
    if backend == "fused":
        s, _ = kernels.lif_multistep(xi, torch.zeros(6), 0.5, kind=0, params=p, **kw)
    else:
        s, _ = t.reference(xi, torch.zeros(6), 0.5, surrogate="htaf", leaky=True, **kw)
    (s.t() * w).sum().backward()  # dL/dS arrives transposed: strides (1, T)
    grads.append(xi.grad)
print(float((grads[0] - grads[1]).abs().max()))
"""


def register_interpreted_kernels():
    """In a process started with TRITON_INTERPRET=1: the Triton LIF kernels as the CPU
    implementation of the ``htaf::lif_*`` ops (for the lifetime of the process)."""
    from htaf.kernels import triton_lif

    lib = torch.library.Library("htaf", "FRAGMENT")
    torch.library.register_kernel("htaf::lif_forward", "cpu", triton_lif.triton_lif_forward,
                                  lib=lib)
    torch.library.register_kernel("htaf::lif_backward", "cpu", triton_lif.triton_lif_backward,
                                  lib=lib)
    register_interpreted_kernels.lib = lib


def test_kernel_backward_with_non_contiguous_grad_interpreted():
    """Regression: dL/dX was allocated with dL/dS's (transposed) strides but written row-major,
    so a consumer that permutes the spikes (e.g. [T, B, C] → [B, C, T] for a temporal conv)
    got scrambled input gradients from the fused kernel."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", HTAF_NO_NATIVE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _TRANSPOSED_GRAD], env=env, capture_output=True,
                          text=True, check=False, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-5


def test_kernel_row_offsets_are_int64_for_int32_n():
    """Regression: Triton types N as i32 whenever N < 2^31, and ``t * N`` was then an i32 product
    that overflows once T·N ≥ 2^31 (e.g. T=8 over [64, 256, 128, 128]): out-of-bounds accesses
    on CUDA. Every multiply of the kernels' index math must be 64-bit."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from htaf.kernels import triton_lif as lif

    if not hasattr(lif._lif_fwd_kernel, "arg_names"):
        pytest.skip("kernels were built for the interpreter in this process")
    scalars = {"v_th": "fp32", "v_reset": "fp32", "scale": "fp32", "N": "i32", "T": "i32",
               "k_ptr": "*fp32", "gk_ptr": "*fp32", "h_ptr": "*fp32", "p0_ptr": "*fp32",
               "p1_ptr": "*fp32", "p2_ptr": "*fp32"}
    common = {"LEAKY": True, "DECAY_INPUT": True, "DETACH": False, "KIND": 0,
              "NEED_GK": True}
    kernels = [
        (lif._lif_fwd_kernel, {"HARD": True, "LEAKY": True, "DECAY_INPUT": True,
                               "STORE_H": True, "BLOCK": 1024}),
        (lif._lif_bwd_kernel, dict(T=4, T_PAD=4, HARD=False, BLOCK=256, **common)),
        (lif._lif_bwd_stored_kernel, dict(HARD=True, BLOCK=1024, **common)),
    ]
    for fn, constexprs in kernels:
        sig = {n: scalars.get(n, "*bf16") for n in fn.arg_names if n not in constexprs}
        src = ASTSource(fn, sig, constexprs=constexprs)
        try:
            ttir = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 8}).asm["ttir"]
        except RuntimeError as e:  # no NVIDIA backend/ptxas in this environment
            if "ptxas" in str(e) or "backend" in str(e).lower():
                pytest.skip(f"cannot compile for CUDA here: {e}")
            raise
        narrow = [line.strip() for line in ttir.splitlines()
                  if "arith.muli" in line and line.rstrip().split(" loc(")[0].endswith(": i32")]
        assert not narrow, (fn.__name__, narrow)


def test_fused_backend_needs_a_kernel():
    from htaf.nn import LIFNode

    x = torch.zeros(4, 3)
    node = LIFNode(step_mode="m", backend="fused", surrogate="erf")
    if node._use_fused(x) if node.backend != "fused" else False:
        pytest.skip("a native CPU kernel serves this input")
    from htaf import kernels

    if kernels.fused(x):
        pytest.skip("a native CPU kernel serves this input")
    with pytest.raises(ValueError, match="backend='auto'"):
        node(x)
    with pytest.raises(ValueError, match="backend"):
        LIFNode(backend="cupy")


if __name__ == "__main__":  # the interpreted run (see the module docstring)
    torch.set_num_threads(1)
    register_interpreted_kernels()
    by_name = {c[0]: c for c in CASES}
    for name, d in PAIRS:
        print(json.dumps(run_case(by_name[name], d)), flush=True)
