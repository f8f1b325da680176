"""Model registry: names → constructors, so ``create_model("dhn_mlp", ...)`` is one line.

A factory is registered with ``@register_model("name")`` and called with keyword arguments only.
The engine calls every factory with ``in_channels``, ``image_size`` and ``num_classes`` taken from
the dataset, plus the user's options (``activation=...``, ``depth=...``); factories for flat inputs
derive ``in_features = in_channels · image_size²`` or take ``in_features`` directly.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["create_model", "list_models", "model_family", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, str | None] = {}


def register_model(name: str, *, family: str | None = None):
    """Decorator registering a model factory under ``name``; ``family`` (``"dhn"``, ``"snn"``,
    ``"bnn"``, ``"icbm"``) says which activation modes it can train
    (:func:`htaf.surrogates.resolve_activation`)."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        _FAMILIES[name] = family
        return fn

    return deco


def model_family(name: str) -> str | None:
    """The family a registered model was declared with (None for a model of none)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models()) or 'none'}")
    return _FAMILIES[name]


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; unknown names raise ``ValueError`` listing the known."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models()) or 'none'}")
    return _MODELS[name](**kwargs)
