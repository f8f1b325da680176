r"""HTAF and binary steps as plain functions.

* :func:`htaf` — smooth: forward HTAF(x) = σ(α·x + β·tanh(γ·x)), backward HTAF'(x).
* :func:`heaviside` — straight-through: forward exactly 1[x ≥ 0], backward a surrogate's derivative.
* :func:`sign` — straight-through: forward sign(x) ∈ {−1, +1} (sign(0) = +1), backward 2× the
  derivative of a step surrogate (HTAF: 2·HTAF'(x)).
* :func:`binarize` — all of the above, and the hard (no-gradient) step, behind one ``mode`` switch.

Every backward saves only the input and recomputes the derivative, in one fused kernel where one
serves the device (Triton on CUDA, native code on the CPU) and in the surrogate's PyTorch formula
elsewhere (:mod:`htaf.surrogates`). Hyperparameters may be numbers or 0-d tensors.
"""

from __future__ import annotations

import torch

from ._checks import check_choice
from .surrogates import MODES, Surrogate, get_surrogate

__all__ = ["MODES", "binarize", "heaviside", "htaf", "htaf_derivative", "sign"]


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
    return s.apply(x, mode, signed)


def _htaf_params(alpha, beta, gamma):
    """``(surrogate, params)``: numbers are validated; tensors (e.g. buffers) are used as they are."""
    if any(isinstance(p, torch.Tensor) for p in (alpha, beta, gamma)):
        return get_surrogate("htaf"), (alpha, beta, gamma)
    s = get_surrogate("htaf", alpha=alpha, beta=beta, gamma=gamma)   # cached per value
    return s, s.params


def htaf(x: torch.Tensor, alpha: float = 0.5, beta: float = 4.0, gamma: float = 1.0) -> torch.Tensor:
    r"""HTAF(x) = σ(α·x + β·tanh(γ·x)), the smooth mode; differentiable (backward HTAF'(x)).

    Args:
        x: floating-point tensor of any shape, dtype and device.
        alpha: tail slope (> 0): far from 0 the gradient decays like e^(−α|x|).
        beta: jump strength (≥ 0): logit gap of the central transition.
        gamma: sharpness (> 0): the central transition is about 1/γ wide.
    """
    _check_tensor(x)
    s, params = _htaf_params(alpha, beta, gamma)
    return s.apply(x, "smooth", params=params)


def htaf_derivative(x: torch.Tensor, alpha: float = 0.5, beta: float = 4.0,
                    gamma: float = 1.0) -> torch.Tensor:
    r"""HTAF'(x) = HTAF·(1 − HTAF)·(α + β·γ·sech²(γ·x)), elementwise, no autograd graph."""
    _check_tensor(x)
    s, params = _htaf_params(alpha, beta, gamma)
    x = x.detach()
    return s.backward(torch.ones_like(x), x, params=params)


def heaviside(x: torch.Tensor, surrogate: str | Surrogate = "htaf", **params) -> torch.Tensor:
    """Forward exactly 1[x ≥ 0]; backward the surrogate's derivative (HTAF by default).

    ``heaviside(v - v_th)`` is a spike; ``heaviside(x, "atan", alpha=2.0)`` uses a baseline.
    """
    return binarize(x, surrogate, mode="straight_through", signed=False, **params)


def sign(x: torch.Tensor, surrogate: str | Surrogate = "htaf", **params) -> torch.Tensor:
    """Forward sign(x) ∈ {−1, +1} with sign(0) = +1; backward the derivative of a sign
    (2·HTAF'(x) by default; Larq's ``approx_sign``/``swish_sign``/``ste`` as Larq defines them)."""
    return binarize(x, surrogate, mode="straight_through", signed=True, **params)
