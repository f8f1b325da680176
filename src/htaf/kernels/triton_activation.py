r"""Fused Triton kernels for the HTAF op family: smooth forward, backward, exact step/sign.

One pass over memory each, math in float32 whatever the storage dtype (float32, bfloat16,
float16), one rounding at the store:

* ``triton_htaf_forward(x, α, β, γ)``         → HTAF(x) = σ(α·x + β·tanh(γ·x))
* ``triton_htaf_backward(g, x, α, β, γ, c)``  → g · c · HTAF'(x)
* ``triton_step(x, signed)``                  → 1[x ≥ 0] or sign(x) (sign(0) = +1), NaN → NaN

Numerics (the same identities as :mod:`htaf.kernels.reference`, written so that no intermediate
overflows and nothing cancels in the tails). With ``u = γ·x``, ``t = e^(−2|u|)`` and
``r = 1 / (1 + t)``::

    tanh(u)   = sign(u) · (1 − t) · r
    sech²(u)  = 4 · t · r²
    z         = α·x + β·tanh(u)
    σ(z)      = q  if z ≥ 0 else e·q,     e = e^(−|z|),  q = 1 / (1 + e)
    σ(z)σ(−z) = e · q²

so one exponential serves both tanh and sech², one serves both sigmoids, and every factor stays in
[0, 1]: ±inf gives HTAF = 1/0 and a zero gradient, NaN propagates (every comparison with NaN is
false, so the ``where`` picks a NaN-carrying branch).

Layout. Elementwise ops do not care about the logical shape, only about memory: a tensor whose
elements fill a dense, non-overlapping block (contiguous, transposed, channels-last...) is
processed as the flat block it is, and the output gets the same strides (what the reference's
``torch.empty_like`` gives). Only inputs with holes (slices with steps, expanded views) or whose
layout differs from the output's are first copied into the output's layout. Offsets switch to
int64 when a tensor has 2^31 elements or more. A size that is not a multiple of 16 is run as a
multiple-of-16 body (16-byte vector accesses) plus a short second launch for the rest.

Registration. :func:`register_cuda_kernels` installs the launchers as the CUDA implementation of
the existing ``torch.library.custom_op`` ops ``htaf::forward/backward/step``
(``<op>.register_kernel("cuda")``); ``htaf.kernels`` calls it at import unless Triton is missing or
``HTAF_DISABLE_TRITON`` is set. We keep ``custom_op`` rather than switching to
``torch.library.triton_op``: the ops already have a device-generic reference (the CPU path) and a
fake implementation, so the CUDA kernel is a per-device override that changes nothing for
``torch.compile`` (the op stays one opaque node with a known output shape — there is nothing to
gain from letting Inductor see inside a kernel that is already one memory pass), for autocast (the
ops take whatever dtype they are given) or for CUDA graphs (the launchers never synchronise with
the host). float64 and other dtypes on CUDA stay on the reference (exact ``gradcheck``).

The launchers are plain functions of tensors, so the tests run them on CPU tensors with
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import reference

__all__ = [
    "triton_htaf_forward", "triton_htaf_backward", "triton_step", "register_cuda_kernels",
    "SUPPORTED_DTYPES",
]

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
def _logit(x, alpha, beta, gamma):
    """z = α·x + β·tanh(γx), plus t = e^(−2|γx|) and r = 1/(1 + t) for sech²."""
    u = gamma * x
    t = tl.exp(-2.0 * tl.abs(u))
    r = 1.0 / (1.0 + t)
    th = (1.0 - t) * r
    th = tl.where(u < 0.0, -th, th)
    return alpha * x + beta * th, t, r


@triton.jit
def _htaf_fwd_kernel(x_ptr, y_ptr, n, alpha, beta, gamma,
                     BLOCK: tl.constexpr, INT64: tl.constexpr):
    offs, mask = _offsets(n, BLOCK, INT64)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    z, _t, _r = _logit(x, alpha, beta, gamma)
    e = tl.exp(-tl.abs(z))
    q = 1.0 / (1.0 + e)
    y = tl.where(z >= 0.0, q, e * q)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _htaf_bwd_kernel(g_ptr, x_ptr, dx_ptr, n, alpha, beta, gamma, scale,
                     BLOCK: tl.constexpr, INT64: tl.constexpr):
    offs, mask = _offsets(n, BLOCK, INT64)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    z, t, r = _logit(x, alpha, beta, gamma)
    e = tl.exp(-tl.abs(z))
    q = 1.0 / (1.0 + e)
    slope = alpha + (4.0 * beta * gamma) * (t * r * r)
    d = (e * q * q) * slope
    tl.store(dx_ptr + offs, (g * (scale * d)).to(dx_ptr.dtype.element_ty), mask=mask)


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
def _is_dense(t: torch.Tensor) -> bool:
    """True when the elements of ``t`` fill one gap-free, non-overlapping block of memory."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n != 1)


def _as_layout_of(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it already has ``out``'s (dense) memory layout, else a copy that does."""
    if t.shape != out.shape:
        raise ValueError(f"shape mismatch: {tuple(t.shape)} vs {tuple(out.shape)}")
    if _is_dense(t) and _same_layout(t, out):
        return t
    return torch.empty_like(out, dtype=t.dtype).copy_(t)


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


def triton_htaf_forward(x: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """HTAF(x) = σ(α·x + β·tanh(γ·x)) in one fused pass; same dtype and layout as ``x``."""
    _check_dtype("x", x)
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    _launch(_htaf_fwd_kernel, [_as_layout_of(x, out), out], float(alpha), float(beta),
            float(gamma))
    return out


def triton_htaf_backward(grad: torch.Tensor, x: torch.Tensor, alpha: float, beta: float,
                         gamma: float, scale: float = 1.0) -> torch.Tensor:
    """``grad · scale · HTAF'(x)`` in one fused pass; same dtype and layout as ``grad``."""
    _check_dtype("grad", grad)
    _check_dtype("x", x)
    out = torch.empty_like(grad)
    if x.shape != grad.shape:
        raise ValueError(f"grad and x must have the same shape, got {tuple(grad.shape)} "
                         f"and {tuple(x.shape)}")
    if out.numel() == 0:
        return out
    _launch(_htaf_bwd_kernel, [_as_layout_of(grad, out), _as_layout_of(x, out), out],
            float(alpha), float(beta), float(gamma), float(scale))
    return out


def triton_step(x: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """1[x ≥ 0] (``signed=False``) or sign(x) with sign(0) = +1; NaN stays NaN."""
    _check_dtype("x", x)
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    _launch(_step_kernel, [_as_layout_of(x, out), out], SIGNED=bool(signed))
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


def _cuda_forward(x, alpha, beta, gamma):
    if x.dtype not in SUPPORTED_DTYPES or not _triton_capable(x):
        return reference.htaf_forward(x, alpha, beta, gamma)
    return triton_htaf_forward(x, alpha, beta, gamma)


def _cuda_backward(grad, x, alpha, beta, gamma, scale):
    if (grad.dtype not in SUPPORTED_DTYPES or x.dtype not in SUPPORTED_DTYPES
            or not _triton_capable(grad)):
        return reference.htaf_backward(grad, x, alpha, beta, gamma, scale)
    return triton_htaf_backward(grad, x, alpha, beta, gamma, scale)


def _cuda_step(x, signed):
    if x.dtype not in SUPPORTED_DTYPES or not _triton_capable(x):
        return reference.step_forward(x, signed)
    return triton_step(x, signed)


def register_cuda_kernels() -> None:
    """Make the Triton launchers the CUDA implementation of ``torch.ops.htaf.*``."""
    from . import activation

    activation.forward.register_kernel("cuda")(_cuda_forward)
    activation.backward.register_kernel("cuda")(_cuda_backward)
    activation.step.register_kernel("cuda")(_cuda_step)
