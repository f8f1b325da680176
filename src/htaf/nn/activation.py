"""Binary activation modules: thin holders of a surrogate, its hyperparameters and a mode (the
math is in :mod:`htaf.surrogates`).

* :class:`HTAF` — smooth HTAF by default; switch to ``"hard"`` to evaluate the binary network.
* :class:`Heaviside` — 1[x ≥ 0], straight-through with any registered surrogate (HTAF by default).
* :class:`Sign` — sign(x) ∈ {−1, +1}, straight-through (BNN activations and weights).

The surrogate's hyperparameters (HTAF's α, β, γ; a baseline's scale) are 0-d **buffers**: an
annealed γ is saved by ``state_dict()`` and restored by ``load_state_dict()``, and
``torch.compile`` reads it as a tensor, so changing it never recompiles. Assigning a number
(``act.gamma = 30.0``) validates it and writes it into the buffer in place.

``set_mode(model, "hard")`` switches every such layer of a model at once.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._checks import check_choice
from ..surrogates import MODES, HTAFSurrogate, Surrogate, get_surrogate, resolve_activation

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
    """Base of :class:`Heaviside` and :class:`Sign`: a surrogate (its class and hyperparameter
    buffers), a mode and the output range (``signed``)."""

    signed: bool = False

    def __init__(self, surrogate: str | Surrogate = "htaf", mode: str = "straight_through",
                 **params):
        super().__init__()
        spec = get_surrogate(surrogate, **params)
        self._param_names = spec.param_names()
        self._spec = spec
        for name, value in spec.hyperparameters().items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        check_choice("mode", value, MODES)
        self._mode = value

    @property
    def surrogate(self) -> Surrogate:
        """The surrogate with its current hyperparameter values (a frozen copy)."""
        return self._spec.replace(**{n: float(v) for n, v in self.hyperparameters().items()})

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        return {n: self._buffers[n] for n in self._param_names}

    def params(self) -> tuple[torch.Tensor, ...]:
        return tuple(self._buffers[n] for n in self._param_names)

    def __setattr__(self, name, value):
        spec = self.__dict__.get("_spec")
        if spec is not None and name in self._param_names and not isinstance(value, torch.Tensor):
            value = spec.check(name, value)          # ValueError naming the parameter
            with torch.no_grad():
                self._buffers[name].fill_(value)
            return
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._spec.apply(x, self._mode, self.signed, self.params())

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={float(v):g}" for k, v in self.hyperparameters().items())
        return f"surrogate={self._spec.name}{', ' + params if params else ''}, mode={self._mode}"


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

    ``alpha``, ``beta``, ``gamma`` are buffers (see :class:`htaf.nn.Anneal`).
    """

    def __init__(self, alpha: float = 0.5, beta: float = 4.0, gamma: float = 1.0,
                 mode: str = "smooth"):
        super().__init__(HTAFSurrogate(alpha=alpha, beta=beta, gamma=gamma), mode)

    def extra_repr(self) -> str:
        return (f"alpha={float(self.alpha):g}, beta={float(self.beta):g}, "
                f"gamma={float(self.gamma):g}, mode={self.mode}")


def set_mode(model: nn.Module, mode: str) -> dict[nn.Module, str]:
    """Set ``mode`` on every binary activation in ``model``; return their previous modes."""
    check_choice("mode", mode, MODES)
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


def create_act(name="htaf", *, signed: bool = False, family: str | None = None,
               **params) -> nn.Module:
    """The activation module of a name, as :func:`htaf.surrogates.resolve_activation` reads it:

    * ``"relu"`` (or ``"hardtanh"``, ``"identity"``) — full precision, the ceiling;
    * ``"htaf"`` — smooth HTAF (evaluate with ``set_mode(model, "hard")``);
    * ``"htaf_st"`` — straight-through Heaviside (or Sign) with HTAF's derivative;
    * any registered surrogate name — straight-through with that surrogate.

    ``signed=True`` gives :class:`Sign` layers instead of :class:`Heaviside`; ``family`` rejects
    a mode that family cannot run.
    """
    spec = resolve_activation(name, params, family=family)
    if spec.full_precision:
        return {"relu": nn.ReLU, "hardtanh": nn.Hardtanh, "identity": nn.Identity}[
            spec.full_precision]()
    return (Sign if signed else Heaviside)(spec.surrogate, mode=spec.mode)


def apply_constraints(model: nn.Module) -> None:
    """Call ``constrain_()`` on every module of ``model`` that defines it (e.g. clipping the latent
    weights of binary layers). The engine calls this after each optimizer step."""
    for m in model.modules():
        fn = getattr(m, "constrain_", None)
        if callable(fn):
            fn()
