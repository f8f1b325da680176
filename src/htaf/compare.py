r"""``htaf compare``: one architecture, trained with HTAF and with every baseline surrogate.

Every *variant* (an activation, its parameters, a depth) is trained over several seeds with the same
recipe by :func:`htaf.engine.train`, and evaluated in **hard mode**: every hidden activation is the
exact step 1[x ≥ 0], so the numbers are those of the binary network that would be deployed.

* ``htaf`` — smooth HTAF during training (γ fixed, or annealed with ``anneal_gamma``), evaluated
  hard; the *discretization gap* (smooth accuracy − hard accuracy) says how binary training ended;
* ``htaf_st`` and the baselines (``sigmoid``, ``atan``, ...) — straight-through: the forward pass is
  already the step (their gap is 0 by construction and shown as —); the backward pass is the
  surrogate's derivative;
* ``relu`` — the same architecture in full precision: the ceiling.

``depths`` repeats everything at several depths (the claim under test: HTAF trains *deep*
Heaviside stacks stably); ``scales`` sweeps each surrogate's own scale — its first hyperparameter
(α, slope, clip...) — by the given multiples, and HTAF's α, β and γ one at a time, so the baselines
get the same tuning budget as HTAF.

>>> from htaf.compare import CompareConfig, compare
>>> result = compare(CompareConfig(epochs=5, seeds=(0,)))
>>> print(result.table())

A comparison writes ``<out_dir>/<name>/``: ``report.md``, ``results.json`` (config, per-run final
metrics and curves, aggregates), ``loss.png`` (mean train-loss curves, one panel per depth),
``accuracy.png`` (hard-mode accuracy bars with the seed spread) and, for sweeps, ``depth.png`` and
``scales.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._checks import check_int, check_real
from .surrogates import get_surrogate, resolve_activation

__all__ = ["CompareConfig", "CompareResult", "Variant", "compare", "build_variants",
           "DEFAULT_ACTIVATIONS"]

#: Default line-up: HTAF both ways, the common surrogates (a Gaussian-tailed one, two polynomial
#: tails, a compact one, the clipped STE) and the ReLU ceiling.
DEFAULT_ACTIVATIONS = ("htaf", "htaf_st", "sigmoid", "atan", "fast_sigmoid", "piecewise_quadratic",
                       "ste", "relu")
#: The default network of ``htaf compare``: 6 hidden Heaviside layers of 128 units.
MLP_DEFAULTS = {"depth": 6, "width": 128}
_HTAF = ("htaf", "htaf_st")
_FULL_PRECISION = ("relu", "hardtanh", "identity")
_GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "slope": "k", "clip": "clip"}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


@dataclass(frozen=True)
class Variant:
    """One line of the comparison: an activation, its parameters (``params``, sorted pairs) and a
    depth (None: the model's own default). ``gamma_mult`` scales the annealing range of smooth
    HTAF (whose γ the schedule sets)."""

    activation: str
    params: tuple[tuple[str, float], ...] = ()
    depth: int | None = None
    gamma_mult: float = 1.0

    @property
    def act_params(self) -> dict:
        return dict(self.params)

    @property
    def smooth(self) -> bool:
        return _key(self.activation) == "htaf"

    @property
    def kind(self) -> str:
        key = _key(self.activation)
        return "htaf" if key in _HTAF else "ceiling" if key in _FULL_PRECISION else "baseline"

    @property
    def name(self) -> str:
        """Activation and parameters, without the depth: ``"atan α=1"``."""
        parts = [f"{_GREEK.get(k, k)}={v:g}" for k, v in self.params]
        if self.gamma_mult != 1.0:
            parts.append(f"γ×{self.gamma_mult:g}")
        return " ".join([self.activation, *parts])

    @property
    def label(self) -> str:
        return self.name if self.depth is None else f"{self.name} @ depth {self.depth}"

    @property
    def slug(self) -> str:
        s = self.name.replace(" ", "_").replace("=", "").replace("×", "x")
        for k, v in _GREEK.items():
            s = s.replace(v, k)
        return s + ("" if self.depth is None else f"-d{self.depth}")


def _scale_params(activation: str) -> list[tuple[str, float]]:
    """The parameters a scale sweep multiplies: HTAF's α, β, γ; a baseline's first parameter."""
    key = _key(activation)
    if key in _FULL_PRECISION:
        return []
    surrogate = get_surrogate("htaf" if key in _HTAF else key)
    values = surrogate.hyperparameters()
    names = list(values) if key in _HTAF else list(values)[:1]
    return [(n, values[n]) for n in names if math.isfinite(values[n])]


def build_variants(activations: Sequence[str], depths: Sequence[int | None] = (None,),
                   scales: Sequence[float] = (), annealed: bool = False,
                   family: str | None = None) -> list[Variant]:
    """All variants of a comparison, validated (unknown activations or parameters, and modes the
    model ``family`` cannot train, raise ``ValueError`` before anything trains). ``annealed``:
    smooth HTAF's γ follows a schedule, so its γ sweep scales the schedule (``gamma_mult``)
    instead of setting γ."""
    variants: list[Variant] = []
    for act in activations:
        resolve_activation(act, family=family)   # "unknown activation ..." naming the choices
        sweeps: list[tuple[tuple[tuple[str, float], ...], float]] = [((), 1.0)]
        for param, default in _scale_params(act):
            for m in scales:
                if m == 1.0:
                    continue
                if annealed and _key(act) == "htaf" and param == "gamma":
                    sweeps.append(((), m))     # smooth HTAF: γ is set by the schedule; scale it
                else:
                    sweeps.append((((param, default * m),), 1.0))
        for params, gamma_mult in sweeps:
            resolve_activation(act, dict(params))   # e.g. a multiple that breaks a bound
            for depth in depths:
                variants.append(Variant(act, params, depth, gamma_mult))
    seen: set[Variant] = set()
    return [v for v in variants if not (v in seen or seen.add(v))]


@dataclass
class CompareConfig:
    """A comparison: the model and data, the line-up, the sweeps and the training recipe shared by
    every run. The defaults are ``htaf compare`` with no arguments: a 6-hidden-layer Heaviside MLP
    on scikit-learn's digits, about a minute on 2 CPU cores (see ``docs/dhn.md`` for the evidence
    behind the recipe)."""

    model: str = "dhn_mlp"
    model_kwargs: dict | None = None    # None: MLP_DEFAULTS for dhn_mlp, {} otherwise
    data: str = "digits"
    activations: tuple[str, ...] = DEFAULT_ACTIVATIONS
    seeds: tuple[int, ...] = (0, 1)
    depths: tuple[int, ...] | None = None
    scales: tuple[float, ...] = ()
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 0.01
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    # Smooth HTAF at fixed γ: on the deep MLPs here it already ends binary (gap ≈ 0.2 points) and
    # annealing γ costs accuracy; the CNN of the probes needs (1, 30). Evidence: docs/dhn.md.
    anneal_gamma: tuple[float, float] | None = None
    train_kwargs: dict = field(default_factory=dict)
    device: str = "auto"
    out_dir: str | None = "runs"
    name: str = "compare"
    keep_runs: bool = False

    def __post_init__(self):
        from .models import model_family

        family = model_family(self.model)        # "unknown model ..." naming the choices
        if self.activations == DEFAULT_ACTIVATIONS and family in ("snn", "bnn"):
            # spikes and signs are exact in training: smooth HTAF is not a variant there
            self.activations = tuple(a for a in DEFAULT_ACTIVATIONS if a != "htaf")
        if self.model_kwargs is None:
            self.model_kwargs = dict(MLP_DEFAULTS) if self.model == "dhn_mlp" else {}
        self.model_kwargs = dict(self.model_kwargs)
        if not self.activations:
            raise ValueError("activations must name at least one activation")
        self.activations = tuple(self.activations)
        self.seeds = tuple(check_int("seed", s, low=0) for s in self.seeds)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if self.depths is not None:
            self.depths = tuple(check_int("depth", d, low=0) for d in self.depths)
            if not self.depths:
                raise ValueError("depths must list at least one depth (or be None)")
        self.scales = tuple(check_real("scale", s, low=0.0) for s in self.scales)
        check_int("epochs", self.epochs, low=1)
        if self.anneal_gamma is not None:
            self.anneal_gamma = tuple(self.anneal_gamma)
        for key in ("activation", "act_params"):
            if key in self.model_kwargs:
                raise ValueError(f"model_kwargs must not set {key!r}: the comparison sets it")
        if self.depths is not None and "depth" in self.model_kwargs:
            self.model_kwargs = {k: v for k, v in self.model_kwargs.items() if k != "depth"}
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")

    def variants(self) -> list[Variant]:
        from .models import model_family

        return build_variants(self.activations, self.depths or (None,), self.scales,
                              annealed=self.anneal_gamma is not None,
                              family=model_family(self.model))

    def train_config(self, variant: Variant, seed: int):
        """The :class:`htaf.engine.TrainConfig` of one run."""
        from .engine import TrainConfig

        model_kwargs = {**self.model_kwargs, "activation": variant.activation}
        if variant.params:
            model_kwargs["act_params"] = variant.act_params
        if variant.depth is not None:
            model_kwargs["depth"] = variant.depth
        anneal = self.anneal_gamma
        if anneal is not None and variant.gamma_mult != 1.0:
            anneal = tuple(g * variant.gamma_mult for g in anneal)
        keep = self.keep_runs and self.out_dir is not None
        return TrainConfig(
            model=self.model, model_kwargs=model_kwargs, data=self.data, epochs=self.epochs,
            batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
            weight_decay=self.weight_decay, schedule=self.schedule, seed=seed,
            anneal_gamma=anneal, device=self.device,
            out_dir=str(Path(self.out_dir) / self.name / "runs") if keep else None,
            name=f"{variant.slug}-s{seed}", log="none", checkpoint_every=0,
            **self.train_kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ results

def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else None


def _std(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.stdev(xs) if len(xs) > 1 else None


def _pct(x, digits=1):
    return "—" if x is None else f"{100 * x:.{digits}f}"


@dataclass
class CompareResult:
    """Per-run records (``runs``), per-variant aggregates (``rows``) and the output folder."""

    config: CompareConfig
    runs: list[dict]
    rows: list[dict]
    out_dir: Path | None
    device: str

    def row(self, variant: Variant) -> dict:
        return next(r for r in self.rows if r["variant"] == variant)

    def best_baseline(self, depth: int | None = None) -> dict | None:
        """The baseline surrogate with the highest mean hard-mode accuracy (at ``depth``)."""
        rows = [r for r in self.rows if r["variant"].kind == "baseline"
                and (depth is None or r["variant"].depth == depth) and r["hard_acc"] is not None]
        return max(rows, key=lambda r: r["hard_acc"], default=None)

    def table(self) -> str:
        """The comparison as a Markdown table (also what ``htaf compare`` prints)."""
        n = len(self.config.seeds)
        head = (f"| activation | depth | hard test acc % (mean ± std, {n} seed{'s' * (n > 1)}) | "
                f"smooth→hard gap (pts) | dead units % | final train loss | time / run (s) |")
        lines = [head, "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            v = r["variant"]
            acc = _pct(r["hard_acc"], 2)
            if r["hard_acc_std"] is not None:
                acc += f" ± {100 * r['hard_acc_std']:.2f}"
            gap = _pct(r["gap"], 2) if v.smooth else "—"
            dead = _pct(r["dead_units"], 1) if v.kind != "ceiling" else "—"
            loss = "—" if r["train_loss"] is None else f"{r['train_loss']:.3f}"
            flag = f" ({r['diverged']} diverged)" if r["diverged"] else ""
            depth = r["depth"] if r["depth"] is not None else self.config.model_kwargs.get(
                "depth", "—")
            lines.append(f"| {v.name}{flag} | {depth} | {acc} | {gap} | {dead} | {loss} | "
                         f"{r['time']:.1f} |")
        return "\n".join(lines)

    def depth_table(self) -> str | None:
        """Hard-mode accuracy per variant (rows) and depth (columns), for a depth sweep."""
        depths = sorted({r["depth"] for r in self.rows if r["depth"] is not None})
        if len(depths) < 2:
            return None
        names = list(dict.fromkeys(r["variant"].name for r in self.rows))
        lines = ["| activation | " + " | ".join(f"depth {d}" for d in depths) + " |",
                 "|---|" + "---|" * len(depths)]
        for name in names:
            cells = []
            for d in depths:
                r = next((r for r in self.rows if r["variant"].name == name and r["depth"] == d),
                         None)
                cell = "—" if r is None else _pct(r["hard_acc"], 1)
                if r is not None and r["hard_acc_std"] is not None:
                    cell += f" ± {100 * r['hard_acc_std']:.1f}"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def headline(self) -> str:
        """One line per depth: HTAF smooth and straight-through vs the best baseline and ReLU."""
        out = []
        for depth in dict.fromkeys(r["depth"] for r in self.rows):
            at = [r for r in self.rows if r["depth"] == depth and not r["variant"].params
                  and r["variant"].gamma_mult == 1.0]
            parts = [f"{r['variant'].activation} {_pct(r['hard_acc'])}%" for r in at
                     if r["variant"].kind != "baseline"]
            best = self.best_baseline(depth)
            if best is not None:
                parts.append(f"best baseline {best['variant'].name} {_pct(best['hard_acc'])}%")
            shown = depth if depth is not None else self.config.model_kwargs.get("depth")
            prefix = "" if shown is None else f"depth {shown}: "
            out.append(prefix + ", ".join(parts))
        return "\n".join(out)

    def to_json(self) -> dict:
        def variant(v: Variant) -> dict:
            return {"name": v.name, "activation": v.activation, "act_params": v.act_params,
                    "depth": v.depth, "gamma_mult": v.gamma_mult, "kind": v.kind}

        return {"config": self.config.to_dict(), "device": self.device,
                "torch": torch.__version__,
                "rows": [{**r, "variant": variant(r["variant"])} for r in self.rows],
                "runs": [{**r, "variant": variant(r["variant"])} for r in self.runs]}


def _aggregate(variants: list[Variant], runs: list[dict]) -> list[dict]:
    rows = []
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        finite = [r for r in rs if r["train_loss"] is not None and math.isfinite(r["train_loss"])]
        rows.append({
            "variant": v, "depth": v.depth, "seeds": [r["seed"] for r in rs],
            "hard_acc": _mean(r["hard_test_acc"] for r in rs),
            "hard_acc_std": _std([r["hard_test_acc"] for r in rs]),
            "acc": _mean(r["test_acc"] for r in rs),
            "gap": _mean(r["gap"] for r in rs),
            "dead_units": _mean(r["dead_units"] for r in rs),
            "train_loss": _mean(r["train_loss"] for r in finite),
            "diverged": len(rs) - len(finite),
            "time": _mean(r["time"] for r in rs) or 0.0,
        })
    return rows


# ------------------------------------------------------------------------------------ running

def compare(config: CompareConfig | None = None,
            progress: Callable[[str], None] | None = print) -> CompareResult:
    """Train every variant × seed of ``config``; write the report (unless ``out_dir`` is None)."""
    from .data import load_dataset
    from .engine import train

    config = config or CompareConfig()
    variants = config.variants()
    jobs = [(v, s) for v in variants for s in config.seeds]
    configs = [config.train_config(v, s) for v, s in jobs]   # validates everything up front
    dataset = load_dataset(config.data)
    say = progress or (lambda _msg: None)
    say(f"htaf compare: {config.model} {json.dumps(config.model_kwargs)} on {dataset.name} "
        f"({dataset.train_x.shape[0]} train / {dataset.test_x.shape[0]} test), "
        f"{len(variants)} variant{'s' * (len(variants) > 1)} × {len(config.seeds)} "
        f"seed{'s' * (len(config.seeds) > 1)} = {len(jobs)} runs of {config.epochs} epochs")
    runs = []
    t_start = time.perf_counter()
    for i, ((variant, seed), tc) in enumerate(zip(jobs, configs)):
        t0 = time.perf_counter()
        result = train(tc)
        m = result.metrics
        runs.append({
            "variant": variant, "seed": seed, "hard_test_acc": m.get("hard_test_acc"),
            "test_acc": m.get("test_acc"), "gap": m.get("gap"), "dead_units": m.get("dead_units"),
            "train_loss": m.get("train_loss"), "time": time.perf_counter() - t0,
            "run_dir": str(result.run_dir) if result.run_dir else None,
            "history": [{k: r.get(k) for k in ("epoch", "train_loss", "test_loss", "hard_test_loss",
                                               "hard_test_acc", "test_acc", "dead_units", "gamma")}
                        for r in result.history]})
        elapsed = time.perf_counter() - t_start
        eta = elapsed / (i + 1) * (len(jobs) - i - 1)
        say(f"[{i + 1:>{len(str(len(jobs)))}}/{len(jobs)}] {variant.label:<28} seed {seed}: "
            f"hard {_pct(m.get('hard_test_acc'))}%  ({runs[-1]['time']:.1f} s, eta {eta:.0f} s)")
    device = str(next(iter(result.model.parameters())).device) if result.model else config.device
    res = CompareResult(config, runs, _aggregate(variants, runs), None, device)
    if config.out_dir is not None:
        res.out_dir = Path(config.out_dir) / config.name
        write_report(res, dataset_name=dataset.name, wall=time.perf_counter() - t_start)
    return res


# ------------------------------------------------------------------------------------- report

def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _colors(names, many=False):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 and not many else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def plot_results(res: CompareResult, out: Path) -> list[Path]:
    """``loss.png``, ``accuracy.png`` and, for sweeps, ``depth.png`` / ``scales.png``."""
    import numpy as np

    names = list(dict.fromkeys(r["variant"].name for r in res.rows))
    color = _colors(names)
    depths = list(dict.fromkeys(r["depth"] for r in res.rows))
    paths = []

    # loss curves: one panel per depth, mean over seeds (band: min–max)
    fig = _figure(4.2 * len(depths) + 1.8, 3.8)
    for j, depth in enumerate(depths):
        ax = fig.add_subplot(1, len(depths), j + 1)
        for name in names:
            rs = [r for r in res.runs if r["variant"].name == name and r["variant"].depth == depth]
            if not rs:
                continue
            curves = np.array([[h["train_loss"] for h in r["history"]] for r in rs], dtype=float)
            epochs = np.arange(1, curves.shape[1] + 1)
            ax.plot(epochs, np.nanmean(curves, 0), color=color[name], label=name,
                    linestyle="--" if rs[0]["variant"].kind == "ceiling" else "-")
            if len(rs) > 1:
                ax.fill_between(epochs, np.nanmin(curves, 0), np.nanmax(curves, 0),
                                color=color[name], alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss" if j == 0 else "")
        ax.set_title("train loss" + ("" if depth is None else f", depth {depth}"))
        ax.grid(alpha=0.3)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / (4.2 * len(depths) + 1.8), 1))
    paths.append(out / "loss.png")
    fig.savefig(paths[-1])

    # accuracy bars, grouped by depth, error bars = seed std
    fig = _figure(max(6.0, 0.45 * len(res.rows) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(depths))
    for j, depth in enumerate(depths):
        rows = [r for r in res.rows if r["depth"] == depth]
        xs = [names.index(r["variant"].name) + (j - (len(depths) - 1) / 2) * width for r in rows]
        ys = [100 * (r["hard_acc"] or 0) for r in rows]
        err = [100 * (r["hard_acc_std"] or 0) for r in rows]
        ax.bar(xs, ys, width, yerr=err, capsize=2, color=[color[r["variant"].name] for r in rows],
               alpha=1.0 - 0.6 * j / max(1, len(depths)), edgecolor="black", linewidth=0.4,
               label=None if depth is None else f"depth {depth}")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("hard-mode test accuracy (%)")
    accs = [100 * r["hard_acc"] for r in res.rows if r["hard_acc"] is not None]
    if accs:
        ax.set_ylim(max(0.0, min(accs) - 5), 100)
    ax.set_title(f"{res.config.model} on {res.config.data}: hard-mode test accuracy")
    if len(depths) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1])

    # depth sweep: accuracy vs depth per activation
    if len(depths) > 1 and None not in depths:
        fig = _figure(6.5, 4.2)
        ax = fig.add_subplot()
        for name in names:
            rows = sorted((r for r in res.rows if r["variant"].name == name),
                          key=lambda r: r["depth"])
            ax.errorbar([r["depth"] for r in rows], [100 * (r["hard_acc"] or 0) for r in rows],
                        yerr=[100 * (r["hard_acc_std"] or 0) for r in rows], marker="o",
                        capsize=2, color=color[name], label=name)
        ax.set_xlabel("hidden layers")
        ax.set_ylabel("hard-mode test accuracy (%)")
        ax.set_title("accuracy vs depth")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "depth.png")
        fig.savefig(paths[-1])

    # scale sweep: accuracy vs multiplier of each activation's swept parameter
    if res.config.scales:
        fig = _figure(6.5, 4.2)
        ax = fig.add_subplot()
        depth = depths[0]
        palette = _colors([f"{a} {p}" for a in res.config.activations
                           for p, _ in _scale_params(a)], many=True)
        for act in res.config.activations:
            for param, default in _scale_params(act):
                pts = []
                for r in res.rows:
                    v = r["variant"]
                    if v.activation != act or v.depth != depth or r["hard_acc"] is None:
                        continue
                    if not v.params and v.gamma_mult == 1.0:
                        pts.append((1.0, r["hard_acc"]))
                    elif v.params and v.params[0][0] == param:
                        pts.append((v.params[0][1] / default, r["hard_acc"]))
                    elif param == "gamma" and v.gamma_mult != 1.0:
                        pts.append((v.gamma_mult, r["hard_acc"]))
                if len(pts) > 1:
                    pts.sort()
                    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o",
                            color=palette[f"{act} {param}"],
                            linestyle="-" if _key(act) in _HTAF else "--",
                            label=f"{act} {_GREEK.get(param, param)}")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter("{x:g}")
        ax.set_xlabel("multiple of the default value")
        ax.set_ylabel("hard-mode test accuracy (%)")
        ax.set_title("scale sweep" + ("" if depth is None else f", depth {depth}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths.append(out / "scales.png")
        fig.savefig(paths[-1])
    return paths


_TAILS_NOTE = (
    "About tails: atan, fast_sigmoid and super_spike have polynomial (x⁻²) gradient tails, heavier "
    "than HTAF's e^(−α|x|); sigmoid and erf have lighter (exponential, Gaussian) ones, and "
    "piecewise_quadratic, triangle, rect and the clipped STE none at all. What HTAF adds is a "
    "sharp, high-mass centre (β, γ) with the tail rate (α) set independently.")


def write_report(res: CompareResult, dataset_name: str | None = None,
                 wall: float | None = None) -> Path:
    """Write ``report.md``, ``results.json`` and the plots into ``res.out_dir``."""
    out = res.out_dir
    out.mkdir(parents=True, exist_ok=True)
    plot_results(res, out)
    c = res.config
    anneal = ("γ fixed" if c.anneal_gamma is None else
              "γ annealed " + "→".join(f"{g:g}" for g in c.anneal_gamma) + " (exp)")
    recipe = (f"{c.optimizer} lr {c.lr:g} ({c.schedule}), batch {c.batch_size}, weight decay "
              f"{c.weight_decay:g}, {c.epochs} epochs; smooth HTAF: {anneal}")
    setup = (f"Model `{c.model}` {json.dumps(c.model_kwargs)}; seeds {list(c.seeds)}; {recipe}; "
             f"device {res.device}, torch {torch.__version__}, {platform.machine()}"
             + (f"; total wall time {wall:.0f} s." if wall is not None else "."))
    legend = ("Accuracy is measured in **hard mode**: every hidden activation is the exact step "
              "1[x ≥ 0] (ReLU excepted: the full-precision ceiling). The smooth→hard gap is "
              "reported for smooth HTAF only (straight-through variants are step networks in "
              "training already). A unit is dead when its state never changes over the test set "
              "(a channel for convolutions).")
    lines = [f"# htaf compare: {c.model} on {dataset_name or c.data}", "", setup, "", legend, "",
             "## Results", "", res.table(), "", res.headline(), ""]
    depth_table = res.depth_table()
    if depth_table:
        lines += ["## Depth sweep (hard-mode test accuracy %)", "", depth_table, "",
                  "![accuracy vs depth](depth.png)", ""]
    if c.scales:
        note = " (for smooth HTAF, the range of its γ schedule)" if c.anneal_gamma else ""
        sweep = (f"Scale sweep: multiples {list(c.scales)} of each surrogate's first parameter "
                 f"and of HTAF's α, β, γ{note}.")
        lines += [sweep, "", "![scales](scales.png)", ""]
    lines += ["## Curves", "", "![train loss](loss.png)", "", "![accuracy](accuracy.png)", "",
              _TAILS_NOTE, "",
              "Per-run metrics and curves: `results.json`"
              + ("; run folders: `runs/`." if c.keep_runs else "."), ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(res.to_json(), indent=1) + "\n")
    return out / "report.md"
