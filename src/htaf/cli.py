"""The ``htaf`` command. Each subcommand: an ``_add_<name>`` that declares its arguments and a
``_run_<name>`` that calls the library. Errors print one line (``--debug`` for the traceback)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw HTAF and the baseline surrogates; print the gradient-mass table",
                       description="Draw HTAF and each baseline surrogate (smooth form, derivative, "
                                   "log-scale tail) to PNG and print the gradient-mass table.")
    p.add_argument("--out", default="runs/plot", help="output folder (default: runs/plot)")
    p.add_argument("--surrogates", nargs="+", default=None, metavar="NAME",
                   help="surrogates to include (default: all registered)")
    p.set_defaults(run=_run_plot)


def _run_plot(args) -> int:
    from .plotting import format_table, gradient_mass_table, plot_surrogates

    rows = gradient_mass_table(args.surrogates)
    table = format_table(rows)
    print(table)
    paths = plot_surrogates(args.out, args.surrogates)
    (Path(args.out) / "gradient_mass.md").write_text(table + "\n")
    for path in paths:
        print(f"wrote {path}")
    return 0


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="HTML report of a trained ICBM run: concepts, weights, explanations",
        description="Write a static HTML report (RUN_DIR/explain/index.html, PNGs beside it) of a "
                    "trained Implicit Concept Bottleneck Model: concept metrics, the class x concept "
                    "weight heatmap, the top images and class mix of each concept, why chosen test "
                    "images got their prediction, and what flipping concepts does.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `htaf train`")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/explain)")
    p.add_argument("--top", type=int, default=15, metavar="N",
                   help="concepts shown in detail, most important first (default 15; 0: all)")
    p.add_argument("--per-concept", type=int, default=18, metavar="M",
                   help="images in each concept's grid (default 18)")
    p.add_argument("--images", type=int, nargs="+", default=None, metavar="INDEX",
                   help="test images to explain (default: a few right and wrong ones)")
    p.add_argument("--flip", action="append", default=[], metavar="IMAGE:C[,C...]",
                   help="flip these concepts of test image IMAGE, print the logits before/after and "
                        "add the result to the report (repeatable)")
    p.add_argument("--compare", default=None, metavar="OTHER_RUN",
                   help="a run of the same model and data with another seed: report the share of "
                        "concept bits that differ after matching concepts (seed stability)")
    p.add_argument("--device", default="cpu", help="device to run the model on (default: cpu)")
    p.set_defaults(run=_run_explain)


def _run_explain(args) -> int:
    from ._checks import check_int
    from .explain.report import explain_run, parse_flip

    flips = [parse_flip(spec) for spec in args.flip]
    check_int("--top", args.top, low=0)
    check_int("--per-concept", args.per_concept, low=1)
    report = explain_run(args.run_dir, out_dir=args.out, top=args.top or None,
                         per_concept=args.per_concept, images=args.images, flips=flips,
                         compare=args.compare, device=args.device)
    m = report.metrics
    print(f"hard accuracy {100 * m['acc_hard']:.2f}%, gap {100 * m['gap']:+.2f} points, "
          f"saturation {100 * m['saturation']:.1f}%, {m['active_per_image']:.1f} concepts on "
          f"per image, {int(m['never_on'])} never on, {int(m['always_on'])} always on"
          + (f", seed flip rate {100 * m['seed_flip_rate']:.2f}%" if "seed_flip_rate" in m else ""))
    classes = report.classes
    for r in report.interventions:
        def top(logits):
            order = sorted(range(len(logits)), key=lambda j: -logits[j])[:3]
            return ", ".join(f"{classes[j]} {logits[j]:.2f}" for j in order)

        print(f"image {r.image} (true {classes[r.label]}), flip concept(s) "
              f"{','.join(map(str, r.concepts))}: prediction {classes[r.pred_before]} -> "
              f"{classes[r.pred_after]}\n  before: {top(r.before)}\n  after:  {top(r.after)}")
    print(f"wrote {report.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htaf", description="Train, compare, benchmark and explain networks with binary "
                                 "activations trained with HTAF.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_plot, _add_explain):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, KeyError) as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"htaf {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
