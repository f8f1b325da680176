r"""Surrogate derivatives: HTAF and the baselines the peers use, behind one registry.

A surrogate stands in for the derivative of a step. The forward pass of a straight-through layer
is always the exact step (1[x ≥ 0] or sign(x)); the backward pass multiplies the incoming gradient
by the surrogate's ``derivative(x)``. ``primitive(x)`` is the smooth function whose derivative that
is (anchored so that it equals ½ at x = 0 for step-native surrogates): the forward of *smooth*
mode, and what ``htaf plot`` draws.

Each surrogate is native to a step ({0, 1}) or to a sign ({−1, +1}); used for the other, its
derivative is scaled by 2 or ½ (sign = 2·step − 1). ``ste`` passes the gradient through unchanged
in both, as Larq's ``ste_sign`` and snnTorch's ``STE`` do.

>>> s = get_surrogate("atan", alpha=2.0)
>>> spikes = s(torch.randn(8, requires_grad=True))   # heaviside forward, atan backward

Register your own by subclassing :class:`Surrogate` and decorating it with
``@register_surrogate("name")``; give it ``params`` and ``derivative`` (and ``primitive`` to allow
smooth mode and plotting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import kernels
from ._checks import check_real
from .kernels.reference import compute_dtype

__all__ = [
    "STE",
    "ATan",
    "ApproxSign",
    "Erf",
    "FastSigmoid",
    "HTAFSurrogate",
    "Param",
    "PiecewiseExp",
    "PiecewiseQuadratic",
    "Rect",
    "Sigmoid",
    "SuperSpike",
    "Surrogate",
    "SwishSign",
    "Triangle",
    "get_surrogate",
    "list_surrogates",
    "register_surrogate",
]


@dataclass(frozen=True)
class Param:
    """A surrogate hyperparameter: its name, default and lower bound (``low`` < value, or ≤ when
    ``inclusive``). ``allow_inf`` lets ``math.inf`` through (e.g. an unclipped STE)."""

    name: str
    default: float
    low: float = 0.0
    inclusive: bool = False
    allow_inf: bool = False


_REGISTRY: dict[str, type[Surrogate]] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_surrogate(name: str, *, override: bool = False):
    """Class decorator adding a :class:`Surrogate` subclass to the registry under ``name``."""

    def deco(cls: type[Surrogate]) -> type[Surrogate]:
        key = _key(name)
        if not (isinstance(cls, type) and issubclass(cls, Surrogate)):
            raise TypeError(f"register_surrogate({name!r}) needs a Surrogate subclass, got {cls!r}")
        if key in _REGISTRY and not override:
            raise ValueError(f"surrogate {name!r} is already registered (pass override=True)")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return deco


def list_surrogates() -> list[str]:
    """Names of every registered surrogate, HTAF first."""
    return sorted(_REGISTRY, key=lambda n: (n != "htaf", n))


def get_surrogate(surrogate: str | Surrogate | type[Surrogate] = "htaf", **params) -> Surrogate:
    """Resolve a name, class or instance to a :class:`Surrogate` instance.

    ``get_surrogate("atan", alpha=2.0)``; an instance is returned as is (or with ``params``
    replaced); unknown names and parameters raise ``ValueError`` naming them.
    """
    if isinstance(surrogate, Surrogate):
        return surrogate.replace(**params) if params else surrogate
    if isinstance(surrogate, type) and issubclass(surrogate, Surrogate):
        return surrogate(**params)
    if not isinstance(surrogate, str):
        raise ValueError(f"surrogate must be a name or a Surrogate, got {surrogate!r}")
    key = _key(surrogate)
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown surrogate {surrogate!r}; available: {', '.join(list_surrogates())}")
    return _REGISTRY[key](**params)


class Surrogate:
    """Base class: a named, parameterised surrogate derivative of a step function.

    Instances are immutable and hashable (so ``torch.compile`` can guard on them); change a
    parameter with :meth:`replace`. Subclasses set ``params`` and implement ``derivative`` and
    ``primitive`` in the *native* convention (``native = "step"`` or ``"sign"``).
    """

    name: ClassVar[str] = "surrogate"
    native: ClassVar[str] = "step"
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, **kwargs):
        known = {p.name for p in self.params}
        unknown = set(kwargs) - known
        if unknown:
            accepted = ", ".join(sorted(known)) or "none"
            raise ValueError(f"surrogate {self.name!r} got unknown parameter(s) "
                             f"{', '.join(sorted(unknown))}; it accepts: {accepted}")
        values = {}
        for p in self.params:
            v = kwargs.get(p.name, p.default)
            values[p.name] = check_real(f"{self.name}.{p.name}", v, low=p.low,
                                        strict=not p.inclusive, allow_inf=p.allow_inf)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, item):
        values = self.__dict__.get("_values", {})
        if item in values:
            return values[item]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {item!r}")

    def __setattr__(self, key, value):
        raise AttributeError(f"surrogates are immutable; use .replace({key}=...)")

    def hyperparameters(self) -> dict[str, float]:
        return dict(self._values)

    def replace(self, **params) -> Surrogate:
        return type(self)(**{**self._values, **params})

    def __eq__(self, other):
        return type(other) is type(self) and other._values == self._values

    def __hash__(self):
        return hash((type(self), tuple(sorted(self._values.items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v:g}" for k, v in self._values.items())
        return f"{type(self).__name__}({args})"

    # -- the math, in the native convention ------------------------------------------------
    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"surrogate {self.name!r} has no smooth form")

    # -- used by htaf.functional -----------------------------------------------------------
    def grad_scale(self, signed: bool) -> float:
        """Factor from the native derivative to the derivative of a step (``signed=False``) or
        a sign (``signed=True``)."""
        if self.native == "identity":
            return 1.0
        native_signed = self.native == "sign"
        return 1.0 if signed == native_signed else (2.0 if signed else 0.5)

    def smooth(self, x: torch.Tensor, signed: bool = False) -> torch.Tensor:
        """The smooth function of smooth mode: the primitive, mapped to [0, 1] or [−1, 1]."""
        xf = x.to(compute_dtype(x.dtype))
        y = self.primitive(xf)
        if self.native == "sign" and not signed:
            y = 0.5 * (y + 1.0)
        elif self.native == "step" and signed:
            y = 2.0 * y - 1.0
        return y.to(x.dtype)

    def backward(self, grad: torch.Tensor, x: torch.Tensor, signed: bool = False) -> torch.Tensor:
        """``grad · derivative(x)``, scaled for a step or a sign output. The built-in baselines run
        as one fused op (Triton on CUDA); subclasses and user surrogates use ``derivative``."""
        if type(self) is _FUSED.get(self.name):
            param = next(iter(self._values.values()), 0.0)
            return kernels.surrogate_backward(grad, x, self.name, param, self.grad_scale(signed))
        xf = x.to(compute_dtype(x.dtype))
        d = self.derivative(xf) * self.grad_scale(signed)
        return (grad.to(xf.dtype) * d).to(grad.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Straight-through Heaviside with this surrogate (snnTorch/SpikingJelly style)."""
        from .functional import heaviside

        return heaviside(x, self)


@register_surrogate("htaf")
class HTAFSurrogate(Surrogate):
    r"""HTAF, the heavy-tailed sigmoid–tanh composite.

    HTAF(x) = σ(α·x + β·tanh(γ·x)),  HTAF'(x) = HTAF·(1 − HTAF)·(α + β·γ·sech²(γ·x)).
    β: jump strength (logit gap of the central transition); γ: sharpness (width ≈ 1/γ);
    α: tail slope (gradient decays like e^(−α|x|)). Defaults α = 0.5, β = 4, γ = 1
    (slope at 0 is (α + βγ)/4 = 1.125). Fused kernels on CUDA.
    """

    params = (Param("alpha", 0.5), Param("beta", 4.0, inclusive=True), Param("gamma", 1.0))

    def derivative(self, x):
        return kernels.reference.htaf_derivative(x, self.alpha, self.beta, self.gamma)

    def primitive(self, x):
        return kernels.reference.htaf_forward(x, self.alpha, self.beta, self.gamma)

    def smooth(self, x, signed=False):
        y = kernels.htaf_forward(x, self.alpha, self.beta, self.gamma)
        return 2.0 * y - 1.0 if signed else y

    def backward(self, grad, x, signed=False):
        return kernels.htaf_backward(grad, x, self.alpha, self.beta, self.gamma,
                                     self.grad_scale(signed))


@register_surrogate("sigmoid")
class Sigmoid(Surrogate):
    r"""Sigmoid surrogate: g'(x) = α·σ(αx)·(1 − σ(αx)), g(x) = σ(αx).

    α = 4 is SpikingJelly's ``Sigmoid`` default; snnTorch's ``sigmoid`` uses slope 25.
    """

    params = (Param("alpha", 4.0),)

    def derivative(self, x):
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * torch.sigmoid(-self.alpha * x)

    def primitive(self, x):
        return torch.sigmoid(self.alpha * x)


@register_surrogate("atan")
class ATan(Surrogate):
    r"""Arctangent surrogate: g'(x) = (α/2) / (1 + (π/2·α·x)²), g(x) = ½ + arctan(π/2·α·x)/π.

    α = 2 as in SpikingJelly ``ATan`` and snnTorch ``atan`` (snnTorch's default). Polynomial
    (x⁻²) tail: heavier than HTAF's exponential one.
    """

    params = (Param("alpha", 2.0),)

    def derivative(self, x):
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)

    def primitive(self, x):
        return 0.5 + torch.atan(math.pi / 2 * self.alpha * x) / math.pi


@register_surrogate("fast_sigmoid")
class FastSigmoid(Surrogate):
    r"""Fast-sigmoid surrogate (SuperSpike form): g'(x) = 1 / (1 + k·|x|)², g(x) = ½ + x/(1 + k|x|).

    ``slope`` = k = 25 as in snnTorch ``fast_sigmoid``; Norse's ``SuperSpike`` is the same
    shape with α = 100. Its mass is
    2/k, not 1: it is a gradient shape, not an approximation of H. Polynomial tail.
    """

    params = (Param("slope", 25.0),)

    def derivative(self, x):
        return 1.0 / (1.0 + self.slope * x.abs()) ** 2

    def primitive(self, x):
        return 0.5 + x / (1.0 + self.slope * x.abs())


@register_surrogate("super_spike")
class SuperSpike(Surrogate):
    r"""SuperSpike surrogate: g'(x) = α / (1 + |x|)², g(x) = ½ + α·x/(1 + |x|).

    α = 1 as in SpikingJelly ``SuperSpike`` (an outer scale). Norse's "superspike" puts its α
    inside the bracket, 1/(α|x| + 1)²: that is :class:`FastSigmoid` here. Polynomial tail.
    """

    params = (Param("alpha", 1.0),)

    def derivative(self, x):
        return self.alpha / (1.0 + x.abs()) ** 2

    def primitive(self, x):
        return 0.5 + self.alpha * x / (1.0 + x.abs())


@register_surrogate("piecewise_quadratic")
class PiecewiseQuadratic(Surrogate):
    r"""Piecewise-quadratic surrogate: g'(x) = α − α²·|x| for |x| ≤ 1/α, else 0.

    g(x) = ½ + sign(x)·(α|x| − α²x²/2) inside, 0 or 1 outside. α = 1 as in SpikingJelly.
    """

    params = (Param("alpha", 1.0),)

    def derivative(self, x):
        a = self.alpha
        return torch.clamp(a - a * a * x.abs(), min=0.0)

    def primitive(self, x):
        a = self.alpha
        ax = torch.clamp(x.abs(), max=1.0 / a)
        return 0.5 + torch.sign(x) * (a * ax - 0.5 * a * a * ax * ax)


@register_surrogate("piecewise_exp")
class PiecewiseExp(Surrogate):
    r"""Piecewise-exponential surrogate: g'(x) = (α/2)·e^(−α|x|), g(x) = ½ + sign(x)(1 − e^(−α|x|))/2.

    α = 1 as in SpikingJelly ``PiecewiseExp``. Same exponential tail rate family as HTAF's α,
    without HTAF's sharp centre.
    """

    params = (Param("alpha", 1.0),)

    def derivative(self, x):
        return (self.alpha / 2) * torch.exp(-self.alpha * x.abs())

    def primitive(self, x):
        return 0.5 + 0.5 * torch.sign(x) * (1.0 - torch.exp(-self.alpha * x.abs()))


@register_surrogate("erf")
class Erf(Surrogate):
    r"""Gaussian (erf) surrogate: g'(x) = (α/√π)·e^(−α²x²), g(x) = (1 + erf(αx))/2.

    α = 2 as in SpikingJelly ``Erf``. Gaussian tail: the lightest here.
    """

    params = (Param("alpha", 2.0),)

    def derivative(self, x):
        return (self.alpha / math.sqrt(math.pi)) * torch.exp(-(self.alpha * x) ** 2)

    def primitive(self, x):
        return 0.5 * (1.0 + torch.erf(self.alpha * x))


@register_surrogate("triangle")
class Triangle(Surrogate):
    r"""Triangle surrogate: g'(x) = α·max(0, 1 − |x|), g(x) = ½ + sign(x)·α·(u − u²/2), u = min(|x|, 1).

    α = 1 (the spec's default); Norse ``triangle`` has the same formula with α = 0.3 by default.
    snnTorch's ``triangular`` is a different function (±threshold), not this one. Compact support.
    """

    params = (Param("alpha", 1.0),)

    def derivative(self, x):
        return self.alpha * torch.clamp(1.0 - x.abs(), min=0.0)

    def primitive(self, x):
        u = torch.clamp(x.abs(), max=1.0)
        return 0.5 + torch.sign(x) * self.alpha * (u - 0.5 * u * u)


@register_surrogate("rect")
class Rect(Surrogate):
    r"""Rectangular surrogate: g'(x) = α·1[|x| < 1/(2α)], g(x) = ½ + clamp(α·x, −½, ½).

    ``alpha`` = 1 as in SpikingJelly ``Rect`` (the spec's "a"). Compact support.
    """

    params = (Param("alpha", 1.0),)

    def derivative(self, x):
        return self.alpha * (x.abs() < 0.5 / self.alpha).to(x.dtype)

    def primitive(self, x):
        return 0.5 + torch.clamp(self.alpha * x, -0.5, 0.5)


@register_surrogate("ste")
class STE(Surrogate):
    r"""Straight-through estimator: g'(x) = 1[|x| ≤ clip] (``clip=math.inf``: plain STE, g' = 1).

    Passes the gradient through unchanged for a step and for a sign alike, as Larq ``ste_sign``
    (clip 1) and snnTorch ``STE`` do. g(x) = clamp(x, −clip, clip) (+½ for a step).
    """

    native = "identity"
    params = (Param("clip", 1.0, allow_inf=True),)

    def derivative(self, x):
        return (x.abs() <= self.clip).to(x.dtype)

    def primitive(self, x):
        return torch.clamp(x, -self.clip, self.clip)

    def smooth(self, x, signed=False):
        xf = x.to(compute_dtype(x.dtype))
        y = self.primitive(xf)
        return (y if signed else y + 0.5).to(x.dtype)


@register_surrogate("approx_sign")
class ApproxSign(Surrogate):
    r"""ApproxSign (Bi-Real Net, Larq ``approx_sign``), native to a sign:
    g'(x) = 2 − 2|x| for |x| ≤ 1, else 0;  g(x) = sign(x)·(2|x| − x²) inside, ±1 outside.
    """

    native = "sign"
    params = ()

    def derivative(self, x):
        return torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)

    def primitive(self, x):
        u = torch.clamp(x.abs(), max=1.0)
        return torch.sign(x) * (2.0 * u - u * u)


@register_surrogate("swish_sign")
class SwishSign(Surrogate):
    r"""SwishSign (BNN+, Larq ``swish_sign``), native to a sign:
    g(x) = 2σ(βx)·(1 + βx·(1 − σ(βx))) − 1,
    g'(x) = β·(2 − βx·tanh(βx/2)) / (1 + cosh(βx)).  β = 5.
    """

    native = "sign"
    params = (Param("beta", 5.0),)

    def derivative(self, x):
        # 1 + cosh(bx) = 2·cosh²(bx/2); written as 2/(1+cosh) = sech²(bx/2) to avoid overflow.
        # Where sech² underflows to 0 the derivative is 0 (not bx·0 = NaN at ±inf).
        bx = self.beta * x
        s2 = kernels.reference.sech2(bx / 2)
        d = 0.5 * self.beta * (2.0 - bx * torch.tanh(bx / 2)) * s2
        return torch.where(s2 == 0, torch.zeros_like(d), d)

    def primitive(self, x):
        bx = self.beta * x
        s = torch.sigmoid(bx)
        return 2.0 * s * (1.0 + bx * torch.sigmoid(-bx)) - 1.0


#: The built-in classes the fused ``surrogate_backward`` op implements (a class registered later
#: under the same name, ``override=True``, has its own ``derivative`` and must not use the op).
_FUSED: dict[str, type[Surrogate]] = {name: _REGISTRY[name] for name in kernels.FUSED_SURROGATES}
