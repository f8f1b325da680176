"""``TrainConfig``: everything a training run needs, validated on construction.

Each field is declared once, with its documentation in the docstring below it; ``htaf train`` and
``htaf compare`` derive their options (flag, type, choices, help) from these declarations
(:mod:`htaf._options`). This module imports no torch at import time, so ``htaf --help`` stays fast.
"""

import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .._checks import check_choice, check_fields, check_int, check_real

__all__ = ["TrainConfig", "OPTIMIZERS", "SCHEDULES", "ANNEAL_SCHEDULES", "LOG_FORMATS",
           "RESUMABLE"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")
ANNEAL_SCHEDULES = ("exp", "linear", "cosine")      # htaf.nn.anneal.SCHEDULES (a test checks)
LOG_FORMATS = ("auto", "tqdm", "plain", "none")
#: Fields that may change between a run and its resumption: they do not change the trajectory.
RESUMABLE = frozenset({"out_dir", "name", "resume", "overwrite", "log", "checkpoint_every",
                       "stop_after", "eval_every", "eval_batch_size", "data_cache", "data_root",
                       "device", "compile", "tensorboard"})
_PAIRS = ("anneal_gamma", "anneal_beta")


@dataclass
class TrainConfig:
    """A training run; ``ValueError`` (one line naming the field) for a bad value.

    >>> TrainConfig(model="dhn_mlp", model_kwargs={"activation": "htaf", "depth": 4}, epochs=20)
    """

    # ------------------------------------------------------------------------------ model
    model: str = "dhn_mlp"
    """Registered model name (htaf.models.list_models())."""
    model_kwargs: dict = field(default_factory=dict)
    """Model options: activation, depth, width...; in_channels, image_size and num_classes come
    from the data."""

    # ------------------------------------------------------------------------------- data
    data: str = "digits"
    """digits, mnist5k, a torchvision name (cifar10, cifar100, mnist, fashion-mnist, kmnist) or
    an ImageFolder directory or zip (train/<class>/*, test/<class>/*, optional val/<class>/*)."""
    data_root: str | None = None
    """Folder holding a torchvision dataset's raw files (e.g. the parent of FashionMNIST/raw/);
    unset: the cache, downloading into it where a network exists."""
    data_cache: str | None = None
    """Where decoded datasets are cached; unset: $HTAF_CACHE or ~/.cache/htaf."""
    val_fraction: float = 0.1
    """Share of the training split held out for validation (stratified by class, seed 0) when
    the data has no val/ split of its own."""
    augment: bool | None = None
    """Random crop + horizontal flip on the device; unset: on for images of 32 px or more."""
    hflip: bool | None = None
    """Horizontal flips when augmenting; unset: the dataset's own (off for digits and MNIST)."""

    # ----------------------------------------------------------------------- optimization
    epochs: int = 10
    """Passes over the training split."""
    batch_size: int = 128
    """Global batch size (split across torchrun processes)."""
    eval_batch_size: int = 1024
    """Batch size of evaluation."""
    optimizer: Literal["sgd", "adamw"] = "adamw"
    """Optimizer (the default recipe, AdamW one-cycle lr 1e-3 without weight decay, was chosen
    on validation: docs/training.md, 'Defaults')."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Weight decay, on weights of two or more dimensions only (not biases or norms)."""
    momentum: float = 0.9
    """SGD momentum; AdamW's beta1."""
    schedule: Literal["cosine", "onecycle", "constant"] = "onecycle"
    """Learning-rate schedule, set every step: cosine decay to 0, one-cycle (rise from lr/25,
    then linear decay to 0) or constant."""
    warmup: float = 0.0
    """Epochs of linear warmup (onecycle: its rising phase, 30 % of the run when 0)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this; unset: no clipping."""
    seed: int = 0
    """Seed of the initialization, the data order and the augmentation."""

    # ------------------------------------------------------------------------ annealing
    anneal_gamma: tuple[float, float] | str | None = "auto"
    """γ of smooth HTAF layers from START to END over the run, updated once per epoch; auto:
    0.5 → 15 for models with convolutions over runs of ≥ 1,000 steps, fixed γ otherwise
    (docs/training.md, 'Defaults'); none: fixed γ."""
    anneal_beta: tuple[float, float] | None = None
    """β of smooth HTAF layers from START to END; unset: fixed β."""
    anneal_schedule: Literal["exp", "linear", "cosine"] = "exp"
    """Shape of the γ/β schedule: geometric, linear or cosine."""

    # ------------------------------------------------------------------------- hardware
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    amp: bool | None = None
    """bf16 autocast for training and the as-trained evaluation (hard-mode evaluation is always
    exact fp32); unset: on for CUDA."""
    compile: bool = False
    """torch.compile the model."""
    channels_last: bool = False
    """channels_last memory format."""
    sync_bn: bool = True
    """Under torchrun, BatchNorm statistics of the global batch (SyncBatchNorm; on the CPU a
    gloo equivalent), so N processes train like one."""

    # --------------------------------------------------------------------------- output
    out_dir: str | None = "runs"
    """Root of run folders; none: write nothing."""
    name: str | None = None
    """Run folder name; unset: <model>-<activation>-<data>-s<seed>."""
    resume: bool = False
    """Continue the run in OUT/NAME from its last checkpoint."""
    overwrite: bool = False
    """Replace an existing run of the same name (its checkpoint, metrics and reports are
    deleted first)."""
    eval_every: int = 1
    """Evaluate on the validation split every this many epochs (and after the last)."""
    checkpoint_every: int = 1
    """Save a checkpoint every this many epochs; 0: only after the last."""
    tensorboard: bool = True
    """Also write TensorBoard event files into the run folder (if tensorboard is installed)."""
    log: Literal["auto", "tqdm", "plain", "none"] = "auto"
    """Progress: bars on a terminal and log lines otherwise (auto), either one, or nothing."""
    stop_after: int | None = None
    """Stop after this many epochs in this call (continue later with --resume)."""

    def __post_init__(self):
        self.validate()

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every field; normalize the annealing pairs to tuples of floats."""
        self._validate_model()
        self._validate_data()
        for name in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
            check_int(name, getattr(self, name), low=1)
        check_int("seed", self.seed, low=0)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        if self.stop_after is not None:
            check_int("stop_after", self.stop_after, low=1)
        for f in dataclasses.fields(self):
            if getattr(f.type, "__origin__", None) is Literal:
                check_choice(f.name, getattr(self, f.name), f.type.__args__)
        check_real("lr", self.lr, low=0.0)
        for name in ("weight_decay", "momentum", "warmup", "label_smoothing"):
            check_real(name, getattr(self, name), low=0.0, strict=False)
        for name in ("momentum", "label_smoothing"):
            if getattr(self, name) >= 1:
                raise ValueError(f"{name} must be < 1, got {getattr(self, name):g}")
        if self.grad_clip is not None:
            check_real("grad_clip", self.grad_clip, low=0.0)
        for name in ("augment", "hflip", "amp"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be true, false or null, got {getattr(self, name)!r}")
        for name in ("compile", "channels_last", "sync_bn", "resume", "overwrite", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self._validate_annealing()
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        self._validate_output()

    def _validate_model(self) -> None:
        from ..models import list_models
        from ..nn import create_act

        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; available: "
                             f"{', '.join(list_models()) or 'none'}")
        kw = self.model_kwargs
        if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
            raise ValueError(f"model_kwargs must be a dict with string keys, got {kw!r}")
        data_keys = {"in_channels", "image_size", "num_classes"} & set(kw)
        if data_keys:
            raise ValueError(f"model_kwargs must not set {', '.join(sorted(data_keys))}: "
                             f"they come from the data")
        if "activation" in kw:
            create_act(kw["activation"])          # raises "unknown activation ..." naming choices
        if "depth" in kw:
            check_int("depth", kw["depth"], low=0)
        for key in ("width", "T"):
            if key in kw:
                check_int(key, kw[key], low=1)

    def _validate_data(self) -> None:
        from ..data import list_datasets

        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"data must be a dataset name or a path, got {self.data!r}")
        if (self.data.strip().lower().replace("_", "-") not in list_datasets()
                and not Path(self.data).expanduser().exists()):
            raise FileNotFoundError(f"data {self.data!r} is neither a known dataset "
                                    f"({', '.join(list_datasets())}) nor an existing path")
        if self.data_root is not None and not Path(self.data_root).expanduser().is_dir():
            raise FileNotFoundError(f"data_root {self.data_root!r} is not a folder")
        check_real("val_fraction", self.val_fraction, low=0.0)
        if self.val_fraction >= 1:
            raise ValueError(f"val_fraction must be < 1, got {self.val_fraction:g}")

    def _validate_annealing(self) -> None:
        for name in _PAIRS:
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

    def _validate_output(self) -> None:
        if self.out_dir is not None and not isinstance(self.out_dir, str):
            raise ValueError(f"out_dir must be a path or None, got {self.out_dir!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name
                                      or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        if self.resume and self.out_dir is None:
            raise ValueError("resume needs out_dir: there is no run folder to resume from")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run, or "
                             "replace it")

    # ---------------------------------------------------------------------------- conversions
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in _PAIRS:
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a (JSON) dict; unknown keys are an error naming them."""
        d = check_fields("config", d, cls)
        for key in _PAIRS:
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)

    def trajectory(self) -> dict:
        """The fields that determine what is trained (everything but :data:`RESUMABLE`): two
        configs with the same trajectory train bit-identical models on the CPU."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUMABLE}

    def activation(self) -> str | None:
        """The model's activation: ``model_kwargs["activation"]``, else the model's default
        (None for models without one)."""
        if "activation" in self.model_kwargs:
            return str(self.model_kwargs["activation"])
        return _factory_default(self.model, "activation")

    def run_name(self) -> str:
        """``name``, or ``<model>[-<activation>]-<data>-s<seed>``."""
        if self.name:
            return self.name
        data = Path(self.data).stem if os.sep in self.data or "." in self.data else self.data
        act = self.activation()
        return "-".join([self.model, *([act] if act else []), data, f"s{self.seed}"])


def _factory_default(model: str, key: str):
    """The default of keyword ``key`` in model ``model``'s factory (None if it has none)."""
    from ..models import registry

    factory = getattr(registry, "_MODELS", {}).get(model)
    try:
        param = inspect.signature(factory).parameters.get(key) if factory else None
    except (TypeError, ValueError):
        return None
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default
