r"""One ``@triton.jit`` device function per surrogate: the formulas of :mod:`htaf.surrogates`
written for the fused kernels, from the same raw hyperparameters.

The elementwise backward (:mod:`htaf.kernels.triton_elementwise`) and the LIF neuron's BPTT
(:mod:`htaf.kernels.triton_lif`) both call :func:`derivative`, which picks the function by the
surrogate class's ``kernel_id`` at compile time. Math in float32; written so that nothing
overflows or cancels in the tails, NaN propagates (except the indicators ``rect`` and ``ste``,
false for NaN, as in PyTorch) and ±inf gives 0 (1 for an unclipped ``ste``):

    σ(z)·σ(−z) = e·q²,  σ(z) = q if z ≥ 0 else e·q,   e = e^(−|z|), q = 1/(1 + e)
    tanh(u) = sign(u)·(1 − t)·r,  sech²(u) = 4·t·r²,   t = e^(−2|u|), r = 1/(1 + t)
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["derivative", "htaf_value"]


@triton.jit
def _clamp0(v):
    return tl.where(v < 0.0, 0.0, v)  # NaN stays NaN


@triton.jit
def _htaf_logit(x, alpha, beta, gamma):
    """z = α·x + β·tanh(γx), and t = e^(−2|γx|), r = 1/(1 + t) for sech²(γx) = 4tr²."""
    u = gamma * x
    t = tl.exp(-2.0 * tl.abs(u))
    r = 1.0 / (1.0 + t)
    th = (1.0 - t) * r
    th = tl.where(u < 0.0, -th, th)
    return alpha * x + beta * th, t, r


@triton.jit
def htaf_value(x, alpha, beta, gamma):
    """HTAF(x) = σ(α·x + β·tanh(γ·x))."""
    z, _t, _r = _htaf_logit(x, alpha, beta, gamma)
    e = tl.exp(-tl.abs(z))
    q = 1.0 / (1.0 + e)
    return tl.where(z >= 0.0, q, e * q)


@triton.jit
def htaf_d(x, alpha, beta, gamma):
    """HTAF'(x) = σ(z)σ(−z)·(α + β·γ·sech²(γx))."""
    z, t, r = _htaf_logit(x, alpha, beta, gamma)
    e = tl.exp(-tl.abs(z))
    q = 1.0 / (1.0 + e)
    return (e * q * q) * (alpha + (4.0 * beta * gamma) * (t * r * r))


@triton.jit
def sigmoid_d(x, alpha):
    """α·σ(αx)σ(−αx) = α·e/(1 + e)², e = e^(−α|x|)."""
    e = tl.exp(-(alpha * tl.abs(x)))
    w = 1.0 + e
    return alpha * e / (w * w)


@triton.jit
def atan_d(x, alpha):
    """(α/2) / (1 + (π/2·α·x)²)."""
    w = (1.5707963267948966 * alpha) * x
    return (0.5 * alpha) / (1.0 + w * w)


@triton.jit
def fast_sigmoid_d(x, slope):
    """1 / (1 + k|x|)²."""
    w = 1.0 + slope * tl.abs(x)
    return 1.0 / (w * w)


@triton.jit
def super_spike_d(x, alpha):
    """α / (1 + |x|)²."""
    w = 1.0 + tl.abs(x)
    return alpha / (w * w)


@triton.jit
def piecewise_quadratic_d(x, alpha):
    """max(α − α²|x|, 0)."""
    return _clamp0(alpha - (alpha * alpha) * tl.abs(x))


@triton.jit
def piecewise_exp_d(x, alpha):
    """(α/2)·e^(−α|x|)."""
    return (0.5 * alpha) * tl.exp(-(alpha * tl.abs(x)))


@triton.jit
def erf_d(x, alpha):
    """(α/√π)·e^(−α²x²)."""
    w = alpha * x
    return (alpha * 0.5641895835477563) * tl.exp(-(w * w))


@triton.jit
def triangle_d(x, alpha):
    """α·max(1 − |x|, 0)."""
    return alpha * _clamp0(1.0 - tl.abs(x))


@triton.jit
def rect_d(x, alpha):
    """α·1[|x| < 1/(2α)]."""
    return tl.where(tl.abs(x) < 0.5 / alpha, alpha, 0.0)


@triton.jit
def ste_d(x, clip):
    """1[|x| ≤ clip]."""
    return tl.where(tl.abs(x) <= clip, 1.0, 0.0)


@triton.jit
def approx_sign_d(x):
    """max(2 − 2|x|, 0)."""
    return _clamp0(2.0 - 2.0 * tl.abs(x))


@triton.jit
def swish_sign_d(x, beta):
    """(β/2)·(2 − 2|u|·tanh|u|)·sech²(u), u = βx/2; 0 where sech² underflows."""
    au = (0.5 * beta) * tl.abs(x)
    t = tl.exp(-2.0 * au)
    r = 1.0 / (1.0 + t)
    s2 = 4.0 * t * r * r
    d = (0.5 * beta) * (2.0 - 2.0 * au * ((1.0 - t) * r)) * s2
    return tl.where(s2 == 0.0, 0.0, d)


@triton.jit
def derivative(x, p0, p1, p2, KIND: tl.constexpr):
    """g'(x) of the surrogate whose ``kernel_id`` is ``KIND`` (native convention), from its
    hyperparameters in field order (unused ones ignored)."""
    if KIND == 0:      # HTAFSurrogate(alpha, beta, gamma)
        d = htaf_d(x, p0, p1, p2)
    elif KIND == 1:    # Sigmoid(alpha)
        d = sigmoid_d(x, p0)
    elif KIND == 2:    # ATan(alpha)
        d = atan_d(x, p0)
    elif KIND == 3:    # FastSigmoid(slope)
        d = fast_sigmoid_d(x, p0)
    elif KIND == 4:    # SuperSpike(alpha)
        d = super_spike_d(x, p0)
    elif KIND == 5:    # PiecewiseQuadratic(alpha)
        d = piecewise_quadratic_d(x, p0)
    elif KIND == 6:    # PiecewiseExp(alpha)
        d = piecewise_exp_d(x, p0)
    elif KIND == 7:    # Erf(alpha)
        d = erf_d(x, p0)
    elif KIND == 8:    # Triangle(alpha)
        d = triangle_d(x, p0)
    elif KIND == 9:    # Rect(alpha)
        d = rect_d(x, p0)
    elif KIND == 10:   # STE(clip)
        d = ste_d(x, p0)
    elif KIND == 11:   # ApproxSign()
        d = approx_sign_d(x)
    else:              # SwishSign(beta), kernel_id 12
        d = swish_sign_d(x, p0)
    return d


#: The kernel ids :func:`derivative` knows (a test checks them against the surrogate classes).
KERNEL_IDS = tuple(range(13))
