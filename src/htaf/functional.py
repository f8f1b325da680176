r"""HTAF and binary steps as plain functions: the math and the mode switch.

* :func:`htaf` — smooth: forward HTAF(x) = σ(α·x + β·tanh(γ·x)), backward HTAF'(x).
* :func:`heaviside` — straight-through: forward exactly 1[x ≥ 0], backward a surrogate's derivative.
* :func:`sign` — straight-through: forward sign(x) ∈ {−1, +1} (sign(0) = +1), backward 2× the
  derivative of a step surrogate (HTAF: 2·HTAF'(x)).
* :func:`binarize` — all of the above, and the hard (no-gradient) step, behind one ``mode`` switch.

Every backward saves only the input and recomputes the derivative. On CUDA the work runs in fused
Triton kernels (``htaf.kernels``); everywhere else in the PyTorch reference.
"""

from __future__ import annotations

import torch

from . import kernels
from ._checks import check_choice
from .surrogates import HTAFSurrogate, Surrogate, get_surrogate

__all__ = ["MODES", "binarize", "heaviside", "htaf", "htaf_derivative", "sign"]

MODES = ("smooth", "hard", "straight_through")


class _Binarize(torch.autograd.Function):
    """Forward: the exact step/sign (``smooth=False``) or the surrogate's smooth form; backward:
    the surrogate's derivative, scaled for a step or a sign. Saves only ``x``."""

    @staticmethod
    def forward(x, surrogate, signed, smooth):
        if smooth:
            return surrogate.smooth(x, signed)
        return kernels.step_forward(x, signed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, surrogate, signed, _ = inputs
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        ctx.signed = signed

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ctx.surrogate.backward(grad, x, ctx.signed), None, None, None


def _check_tensor(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")


def binarize(x: torch.Tensor, surrogate: str | Surrogate = "htaf", *, mode: str = "straight_through",
             signed: bool = False, **params) -> torch.Tensor:
    """A step (``signed=False``: {0, 1}) or a sign ({−1, +1}) in one of three modes:

    * ``"straight_through"``: forward the exact step, backward the surrogate's derivative;
    * ``"smooth"``: forward the surrogate's smooth form (HTAF(x) for HTAF), backward its derivative;
    * ``"hard"``: forward the exact step, no gradient (for evaluation).
    """
    _check_tensor(x)
    check_choice("mode", mode, MODES)
    s = get_surrogate(surrogate, **params)   # validated in every mode: a typo fails at once
    if mode == "hard":
        return kernels.step_forward(x.detach(), signed)
    return _Binarize.apply(x, s, signed, mode == "smooth")


def htaf(x: torch.Tensor, alpha: float = 0.5, beta: float = 4.0, gamma: float = 1.0) -> torch.Tensor:
    r"""HTAF(x) = σ(α·x + β·tanh(γ·x)), the smooth mode; differentiable (backward HTAF'(x)).

    Args:
        x: floating-point tensor of any shape, dtype and device.
        alpha: tail slope (> 0): far from 0 the gradient decays like e^(−α|x|).
        beta: jump strength (≥ 0): logit gap of the central transition.
        gamma: sharpness (> 0): the central transition is about 1/γ wide.
    """
    return binarize(x, HTAFSurrogate(alpha=alpha, beta=beta, gamma=gamma), mode="smooth")


def htaf_derivative(x: torch.Tensor, alpha: float = 0.5, beta: float = 4.0,
                    gamma: float = 1.0) -> torch.Tensor:
    r"""HTAF'(x) = HTAF·(1 − HTAF)·(α + β·γ·sech²(γ·x)), elementwise, no autograd graph."""
    _check_tensor(x)
    s = HTAFSurrogate(alpha=alpha, beta=beta, gamma=gamma)
    return kernels.htaf_backward(torch.ones_like(x), x.detach(), s.alpha, s.beta, s.gamma, 1.0)


def heaviside(x: torch.Tensor, surrogate: str | Surrogate = "htaf", **params) -> torch.Tensor:
    """Forward exactly 1[x ≥ 0]; backward the surrogate's derivative (HTAF by default).

    ``heaviside(v - v_th)`` is a spike; ``heaviside(x, "atan", alpha=2.0)`` uses a baseline.
    """
    return binarize(x, surrogate, mode="straight_through", signed=False, **params)


def sign(x: torch.Tensor, surrogate: str | Surrogate = "htaf", **params) -> torch.Tensor:
    """Forward sign(x) ∈ {−1, +1} with sign(0) = +1; backward the derivative of a sign
    (2·HTAF'(x) by default; Larq's ``approx_sign``/``swish_sign``/``ste`` as Larq defines them)."""
    return binarize(x, surrogate, mode="straight_through", signed=True, **params)
