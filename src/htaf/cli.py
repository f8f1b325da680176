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


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="pack a trained BNN run to bits (XNOR/popcount) and/or export it to ONNX",
        description="Turn a trained binary network into a packed-bit inference model (.htafbin: "
                    "binary weights 64 a word, XNOR + popcount, full-precision first/last layers "
                    "kept), verified on the run's test set against the hard PyTorch model; "
                    "optionally export the hard model to ONNX.")
    p.add_argument("run_dir", help="a run folder (runs/<name>) with config.json and "
                                   "checkpoints/last.pt")
    p.add_argument("--out", default=None, help="packed model file to write (e.g. model.htafbin)")
    p.add_argument("--onnx", default=None, metavar="PATH", help="also export the hard model to "
                                                                 "this ONNX file")
    p.add_argument("--word-bits", type=int, choices=(32, 64), default=64,
                   help="bits per packed word (default: 64)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the test-set verification and the ONNX checks")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from .deploy import export_run

    r = export_run(args.run_dir, args.out, onnx=args.onnx, word_bits=args.word_bits,
                   check=not args.no_check)
    if "verify" in r:
        v = r["verify"]
        print(f"verified on {v['n']} test images: argmax agree {v['argmax_agree']}/{v['n']}, "
              f"max |logit diff| {v['max_abs_logit_diff']:.3g}")
    if "out" in r:
        ratio = r["float_bytes"] / max(1, r["packed_bytes"])
        print(f"wrote {r['out']}: {r['packed_bytes']:,} bytes "
              f"(float state_dict {r['float_bytes']:,} bytes, {ratio:.1f}x smaller)")
    if "onnx" in r:
        o = r["onnx"]
        extra = (f", onnxruntime max |diff| {o['max_abs_diff']:.3g}, argmax equal "
                 f"{o['argmax_equal']}" if o["onnxruntime"] else "")
        print(f"wrote {o['path']} (onnx.checker ok{extra})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htaf", description="Train, compare, benchmark and explain networks with binary "
                                 "activations trained with HTAF.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_plot, _add_export):
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
