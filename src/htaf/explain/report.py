"""A static HTML report explaining a trained ICBM: what each concept responds to, how the head
uses the concepts, why chosen test images got their prediction, and what flipping concepts does.

``build_report(model, dataset, out_dir)`` writes ``out_dir/index.html`` and PNGs beside it
(referenced by relative paths, so the folder opens from disk and can be moved as a whole).
``explain_run(run_dir)`` does the same for a run folder of ``htaf train`` (into
``run_dir/explain/``); ``htaf explain RUN_DIR`` is its command line.

Sections (HTML ids): ``summary`` (concept metrics), ``weights`` (class × concept heatmap),
``concepts`` (per concept: the test images that switch it on hardest and the class mix of all images
where it is on), ``images`` (per chosen image: the concepts that fired and their contribution
W[ŷ, k]·c_k to the predicted logit), ``interventions`` (logits before/after flipping concepts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..engine.runlog import atomic_write_json, atomic_write_text, new_figure, read_jsonl, save_figure
from ..nn import using_mode
from .metrics import ConceptOutputs, collect, concept_metrics, seed_flip_rate

__all__ = [
    "Intervention",
    "Report",
    "build_report",
    "concept_importance",
    "explain_run",
    "normalize",
    "normalized_test_batches",
    "parse_flip",
]

_GOOD, _BAD, _NEUTRAL = "#2f8f5b", "#c0392b", "#4a6fa5"


@dataclass
class Intervention:
    """The effect of flipping ``concepts`` of test image ``image`` (hard concepts)."""

    image: int
    concepts: list[int]
    label: int
    before: list[float]
    after: list[float]

    @property
    def pred_before(self) -> int:
        return int(np.argmax(self.before))

    @property
    def pred_after(self) -> int:
        return int(np.argmax(self.after))


@dataclass
class Report:
    path: Path
    metrics: dict[str, float]
    concepts: list[int]
    images: list[int]
    classes: list[str]
    interventions: list[Intervention] = field(default_factory=list)


def parse_flip(spec: str) -> tuple[int, list[int]]:
    """``"IMAGE:C1,C2"`` → ``(IMAGE, [C1, C2])``."""
    image, sep, concepts = spec.partition(":")
    try:
        if not sep or not concepts:
            raise ValueError
        return int(image), [int(c) for c in concepts.split(",")]
    except ValueError:
        raise ValueError(f"--flip must look like IMAGE_INDEX:CONCEPT[,CONCEPT...], got {spec!r}") \
            from None


def concept_importance(codes: torch.Tensor, weight: torch.Tensor, preds: torch.Tensor
                       ) -> torch.Tensor:
    """Mean |contribution| of each concept to the predicted logit: mean_n h_nk·|W[ŷ_n, k]|."""
    return (codes.float() * weight[preds].abs()).mean(0)


# --- drawing -----------------------------------------------------------------------------------
def _figure(w: float, h: float):
    return new_figure(w, h, dpi=100)


def _save(fig, path: Path) -> None:
    save_figure(fig, path, bbox_inches="tight")


def _to_pil(img: torch.Tensor, size: int) -> Image.Image:
    """uint8 ``[C, H, W]`` → PIL image scaled (nearest) so the longer side is about ``size``."""
    arr = img.cpu().numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr[:3].transpose(1, 2, 0)
    pil = Image.fromarray(np.ascontiguousarray(arr))
    scale = max(1, round(size / max(pil.size)))
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def _grid(images: torch.Tensor, path: Path, cols: int = 6, size: int = 48, pad: int = 2) -> None:
    tiles = [_to_pil(im, size).convert("RGB") for im in images]
    if not tiles:
        tiles = [Image.new("RGB", (size, size), (235, 235, 235))]
    w, h = tiles[0].size
    rows = (len(tiles) + cols - 1) // cols
    ncols = min(cols, len(tiles))
    canvas = Image.new("RGB", (ncols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas.paste(tile, (pad + c * (w + pad), pad + r * (h + pad)))
    canvas.save(path)


def _class_mix(counts: np.ndarray, base: np.ndarray, classes: Sequence[str], path: Path,
               title: str) -> None:
    fig = _figure(3.3, min(6.0, 0.2 * len(classes) + 0.7))
    ax = fig.subplots()
    y = np.arange(len(classes))
    share = counts / max(counts.sum(), 1)
    ax.barh(y, share, color=_NEUTRAL, height=0.75)
    ax.scatter(base, y, marker="|", s=90, linewidths=1.6, color="#e67e22", zorder=3)
    ax.set_yticks(y, [str(c) for c in classes], fontsize=7 if len(classes) <= 20 else 5)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1e-3, float(max(share.max(), base.max()))) * 1.1)
    ax.set_xlabel("share of images", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=8.5)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    _save(fig, path)


def _heatmap(weight: np.ndarray, order: Sequence[int], classes: Sequence[str], path: Path) -> None:
    w = weight[:, order]
    k = len(order)
    fig = _figure(min(18, 1.5 + 0.28 * k), 0.9 + 0.3 * len(classes))
    ax = fig.subplots()
    lim = float(np.abs(w).max()) or 1.0
    im = ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=8)
    ax.set_xticks(range(k), [str(i) for i in order], fontsize=7 if k <= 64 else 5, rotation=90)
    ax.set_xlabel("concept (most important first)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01).ax.tick_params(labelsize=7)
    _save(fig, path)


def _contributions(contrib: np.ndarray, concepts: np.ndarray, bias: float, logit: float,
                   title: str, path: Path, limit: int = 12) -> None:
    order = np.argsort(-np.abs(contrib))[:limit]
    vals, names = contrib[order], [f"c{concepts[i]}" for i in order]
    fig = _figure(4.2, 0.28 * max(len(vals), 1) + 1.0)
    ax = fig.subplots()
    if len(vals):
        y = np.arange(len(vals))
        ax.barh(y, vals, color=[_GOOD if v >= 0 else _BAD for v in vals], height=0.7)
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no concept fired", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.axvline(0, color="#555", lw=0.8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(f"contribution W[ŷ,k]·c_k  (bias {bias:+.2f}, logit {logit:.2f})", fontsize=8)
    ax.set_title(title, fontsize=9)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    _save(fig, path)


def _logit_bars(before: np.ndarray, after: np.ndarray, classes: Sequence[str], path: Path,
                title: str) -> None:
    fig = _figure(max(3.6, 0.32 * len(classes) + 1.0), 2.3)
    ax = fig.subplots()
    x = np.arange(len(classes))
    ax.bar(x - 0.2, before, 0.4, color="#9aa9bd", label="before")
    ax.bar(x + 0.2, after, 0.4, color=_NEUTRAL, label="after flip")
    ax.set_xticks(x, [str(c) for c in classes], fontsize=7, rotation=45 if len(classes) > 12 else 0)
    ax.axhline(0, color="#555", lw=0.6)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("logit", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    _save(fig, path)


# --- the page ----------------------------------------------------------------------------------
# templates/report.html.j2 lays the page out (Jinja2 with autoescape on, so class names and the
# title go in as they are); the code below only gathers what it shows: values, file names, rows.
_TEMPLATE = "report.html.j2"


def _fmt(key: str, value: float) -> str:
    if key.startswith("acc") or key in ("saturation",) or "flip_rate" in key:
        return f"{100 * value:.2f}%"
    if key == "gap":
        return f"{100 * value:+.2f} points"
    if key in ("never_on", "always_on"):
        return f"{int(value)}"
    return f"{value:.3g}"


_METRIC_DOC = {
    "acc_smooth": "test accuracy, concept layer smooth (HTAF)",
    "acc_hard": "test accuracy, concept layer hard (1[z ≥ 0]) — the model as deployed",
    "gap": "acc_smooth − acc_hard: the discretization gap",
    "saturation": "share of smooth concept activations within 0.05 of 0 or 1",
    "active_per_image": "mean number of concepts on per test image",
    "never_on": "concepts on for no test image",
    "always_on": "concepts on for every test image",
    "flip_rate_epoch": "share of probe concept bits that flipped since the previous epoch",
    "seed_flip_rate": "share of concept bits differing from the other seed after matching",
}


def _metric_rows(metrics: dict[str, float]) -> list[dict[str, str]]:
    """The summary table's rows: metric name, formatted value, what it measures."""
    return [{"key": key, "value": _fmt(key, value), "doc": _METRIC_DOC.get(key, "")}
            for key, value in metrics.items() if isinstance(value, (int, float))]


def _history_table(history: list[dict]) -> dict | None:
    """The "last epochs" table (column names, rows of formatted cells), or None when the history
    has nothing but epoch numbers."""
    keys = [k for k in ("epoch", "acc_hard", "gap", "saturation", "active_per_image",
                        "flip_rate_epoch") if any(k in h for h in history)]
    if len(keys) <= 1:
        return None
    rows = [[_fmt(k, h[k]) if k != "epoch" and k in h else str(h.get(k, "")) for k in keys]
            for h in history[-6:]]
    return {"columns": keys, "rows": rows}


def _render_page(**context) -> str:
    """index.html from templates/report.html.j2, every value HTML-escaped (autoescape)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("htaf.explain", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    return env.get_template(_TEMPLATE).render(**context)


def _default_images(out: ConceptOutputs, n: int = 6) -> list[int]:
    """The first misclassified images (up to a third of ``n``), then the first correctly
    classified image of as many different classes as fit."""
    preds = out.logits_hard.argmax(1)
    wrong = torch.nonzero(preds != out.labels).flatten().tolist()[: n // 3]
    right, seen = [], set()
    for i in torch.nonzero(preds == out.labels).flatten().tolist():
        if len(right) == n - len(wrong):
            break
        label = int(out.labels[i])
        if label not in seen:
            seen.add(label)
            right.append(i)
    return sorted(right + wrong)


def normalize(dataset, images: torch.Tensor, device="cpu") -> torch.Tensor:
    """uint8 images ``[B, C, H, W]`` of ``dataset`` → the model's input, (x/255 − mean) / std,
    computed exactly as the training batches are (``ImageDataset.normalize``)."""
    return dataset.normalize(images, device)


def normalized_test_batches(dataset, batch_size: int, device="cpu"
                            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test split as normalized ``(x, y)`` batches, in order (normalized one at a time)."""
    for xb, yb in zip(dataset.test_x.split(batch_size), dataset.test_y.split(batch_size)):
        yield normalize(dataset, xb, device), yb.to(device)


def _concept_card(k, out, dataset, weight, importance, classes, per_concept, out_dir) -> dict:
    """One concept: its top images, the class mix of the images it is on for, what it favours."""
    n = out.codes.shape[0]
    on = torch.nonzero(out.codes[:, k]).flatten()
    top_idx = on[torch.argsort(out.pre[on, k], descending=True)][:per_concept]
    _grid(dataset.test_x[top_idx], out_dir / f"concept_{k:03d}_top.png")
    base = np.bincount(out.labels.numpy(), minlength=len(classes)) / n
    counts = np.bincount(out.labels[on].numpy(), minlength=len(classes))
    _class_mix(counts, base, classes, out_dir / f"concept_{k:03d}_classes.png",
               f"concept {k}: on for {len(on)}/{n} images")
    favours = torch.argsort(weight[:, k], descending=True)
    up, down = int(favours[0]), int(favours[-1])
    return {"k": k, "on_percent": 100 * len(on) / n, "importance": float(importance[k]),
            "raises": classes[up], "raises_weight": float(weight[up, k]),
            "lowers": classes[down], "lowers_weight": float(weight[down, k]),
            "top_png": f"concept_{k:03d}_top.png", "classes_png": f"concept_{k:03d}_classes.png",
            "top_classes": [classes[c] for c in out.labels[top_idx][:8].tolist()],
            "more": len(top_idx) > 8}


def _image_card(i, out, dataset, weight, bias, preds, classes, out_dir) -> dict:
    """One test image: why the model predicted what it did (each active concept's W[ŷ, k])."""
    c, p, y = out.codes[i], int(preds[i]), int(out.labels[i])
    active = torch.nonzero(c).flatten().numpy()
    logits = out.logits_hard[i]
    _to_pil(dataset.test_x[i], 96).save(out_dir / f"image_{i:05d}.png")
    _contributions(weight[p, active].numpy(), active, float(bias[p]), float(logits[p]),
                   f"image {i}: why '{classes[p]}'", out_dir / f"image_{i:05d}_contrib.png")
    top3 = torch.topk(logits, min(3, len(classes)))
    return {"index": i, "thumb_png": f"image_{i:05d}.png",
            "contrib_png": f"image_{i:05d}_contrib.png", "true": classes[y],
            "predicted": classes[p], "correct": p == y,
            "top_logits": [(classes[j], v) for v, j in zip(top3.values.tolist(),
                                                           top3.indices.tolist())],
            "active": active.tolist()}


def _flip_card(model, i, concepts, out, dataset, classes, device, out_dir):
    """One intervention: the logits before and after flipping ``concepts`` of image ``i``."""
    x = normalize(dataset, dataset.test_x[i:i + 1], device)
    with using_mode(model, "hard"):
        before = model.intervene(x)[0].float().cpu()
        after = model.intervene(x, flip=list(concepts))[0].float().cpu()
    r = Intervention(i, list(concepts), int(out.labels[i]), before.tolist(), after.tolist())
    name = f"flip_{i:05d}_{'-'.join(map(str, concepts))}.png"
    _logit_bars(before.numpy(), after.numpy(), classes, out_dir / name,
                f"image {i}: flip concept(s) {', '.join(map(str, concepts))}")
    if not (out_dir / f"image_{i:05d}.png").exists():
        _to_pil(dataset.test_x[i], 96).save(out_dir / f"image_{i:05d}.png")
    return r, {"index": i, "thumb_png": f"image_{i:05d}.png", "png": name,
               "flipped": [(k, bool(out.codes[i, k])) for k in concepts],
               "true": classes[r.label], "before": classes[r.pred_before],
               "after": classes[r.pred_after]}


@torch.no_grad()
def build_report(model, dataset, out_dir: str | Path, *, top: int | None = 15,
                 per_concept: int = 18, images: Sequence[int] | None = None,
                 flips: Sequence[tuple[int, Sequence[int]]] = (), history: list[dict] | None = None,
                 extra_metrics: dict[str, float] | None = None, title: str = "ICBM report",
                 batch_size: int = 512, device: str | torch.device = "cpu") -> Report:
    """Write the report of ``model`` (an :class:`~htaf.models.icbm.ICBM`) on ``dataset``'s test
    split into ``out_dir`` and return what it contains.

    Args:
        dataset: an ``htaf.data.ImageDataset`` (or anything with uint8 ``test_x``, ``test_y``,
            ``classes``, ``mean``, ``std``).
        top: number of concepts shown in detail, the most important first (None: all).
        per_concept: images in each concept's grid.
        images: test indices explained one by one (default: a few right and wrong ones).
        flips: ``(image, [concepts])`` interventions to run and show.
        history: per-epoch metric dicts (``metrics.jsonl``) for the "last epochs" table.
        extra_metrics: more summary metrics (e.g. ``seed_flip_rate``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    out = collect(model, normalized_test_batches(dataset, batch_size, device))
    metrics = concept_metrics(out)
    if history:
        last = [h["flip_rate_epoch"] for h in history if "flip_rate_epoch" in h]
        if last:
            metrics["flip_rate_epoch"] = float(last[-1])
    metrics.update(extra_metrics or {})
    classes = [str(c) for c in dataset.classes]
    n, k_all = out.codes.shape
    weight = model.head.weight.detach().float().cpu()
    bias = model.head.bias.detach().float().cpu()
    preds = out.logits_hard.argmax(1)
    importance = concept_importance(out.codes, weight, preds)
    order = torch.argsort(importance, descending=True).tolist()
    shown = order if top is None else order[:top]
    for i in list(images or []) + [f[0] for f in flips]:
        if not 0 <= i < n:
            raise ValueError(f"image index {i} out of range [0, {n})")
    for _, concepts in flips:
        for k in concepts:
            if not 0 <= k < k_all:
                raise ValueError(f"concept {k} out of range [0, {k_all})")
    chosen = list(images) if images else _default_images(out)

    _heatmap(weight.numpy(), order, classes, out_dir / "weights.png")
    concept_cards = [_concept_card(k, out, dataset, weight, importance, classes, per_concept,
                                   out_dir) for k in shown]
    image_cards = [_image_card(i, out, dataset, weight, bias, preds, classes, out_dir)
                   for i in chosen]
    results, flip_cards = [], []
    for i, concepts in flips:
        r, card = _flip_card(model, i, concepts, out, dataset, classes, device, out_dir)
        results.append(r)
        flip_cards.append(card)

    page = _render_page(
        title=title, num_concepts=k_all, num_images=n, classes=classes,
        metrics=_metric_rows(metrics), history=_history_table(history or []),
        concepts=concept_cards, shown=set(shown), images=image_cards, flips=flip_cards)
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    atomic_write_json(out_dir / "metrics.json", metrics, indent=2)
    return Report(path, metrics, shown, chosen, classes, results)


def explain_run(run_dir: str | Path, *, out_dir: str | Path | None = None,
                compare: str | Path | None = None, **kw) -> Report:
    """:func:`build_report` for a run folder (``htaf.engine.load_run``), into ``RUN_DIR/explain``.
    ``compare``: another run of the same model and data (another seed); the share of concept bits
    that differ after matching the two models' concepts is added as ``seed_flip_rate``."""
    from ..engine import load_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    model, dataset, config = load_run(run_dir)
    if not hasattr(model, "intervene"):
        raise ValueError(f"{run_dir} holds a {config.model!r} model; "
                         f"htaf explain needs an ICBM (icbm_cnn, icbm_resnet18, icbm_tv)")
    if compare is not None:
        other, other_data, _ = load_run(compare)
        if not hasattr(other, "intervene") or other_data.test_x.shape != dataset.test_x.shape:
            raise ValueError(f"--compare {compare} must be an ICBM run on the same data")
        codes = [collect(m, normalized_test_batches(dataset, 512)).codes for m in (model, other)]
        kw["extra_metrics"] = {**(kw.get("extra_metrics") or {}),
                               "seed_flip_rate": seed_flip_rate(*codes)}
    kw.setdefault("title", f"ICBM report: {run_dir.name} ({config.model} on {config.data})")
    return build_report(model, dataset, out_dir or run_dir / "explain",
                        history=read_jsonl(run_dir / "metrics.jsonl"), **kw)
