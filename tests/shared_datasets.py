"""Where the shared datasets are (``../shared/datasets`` beside a checkout), for tests that use
them and skip, with the reason, where they are absent (a user's fresh clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path | None:
    """``$HTAF_SHARED_DATASETS``, else ``<repo>/../shared/datasets``, else
    ``/work/shared/datasets`` (a worktree one level deeper); None if none exists."""
    env = os.environ.get("HTAF_SHARED_DATASETS")
    candidates = [Path(env)] if env else [ROOT.parent / "shared" / "datasets",
                                          Path("/work/shared/datasets")]
    return next((p for p in candidates if p.is_dir()), None)


def require(relative: str) -> Path:
    """The shared path ``relative`` (e.g. ``"FashionMNIST/raw"``), or skip the test."""
    root = shared_datasets()
    path = None if root is None else root / relative
    if path is None or not path.exists():
        pytest.skip(f"shared dataset {relative} not found (set HTAF_SHARED_DATASETS, or put "
                    f"shared/datasets beside the checkout)")
    return path
