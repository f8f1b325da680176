"""Modules: binary activations, annealing, and (in their own files) binary and spiking layers."""

from .activation import (
    HTAF, BinaryActivation, Heaviside, Sign, apply_constraints, create_act, set_mode, using_mode,
)
from .anneal import Anneal, schedule_value
from .spiking import (
    IF, LIF, PLIF, BaseNode, IFNode, LIFNode, ParametricLIFNode, reset_net,
)

__all__ = [
    "HTAF", "Heaviside", "Sign", "BinaryActivation", "create_act", "set_mode", "using_mode",
    "Anneal", "schedule_value", "apply_constraints",
    "BaseNode", "IFNode", "LIFNode", "ParametricLIFNode", "IF", "LIF", "PLIF", "reset_net",
]
