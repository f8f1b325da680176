"""The fused ops, as ``torch.library`` operators: schemas and shapes only.

Each op is one memory pass over its tensors; the formulas are those of the surrogate classes in
:mod:`htaf.surrogates` (their PyTorch ``derivative``/``primitive`` are the references), selected
by the surrogate's ``kernel_id`` and fed its raw hyperparameters as 0-d tensors (so annealed
values are read at run time, never baked into a compiled graph).

    htaf::step(x, signed)                              1[x ≥ 0] or sign(x), NaN → NaN
    htaf::htaf_forward(x, params)                      σ(α·x + β·tanh(γ·x)), params = [α, β, γ]
    htaf::htaf_forward_grad(x, params, scale)         (HTAF(x), scale · HTAF'(x)): CPU only
    htaf::surrogate_backward(grad, x, kind, params, scale)   grad · scale · g'(x)

``htaf_forward_grad`` serves smooth HTAF on the CPU, where the two exponentials per element bound
the time: evaluating value and derivative together and saving the derivative halves the math of
a forward + backward. On a GPU, memory bounds the time, and recomputing the derivative in the
backward (one stream fewer) is the faster choice; it has no CUDA implementation.

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
    "htaf_forward_grad": ("htaf_forward_grad(Tensor x, Tensor[] params, float scale) "
                          "-> (Tensor, Tensor)"),
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


@torch.library.register_fake("htaf::htaf_forward_grad")
def _(x, params, scale):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.register_fake("htaf::surrogate_backward")
def _(grad, x, kind, params, scale):
    return torch.empty_like(grad)


# ----------------------------------------------------------------------------- memory layout
def is_dense(t: torch.Tensor) -> bool:
    """True when the elements of ``t`` fill one gap-free, non-overlapping block of memory."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def as_layout_of(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is dense with ``out``'s strides, else a copy laid out as ``out``: what
    the fused kernels (C and Triton) need to walk both as one flat block."""
    if t.shape != out.shape:
        raise ValueError(f"shape mismatch: {tuple(t.shape)} vs {tuple(out.shape)}")
    if t.is_contiguous() and out.is_contiguous():   # the common case, decided in C++
        return t
    same = all(a == b for a, b, n in zip(t.stride(), out.stride(), t.shape) if n != 1)
    if same and is_dense(t):
        return t
    return torch.empty_like(out, dtype=t.dtype).copy_(t)
