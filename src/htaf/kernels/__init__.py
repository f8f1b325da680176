"""Kernels: the HTAF op family (``torch.ops.htaf.*``) and their PyTorch reference twins.

``htaf.functional`` calls the ops through this module only. The reference implementation serves
the CPU (and any device); on CUDA with Triton installed, fused Triton kernels are registered for
the same ops, so the call sites do not change. Set ``HTAF_DISABLE_TRITON=1`` to force the
reference everywhere (for debugging or comparison).
"""

from __future__ import annotations

from . import reference
from .activation import backward as htaf_backward
from .activation import forward as htaf_forward
from .activation import step as step_forward

__all__ = ["htaf_backward", "htaf_forward", "reference", "step_forward"]
