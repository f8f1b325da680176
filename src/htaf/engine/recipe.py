"""The recipe of a run: its model, optimizer, learning-rate schedule and annealing of smooth HTAF
layers, as functions of the :class:`~htaf.engine.TrainConfig`."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import Anneal, BinaryActivation
from ..surrogates import HTAFSurrogate

__all__ = ["build_model", "make_optimizer", "lr_factor", "resolve_anneal_gamma",
           "smooth_annealer", "anneal_progress"]


def build_model(config, dataset) -> nn.Module:
    """The model of ``config`` for ``dataset`` (its shape arguments filled in)."""
    from ..models import create_model

    return create_model(config.model, **dataset.model_kwargs(), **config.model_kwargs)


def make_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; weight decay on weights of ≥ 2 dimensions only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # foreach: one call per tensor list rather than a Python loop over parameters (PyTorch's
    # default on CUDA only); on the CPU it halves AdamW's step for the small nets of
    # `htaf compare` (1.9 → 1.1 ms for a 6-layer MLP), a tenth of their training time.
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999), foreach=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    * ``constant``: linear warmup then 1;
    * ``cosine``: linear warmup then cosine decay to 0;
    * ``onecycle``: linear rise from 1/25 over ``warmup_steps`` (30 % of the run when 0),
      then linear decay to 0.
    """
    if schedule == "onecycle":
        rise = warmup_steps if warmup_steps > 0 else max(1, round(0.3 * total_steps))
        if step < rise:
            return 0.04 + 0.96 * step / rise
        return max(0.0, 1.0 - (step - rise) / max(1, total_steps - rise))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


#: ``anneal_gamma="auto"`` anneals only runs of at least this many optimizer steps: a schedule
#: that reaches γ = 30 within a few hundred steps freezes a network that has not learned yet.
AUTO_ANNEAL_MIN_STEPS = 1000

#: What ``anneal_gamma="auto"`` anneals γ over (start, end) where it anneals (see
#: :func:`resolve_anneal_gamma` for the evidence).
AUTO_ANNEAL_GAMMA = (0.5, 15.0)


def planned_steps(config, dataset) -> int:
    """Optimizer steps of a whole run: epochs × batches per epoch (the last one partial)."""
    return config.epochs * math.ceil(len(dataset.train_y) / config.batch_size)


def resolve_anneal_gamma(value, model: nn.Module, steps: int | None = None
                         ) -> tuple[float, float] | None:
    """``anneal_gamma`` as used for ``model`` over a run of ``steps`` optimizer steps:
    ``"auto"`` is (0.5, 15) when the model has convolutions and the run has at least
    :data:`AUTO_ANNEAL_MIN_STEPS` steps (or ``steps`` is unknown), None (fixed γ) otherwise.

    Evidence, on validation (``htaf reproduce anneal-defaults`` and ``train-defaults``,
    docs/training.md 'Defaults'): on Fashion-MNIST (AdamW 1e-3, 3 epochs = 1,266 steps) a 4-conv
    Heaviside CNN reached 57.8 % hard accuracy at fixed γ, 74.6 % annealed 1 → 30 and 76.3 %
    annealed 0.5 → 15 (better on both seeds, +2.1 and +1.4 points; 1 → 30 was the default until
    then, and 0.5 → 15 also won the selection of ``fmnist-dhn-cnn``), while a depth-6 MLP
    reached 87.7 % fixed and 62.5 / 70.5 % annealed; on digits (10 epochs = 110 steps) the 6-conv
    ``dhn_cnn`` reached 97.2 % at fixed γ and 48.6 % annealed 1 → 30.
    """
    if value != "auto":
        return value
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    long_enough = steps is None or steps >= AUTO_ANNEAL_MIN_STEPS
    return AUTO_ANNEAL_GAMMA if has_conv and long_enough else None


def smooth_annealer(config, model: nn.Module, steps: int | None = None) -> Anneal | None:
    """An :class:`Anneal` over the smooth HTAF layers of ``model`` for a run of ``steps``
    optimizer steps (None if nothing to anneal)."""
    layers = [m for m in model.modules() if isinstance(m, BinaryActivation)
              and m.mode == "smooth" and isinstance(m.surrogate, HTAFSurrogate)]
    gamma = resolve_anneal_gamma(config.anneal_gamma, model, steps)
    if not layers or (gamma is None and config.anneal_beta is None):
        return None
    return Anneal(nn.ModuleList(layers), gamma=gamma, beta=config.anneal_beta,
                  schedule=config.anneal_schedule)


def anneal_progress(epoch: int, epochs: int) -> float:
    """Progress used during (0-based) ``epoch``: 0 in the first, 1 in the last."""
    return epoch / max(1, epochs - 1)
