"""htaf: networks with binary (Heaviside) activations that train like ordinary ones.

HTAF(x; α, β, γ) = σ(α·x + β·tanh(γ·x)), defaults α = 0.5, β = 4, γ = 1.

The names below are imported on first use, so ``import htaf`` (and the ``htaf`` command's
``--help``) does not pay for PyTorch until something needs it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "functional": ("htaf.functional", None),
    "surrogates": ("htaf.surrogates", None),
    "htaf": ("htaf.functional", "htaf"),
    "heaviside": ("htaf.functional", "heaviside"),
    "sign": ("htaf.functional", "sign"),
    "Surrogate": ("htaf.surrogates", "Surrogate"),
    "get_surrogate": ("htaf.surrogates", "get_surrogate"),
    "list_surrogates": ("htaf.surrogates", "list_surrogates"),
    "register_surrogate": ("htaf.surrogates", "register_surrogate"),
    "resolve_activation": ("htaf.surrogates", "resolve_activation"),
    "HTAF": ("htaf.nn", "HTAF"),
    "Heaviside": ("htaf.nn", "Heaviside"),
    "Sign": ("htaf.nn", "Sign"),
    "Anneal": ("htaf.nn", "Anneal"),
    "create_act": ("htaf.nn", "create_act"),
    "set_mode": ("htaf.nn", "set_mode"),
    "using_mode": ("htaf.nn", "using_mode"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = importlib.import_module(module)
        if attr is not None:
            value = getattr(value, attr)
        globals()[name] = value
        return value
    if name in ("nn", "models", "kernels", "data", "engine", "deploy", "explain", "metrics"):
        return importlib.import_module(f"htaf.{name}")
    raise AttributeError(f"module 'htaf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
