r"""Fused elementwise Triton kernels: HTAF's smooth forward, any surrogate's backward, the step.

One pass over memory each, math in float32 whatever the storage dtype (float32, bfloat16,
float16), one rounding at the store. The formulas are the device functions of
:mod:`htaf.kernels.triton_surrogates` (one per surrogate), the hyperparameters are read from 0-d
tensors at run time:

* ``triton_htaf_forward(x, [α, β, γ])``                 → HTAF(x) = σ(α·x + β·tanh(γ·x))
* ``triton_surrogate_backward(g, x, kind, params, c)``  → g · c · g'(x) for surrogate ``kind``
* ``triton_step(x, signed)``                            → 1[x ≥ 0] or sign(x) (sign(0) = +1), NaN → NaN

Layout. Elementwise ops do not care about the logical shape, only about memory: a tensor whose
elements fill a dense, non-overlapping block (contiguous, transposed, channels-last...) is
processed as the flat block it is, and the output gets the same strides (what
``torch.empty_like`` gives). Only inputs with holes (slices with steps, expanded views) or whose
layout differs from the output's are first copied into the output's layout. Offsets switch to
int64 when a tensor has 2^31 elements or more. A size that is not a multiple of 16 is run as a
multiple-of-16 body (16-byte vector accesses) plus a short second launch for the rest.

Registration. :func:`register_cuda_kernels` installs the launchers as the CUDA implementation of
the ops of :mod:`htaf.kernels.ops`; the ops stay single opaque nodes for ``torch.compile``, take
whatever dtype they are given (autocast) and never synchronise with the host (CUDA graphs).

The launchers are plain functions of tensors, so the tests run them on CPU tensors with
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .ops import as_layout_of
from .triton_surrogates import KERNEL_IDS, derivative, htaf_value

__all__ = ["triton_htaf_forward", "triton_surrogate_backward", "triton_step",
           "register_cuda_kernels", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# 16 KiB of input per program and 8 warps: 16 elements (2–4 vector loads of 16 B) per thread,
# enough bytes in flight per SM to saturate HBM on an elementwise op. Not tuned on a GPU yet.
_BLOCK_BYTES = 16384
_NUM_WARPS = 8
_INT32_LIMIT = 2**31
_VECTOR = 16


# ----------------------------------------------------------------------------- device math
@triton.jit
def _offsets(n, BLOCK: tl.constexpr, INT64: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def _htaf_fwd_kernel(x_ptr, y_ptr, n, a_ptr, b_ptr, g_ptr,
                     BLOCK: tl.constexpr, INT64: tl.constexpr):
    offs, mask = _offsets(n, BLOCK, INT64)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    alpha = tl.load(a_ptr).to(tl.float32)
    beta = tl.load(b_ptr).to(tl.float32)
    gamma = tl.load(g_ptr).to(tl.float32)
    y = htaf_value(x, alpha, beta, gamma)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _surrogate_bwd_kernel(g_ptr, x_ptr, dx_ptr, n, p0_ptr, p1_ptr, p2_ptr, scale,
                          BLOCK: tl.constexpr, INT64: tl.constexpr, KIND: tl.constexpr):
    offs, mask = _offsets(n, BLOCK, INT64)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    d = derivative(x, tl.load(p0_ptr).to(tl.float32), tl.load(p1_ptr).to(tl.float32),
                   tl.load(p2_ptr).to(tl.float32), KIND)
    tl.store(dx_ptr + offs, (g * (d * scale)).to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _step_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr, INT64: tl.constexpr,
                 SIGNED: tl.constexpr):
    offs, mask = _offsets(n, BLOCK, INT64)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    low = -1.0 if SIGNED else 0.0
    y = tl.where(x >= 0.0, 1.0, low)
    y = tl.where(x != x, x, y)  # noqa: PLR0124 (x != x: NaN stays NaN)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side
def _flat(t: torch.Tensor) -> torch.Tensor:
    """The memory block of a dense tensor as a 1-D contiguous view (same storage)."""
    return t.as_strided((t.numel(),), (1,))


def _check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16 for the Triton kernels, "
                        f"got {t.dtype} (use htaf.kernels.reference for other dtypes)")


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _needs_int64(n: int, block: int) -> bool:
    return n + block >= _INT32_LIMIT


def _launch(kernel, tensors: list[torch.Tensor], *scalars, **constexprs) -> None:
    """Run ``kernel(*tensors, n, *scalars)`` over dense tensors of one layout, as flat blocks.

    Triton uses 16-byte accesses under the bounds mask only when ``n`` is a multiple of 16, so
    the first ``n − n % 16`` elements and the (< 16) rest are two launches of the same kernel.
    """
    flats = [_flat(t) for t in tensors]
    n = flats[0].numel()
    block = _BLOCK_BYTES // min(t.element_size() for t in tensors)
    body = n - n % _VECTOR
    with _device_guard(tensors[0]):
        for start, count in ((0, body), (body, n - body)):
            if count == 0:
                continue
            args = flats if count == n else [f[start:start + count] for f in flats]
            kernel[(triton.cdiv(count, block),)](
                *args, count, *scalars, BLOCK=block, INT64=_needs_int64(count, block),
                num_warps=_NUM_WARPS, **constexprs)


def _param_pointers(params, like: torch.Tensor) -> list[torch.Tensor]:
    """Three 0-d tensors on ``like``'s device for the kernels' hyperparameter pointers (a
    surrogate with fewer hyperparameters repeats one; the kernel ignores it)."""
    params = list(params)
    for p in params:
        if p.device != like.device or p.numel() != 1:
            raise ValueError(f"hyperparameters must be one-element tensors on {like.device}, "
                             f"got {tuple(p.shape)} on {p.device}")
    if not params:
        params = [like.new_zeros((), dtype=torch.float32)]
    return (params + [params[0]] * 3)[:3]


def triton_htaf_forward(x: torch.Tensor, params) -> torch.Tensor:
    """HTAF(x) = σ(α·x + β·tanh(γ·x)) in one fused pass (``params`` = [α, β, γ] as 0-d
    tensors); same dtype and layout as ``x``."""
    _check_dtype("x", x)
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    _launch(_htaf_fwd_kernel, [as_layout_of(x, out), out], *_param_pointers(params, x))
    return out


def triton_surrogate_backward(grad: torch.Tensor, x: torch.Tensor, kind: int, params,
                              scale: float = 1.0) -> torch.Tensor:
    """``grad · scale · g'(x)`` for the surrogate with kernel id ``kind``, hyperparameters
    ``params`` (0-d tensors, field order) in one fused pass; same dtype and layout as ``grad``."""
    _check_dtype("grad", grad)
    _check_dtype("x", x)
    if x.shape != grad.shape:
        raise ValueError(f"grad and x must have the same shape, got {tuple(grad.shape)} "
                         f"and {tuple(x.shape)}")
    if kind not in KERNEL_IDS:
        raise ValueError(f"kind must be a surrogate kernel id in {KERNEL_IDS}, got {kind!r}")
    out = torch.empty_like(grad)
    if out.numel() == 0:
        return out
    _launch(_surrogate_bwd_kernel, [as_layout_of(grad, out), as_layout_of(x, out), out],
            *_param_pointers(params, x), float(scale), KIND=int(kind))
    return out


def triton_step(x: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """1[x ≥ 0] (``signed=False``) or sign(x) with sign(0) = +1; NaN stays NaN."""
    _check_dtype("x", x)
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    _launch(_step_kernel, [as_layout_of(x, out), out], SIGNED=bool(signed))
    return out


# ----------------------------------------------------------------------------- registration
#: Oldest GPU architecture Triton compiles for (as PyTorch Inductor checks); older GPUs (P100,
#: sm_60) run the reference instead of failing in the Triton compiler.
MIN_CAPABILITY = (7, 0)
_CAPABLE: dict[int, bool] = {}


def _triton_capable(t: torch.Tensor) -> bool:
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _CAPABLE:
        _CAPABLE[index] = tuple(torch.cuda.get_device_capability(index)) >= MIN_CAPABILITY
    return _CAPABLE[index]


def register_cuda_kernels() -> None:
    """Make the Triton launchers the CUDA implementation of the elementwise ``torch.ops.htaf``
    ops."""
    torch.library.register_kernel("htaf::htaf_forward", "cuda", triton_htaf_forward)
    torch.library.register_kernel("htaf::surrogate_backward", "cuda", triton_surrogate_backward)
    torch.library.register_kernel("htaf::step", "cuda", triton_step)
