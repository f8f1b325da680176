"""Argument checks shared by the whole package: one clear error that names the parameter."""

from __future__ import annotations

import math
import numbers


def check_real(name: str, value, *, low: float | None = None, strict: bool = True,
               allow_inf: bool = False) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name``.

    ``low`` is a lower bound, exclusive when ``strict`` (``value > low``), inclusive otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None:
        if strict and not value > low:
            raise ValueError(f"{name} must be > {low:g}, got {value:g}")
        if not strict and not value >= low:
            raise ValueError(f"{name} must be >= {low:g}, got {value:g}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_int(name: str, value, *, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_fields(what: str, d, cls) -> dict:
    """``d`` as a new dict when it is a dict whose keys are all fields of dataclass ``cls``; else
    ``ValueError`` naming ``what`` and the unknown keys (and the known ones)."""
    import dataclasses

    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return dict(d)
