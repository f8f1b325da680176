"""HTAF inside SpikingJelly and snnTorch (both optional: ``pip install "htaf[peers]"``).

Both libraries take the spike function as a callable ``x ↦ spike`` whose backward is the surrogate
gradient: SpikingJelly's ``surrogate_function=`` (called on ``v − v_threshold``) and snnTorch's
``spike_grad=`` (called on ``mem − threshold``). Every :class:`htaf.surrogates.Surrogate` instance is
such a callable (forward exactly 1[x ≥ 0], backward its derivative), so it can be passed directly::

    from spikingjelly.activation_based import neuron
    neuron.LIFNode(tau=2.0, surrogate_function=htaf.get_surrogate("htaf"))
    snntorch.Leaky(beta=0.5, spike_grad=htaf.get_surrogate("htaf", beta=8.0))

SpikingJelly runs a custom callable on its PyTorch reference path (its fused Triton/CuPy kernels
only know its own surrogates); use :class:`htaf.nn.LIFNode` for HTAF in a fused kernel. A few
SpikingJelly neurons read ``surrogate_function.spiking`` (its switch between the spike and the
smooth primitive); :func:`spikingjelly_surrogate` returns a module that has it.
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import binarize
from .surrogates import Surrogate, get_surrogate

__all__ = ["SpikeFunction", "snntorch_spike_grad", "spikingjelly_surrogate"]


class SpikeFunction(nn.Module):
    """A surrogate as a SpikingJelly-style module: ``spiking=True`` → 1[x ≥ 0] with the
    surrogate's gradient; ``spiking=False`` → the smooth primitive (HTAF(x) for HTAF)."""

    def __init__(self, surrogate: str | Surrogate = "htaf", spiking: bool = True, **params):
        super().__init__()
        self.surrogate = get_surrogate(surrogate, **params)
        self.spiking = bool(spiking)

    def set_spiking_mode(self, spiking: bool) -> None:
        self.spiking = bool(spiking)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "straight_through" if self.spiking else "smooth"
        return binarize(x, self.surrogate, mode=mode)

    def extra_repr(self) -> str:
        return f"{self.surrogate!r}, spiking={self.spiking}"


def spikingjelly_surrogate(surrogate: str | Surrogate = "htaf", **params) -> SpikeFunction:
    """A value for SpikingJelly's ``surrogate_function=`` (HTAF by default)."""
    return SpikeFunction(surrogate, **params)


def snntorch_spike_grad(surrogate: str | Surrogate = "htaf", **params) -> Surrogate:
    """A value for snnTorch's ``spike_grad=`` (HTAF by default): the surrogate instance itself."""
    return get_surrogate(surrogate, **params)
