r"""The baseline surrogates' backward as one op, ``htaf::surrogate_backward``, and its reference.

``surrogate_backward(grad, x, kind, param, scale)`` = ``grad · scale · g'(x)`` for the registered
baselines, in one memory pass on CUDA (``htaf.kernels.triton_baselines``) and in PyTorch elsewhere.
``kind`` names the surrogate, ``param`` is its single hyperparameter (ignored by ``approx_sign``),
and the derivatives are written in each surrogate's native convention (see ``htaf.surrogates``):

    sigmoid              α·σ(αx)·σ(−αx)
    atan                 (α/2) / (1 + (π/2·α·x)²)
    fast_sigmoid         1 / (1 + k·|x|)²
    super_spike          α / (1 + |x|)²
    piecewise_quadratic  max(α − α²·|x|, 0)
    piecewise_exp        (α/2)·e^(−α·|x|)
    erf                  (α/√π)·e^(−α²x²)
    triangle             α·max(1 − |x|, 0)
    rect                 α·1[|x| < 1/(2α)]
    ste                  1[|x| ≤ clip]
    approx_sign          max(2 − 2·|x|, 0)
    swish_sign           (β/2)·(2 − βx·tanh(βx/2))·sech²(βx/2)

Each formula is split into constants the host computes once in float64 (:func:`constants`) and
the elementwise part, so that the reference and the kernel round the same numbers. NaN behaves as
in ``htaf.surrogates`` (NaN out, except ``rect`` and ``ste`` whose indicator is 0); at ±inf every
derivative is 0 (except an unclipped ``ste``'s 1), ``swish_sign`` included: its linear factor is
dropped where sech² underflows to 0, where ``htaf.surrogates.SwishSign`` returns inf·0 = NaN.
"""

from __future__ import annotations

import math

import torch

from .reference import compute_dtype, sech2

__all__ = ["FUSED_SURROGATES", "constants", "surrogate_derivative", "surrogate_backward"]

#: Surrogates with a fused backward, and the kernel's integer code for each.
FUSED_SURROGATES: dict[str, int] = {
    name: code for code, name in enumerate((
        "sigmoid", "atan", "fast_sigmoid", "super_spike", "piecewise_quadratic",
        "piecewise_exp", "erf", "triangle", "rect", "ste", "approx_sign", "swish_sign"))
}


def constants(kind: str, param: float) -> tuple[float, float]:
    """The two scalars ``(p, c)`` of ``kind``'s derivative, computed in float64."""
    a = float(param)
    table = {
        "sigmoid": (a, a),
        "atan": (a / 2, math.pi / 2 * a),
        "fast_sigmoid": (1.0, a),
        "super_spike": (a, 1.0),
        "piecewise_quadratic": (a, a * a),
        "piecewise_exp": (a / 2, a),
        "erf": (a / math.sqrt(math.pi), a),
        "triangle": (a, 1.0),
        "rect": (a, 0.5 / a if a else math.inf),
        "ste": (1.0, a),
        "approx_sign": (2.0, 2.0),
        "swish_sign": (a / 2, a / 2),
    }
    if kind not in table:
        raise ValueError(f"kind must be one of {', '.join(FUSED_SURROGATES)}, got {kind!r}")
    return table[kind]


def _clamp0(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v < 0, torch.zeros_like(v), v)  # NaN stays NaN


def surrogate_derivative(x: torch.Tensor, kind: str, param: float) -> torch.Tensor:
    """g'(x) of ``kind`` (native convention), in float32 for half inputs (the caller rounds)."""
    p, c = constants(kind, param)
    x = x.to(compute_dtype(x.dtype))
    ax = x.abs()
    if kind == "sigmoid":
        e = torch.exp(-(c * ax))
        return p * e / (1.0 + e) ** 2
    if kind == "atan":
        return p / (1.0 + (c * x) ** 2)
    if kind == "fast_sigmoid":
        return p / (1.0 + c * ax) ** 2
    if kind == "super_spike":
        return p / (1.0 + ax) ** 2
    if kind in ("piecewise_quadratic", "approx_sign"):
        return _clamp0(p - c * ax)
    if kind == "piecewise_exp":
        return p * torch.exp(-(c * ax))
    if kind == "erf":
        return p * torch.exp(-(c * x) ** 2)
    if kind == "triangle":
        return p * _clamp0(1.0 - ax)
    if kind == "rect":
        return p * (ax < c).to(x.dtype)
    if kind == "ste":
        return (ax <= c).to(x.dtype)
    # swish_sign: u = βx/2, βx·tanh(βx/2) = 2u·tanh(u) = 2|u|·tanh(|u|)
    au = c * ax
    s2 = sech2(au)
    d = p * (2.0 - 2.0 * au * torch.tanh(au)) * s2
    return torch.where(s2 == 0, torch.zeros_like(d), d)


def reference_backward(grad: torch.Tensor, x: torch.Tensor, kind: str, param: float,
                       scale: float) -> torch.Tensor:
    d = surrogate_derivative(x, kind, param) * scale
    return (grad.to(d.dtype) * d).to(grad.dtype)


@torch.library.custom_op("htaf::surrogate_backward", mutates_args=())
def surrogate_backward(grad: torch.Tensor, x: torch.Tensor, kind: str, param: float,
                       scale: float) -> torch.Tensor:
    """``grad · scale · g'(x)`` for the baseline surrogate ``kind``; same dtype as ``grad``."""
    return reference_backward(grad, x, kind, param, scale)


@surrogate_backward.register_fake
def _(grad, x, kind, param, scale):
    return torch.empty_like(grad)
