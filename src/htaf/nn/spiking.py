r"""Spiking neurons — IF, LIF and parametric LIF — with SpikingJelly's names, defaults and equations.

Charge (``R = v_reset``, or 0 when ``v_reset=None``), fire, reset::

    IF          H[t] = V[t−1] + X[t]
    LIF         H[t] = V[t−1] + (X[t] − (V[t−1] − R)) / τ        decay_input=True (default)
                H[t] = V[t−1] − (V[t−1] − R) / τ + X[t]          decay_input=False
    PLIF        as LIF with 1/τ = sigmoid(w), w learnable (Fang et al. 2021)
    spike       S[t] = 1[H[t] − V_th ≥ 0]       (backward: the surrogate's derivative, HTAF by default)
    hard reset  V[t] = H[t]·(1 − S[t]) + v_reset·S[t]
    soft reset  V[t] = H[t] − V_th·S[t]          (v_reset=None)

``detach_reset=True`` stops the gradient of S through the reset term. ``step_mode="s"`` takes one
time step ``[B, ...]`` per call and keeps the potential in ``self.v`` between calls;
``step_mode="m"`` takes a whole sequence ``[T, B, ...]``. Call ``reset_net(model)`` (or each
neuron's ``reset()``) between independent batches; the models in ``htaf.models.snn`` do it in
``forward``.

The spike function is named by ``surrogate`` (a registered name or a :class:`~htaf.surrogates.Surrogate`;
SpikingJelly's keyword ``surrogate_function`` is accepted as an alias). Multi-step LIF/IF/PLIF runs
fused kernels (``htaf.kernels.lif``) when ``backend="auto"``: Triton on CUDA (or
``backend="triton"``), native C on the CPU (``htaf.kernels.cpu``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_choice, check_real
from ..kernels import lif as lif_kernels
from ..surrogates import Surrogate, get_surrogate

__all__ = ["IF", "LIF", "PLIF", "BaseNode", "IFNode", "LIFNode", "ParametricLIFNode", "reset_net"]

_BACKENDS = ("auto", "triton", "torch")


class BaseNode(nn.Module):
    """Shared machinery of the neurons: threshold, reset, spike function, step mode, state."""

    leaky: bool = True

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate: str | Surrogate = "htaf", detach_reset: bool = False,
                 step_mode: str = "s", backend: str = "auto", store_v_seq: bool = False, *,
                 surrogate_function: str | Surrogate | None = None):
        super().__init__()
        self.v_threshold = check_real("v_threshold", v_threshold)
        self.v_reset = None if v_reset is None else check_real("v_reset", v_reset)
        if surrogate_function is not None:  # SpikingJelly's name for the same thing
            surrogate = surrogate_function
        self.surrogate = get_surrogate(surrogate)
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
    def surrogate_function(self) -> Surrogate:  # SpikingJelly's attribute name
        return self.surrogate

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

    def _step_kwargs(self) -> dict:
        return {"v_threshold": self.v_threshold, "v_reset": self.v_reset,
                    "decay_input": getattr(self, "decay_input", True),
                    "detach_reset": self.detach_reset, "surrogate": self.surrogate, "leaky": self.leaky}

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        # half inputs: the math (and the carried potential) in fp32, as in the fused kernel
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        s, v = lif_kernels.lif_step_reference(x.to(work), self._state_like(x).to(work),
                                              self.decay(), **self._step_kwargs())
        s = s.to(x.dtype)
        self.v = v
        if self.store_v_seq:
            self.v_seq = v.unsqueeze(0) if self.v_seq is None else torch.cat(
                [self.v_seq, v.unsqueeze(0)])
        return s

    def _use_triton(self, x_seq: torch.Tensor) -> bool:
        return self._fused_backend(x_seq) == "triton"

    def _fused_backend(self, x_seq: torch.Tensor) -> str | None:
        """The fused multi-step kernel for ``x_seq``: ``"triton"`` (CUDA), ``"cpu"`` (native C)
        or None (the PyTorch loop)."""
        if self.backend == "torch" or self.store_v_seq:
            return None
        ok = lif_kernels.triton_supports(x_seq, self.surrogate)
        if self.backend == "triton":
            if not ok:
                raise ValueError("backend='triton' needs Triton and an htaf/sigmoid/atan "
                                 f"surrogate (got {self.surrogate.name!r}); use backend='auto'")
            return "triton"
        if x_seq.is_cuda:
            return "triton" if ok else None
        return "cpu" if lif_kernels.cpu_supports(x_seq, self.surrogate) else None

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 2:
            raise ValueError(f"step_mode='m' expects x_seq of shape [T, B, ...] (ndim >= 2), got "
                             f"shape {tuple(x_seq.shape)}")
        if x_seq.shape[0] == 0:
            raise ValueError("step_mode='m' got T = 0 time steps (x_seq.shape[0] must be >= 1)")
        v0 = self._state_like(x_seq[0])
        kw = self._step_kwargs()
        if (fused := self._fused_backend(x_seq)) is not None:
            s, v = lif_kernels.lif_multistep(x_seq, v0, self.decay(), backend=fused, **kw)
            v_seq = None
        else:
            s, v, v_seq = lif_kernels.lif_multistep_reference(
                x_seq, v0, self.decay(), store_v_seq=self.store_v_seq, **kw)
        self.v = v
        if self.store_v_seq:
            self.v_seq = v_seq
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"a spiking neuron takes a floating-point tensor, got {x!r:.80}")
        if self._step_mode == "m":
            return self.multi_step_forward(x)
        return self.single_step_forward(x)

    def extra_repr(self) -> str:
        sp = ", ".join(f"{k}={v:g}" for k, v in self.surrogate.hyperparameters().items())
        return (f"v_threshold={self.v_threshold:g}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, step_mode={self._step_mode!r}, "
                f"backend={self.backend!r}, surrogate={self.surrogate.name}"
                f"{'(' + sp + ')' if sp else ''}")


class IFNode(BaseNode):
    """Integrate-and-fire: H[t] = V[t−1] + X[t]. SpikingJelly's ``IFNode`` signature."""

    leaky = False

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate: str | Surrogate = "htaf", detach_reset: bool = False,
                 step_mode: str = "s", backend: str = "auto", store_v_seq: bool = False, *,
                 surrogate_function: str | Surrogate | None = None):
        super().__init__(v_threshold, v_reset, surrogate, detach_reset, step_mode, backend,
                         store_v_seq, surrogate_function=surrogate_function)


def _check_tau(name: str, tau) -> float:
    tau = check_real(name, tau)
    if not tau > 1.0:
        raise ValueError(f"{name} must be > 1 (1/{name} is the leak per step), got {tau:g}")
    return tau


class LIFNode(BaseNode):
    """Leaky integrate-and-fire, SpikingJelly's ``LIFNode`` (same positional order and defaults)::

        decay_input=True:  H = V + (X − (V − R)) / τ;   decay_input=False: H = V − (V − R)/τ + X
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, surrogate: str | Surrogate = "htaf",
                 detach_reset: bool = False, step_mode: str = "s", backend: str = "auto",
                 store_v_seq: bool = False, *, surrogate_function: str | Surrogate | None = None):
        tau = _check_tau("tau", tau)
        super().__init__(v_threshold, v_reset, surrogate, detach_reset, step_mode, backend,
                         store_v_seq, surrogate_function=surrogate_function)
        self.tau = tau
        self.decay_input = bool(decay_input)

    def decay(self):
        return 1.0 / self.tau

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, decay_input={self.decay_input}, " + super().extra_repr()


class ParametricLIFNode(BaseNode):
    """PLIF (Fang et al., ICCV 2021): LIF whose 1/τ = sigmoid(w) is learned, w₀ = −ln(init_tau − 1).

    SpikingJelly's ``ParametricLIFNode`` signature; τ stays in (1, ∞) by construction.
    """

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, surrogate: str | Surrogate = "htaf",
                 detach_reset: bool = False, step_mode: str = "s", backend: str = "auto",
                 store_v_seq: bool = False, *, surrogate_function: str | Surrogate | None = None):
        init_tau = _check_tau("init_tau", init_tau)
        super().__init__(v_threshold, v_reset, surrogate, detach_reset, step_mode, backend,
                         store_v_seq, surrogate_function=surrogate_function)
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def decay(self):
        return self.w.sigmoid()

    @property
    def tau(self) -> float:
        return 1.0 / float(self.w.detach().sigmoid())

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, decay_input={self.decay_input}, " + super().extra_repr()


class LIF(LIFNode):
    """``LIFNode`` with the issue's argument order:
    ``LIF(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=False, step_mode="s")``."""

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 decay_input: bool = True, detach_reset: bool = False, step_mode: str = "s",
                 surrogate: str | Surrogate = "htaf", backend: str = "auto",
                 store_v_seq: bool = False, *, surrogate_function=None):
        super().__init__(tau, decay_input, v_threshold, v_reset, surrogate, detach_reset,
                         step_mode, backend, store_v_seq, surrogate_function=surrogate_function)


class PLIF(ParametricLIFNode):
    """``ParametricLIFNode`` with ``LIF``'s argument order (``init_tau`` first)."""

    def __init__(self, init_tau: float = 2.0, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, decay_input: bool = True,
                 detach_reset: bool = False, step_mode: str = "s",
                 surrogate: str | Surrogate = "htaf", backend: str = "auto",
                 store_v_seq: bool = False, *, surrogate_function=None):
        super().__init__(init_tau, decay_input, v_threshold, v_reset, surrogate, detach_reset,
                         step_mode, backend, store_v_seq, surrogate_function=surrogate_function)


IF = IFNode


def reset_net(model: nn.Module) -> None:
    """Reset the state of every spiking neuron in ``model`` (SpikingJelly's ``functional.reset_net``)."""
    for m in model.modules():
        if isinstance(m, BaseNode):
            m.reset()
