"""Concept-layer metrics of an ICBM: how binary, how used and how stable its concepts are.

Definitions (``s`` = smooth activations HTAF(z) ∈ (0, 1), ``h`` = hard codes 1[z ≥ 0], both
``[N, K]`` over N evaluation images and K concepts):

* ``acc_smooth`` / ``acc_hard``: accuracy with the concept layer smooth / hard (fractions);
  ``gap = acc_smooth − acc_hard`` (the discretization gap; ×100 for points).
* ``saturation``: share of the N·K smooth activations within ``tol`` (0.05) of 0 or 1.
* ``active_per_image``: mean number of concepts on per image, Σ_k h / N.
* ``never_on`` / ``always_on``: number of concepts on for no image / for every image.
* ``flip_rate(a, b)``: share of concept bits that differ between two code matrices of the same
  images (e.g. two epochs).
* ``seed_flip_rate(a, b)``: the same between two independently trained models, after matching each
  concept of ``a`` to one of ``b`` (Hungarian matching on the agreement matrix
  A_ij = mean_n [a_ni = b_nj], maximising the total agreement).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..nn import using_mode

__all__ = [
    "ConceptOutputs",
    "active_per_image",
    "agreement_matrix",
    "always_on",
    "collect",
    "concept_metrics",
    "flip_rate",
    "match_concepts",
    "never_on",
    "saturation",
    "seed_flip_rate",
]


@dataclass
class ConceptOutputs:
    """Everything an evaluation pass yields about the concept layer (CPU tensors)."""

    pre: torch.Tensor            # [N, K] pre-activations z
    smooth: torch.Tensor         # [N, K] HTAF(z)
    codes: torch.Tensor          # [N, K] bool, z ≥ 0
    logits_smooth: torch.Tensor  # [N, C]
    logits_hard: torch.Tensor    # [N, C]
    labels: torch.Tensor         # [N]


@torch.no_grad()
def collect(model, batches: Iterable) -> ConceptOutputs:
    """Run an ICBM over ``(x, y)`` batches in eval mode, once through the backbone, reading the
    concept layer both smooth and hard. The model's train/eval state is restored."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ConceptOutputs.__dataclass_fields__}
    try:
        for x, y in batches:
            z = model.preactivations(x)
            with using_mode(model.act, "smooth"):
                s = model.act(z)
            with using_mode(model.act, "hard"):
                h = model.act(z)
            for key, value in (("pre", z), ("smooth", s), ("codes", h > 0.5),
                               ("logits_smooth", model.classify(s)),
                               ("logits_hard", model.classify(h)), ("labels", y)):
                parts[key].append(value.detach().float().cpu() if value.is_floating_point()
                                  else value.detach().cpu())
    finally:
        model.train(was_training)
    if not parts["labels"]:
        raise ValueError("collect needs at least one batch")
    return ConceptOutputs(**{k: torch.cat(v) for k, v in parts.items()})


def _codes(codes: torch.Tensor) -> torch.Tensor:
    if codes.dim() != 2:
        raise ValueError(f"concept codes must be [N, K], got shape {tuple(codes.shape)}")
    return codes.bool() if codes.dtype == torch.bool else codes > 0.5


def saturation(acts: torch.Tensor, tol: float = 0.05) -> float:
    """Share of activations within ``tol`` of 0 or 1."""
    acts = acts.float()
    return ((acts <= tol) | (acts >= 1 - tol)).float().mean().item()


def active_per_image(codes: torch.Tensor) -> float:
    """Mean number of concepts on per image."""
    return _codes(codes).float().sum(1).mean().item()


def never_on(codes: torch.Tensor) -> int:
    """Number of concepts on for no image."""
    return int((~_codes(codes).any(0)).sum())


def always_on(codes: torch.Tensor) -> int:
    """Number of concepts on for every image."""
    return int(_codes(codes).all(0).sum())


def flip_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of bits that differ between two code matrices of the same shape."""
    a, b = _codes(a), _codes(b)
    if a.shape != b.shape:
        raise ValueError(f"code shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a != b).float().mean().item()


def agreement_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A[i, j] = share of images on which concept i of ``a`` equals concept j of ``b``."""
    a, b = _codes(a).float(), _codes(b).float()
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"codes must cover the same images: {a.shape[0]} vs {b.shape[0]}")
    n = a.shape[0]
    both_on = a.T @ b
    both_off = (1 - a).T @ (1 - b)
    return (both_on + both_off) / max(n, 1)


def _greedy_assignment(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols, order = [], [], np.argsort(-score, axis=None)
    used_r, used_c = set(), set()
    for flat in order:
        i, j = divmod(int(flat), score.shape[1])
        if i not in used_r and j not in used_c:
            rows.append(i), cols.append(j), used_r.add(i), used_c.add(j)
            if len(rows) == min(score.shape):
                break
    idx = np.argsort(rows)
    return np.asarray(rows)[idx], np.asarray(cols)[idx]


def match_concepts(a: torch.Tensor, b: torch.Tensor, *, method: str = "hungarian"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match the concepts of ``a`` to those of ``b`` maximising the total agreement.

    Returns ``(rows, cols, agreement)``: concept ``rows[i]`` of ``a`` ↔ ``cols[i]`` of ``b`` with
    that agreement. ``method="hungarian"`` uses ``scipy.optimize.linear_sum_assignment`` (optimal;
    falls back to greedy when SciPy is missing), ``"greedy"`` takes the best pairs first.
    """
    score = agreement_matrix(a, b).numpy()
    if method == "hungarian":
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError:  # pragma: no cover - scipy ships with scikit-learn
            method = "greedy"
        else:
            rows, cols = linear_sum_assignment(score, maximize=True)
    if method == "greedy":
        rows, cols = _greedy_assignment(score)
    elif method != "hungarian":
        raise ValueError(f"method must be 'hungarian' or 'greedy', got {method!r}")
    return rows, cols, score[rows, cols]


def seed_flip_rate(a: torch.Tensor, b: torch.Tensor, *, method: str = "hungarian") -> float:
    """Share of concept bits that differ between two models' codes of the same images, after
    matching their concepts (:func:`match_concepts`)."""
    _, _, agreement = match_concepts(a, b, method=method)
    return float(1.0 - agreement.mean())


def concept_metrics(out: ConceptOutputs, tol: float = 0.05) -> dict[str, float]:
    """The per-epoch metric dict of an ICBM evaluation pass."""
    acc_s = (out.logits_smooth.argmax(1) == out.labels).float().mean().item()
    acc_h = (out.logits_hard.argmax(1) == out.labels).float().mean().item()
    return {
        "acc_smooth": acc_s,
        "acc_hard": acc_h,
        "gap": acc_s - acc_h,
        "saturation": saturation(out.smooth, tol),
        "active_per_image": active_per_image(out.codes),
        "never_on": float(never_on(out.codes)),
        "always_on": float(always_on(out.codes)),
    }
