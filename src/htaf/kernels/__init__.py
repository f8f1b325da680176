"""Kernels: the HTAF op family (``torch.ops.htaf.*``) and their PyTorch reference twins.

``htaf.functional`` calls the ops through this module only. The reference implementation serves
the CPU (and any device); on CUDA with Triton installed, fused Triton kernels are registered for
the same ops, so the call sites do not change. Set ``HTAF_DISABLE_TRITON=1`` to force the
reference everywhere (for debugging or comparison).

``surrogate_backward`` (``torch.ops.htaf.surrogate_backward``) is the same for the baseline
surrogates listed in ``FUSED_SURROGATES``: their backward in one pass on CUDA.

On the CPU, fused C kernels (``htaf.kernels.cpu``, compiled on first use and cached per machine)
serve the same ops; without a C compiler, or with ``HTAF_NO_NATIVE=1``, the reference does.
"""

from __future__ import annotations

import os

from . import cpu, reference
from .activation import backward as htaf_backward
from .activation import forward as htaf_forward
from .activation import step as step_forward
from .baselines import FUSED_SURROGATES, surrogate_backward

__all__ = ["htaf_forward", "htaf_backward", "step_forward", "surrogate_backward",
           "FUSED_SURROGATES", "reference", "TRITON_ENABLED"]


def _triton_enabled() -> bool:
    if os.environ.get("HTAF_DISABLE_TRITON", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    try:
        from . import triton_activation, triton_baselines
    except ImportError:  # Triton not installed (CPU-only setups, macOS, Windows)
        return False
    triton_activation.register_cuda_kernels()
    triton_baselines.register_cuda_kernels()
    return True


cpu.register_cpu_kernels()

#: Whether the fused Triton kernels serve ``torch.ops.htaf.*`` on CUDA in this process.
TRITON_ENABLED: bool = _triton_enabled()
