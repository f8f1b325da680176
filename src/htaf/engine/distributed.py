"""Distributed training under ``torchrun``: the process group, the device of each rank, and
BatchNorm over the global batch on CUDA (``nn.SyncBatchNorm``) and on the CPU, where torch's
SyncBatchNorm refuses to run (:class:`CPUSyncBatchNorm`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Distributed", "setup", "resolve_device", "sync_batchnorm", "CPUSyncBatchNorm",
           "broadcast_object"]


@dataclass
class Distributed:
    """This process's place in the job: ``rank`` of ``world``, ``local_rank`` on its node;
    ``created``: the engine initialized the process group (and destroys it in :meth:`close`)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def master(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.created:
            dist.destroy_process_group()


def setup(device: str) -> Distributed:
    """From torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``: ``nccl`` on CUDA (bound to the
    local GPU), ``gloo`` on the CPU; a plain process when ``WORLD_SIZE`` is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return Distributed(rank, world, local, created=False)
    if device != "cpu" and torch.cuda.is_available():
        # bind the rank's GPU: NCCL's barrier() otherwise guesses it from the global rank
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    return Distributed(rank, world, local, created=True)


def resolve_device(device: str, env: Distributed) -> torch.device:
    """``auto`` → CUDA when available; under torchrun each rank gets ``cuda:LOCAL_RANK``."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if env.world > 1:
            return torch.device("cuda", env.local_rank)
    return torch.device(name)


def broadcast_object(obj, env: Distributed):
    """Rank 0's ``obj`` on every rank (so a check made by rank 0 fails on all of them)."""
    if env.world <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all processes,
    for the CPU (gloo), where ``nn.SyncBatchNorm`` raises.

    Each rank all-reduces its per-channel sums (a differentiable all-reduce, whose backward
    all-reduces the gradients), so the forward and backward are those of one BatchNorm over
    the concatenated batch: the mean first, then the centred sum of squares (two passes, as
    accurate as the single-process kernel). Evaluation uses the running statistics as usual;
    parameter and buffer names are BatchNorm's, so checkpoints load into a plain model.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_reduce(x.new_tensor([x.numel() / x.shape[1]]))
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / self.num_batches_tracked.item() if self.momentum is None
                     else self.momentum)
                self.running_mean.lerp_(mean.detach(), m)
                unbiased = var.detach() * count / (count - 1).clamp_min(1)
                self.running_var.lerp_(unbiased, m)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm synchronized across processes: ``nn.SyncBatchNorm`` on an
    accelerator, :class:`CPUSyncBatchNorm` on the CPU (same parameters and buffers)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
