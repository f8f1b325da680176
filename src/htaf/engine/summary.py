"""What a person reads of a training run: the log line of each epoch, ``summary.md`` (validation
and test side by side, each number labelled with its split) and the curves ``loss.png`` and
``accuracy.png``."""

from __future__ import annotations

import json
from pathlib import Path

from .runlog import atomic_write_text, new_figure, save_figure

__all__ = ["log_line", "write_summary", "fmt"]

# Keys the loop writes; anything else in a record came from the model's epoch_metrics().
_LOOP_KEYS = {"epoch", "step", "lr", "gamma", "beta", "train_loss", "train_acc", "eval_time",
              "epoch_time", "time"} | {
    k.format(s) for s in ("val", "test") for k in (
        "{}_loss", "{}_acc", "hard_{}_loss", "hard_{}_acc", "{}_gap", "{}_dead_units")}


def fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.4g}"


def log_line(rec: dict, epochs: int) -> str:
    """``epoch 3/10 | train loss 0.1 acc 97% | val 96% hard 95.8% gap ... | lr ... | 1.2s``."""
    parts = [f"epoch {rec['epoch']}/{epochs}",
             f"train loss {fmt(rec['train_loss'])} acc {fmt(rec['train_acc'], True)}"]
    for split in ("val", "test"):
        if f"{split}_acc" in rec:
            parts.append(f"{split} {fmt(rec[f'{split}_acc'], True)} hard "
                         f"{fmt(rec[f'hard_{split}_acc'], True)} gap "
                         f"{fmt(rec[f'{split}_gap'], True)} dead "
                         f"{fmt(rec[f'{split}_dead_units'], True)}")
    knobs = f"lr {rec['lr']:.3g}"
    if rec.get("gamma") is not None:
        knobs += f" γ {rec['gamma']:.3g}"
    if rec.get("beta") is not None:
        knobs += f" β {rec['beta']:.3g}"
    return " | ".join([*parts, knobs, f"{rec['epoch_time']:.1f}s"])


def write_summary(run_dir: Path, config, history: list[dict], dataset) -> None:
    """``summary.md``, ``loss.png`` and ``accuracy.png`` of a run."""
    _plot(run_dir, config, history)
    final = history[-1]
    evals = [r for r in history if "val_acc" in r]
    setup = (f"`{config.model}` {json.dumps(config.model_kwargs)} on `{dataset.name}` "
             f"({dataset.sizes()} images, {dataset.num_classes} classes; validation: "
             f"{dataset.val_source or 'the source'}), {len(history)} of {config.epochs} epochs, "
             f"{config.optimizer} lr {config.lr:g} ({config.schedule}), batch "
             f"{config.batch_size}, seed {config.seed}.")
    done = "test_acc" in final
    lines = [f"# {config.run_name()}", "", setup, "",
             f"| metric | validation (epoch {final['epoch']}) | test (once, at the end) |",
             "|---|---|---|"]
    for label, key, pct in (("accuracy, as trained", "{}_acc", True),
                            ("accuracy, hard mode", "hard_{}_acc", True),
                            ("smooth→hard gap", "{}_gap", True),
                            ("dead binary units", "{}_dead_units", True),
                            ("loss, as trained", "{}_loss", False),
                            ("loss, hard mode", "hard_{}_loss", False)):
        test = fmt(final.get(key.format("test")), pct) if done else "not yet"
        lines.append(f"| {label} | {fmt(final.get(key.format('val')), pct)} | {test} |")
    lines.append(f"| final train loss (train split) | {fmt(final['train_loss'])} | |")
    for key, value in final.items():   # what the model's epoch_metrics() added (validation)
        if key not in _LOOP_KEYS and isinstance(value, (int, float)):
            lines.append(f"| {key} | {fmt(value)} | |")
    lines.append(f"| wall time | {final['time']:.1f} s | |")
    if evals:
        best = max(evals, key=lambda r: r["hard_val_acc"])
        lines += ["", f"Best hard-mode validation accuracy {fmt(best['hard_val_acc'], True)} at "
                      f"epoch {best['epoch']}. The test split is evaluated once, after the last "
                      f"epoch; nothing is chosen on it."]
    lines += ["", "![loss](loss.png) ![accuracy](accuracy.png)", "",
              "| epoch | lr | γ | train loss | train acc | val acc | hard val acc | val gap "
              "| val dead | time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in history:
        lines.append(f"| {r['epoch']} | {r['lr']:.3g} | {fmt(r.get('gamma'))} | "
                     f"{fmt(r['train_loss'])} | {fmt(r['train_acc'], True)} | "
                     f"{fmt(r.get('val_acc'), True)} | {fmt(r.get('hard_val_acc'), True)} | "
                     f"{fmt(r.get('val_gap'), True)} | {fmt(r.get('val_dead_units'), True)} | "
                     f"{r['epoch_time']:.1f} s |")
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")


def _plot(run_dir: Path, config, history: list[dict]) -> None:
    evals = [r for r in history if "val_acc" in r]
    final = history[-1]
    for fname, key, title in (("loss.png", "loss", "cross-entropy"),
                              ("accuracy.png", "acc", "accuracy")):
        fig = new_figure(6, 4)
        ax = fig.add_subplot()
        ax.plot([r["epoch"] for r in history], [r[f"train_{key}"] for r in history],
                label="train (as trained)")
        if evals:
            ax.plot([r["epoch"] for r in evals], [r[f"val_{key}"] for r in evals], marker=".",
                    label="validation (as trained)")
            ax.plot([r["epoch"] for r in evals], [r[f"hard_val_{key}"] for r in evals],
                    marker=".", linestyle="--", label="validation, hard mode")
        if f"hard_test_{key}" in final:
            ax.plot([final["epoch"]], [final[f"hard_test_{key}"]], marker="*", markersize=11,
                    linestyle="none", color="black", label="test, hard mode (once)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        if key == "loss":
            ax.set_yscale("log")
        ax.set_title(f"{config.run_name()}: {title}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, run_dir / fname)
