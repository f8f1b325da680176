"""htaf: networks with binary (Heaviside) activations that train like ordinary ones.

HTAF(x; α, β, γ) = σ(α·x + β·tanh(γ·x)), defaults α = 0.5, β = 4, γ = 1.
"""

from . import functional, surrogates
from .functional import heaviside, htaf, sign
from .nn import HTAF, Anneal, Heaviside, Sign, create_act, set_mode, using_mode
from .surrogates import Surrogate, get_surrogate, list_surrogates, register_surrogate

__version__ = "0.1.0"

__all__ = [
    "HTAF",
    "Anneal",
    "Heaviside",
    "Sign",
    "Surrogate",
    "__version__",
    "create_act",
    "functional",
    "get_surrogate",
    "heaviside",
    "htaf",
    "list_surrogates",
    "register_surrogate",
    "set_mode",
    "sign",
    "surrogates",
    "using_mode",
]
