r"""Spiking neurons — IF, LIF and parametric LIF — with SpikingJelly's names, defaults and equations.

Charge (``R = v_reset``, or 0 when ``v_reset=None``), fire, reset::

    IF          H[t] = V[t−1] + X[t]
    LIF         H[t] = V[t−1] + (X[t] − (V[t−1] − R)) / τ        decay_input=True (default)
                H[t] = V[t−1] − (V[t−1] − R) / τ + X[t]          decay_input=False
    PLIF        as LIF with 1/τ = sigmoid(w), w learnable (Fang et al. 2021)
    spike       S[t] = 1[H[t] − V_th ≥ 0]       (backward: the surrogate's derivative, HTAF by default)
    hard reset  V[t] = H[t]·(1 − S[t]) + v_reset·S[t]
    soft reset  V[t] = H[t] − V_th·S[t]          (v_reset=None)

``detach_reset=True`` stops the gradient of S through the reset. ``step_mode="s"`` takes one
time step ``[B, ...]`` per call and keeps the potential in ``self.v`` between calls;
``step_mode="m"`` takes a whole sequence ``[T, B, ...]``. Call ``reset_net(model)`` (or each
neuron's ``reset()``) between independent batches; the models in ``htaf.models.snn`` do it in
``forward``.

Arguments after ``tau`` (``init_tau`` for PLIF) are keyword-only: ``LIFNode(2.0, 0.5)`` would mean
``decay_input=0.5`` in SpikingJelly's positional order, a silent trap. The spike function is
``surrogate`` (a registered name or a :class:`~htaf.surrogates.Surrogate`; SpikingJelly's keyword
``surrogate_function`` is accepted too); it lives in the neuron as a :class:`~htaf.nn.Heaviside`
submodule, so its scale is a buffer. Multi-step neurons run the fused kernel
(:mod:`htaf.kernels.lif`: Triton on CUDA, native code on the CPU) when ``backend="auto"`` and one
serves the input, the PyTorch reference (autograd through the time loop) otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import kernels
from .._checks import check_choice, check_real
from ..surrogates import Surrogate
from .activation import BinaryActivation, Heaviside

__all__ = ["IF", "LIF", "PLIF", "BaseNode", "IFNode", "LIFNode", "ParametricLIFNode", "reset_net"]

_BACKENDS = ("auto", "fused", "torch")


def _spike_function(surrogate) -> Heaviside:
    if isinstance(surrogate, BinaryActivation):
        if surrogate.signed or surrogate.mode != "straight_through":
            raise ValueError("a neuron's spike function must be a straight-through Heaviside, got "
                             f"{surrogate!r}")
        return surrogate
    if isinstance(surrogate, str) and surrogate.strip().lower().replace("-", "_") == "htaf_st":
        surrogate = "htaf"
    if not isinstance(surrogate, (str, Surrogate)):
        raise ValueError(f"surrogate must be a surrogate name or a Surrogate, got {surrogate!r}")
    return Heaviside(surrogate, mode="straight_through")


class BaseNode(nn.Module):
    """Shared machinery of the neurons: threshold, reset, spike function, step mode, state."""

    leaky: bool = True

    def __init__(self, *, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate: str | Surrogate = "htaf", detach_reset: bool = False,
                 step_mode: str = "s", backend: str = "auto", store_v_seq: bool = False,
                 surrogate_function: str | Surrogate | None = None):
        super().__init__()
        self.v_threshold = check_real("v_threshold", v_threshold)
        self.v_reset = None if v_reset is None else check_real("v_reset", v_reset)
        self.surrogate_function = _spike_function(
            surrogate if surrogate_function is None else surrogate_function)
        self.detach_reset = bool(detach_reset)
        self.step_mode = step_mode
        self.backend = check_choice("backend", backend, _BACKENDS)
        self.store_v_seq = bool(store_v_seq)
        self.v_seq: torch.Tensor | None = None
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        self._step_mode = check_choice("step_mode", value, ("s", "m"))

    @property
    def v_init(self) -> float:
        """The resting potential the state starts from: ``v_reset``, or 0 for a soft reset."""
        return 0.0 if self.v_reset is None else self.v_reset

    def reset(self) -> None:
        """Forget the membrane potential (back to ``v_init``) and the stored ``v_seq``."""
        self.v: float | torch.Tensor = self.v_init
        self.v_seq = None

    @property
    def surrogate(self) -> Surrogate:
        """The spike function's surrogate, with its current hyperparameters."""
        return self.surrogate_function.surrogate

    # -- the neuron ----------------------------------------------------------------------------
    def decay(self):
        """k = 1/τ (float or 0-d tensor); unused by IF."""
        return 1.0

    def _state_like(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.v, torch.Tensor):
            if self.v.shape != x.shape:
                raise ValueError(f"input shape {tuple(x.shape)} does not match the stored state "
                                 f"{tuple(self.v.shape)}; call reset() between batches")
            return self.v
        return torch.full_like(x, self.v)

    def neuronal_step(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step of the reference: ``(S[t], V[t])`` from ``X[t]`` and ``V[t−1]``."""
        r = 0.0 if self.v_reset is None else self.v_reset
        k = self.decay()
        if not self.leaky:
            h = v + x
        elif getattr(self, "decay_input", True):
            h = v + (x - (v - r)) * k
        else:
            h = v - (v - r) * k + x
        s = self.surrogate_function(h - self.v_threshold)
        s_r = s.detach() if self.detach_reset else s
        if self.v_reset is None:
            v_new = h - self.v_threshold * s_r
        else:
            v_new = h * (1.0 - s_r) + self.v_reset * s_r
        return s, v_new

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        # half inputs: the math (and the carried potential) in fp32, as in the fused kernel
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        s, v = self.neuronal_step(x.to(work), self._state_like(x).to(work))
        self.v = v
        if self.store_v_seq:
            self.v_seq = v.unsqueeze(0) if self.v_seq is None else torch.cat(
                [self.v_seq, v.unsqueeze(0)])
        return s.to(x.dtype)

    def _use_fused(self, x_seq: torch.Tensor) -> bool:
        if self.backend == "torch" or self.store_v_seq:
            return False
        ok = self.surrogate_function._spec.kernel_id is not None and kernels.fused(x_seq)
        if self.backend == "fused" and not ok:
            raise ValueError("backend='fused' needs a fused kernel for this device and dtype and a "
                             f"built-in surrogate (got {self.surrogate.name!r} on "
                             f"{x_seq.device}, {x_seq.dtype}); use backend='auto'")
        return ok

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 2:
            raise ValueError(f"step_mode='m' expects x_seq of shape [T, B, ...] (ndim >= 2), got "
                             f"shape {tuple(x_seq.shape)}")
        if x_seq.shape[0] == 0:
            raise ValueError("step_mode='m' got T = 0 time steps (x_seq.shape[0] must be >= 1)")
        v0 = self._state_like(x_seq[0])
        if self._use_fused(x_seq):
            s, self.v = kernels.lif_multistep(
                x_seq, v0, self.decay(), v_threshold=self.v_threshold, v_reset=self.v_reset,
                decay_input=getattr(self, "decay_input", True), detach_reset=self.detach_reset,
                kind=self.surrogate_function._spec.kernel_id,
                params=list(self.surrogate_function.params()),
                scale=self.surrogate_function._spec.grad_scale(False), leaky=self.leaky)
            return s
        work = torch.float32 if x_seq.dtype in (torch.float16, torch.bfloat16) else x_seq.dtype
        v = v0.to(work)
        spikes, vs = [], []
        for t in range(x_seq.shape[0]):
            s, v = self.neuronal_step(x_seq[t].to(work), v)
            spikes.append(s.to(x_seq.dtype))
            if self.store_v_seq:
                vs.append(v)
        self.v = v.to(v0.dtype)
        if self.store_v_seq:
            self.v_seq = torch.stack(vs).to(v0.dtype)
        return torch.stack(spikes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"a spiking neuron takes a floating-point tensor, got {x!r:.80}")
        if self._step_mode == "m":
            return self.multi_step_forward(x)
        return self.single_step_forward(x)

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold:g}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, step_mode={self._step_mode!r}, "
                f"backend={self.backend!r}")


class IFNode(BaseNode):
    """Integrate-and-fire: H[t] = V[t−1] + X[t]. SpikingJelly's ``IFNode`` (keyword arguments)."""

    leaky = False


def _check_tau(name: str, tau) -> float:
    tau = check_real(name, tau)
    if not tau > 1.0:
        raise ValueError(f"{name} must be > 1 (1/{name} is the leak per step), got {tau:g}")
    return tau


class LIFNode(BaseNode):
    """Leaky integrate-and-fire, SpikingJelly's ``LIFNode`` (same names and defaults; everything
    after ``tau`` keyword-only)::

        decay_input=True:  H = V + (X − (V − R)) / τ;   decay_input=False: H = V − (V − R)/τ + X

    snnTorch's ``Leaky(beta)`` is ``decay_input=False`` with ``tau = 1 / (1 − beta)``.
    """

    def __init__(self, tau: float = 2.0, *, decay_input: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.tau = _check_tau("tau", tau)
        self.decay_input = bool(decay_input)

    def decay(self):
        return 1.0 / self.tau

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, decay_input={self.decay_input}, " + super().extra_repr()


class ParametricLIFNode(BaseNode):
    """PLIF (Fang et al., ICCV 2021): LIF whose 1/τ = sigmoid(w) is learned, w₀ = −ln(init_tau − 1).

    SpikingJelly's ``ParametricLIFNode`` (everything after ``init_tau`` keyword-only); τ stays in
    (1, ∞) by construction.
    """

    def __init__(self, init_tau: float = 2.0, *, decay_input: bool = True, **kwargs):
        init_tau = _check_tau("init_tau", init_tau)
        super().__init__(**kwargs)
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def decay(self):
        return self.w.sigmoid()

    @property
    def tau(self) -> float:
        return 1.0 / float(self.w.detach().sigmoid())

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, decay_input={self.decay_input}, " + super().extra_repr()


IF, LIF, PLIF = IFNode, LIFNode, ParametricLIFNode


def reset_net(model: nn.Module) -> None:
    """Reset the state of every spiking neuron in ``model`` (SpikingJelly's ``functional.reset_net``)."""
    for m in model.modules():
        if isinstance(m, BaseNode):
            m.reset()
