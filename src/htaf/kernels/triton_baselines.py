r"""Fused Triton backward for the baseline surrogates: ``grad · scale · g'(x)`` in one pass.

One kernel, specialised at compile time on the surrogate (``KIND``, see
:data:`htaf.kernels.baselines.FUSED_SURROGATES`), with the formulas of
:mod:`htaf.kernels.baselines` and the same host-side constants ``(p, c)``. Layout, dtypes, int64
offsets and registration follow :mod:`htaf.kernels.triton_activation`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import baselines
from .triton_activation import (
    SUPPORTED_DTYPES,
    _as_layout_of,
    _check_dtype,
    _launch,
    _offsets,
    _triton_capable,
)

__all__ = ["triton_surrogate_backward", "register_cuda_kernels"]


@triton.jit
def _clamp0(v):
    return tl.where(v < 0.0, 0.0, v)  # NaN stays NaN


@triton.jit
def _surrogate_bwd_kernel(g_ptr, x_ptr, dx_ptr, n, p, c, scale,
                          BLOCK: tl.constexpr, INT64: tl.constexpr, KIND: tl.constexpr):
    offs, mask = _offsets(n, BLOCK, INT64)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    ax = tl.abs(x)
    if KIND == 0:  # sigmoid: α·σ(αx)σ(−αx) = α·e/(1 + e)², e = e^(−α|x|)
        e = tl.exp(-(c * ax))
        w = 1.0 + e
        d = p * e / (w * w)
    elif KIND == 1:  # atan: (α/2) / (1 + (π/2·α·x)²)
        w = c * x
        d = p / (1.0 + w * w)
    elif KIND == 2:  # fast_sigmoid: 1 / (1 + k|x|)²
        w = 1.0 + c * ax
        d = p / (w * w)
    elif KIND == 3:  # super_spike: α / (1 + |x|)²
        w = 1.0 + ax
        d = p / (w * w)
    elif KIND == 4 or KIND == 10:  # piecewise_quadratic, approx_sign: max(p − c|x|, 0)
        d = _clamp0(p - c * ax)
    elif KIND == 5:  # piecewise_exp: (α/2)·e^(−α|x|)
        d = p * tl.exp(-(c * ax))
    elif KIND == 6:  # erf: (α/√π)·e^(−α²x²)
        w = c * x
        d = p * tl.exp(-(w * w))
    elif KIND == 7:  # triangle: α·max(1 − |x|, 0)
        d = p * _clamp0(1.0 - ax)
    elif KIND == 8:  # rect: α·1[|x| < 1/(2α)]
        d = tl.where(ax < c, p, 0.0)
    elif KIND == 9:  # ste: 1[|x| ≤ clip]
        d = tl.where(ax <= c, 1.0, 0.0)
    else:  # swish_sign: (β/2)(2 − 2|u|·tanh|u|)·sech²(u), u = βx/2
        au = c * ax
        t = tl.exp(-2.0 * au)
        r = 1.0 / (1.0 + t)
        s2 = 4.0 * t * r * r
        d = p * (2.0 - 2.0 * au * ((1.0 - t) * r)) * s2
        d = tl.where(s2 == 0.0, 0.0, d)
    tl.store(dx_ptr + offs, (g * (d * scale)).to(dx_ptr.dtype.element_ty), mask=mask)


def triton_surrogate_backward(grad: torch.Tensor, x: torch.Tensor, kind: str, param: float,
                              scale: float = 1.0) -> torch.Tensor:
    """``grad · scale · g'(x)`` for the baseline ``kind``; same dtype and layout as ``grad``."""
    _check_dtype("grad", grad)
    _check_dtype("x", x)
    p, c = baselines.constants(kind, param)
    out = torch.empty_like(grad)
    if x.shape != grad.shape:
        raise ValueError(f"grad and x must have the same shape, got {tuple(grad.shape)} "
                         f"and {tuple(x.shape)}")
    if out.numel() == 0:
        return out
    _launch(_surrogate_bwd_kernel, [_as_layout_of(grad, out), _as_layout_of(x, out), out],
            p, c, float(scale), KIND=baselines.FUSED_SURROGATES[kind])
    return out


def _cuda_surrogate_backward(grad, x, kind, param, scale):
    if (grad.dtype not in SUPPORTED_DTYPES or x.dtype not in SUPPORTED_DTYPES
            or not _triton_capable(grad)):
        return baselines.reference_backward(grad, x, kind, param, scale)
    return triton_surrogate_backward(grad, x, kind, param, scale)


def register_cuda_kernels() -> None:
    """Make the Triton launcher the CUDA implementation of ``torch.ops.htaf.surrogate_backward``."""
    baselines.surrogate_backward.register_kernel("cuda")(_cuda_surrogate_backward)
