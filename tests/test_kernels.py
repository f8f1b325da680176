"""The fused Triton kernels against their PyTorch reference, and the ops they serve.

The kernels run on CPU tensors under the Triton interpreter. ``TRITON_INTERPRET`` is read by
``triton.jit`` when a kernel is *defined*, so the ``tk``/``tb`` fixtures import private copies of
the Triton modules with the variable set, then restore the environment and ``sys.modules``: the
rest of the process (and the real CUDA kernels in the ``gpu`` tests) is unaffected.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch

import htaf
from htaf import functional as F
from htaf import kernels
from htaf.surrogates import HTAFSurrogate, compute_dtype, get_surrogate, list_surrogates

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PARAMS = [(0.5, 4.0, 1.0), (0.1, 8.0, 3.0), (1.5, 0.0, 0.5)]
SPECIAL = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e30, -1e30, 65504.0, -65504.0, 1e-30,
           -1e-30, 3.0e38, -3.0e38, 6e-8, -6e-8, 1.0, -1.0, 20.0, -20.0]

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


_TRITON_MODULES = ("htaf.kernels.triton_surrogates", "htaf.kernels.triton_elementwise",
                   "htaf.kernels.triton_lif")


def _import_interpreted():
    """Fresh imports of the Triton modules with ``TRITON_INTERPRET=1``; the process's own modules
    (``sys.modules`` entries and ``htaf.kernels`` attributes) and environment are restored."""
    pytest.importorskip("triton")
    saved_env = os.environ.get("TRITON_INTERPRET")
    saved = {name: (sys.modules.pop(name, None), getattr(kernels, name.rpartition(".")[2], None))
             for name in _TRITON_MODULES}
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        return [importlib.import_module(name) for name in _TRITON_MODULES]
    finally:
        if saved_env is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved_env
        for name, (module, attribute) in saved.items():
            short = name.rpartition(".")[2]
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
            if attribute is None:
                delattr(kernels, short)
            else:
                setattr(kernels, short, attribute)


@pytest.fixture(scope="module")
def interpreted():
    return _import_interpreted()


@pytest.fixture(scope="module")
def tk(interpreted):
    """``triton_elementwise`` with interpreted kernels (CPU tensors)."""
    return interpreted[1]


# ----------------------------------------------------------------------------- references
def _p(*values):
    """Hyperparameters as the 0-d tensors the kernels take."""
    return [torch.tensor(float(v)) for v in values]


def ref_forward(x, a, b, g):
    """HTAF(x) from the class formula, computed as the surrogate's smooth mode does."""
    return HTAFSurrogate.primitive(x.to(compute_dtype(x.dtype)), a, b, g).to(x.dtype)


def ref_backward(grad, x, kind, params, scale=1.0):
    """``grad · scale · g'(x)`` from the surrogate class's own ``derivative`` (the reference)."""
    cls = type(get_surrogate(kind))
    d = cls.derivative(x.to(compute_dtype(x.dtype)), *params) * scale
    return (grad.to(d.dtype) * d).to(grad.dtype)


def ref_step(x, signed):
    on = x >= 0
    y = torch.where(on, 1.0, -1.0).to(x.dtype) if signed else on.to(x.dtype)
    return torch.where(torch.isnan(x), x, y)


def fwd(tk, x, a, b, g):
    return tk.triton_htaf_forward(x, _p(a, b, g))


def bwd(tk, grad, x, a, b, g, scale=1.0):
    return tk.triton_surrogate_backward(grad, x, 0, _p(a, b, g), scale)


def _tol(dtype):
    """Half types: one rounding of a float32 result that may differ from the reference's in
    the last float32 bits, so allow one unit in the last place of the storage type."""
    return {torch.float32: {"rtol": 2e-6, "atol": 1e-30},
            torch.bfloat16: {"rtol": 2**-7, "atol": 1e-30},
            torch.float16: {"rtol": 2**-10, "atol": 6e-8}}[dtype]


def _close(actual, expected, dtype=None):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, equal_nan=True, **_tol(dtype or actual.dtype))


def _randn(n, dtype, scale=4.0):
    return (torch.randn(n) * scale).to(dtype)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 4097, 50_003])
def test_forward_backward_parity_sizes(tk, dtype, n):
    x, g = _randn(n, dtype), _randn(n, dtype, 1.0)
    _close(fwd(tk, x, 0.5, 4.0, 1.0), ref_forward(x, 0.5, 4.0, 1.0))
    _close(bwd(tk, g, x, 0.5, 4.0, 1.0, 2.0),
           ref_backward(g, x, "htaf", (0.5, 4.0, 1.0), 2.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("abg", PARAMS)
def test_parity_parameters_and_scales(tk, dtype, abg):
    x, g = _randn(3001, dtype), _randn(3001, dtype, 1.0)
    _close(fwd(tk, x, *abg), ref_forward(x, *abg))
    for scale in (1.0, 0.5, 2.0):
        _close(bwd(tk, g, x, *abg, scale), ref_backward(g, x, "htaf", abg, scale))


def test_float32_accuracy_against_float64(tk):
    """Over the whole useful range the fp32 kernel is as accurate as fp32 allows: in the tails
    z ≈ −16 turns the input's half-ulp into ~1e-6 relative error of e^z, for any fp32 code."""
    x = torch.linspace(-40.0, 40.0, 40_001)
    x64 = x.double()
    exact_y = ref_forward(x64, 0.5, 4.0, 1.0)
    exact_d = HTAFSurrogate.derivative(x64, 0.5, 4.0, 1.0)
    y = fwd(tk, x, 0.5, 4.0, 1.0).double()
    d = bwd(tk, torch.ones_like(x), x, 0.5, 4.0, 1.0).double()
    torch.testing.assert_close(y, exact_y, rtol=2e-6, atol=0)
    torch.testing.assert_close(d, exact_d, rtol=2e-6, atol=0)
    torch.testing.assert_close(y, exact_y, rtol=0, atol=1.2e-7)  # and within 2 ulps of 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, α·3e38
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_every_dtype(tk, dtype):
    x = torch.tensor(SPECIAL).to(dtype)  # 1e30 → inf in fp16, 3e38 → inf in half types
    g = torch.ones_like(x)
    y = fwd(tk, x, 0.5, 4.0, 1.0)
    d = bwd(tk, g, x, 0.5, 4.0, 1.0, 1.0)
    _close(y, ref_forward(x, 0.5, 4.0, 1.0))
    _close(d, ref_backward(g, x, "htaf", (0.5, 4.0, 1.0), 1.0))
    nan, pos, neg = x.isnan(), x == math.inf, x == -math.inf
    assert y[nan].isnan().all() and d[nan].isnan().all()
    assert (y[pos] == 1).all() and (y[neg] == 0).all() and (d[pos | neg] == 0).all()
    finite = ~nan
    assert torch.isfinite(y[finite]).all() and torch.isfinite(d[finite]).all()
    assert ((y[finite] >= 0) & (y[finite] <= 1)).all() and (d[finite] >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("signed", [False, True])
def test_step_exactly_equals_reference(tk, dtype, signed):
    x = torch.cat([torch.tensor(SPECIAL), torch.randn(5001)]).to(dtype)
    y, r = tk.triton_step(x, signed), ref_step(x, signed)
    assert y.dtype == dtype
    assert torch.equal(y.isnan(), x.isnan())
    assert torch.equal(y.nan_to_num(7.0), r.nan_to_num(7.0))
    assert set(y[~x.isnan()].tolist()) <= ({-1.0, 1.0} if signed else {0.0, 1.0})
    assert y[x == 0].eq(1).all()  # both +0 and −0


def test_empty_and_scalar(tk):
    for shape in [(0,), (3, 0, 5), ()]:
        x = torch.randn(shape)
        for out, expected in [(fwd(tk, x, 0.5, 4.0, 1.0),
                               ref_forward(x, 0.5, 4.0, 1.0)),
                              (bwd(tk, x, x, 0.5, 4.0, 1.0),
                               ref_backward(x, x, "htaf", (0.5, 4.0, 1.0))),
                              (tk.triton_step(x, True), ref_step(x, True))]:
            assert out.shape == expected.shape
            _close(out, expected)


def _layouts(dtype):
    base = torch.randn(6, 8, 10, 12).to(dtype)
    return {
        "transposed": base[0, 0].t(),                                  # dense, permuted
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "sliced_step": base[:, ::2, 1:, ::3],                          # holes
        "sliced_rows": base[1:4],                                      # dense, offset start
        "expanded": torch.randn(1, 12).to(dtype).expand(7, 12),        # stride 0
        "size_one_dims": base[2:3, :, 4:5].transpose(0, 2),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(_layouts(torch.float32)))
def test_non_contiguous_inputs(tk, dtype, layout):
    x = _layouts(dtype)[layout]
    y = fwd(tk, x, 0.5, 4.0, 1.0)
    expected = ref_forward(x, 0.5, 4.0, 1.0)
    _close(y, expected)
    assert y.stride() == torch.empty_like(x).stride()  # the fake impl's promise
    s = tk.triton_step(x, False)
    assert torch.equal(s, ref_step(x, False)) and s.stride() == y.stride()
    g = torch.randn(x.shape).to(dtype)  # contiguous grad, possibly permuted x
    d = bwd(tk, g, x, 0.5, 4.0, 1.0, 2.0)
    _close(d, ref_backward(g, x, "htaf", (0.5, 4.0, 1.0), 2.0))
    assert d.stride() == torch.empty_like(g).stride()
    d = bwd(tk, x, g, 0.5, 4.0, 1.0, 2.0)  # and the other way round
    _close(d, ref_backward(x, g, "htaf", (0.5, 4.0, 1.0), 2.0))


def test_inputs_are_not_modified_and_views_share_nothing(tk):
    base = torch.randn(64, 33)
    x = base.t()
    before = base.clone()
    y = fwd(tk, x, 0.5, 4.0, 1.0)
    bwd(tk, x, x, 0.5, 4.0, 1.0)
    tk.triton_step(x, True)
    assert torch.equal(base, before) and y.data_ptr() != base.data_ptr()


def test_mixed_grad_and_input_dtypes(tk):
    x = _randn(2049, torch.bfloat16)
    g = torch.randn(2049)
    d = bwd(tk, g, x, 0.5, 4.0, 1.0)
    assert d.dtype == torch.float32
    _close(d, ref_backward(g, x, "htaf", (0.5, 4.0, 1.0)))


def test_int64_offsets_path(tk, monkeypatch):
    """Tensors of ≥ 2^31 elements switch the kernels to int64 offsets; force that path on a
    small tensor (the real size is covered by the GPU test)."""
    monkeypatch.setattr(tk, "_INT32_LIMIT", 16)
    assert tk._needs_int64(10, 4096)
    x, g = _randn(9001, torch.float16), _randn(9001, torch.float16, 1.0)
    _close(fwd(tk, x, 0.5, 4.0, 1.0), ref_forward(x, 0.5, 4.0, 1.0))
    _close(bwd(tk, g, x, 0.5, 4.0, 1.0), ref_backward(g, x, "htaf", (0.5, 4.0, 1.0)))
    assert torch.equal(tk.triton_step(x, True), ref_step(x, True))


def test_launcher_input_errors(tk):
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        fwd(tk, torch.arange(4), 0.5, 4.0, 1.0)
    with pytest.raises(TypeError, match="x must be"):
        tk.triton_step(torch.zeros(3, dtype=torch.float64), False)
    with pytest.raises(ValueError, match="same shape"):
        bwd(tk, torch.zeros(3), torch.zeros(4), 0.5, 4.0, 1.0)


# ----------------------------------------------------------------------------- every surrogate
KINDS = list_surrogates()


def _kind_params(kind):
    """The class's defaults and a second value of its first hyperparameter (ste: unclipped)."""
    s = get_surrogate(kind)
    values = s.hyperparameters()
    if not values:
        return [()]
    name, default = next(iter(values.items()))
    other = s.replace(**{name: 0.37 * default + 0.1}).params
    extra = [s.replace(clip=math.inf).params] if kind == "ste" else []
    return [s.params, other, *extra]


def _kind_inputs(dtype, n=3001):
    x = torch.cat([torch.tensor(SPECIAL + [0.5, -0.5, 0.25, 0.04, 1.0 / 3]), torch.randn(n) * 2])
    return x.to(dtype)


def test_the_kernel_knows_every_surrogate_class():
    from htaf.kernels.triton_surrogates import KERNEL_IDS

    assert sorted(get_surrogate(k).kernel_id for k in KINDS) == list(KERNEL_IDS)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_surrogate_kernel_parity(tk, kind, dtype):
    """The shared device function of each surrogate equals its class's PyTorch derivative."""
    x = _kind_inputs(dtype)
    g = torch.randn(x.shape).to(dtype)
    # fp32: near swish_sign's sign change (2 − βx·tanh(βx/2) = 0) the result cancels, so allow an
    # absolute error of a few ulps of the derivative's peak (β = 5 there).
    tol = dict(_tol(dtype), atol=1e-6) if dtype == torch.float32 else _tol(dtype)
    kid = get_surrogate(kind).kernel_id
    for params in _kind_params(kind):
        for scale in (1.0, 0.5, 2.0):
            out = tk.triton_surrogate_backward(g, x, kid, _p(*params), scale)
            expected = ref_backward(g, x, kind, params, scale)
            assert out.dtype == expected.dtype
            torch.testing.assert_close(out, expected, equal_nan=True, **tol)


def test_surrogate_kernel_layouts_and_errors(tk):
    x = _layouts(torch.bfloat16)["sliced_step"]
    g = torch.randn(x.shape).to(torch.bfloat16).transpose(0, 1).contiguous().transpose(0, 1)
    d = tk.triton_surrogate_backward(g, x, 2, _p(2.0), 1.0)
    _close(d, ref_backward(g, x, "atan", (2.0,), 1.0))
    assert d.stride() == g.stride()
    assert tk.triton_surrogate_backward(torch.empty(0), torch.empty(0), 7, _p(2.0)).numel() == 0
    with pytest.raises(ValueError, match="kernel id"):
        tk.triton_surrogate_backward(x, x, 99, _p(1.0))
    with pytest.raises(ValueError, match="one-element tensors"):
        tk.triton_surrogate_backward(x, x, 2, [torch.ones(2)])


# ----------------------------------------------------------------------------- the ops
def test_backends_can_be_switched_off(monkeypatch):
    """``HTAF_DISABLE_TRITON`` / ``HTAF_NO_NATIVE`` force the PyTorch references."""
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("HTAF_DISABLE_TRITON", "1")
    monkeypatch.setenv("HTAF_NO_NATIVE", "1")
    assert not kernels._triton_ready() and not kernels._native_ready()
    assert not kernels.fused(torch.zeros(3))


@pytest.mark.parametrize("capability, used", [((6, 0), False), ((7, 5), True)])
def test_gpus_too_old_for_triton_use_the_reference(monkeypatch, capability, used):
    """A P100 (sm_60) is below what Triton compiles for: the library must run the reference
    there instead of failing in the Triton compiler."""
    monkeypatch.setattr(kernels, "_state", {"triton": True})
    monkeypatch.setattr(kernels, "_capable", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    assert kernels._fused("cuda", torch.device("cuda:0"), torch.float32) is used
    assert not kernels._fused("cuda", torch.device("cuda:0"), torch.float64)


def _saved_bytes(fn, x):
    """Tensors autograd keeps for backward while ``fn(x)`` is alive."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fn(x)
    return y, saved


@pytest.mark.parametrize("surrogate", list_surrogates())
@pytest.mark.parametrize("how", ["heaviside", "sign", "smooth"])
def test_backward_saves_only_the_input(surrogate, how):
    x = torch.randn(4, 5, requires_grad=True)
    if how == "smooth":
        fn = lambda t: F.binarize(t, surrogate, mode="smooth")
    else:
        fn = lambda t: getattr(F, how)(t, surrogate)
    y, saved = _saved_bytes(fn, x)
    if how == "smooth" and surrogate == "htaf" and kernels.saves_derivative(x):
        # the CPU kernels save HTAF'(x) instead (one tensor the size of x): cheaper than
        # recomputing it there (tests/test_cpu_kernels.py)
        assert len(saved) == 1 and saved[0] is not x and saved[0].shape == x.shape
    else:
        assert len(saved) == 1 and saved[0] is x
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_htaf_smooth_saves_only_the_input():
    x = torch.randn(3, 7, requires_grad=True)
    _, saved = _saved_bytes(lambda t: F.htaf(t, 0.5, 4.0, 2.0), x)
    assert len(saved) == 1 and saved[0].shape == x.shape
    assert (saved[0] is x) != kernels.saves_derivative(x)   # x, or HTAF'(x) on the CPU


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, 16), torch.nn.Linear(16, 8)
        self.smooth, self.spike = htaf.HTAF(0.5, 4.0, 1.0), htaf.Heaviside("htaf")
        self.sign = htaf.Sign("htaf", beta=8.0)

    def forward(self, x):
        h = self.smooth(self.fc1(x))
        return self.spike(self.fc2(h)) + self.sign(self.fc2(h) - 0.1) * h[:, :8]


@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo + AOTAutograd through the custom ops' fake impls and _Binarize
    pytest.param("inductor", marks=pytest.mark.slow),  # + C++ codegen: ~30 s on 2 cores
])
def test_torch_compile_matches_eager(backend):
    torch._dynamo.reset()
    net = _Net()
    x = torch.randn(32, 6)
    eager_out = net(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(net.parameters()))
    compiled = torch.compile(net, backend=backend, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_annealed_buffers_do_not_recompile():
    """α, β, γ are buffers: changing them in place (what Anneal does every epoch) is new data for
    a compiled model, not a new graph."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    net = _Net()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(net, backend=counter, fullgraph=True)
    anneal = htaf.Anneal(net, gamma=(1.0, 30.0))
    x = torch.randn(8, 6)
    for progress in (0.0, 0.3, 0.7, 1.0):
        anneal.set_progress(progress)
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
        expected = net(x)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        for a, b in zip(grads, torch.autograd.grad(expected.square().sum(),
                                                   list(net.parameters()))):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float(net.smooth.gamma) == 30.0
    assert counter.frame_count == 1


# ----------------------------------------------------------------------------- CUDA
def _cuda_tol(dtype):
    # GPU exp/div are a few ulps off the CPU's; fp32 gets 1e-5, half types one storage ulp.
    return {"rtol": 1e-5, "atol": 1e-30} if dtype == torch.float32 else _tol(dtype)


def _needs_triton(x):
    if not kernels.fused(x):
        pytest.skip("Triton kernels are off (HTAF_DISABLE_TRITON set or Triton missing)")


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 1023, 1_000_003])
def test_cuda_parity(dtype, n):
    x = torch.cat([torch.tensor(SPECIAL), torch.randn(n) * 4]).to(dtype).cuda()
    _needs_triton(x)
    g = torch.randn(x.shape).to(dtype).cuda()
    xc, gc = x.cpu(), g.cpu()
    tol = _cuda_tol(dtype)
    p = [t.cuda() for t in _p(0.5, 4.0, 1.0)]
    torch.testing.assert_close(kernels.htaf_forward(x, p).cpu(), ref_forward(xc, 0.5, 4.0, 1.0),
                               equal_nan=True, **tol)
    torch.testing.assert_close(kernels.surrogate_backward(g, x, 0, p, 2.0).cpu(),
                               ref_backward(gc, xc, "htaf", (0.5, 4.0, 1.0), 2.0), equal_nan=True,
                               **tol)
    for signed in (False, True):
        y = kernels.step(x, signed).cpu()
        assert torch.equal(y.nan_to_num(7.0), ref_step(xc, signed).nan_to_num(7.0))


@gpu
@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_surrogate_parity(kind, dtype):
    x = _kind_inputs(dtype, 100_003).cuda()
    _needs_triton(x)
    g = torch.randn(x.shape).to(dtype).cuda()
    kid = get_surrogate(kind).kernel_id
    for params in _kind_params(kind):
        out = kernels.surrogate_backward(g, x, kid, [t.cuda() for t in _p(*params)], 2.0).cpu()
        expected = ref_backward(g.cpu(), x.cpu(), kind, params, 2.0)
        torch.testing.assert_close(out, expected, equal_nan=True, **_cuda_tol(dtype))


@gpu
@needs_cuda
@pytest.mark.parametrize("layout", list(_layouts(torch.float32)))
def test_cuda_non_contiguous(layout):
    x = _layouts(torch.bfloat16)[layout].cuda()
    _needs_triton(x)
    y = kernels.htaf_forward(x, [t.cuda() for t in _p(0.5, 4.0, 1.0)])
    assert y.stride() == torch.empty_like(x).stride()
    torch.testing.assert_close(y.cpu(), ref_forward(x.cpu(), 0.5, 4.0, 1.0),
                               **_cuda_tol(torch.bfloat16))


@gpu
@needs_cuda
def test_cuda_more_than_2_31_elements():
    """2^31 + 5 float16 elements (4 GiB): int64 offsets, and > 2^31 bytes."""
    n = 2**31 + 5
    if torch.cuda.mem_get_info()[0] < 3 * 2 * n + 2**30:
        pytest.skip("not enough free GPU memory for three 4 GiB tensors")
    x = torch.empty(n, dtype=torch.float16, device="cuda")
    _needs_triton(x)
    x[:2**20].normal_().mul_(4)
    x[-2**20:].normal_().mul_(4)
    x[2**20:-2**20].fill_(1.5)
    p = [t.cuda() for t in _p(0.5, 4.0, 1.0)]
    y = kernels.htaf_forward(x, p)
    for part in (slice(0, 2**20), slice(n - 2**20, n), slice(n // 2, n // 2 + 4)):
        torch.testing.assert_close(y[part].cpu(), ref_forward(x[part].cpu(), 0.5, 4.0, 1.0),
                                   **_cuda_tol(torch.float16))
    del y
    d = kernels.surrogate_backward(x, x, 0, p, 1.0)
    tail = slice(n - 2**20, n)
    torch.testing.assert_close(d[tail].cpu(), ref_backward(x[tail].cpu(), x[tail].cpu(), "htaf",
                                                           (0.5, 4.0, 1.0)),
                               **_cuda_tol(torch.float16))
    del d
    s = kernels.step(x, True)
    assert torch.equal(s[tail].cpu(), ref_step(x[tail].cpu(), True))


@gpu
@needs_cuda
def test_cuda_graph_capture_with_annealed_buffers():
    """A captured graph reads the module's hyperparameter buffers at replay: annealing γ in place
    between replays changes the result without a new capture."""
    act = htaf.Heaviside("htaf").cuda()
    static_x = torch.randn(1 << 16, device="cuda", requires_grad=True)
    _needs_triton(static_x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up: compile the kernels outside the capture
        act(static_x).sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_x.grad = None
    with torch.cuda.graph(graph):
        y = act(static_x)
        (gx,) = torch.autograd.grad(y.sum(), static_x)
    with torch.no_grad():
        static_x.copy_(torch.randn_like(static_x) * 3)
    act.gamma = 5.0
    graph.replay()
    torch.cuda.synchronize()
    xc = static_x.detach().cpu()
    assert torch.equal(y.detach().cpu(), ref_step(xc, False))
    torch.testing.assert_close(gx.cpu(), ref_backward(torch.ones_like(xc), xc, "htaf",
                                                      (0.5, 4.0, 5.0)), rtol=1e-5, atol=0)


@gpu
@needs_cuda
def test_cuda_autocast_bf16():
    lin = torch.nn.Linear(64, 64).cuda()
    act = htaf.HTAF().cuda()
    x = torch.randn(128, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = lin(x)
        h.retain_grad()
        y = act(h)
    assert h.dtype == y.dtype == torch.bfloat16
    y.float().sum().backward()
    torch.testing.assert_close(y.cpu(), ref_forward(h.detach().cpu(), 0.5, 4.0, 1.0),
                               **_cuda_tol(torch.bfloat16))
    expected = ref_backward(torch.ones_like(h).cpu(), h.detach().cpu(), "htaf", (0.5, 4.0, 1.0))
    torch.testing.assert_close(h.grad.cpu(), expected, **_cuda_tol(torch.bfloat16))
    assert torch.isfinite(lin.weight.grad).all()


@gpu
@needs_cuda
def test_cuda_torch_compile_matches_eager():
    torch._dynamo.reset()
    net = _Net().cuda()
    x = torch.randn(64, 6, device="cuda")
    eager_out = net(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(net.parameters()))
    out = torch.compile(net, fullgraph=True)(x)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- benchmark
def test_benchmark_smoke_run_on_cpu(tmp_path, capsys):
    """The benchmark script runs end to end (no JSON unless asked) and reports the fused ops
    saving exactly the input for backward, the plain formula more."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU the benchmark is run for real, not smoke-tested")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_activation.py"
    spec = importlib.util.spec_from_file_location("bench_activation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    report = bench.main(["--size", "1000", "--reps", "2", "--skip-compile", "--dtypes",
                         "fp32,bf16", "--json", str(out)])
    text = capsys.readouterr().out
    assert "CPU" in text and "smoke run" in text and "fused htaf" in text
    assert out.exists() and set(report["copy_ms"]) == {"float32", "bfloat16"}
    ratios = {(r["impl"], r["dtype"]): r["saved_ratio"] for r in report["results"]}
    for dtype in ("float32", "bfloat16"):
        assert ratios[("fused htaf", dtype)] == ratios[("fused heaviside", dtype)] == 1.0
        assert ratios[("eager htaf", dtype)] > 1.0
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 for r in report["results"])


def test_interpreted_copies_do_not_leak(interpreted):
    """The fixture's interpreted modules stay private: the package keeps its real kernels."""
    import htaf.kernels.triton_elementwise as real

    assert real is not interpreted[1]
    assert type(interpreted[1]._htaf_fwd_kernel).__name__ == "InterpretedFunction"
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert type(real._htaf_fwd_kernel).__name__ == "JITFunction"
