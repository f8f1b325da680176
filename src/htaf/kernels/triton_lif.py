r"""Fused multi-step LIF/IF neuron on CUDA: the whole time loop in one Triton kernel, BPTT in
another (the op definitions and their autograd are in :mod:`htaf.kernels.lif`).

* **forward**: one program owns ``BLOCK`` neurons, loops over t with V in registers, reads X[t] and
  writes S[t] once: 2 tensor-passes over ``[T, N]``. Nothing but S and the final V is written.
* **backward**: saves **only X** (and the initial V, ``N`` values). The backward kernel re-runs the
  forward recurrence in registers, keeping H[0..T−1] of its neurons in a ``[T, BLOCK]`` register
  tile, then runs the reverse BPTT loop reading dL/dS[t] and writing dL/dX[t]: 3 passes.
  Total 5 passes of ``T·N`` elements, exactly the "memory ideal" of the benchmark (a copy ×2.5).
  Writing H in the forward and reading it back would cost a 6th pass and, in bf16, round H before
  the surrogate; recomputing costs ~10 flops an element, free in a memory-bound kernel. The
  register tile and the unrolled loops grow with T (compile time 0.5 s at T=8, 9 s at 16, minutes
  at 64), so above ``htaf.kernels.lif.MAX_T_RECOMPUTE`` (16) steps the forward also writes H
  (fp32) and a second backward kernel reads it in a plain reverse loop.
* The surrogate's derivative is the shared device function of
  :mod:`htaf.kernels.triton_surrogates` (any built-in surrogate), its hyperparameters read from
  0-d tensors.
* fp32, bf16 and fp16 inputs; the math always runs in fp32; S has the input's dtype.
* PLIF's learnable k: d L/dk = Σ_t dL/dH[t] · ∂H[t]/∂k with ∂H/∂k = (H[t] − V[t−1])/k
  (decay_input) or R − V[t−1]; each program writes one partial sum (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_elementwise import _param_pointers
from .triton_surrogates import derivative

__all__ = ["triton_lif_forward", "triton_lif_backward", "register_cuda_kernels"]



@triton.jit
def _neurons(N, BLOCK: tl.constexpr):
    """This program's ``BLOCK`` neurons: (pid, offsets, mask, N as int64 for row offsets — t·N in
    int32 overflows once T·N ≥ 2^31)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return pid, offs, offs < N, tl.cast(N, tl.int64)


@triton.jit
def _params(p0_ptr, p1_ptr, p2_ptr):
    """The surrogate's hyperparameters, from their 0-d tensors."""
    return (tl.load(p0_ptr).to(tl.float32), tl.load(p1_ptr).to(tl.float32),
            tl.load(p2_ptr).to(tl.float32))


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
def _dh_dk(h, vprev, k, r, DECAY_INPUT: tl.constexpr):
    """∂H[t]/∂k of PLIF's learnable decay k: (H − V[t−1])/k, or R − V[t−1] (decay_input=False)."""
    if DECAY_INPUT:
        d = (h - vprev) / k
    else:
        d = r - vprev
    return d


@triton.jit
def _lif_fwd_kernel(x_ptr, v0_ptr, k_ptr, s_ptr, vlast_ptr, h_ptr, N, T, v_th, v_reset,
                    HARD: tl.constexpr, LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr,
                    STORE_H: tl.constexpr, BLOCK: tl.constexpr):
    _pid, offs, mask, n64 = _neurons(N, BLOCK)
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
def _bptt_step(h, gs, gv, k, v_th, v_reset, p0, p1, p2, scale, HARD: tl.constexpr,
               LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr, DETACH: tl.constexpr,
               KIND: tl.constexpr):
    """One reverse step: from dL/dS[t] (``gs``) and dL/dV[t] (``gv``) to dL/dX[t],
    dL/dV[t−1] and dL/dH[t]."""
    sg = derivative(h - v_th, p0, p1, p2, KIND) * scale
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
                    v_th, v_reset, p0_ptr, p1_ptr, p2_ptr, scale,
                    T: tl.constexpr, T_PAD: tl.constexpr, HARD: tl.constexpr,
                    LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr, DETACH: tl.constexpr,
                    KIND: tl.constexpr, NEED_GK: tl.constexpr, BLOCK: tl.constexpr):
    pid, offs, mask, n64 = _neurons(N, BLOCK)
    k = tl.load(k_ptr).to(tl.float32)
    p0, p1, p2 = _params(p0_ptr, p1_ptr, p2_ptr)
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
        gx, gv, gh = _bptt_step(h, gs, gv, k, v_th, v_reset, p0, p1, p2, scale, HARD, LEAKY,
                                DECAY_INPUT, DETACH, KIND)
        tl.store(gx_ptr + t * n64 + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        if NEED_GK:
            if t == 0:
                vprev = v0
            else:
                hp = tl.sum(tl.where(tt == t - 1, hs, 0.0), axis=0)
                vprev = _reset(hp, (hp >= v_th).to(tl.float32), v_th, v_reset, HARD)
            gk += tl.where(mask, gh * _dh_dk(h, vprev, k, r, DECAY_INPUT), 0.0)
    tl.store(gv0_ptr + offs, gv.to(gv0_ptr.dtype.element_ty), mask=mask)
    if NEED_GK:
        tl.store(gk_ptr + pid, tl.sum(gk, axis=0))


@triton.jit
def _lif_bwd_stored_kernel(gs_ptr, gvlast_ptr, h_ptr, v0_ptr, k_ptr, gx_ptr, gv0_ptr, gk_ptr,
                           N, T, v_th, v_reset, p0_ptr, p1_ptr, p2_ptr, scale,
                           HARD: tl.constexpr,
                           LEAKY: tl.constexpr, DECAY_INPUT: tl.constexpr,
                           DETACH: tl.constexpr, KIND: tl.constexpr,
                           NEED_GK: tl.constexpr, BLOCK: tl.constexpr):
    """BPTT for long sequences (T > MAX_T_RECOMPUTE): reads the H saved by the forward."""
    pid, offs, mask, n64 = _neurons(N, BLOCK)
    k = tl.load(k_ptr).to(tl.float32)
    p0, p1, p2 = _params(p0_ptr, p1_ptr, p2_ptr)
    r = v_reset if HARD else 0.0
    v0 = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gv = tl.load(gvlast_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gk = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        h = tl.load(h_ptr + t * n64 + offs, mask=mask, other=0.0)
        gs = tl.load(gs_ptr + t * n64 + offs, mask=mask, other=0.0).to(tl.float32)
        gx, gv, gh = _bptt_step(h, gs, gv, k, v_th, v_reset, p0, p1, p2, scale, HARD, LEAKY,
                                DECAY_INPUT, DETACH, KIND)
        tl.store(gx_ptr + t * n64 + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        if NEED_GK:
            hp = tl.load(h_ptr + (t - 1) * n64 + offs, mask=mask & (t > 0), other=0.0)
            vp = _reset(hp, (hp >= v_th).to(tl.float32), v_th, v_reset, HARD)
            vprev = tl.where(t > 0, vp, v0)
            gk += tl.where(mask, gh * _dh_dk(h, vprev, k, r, DECAY_INPUT), 0.0)
    tl.store(gv0_ptr + offs, gv.to(gv0_ptr.dtype.element_ty), mask=mask)
    if NEED_GK:
        tl.store(gk_ptr + pid, tl.sum(gk, axis=0))


_FWD_BLOCK = 1024


def _bwd_block(t_pad: int) -> int:
    # the H tile holds T_PAD·BLOCK fp32 values: keep it ≈ 4096 per program (32/thread at 4 warps)
    return max(64, min(1024, 4096 // t_pad))


def _num_warps(block: int) -> int:
    return 4 if block <= 512 else 8


def triton_lif_forward(x, v0, k, v_threshold, v_reset, hard, leaky, decay_input, detach_reset,
                       kind, params, scale, store_h):
    """Forward over ``x`` ``[T, N]`` (contiguous), ``v0`` ``[N]``, ``k`` ``[1]`` fp32: S, the last
    V and, when ``store_h`` (T > MAX_T_RECOMPUTE), H in fp32 (else an empty tensor)."""
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


def triton_lif_backward(gs, gv_last, x, h, v0, k, v_threshold, v_reset, hard, leaky,
                        decay_input, detach_reset, kind, params, scale, need_gk):
    """BPTT in one kernel: (dL/dx ``[T, N]``, dL/dv0 ``[N]``, dL/dk ``[1]`` fp32). Recomputes H
    from ``x`` when ``h`` is empty (T ≤ MAX_T_RECOMPUTE), else reads ``h``."""
    T, N = gs.shape
    gs = gs.contiguous()  # the kernels index [T, N] row-major: gx must be laid out so too,
    gx = torch.empty_like(gs, memory_format=torch.contiguous_format)  # whatever gs's strides
    gv0 = torch.empty_like(v0)
    if N == 0:
        return gx, gv0, torch.zeros(1, device=gs.device, dtype=torch.float32)
    common = {"HARD": hard, "LEAKY": leaky, "DECAY_INPUT": decay_input, "DETACH": detach_reset,
              "KIND": int(kind), "NEED_GK": need_gk}
    p0, p1, p2 = _param_pointers(params, gs)
    if h.numel() == 0:
        t_pad = triton.next_power_of_2(T)
        block = _bwd_block(t_pad)
        n_prog = triton.cdiv(N, block)
        gk_part = torch.empty(n_prog if need_gk else 1, device=gs.device, dtype=torch.float32)
        _lif_bwd_kernel[(n_prog,)](
            gs, gv_last.contiguous(), x, v0, k, gx, gv0, gk_part, N, v_threshold, v_reset,
            p0, p1, p2, float(scale), T=T, T_PAD=t_pad, BLOCK=block, num_warps=_num_warps(block), **common)
    else:
        block = _FWD_BLOCK
        n_prog = triton.cdiv(N, block)
        gk_part = torch.empty(n_prog if need_gk else 1, device=gs.device, dtype=torch.float32)
        _lif_bwd_stored_kernel[(n_prog,)](
            gs, gv_last.contiguous(), h, v0, k, gx, gv0, gk_part, N, T, v_threshold, v_reset,
            p0, p1, p2, float(scale), BLOCK=block, num_warps=_num_warps(block), **common)
    gk = gk_part.sum().reshape(1) if need_gk else torch.zeros(1, device=gs.device,
                                                                dtype=torch.float32)
    return gx, gv0, gk


def register_cuda_kernels() -> None:
    """Make the Triton kernels the CUDA implementation of ``htaf::lif_forward/lif_backward``."""
    torch.library.register_kernel("htaf::lif_forward", "cuda", triton_lif_forward)
    torch.library.register_kernel("htaf::lif_backward", "cuda", triton_lif_backward)
