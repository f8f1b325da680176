"""The fused ops, as ``torch.library`` operators: schemas and shapes only.

Each op is one memory pass over its tensors; the formulas are those of the surrogate classes in
:mod:`htaf.surrogates` (their PyTorch ``derivative``/``primitive`` are the references), selected
by the surrogate's ``kernel_id`` and fed its raw hyperparameters as 0-d tensors (so annealed
values are read at run time, never baked into a compiled graph).

    htaf::step(x, signed)                              1[x ≥ 0] or sign(x), NaN → NaN
    htaf::htaf_forward(x, params)                      σ(α·x + β·tanh(γ·x)), params = [α, β, γ]
    htaf::surrogate_backward(grad, x, kind, params, scale)   grad · scale · g'(x)

Implementations are registered per device by the backends that have one: Triton on CUDA
(:mod:`htaf.kernels.triton_elementwise`) and native code on the CPU (:mod:`htaf.kernels.cpu`).
The library calls an op only where :func:`htaf.kernels.fused` says a backend serves the tensor;
everywhere else the surrogate's PyTorch formula runs. The fake implementations give
``torch.compile`` the output's shape, dtype and layout: the input's (``torch.empty_like``).
"""

from __future__ import annotations

import torch

__all__ = ["OPS"]

_SCHEMAS = {
    "step": "step(Tensor x, bool signed) -> Tensor",
    "htaf_forward": "htaf_forward(Tensor x, Tensor[] params) -> Tensor",
    "surrogate_backward": ("surrogate_backward(Tensor grad, Tensor x, int kind, Tensor[] params, "
                           "float scale) -> Tensor"),
}

_lib = torch.library.Library("htaf", "FRAGMENT")
for _schema in _SCHEMAS.values():
    _lib.define(_schema)

#: ``name → qualified op name`` of the elementwise ops.
OPS = {name: f"htaf::{name}" for name in _SCHEMAS}


@torch.library.register_fake("htaf::step")
def _(x, signed):
    return torch.empty_like(x)


@torch.library.register_fake("htaf::htaf_forward")
def _(x, params):
    return torch.empty_like(x)


@torch.library.register_fake("htaf::surrogate_backward")
def _(grad, x, kind, params, scale):
    return torch.empty_like(grad)
