"""Model families (DHN, SNN, BNN, ICBM) behind one registry: ``create_model(name, **kw)``."""

from .registry import create_model, list_models, register_model

from . import dhn  # noqa: F401,E402  (registers dhn_mlp, dhn_cnn)

__all__ = ["create_model", "list_models", "register_model"]
