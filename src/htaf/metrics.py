"""Evaluation metrics shared by the engine and ``htaf compare``: accuracy and loss in a given
activation mode, and the fraction of dead binary units.

A hidden binary unit is *dead* when its output (the output of a :class:`~htaf.nn.BinaryActivation`
or a spiking neuron, :func:`binary_units_of`) never changes over the evaluation set: always 0 or
always 1 (always −1 or +1 for signs). A unit is
a channel for conv-shaped outputs (``[B, C, ...]``: dim 1, all positions pooled) and a feature for
linear outputs (``[B, F]``); a module called several times per forward (the time steps of a
spiking net) pools its calls of the same shape. Dead units carry no information, so their
fraction measures how much of a binary network's width training has wasted.

Under ``torch.distributed`` each rank evaluates its shard and the sums, minima and maxima are
all-reduced, so every rank returns the metrics of the whole set.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .nn import BaseNode, BinaryActivation, BinaryLayer, using_mode

__all__ = ["evaluate", "dead_unit_fraction", "binary_units", "binary_units_of", "has_binary_units"]


def binary_units_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module whose output is a layer of binary units: the binary
    activations (binary layers' input quantizers included) and the spiking neurons. Not the weight
    quantizers of binary layers (their outputs are weights) nor a neuron's spike function (the
    neuron's output is the same spikes, whichever kernel computes them)."""
    inner = set()
    for m in model.modules():
        if isinstance(m, BinaryLayer) and m.weight_quantizer is not None:
            inner.add(m.weight_quantizer)
        if isinstance(m, BaseNode):
            inner.add(m.surrogate_function)
    return [(name, m) for name, m in model.named_modules()
            if (isinstance(m, BinaryActivation) and m not in inner) or isinstance(m, BaseNode)]


def has_binary_units(model: nn.Module) -> bool:
    return bool(binary_units_of(model))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _UnitRange:
    """Forward hooks recording each binary unit's min and max output over the batches seen."""

    def __init__(self, model: nn.Module):
        self.lo: dict[str, torch.Tensor] = {}
        self.hi: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(name, isinstance(m, BaseNode)))
                        for name, m in binary_units_of(model)]

    def _hook(self, name, neuron: bool):
        def hook(module, inputs, out):
            if neuron and module.step_mode == "m" and isinstance(out, torch.Tensor):
                out = out.flatten(0, 1)         # [T, B, units...] → [T·B, units...]
            if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] == 0:
                return
            flat = out.detach().transpose(0, 1).reshape(out.shape[1], -1).float()
            lo, hi = flat.amin(1), flat.amax(1)
            key = f"{name}{list(out.shape[1:])}"   # a module reused at several widths: one each
            if key in self.lo:
                torch.minimum(self.lo[key], lo, out=self.lo[key])
                torch.maximum(self.hi[key], hi, out=self.hi[key])
            else:
                self.lo[key], self.hi[key] = lo, hi
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

    def per_layer(self) -> dict[str, tuple[int, int]]:
        """``{layer: (dead, total)}`` over all ranks."""
        out = {}
        for name in sorted(self.lo):
            lo, hi = self.lo[name].clone(), self.hi[name].clone()
            if _distributed():
                dist.all_reduce(lo, op=dist.ReduceOp.MIN)
                dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            out[name] = (int((lo == hi).sum()), lo.numel())
        return out


@torch.no_grad()
def evaluate(model: nn.Module, batches, *, mode: str | None = None, dead_units: bool = False,
             amp: bool = False) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and ``acc`` (fraction correct) of ``model`` over ``batches``
    (an iterable of normalized ``(x, y)``), in eval mode.

    ``mode`` (``"hard"``, ``"smooth"``, ...) switches every binary activation for the evaluation
    (None: as the model is). ``dead_units=True`` adds ``dead_units``, the fraction of binary units
    whose output never changes (None when the model has none). ``amp``: bf16 autocast on CUDA.

    A **hard** evaluation is the binary network exactly: it runs in fp32 with autocast off
    (``amp`` and any autocast the caller has entered are ignored, on the CPU and on CUDA), so its
    accuracy is that of the packed model ``htaf export`` ships; in bf16 a ±1 dot product over a
    few thousand inputs is not exact, and neither is the sign that follows.
    """
    was_training = model.training
    model.eval()
    exact = mode == "hard"
    ranges = _UnitRange(model) if dead_units else None
    loss_sum = correct = count = None
    try:
        with using_mode(model, mode) if mode else contextlib.nullcontext(), \
                _exact_fp32() if exact else contextlib.nullcontext():
            for x, y in batches:
                if exact and x.is_floating_point():
                    x = x.float()
                with torch.autocast("cuda", torch.bfloat16, enabled=amp and x.is_cuda and not exact):
                    logits = model(x)
                batch_loss = F.cross_entropy(logits.float(), y, reduction="sum")
                batch_correct = (logits.argmax(1) == y).sum()
                if loss_sum is None:
                    loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
                    correct = torch.zeros((), dtype=torch.int64, device=y.device)
                    count = torch.zeros((), dtype=torch.int64, device=y.device)
                loss_sum += batch_loss.double()
                correct += batch_correct
                count += y.numel()
        if loss_sum is None:   # no batches (a rank with an empty shard still joins the reduce)
            if not _distributed():
                raise ValueError("evaluate() got no batches")
            loss_sum = correct = count = torch.zeros((), dtype=torch.float64,
                                                     device=getattr(batches, "device", "cpu"))
        totals = torch.stack([loss_sum, correct.double(), count.double()])
        if _distributed():
            dist.all_reduce(totals)
        n = max(totals[2].item(), 1.0)
        result = {"loss": totals[0].item() / n, "acc": totals[1].item() / n}
        if ranges is not None:
            layers = ranges.per_layer()
            total = sum(t for _, t in layers.values())
            result["dead_units"] = sum(d for d, _ in layers.values()) / total if total else None
    finally:
        if ranges is not None:
            ranges.remove()
        model.train(was_training)
    return result


@contextlib.contextmanager
def _exact_fp32():
    """Autocast off on every device type, and no TF32 in CUDA matmuls and convolutions (TF32
    rounds the inputs to 10 mantissa bits: not exact either)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def binary_units(model: nn.Module, batches, *, mode: str = "hard") -> dict[str, tuple[int, int]]:
    """Per binary layer ``(dead units, units)`` over ``batches`` in ``mode``."""
    was_training = model.training
    model.eval()
    ranges = _UnitRange(model)
    try:
        with torch.no_grad(), using_mode(model, mode):
            for x, _ in batches:
                model(x)
        return ranges.per_layer()
    finally:
        ranges.remove()
        model.train(was_training)


def dead_unit_fraction(model: nn.Module, batches, *, mode: str = "hard") -> float | None:
    """Fraction of binary units whose output never changes over ``batches`` (None if none)."""
    layers = binary_units(model, batches, mode=mode)
    total = sum(t for _, t in layers.values())
    return sum(d for d, _ in layers.values()) / total if total else None
