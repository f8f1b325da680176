"""The training loop, readable top to bottom (in the spirit of nanoGPT's ``train.py``).

Every epoch: train (the lr set every step by the schedule, bf16 autocast on CUDA), then evaluate
the **validation** split twice — as trained (``val_acc``: smooth HTAF layers smooth) and in hard
mode (``hard_val_acc``: every binary activation the exact step, in exact fp32) — with the gap and
the fraction of dead binary units. After the last epoch the **test** split is evaluated once, the
same way (``test_acc``, ``hard_test_acc``, ...), and reported beside validation. Nothing here
selects anything on the test split. Accuracies are fractions in [0, 1].

Smooth HTAF layers are annealed once per epoch (:func:`~htaf.engine.recipe.smooth_annealer`),
so the last epoch trains at the final γ and a compiled model recompiles at most once per epoch.

Distributed: under ``torchrun`` each rank gets ``batch_size / world`` samples of every global
batch; the loss is scaled so DDP's averaged gradient is the gradient of the global batch mean,
BatchNorm statistics are the global batch's (``sync_bn``), the metrics are all-reduced and only
rank 0 writes: a 2-process run follows the 1-process run with the same ``batch_size``.
"""

from __future__ import annotations

import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import metrics as _metrics
from ..nn import apply_constraints
from . import checkpoint, distributed
from .config import TrainConfig
from .recipe import anneal_progress, build_model, lr_factor, make_optimizer, planned_steps, smooth_annealer
from .runlog import RunLog, check_folder, clear_folder, split_of
from .summary import log_line, write_summary

__all__ = ["RunResult", "train", "Progress"]


@dataclass
class RunResult:
    """What :func:`train` returns: the last epoch's ``metrics`` (validation, plus the test
    metrics once the run has finished), the per-epoch ``history``, the run folder (None without
    ``out_dir``), the resolved config and the trained model (unwrapped, in eval mode, as
    trained: smooth layers smooth)."""

    metrics: dict
    history: list[dict]
    run_dir: Path | None
    config: TrainConfig
    model: nn.Module | None = None

    @property
    def test(self) -> dict | None:
        """The test-split metrics (evaluated once, after the last epoch), or None."""
        out = {k: v for k, v in self.metrics.items() if split_of(k) == "test"}
        return out or None


def train(config: TrainConfig, *, dataset=None) -> RunResult:
    """Train ``config``; see the module docstring for what happens and what is written.

    ``dataset``: an already loaded :class:`~htaf.data.ImageDataset` to use instead of loading
    ``config.data`` again, for sweeps that train many models on the same data (without a
    validation split, ``config.val_fraction`` of its training split is carved out); it should be
    the dataset ``config`` names, since ``load_run`` reloads that one.
    """
    config.validate()
    env = distributed.setup(config.device)
    try:
        return Trainer(config, _dataset(config, dataset, env), env).fit()
    finally:
        env.close()


def _dataset(config: TrainConfig, dataset, env: distributed.Distributed):
    from ..data import load_dataset

    if dataset is None:   # under DDP one process per node decodes (and caches) first
        if env.local_rank != 0:
            env.barrier()
        dataset = load_dataset(config.data, cache_dir=config.data_cache, root=config.data_root,
                               val_fraction=config.val_fraction)
        if env.local_rank == 0:
            env.barrier()
    return dataset.with_validation(config.val_fraction)   # a dataset's own split wins


class Trainer:
    """One run: everything is set up in ``__init__``; :meth:`fit` is the loop."""

    def __init__(self, config: TrainConfig, dataset, env: distributed.Distributed):
        self.config, self.dataset, self.env = config, dataset, env
        self.device = distributed.resolve_device(config.device, env)
        if config.batch_size % env.world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the number "
                             f"of processes ({env.world})")
        self.amp = self.device.type == "cuda" and config.amp is not False
        if self.device.type == "cuda":    # speed over bitwise reproducibility on the GPU
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        log = config.log if config.log != "auto" else ("tqdm" if sys.stderr.isatty() else "plain")
        self.bars = log == "tqdm" and env.master
        self.say = print if env.master and log != "none" else (lambda *a, **k: None)
        self.run_dir = self._claim_run_folder()

        # ---- model, optimizer, data (the seed fixes the initialization and the data order)
        _seed_everything(config.seed)
        model = build_model(config, dataset).to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if env.world > 1 and config.sync_bn:
            model = distributed.sync_batchnorm(model, self.device)
        self.model = model
        self.optimizer = make_optimizer(config, model)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.train_batches = self._batches("train", shuffle=True)
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.annealer = smooth_annealer(config, model, planned_steps(config, dataset))
        self.warmup_steps = round(config.warmup * self.steps_per_epoch)
        self.fast, self.train_model = _wrap(model, config, env, self.device)
        self.extra_loss = getattr(model, "extra_loss", None)
        self.epoch_metrics = getattr(model, "epoch_metrics", None)
        self.binary = _metrics.has_binary_units(model)

    def _batches(self, split: str, shuffle: bool = False, whole: bool = False):
        """One split's batches; ``whole``: unsharded (for hooks that need every sample)."""
        c, env = self.config, self.env
        if split == "train":
            return self.dataset.batches(
                "train", c.batch_size, device=self.device, shuffle=shuffle,
                augment=self.dataset.image_size >= 32 if c.augment is None else c.augment,
                hflip=c.hflip, generator=self.generator, rank=env.rank, world_size=env.world,
                channels_last=c.channels_last)
        rank, world = (0, 1) if whole else (env.rank, env.world)
        return self.dataset.batches(split, c.eval_batch_size, device=self.device, shuffle=False,
                                    rank=rank, world_size=world, channels_last=c.channels_last)

    def _claim_run_folder(self) -> Path | None:
        """The run folder, checked on rank 0 (an existing run is never replaced silently) and
        cleared there when ``overwrite`` asks for it."""
        c, env = self.config, self.env
        if c.out_dir is None:
            return None
        run_dir = Path(c.out_dir) / c.run_name()
        resuming = c.resume and (run_dir / checkpoint.CHECKPOINT).exists()
        error = None
        if env.master:
            error = check_folder(run_dir, resume=c.resume, overwrite=c.overwrite)
        error = distributed.broadcast_object(error, env)
        if error:
            raise FileExistsError(error)
        if env.master and not resuming and run_dir.exists() and any(run_dir.iterdir()):
            if c.resume:
                self.say(f"no checkpoint in {run_dir}: starting from scratch", flush=True)
            clear_folder(run_dir)          # --overwrite (or a resume with nothing to resume)
        env.barrier()
        return run_dir

    # --------------------------------------------------------------------------------- the loop
    def fit(self) -> RunResult:
        c, env = self.config, self.env
        start, self.step, history = self._resume()
        log = self._open_log(history, start)
        ds = self.dataset
        n_params = sum(p.numel() for p in self.model.parameters())
        self.say(f"{c.run_name()}: {c.model} on {ds.name} ({ds.sizes()}), {n_params:,} "
                 f"parameters, {self.device}{f' × {env.world}' if env.world > 1 else ''}"
                 f"{', bf16' if self.amp else ''}{', compiled' if c.compile else ''}", flush=True)
        t_run = time.perf_counter() - (history[-1]["time"] if history else 0.0)
        end = c.epochs if c.stop_after is None else min(c.epochs, start + c.stop_after)
        try:
            for epoch in range(start, end):
                knobs = self.annealer.set_progress(anneal_progress(epoch, c.epochs)) \
                    if self.annealer else {}
                rec = {"epoch": epoch + 1, **self.train_epoch(epoch),
                       "gamma": knobs.get("gamma"), "beta": knobs.get("beta")}
                last = epoch + 1 == c.epochs
                t1 = time.perf_counter()
                if (epoch + 1) % c.eval_every == 0 or last:
                    rec.update(self.evaluate("val"))
                if last:                              # the test split: once, at the very end
                    rec.update(self.evaluate("test"))
                rec["eval_time"] = time.perf_counter() - t1
                rec["time"] = time.perf_counter() - t_run
                history.append(rec)
                self.say(log_line(rec, c.epochs), flush=True)
                if log is not None:
                    log.append("metrics.jsonl", rec, step=epoch + 1)
                    every = c.checkpoint_every
                    if last or epoch + 1 == end or (every and (epoch + 1) % every == 0):
                        self.save(epoch + 1, history)
                env.barrier()
        finally:
            if log is not None:
                log.close()
        if log is not None and history:
            write_summary(self.run_dir, c, history, ds)
        if history and end == c.epochs:
            self._warn_if_at_chance(history[-1])
        self.model.eval()
        return RunResult(metrics=dict(history[-1]) if history else {}, history=history,
                         run_dir=self.run_dir, config=c, model=self.model)

    def _warn_if_at_chance(self, rec: dict) -> None:
        """Say so when the run ended no better than guessing: a recipe that does not train this
        model must not pass silently as a result."""
        acc = rec.get("hard_val_acc", rec.get("val_acc"))
        chance = 1.0 / self.dataset.num_classes
        if acc is not None and acc < 1.5 * chance and self.env.rank == 0:
            c = self.config
            warnings.warn(
                f"{c.run_name()}: validation accuracy {100 * acc:.1f}% is at chance "
                f"({100 * chance:.1f}%): this recipe ({c.optimizer}, lr {c.lr:g}, {c.schedule}) "
                f"did not train {c.model}; try another lr or optimizer (docs/training.md, "
                f"'Defaults') or `htaf compare --grid lr=1e-3,3e-3,1e-2`", stacklevel=2)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training split; returns the epoch's train metrics and timing."""
        c, model = self.config, self.model
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = torch.zeros((), dtype=torch.int64, device=self.device)
        bar = Progress(self.steps_per_epoch, f"epoch {epoch + 1}/{c.epochs}", self.bars)
        lr = c.lr
        for i, (x, y) in enumerate(self.train_batches):
            lr = c.lr * lr_factor(self.step, self.total_steps, self.warmup_steps, c.schedule)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast("cuda", torch.bfloat16, enabled=self.amp):
                logits = self.train_model(x)
            ce_sum = F.cross_entropy(logits.float(), y, reduction="sum",
                                     label_smoothing=c.label_smoothing)
            # sum over this rank's samples / (global batch / world): DDP's gradient average is
            # then exactly the gradient of the mean over the global batch
            loss = ce_sum * (self.env.world / self.train_batches.global_batch_size(i))
            if self.extra_loss is not None:
                loss = loss + self.extra_loss()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            self.optimizer.step()
            apply_constraints(model)
            self.step += 1
            loss_sum += ce_sum.detach().double()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            bar.update(loss_sum, seen, lr)
        bar.close()
        totals = torch.stack([loss_sum, correct.double(), seen.double()])
        if self.env.world > 1:
            dist.all_reduce(totals)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return {"step": self.step, "lr": lr, "train_loss": totals[0].item() / totals[2].item(),
                "train_acc": totals[1].item() / totals[2].item(),
                "epoch_time": time.perf_counter() - t0}

    def evaluate(self, split: str) -> dict:
        """``split`` evaluated as trained and in hard mode (exact fp32 steps): loss, accuracy,
        the gap and the dead binary units; on validation also the model's ``epoch_metrics``."""
        batches = self._batches(split)
        smooth = _metrics.evaluate(self.fast, batches, amp=self.amp)
        hard = smooth
        if self.binary:
            hard = _metrics.evaluate(self.fast, batches, mode="hard", dead_units=True)
        rec = {f"{split}_loss": smooth["loss"], f"{split}_acc": smooth["acc"],
               f"hard_{split}_loss": hard["loss"], f"hard_{split}_acc": hard["acc"],
               f"{split}_gap": smooth["acc"] - hard["acc"],
               f"{split}_dead_units": hard.get("dead_units")}
        if split == "val" and self.epoch_metrics is not None:
            whole = self._batches(split, whole=True) if self.env.world > 1 else batches
            self.model.eval()
            with torch.no_grad():
                extra = self.epoch_metrics(whole) or {}
            rec.update({k: v.item() if isinstance(v, torch.Tensor) else v
                        for k, v in extra.items()})
        return rec

    # ---------------------------------------------------------------- resumption and writing
    def _resume(self) -> tuple[int, int, list[dict]]:
        c = self.config
        path = self.run_dir / checkpoint.CHECKPOINT if self.run_dir is not None else None
        if not (c.resume and path is not None and path.exists()):
            return 0, 0, []
        epoch, step, history = checkpoint.restore(
            checkpoint.load(path), config=c, path=path, model=self.model,
            optimizer=self.optimizer, generator=self.generator, device=self.device)
        self.say(f"resumed {self.run_dir} at epoch {epoch}/{c.epochs}", flush=True)
        return epoch, step, history

    def _open_log(self, history: list[dict], epoch: int) -> RunLog | None:
        """Rank 0's run log: the config and the history so far (epochs after the checkpoint a
        killed process had logged are dropped, in metrics.jsonl and in TensorBoard)."""
        if not self.env.master or self.run_dir is None:
            return None
        log = RunLog(self.run_dir, tensorboard=self.config.tensorboard, purge_step=epoch + 1)
        log.write_json("config.json", self.config.to_dict(), indent=2)
        log.write_records("metrics.jsonl", history)
        return log

    def save(self, epoch: int, history: list[dict]) -> None:
        checkpoint.save(self.run_dir / checkpoint.CHECKPOINT, model=self.model,
                        optimizer=self.optimizer, config=self.config, epoch=epoch,
                        step=self.step, history=history, generator=self.generator,
                        device=self.device)


class Progress:
    """A tqdm bar over one epoch's batches (``enabled``), showing the running mean loss of the
    epoch so far. It refreshes at most every ``interval`` seconds, whatever the number of steps
    (a fixed every-N-steps refresh showed the first batch's loss for most of a short epoch), and
    reads the device's loss (a sync) only when it refreshes."""

    def __init__(self, total: int, desc: str, enabled: bool, interval: float = 0.5):
        self.bar = None
        self.interval, self.last = interval, -float("inf")
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, loss_sum: torch.Tensor, seen: torch.Tensor, lr: float) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.monotonic()
        if now - self.last >= self.interval or self.bar.n == self.bar.total:
            self.last = now
            self.bar.set_postfix(loss=f"{loss_sum.item() / max(1, seen.item()):.3f}",
                                 lr=f"{lr:.3g}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _wrap(model: nn.Module, config: TrainConfig, env, device: torch.device):
    """``(fast, train_model)``, sharing the model's parameters: ``fast`` evaluates (compiled if
    asked); ``train_model`` trains, DDP inside torch.compile so Dynamo's DDP optimizer can
    overlap the all-reduce with the backward."""
    fast = model
    if config.compile:   # annealed γ/β are buffers: changing them never recompiles
        fast = torch.compile(model)
    train_model = fast
    if env.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[env.local_rank] if device.type == "cuda" else None)
        if config.compile:
            train_model = torch.compile(train_model)
    return fast, train_model


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)   # also seeds every CUDA device
