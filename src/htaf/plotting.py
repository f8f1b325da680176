"""Pictures and tables of HTAF against the baseline surrogates (``htaf plot``)."""

from __future__ import annotations

from pathlib import Path

import torch

from .surrogates import Surrogate, get_surrogate, list_surrogates

__all__ = ["format_table", "gradient_mass_table", "plot_surrogates", "surrogates_figure"]

_POINTS = (0.0, 2.0, 5.0, 10.0)


def gradient_mass_table(surrogates=None) -> list[dict]:
    """One row per surrogate (as the derivative of a {0,1} step): gradient mass within |x| < 0.5
    and the derivative at 0, 2, 5 and 10, in float64."""
    rows = []
    for s in _resolve(surrogates):
        x = torch.tensor(_POINTS, dtype=torch.float64)
        d = s.grad(x) * s.grad_scale(signed=False)
        edge = torch.tensor([-0.5, 0.5], dtype=torch.float64)
        g = s.smooth(edge, signed=False)
        row = {"surrogate": s.name, "params": s.hyperparameters(), "mass_|x|<0.5": float(g[1] - g[0])}
        row.update({f"d({p:g})": float(v) for p, v in zip(_POINTS, d)})
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`gradient_mass_table` rows."""
    head = ["surrogate", "params", "mass |x|<0.5"] + [f"g'({p:g})" for p in _POINTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        params = ", ".join(f"{k}={v:g}" for k, v in r["params"].items()) or "—"
        cells = [r["surrogate"], params, f"{r['mass_|x|<0.5']:.4f}"]
        cells += [f"{r[f'd({p:g})']:.3e}" for p in _POINTS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_surrogates(out_dir: str | Path, surrogates=None) -> list[Path]:
    """Draw each surrogate's smooth form and derivative (linear, and log-scale tails) to PNG."""
    from .engine.runlog import save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [save_figure(surrogates_figure(surrogates), out / "surrogates.png", dpi=120)]


def surrogates_figure(surrogates=None):
    """The figure of :func:`plot_surrogates`: three panels and, to their right, one legend
    (inside a panel it covered curves: swish_sign's, in the derivative panel)."""
    import matplotlib  # Figure + Agg canvas, not pyplot: the caller's backend stays as it is

    from .engine.runlog import new_figure

    items = _resolve(surrogates)
    x = torch.linspace(-4, 4, 1601, dtype=torch.float64)
    xt = torch.linspace(0, 20, 2001, dtype=torch.float64)
    fig = new_figure(18, 4.8, dpi=100)
    axes = fig.subplots(1, 3)
    colors = matplotlib.colormaps["tab20"].colors
    for i, s in enumerate(items):
        is_htaf = s.name == "htaf"
        style = {"lw": 2.8 if is_htaf else 1.2, "zorder": 10 if is_htaf else 2,
                 "color": "black" if is_htaf else colors[(2 * i) % 20 + (i // 10) % 2],
                 "ls": "-" if is_htaf or i % 2 else "--", "label": "HTAF" if is_htaf else s.name}
        axes[0].plot(x, s.smooth(x), **style)
        axes[1].plot(x, s.grad(x) * s.grad_scale(False), **style)
        dt = (s.grad(xt) * s.grad_scale(False)).clamp_min(1e-30)
        axes[2].semilogy(xt, dt, **style)
    axes[0].set_title("smooth form g(x) (step-native, g(0) = ½)")
    axes[1].set_title("surrogate derivative g'(x)")
    axes[2].set_title("tail: g'(x), log scale")
    axes[2].set_ylim(1e-12, 10)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlabel("x")
    legend_share = 0.12
    fig.tight_layout(rect=(0, 0, 1 - legend_share, 1))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", fontsize=9,
               bbox_to_anchor=(1 - legend_share + 0.005, 0.5), frameon=False)
    return fig


def _resolve(surrogates) -> list[Surrogate]:
    names = surrogates if surrogates else list_surrogates()
    return [get_surrogate(s) for s in names]
