"""Modules: binary activations, annealing, and (in their own files) binary and spiking layers."""

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

__all__ = [
    "HTAF",
    "Anneal",
    "BinaryActivation",
    "Heaviside",
    "Sign",
    "apply_constraints",
    "create_act",
    "schedule_value",
    "set_mode",
    "using_mode",
]
