"""The HTAF op family as ``torch.library`` custom ops: ``htaf::forward``, ``htaf::backward``,
``htaf::step``.

Each op has a PyTorch reference implementation that serves every device; on CUDA, a fused Triton
kernel replaces it when Triton is installed (``htaf.kernels.triton_activation`` registers it).
Being custom ops, they are single nodes to ``torch.compile`` and safe under CUDA graphs and
autocast (they take and return whatever dtype they are given).
"""

from __future__ import annotations

import torch

from . import reference


@torch.library.custom_op("htaf::forward", mutates_args=())
def forward(x: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """HTAF(x) = σ(α·x + β·tanh(γ·x)), elementwise, same dtype as ``x``."""
    return reference.htaf_forward(x, alpha, beta, gamma)


@forward.register_fake
def _(x, alpha, beta, gamma):
    return torch.empty_like(x)


@torch.library.custom_op("htaf::backward", mutates_args=())
def backward(grad: torch.Tensor, x: torch.Tensor, alpha: float, beta: float, gamma: float,
             scale: float) -> torch.Tensor:
    """grad · scale · HTAF'(x), elementwise, same dtype as ``grad``."""
    return reference.htaf_backward(grad, x, alpha, beta, gamma, scale)


@backward.register_fake
def _(grad, x, alpha, beta, gamma, scale):
    return torch.empty_like(grad)


@torch.library.custom_op("htaf::step", mutates_args=())
def step(x: torch.Tensor, signed: bool) -> torch.Tensor:
    """1[x ≥ 0], or sign(x) ∈ {−1, +1} with sign(0) = +1 when ``signed``; NaN stays NaN."""
    return reference.step_forward(x, signed)


@step.register_fake
def _(x, signed):
    return torch.empty_like(x)
