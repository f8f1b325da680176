"""Model families (DHN, SNN, BNN, ICBM) behind one registry: ``create_model(name, **kw)``."""

from . import dhn  # noqa: F401  (registers dhn_mlp, dhn_cnn)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
