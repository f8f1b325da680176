"""Modules: binary activations, annealing, binary layers (BNN) and spiking neurons (SNN)."""

from .activation import (
    HTAF,
    BinaryActivation,
    Heaviside,
    Sign,
    apply_constraints,
    create_act,
    set_mode,
    using_mode,
)
from .anneal import Anneal, schedule_value
from .binary import BinaryConv2d, BinaryLayer, BinaryLinear, binary_layers, hard_sign
from .spiking import IF, LIF, PLIF, BaseNode, IFNode, LIFNode, ParametricLIFNode, reset_net

__all__ = [
    "HTAF", "Heaviside", "Sign", "BinaryActivation", "create_act", "set_mode", "using_mode",
    "Anneal", "schedule_value", "apply_constraints",
    "BinaryLinear", "BinaryConv2d", "BinaryLayer", "binary_layers", "hard_sign",
    "BaseNode", "IFNode", "LIFNode", "ParametricLIFNode", "IF", "LIF", "PLIF", "reset_net",
]
