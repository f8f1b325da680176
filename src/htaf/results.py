"""The results of a comparison (:func:`htaf.compare.compare`): per-variant aggregates over seeds,
the selection of each family on validation, HTAF against the best baseline with a paired 95 %
confidence interval, and the tables, plots, ``report.md`` and ``results.json`` of it all.

Every number says its split: ``hard_val_acc`` (validation, which chooses) and ``hard_test_acc``
(test, evaluated once at the end of each run, which only reports).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .compare import _GREEK, Variant, _role, _scale_params
from .stats import mean, paired_difference, std

__all__ = ["CompareResult", "aggregate", "LEGEND"]

#: What the columns of :meth:`CompareResult.table` mean (printed under it and in the report).
LEGEND = (
    "Accuracies are hard-mode: every hidden activation the exact step (sign in binary nets, "
    "spikes in spiking nets; relu: the full-precision ceiling). val = validation split (carved "
    "from train); it alone chooses each family's setting ('chosen on val') and the best "
    "baseline. test = test split, evaluated once at the end of each run. Δ = paired difference "
    "over seeds of HTAF's and the best baseline's hard test accuracy, with its 95 % confidence "
    "interval (Student t); the verdict is win / loss when the interval excludes 0, tie "
    "otherwise. gap = smooth − hard test accuracy of smooth-trained variants; dead = binary "
    "units that never change state on the test split.")

_SPLIT_KEYS = ("hard_{}_acc", "{}_acc", "{}_gap", "{}_dead_units", "hard_{}_loss")


def aggregate(variant: Variant, runs: list[dict]) -> dict:
    """One variant's row: means (and std of the hard accuracies) over its seeds, per split."""
    finite = [r for r in runs if _finite(r["metrics"].get("train_loss"))]
    row = {"variant": variant, "depth": variant.depth, "seeds": [r["seed"] for r in runs],
           "train_loss": mean(r["metrics"].get("train_loss") for r in finite),
           "diverged": len(runs) - len(finite),
           "time": mean(r["time"] for r in runs) or 0.0,
           "per_seed": {}}
    for split in ("val", "test"):
        for key in (k.format(split) for k in _SPLIT_KEYS):
            row[key] = mean(r["metrics"].get(key) for r in runs)
        acc = f"hard_{split}_acc"
        row[f"{acc}_std"] = std([r["metrics"].get(acc) for r in runs])
        row["per_seed"][acc] = {r["seed"]: r["metrics"].get(acc) for r in runs}
    return row


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _variant(d: dict) -> Variant:
    """A :class:`Variant` from its :meth:`~Variant.to_json`."""
    def pairs(m):
        return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in m.items()))

    return Variant(activation=d["activation"], params=tuple(d["act_params"].items()),
                   depth=d["depth"], gamma_mult=d["gamma_mult"],
                   setting=tuple((k, tuple(v) if isinstance(v, list) else v)
                                 for k, v in d["setting"].items()),
                   model=d["model"], model_kwargs=pairs(d["model_kwargs"]),
                   title=d.get("title"), role=d.get("role"))


_ANY = object()   # best_baseline over every architecture


@dataclass
class CompareResult:
    """Per-run records (``runs``: variant, seed, final ``metrics``, ``history``, ``time``),
    per-variant ``rows``, the ``selected`` row of every family (by hard validation accuracy) and
    the ``comparisons`` of each HTAF family with the best baseline at its depth. ``config`` is the
    comparison's :meth:`~htaf.compare.CompareConfig.to_dict` (so a result reloads from its JSON
    with :meth:`from_json` on any machine)."""

    config: dict
    runs: list[dict]
    dataset: str = ""
    device: str = ""
    wall: float | None = None
    out_dir: Path | None = None
    code: str = ""                       # htaf's version and git commit (code_version())
    rows: list[dict] = field(init=False)
    selected: dict = field(init=False)
    comparisons: list[dict] = field(init=False)

    def __post_init__(self):
        variants = list(dict.fromkeys(r["variant"] for r in self.runs))
        self.rows = [aggregate(v, [r for r in self.runs if r["variant"] == v]) for v in variants]
        self.selected = {}
        for row in self.rows:                    # ties keep the first: the default setting
            key = (row["variant"].family, row["depth"])
            best = self.selected.get(key)
            if best is None or _val(row) > _val(best):
                self.selected[key] = row
        for row in self.rows:
            row["selected"] = self.selected[(row["variant"].family, row["depth"])] is row
        self.comparisons = []
        for depth in dict.fromkeys(r["depth"] for r in self.rows):
            for row in self.selected.values():
                if row["depth"] != depth or row["variant"].kind != "htaf":
                    continue
                base = self.best_baseline(depth, row["variant"].model)
                if base is None:
                    continue
                diff = paired_difference(row["per_seed"]["hard_test_acc"],
                                         base["per_seed"]["hard_test_acc"])
                row["vs_best"] = {"baseline": base["variant"].name, **diff}
                self.comparisons.append({"htaf": row["variant"].name, "depth": depth,
                                         **row["vs_best"]})

    def row(self, variant: Variant) -> dict:
        return next(r for r in self.rows if r["variant"] == variant)

    def best_baseline(self, depth: int | None = None, model=_ANY) -> dict | None:
        """The baseline family whose selected setting has the best hard **validation** accuracy
        (at ``depth``; of the same architecture ``model``, None for the recipe's: a binary CNN
        is compared with binary CNNs, not with the MLP of the same part)."""
        rows = [r for r in self.selected.values() if r["variant"].kind == "baseline"
                and (depth is None or r["depth"] == depth) and r["hard_val_acc"] is not None
                and (model is _ANY or r["variant"].model == model)]
        return max(rows, key=_val, default=None)

    @classmethod
    def from_json(cls, data: dict) -> CompareResult:
        """A result from its ``results.json``."""
        runs = [{**r, "variant": _variant(r["variant"])} for r in data["runs"]]
        for r in runs:
            r["seed"] = int(r["seed"])
        return cls(data["config"], runs, dataset=data.get("dataset", ""),
                   device=data.get("device", ""), wall=data.get("wall_s"),
                   code=data.get("htaf", ""))

    @property
    def recipe(self) -> dict:
        return self.config["recipe"]

    def _depth(self, row) -> str:
        d = row["depth"] if row["depth"] is not None else self.recipe["model_kwargs"].get(
            "depth", "—")
        return str(d)

    # ------------------------------------------------------------------------------- tables
    def table(self) -> str:
        """One row per family at its setting chosen on validation: validation and test accuracy,
        HTAF's paired difference with the best baseline and the verdict, gap, dead units, loss
        (also what ``htaf compare`` prints)."""
        n = len(self.config["seeds"])
        lines = [f"| activation | depth | chosen on val | hard val acc % | hard test acc % (mean "
                 f"± std, {n} seed{'s' * (n > 1)}) | Δ test vs best baseline, pts (95 % CI) | "
                 f"verdict | test gap (pts) | test dead % | final train loss |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for row in self.selected.values():
            v = row["variant"]
            members = sum(1 for r in self.rows if (r["variant"].family, r["depth"])
                          == (v.family, row["depth"]))
            chosen = "—" if members == 1 else (v.choice or "default")
            delta, verdict = "", ""
            if "vs_best" in row:
                d = row["vs_best"]
                delta = _signed(d["mean"]) + (f" [{_signed(d['ci'][0])}, {_signed(d['ci'][1])}]"
                                              if d["ci"] else "")
                verdict = d["verdict"]
            elif row is self.best_baseline(row["depth"], v.model):
                delta = "(best baseline)"
            flag = f" ({row['diverged']} diverged)" if row["diverged"] else ""
            lines.append(
                f"| {v.family}{flag} | {self._depth(row)} | {chosen} | "
                f"{_pct(row['hard_val_acc'], 2)} | {_acc(row, 'test')} | {delta} | {verdict} | "
                f"{_pct(row['test_gap'], 2) if v.smooth else '—'} | "
                f"{_pct(row['test_dead_units'], 1) if v.kind != 'ceiling' else '—'} | "
                f"{_num(row['train_loss'])} |")
        return "\n".join(lines)

    def full_table(self) -> str:
        """Every variant (every scale and grid point): validation beside test."""
        lines = ["| variant | depth | chosen | hard val acc % | hard test acc % | test acc as "
                 "trained % | test gap (pts) | test dead % | final train loss | time / run (s) |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            v = row["variant"]
            lines.append(
                f"| {v.name} | {self._depth(row)} | {'✓' if row['selected'] else ''} | "
                f"{_acc(row, 'val')} | {_acc(row, 'test')} | {_pct(row['test_acc'], 2)} | "
                f"{_pct(row['test_gap'], 2) if v.smooth else '—'} | "
                f"{_pct(row['test_dead_units'], 1) if v.kind != 'ceiling' else '—'} | "
                f"{_num(row['train_loss'])} | {row['time']:.1f} |")
        return "\n".join(lines)

    def depth_table(self) -> str | None:
        """Hard test accuracy of each family (at its setting chosen on validation) per depth."""
        depths = sorted({r["depth"] for r in self.rows if r["depth"] is not None})
        if len(depths) < 2:
            return None
        families = list(dict.fromkeys(r["variant"].family for r in self.rows))
        lines = ["| activation | " + " | ".join(f"depth {d}" for d in depths) + " |",
                 "|---|" + "---|" * len(depths)]
        for fam in families:
            cells = []
            for d in depths:
                row = self.selected.get((fam, d))
                cells.append("—" if row is None else _acc(row, "test", 1))
            lines.append(f"| {fam} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def headline(self) -> str:
        """One line per depth: each HTAF family's test accuracy, its difference with the best
        baseline (chosen on validation) and the verdict; the ceiling."""
        out = []
        groups = dict.fromkeys((r["depth"], r["variant"].model) for r in self.rows)
        for depth, model in groups:
            rows = [r for r in self.selected.values()
                    if r["depth"] == depth and r["variant"].model == model]
            best = self.best_baseline(depth, model)
            parts = []
            for r in rows:
                if r["variant"].kind == "htaf":
                    part = f"{r['variant'].name} {_pct(r['hard_test_acc'])}%"
                    d = r.get("vs_best")
                    if d and d["ci"]:
                        part += (f" ({_signed(d['mean'])} pts [{_signed(d['ci'][0])}, "
                                 f"{_signed(d['ci'][1])}]: {d['verdict']})")
                    parts.append(part)
            if best is not None:
                parts.append(f"best baseline {best['variant'].name} "
                             f"{_pct(best['hard_test_acc'])}%")
            parts += [f"{r['variant'].name} {_pct(r['hard_test_acc'])}%" for r in rows
                      if r["variant"].kind == "ceiling"]
            shown = depth if depth is not None else self.recipe["model_kwargs"].get("depth")
            prefix = "" if shown is None else f"depth {shown}: "
            if len({m for _, m in groups}) > 1:
                prefix = f"{model or self.recipe['model']}: " + prefix
            out.append(prefix + "hard test accuracy " + ", ".join(parts))
        return "\n".join(out)

    # --------------------------------------------------------------------------------- output
    def to_json(self) -> dict:
        import torch

        def row(r):
            out = {k: v for k, v in r.items() if k != "variant"}
            return {"variant": r["variant"].to_json(), **out}

        return {"config": self.config, "dataset": self.dataset, "device": self.device,
                "torch": torch.__version__, "htaf": self.code, "wall_s": self.wall,
                "legend": LEGEND,
                "rows": [row(r) for r in self.rows], "comparisons": self.comparisons,
                "runs": [{**{k: v for k, v in r.items() if k not in ("variant", "variant_json")},
                          "variant": r["variant"].to_json()} for r in self.runs]}

    def write(self, folder: Path) -> Path:
        """``report.md``, ``results.json`` and the plots into ``folder``; returns the report."""
        from .engine.runlog import RunLog

        self.out_dir = Path(folder)
        log = RunLog(self.out_dir)
        plot_results(self, log)
        log.write_json("results.json", json.loads(json.dumps(self.to_json(), default=str)))
        return log.write_text("report.md", self.report())

    def report(self) -> str:
        c, r = self.config, self.recipe
        lines = [f"# htaf compare: {r['model']} on {r['data']}", "", self.setup(), "", LEGEND, "",
                 "## Results", "", self.table(), "", self.headline(), ""]
        if any(not row["selected"] for row in self.rows):
            lines += ["## Every variant", "", self.full_table(), ""]
        depth_table = self.depth_table()
        if depth_table:
            lines += ["## Depth sweep (hard test accuracy %, each family at its setting chosen "
                      "on validation)", "", depth_table, "", "![accuracy vs depth](depth.png)", ""]
        if c["scales"]:
            note = " (for smooth HTAF, the range of its γ schedule)" if r["anneal_gamma"] else ""
            lines += [f"Scale sweep: multiples {list(c['scales'])} of each surrogate's first "
                      f"parameter and of HTAF's α, β, γ{note}, plotted on validation (where the "
                      f"choice is made).", "", "![scales](scales.png)", ""]
        lines += ["## Curves", "", "![train loss](loss.png)", "", "![accuracy](accuracy.png)", "",
                  _TAILS_NOTE, "", "Per-run metrics and curves: `results.json`, `runs.jsonl`"
                  + ("; run folders: `runs/`." if c["keep_runs"] else "."), ""]
        return "\n".join(lines)

    def setup(self) -> str:
        """One sentence: model, data, seeds, recipe, device."""
        r, grid = self.recipe, self.config.get("grid") or {}

        def val(key, fmt=str):   # a grid field is swept: its values, not the recipe's default
            if key in grid:
                return "{" + ", ".join("none" if v is None else fmt(v) for v in grid[key]) + "}"
            return fmt(r[key])

        def anneal(gamma):
            if isinstance(gamma, str):
                return f"anneal_gamma={gamma!r}"
            return ("γ fixed" if gamma is None else "γ annealed "
                    + "→".join(f"{g:g}" for g in gamma) + f" ({r['anneal_schedule']})")

        recipe = (f"{val('optimizer')} lr {val('lr', lambda v: f'{v:g}')} ({val('schedule')}), "
                  f"batch {val('batch_size')}, weight decay {val('weight_decay', lambda v: f'{v:g}')}"
                  f", {val('epochs')} epochs; smooth HTAF: "
                  + (f"anneal_gamma ∈ {val('anneal_gamma', lambda g: '→'.join(f'{x:g}' for x in g))}"
                     if "anneal_gamma" in grid else anneal(r["anneal_gamma"])))
        if grid:
            recipe += " (swept values {…} chosen on validation per model/activation)"
        models = self.config.get("models") or []
        if models:
            names = [f"`{r['model']}` {json.dumps(r['model_kwargs'])}"] * bool(
                self.config.get("activations")) + sorted({f"`{m['model']}`" for m in models})
            return (f"Models {', '.join(names)} on "
                    f"{self.dataset or r['data']}; seeds {list(self.config['seeds'])}; {recipe}; "
                    f"device {self.device}" + self._code_and_wall())
        return (f"Model `{r['model']}` {json.dumps(r['model_kwargs'])} on "
                f"{self.dataset or r['data']}; seeds {list(self.config['seeds'])}; {recipe}; "
                f"device {self.device}" + self._code_and_wall())

    def _code_and_wall(self) -> str:
        return ((f"; htaf {self.code}" if self.code else "")
                + (f"; total wall time {self.wall:.0f} s." if self.wall is not None else "."))


def code_version() -> str:
    """htaf's version, with the git commit it runs from where that is a git checkout
    (``0.1.0+gde4533e``; ``.dirty`` when the package's own source differs from that commit;
    results, docs and other files do not count)."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("htaf")
    except PackageNotFoundError:
        text = "unknown"
    package = Path(__file__).resolve().parent
    if not (package.parents[1] / ".git").exists():
        return text

    def git(*args):
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True,
                              text=True, timeout=10)

    try:
        head, status = git("rev-parse", "--short=7", "HEAD"), git(
            "status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return text
    if head.returncode == 0 and head.stdout.strip():
        text += "+g" + head.stdout.strip() + (".dirty" if status.stdout.strip() else "")
    return text


_TAILS_NOTE = (
    "About tails: atan, fast_sigmoid and super_spike have polynomial (x⁻²) gradient tails, heavier "
    "than HTAF's e^(−α|x|); sigmoid and erf have lighter (exponential, Gaussian) ones, and "
    "piecewise_quadratic, triangle, rect and the clipped STE none at all. What HTAF adds is a "
    "sharp, high-mass centre (β, γ) with the tail rate (α) set independently.")


def _val(row) -> float:
    return -math.inf if row["hard_val_acc"] is None else row["hard_val_acc"]


def _pct(x, digits=1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _signed(x) -> str:
    return "—" if x is None else f"{100 * x:+.2f}"


def _num(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _acc(row, split: str, digits: int = 2) -> str:
    out = _pct(row[f"hard_{split}_acc"], digits)
    s = row[f"hard_{split}_acc_std"]
    return out + (f" ± {100 * s:.{digits}f}" if s is not None else "")


# ---------------------------------------------------------------------------------------- plots

def _colors(names, many=False):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 and not many else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def plot_results(res: CompareResult, log) -> list[Path]:
    """``loss.png``, ``accuracy.png`` and, for sweeps, ``depth.png`` / ``scales.png``."""
    rows = list(res.selected.values())
    families = list(dict.fromkeys(r["variant"].family for r in rows))
    color = _colors(families)
    depths = list(dict.fromkeys(r["depth"] for r in rows))
    paths = [_plot_loss(res, rows, depths, color, log), _plot_accuracy(res, rows, depths, families,
                                                                       color, log)]
    if len(depths) > 1 and None not in depths:
        paths.append(_plot_depth(rows, families, color, log))
    if res.config["scales"]:
        paths.append(_plot_scales(res, depths[0], log))
    return paths


def _plot_loss(res, rows, depths, color, log) -> Path:
    import numpy as np

    from .engine.runlog import new_figure

    fig = new_figure(4.2 * len(depths) + 1.8, 3.8)
    for j, depth in enumerate(depths):
        ax = fig.add_subplot(1, len(depths), j + 1)
        for row in (r for r in rows if r["depth"] == depth):
            runs = [r for r in res.runs if r["variant"] == row["variant"] and r["history"]]
            if not runs or len({len(r["history"]) for r in runs}) != 1:
                continue
            curves = np.array([[h["train_loss"] for h in r["history"]] for r in runs], dtype=float)
            epochs = np.arange(1, curves.shape[1] + 1)
            fam = row["variant"].family
            ax.plot(epochs, np.nanmean(curves, 0), color=color[fam], label=fam,
                    linestyle="--" if row["variant"].kind == "ceiling" else "-")
            if len(runs) > 1:
                ax.fill_between(epochs, np.nanmin(curves, 0), np.nanmax(curves, 0),
                                color=color[fam], alpha=0.15, linewidth=0)
        if ax.lines:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss" if j == 0 else "")
        ax.set_title("train loss" + ("" if depth is None else f", depth {depth}"))
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / (4.2 * len(depths) + 1.8), 1))
    return log.save_figure(fig, "loss.png")


def _plot_accuracy(res, rows, depths, families, color, log) -> Path:
    from .engine.runlog import new_figure

    fig = new_figure(max(6.0, 0.45 * len(rows) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(depths))
    for j, depth in enumerate(depths):
        at = [r for r in rows if r["depth"] == depth]
        xs = [families.index(r["variant"].family) + (j - (len(depths) - 1) / 2) * width
              for r in at]
        ax.bar(xs, [100 * (r["hard_test_acc"] or 0) for r in at], width,
               yerr=[100 * (r["hard_test_acc_std"] or 0) for r in at], capsize=2,
               color=[color[r["variant"].family] for r in at],
               alpha=1.0 - 0.6 * j / max(1, len(depths)), edgecolor="black", linewidth=0.4,
               label=None if depth is None else f"depth {depth} (test)")
        ax.plot(xs, [100 * (r["hard_val_acc"] or 0) for r in at], "k_", markersize=10,
                label="validation" if j == 0 else None)
    ax.set_xticks(range(len(families)), families, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("hard-mode accuracy (%)")
    accs = [100 * r["hard_test_acc"] for r in rows if r["hard_test_acc"] is not None]
    if accs:
        ax.set_ylim(max(0.0, min(accs) - 5), 100)
    r = res.recipe
    ax.set_title(f"{r['model']} on {Path(r['data']).name}: hard test accuracy (bars), "
                 f"validation (—)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return log.save_figure(fig, "accuracy.png")


def _plot_depth(rows, families, color, log) -> Path:
    from .engine.runlog import new_figure

    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for fam in families:
        at = sorted((r for r in rows if r["variant"].family == fam), key=lambda r: r["depth"])
        ax.errorbar([r["depth"] for r in at], [100 * (r["hard_test_acc"] or 0) for r in at],
                    yerr=[100 * (r["hard_test_acc_std"] or 0) for r in at], marker="o",
                    capsize=2, color=color[fam], label=fam)
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("hard test accuracy (%)")
    ax.set_title("accuracy vs depth (setting chosen on validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return log.save_figure(fig, "depth.png")


def _plot_scales(res, depth, log) -> Path:
    """Hard validation accuracy against the multiple of each swept parameter."""
    from .engine.runlog import new_figure

    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    acts = res.config["activations"]
    palette = _colors([f"{a} {p}" for a in acts for p, _ in _scale_params(a)], many=True)
    for act in acts:
        for param, default in _scale_params(act):
            pts = []
            for r in res.rows:
                v = r["variant"]
                if v.activation != act or v.depth != depth or r["hard_val_acc"] is None \
                        or v.setting:
                    continue
                if not v.params and v.gamma_mult == 1.0:
                    pts.append((1.0, r["hard_val_acc"]))
                elif v.params and v.params[0][0] == param:
                    pts.append((v.params[0][1] / default, r["hard_val_acc"]))
                elif param == "gamma" and v.gamma_mult != 1.0:
                    pts.append((v.gamma_mult, r["hard_val_acc"]))
            if len(pts) > 1:
                pts.sort()
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o",
                        color=palette[f"{act} {param}"],
                        linestyle="-" if _role(act) == "htaf" else "--",
                        label=f"{act} {_GREEK.get(param, param)}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter("{x:g}")
    ax.set_xlabel("multiple of the default value")
    ax.set_ylabel("hard validation accuracy (%)")
    ax.set_title("scale sweep (validation)" + ("" if depth is None else f", depth {depth}"))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return log.save_figure(fig, "scales.png")
