"""Statistics for comparisons over seeds: mean ± sample standard deviation, and the paired
difference of two variants trained with the same seeds, with a Student-t 95 % confidence
interval whose sign — not the means — decides win, tie or loss."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping

__all__ = ["mean", "std", "t_quantile_975", "paired_difference"]

# Two-sided 95 % quantiles of Student's t (the 0.975 quantile) for 1..30 degrees of freedom.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def _finite(xs: Iterable) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def mean(xs: Iterable) -> float | None:
    """Mean of the finite values (None if there is none)."""
    xs = _finite(xs)
    return statistics.fmean(xs) if xs else None


def std(xs: Iterable) -> float | None:
    """Sample standard deviation of the finite values (None for fewer than two)."""
    xs = _finite(xs)
    return statistics.stdev(xs) if len(xs) > 1 else None


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a table to 30, then
    the Cornish–Fisher expansion, within 1e-5 of the exact value there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = 1.959963985, float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """``a − b`` paired by seed (the keys), over the seeds both have finite values for.

    Returns ``n``, ``mean``, ``std`` (of the differences), ``ci`` (the 95 % interval
    ``mean ± t(0.975, n−1)·std/√n``; None below two seeds) and ``verdict``: ``"win"`` when the
    interval lies above 0, ``"loss"`` when below, ``"tie"`` when it contains 0, ``"—"`` when
    there is no interval.
    """
    seeds = sorted(s for s in set(a) & set(b) if len(_finite([a[s], b[s]])) == 2)
    diffs = [a[s] - b[s] for s in seeds]
    out = {"n": len(diffs), "seeds": seeds, "mean": mean(diffs), "std": std(diffs), "ci": None,
           "verdict": "—"}
    if len(diffs) < 2:
        return out
    half = t_quantile_975(len(diffs) - 1) * out["std"] / math.sqrt(len(diffs))
    lo, hi = out["mean"] - half, out["mean"] + half
    out["ci"] = (lo, hi)
    out["verdict"] = "win" if lo > 0 else "loss" if hi < 0 else "tie"
    return out
