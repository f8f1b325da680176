"""Model families (DHN, SNN, BNN, ICBM) behind one registry: ``create_model(name, **kw)``."""

from . import icbm  # noqa: F401  (registers icbm_* and std_* models)
from .registry import create_model, list_models, register_model
from . import bnn  # noqa: E402,F401  (registers bnn_vgg_small, bnn_resnet18, bnn_mlp)

__all__ = ["create_model", "list_models", "register_model"]
