"""The run log: one output folder and everything written into it, atomically.

A training run writes ``config.json``, ``metrics.jsonl`` (one JSON object per epoch), TensorBoard
event files, ``summary.md`` and PNG curves; ``htaf compare``, ``htaf reproduce`` and
``htaf explain`` write their reports, JSON and figures through the same :class:`RunLog`, so there
is one atomic-write helper (:func:`atomic_write_text`, :func:`atomic_save`), one figure helper
(:func:`new_figure`, :func:`save_figure`) and one rule for an existing folder
(:func:`check_folder`): never replaced silently.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path

__all__ = ["RunLog", "atomic_write_text", "atomic_write_json", "atomic_save", "new_figure",
           "save_figure", "read_jsonl", "check_folder", "clear_folder", "split_of"]

#: Files by which an existing folder is recognized as htaf output (and may be cleared).
_OURS = ("config.json", "metrics.jsonl", "checkpoints", "summary.md", "results.json",
         "runs.jsonl", "report.md", "index.html")


# ----------------------------------------------------------------------------- atomic writes

def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: a reader (or a
    crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a ``.jsonl`` file ([] if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------- figures

def new_figure(width: float, height: float, dpi: int = 110):
    """A matplotlib ``Figure`` on an Agg canvas: no pyplot, so a caller's backend (a notebook's)
    is left alone and figures are freed with their last reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save ``fig`` atomically; the format comes from the suffix (``.png`` for none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- the folder rule

def check_folder(folder: Path, *, resume: bool, overwrite: bool, what: str = "run") -> str | None:
    """Why writing into ``folder`` must be refused, or None. An existing, non-empty folder is
    reused only with ``resume`` and replaced only with ``overwrite`` (and only if it holds htaf
    output); nothing is lost silently."""
    folder = Path(folder)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    if not folder.is_dir():
        return f"{folder} exists and is not a folder"
    ours = any((folder / name).exists() for name in _OURS)
    if (overwrite or resume) and not ours:
        return (f"{folder} exists and does not hold htaf output: not touching it; choose another "
                f"--name or --out")
    if overwrite or resume:
        return None
    return (f"{what} folder {folder} already exists: pass --resume to continue it, --name NEW "
            f"for a new {what}, or --overwrite to replace it")


def clear_folder(folder: Path) -> None:
    """Delete the contents of an htaf output ``folder`` (see :func:`check_folder`)."""
    folder = Path(folder)
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------------- RunLog

class RunLog:
    """An output folder: atomic text/JSON/figure writes, ``.jsonl`` records, and optionally
    TensorBoard event files of every numeric record (``tensorboard=True``; skipped with a
    warning when the package is missing).

    ``purge_step``: a resumed run's first step; TensorBoard then drops the events a killed
    process had written from that step on, so the curves show one trajectory.
    """

    def __init__(self, folder: str | os.PathLike, *, tensorboard: bool = False,
                 purge_step: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed: no event files are written "
                              "(pip install tensorboard)", stacklevel=2)
            else:
                self._writer = SummaryWriter(str(self.folder), purge_step=purge_step)

    def path(self, name: str) -> Path:
        return self.folder / name

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path(name), text)

    def write_json(self, name: str, obj, indent: int | None = 1) -> Path:
        return atomic_write_json(self.path(name), obj, indent)

    def save_figure(self, fig, name: str, **kwargs) -> Path:
        return save_figure(fig, self.path(name), **kwargs)

    def write_records(self, name: str, records: list[dict]) -> Path:
        """Replace ``name`` (a ``.jsonl`` file) with ``records``."""
        return self.write_text(name, "".join(json.dumps(r) + "\n" for r in records))

    def append(self, name: str, record: dict, step: int | None = None) -> None:
        """Append ``record`` to ``name`` (a ``.jsonl`` file) and, at ``step``, its numbers to
        TensorBoard (tags grouped by split: ``val/hard_acc``, ``train/loss``...)."""
        with open(self.path(name), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None and step is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value) and key not in ("epoch", "step"):
                    self._writer.add_scalar(_tag(key), value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def split_of(key: str) -> str | None:
    """The split a metric key is about: ``"hard_val_acc"`` → ``"val"``."""
    parts = key.split("_")
    return next((p for p in parts if p in ("train", "val", "test")), None)


def _tag(key: str) -> str:
    split = split_of(key)
    if split is None:
        group = "time" if key.endswith("time") else "schedule" if key in (
            "lr", "gamma", "beta") else "model"
        return f"{group}/{key}"
    rest = "_".join(p for p in key.split("_") if p != split)
    return f"{split}/{rest}"
