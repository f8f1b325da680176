"""PyTorch reference twins of the HTAF kernels.

These are the definition the fused kernels are tested against, and the path that serves the CPU.
Half-precision inputs are computed in float32 and rounded once at the end, as the kernels do.

    HTAF(x)  = σ(z),  z = α·x + β·tanh(γ·x)
    HTAF'(x) = σ(z)·σ(−z)·(α + β·γ·sech²(γ·x))

``σ(z)·σ(−z)`` is used instead of ``s·(1 − s)`` (no cancellation when s → 1), and
``sech²(u) = 4t / (1 + t)²`` with ``t = e^(−2|u|)`` (no overflow, no cancellation in the tails).
"""

from __future__ import annotations

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float32 for half types, the input dtype otherwise."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x.dtype))


def htaf_forward(x: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    xf = _upcast(x)
    return torch.sigmoid(alpha * xf + beta * torch.tanh(gamma * xf)).to(x.dtype)


def sech2(u: torch.Tensor) -> torch.Tensor:
    t = torch.exp(-2.0 * u.abs())
    return 4.0 * t / (1.0 + t) ** 2


def htaf_derivative(x: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """HTAF'(x), computed in float32 or float64 (the caller rounds)."""
    xf = _upcast(x)
    z = alpha * xf + beta * torch.tanh(gamma * xf)
    return torch.sigmoid(z) * torch.sigmoid(-z) * (alpha + beta * gamma * sech2(gamma * xf))


def htaf_backward(grad: torch.Tensor, x: torch.Tensor, alpha: float, beta: float, gamma: float,
                  scale: float = 1.0) -> torch.Tensor:
    """``grad · scale · HTAF'(x)``: the backward of the smooth, straight-through and sign modes."""
    d = htaf_derivative(x, alpha, beta, gamma)
    return (_upcast(grad) * (scale * d)).to(grad.dtype)


def step_forward(x: torch.Tensor, signed: bool) -> torch.Tensor:
    """1[x ≥ 0] (``signed=False``) or sign(x) with sign(0) = +1 (``signed=True``); NaN stays NaN."""
    on = x >= 0
    if signed:
        y = torch.where(on, 1.0, -1.0).to(x.dtype)
    else:
        y = on.to(x.dtype)
    return torch.where(torch.isnan(x), x, y)
