"""The training engine: one train/eval loop, readable top to bottom (in the spirit of nanoGPT).

>>> from htaf.engine import TrainConfig, train
>>> result = train(TrainConfig(model="dhn_mlp", model_kwargs={"activation": "htaf", "depth": 4},
...                            data="digits", epochs=20))
>>> result.metrics["hard_test_acc"]

Every epoch: train (SGD or AdamW, lr set per step by a cosine / one-cycle / constant schedule with
linear warmup, label smoothing, bf16 autocast on CUDA), then evaluate the test set twice — as
trained (``test_acc``: smooth HTAF layers smooth) and in hard mode (``hard_test_acc``: every binary
activation is the exact step) — and record the gap and the fraction of dead binary units.
Accuracies are fractions in [0, 1].

Smooth HTAF layers are annealed (``anneal_gamma="auto"``: γ 1 → 30 in convolutional models, fixed γ
in the others, see :func:`resolve_anneal_gamma`): γ (and β if
``anneal_beta``) follows :func:`htaf.nn.schedule_value` with progress ``epoch / (epochs − 1)``,
updated once per epoch, so the last epoch trains at the final value and a compiled model
recompiles at most once per epoch. Straight-through layers are never annealed.

A run writes ``<out_dir>/<name>/``: ``config.json``, ``metrics.jsonl`` (one JSON object per epoch),
``checkpoints/last.pt`` (atomic; model, optimizer, step, RNG states: ``resume=True`` continues
bit-exactly on the CPU), ``loss.png``, ``accuracy.png`` and ``summary.md``.

On CUDA the engine turns on cuDNN autotuning and TF32 (speed over bitwise reproducibility there).

Distributed: launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), the engine
initializes ``nccl`` (CUDA) or ``gloo`` (CPU), wraps the model in DDP, gives each rank
``batch_size / world_size`` samples of every global batch and all-reduces the metrics; only rank 0
writes. The loss is scaled so the averaged gradient is the gradient of the global batch mean: a
2-process run follows the 1-process run with the same ``batch_size``. BatchNorm statistics stay
per rank unless ``sync_bn`` (default) converts them to SyncBatchNorm, which needs CUDA; on CPU
BatchNorm models under DDP differ from the 1-process run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import metrics as _metrics
from ._checks import check_choice, check_int, check_real
from .nn import Anneal, BinaryActivation, apply_constraints, create_act
from .nn.anneal import SCHEDULES as ANNEAL_SCHEDULES
from .surrogates import HTAFSurrogate

__all__ = ["TrainConfig", "RunResult", "train", "load_run", "build_model", "lr_factor",
           "resolve_anneal_gamma"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")
LOG_FORMATS = ("auto", "tqdm", "plain", "none")
# Fields that may change between a run and its resumption (they do not change the trajectory).
_RESUMABLE = {"out_dir", "name", "resume", "log", "checkpoint_every", "stop_after", "eval_every",
              "data_cache", "device", "compile"}


@dataclass
class TrainConfig:
    """Everything a run needs; validated on construction (one ``ValueError`` per bad field).

    Model: ``model`` (a registered name) and ``model_kwargs`` (``activation``, ``depth``,
    ``width``...; ``in_channels``/``image_size``/``num_classes`` come from the data).
    Optimization: ``optimizer`` sgd|adamw, ``lr`` (peak), ``weight_decay`` (on weights of ≥ 2
    dimensions only, not biases or norms), ``momentum`` (SGD; AdamW's β₁), ``schedule``
    cosine|onecycle|constant, ``warmup`` epochs of linear warmup (onecycle: the rising phase,
    30 % of the run when 0), ``label_smoothing``, ``grad_clip`` (max global norm or None).
    ``batch_size`` is the global batch (split across DDP ranks).
    Data: ``data`` (name or ImageFolder dir/zip), ``augment`` (crop + flip; None: on for images
    ≥ 32 px), ``hflip`` (None: the dataset's default, off for digits and MNIST).
    Annealing of smooth HTAF layers: ``anneal_gamma``/``anneal_beta`` ``(start, end)`` or None,
    ``anneal_schedule`` exp|linear|cosine; ``anneal_gamma="auto"`` (default) is (1, 30) for models
    with convolutions and None for the others (evidence: :func:`resolve_anneal_gamma`).
    Hardware: ``device`` auto|cpu|cuda|cuda:N, ``amp`` (bf16 autocast; None: on for CUDA),
    ``compile`` (torch.compile), ``channels_last``, ``sync_bn`` (DDP on CUDA).
    Output: ``out_dir`` (None: write nothing), ``name`` (None: derived from the config),
    ``eval_every``, ``checkpoint_every`` (epochs; the last epoch always), ``resume``,
    ``log`` auto|tqdm|plain|none. ``stop_after``: stop after this many epochs in this call
    (then ``resume=True`` continues), a test hook for resumption.
    """

    model: str = "dhn_mlp"
    model_kwargs: dict = field(default_factory=dict)
    data: str = "digits"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    augment: bool | None = None
    hflip: bool | None = None
    eval_batch_size: int = 1024
    anneal_gamma: tuple[float, float] | str | None = "auto"
    anneal_beta: tuple[float, float] | None = None
    anneal_schedule: str = "exp"
    device: str = "auto"
    amp: bool | None = None
    compile: bool = False
    channels_last: bool = False
    sync_bn: bool = True
    out_dir: str | None = "runs"
    name: str | None = None
    eval_every: int = 1
    checkpoint_every: int = 1
    resume: bool = False
    log: str = "auto"
    data_cache: str | None = None
    stop_after: int | None = None

    def __post_init__(self):
        self.validate()

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> None:
        from .data import list_datasets
        from .models import list_models

        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; available: "
                             f"{', '.join(list_models()) or 'none'}")
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str)
                                                                for k in self.model_kwargs):
            raise ValueError(f"model_kwargs must be a dict with string keys, "
                             f"got {self.model_kwargs!r}")
        data_keys = {"in_channels", "image_size", "num_classes"} & set(self.model_kwargs)
        if data_keys:
            raise ValueError(f"model_kwargs must not set {', '.join(sorted(data_keys))}: "
                             f"they come from the data")
        kw = self.model_kwargs
        if "activation" in kw:
            create_act(kw["activation"])          # raises "unknown activation ..." naming choices
        if "depth" in kw:
            check_int("depth", kw["depth"], low=0)
        for key in ("width", "T"):
            if key in kw:
                check_int(key, kw[key], low=1)
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"data must be a dataset name or a path, got {self.data!r}")
        if (self.data.strip().lower().replace("_", "-") not in list_datasets()
                and not Path(self.data).expanduser().exists()):
            raise FileNotFoundError(f"data {self.data!r} is neither a known dataset "
                                    f"({', '.join(list_datasets())}) nor an existing path")
        check_int("epochs", self.epochs, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("eval_batch_size", self.eval_batch_size, low=1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_real("lr", self.lr, low=0.0)
        check_real("weight_decay", self.weight_decay, low=0.0, strict=False)
        check_real("momentum", self.momentum, low=0.0, strict=False)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {self.momentum:g}")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_real("warmup", self.warmup, low=0.0, strict=False)
        check_real("label_smoothing", self.label_smoothing, low=0.0, strict=False)
        if self.label_smoothing >= 1:
            raise ValueError(f"label_smoothing must be < 1, got {self.label_smoothing:g}")
        if self.grad_clip is not None:
            check_real("grad_clip", self.grad_clip, low=0.0)
        check_int("seed", self.seed, low=0)
        for name in ("augment", "hflip", "amp"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be true, false or null, got {getattr(self, name)!r}")
        for name in ("compile", "channels_last", "sync_bn", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("anneal_gamma", "anneal_beta"):
            value = getattr(self, name)
            if value is None or (name == "anneal_gamma" and value == "auto"):
                continue
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
                raise ValueError(f"{name} must be a (start, end) pair"
                                 f"{', auto' if name == 'anneal_gamma' else ''} or None, got {value!r}")
            # β = 0 is a valid HTAF (a plain sigmoid), reachable by a linear or cosine schedule
            strict = name == "anneal_gamma" or self.anneal_schedule == "exp"
            start, end = (check_real(f"{name} {which}", v, low=0.0, strict=strict)
                          for which, v in zip(("start", "end"), value))
            setattr(self, name, (start, end))
        check_choice("anneal_schedule", self.anneal_schedule, ANNEAL_SCHEDULES)
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.out_dir is not None and not isinstance(self.out_dir, str):
            raise ValueError(f"out_dir must be a path or None, got {self.out_dir!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name
                                      or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        if self.resume and self.out_dir is None:
            raise ValueError("resume needs out_dir: there is no run folder to resume from")
        check_int("eval_every", self.eval_every, low=1)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_choice("log", self.log, LOG_FORMATS)
        if self.stop_after is not None:
            check_int("stop_after", self.stop_after, low=1)

    # ---------------------------------------------------------------------------- conversions
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("anneal_gamma", "anneal_beta"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a (JSON) dict; unknown keys are an error naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        d = dict(d)
        for key in ("anneal_gamma", "anneal_beta"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)

    def run_name(self) -> str:
        """``name``, or ``<model>[-<activation>]-<data>-s<seed>``."""
        if self.name:
            return self.name
        data = Path(self.data).stem if os.sep in self.data or "." in self.data else self.data
        act = self.model_kwargs.get("activation")
        parts = [self.model, *([str(act)] if act else []), data, f"s{self.seed}"]
        return "-".join(parts)


@dataclass
class RunResult:
    """What :func:`train` returns: the last epoch's ``metrics``, the per-epoch ``history``, the
    run folder (None without ``out_dir``), the resolved config and the trained model (unwrapped,
    in eval mode, as trained: smooth layers smooth)."""

    metrics: dict
    history: list[dict]
    run_dir: Path | None
    config: TrainConfig
    model: nn.Module | None = None


# ---------------------------------------------------------------------------------- helpers

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


def build_model(config: TrainConfig, dataset) -> nn.Module:
    """The model of ``config`` for ``dataset`` (its shape arguments filled in)."""
    from .models import create_model

    return create_model(config.model, **dataset.model_kwargs(), **config.model_kwargs)


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


def resolve_anneal_gamma(value, model: nn.Module) -> tuple[float, float] | None:
    """``anneal_gamma`` as used for ``model``: ``"auto"`` is (1, 30) when the model has
    convolutions and None (fixed γ) otherwise.

    Evidence: a 6-conv Heaviside CNN on CIFAR-10 trained smooth reached 66.7 % hard accuracy at
    fixed γ and 77.2 % with γ 1 → 30 (PROBES.md); a depth-6 Heaviside MLP on digits reached
    97.4 % at fixed γ (smooth→hard gap 0.2 points) and 87.0 % with γ 1 → 30 (docs/dhn.md): the
    MLP ends binary without annealing, the CNN does not.
    """
    if value != "auto":
        return value
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return (1.0, 30.0) if has_conv else None


def _smooth_annealer(config: TrainConfig, model: nn.Module) -> Anneal | None:
    """An :class:`Anneal` over the smooth HTAF layers of ``model`` (None if nothing to anneal)."""
    layers = [m for m in model.modules() if isinstance(m, BinaryActivation)
              and m.mode == "smooth" and isinstance(m.surrogate, HTAFSurrogate)]
    gamma = resolve_anneal_gamma(config.anneal_gamma, model)
    if not layers or (gamma is None and config.anneal_beta is None):
        return None
    return Anneal(nn.ModuleList(layers), gamma=gamma, beta=config.anneal_beta,
                  schedule=config.anneal_schedule)


def _anneal_progress(epoch: int, epochs: int) -> float:
    """Progress used during (0-based) ``epoch``: 0 in the first, 1 in the last."""
    return epoch / max(1, epochs - 1)


def _setup_distributed(device: str):
    """``(rank, world_size, local_rank, created)`` from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return rank, world, local, False
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:   # bind the rank's GPU: NCCL's barrier() otherwise guesses it from the rank
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    return rank, world, local, True


def _resolve_device(config: TrainConfig, local_rank: int, world: int) -> torch.device:
    if config.device == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        name = config.device
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} requested but CUDA is not available")
        if world > 1:
            return torch.device("cuda", local_rank)
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)   # also seeds every CUDA device


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """The RNG states a resumed run needs. CUDA: only the run's own device (``*_all`` would
    create a context on every visible GPU, from a CPU run too, and under DDP save rank 0's view
    of the other ranks' devices)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "data": generator.get_state()}


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
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


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# Graphs a compiled model adds per annealed epoch (train, smooth eval, hard eval, one spare).
_GRAPHS_PER_EPOCH = 4


def _configure_compile(epochs: int) -> None:
    """γ changes once per epoch and evaluation flips modes: allow the recompiles that causes.

    Each annealed epoch adds up to ``_GRAPHS_PER_EPOCH`` graphs (train, smooth eval, hard eval
    with the dead-unit hooks); past the limit Dynamo silently falls back to eager for the rest of
    the run, so the limit grows with ``epochs`` (a fixed 64 was reached near epoch 20).
    """
    cfg = torch._dynamo.config
    needed = _GRAPHS_PER_EPOCH * epochs + 16
    for name, floor in (("recompile_limit", needed), ("cache_size_limit", needed),
                        ("accumulated_recompile_limit", 4 * needed),
                        ("accumulated_cache_size_limit", 4 * needed)):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), floor))


def _fmt(v, pct=False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.4g}"


def _log_line(rec: dict, epochs: int) -> str:
    parts = [f"epoch {rec['epoch']}/{epochs}",
             f"train loss {_fmt(rec['train_loss'])} acc {_fmt(rec['train_acc'], True)}"]
    if "test_acc" in rec:
        parts.append(f"test {_fmt(rec['test_acc'], True)} hard {_fmt(rec['hard_test_acc'], True)}"
                     f" gap {_fmt(rec['gap'], True)} dead {_fmt(rec['dead_units'], True)}")
    knobs = f"lr {rec['lr']:.3g}"
    if rec.get("gamma") is not None:
        knobs += f" γ {rec['gamma']:.3g}"
    if rec.get("beta") is not None:
        knobs += f" β {rec['beta']:.3g}"
    parts += [knobs, f"{rec['epoch_time']:.1f}s"]
    return " | ".join(parts)


# ------------------------------------------------------------------------------------ train

def train(config: TrainConfig, *, dataset=None) -> RunResult:
    """Train ``config``; see the module docstring for what happens and what is written.

    ``dataset``: an already loaded :class:`~htaf.data.ImageDataset` to use instead of loading
    ``config.data`` again (for sweeps that train many models on the same data; it should be the
    dataset ``config.data`` names, since ``load_run`` reloads that one).
    """
    from .data import load_dataset

    config.validate()
    rank, world, local_rank, created_group = _setup_distributed(config.device)
    try:
        if dataset is None:   # under DDP one process per node decodes (and caches) first
            if world > 1 and local_rank != 0:
                dist.barrier()
            dataset = load_dataset(config.data, cache_dir=config.data_cache)
            if world > 1 and local_rank == 0:
                dist.barrier()
        return _train(config, dataset, rank, world, local_rank)
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, dataset, rank: int, world: int, local_rank: int) -> RunResult:
    master = rank == 0
    device = _resolve_device(config, local_rank, world)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of "
                         f"processes ({world})")
    amp = device.type == "cuda" if config.amp is None else (config.amp and device.type == "cuda")
    if device.type == "cuda":    # speed over bitwise reproducibility on the GPU
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    augment = dataset.image_size >= 32 if config.augment is None else config.augment
    log = config.log
    if log == "auto":
        log = "tqdm" if sys.stderr.isatty() else "plain"
    say = print if master and log != "none" else (lambda *a, **k: None)

    # ---- model, optimizer, data (the seed fixes the initialization and the data order)
    _seed_everything(config.seed)
    model = build_model(config, dataset).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world > 1 and config.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = _make_optimizer(config, model)
    annealer = _smooth_annealer(config, model)
    generator = torch.Generator().manual_seed(config.seed)
    train_batches = dataset.batches("train", config.batch_size, device=device, shuffle=True,
                                    augment=augment, hflip=config.hflip, generator=generator,
                                    rank=rank, world_size=world, channels_last=config.channels_last)
    test_batches = dataset.batches("test", config.eval_batch_size, device=device, shuffle=False,
                                   rank=rank, world_size=world, channels_last=config.channels_last)
    steps_per_epoch = len(train_batches)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup * steps_per_epoch)
    binary = _metrics.has_binary_units(model)

    # ---- run folder and resumption
    run_dir = Path(config.out_dir) / config.run_name() if config.out_dir is not None else None
    ckpt_path = run_dir / "checkpoints" / "last.pt" if run_dir else None
    start_epoch, step, history = 0, 0, []
    if config.resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file
        _check_resumable(config, ckpt["config"], ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        _set_rng_state(ckpt["rng"], generator, device)
        say(f"resumed {run_dir} at epoch {start_epoch}/{config.epochs}", flush=True)
    elif config.resume and run_dir is not None:
        say(f"no checkpoint in {run_dir}: starting from scratch", flush=True)
    if master and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        _atomic_write_text(run_dir / "metrics.jsonl",
                           "".join(json.dumps(r) + "\n" for r in history))

    # ---- wrappers (all share the raw model's parameters): `fast` evaluates; `train_model` trains,
    # DDP inside torch.compile so Dynamo's DDP optimizer can overlap the all-reduce with backward
    fast = model
    if config.compile:
        _configure_compile(config.epochs)
        fast = torch.compile(model)
    train_model = fast
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
        if config.compile:
            train_model = torch.compile(train_model)
    extra_loss = getattr(model, "extra_loss", None)
    epoch_metrics = getattr(model, "epoch_metrics", None)
    full_test = test_batches   # the hook gets the whole test set, unsharded
    if epoch_metrics is not None and world > 1:
        full_test = dataset.batches("test", config.eval_batch_size, device=device, shuffle=False,
                                    channels_last=config.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{config.run_name()}: {config.model} on {dataset.name} ({dataset.train_x.shape[0]} "
        f"train / {dataset.test_x.shape[0]} test), {n_params:,} parameters, {device}"
        f"{f' × {world}' if world > 1 else ''}{', bf16' if amp else ''}"
        f"{', compiled' if config.compile else ''}", flush=True)

    t_run = time.perf_counter() - (history[-1]["time"] if history else 0.0)
    end_epoch = config.epochs if config.stop_after is None else min(
        config.epochs, start_epoch + config.stop_after)
    for epoch in range(start_epoch, end_epoch):
        knobs = annealer.set_progress(_anneal_progress(epoch, config.epochs)) if annealer else {}

        # ---- train one epoch
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = torch.zeros((), dtype=torch.int64, device=device)
        batches = enumerate(train_batches)
        bar = None
        if log == "tqdm" and master:
            from tqdm.auto import tqdm

            bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       leave=False, dynamic_ncols=True)
            batches = bar
        lr = config.lr
        for i, (x, y) in batches:
            lr = config.lr * lr_factor(step, total_steps, warmup_steps, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast("cuda", torch.bfloat16, enabled=amp):
                logits = train_model(x)
            ce_sum = F.cross_entropy(logits.float(), y, reduction="sum",
                                     label_smoothing=config.label_smoothing)
            # sum over this rank's samples / (global batch / world): DDP's gradient average is then
            # exactly the gradient of the mean over the global batch.
            loss = ce_sum * (world / train_batches.global_batch_size(i))
            if extra_loss is not None:
                loss = loss + extra_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            apply_constraints(model)
            step += 1
            loss_sum += ce_sum.detach().double()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            if bar is not None and i % 10 == 0:
                bar.set_postfix(loss=f"{ce_sum.item() / y.numel():.3f}", lr=f"{lr:.3g}")
        if bar is not None:
            bar.close()
        totals = torch.stack([loss_sum, correct.double(), seen.double()])
        if world > 1:
            dist.all_reduce(totals)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - t0
        rec = {"epoch": epoch + 1, "step": step, "lr": lr,
               "gamma": knobs.get("gamma"), "beta": knobs.get("beta"),
               "train_loss": totals[0].item() / totals[2].item(),
               "train_acc": totals[1].item() / totals[2].item()}

        # ---- evaluate: as trained, then hard
        last = epoch + 1 == config.epochs
        if (epoch + 1) % config.eval_every == 0 or last:
            t1 = time.perf_counter()
            smooth = _metrics.evaluate(fast, test_batches, amp=amp)
            rec["test_loss"], rec["test_acc"] = smooth["loss"], smooth["acc"]
            if binary:
                hard = _metrics.evaluate(fast, test_batches, mode="hard", amp=amp, dead_units=True)
            else:
                hard = smooth
            rec["hard_test_loss"], rec["hard_test_acc"] = hard["loss"], hard["acc"]
            rec["gap"] = rec["test_acc"] - rec["hard_test_acc"]
            rec["dead_units"] = hard.get("dead_units")
            if epoch_metrics is not None:
                model.eval()
                with torch.no_grad():
                    extra = epoch_metrics(full_test) or {}
                rec.update({k: v.item() if isinstance(v, torch.Tensor) else v
                            for k, v in extra.items()})
                model.train()
            rec["eval_time"] = time.perf_counter() - t1
        rec["epoch_time"] = epoch_time
        rec["time"] = time.perf_counter() - t_run
        history.append(rec)
        say(_log_line(rec, config.epochs), flush=True)

        # ---- write
        if master and run_dir is not None:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            every = config.checkpoint_every
            if last or epoch + 1 == end_epoch or (every and (epoch + 1) % every == 0):
                _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": {"step": step, "total_steps": total_steps,
                                            "warmup_steps": warmup_steps},
                              "epoch": epoch + 1, "step": step, "history": history,
                              "config": config.to_dict(),
                              "rng": _rng_state(generator, device)}, ckpt_path)
        if world > 1:
            dist.barrier()

    if master and run_dir is not None and history:
        _write_report(run_dir, config, history, dataset)
    model.eval()
    return RunResult(metrics=dict(history[-1]) if history else {}, history=history,
                     run_dir=run_dir, config=config, model=model)


def _check_resumable(config: TrainConfig, saved: dict, path: Path) -> None:
    current = config.to_dict()
    changed = sorted(k for k in current if k not in _RESUMABLE and saved.get(k) != current[k])
    if changed:
        raise ValueError(f"cannot resume {path}: the config differs in {', '.join(changed)} "
                         f"(use another --name or drop --resume)")


# ---------------------------------------------------------------------------- report + reload

_LOOP_KEYS = {"epoch", "step", "lr", "gamma", "beta", "train_loss", "train_acc", "test_loss",
              "test_acc", "hard_test_loss", "hard_test_acc", "gap", "dead_units", "eval_time",
              "epoch_time", "time"}


def _write_report(run_dir: Path, config: TrainConfig, history: list[dict], dataset) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evals = [r for r in history if "test_acc" in r]
    for fname, key, title in (("loss.png", "loss", "cross-entropy"),
                              ("accuracy.png", "acc", "accuracy")):
        fig = Figure(figsize=(6, 4), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([r["epoch"] for r in history], [r[f"train_{key}"] for r in history],
                label="train (as trained)")
        if evals:
            ax.plot([r["epoch"] for r in evals], [r[f"test_{key}"] for r in evals], marker=".",
                    label="test (as trained)")
            ax.plot([r["epoch"] for r in evals], [r[f"hard_test_{key}"] for r in evals],
                    marker=".", linestyle="--", label="test, hard mode")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        if key == "loss":
            ax.set_yscale("log")
        ax.set_title(f"{config.run_name()}: {title}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / fname)

    final = history[-1]
    best = max(evals, key=lambda r: r["hard_test_acc"]) if evals else None
    setup = (f"`{config.model}` {json.dumps(config.model_kwargs)} on `{dataset.name}` "
             f"({dataset.train_x.shape[0]} train / {dataset.test_x.shape[0]} test images, "
             f"{dataset.num_classes} classes), {len(history)} of {config.epochs} epochs, "
             f"{config.optimizer} lr {config.lr:g} ({config.schedule}), batch {config.batch_size}, "
             f"seed {config.seed}.")
    lines = [f"# {config.run_name()}", "", setup, "", "| metric | final |", "|---|---|"]
    for key in ("test_acc", "hard_test_acc", "gap", "dead_units", "train_loss", "train_acc"):
        if key in final:
            pct = key != "train_loss"
            lines.append(f"| {key} | {_fmt(final[key], pct)} |")
    for key, value in final.items():   # what the model's epoch_metrics() added
        if key not in _LOOP_KEYS and isinstance(value, (int, float)):
            lines.append(f"| {key} | {_fmt(value)} |")
    lines.append(f"| wall time | {final['time']:.1f} s |")
    if best is not None:
        lines += ["", (f"Best hard-mode test accuracy {_fmt(best['hard_test_acc'], True)} "
                       f"at epoch {best['epoch']}.")]
    lines += ["", "![loss](loss.png) ![accuracy](accuracy.png)", "",
              ("| epoch | lr | γ | train loss | train acc | test acc | hard acc | gap | dead "
               "| time |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in history:
        lines.append(f"| {r['epoch']} | {r['lr']:.3g} | {_fmt(r.get('gamma'))} | "
                     f"{_fmt(r['train_loss'])} | {_fmt(r['train_acc'], True)} | "
                     f"{_fmt(r.get('test_acc'), True)} | {_fmt(r.get('hard_test_acc'), True)} | "
                     f"{_fmt(r.get('gap'), True)} | {_fmt(r.get('dead_units'), True)} | "
                     f"{r['epoch_time']:.1f} s |")
    _atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu", checkpoint: str = "last.pt"):
    """Rebuild a trained run: ``(model, dataset, config)``, the model in eval mode on ``device``,
    its smooth HTAF layers set to the γ/β they had in the last trained epoch."""
    from .data import load_dataset

    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoints" / checkpoint
    for p in (cfg_path, ckpt_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: is {run_dir} a run folder of `htaf train`?")
    config = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    dataset = load_dataset(config.data, cache_dir=config.data_cache)
    model = build_model(config, dataset)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file
    model.load_state_dict(ckpt["model"])
    annealer = _smooth_annealer(config, model)
    if annealer is not None and ckpt["epoch"] > 0:
        annealer.set_progress(_anneal_progress(ckpt["epoch"] - 1, config.epochs))
    return model.to(device).eval(), dataset, config
