r"""Surrogate gradients: HTAF and the baselines the peers use, one small frozen dataclass each.

A surrogate stands in for the derivative of a step. The forward pass of a straight-through layer
is always the exact step (1[x ≥ 0] or sign(x)); the backward pass multiplies the incoming gradient
by the surrogate's derivative. Each class is the single definition of its surrogate:

* ``derivative(x, *hyperparameters)`` — the formula of g'(x), in PyTorch. It is the reference every
  fused kernel (Triton on CUDA, native code on the CPU) is tested against, and the path that runs
  where no fused kernel does.
* ``primitive(x, *hyperparameters)`` — the smooth g(x) whose derivative that is (½ at x = 0 for
  step-native surrogates): the forward of *smooth* mode, and what ``htaf plot`` draws.
* ``kernel_id`` — the name of its kernel form: the fused kernels compute the same formula from the
  same raw hyperparameters, selected by this id (``htaf.kernels.triton_surrogates``).

The formulas are static functions of ``x`` and the hyperparameters, which may be Python numbers or
0-d tensors: modules keep them in buffers (:class:`htaf.nn.Heaviside`), so an annealed value is
state that ``state_dict()`` saves and ``torch.compile`` reads as a tensor.

Each surrogate is native to a step ({0, 1}) or to a sign ({−1, +1}); used for the other, its
derivative is scaled by 2 or ½ (sign = 2·step − 1). ``ste`` passes the gradient through unchanged
in both, as Larq's ``ste_sign`` and snnTorch's ``STE`` do.

>>> s = get_surrogate("atan", alpha=2.0)         # ATan(alpha=2.0)
>>> spikes = s(torch.randn(8, requires_grad=True))   # heaviside forward, atan backward

Register your own: a frozen dataclass subclassing :class:`Surrogate` with its hyperparameters as
fields (:func:`hyperparameter`), ``derivative`` (and ``primitive`` for smooth mode and plotting),
decorated with ``@register_surrogate("name")``. It runs on the PyTorch path.

:func:`resolve_activation` turns the activation names used across the library (``"htaf"``,
``"htaf_st"``, a surrogate name, ``"relu"``) into an explicit surrogate and mode, the same
everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from . import kernels
from ._checks import check_real

__all__ = [
    "STE", "ATan", "ActivationSpec", "ApproxSign", "Erf", "FastSigmoid", "HTAFSurrogate",
    "MODES", "PiecewiseExp", "PiecewiseQuadratic", "Rect", "Sigmoid", "SuperSpike", "Surrogate",
    "SwishSign", "Triangle", "compute_dtype", "get_surrogate", "hyperparameter", "list_surrogates",
    "register_surrogate", "resolve_activation",
]

#: How a binary activation runs: ``smooth`` (forward g(x), backward g'(x)), ``hard`` (forward the
#: exact step, no gradient) or ``straight_through`` (forward the exact step, backward g'(x)).
MODES = ("smooth", "hard", "straight_through")

_REGISTRY: dict[str, type[Surrogate]] = {}
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float32 for half types, the input dtype otherwise."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def normalize_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def hyperparameter(default: float, *, low: float = 0.0, inclusive: bool = False,
                   allow_inf: bool = False):
    """A surrogate field: its default and lower bound (``low`` < value, or ≤ when ``inclusive``);
    ``allow_inf`` lets ``math.inf`` through (an unclipped STE)."""
    return field(default=default,
                 metadata={"low": low, "inclusive": inclusive, "allow_inf": allow_inf})


def register_surrogate(name: str, *, override: bool = False):
    """Class decorator adding a :class:`Surrogate` subclass to the registry under ``name``."""

    def deco(cls: type[Surrogate]) -> type[Surrogate]:
        key = normalize_name(name)
        if not (isinstance(cls, type) and issubclass(cls, Surrogate)):
            raise TypeError(f"register_surrogate({name!r}) needs a Surrogate subclass, got {cls!r}")
        if "__dataclass_fields__" not in cls.__dict__:
            raise TypeError(f"register_surrogate({name!r}): {cls.__name__} must be a "
                            f"@dataclass(frozen=True) whose fields are its hyperparameters")
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
    key = normalize_name(surrogate)
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown surrogate {surrogate!r}; available: {', '.join(list_surrogates())}")
    cls = _REGISTRY[key]
    # Instances are frozen, so one per (class, numeric params) is shared: ``heaviside(x, "atan")``
    # then skips building and validating a dataclass on every call (≈6 µs of a ≈25 µs forward
    # on a [64, 128] activation). Keyed by the class, so a re-registered name gets its own.
    cache_key = (cls, *sorted(params.items())) if _numeric(params) else None
    instance = _INSTANCES.get(cache_key) if cache_key else None
    if instance is not None:
        return instance
    unknown = set(params) - set(cls.param_names())
    if unknown:
        accepted = ", ".join(cls.param_names()) or "none"
        raise ValueError(f"surrogate {key!r} got unknown parameter(s) "
                         f"{', '.join(sorted(unknown))}; it accepts: {accepted}")
    instance = cls(**params)
    if cache_key:
        if len(_INSTANCES) >= 1024:
            _INSTANCES.clear()
        _INSTANCES[cache_key] = instance
    return instance


_INSTANCES: dict[tuple, Surrogate] = {}


def _numeric(params: dict) -> bool:
    """Whether every value is a plain number (hashable by value; a tensor is not cached)."""
    return all(type(v) in (float, int) for v in params.values())


Params = tuple  # hyperparameter values in field order: floats or 0-d tensors


@dataclass(frozen=True)
class Surrogate:
    """Base class of the surrogates: hyperparameters as dataclass fields, the math as static
    functions of ``(x, *hyperparameters)`` in the *native* convention (``native`` = ``"step"``,
    ``"sign"`` or ``"identity"``)."""

    name: ClassVar[str] = "surrogate"
    native: ClassVar[str] = "step"
    kernel_id: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kernel_id" not in cls.__dict__:   # a subclass has its own formula: the PyTorch path
            cls.kernel_id = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            low, strict = f.metadata.get("low", 0.0), not f.metadata.get("inclusive", False)
            value = check_real(f"{self.name}.{f.name}", getattr(self, f.name), low=low,
                               strict=strict, allow_inf=f.metadata.get("allow_inf", False))
            object.__setattr__(self, f.name, value)

    # -- the math (native convention); subclasses define these ------------------------------
    @staticmethod
    def derivative(x: torch.Tensor, *params) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def primitive(x: torch.Tensor, *params) -> torch.Tensor:
        raise NotImplementedError("this surrogate has no smooth form")

    # -- values ------------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def params(self) -> Params:
        return tuple(getattr(self, n) for n in self.param_names())

    def hyperparameters(self) -> dict[str, float]:
        return dict(zip(self.param_names(), self.params))

    def replace(self, **params) -> Surrogate:
        return dataclasses.replace(self, **params)

    def check(self, name: str, value) -> float:
        """Validate a new value of hyperparameter ``name`` (raises ``ValueError`` naming it)."""
        return getattr(self.replace(**{name: value}), name)

    def __repr__(self):
        args = ", ".join(f"{k}={v:g}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    # -- conventions ---------------------------------------------------------------------------
    def grad_scale(self, signed: bool) -> float:
        """Factor from the native derivative to the derivative of a step (``signed=False``) or
        a sign (``signed=True``)."""
        if self.native == "identity":
            return 1.0
        native_signed = self.native == "sign"
        return 1.0 if signed == native_signed else (2.0 if signed else 0.5)

    def grad(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """g'(x) with this instance's hyperparameters (or ``params``), in the compute dtype."""
        params = self.params if params is None else params
        return self.derivative(x.to(compute_dtype(x.dtype)), *params)

    def smooth(self, x: torch.Tensor, signed: bool = False,
               params: Params | None = None) -> torch.Tensor:
        """The forward of smooth mode: the primitive, mapped to [0, 1] or [−1, 1]."""
        params = self.params if params is None else params
        if self.kernel_id == HTAFSurrogate.kernel_id and kernels.fused(x):
            y = kernels.htaf_forward(x, params)
        else:
            y = self.primitive(x.to(compute_dtype(x.dtype)), *params)
            if self.native == "identity":
                y = y if signed else y + 0.5
                return y.to(x.dtype)
            if self.native == "sign":
                y = y if signed else 0.5 * (y + 1.0)
                return y.to(x.dtype)
        return (2.0 * y - 1.0 if signed else y).to(x.dtype)

    def backward(self, grad: torch.Tensor, x: torch.Tensor, signed: bool = False,
                 params: Params | None = None) -> torch.Tensor:
        """``grad · derivative(x)``, scaled for a step or a sign output: one fused op where a
        kernel serves this device and dtype, the PyTorch formula elsewhere."""
        params = self.params if params is None else params
        scale = self.grad_scale(signed)
        if self.kernel_id is not None and kernels.fused(x) and grad.dtype == x.dtype:
            return kernels.surrogate_backward(grad, x, self.kernel_id, params,
                                              scale)
        d = self.grad(x, params)
        return (grad.to(d.dtype) * (d * scale)).to(grad.dtype)

    # -- application -----------------------------------------------------------------------
    def apply(self, x: torch.Tensor, mode: str = "straight_through", signed: bool = False,
              params: Params | None = None) -> torch.Tensor:
        """Apply this surrogate as a binary activation in ``mode`` (see :data:`MODES`):

        * ``"straight_through"``: forward the exact step (sign if ``signed``), backward g'(x);
        * ``"smooth"``: forward g(x) (mapped to [−1, 1] if ``signed``), backward g'(x);
        * ``"hard"``: forward the exact step, no gradient.

        ``params`` overrides the hyperparameters (e.g. a module's buffers). NaN gives NaN in
        every mode; sign(0) = +1.
        """
        if mode == "hard":
            return step(x.detach(), signed)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
        params = self.params if params is None else tuple(params)
        if (mode == "smooth" and self.kernel_id == HTAFSurrogate.kernel_id
                and x.requires_grad and torch.is_grad_enabled() and kernels.saves_derivative(x)):
            return _SmoothHTAFFunction.apply(x, params, signed, self.grad_scale(signed))
        return _BinaryFunction.apply(x, self, params, signed, mode == "smooth")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Straight-through Heaviside with this surrogate (snnTorch/SpikingJelly style)."""
        return self.apply(x)


def step(x: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """1[x ≥ 0] (``signed=False``) or sign(x) with sign(0) = +1; NaN stays NaN; no gradient.

    One fused pass where a kernel serves ``x``; otherwise (and while exporting to ONNX) plain
    PyTorch ops."""
    if kernels.fused(x) and not _in_onnx_export():
        return kernels.step(x, signed)
    on = x >= 0
    y = torch.where(on, 1.0, -1.0).to(x.dtype) if signed else on.to(x.dtype)
    return torch.where(torch.isnan(x), x, y)


def _in_onnx_export() -> bool:
    """``torch.onnx.is_in_onnx_export()`` without its two imports per call (≈1 µs of a step's
    forward on a small tensor): the two flags it reads (PyTorch 2.6–2.14), looked up once;
    the public function where they moved, and under ``torch.compile`` (which traces only it)."""
    flags = _ONNX_FLAGS or _onnx_flags()
    if flags[0] is None or torch.compiler.is_compiling():
        return torch.onnx.is_in_onnx_export()
    return flags[0].in_onnx_export or flags[1]._is_onnx_exporting


_ONNX_FLAGS: list = []


def _onnx_flags() -> list:
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
        GLOBALS.in_onnx_export, _flags._is_onnx_exporting   # noqa: B018
        _ONNX_FLAGS[:] = [GLOBALS, _flags]
    except (ImportError, AttributeError):
        _ONNX_FLAGS[:] = [None, None]
    return _ONNX_FLAGS


class _BinaryFunction(torch.autograd.Function):
    """Forward: the exact step/sign, or the surrogate's smooth form; backward: the surrogate's
    derivative scaled for a step or a sign. Saves only ``x`` (and tensor hyperparameters)."""

    # ``forward(ctx, ...)`` rather than ``setup_context``: with one, ``Function.apply`` binds the
    # arguments through ``inspect.signature`` on every call, ≈40 µs on the CPU, more than the
    # kernels take on a [64, 128] activation.
    @staticmethod
    def forward(ctx, x, surrogate, params, signed, smooth):
        tensors = [p for p in params if isinstance(p, torch.Tensor)]
        ctx.save_for_backward(x, *tensors)
        ctx.numbers = [None if isinstance(p, torch.Tensor) else p for p in params]
        ctx.surrogate, ctx.signed = surrogate, signed
        if smooth:
            return surrogate.smooth(x, signed, params)
        return step(x, signed)

    @staticmethod
    def backward(ctx, grad):
        x, *tensors = ctx.saved_tensors
        it = iter(tensors)
        params = tuple(next(it) if p is None else p for p in ctx.numbers)
        return ctx.surrogate.backward(grad, x, ctx.signed, params), None, None, None, None


class _SmoothHTAFFunction(torch.autograd.Function):
    """Smooth HTAF where its derivative is cheaper to save than to recompute (the CPU kernels:
    :func:`htaf.kernels.saves_derivative`): the forward evaluates HTAF and HTAF' together and
    saves the derivative (the size of ``x``, which is then not saved); the backward multiplies,
    into the derivative's own memory when nothing can read it again (:func:`_consumable`)."""

    @staticmethod
    def forward(ctx, x, params, signed, scale):
        y, d = kernels.htaf_forward_grad(x, params, scale)
        ctx.save_for_backward(d)
        ctx.plain_save = not torch.compiler.is_compiling() and _no_saved_tensor_hooks()
        return 2.0 * y - 1.0 if signed else y

    @staticmethod
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        return kernels.times_saved(grad, d, consume=_consumable(ctx)), None, None, None


# Private PyTorch functions (present in 2.4-2.14; AOTAutograd and checkpointing use them).
_keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
_top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def _no_saved_tensor_hooks() -> bool:
    """No ``torch.autograd.graph.saved_tensors_hooks`` (checkpointing, offloading) is active:
    what a backward unpacks is then the tensor the forward saved, not a hook's object."""
    return _top_hooks is not None and _top_hooks(False) is None


def _consumable(ctx) -> bool:
    """In a backward: the tensor ``ctx`` saved is read by nobody after it. True when the forward
    saved it without hooks, forward and backward run eagerly (not traced: compiled autograd
    included), and this backward frees the graph (no ``retain_graph``): the saved tensor is then
    released right after, and a second backward through it raises. (The one way to reach it
    beforehand is ``y.grad_fn.saved_tensors``; a tensor taken from there changes in the
    backward.)"""
    return (ctx.plain_save and _keep_graph is not None and not torch.compiler.is_compiling()
            and not _keep_graph())


# ------------------------------------------------------------------------------ the surrogates

def sech2(u: torch.Tensor) -> torch.Tensor:
    """sech²(u) = 4t / (1 + t)², t = e^(−2|u|): no overflow, no cancellation in the tails."""
    t = torch.exp(-2.0 * u.abs())
    return 4.0 * t / (1.0 + t) ** 2


@register_surrogate("htaf")
@dataclass(frozen=True, repr=False)
class HTAFSurrogate(Surrogate):
    r"""HTAF, the heavy-tailed sigmoid–tanh composite.

    HTAF(x) = σ(α·x + β·tanh(γ·x)),  HTAF'(x) = HTAF·(1 − HTAF)·(α + β·γ·sech²(γ·x)).
    β: jump strength (logit gap of the central transition); γ: sharpness (width ≈ 1/γ);
    α: tail slope (gradient decays like e^(−α|x|)). Defaults α = 0.5, β = 4, γ = 1
    (slope at 0 is (α + βγ)/4 = 1.125). σ(z)·σ(−z) is used for HTAF·(1 − HTAF): no cancellation
    as HTAF → 1.
    """

    alpha: float = hyperparameter(0.5)
    beta: float = hyperparameter(4.0, inclusive=True)
    gamma: float = hyperparameter(1.0)
    kernel_id: ClassVar[int] = 0

    @staticmethod
    def derivative(x, alpha, beta, gamma):
        z = alpha * x + beta * torch.tanh(gamma * x)
        return torch.sigmoid(z) * torch.sigmoid(-z) * (alpha + beta * gamma * sech2(gamma * x))

    @staticmethod
    def primitive(x, alpha, beta, gamma):
        return torch.sigmoid(alpha * x + beta * torch.tanh(gamma * x))


@register_surrogate("sigmoid")
@dataclass(frozen=True, repr=False)
class Sigmoid(Surrogate):
    r"""Sigmoid surrogate: g'(x) = α·σ(αx)·(1 − σ(αx)), g(x) = σ(αx).

    α = 4 is SpikingJelly's ``Sigmoid`` default; snnTorch's ``sigmoid`` uses slope 25.
    """

    alpha: float = hyperparameter(4.0)
    kernel_id: ClassVar[int] = 1

    @staticmethod
    def derivative(x, alpha):
        return alpha * torch.sigmoid(alpha * x) * torch.sigmoid(-alpha * x)

    @staticmethod
    def primitive(x, alpha):
        return torch.sigmoid(alpha * x)


@register_surrogate("atan")
@dataclass(frozen=True, repr=False)
class ATan(Surrogate):
    r"""Arctangent surrogate: g'(x) = (α/2) / (1 + (π/2·α·x)²), g(x) = ½ + arctan(π/2·α·x)/π.

    α = 2 as in SpikingJelly ``ATan`` and snnTorch ``atan`` (snnTorch's default). Polynomial
    (x⁻²) tail: heavier than HTAF's exponential one.
    """

    alpha: float = hyperparameter(2.0)
    kernel_id: ClassVar[int] = 2

    @staticmethod
    def derivative(x, alpha):
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)

    @staticmethod
    def primitive(x, alpha):
        return 0.5 + torch.atan(math.pi / 2 * alpha * x) / math.pi


@register_surrogate("fast_sigmoid")
@dataclass(frozen=True, repr=False)
class FastSigmoid(Surrogate):
    r"""Fast-sigmoid surrogate (SuperSpike form): g'(x) = 1 / (1 + k·|x|)², g(x) = ½ + x/(1 + k|x|).

    ``slope`` = k = 25 as in snnTorch ``fast_sigmoid``; Norse's ``SuperSpike`` is the same shape
    with α = 100. Its mass is 2/k, not 1: a gradient shape, not an approximation of H.
    Polynomial tail.
    """

    slope: float = hyperparameter(25.0)
    kernel_id: ClassVar[int] = 3

    @staticmethod
    def derivative(x, slope):
        return 1.0 / (1.0 + slope * x.abs()) ** 2

    @staticmethod
    def primitive(x, slope):
        return 0.5 + x / (1.0 + slope * x.abs())


@register_surrogate("super_spike")
@dataclass(frozen=True, repr=False)
class SuperSpike(Surrogate):
    r"""SuperSpike surrogate: g'(x) = α / (1 + |x|)², g(x) = ½ + α·x/(1 + |x|).

    α = 1 as in SpikingJelly ``SuperSpike`` (an outer scale). Norse's "superspike" puts its α
    inside the bracket, 1/(α|x| + 1)²: that is :class:`FastSigmoid` here. Polynomial tail.
    """

    alpha: float = hyperparameter(1.0)
    kernel_id: ClassVar[int] = 4

    @staticmethod
    def derivative(x, alpha):
        return alpha / (1.0 + x.abs()) ** 2

    @staticmethod
    def primitive(x, alpha):
        return 0.5 + alpha * x / (1.0 + x.abs())


@register_surrogate("piecewise_quadratic")
@dataclass(frozen=True, repr=False)
class PiecewiseQuadratic(Surrogate):
    r"""Piecewise-quadratic surrogate: g'(x) = α − α²·|x| for |x| ≤ 1/α, else 0.

    g(x) = ½ + sign(x)·(α|x| − α²x²/2) inside, 0 or 1 outside. α = 1 as in SpikingJelly.
    """

    alpha: float = hyperparameter(1.0)
    kernel_id: ClassVar[int] = 5

    @staticmethod
    def derivative(x, alpha):
        return torch.clamp(alpha - alpha * alpha * x.abs(), min=0.0)

    @staticmethod
    def primitive(x, alpha):
        ax = torch.clamp(x.abs(), max=1.0 / alpha)
        return 0.5 + torch.sign(x) * (alpha * ax - 0.5 * alpha * alpha * ax * ax)


@register_surrogate("piecewise_exp")
@dataclass(frozen=True, repr=False)
class PiecewiseExp(Surrogate):
    r"""Piecewise-exponential surrogate: g'(x) = (α/2)·e^(−α|x|), g(x) = ½ + sign(x)(1 − e^(−α|x|))/2.

    α = 1 as in SpikingJelly ``PiecewiseExp``. HTAF's tail rate family (e^(−α|x|)), without
    HTAF's sharp centre.
    """

    alpha: float = hyperparameter(1.0)
    kernel_id: ClassVar[int] = 6

    @staticmethod
    def derivative(x, alpha):
        return (alpha / 2) * torch.exp(-alpha * x.abs())

    @staticmethod
    def primitive(x, alpha):
        return 0.5 + 0.5 * torch.sign(x) * (1.0 - torch.exp(-alpha * x.abs()))


@register_surrogate("erf")
@dataclass(frozen=True, repr=False)
class Erf(Surrogate):
    r"""Gaussian (erf) surrogate: g'(x) = (α/√π)·e^(−α²x²), g(x) = (1 + erf(αx))/2.

    α = 2 as in SpikingJelly ``Erf``. Gaussian tail: the lightest here.
    """

    alpha: float = hyperparameter(2.0)
    kernel_id: ClassVar[int] = 7

    @staticmethod
    def derivative(x, alpha):
        return (alpha / math.sqrt(math.pi)) * torch.exp(-(alpha * x) ** 2)

    @staticmethod
    def primitive(x, alpha):
        return 0.5 * (1.0 + torch.erf(alpha * x))


@register_surrogate("triangle")
@dataclass(frozen=True, repr=False)
class Triangle(Surrogate):
    r"""Triangle surrogate: g'(x) = α·max(0, 1 − |x|), g(x) = ½ + sign(x)·α·(u − u²/2), u = min(|x|, 1).

    α = 1 (the spec's default); Norse ``triangle`` has the same formula with α = 0.3 by default.
    snnTorch's ``triangular`` is a different function (±threshold), not this one. Compact support.
    """

    alpha: float = hyperparameter(1.0)
    kernel_id: ClassVar[int] = 8

    @staticmethod
    def derivative(x, alpha):
        return alpha * torch.clamp(1.0 - x.abs(), min=0.0)

    @staticmethod
    def primitive(x, alpha):
        u = torch.clamp(x.abs(), max=1.0)
        return 0.5 + torch.sign(x) * alpha * (u - 0.5 * u * u)


@register_surrogate("rect")
@dataclass(frozen=True, repr=False)
class Rect(Surrogate):
    r"""Rectangular surrogate: g'(x) = α·1[|x| < 1/(2α)], g(x) = ½ + clamp(α·x, −½, ½).

    ``alpha`` = 1 as in SpikingJelly ``Rect`` (the spec's "a"). Compact support; NaN gives 0
    (the indicator of a NaN comparison is false).
    """

    alpha: float = hyperparameter(1.0)
    kernel_id: ClassVar[int] = 9

    @staticmethod
    def derivative(x, alpha):
        return alpha * (x.abs() < 0.5 / alpha).to(x.dtype)

    @staticmethod
    def primitive(x, alpha):
        return 0.5 + torch.clamp(alpha * x, -0.5, 0.5)


@register_surrogate("ste")
@dataclass(frozen=True, repr=False)
class STE(Surrogate):
    r"""Straight-through estimator: g'(x) = 1[|x| ≤ clip] (``clip=math.inf``: plain STE, g' = 1).

    Passes the gradient through unchanged for a step and for a sign alike, as Larq ``ste_sign``
    (clip 1) and snnTorch ``STE`` do. g(x) = clamp(x, −clip, clip) (+½ for a step). NaN gives 0.
    """

    native: ClassVar[str] = "identity"
    clip: float = hyperparameter(1.0, allow_inf=True)
    kernel_id: ClassVar[int] = 10

    @staticmethod
    def derivative(x, clip):
        return (x.abs() <= clip).to(x.dtype)

    @staticmethod
    def primitive(x, clip):
        return torch.clamp(x, -clip, clip)


@register_surrogate("approx_sign")
@dataclass(frozen=True, repr=False)
class ApproxSign(Surrogate):
    r"""ApproxSign (Bi-Real Net, Larq ``approx_sign``), native to a sign:
    g'(x) = 2 − 2|x| for |x| ≤ 1, else 0;  g(x) = sign(x)·(2|x| − x²) inside, ±1 outside.
    """

    native: ClassVar[str] = "sign"
    kernel_id: ClassVar[int] = 11

    @staticmethod
    def derivative(x):
        return torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)

    @staticmethod
    def primitive(x):
        u = torch.clamp(x.abs(), max=1.0)
        return torch.sign(x) * (2.0 * u - u * u)


@register_surrogate("swish_sign")
@dataclass(frozen=True, repr=False)
class SwishSign(Surrogate):
    r"""SwishSign (BNN+, Larq ``swish_sign``), native to a sign:
    g(x) = 2σ(βx)·(1 + βx·(1 − σ(βx))) − 1,
    g'(x) = β·(2 − βx·tanh(βx/2)) / (1 + cosh(βx)).  β = 5.

    Written with 2/(1 + cosh(βx)) = sech²(βx/2) (no overflow); where sech² underflows to 0 the
    derivative is 0 (not βx·0 = NaN at ±inf).
    """

    native: ClassVar[str] = "sign"
    beta: float = hyperparameter(5.0)
    kernel_id: ClassVar[int] = 12

    @staticmethod
    def derivative(x, beta):
        bx = beta * x
        s2 = sech2(bx / 2)
        d = 0.5 * beta * (2.0 - bx * torch.tanh(bx / 2)) * s2
        return torch.where(s2 == 0, torch.zeros_like(d), d)

    @staticmethod
    def primitive(x, beta):
        bx = beta * x
        return 2.0 * torch.sigmoid(bx) * (1.0 + bx * torch.sigmoid(-bx)) - 1.0


# --------------------------------------------------------------------------------- the resolver

#: Full-precision activations: the accuracy ceiling of every comparison.
FULL_PRECISION = ("relu", "hardtanh", "identity")


@dataclass(frozen=True)
class ActivationSpec:
    """An activation name resolved: ``surrogate`` and ``mode`` for a binary activation, or
    ``full_precision`` (``"relu"``, ...) for the ceiling. ``name`` is the canonical name
    (``"htaf"``, ``"htaf_st"``, ``"atan"``, ``"relu"``...)."""

    name: str
    surrogate: Surrogate | None = None
    mode: str | None = None
    full_precision: str | None = None

    @property
    def binary(self) -> bool:
        return self.surrogate is not None

    @property
    def smooth(self) -> bool:
        return self.mode == "smooth"

    @property
    def kind(self) -> str:
        """``"htaf"``, ``"baseline"`` or ``"ceiling"`` (how comparisons group it)."""
        if self.full_precision:
            return "ceiling"
        return "htaf" if self.surrogate.name == "htaf" else "baseline"


#: The modes each model family can train (a spike or a sign of a BNN layer is always exact).
FAMILY_MODES = {"dhn": ("smooth", "straight_through"), "icbm": ("smooth", "straight_through"),
                "snn": ("straight_through",), "bnn": ("straight_through",)}


def resolve_activation(activation: str | Surrogate | ActivationSpec = "htaf",
                       params: dict | None = None, *, family: str | None = None) -> ActivationSpec:
    """The one place an activation name means something; the same in every family:

    * ``"relu"`` (``"hardtanh"``, ``"identity"``) — full precision, the ceiling;
    * ``"htaf"`` — HTAF in **smooth** mode (evaluate hard: the step);
    * ``"htaf_st"`` — HTAF **straight-through**: the exact step forward, HTAF' backward;
    * any other surrogate name, or a :class:`Surrogate` — straight-through with that surrogate.

    ``params`` are the surrogate's hyperparameters (``{"alpha": 2.0}``). ``family`` (``"dhn"``,
    ``"icbm"``, ``"snn"``, ``"bnn"``) rejects a mode the family cannot run, naming both.
    """
    params = dict(params or {})
    if isinstance(activation, ActivationSpec):
        spec = activation
        if params:
            spec = dataclasses.replace(spec, surrogate=spec.surrogate.replace(**params))
    elif isinstance(activation, Surrogate):
        spec = ActivationSpec(activation.name, get_surrogate(activation, **params),
                              "straight_through")
    elif isinstance(activation, str):
        key = normalize_name(activation)
        if key in FULL_PRECISION:
            if params:
                raise ValueError(f"activation {activation!r} takes no parameters, got "
                                 f"{sorted(params)}")
            spec = ActivationSpec(key, full_precision=key)
        elif key in ("htaf", "htaf_st"):
            mode = "smooth" if key == "htaf" else "straight_through"
            spec = ActivationSpec(key, get_surrogate("htaf", **params), mode)
        elif key in _REGISTRY:
            spec = ActivationSpec(key, get_surrogate(key, **params), "straight_through")
        else:
            raise ValueError(f"unknown activation {activation!r}; use relu, htaf (smooth), "
                             f"htaf_st (straight-through) or a surrogate name "
                             f"({', '.join(n for n in list_surrogates() if n != 'htaf')})")
    else:
        raise ValueError(f"activation must be a name or a Surrogate, got {activation!r}")
    if family is not None:
        if family not in FAMILY_MODES:
            raise ValueError(f"family must be one of {', '.join(FAMILY_MODES)}, got {family!r}")
        if spec.binary and spec.mode not in FAMILY_MODES[family]:
            unit = "spikes" if family == "snn" else "signs"
            article = "an" if family in ("snn", "icbm") else "a"
            raise ValueError(
                f"activation {spec.name!r} is {spec.mode} mode, which {article} {family.upper()} "
                f"cannot train: its {unit} are exact steps; use 'htaf_st' (straight-through HTAF) "
                f"or another surrogate name")
    return spec
