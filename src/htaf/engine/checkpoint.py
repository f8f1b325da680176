"""Checkpoints: an atomic ``checkpoints/last.pt`` holding everything a bit-exact resumption
needs (model, optimizer, step, history, config and every RNG state), the check that a resumed
config trains the same trajectory, and :func:`load_run`, which rebuilds a trained run."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .recipe import build_model
from .runlog import atomic_save

__all__ = ["save", "load", "restore", "check_resumable", "rng_state", "set_rng_state",
           "load_run", "CHECKPOINT"]

CHECKPOINT = Path("checkpoints") / "last.pt"


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """The RNG states a resumed run needs. CUDA: only the run's own device (``*_all`` would
    create a context on every visible GPU, from a CPU run too, and under DDP save rank 0's view
    of the other ranks' devices)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "data": generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):   # older checkpoints: every device's state
        index = device.index or 0
        cuda = cuda[index] if device.type == "cuda" and index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    generator.set_state(state["data"])


def save(path: Path, *, model: nn.Module, optimizer, config: TrainConfig, epoch: int, step: int,
         history: list[dict], generator: torch.Generator, device: torch.device) -> None:
    """Write the checkpoint atomically (a temporary file, then ``os.replace``)."""
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch, "step": step, "history": history, "config": config.to_dict(),
                 "rng": rng_state(generator, device)}, path)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)   # our own file


def check_resumable(config: TrainConfig, saved: dict, path: Path) -> None:
    """Refuse to resume with a config that would train another trajectory."""
    current = config.to_dict()
    changed = sorted(k for k in config.trajectory() if saved.get(k) != current[k])
    if changed:
        raise ValueError(f"cannot resume {path}: the config differs in {', '.join(changed)} "
                         f"(use another --name, or --overwrite)")


def restore(ckpt: dict, *, config: TrainConfig, path: Path, model: nn.Module, optimizer,
            generator: torch.Generator, device: torch.device) -> tuple[int, int, list[dict]]:
    """Load ``ckpt`` into the run's objects; returns ``(epoch, step, history)``."""
    check_resumable(config, ckpt["config"], path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"], generator, device)
    return ckpt["epoch"], ckpt["step"], ckpt["history"]


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu", checkpoint: str = "last.pt"):
    """Rebuild a trained run: ``(model, dataset, config)``, the model in eval mode on ``device``
    (annealed γ/β are buffers: the checkpoint restores them); the dataset with the run's
    validation split."""
    from ..data import load_dataset

    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoints" / checkpoint
    for p in (cfg_path, ckpt_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: is {run_dir} a run folder of `htaf train`?")
    config = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    dataset = load_dataset(config.data, cache_dir=config.data_cache, root=config.data_root,
                           val_fraction=config.val_fraction)
    model = build_model(config, dataset)
    ckpt = load(ckpt_path)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), dataset, config
