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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htaf", description="Train, compare, benchmark and explain networks with binary "
                                 "activations trained with HTAF.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_plot,):
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
