"""The training engine, by responsibility:

* :mod:`~htaf.engine.config` — :class:`TrainConfig`, a dataclass with its validation;
* :mod:`~htaf.engine.recipe` — model, optimizer, lr schedule, annealing of smooth HTAF;
* :mod:`~htaf.engine.loop` — :func:`train`, the loop (validation every epoch, test once);
* :mod:`~htaf.engine.checkpoint` — atomic checkpoints, RNG states, resumption, :func:`load_run`;
* :mod:`~htaf.engine.runlog` — the run folder: atomic writes, metrics.jsonl, TensorBoard;
* :mod:`~htaf.engine.summary` — summary.md and the curves;
* :mod:`~htaf.engine.distributed` — torchrun, devices, BatchNorm over the global batch.

>>> from htaf.engine import TrainConfig, train
>>> result = train(TrainConfig(model="dhn_mlp", model_kwargs={"activation": "htaf", "depth": 4},
...                            data="digits", epochs=20))
>>> result.metrics["hard_val_acc"], result.metrics["hard_test_acc"]

A run writes ``<out_dir>/<name>/``: ``config.json``, ``metrics.jsonl`` (one JSON object per
epoch), TensorBoard event files, ``checkpoints/last.pt`` (atomic; ``resume=True`` continues
bit-exactly on the CPU), ``loss.png``, ``accuracy.png`` and ``summary.md``. An existing run is
never replaced silently: ``resume`` continues it, ``overwrite`` replaces it, anything else is an
error. On CUDA the engine turns on cuDNN autotuning and TF32 (speed over bitwise
reproducibility there).

Names are imported on first use, so ``import htaf.engine`` (and ``htaf --help``) loads no torch.
"""

import importlib

__all__ = ["TrainConfig", "RunResult", "train", "load_run", "build_model", "lr_factor",
           "resolve_anneal_gamma", "OPTIMIZERS", "SCHEDULES", "LOG_FORMATS"]

_WHERE = {"TrainConfig": "config", "OPTIMIZERS": "config", "SCHEDULES": "config",
          "LOG_FORMATS": "config", "RunResult": "loop", "train": "loop",
          "load_run": "checkpoint", "build_model": "recipe", "lr_factor": "recipe",
          "resolve_anneal_gamma": "recipe"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
