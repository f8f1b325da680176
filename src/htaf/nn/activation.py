"""Binary activation modules: thin holders of a surrogate and a mode (the math is in
``htaf.functional``).

* :class:`HTAF` — smooth HTAF by default; switch to ``"hard"`` to evaluate the binary network.
* :class:`Heaviside` — 1[x ≥ 0], straight-through with any registered surrogate (HTAF by default).
* :class:`Sign` — sign(x) ∈ {−1, +1}, straight-through (BNN activations and weights).

``set_mode(model, "hard")`` switches every such layer of a model at once.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .. import functional as F
from .._checks import check_choice
from ..surrogates import HTAFSurrogate, Surrogate, get_surrogate

__all__ = [
    "HTAF",
    "BinaryActivation",
    "Heaviside",
    "Sign",
    "apply_constraints",
    "create_act",
    "set_mode",
    "using_mode",
]


class BinaryActivation(nn.Module):
    """Base of :class:`Heaviside` and :class:`Sign`: a surrogate, a mode and the output range."""

    signed: bool = False

    def __init__(self, surrogate: str | Surrogate = "htaf", mode: str = "straight_through",
                 **params):
        super().__init__()
        self.surrogate = get_surrogate(surrogate, **params)
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        check_choice("mode", value, F.MODES)
        self._mode = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.binarize(x, self.surrogate, mode=self._mode, signed=self.signed)

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self.surrogate.hyperparameters().items())
        return f"surrogate={self.surrogate.name}{', ' + params if params else ''}, mode={self._mode}"


class Heaviside(BinaryActivation):
    """1[x ≥ 0], trained straight-through with ``surrogate`` (HTAF by default).

    >>> act = Heaviside("atan", alpha=2.0)          # any registered surrogate, by name
    >>> act.mode = "smooth"                          # the surrogate's smooth form instead
    """


class Sign(BinaryActivation):
    """sign(x) ∈ {−1, +1} (sign(0) = +1), trained straight-through; backward 2·HTAF'(x) by
    default, Larq's ``ste``/``approx_sign``/``swish_sign`` as Larq defines them."""

    signed = True


class HTAF(Heaviside):
    """HTAF(x) = σ(α·x + β·tanh(γ·x)): smooth by default, ``mode="hard"`` for 1[x ≥ 0],
    ``mode="straight_through"`` for 1[x ≥ 0] forward and HTAF' backward.

    α, β, γ are attributes that can be changed during training (see :class:`htaf.nn.Anneal`).
    """

    def __init__(self, alpha: float = 0.5, beta: float = 4.0, gamma: float = 1.0,
                 mode: str = "smooth"):
        super().__init__(HTAFSurrogate(alpha=alpha, beta=beta, gamma=gamma), mode)

    def _param(name):
        def get(self) -> float:
            return getattr(self.surrogate, name)

        def put(self, value: float) -> None:
            self.surrogate = self.surrogate.replace(**{name: value})

        return property(get, put, doc=f"HTAF's {name} (validated on assignment).")

    alpha = _param("alpha")
    beta = _param("beta")
    gamma = _param("gamma")
    del _param

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, gamma={self.gamma:g}, mode={self.mode}"


def set_mode(model: nn.Module, mode: str) -> dict[nn.Module, str]:
    """Set ``mode`` on every binary activation in ``model``; return their previous modes."""
    check_choice("mode", mode, F.MODES)
    previous = {}
    for m in model.modules():
        if isinstance(m, BinaryActivation):
            previous[m] = m.mode
            m.mode = mode
    return previous


@contextlib.contextmanager
def using_mode(model: nn.Module, mode: str):
    """Context manager: ``with using_mode(model, "hard"): evaluate(model)``; restores after."""
    previous = set_mode(model, mode)
    try:
        yield model
    finally:
        for m, old in previous.items():
            m.mode = old


def create_act(name: str = "htaf", *, signed: bool = False, **params) -> nn.Module:
    """Activation by name, the convention every model in ``htaf.models`` uses:

    * ``"relu"`` (or ``"hardtanh"``, ``"identity"``) — full precision, the ceiling;
    * ``"htaf"`` — smooth HTAF (evaluate with ``set_mode(model, "hard")``);
    * ``"htaf_st"`` — straight-through Heaviside (or Sign) with HTAF's derivative;
    * any registered surrogate name — straight-through with that surrogate.

    ``signed=True`` gives :class:`Sign` layers (BNN) instead of :class:`Heaviside`.
    """
    if not isinstance(name, str):
        raise ValueError(f"activation must be a name, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    full_precision = {"relu": nn.ReLU, "hardtanh": nn.Hardtanh, "identity": nn.Identity}
    if key in full_precision:
        if params:
            raise ValueError(f"activation {name!r} takes no parameters, got {sorted(params)}")
        return full_precision[key]()
    cls = Sign if signed else Heaviside
    if key == "htaf":
        return cls(HTAFSurrogate(**params), mode="smooth")
    if key == "htaf_st":
        key = "htaf"
    try:
        return cls(key, mode="straight_through", **params)
    except ValueError as e:
        if str(e).startswith("unknown surrogate"):
            raise ValueError(f"unknown activation {name!r}; use relu, htaf, htaf_st or a "
                             f"surrogate name ({e.args[0].split('available: ')[1]})") from None
        raise


def apply_constraints(model: nn.Module) -> None:
    """Call ``constrain_()`` on every module of ``model`` that defines it (e.g. clipping the latent
    weights of binary layers). The engine calls this after each optimizer step."""
    for m in model.modules():
        fn = getattr(m, "constrain_", None)
        if callable(fn):
            fn()
