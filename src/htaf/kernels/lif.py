r"""Fused multi-step LIF/IF neuron: the whole time loop in one Triton kernel, BPTT in another.

The neuron (SpikingJelly's equations; ``k = 1/τ``, ``R = v_reset`` for a hard reset, 0 for a soft one)::

    charge   H[t] = V[t−1] + k·(X[t] − (V[t−1] − R))      LIF, decay_input=True
             H[t] = V[t−1] − k·(V[t−1] − R) + X[t]        LIF, decay_input=False
             H[t] = V[t−1] + X[t]                         IF
    fire     S[t] = 1[H[t] − V_th ≥ 0]                    backward: surrogate'(H[t] − V_th)
    reset    V[t] = H[t]·(1 − S[t]) + v_reset·S[t]        hard (v_reset is a number)
             V[t] = H[t] − V_th·S[t]                      soft (v_reset=None)

``detach_reset`` cuts the gradient of S through the reset.

Kernel design (memory-bound elementwise recurrence over T):

* **forward**: one program owns ``BLOCK`` neurons, loops over t with V in registers, reads X[t] and
  writes S[t] once: 2 tensor-passes over ``[T, N]``. Nothing but S and the final V is written.
* **backward**: saves **only X** (and the initial V, ``N`` values). The backward kernel re-runs the
  forward recurrence in registers, keeping H[0..T−1] of its neurons in a ``[T, BLOCK]`` register
  tile, then runs the reverse BPTT loop reading dL/dS[t] and writing dL/dX[t]: 3 passes.
  Total 5 passes of ``T·N`` elements, exactly the "memory ideal" of the benchmark (a copy ×2.5).
  The alternative — writing H in the forward and reading it back — costs a 6th pass (T·N·4 bytes
  in fp32: 134 MB for T=8, [64,128,32,32]) and, in bf16, would round H before the surrogate;
  recomputing costs ~10 flops an element, which the memory-bound kernel gets for free.
  The register tile and the unrolled loops grow with T, so for T > 16 (``MAX_T_RECOMPUTE``) the
  forward also writes H (fp32) and a second backward kernel reads it in a plain reverse loop
  (6 passes; X is then not kept by this op).
* The surrogate's derivative is computed in-kernel: HTAF (α, β, γ), sigmoid (α) or atan (α), chosen
  by a constexpr; any other surrogate uses the reference path.
* On the CPU the same ops run the native C kernels of :mod:`htaf.kernels.cpu` (any built-in
  surrogate, float32/float64/float16/bfloat16, H always recomputed), registered as the ops' CPU
  implementation unless ``TRITON_INTERPRET=1``, where the interpreted Triton kernels serve CPU
  tensors (that is how the tests run them without a GPU).
* fp32, bf16 and fp16 inputs; the math always runs in fp32; S has the input's dtype.
* PLIF's learnable k: d L/dk = Σ_t dL/dH[t] · ∂H[t]/∂k with ∂H/∂k = (H[t] − V[t−1])/k
  (decay_input) or R − V[t−1]; each program writes one partial sum (deterministic, no atomics).

Entry point: :func:`lif_multistep` (``backend="triton"``, ``"cpu"`` or ``"torch"``); the fused
paths are the ``torch.library`` custom op ``torch.ops.htaf.lif_multistep`` with a registered
autograd formula.
"""

from __future__ import annotations

import os

import torch

from . import cpu

try:  # Triton is optional: the reference serves every device without it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "MAX_T_RECOMPUTE",
    "cpu_supports",
    "kernel_surrogate",
    "lif_multistep",
    "lif_multistep_reference",
    "lif_step_reference",
    "triton_supports",
]

MAX_T_RECOMPUTE = 16  # longer sequences save H (fp32) instead: the register tile and the
                      # unrolled loops grow with T (compile time 0.5 s at T=8, 9 s at 16, minutes at 64)
_TRITON_SURROGATES = (0, 1, 2)   # htaf, sigmoid, atan (ids of htaf.kernels.cpu.KINDS)
#: Under the Triton interpreter the Triton kernels serve CPU tensors (the tests' way to run them).
_CPU_KERNELS = os.environ.get("TRITON_INTERPRET", "") != "1"


def kernel_surrogate(surrogate) -> tuple[int, float, float, float] | None:
    """``(id, a, b, g)`` for a built-in surrogate (``id`` as in :data:`htaf.kernels.cpu.KINDS`,
    its raw hyperparameters padded with zeros), else ``None``."""
    found = cpu.surrogate_kind(surrogate)
    if found is None:
        return None
    kid, params = found
    a, b, g = (*params, 0.0, 0.0, 0.0)[:3]
    return kid, a, b, g


def triton_supports(x_seq: torch.Tensor, surrogate) -> bool:
    """Whether the fused Triton kernel can run this call (else use the reference)."""
    ks = kernel_surrogate(surrogate)
    return (HAS_TRITON and ks is not None and ks[0] in _TRITON_SURROGATES
            and x_seq.dim() >= 1 and x_seq.shape[0] >= 1
            and x_seq.dtype in (torch.float32, torch.bfloat16, torch.float16))


def cpu_supports(x_seq: torch.Tensor, surrogate) -> bool:
    """Whether the native CPU kernel can run this call (else use the reference)."""
    return (_CPU_KERNELS and x_seq.device.type == "cpu" and x_seq.dim() >= 1
            and x_seq.shape[0] >= 1 and kernel_surrogate(surrogate) is not None
            and cpu.supports(x_seq))


# ---------------------------------------------------------------------------------------------
# PyTorch reference (autograd through the loop): the definition the kernel is tested against.
# ---------------------------------------------------------------------------------------------
def lif_step_reference(x: torch.Tensor, v: torch.Tensor, k, *, v_threshold: float,
                       v_reset: float | None, decay_input: bool, detach_reset: bool, surrogate,
                       leaky: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One time step: returns ``(S[t], V[t])`` from ``X[t]`` and ``V[t−1]`` (autograd-able).

    ``k`` = 1/τ (float or 0-d tensor, ignored when ``leaky=False``: an IF neuron).
    """
    from ..functional import heaviside  # late import: htaf.functional imports htaf.kernels

    r = 0.0 if v_reset is None else v_reset
    if not leaky:
        h = v + x
    elif decay_input:
        h = v + (x - (v - r)) * k
    else:
        h = v - (v - r) * k + x
    s = heaviside(h - v_threshold, surrogate)
    s_r = s.detach() if detach_reset else s
    if v_reset is None:
        v_new = h - v_threshold * s_r
    else:
        v_new = h * (1.0 - s_r) + v_reset * s_r
    return s, v_new


def lif_multistep_reference(x_seq: torch.Tensor, v_init: torch.Tensor, k, *, v_threshold: float,
                            v_reset: float | None, decay_input: bool, detach_reset: bool,
                            surrogate, leaky: bool = True, store_v_seq: bool = False):
    """Loop of :func:`lif_step_reference` over ``x_seq`` ``[T, ...]``.

    Returns ``(S [T, ...], V[T−1], V_seq or None)``; math in fp32 for half inputs, S in x's dtype.
    """
    dtype = x_seq.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    v = v_init.to(work)
    spikes, vs = [], []
    for t in range(x_seq.shape[0]):
        s, v = lif_step_reference(x_seq[t].to(work), v, k, v_threshold=v_threshold,
                                  v_reset=v_reset, decay_input=decay_input,
                                  detach_reset=detach_reset, surrogate=surrogate, leaky=leaky)
        spikes.append(s.to(dtype))
        if store_v_seq:
            vs.append(v)
    v_seq = torch.stack(vs).to(v_init.dtype) if store_v_seq else None
    return torch.stack(spikes), v.to(v_init.dtype), v_seq


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _charge(v, x, k, r, LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr):
        if LEAKY:
            if DECAY_INPUT:
                h = v + (x - (v - r)) * k
            else:
                h = v - (v - r) * k + x
        else:
            h = v + x
        return h

    @triton.jit
    def _reset(h, s, v_th, v_reset, HARD: tl.constexpr):
        if HARD:
            v = h * (1.0 - s) + v_reset * s
        else:
            v = h - v_th * s
        return v

    @triton.jit
    def _surrogate_grad(u, a, b, g, SURROGATE: tl.constexpr):
        if SURROGATE == 0:  # HTAF: σ(z)σ(−z)(α + βγ sech²(γu)), z = αu + β tanh(γu)
            gu = g * u
            e = tl.exp(-2.0 * tl.abs(gu))
            th = (1.0 - e) / (1.0 + e)
            th = tl.where(gu < 0, -th, th)
            z = a * u + b * th
            d = (1.0 / (1.0 + tl.exp(-z))) * (1.0 / (1.0 + tl.exp(z)))
            d = d * (a + b * g * (4.0 * e / ((1.0 + e) * (1.0 + e))))
        elif SURROGATE == 1:  # sigmoid: α σ(αu) σ(−αu)
            z = a * u
            d = a * (1.0 / (1.0 + tl.exp(-z))) * (1.0 / (1.0 + tl.exp(z)))
        else:  # atan: (α/2) / (1 + (π/2 α u)²)
            w = 1.5707963267948966 * a * u
            d = (0.5 * a) / (1.0 + w * w)
        return d

    @triton.jit
    def _lif_fwd_kernel(x_ptr, v0_ptr, k_ptr, s_ptr, vlast_ptr, h_ptr, N, T, v_th, v_reset,
                        HARD: tl.constexpr, LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr,
                        STORE_H: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        n64 = tl.cast(N, tl.int64)  # row stride: t·N in int32 overflows once T·N ≥ 2^31
        k = tl.load(k_ptr).to(tl.float32)
        r = v_reset if HARD else 0.0
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        for t in range(T):
            base = t * n64
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            h = _charge(v, x, k, r, LEAKY, DECAY_INPUT)
            s = (h >= v_th).to(tl.float32)
            tl.store(s_ptr + base + offs, s.to(s_ptr.dtype.element_ty), mask=mask)
            if STORE_H:
                tl.store(h_ptr + base + offs, h, mask=mask)
            v = _reset(h, s, v_th, v_reset, HARD)
        tl.store(vlast_ptr + offs, v.to(vlast_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bptt_step(h, gs, gv, k, v_th, v_reset, a, b, g, HARD: tl.constexpr,
                   LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr, DETACH: tl.constexpr,
                   SURROGATE: tl.constexpr):
        """One reverse step: from dL/dS[t] (``gs``) and dL/dV[t] (``gv``) to dL/dX[t],
        dL/dV[t−1] and dL/dH[t]."""
        sg = _surrogate_grad(h - v_th, a, b, g, SURROGATE)
        s = (h >= v_th).to(tl.float32)
        if HARD:
            dvdh = 1.0 - s
            if not DETACH:
                dvdh += (v_reset - h) * sg
        else:
            dvdh = tl.zeros_like(h) + 1.0
            if not DETACH:
                dvdh -= v_th * sg
        gh = gs * sg + gv * dvdh
        if LEAKY:
            if DECAY_INPUT:
                gx = gh * k
            else:
                gx = gh
            gv_prev = gh * (1.0 - k)
        else:
            gx = gh
            gv_prev = gh
        return gx, gv_prev, gh

    @triton.jit
    def _lif_bwd_kernel(gs_ptr, gvlast_ptr, x_ptr, v0_ptr, k_ptr, gx_ptr, gv0_ptr, gk_ptr, N,
                        v_th, v_reset, a, b, g,
                        T: tl.constexpr, T_PAD: tl.constexpr, HARD: tl.constexpr,
                        LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr, DETACH: tl.constexpr,
                        SURROGATE: tl.constexpr, NEED_GK: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        n64 = tl.cast(N, tl.int64)  # row stride: t·N in int32 overflows once T·N ≥ 2^31
        k = tl.load(k_ptr).to(tl.float32)
        r = v_reset if HARD else 0.0
        tt = tl.arange(0, T_PAD)[:, None]
        v0 = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # 1) recompute H[0..T-1] from X into a register tile (X is the only saved sequence)
        hs = tl.zeros((T_PAD, BLOCK), dtype=tl.float32)
        v = v0
        for step in tl.static_range(T):
            x = tl.load(x_ptr + step * n64 + offs, mask=mask, other=0.0).to(tl.float32)
            h = _charge(v, x, k, r, LEAKY, DECAY_INPUT)
            hs = tl.where(tt == step, h[None, :], hs)
            v = _reset(h, (h >= v_th).to(tl.float32), v_th, v_reset, HARD)
        # 2) reverse-time BPTT; gv = dL/dV[t]
        gv = tl.load(gvlast_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gk = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in tl.static_range(T):
            t = T - 1 - i
            h = tl.sum(tl.where(tt == t, hs, 0.0), axis=0)
            gs = tl.load(gs_ptr + t * n64 + offs, mask=mask, other=0.0).to(tl.float32)
            gx, gv, gh = _bptt_step(h, gs, gv, k, v_th, v_reset, a, b, g, HARD, LEAKY,
                                    DECAY_INPUT, DETACH, SURROGATE)
            tl.store(gx_ptr + t * n64 + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
            if NEED_GK:
                if t == 0:
                    vprev = v0
                else:
                    hp = tl.sum(tl.where(tt == t - 1, hs, 0.0), axis=0)
                    vprev = _reset(hp, (hp >= v_th).to(tl.float32), v_th, v_reset, HARD)
                if DECAY_INPUT:
                    dhdk = (h - vprev) / k
                else:
                    dhdk = r - vprev
                gk += tl.where(mask, gh * dhdk, 0.0)
        tl.store(gv0_ptr + offs, gv.to(gv0_ptr.dtype.element_ty), mask=mask)
        if NEED_GK:
            tl.store(gk_ptr + pid, tl.sum(gk, axis=0))

    @triton.jit
    def _lif_bwd_stored_kernel(gs_ptr, gvlast_ptr, h_ptr, v0_ptr, k_ptr, gx_ptr, gv0_ptr, gk_ptr,
                               N, T, v_th, v_reset, a, b, g, HARD: tl.constexpr,
                               LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr,
                               DETACH: tl.constexpr, SURROGATE: tl.constexpr,
                               NEED_GK: tl.constexpr, BLOCK: tl.constexpr):
        """BPTT for long sequences (T > MAX_T_RECOMPUTE): reads the H saved by the forward."""
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        n64 = tl.cast(N, tl.int64)  # row stride: t·N in int32 overflows once T·N ≥ 2^31
        k = tl.load(k_ptr).to(tl.float32)
        r = v_reset if HARD else 0.0
        v0 = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gv = tl.load(gvlast_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gk = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in range(T):
            t = T - 1 - i
            h = tl.load(h_ptr + t * n64 + offs, mask=mask, other=0.0)
            gs = tl.load(gs_ptr + t * n64 + offs, mask=mask, other=0.0).to(tl.float32)
            gx, gv, gh = _bptt_step(h, gs, gv, k, v_th, v_reset, a, b, g, HARD, LEAKY,
                                    DECAY_INPUT, DETACH, SURROGATE)
            tl.store(gx_ptr + t * n64 + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
            if NEED_GK:
                hp = tl.load(h_ptr + (t - 1) * n64 + offs, mask=mask & (t > 0), other=0.0)
                vp = _reset(hp, (hp >= v_th).to(tl.float32), v_th, v_reset, HARD)
                vprev = tl.where(t > 0, vp, v0)
                if DECAY_INPUT:
                    dhdk = (h - vprev) / k
                else:
                    dhdk = r - vprev
                gk += tl.where(mask, gh * dhdk, 0.0)
        tl.store(gv0_ptr + offs, gv.to(gv0_ptr.dtype.element_ty), mask=mask)
        if NEED_GK:
            tl.store(gk_ptr + pid, tl.sum(gk, axis=0))


_FWD_BLOCK = 1024


def _bwd_block(t_pad: int) -> int:
    # the H tile holds T_PAD·BLOCK fp32 values: keep it ≈ 4096 per program (32/thread at 4 warps)
    return max(64, min(1024, 4096 // t_pad))


def _num_warps(block: int) -> int:
    return 4 if block <= 512 else 8


# ---------------------------------------------------------------------------------------------
# torch.library ops (the Triton path), with autograd
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("htaf::lif_multistep", mutates_args=())
def _lif_op(x: torch.Tensor, v0: torch.Tensor, k: torch.Tensor, v_threshold: float,
            v_reset: float, hard: bool, leaky: bool, decay_input: bool, detach_reset: bool,
            surrogate_id: int, a: float, b: float, g: float, store_h: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward over ``x`` ``[T, N]`` (contiguous), ``v0`` ``[N]``, ``k`` ``[1]`` fp32.

    Returns S, the last V and, when ``store_h`` (long sequences), H in fp32 (else an empty tensor).
    """
    T, N = x.shape
    s = torch.empty_like(x)
    v_last = torch.empty_like(v0)
    h = torch.empty((T, N) if store_h else (0,), device=x.device, dtype=torch.float32)
    if N == 0:
        return s, v_last.copy_(v0), h
    grid = (triton.cdiv(N, _FWD_BLOCK),)
    _lif_fwd_kernel[grid](x, v0, k, s, v_last, h, N, T, v_threshold, v_reset, HARD=hard,
                          LEAKY=leaky, DECAY_INPUT=decay_input, STORE_H=store_h,
                          BLOCK=_FWD_BLOCK, num_warps=_num_warps(_FWD_BLOCK))
    return s, v_last, h


@_lif_op.register_fake
def _(x, v0, k, v_threshold, v_reset, hard, leaky, decay_input, detach_reset, surrogate_id, a, b,
      g, store_h):
    h = x.new_empty(tuple(x.shape) if store_h else (0,), dtype=torch.float32)
    return torch.empty_like(x), torch.empty_like(v0), h


@torch.library.custom_op("htaf::lif_multistep_backward", mutates_args=())
def _lif_bwd_op(gs: torch.Tensor, gv_last: torch.Tensor, x: torch.Tensor, h: torch.Tensor,
                v0: torch.Tensor, k: torch.Tensor, v_threshold: float, v_reset: float,
                hard: bool, leaky: bool, decay_input: bool, detach_reset: bool,
                surrogate_id: int, a: float, b: float, g: float, need_gk: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BPTT in one kernel: returns (dL/dx ``[T, N]``, dL/dv0 ``[N]``, dL/dk ``[1]`` fp32).

    Recomputes H from ``x`` when ``h`` is empty (T ≤ MAX_T_RECOMPUTE), else reads ``h``.
    """
    T, N = gs.shape
    gs = gs.contiguous()  # the kernels index [T, N] row-major: gx must be laid out so too,
    gx = torch.empty_like(gs, memory_format=torch.contiguous_format)  # whatever gs's strides
    gv0 = torch.empty_like(v0)
    if N == 0:
        return gx, gv0, torch.zeros(1, device=gs.device, dtype=torch.float32)
    common = {"HARD": hard, "LEAKY": leaky, "DECAY_INPUT": decay_input, "DETACH": detach_reset,
                  "SURROGATE": surrogate_id, "NEED_GK": need_gk}
    if h.numel() == 0:
        t_pad = triton.next_power_of_2(T)
        block = _bwd_block(t_pad)
        n_prog = triton.cdiv(N, block)
        gk_part = torch.empty(n_prog if need_gk else 1, device=gs.device, dtype=torch.float32)
        _lif_bwd_kernel[(n_prog,)](
            gs, gv_last.contiguous(), x, v0, k, gx, gv0, gk_part, N,
            v_threshold, v_reset, a, b, g, T=T, T_PAD=t_pad, BLOCK=block,
            num_warps=_num_warps(block), **common)
    else:
        block = _FWD_BLOCK
        n_prog = triton.cdiv(N, block)
        gk_part = torch.empty(n_prog if need_gk else 1, device=gs.device, dtype=torch.float32)
        _lif_bwd_stored_kernel[(n_prog,)](
            gs, gv_last.contiguous(), h, v0, k, gx, gv0, gk_part, N, T,
            v_threshold, v_reset, a, b, g, BLOCK=block, num_warps=_num_warps(block), **common)
    gk = gk_part.sum().reshape(1) if need_gk else torch.zeros(1, device=gs.device,
                                                                dtype=torch.float32)
    return gx, gv0, gk


@_lif_bwd_op.register_fake
def _(gs, gv_last, x, h, v0, k, v_threshold, v_reset, hard, leaky, decay_input, detach_reset,
      surrogate_id, a, b, g, need_gk):
    return (torch.empty_like(gs, memory_format=torch.contiguous_format), torch.empty_like(v0),
            gs.new_empty(1, dtype=k.dtype))


def _setup_context(ctx, inputs, output):
    x, v0, k, *params = inputs
    store_h = params[-1]
    h = output[2]
    # Save the least: X (the layer's input, already alive) and N initial potentials; H is
    # recomputed in the backward kernel. Long sequences save H instead and drop X.
    if store_h:
        ctx.save_for_backward(x.new_empty((0,)), h, v0, k)
    else:
        ctx.save_for_backward(x, h, v0, k)
    ctx.params = params[:-1]
    ctx.n_params = len(params)
    ctx.need_gk = k.requires_grad
    ctx.x_shape = x.shape


def _backward(ctx, gs, gv_last, _gh):
    x, h, v0, k = ctx.saved_tensors
    if gs is None:
        gs = x.new_zeros(ctx.x_shape) if x.numel() else h.new_zeros(ctx.x_shape)
    if gv_last is None:
        gv_last = torch.zeros_like(v0)
    gx, gv0, gk = _lif_bwd_op(gs, gv_last, x, h, v0, k, *ctx.params, ctx.need_gk)
    return (gx, gv0, gk if ctx.need_gk else None) + (None,) * ctx.n_params


_lif_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# The CPU implementation of the same ops: htaf.kernels.cpu (H always recomputed, never stored)
# ---------------------------------------------------------------------------------------------
def _cpu_params(surrogate_id: int, a: float, b: float, g: float) -> tuple[float, ...]:
    return (a, b, g)[:len(cpu.KINDS[cpu._NAMES[surrogate_id]][1])]


def _cpu_lif(x, v0, k, v_threshold, v_reset, hard, leaky, decay_input, detach_reset,
             surrogate_id, a, b, g, store_h):
    if store_h:
        raise ValueError("the CPU LIF kernel recomputes H: call it with store_h=False")
    s, v_last = cpu.lif_forward(x, v0, float(k), v_threshold, v_reset, hard, leaky, decay_input)
    return s, v_last, x.new_empty((0,), dtype=torch.float32)


def _cpu_lif_backward(gs, gv_last, x, h, v0, k, v_threshold, v_reset, hard, leaky, decay_input,
                      detach_reset, surrogate_id, a, b, g, need_gk):
    gx, gv0, gk = cpu.lif_backward(gs, gv_last.to(v0.dtype), x, v0, float(k), v_threshold,
                                   v_reset, hard, leaky, decay_input, detach_reset, surrogate_id,
                                   _cpu_params(surrogate_id, a, b, g), need_gk)
    return gx, gv0, gk.to(k.dtype)


if _CPU_KERNELS:
    _lif_op.register_kernel("cpu")(_cpu_lif)
    _lif_bwd_op.register_kernel("cpu")(_cpu_lif_backward)


def lif_multistep(x_seq: torch.Tensor, v_init: torch.Tensor, k, *, v_threshold: float = 1.0,
                  v_reset: float | None = 0.0, decay_input: bool = True,
                  detach_reset: bool = False, surrogate=None, leaky: bool = True,
                  backend: str = "triton"):
    """Multi-step LIF (``leaky=True``) or IF neuron over ``x_seq`` ``[T, ...]``.

    Args:
        x_seq: input current, ``[T, ...]``, fp32/bf16/fp16.
        v_init: membrane potential before t = 0, shape ``x_seq.shape[1:]``, dtype of ``x_seq``.
        k: 1/τ, a float or a one-element tensor (may require grad: PLIF).
        backend: ``"triton"`` (fused kernels; needs a surrogate the kernel knows: htaf, sigmoid,
            atan), ``"cpu"`` (the native CPU kernels, any built-in surrogate, float64 too) or
            ``"torch"`` (the reference loop).

    Returns ``(S [T, ...] in x's dtype, V after the last step)``.
    """
    from ..surrogates import get_surrogate

    surrogate = get_surrogate("htaf" if surrogate is None else surrogate)
    if backend == "torch":
        s, v, _ = lif_multistep_reference(x_seq, v_init, k, v_threshold=v_threshold,
                                          v_reset=v_reset, decay_input=decay_input,
                                          detach_reset=detach_reset, surrogate=surrogate,
                                          leaky=leaky)
        return s, v
    if backend not in ("triton", "cpu"):
        raise ValueError(f"backend must be 'triton', 'cpu' or 'torch', got {backend!r}")
    if backend == "cpu" and not cpu_supports(x_seq, surrogate):
        raise ValueError(f"the native CPU LIF kernel needs CPU tensors, T >= 1, a float dtype, a "
                         f"built-in surrogate and a working C compiler; got {x_seq.device}, "
                         f"T={x_seq.shape[0]}, {x_seq.dtype}, surrogate {surrogate.name!r} "
                         f"({cpu.backend_error() or 'compiled'}; use backend='torch')")
    if backend == "triton" and not triton_supports(x_seq, surrogate):
        raise ValueError(f"the fused LIF kernel needs Triton, T >= 1, a float dtype and "
                         f"an htaf/sigmoid/atan surrogate; got T={x_seq.shape[0]}, "
                         f"{x_seq.dtype}, surrogate {surrogate.name!r} (use backend='torch')")
    sid, a, b, g = kernel_surrogate(surrogate)
    # the CPU kernel (which serves CPU tensors unless the Triton interpreter does) never stores H
    store_h = x_seq.shape[0] > MAX_T_RECOMPUTE and not (_CPU_KERNELS and not x_seq.is_cuda)
    T = x_seq.shape[0]
    x2 = x_seq.reshape(T, -1).contiguous()
    v0 = v_init.to(x_seq.dtype).reshape(-1).contiguous()
    if v0.numel() != x2.shape[1]:
        raise ValueError(f"v_init has {v0.numel()} elements, expected {x2.shape[1]}")
    k_dtype = torch.float64 if x_seq.dtype == torch.float64 else torch.float32
    if isinstance(k, torch.Tensor):
        kt = k.to(device=x_seq.device, dtype=k_dtype).reshape(1)
    else:
        kt = torch.full((1,), float(k), device=x_seq.device, dtype=k_dtype)
    hard = v_reset is not None
    s, v_last, _ = _lif_op(x2, v0, kt, float(v_threshold), float(v_reset) if hard else 0.0,
                           hard, leaky, decay_input, detach_reset, sid, float(a), float(b),
                           float(g), store_h)
    return s.reshape(x_seq.shape), v_last.reshape(x_seq.shape[1:])

