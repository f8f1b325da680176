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


def _parse_kv(items: list[str] | None) -> dict:
    """``["width=64", "norm=layer"]`` → ``{"width": 64, "norm": "layer"}`` (values read as JSON
    when they parse, else kept as strings)."""
    import json

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _add_compare(sub) -> None:
    from .compare import DEFAULT_ACTIVATIONS, CompareConfig

    d = CompareConfig()
    p = sub.add_parser(
        "compare", help="train one architecture with HTAF and every baseline; table + report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train one architecture with HTAF (smooth, evaluated hard; and "
                    "straight-through), each baseline surrogate and the ReLU ceiling over several "
                    "seeds; print the hard-mode accuracy table and write report.md, results.json "
                    "and PNG plots into OUT/NAME/. With no arguments: a 6-hidden-layer Heaviside "
                    "MLP on scikit-learn's digits, about a minute on 2 CPU cores.")
    p.add_argument("--model", default=d.model, help="registered model (dhn_mlp, dhn_cnn, ...)")
    p.add_argument("--data", default=d.data,
                   help="dataset name (digits, mnist5k, cifar10...) or ImageFolder dir/zip")
    p.add_argument("--activations", nargs="+", default=list(DEFAULT_ACTIVATIONS), metavar="ACT",
                   help="htaf (smooth), htaf_st, any surrogate name, relu")
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds), metavar="SEED")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--depths", nargs="+", type=int, default=None, metavar="D",
                   help="depth sweep, e.g. --depths 2 6 12 20 (default: the model's depth)")
    p.add_argument("--scales", nargs="+", type=float, default=[], metavar="M",
                   help="also train each surrogate with its first parameter (α, slope, clip...) "
                        "and HTAF with each of α, β, γ multiplied by M, e.g. --scales 0.5 2")
    p.add_argument("--width", type=int, default=None,
                   help=f"hidden width of dhn_mlp (default {d.model_kwargs['width']})")
    p.add_argument("--model-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="extra model keyword argument (repeatable), e.g. norm=layer")
    p.add_argument("--optimizer", default=d.optimizer, choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", default=d.schedule, choices=("cosine", "onecycle", "constant"))
    p.add_argument("--anneal-gamma", nargs=2, type=float, default=d.anneal_gamma,
                   metavar=("START", "END"),
                   help="anneal smooth HTAF's γ from START to END (exponential; e.g. 1 30 for "
                        "CNNs); default: fixed γ, which ends binary on the MLPs (docs/dhn.md)")
    p.add_argument("--no-anneal", action="store_true", help="fixed γ even if --anneal-gamma")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default=d.out_dir, help="output root")
    p.add_argument("--name", default=d.name, help="report folder under --out")
    p.add_argument("--keep-runs", action="store_true",
                   help="also write every run's folder (checkpoints, curves) under OUT/NAME/runs/")
    p.set_defaults(run=_run_compare)


def _run_compare(args) -> int:
    from .compare import CompareConfig, compare

    model_kwargs = dict(CompareConfig(model=args.model).model_kwargs)
    if args.width is not None:
        model_kwargs["width"] = args.width
    model_kwargs.update(_parse_kv(args.model_arg))
    config = CompareConfig(
        model=args.model, model_kwargs=model_kwargs, data=args.data,
        activations=tuple(args.activations), seeds=tuple(args.seeds), depths=args.depths,
        scales=tuple(args.scales), epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, anneal_gamma=None if args.no_anneal or args.anneal_gamma is None
        else tuple(args.anneal_gamma),
        device=args.device, out_dir=args.out, name=args.name, keep_runs=args.keep_runs)
    result = compare(config)
    print()
    print(result.table())
    print()
    print(result.headline())
    print("hard = every hidden activation is the exact step 1[x>=0] (relu: full-precision "
          "ceiling); gap = smooth - hard accuracy of smooth HTAF; dead = units that never change "
          "state on the test set.")
    print(f"\nreport: {result.out_dir / 'report.md'}  (plots and results.json beside it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htaf", description="Train, compare, benchmark and explain networks with binary "
                                 "activations trained with HTAF.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_compare, _add_plot):
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
