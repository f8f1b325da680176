"""Model families (DHN, SNN, BNN, ICBM) behind one registry: ``create_model(name, **kw)``."""

from .registry import create_model, list_models, model_family, register_model

# Importing each family registers its models.
from . import bnn, dhn, icbm, snn  # noqa: E402,F401  isort: skip

__all__ = ["create_model", "list_models", "model_family", "register_model"]
