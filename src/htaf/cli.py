"""The ``htaf`` command. Each subcommand: an ``_add_<name>`` that declares its arguments and a
``_run_<name>`` that calls the library. Errors print one line (``--debug`` for the traceback).

The options of ``htaf train`` and ``htaf compare`` are derived from the config dataclasses
(:class:`htaf.engine.TrainConfig`, :class:`htaf.compare.CompareConfig`): each is declared once,
with its help, in the dataclass (:mod:`htaf._options`). Building the parser imports neither
torch nor matplotlib: every library import happens in a ``_run_<name>``, after parsing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from . import _options


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw HTAF and the baseline surrogates; print the gradient-mass table",
                       description="Draw HTAF and each baseline surrogate (smooth form, derivative, "
                                   "log-scale tail) to PNG and print the gradient-mass table.")
    p.add_argument("--out", default="runs/plot", help="output folder (default: runs/plot)")
    p.add_argument("--surrogates", nargs="+", default=None, metavar="NAME",
                   help="surrogates to include (default: all registered)")
    p.set_defaults(run=_run_plot)


def _run_plot(args) -> int:
    from .engine.runlog import atomic_write_text
    from .plotting import format_table, gradient_mass_table, plot_surrogates

    rows = gradient_mass_table(args.surrogates)
    table = format_table(rows)
    print(table)
    paths = plot_surrogates(args.out, args.surrogates)
    atomic_write_text(Path(args.out) / "gradient_mass.md", table + "\n")
    for path in paths:
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------ train and compare

def _train_fields() -> list[str]:
    import dataclasses

    from .engine.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model_kwargs"]


def _add_model_shortcuts(group, *, depth: bool) -> None:
    """``--activation``, ``--depth``, ``--width``, ``--model-arg``: entries of model_kwargs."""
    group.add_argument("--activation", default=argparse.SUPPRESS,
                       help="htaf (smooth), htaf_st (straight-through), any surrogate name, or "
                            "relu (model_kwargs; unset: the model's own)")
    if depth:
        group.add_argument("--depth", type=int, default=argparse.SUPPRESS,
                           help="number of hidden layers (unset: the model's own)")
    group.add_argument("--width", type=int, default=argparse.SUPPRESS,
                       help="hidden width, units or channels (unset: the model's own)")
    group.add_argument("--model-arg", dest="model_arg", type=_parse_model_arg, action="append",
                       default=argparse.SUPPRESS, metavar="KEY=VALUE",
                       help="any other model option, repeatable (VALUE read as JSON when "
                            "possible)")


def _add_config_file(p) -> None:
    p.add_argument("--config", default=None, metavar="FILE.json",
                   help="start from this config (a run's config.json; for compare a "
                        "comparison's config or results.json); flags override it")


def _parse_model_arg(text: str):
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (numbers, true, lists), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _parse_grid(text: str):
    """``KEY=V1,V2,...`` (each value as in :func:`htaf._options.parse_value`)."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE,VALUE..., got {text!r}")
    return key.strip(), [_options.parse_value(v) for v in values.split(",")]


def _read_config(path: str | None) -> dict:
    if not path:
        return {}
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"config file {file} not found")
    try:
        values = json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"config file {file} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {file} must hold a JSON object")
    return values


def _model_kwargs(args, base: dict) -> dict:
    kw = dict(base)
    for key in ("activation", "depth", "width"):
        if key in args:
            kw[key] = getattr(args, key)
    kw.update(dict(getattr(args, "model_arg", None) or []))
    return kw


_TRAIN_EPILOG = """examples:
  htaf train --model dhn_mlp --activation htaf --depth 4 --epochs 20
  htaf train --model dhn_cnn --data ../shared/datasets/cifar10-jpeg.zip --activation htaf_st \\
             --optimizer sgd --lr 0.1 --schedule onecycle --epochs 15 --batch-size 256
  htaf train --data fashion-mnist --data-root ../shared/datasets --model dhn_cnn
  torchrun --nproc_per_node 2 -m htaf train --config run.json      # DDP, no code change
  htaf train --name my-run --resume                                # continue where it stopped

A run writes runs/<name>/: config.json, metrics.jsonl (validation every epoch; the test split
once, after the last), TensorBoard events, checkpoints/last.pt, loss.png, accuracy.png,
summary.md. An existing run is never replaced: --resume continues it, --overwrite replaces it.
Flags override --config, which overrides the defaults."""


def _add_train(sub) -> None:
    from .engine.config import TrainConfig

    p = sub.add_parser(
        "train", help="train one network; write metrics, checkpoints, curves and a summary",
        description="Train one model on one dataset. Each epoch reports train loss/accuracy and "
                    "validation accuracy as trained (smooth HTAF layers smooth) and in hard mode "
                    "(every binary activation the exact step), the gap and the fraction of dead "
                    "binary units; the test split is evaluated once, after the last epoch.",
        epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_file(p)
    groups = {"model": p.add_argument_group("model")}
    _add_model_shortcuts(groups["model"], depth=True)
    _options.add_options(p, TrainConfig, _train_fields(), flags={"out_dir": "out"},
                         metavars=_METAVARS, groups=groups)
    p.set_defaults(run=_run_train)


_METAVARS = {"data": "NAME|PATH", "data_root": "DIR", "data_cache": "DIR", "out_dir": "DIR",
             "anneal_gamma": ("START", "END"), "anneal_beta": ("START", "END"),
             "seeds": "SEED", "depths": "D", "scales": "M", "activations": "ACT"}


def train_config_from_args(args):
    """The :class:`~htaf.engine.TrainConfig` of parsed ``htaf train`` arguments."""
    from .engine.config import TrainConfig

    values = _read_config(args.config)
    values.update(_options.set_values(args, _train_fields()))
    values["model_kwargs"] = _model_kwargs(args, values.get("model_kwargs") or {})
    return TrainConfig.from_dict(values)


def _run_train(args) -> int:
    from .engine.loop import train

    result = train(train_config_from_args(args))
    m = result.metrics
    if m.get("hard_test_acc") is not None:
        print(f"final: validation {100 * m['val_acc']:.2f}% (hard {100 * m['hard_val_acc']:.2f}%)"
              f", test {100 * m['test_acc']:.2f}% (hard {100 * m['hard_test_acc']:.2f}%), "
              f"{m['time']:.1f} s")
    if result.run_dir is not None:
        print(f"wrote {result.run_dir}")


def _compare_fields() -> tuple[list[str], list[str]]:
    """(the comparison's own fields, the recipe fields) that ``htaf compare`` exposes."""
    import dataclasses

    from .compare import _PER_RUN, CompareConfig

    own = [f.name for f in dataclasses.fields(CompareConfig)
           if f.name not in ("recipe", "models", "grid", "act_params")]
    return own, [n for n in _train_fields() if n not in _PER_RUN or n == "model"]


def _add_compare(sub) -> None:
    from .compare import RECIPE, CompareConfig
    from .engine.config import TrainConfig

    p = sub.add_parser(
        "compare", help="train one architecture with HTAF and every baseline over seeds; table "
                        "+ report",
        description="Train one architecture with HTAF (smooth, evaluated hard; and "
                    "straight-through), each baseline surrogate and the ReLU ceiling over several "
                    "seeds with one recipe; choose every setting on the validation split, report "
                    "the test split beside it, HTAF against the best baseline as a paired 95 % "
                    "confidence interval; print the table and write report.md, results.json and "
                    "PNG plots into OUT/NAME/. With no arguments: a 6-hidden-layer Heaviside MLP "
                    "on scikit-learn's digits, about 70 s on 2 CPU cores.",
        epilog="examples:\n  htaf compare --depths 2 6 12 20\n  htaf compare --scales 0.5 2\n"
               "  htaf compare --activations htaf --grid anneal_gamma=none,1:3,1:30\n"
               "  htaf compare --model dhn_cnn --model-arg width_mult=0.25 --data mnist5k\n"
               "  htaf compare --config docs/results/digits/results.json --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    own, recipe = _compare_fields()
    _add_config_file(p)
    groups = _options.add_options(p, CompareConfig, own, flags={"out_dir": "out"},
                                  metavars=_METAVARS)
    groups["line-up"].add_argument(
        "--grid", type=_parse_grid, action="append", default=argparse.SUPPRESS,
        metavar="FIELD=V1,V2", help="sweep a recipe field (repeatable; values: none, numbers, "
                                    "START:END pairs); every combination is a variant, chosen on "
                                    "validation within its family like a scale")
    model = groups["recipe: model"] = p.add_argument_group("recipe: model")
    _add_model_shortcuts(model, depth=False)
    _options.add_options(p, TrainConfig, recipe, defaults={**RECIPE, "model_kwargs": None},
                         metavars=_METAVARS, groups=groups, prefix="recipe: ")
    p.set_defaults(run=_run_compare)


def compare_config_from_args(args):
    """The :class:`~htaf.compare.CompareConfig` of parsed ``htaf compare`` arguments."""
    from .compare import CompareConfig

    own, recipe_fields = _compare_fields()
    values = _read_config(args.config)
    if isinstance(values.get("config"), dict) and "runs" in values:   # a results.json
        values = values["config"]
    recipe = dict(values.get("recipe") or {})
    given = _options.set_values(args, recipe_fields)
    if given.get("model", recipe.get("model")) != recipe.get("model", "dhn_mlp"):
        recipe.pop("model_kwargs", None)          # another model: not the MLP's width and depth
    recipe.update(given)
    if any(k in args for k in ("activation", "width", "model_arg")):
        from .compare import MLP_DEFAULTS

        base = recipe.get("model_kwargs")
        if base is None:
            base = MLP_DEFAULTS if recipe.get("model", "dhn_mlp") == "dhn_mlp" else {}
        recipe["model_kwargs"] = _model_kwargs(args, base)
    values.update(_options.set_values(args, own))
    if "grid" in args:
        values["grid"] = {**values.get("grid", {}), **dict(args.grid)}
    return CompareConfig.from_dict({**values, "recipe": recipe})


def _run_compare(args) -> int:
    from .compare import compare
    from .results import LEGEND

    result = compare(compare_config_from_args(args))
    print()
    print(result.table())
    print()
    print(result.headline())
    print()
    print(LEGEND)
    if result.out_dir is not None:
        print(f"\nreport: {result.out_dir / 'report.md'}  (plots, results.json and runs.jsonl "
              f"beside it)")


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
    if "backend" in r:
        print(f"packed backend: {r['backend']}")
    if "verify" in r:
        v = r["verify"]
        print(f"verified on {v['n']} test images: argmax agree {v['argmax_agree']}/{v['n']}, "
              f"max |logit diff| {v['max_abs_logit_diff']:.3g}")
        if "packed_accuracy" in v:
            print(f"test accuracy: packed {100 * v['packed_accuracy']:.2f}%, hard model "
                  f"{100 * v['hard_accuracy']:.2f}%")
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


def _add_reproduce(sub) -> None:
    from .reproduce import PARTS

    p = sub.add_parser(
        "reproduce", help="the README's results: run each part (a comparison), the speed "
                          "benchmarks, write docs/results.md",
        description="Reproduce the results tables, one part at a time: each of "
                    + ", ".join(PARTS) + " is a comparison (htaf compare) of HTAF with the "
                    "strongest baselines and the full-precision ceiling, written to "
                    "RESULTS/<part>/; 'speed' runs the benchmarks; 'report' writes "
                    "docs/results.md and the README's generated sections from the JSON files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  htaf reproduce digits                          # CPU, about a "
               "minute\n  htaf reproduce dhn --data ../shared/datasets/cifar10-jpeg.zip   # GPU"
               "\n  htaf reproduce dhn --seeds 1 --resume          # add a seed to a part\n"
               "  htaf reproduce report\nsmoke test of the whole pipeline (CPU, seconds):\n"
               "  htaf reproduce all --smoke")
    p.add_argument("part", choices=[*PARTS, "speed", "report", "all"])
    p.add_argument("--data", default=None, metavar="PATH",
                   help="override the part's data (CIFAR-10 parts: the shared zip)")
    p.add_argument("--epochs", type=int, default=None, help="override the part's epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="override the part's seeds")
    p.add_argument("--scales", type=float, nargs="*", default=None, metavar="M",
                   help="override the part's scale sweep (no value: none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--jobs", type=int, default=0,
                   help="runs at the same time, one process each (default: 0 = one per CPU "
                        "core, 1 on CUDA)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished runs of the part's folder and train the rest")
    p.add_argument("--overwrite", action="store_true", help="replace the part's folder")
    p.add_argument("--keep-runs", action="store_true",
                   help="also keep every run's folder (checkpoints, curves)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models on digits, 1 epoch, tiny benchmarks: checks the pipeline")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="parts' folders (default: docs/results, or runs/reproduce-smoke)")
    p.add_argument("--speed-dir", default=None, metavar="DIR",
                   help="benchmark JSON folder (default: benchmarks/results, or the smoke folder)")
    p.add_argument("--doc", default=None, help="report path (default: docs/results.md)")
    p.add_argument("--readme", default="README.md",
                   help="README whose generated sections are rewritten ('' to leave it)")
    p.set_defaults(run=_run_reproduce)


def _run_reproduce(args) -> int:
    from . import reproduce

    smoke_dir = Path("runs/reproduce-smoke")
    results = Path(args.results or (smoke_dir if args.smoke else "docs/results"))
    speed = Path(args.speed_dir or (smoke_dir if args.smoke else "benchmarks/results"))
    doc = Path(args.doc or (smoke_dir / "results.md" if args.smoke else "docs/results.md"))
    readme = None if args.smoke or not args.readme else Path(args.readme)
    parts = list(reproduce.PARTS) + ["speed", "report"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "speed":
            reproduce.run_speed(speed, smoke=args.smoke)
        elif part == "report":
            reproduce.write_report(results, speed, doc, readme)
            print(f"wrote {doc}" + (f" and the generated sections of {readme}" if readme else ""))
        else:
            reproduce.run_part(part, out=results, data=args.data, epochs=args.epochs,
                               seeds=tuple(args.seeds) if args.seeds else None,
                               scales=tuple(args.scales) if args.scales is not None else None,
                               device=args.device, compile=args.compile, smoke=args.smoke,
                               jobs=args.jobs, resume=args.resume, overwrite=args.overwrite,
                               keep_runs=args.keep_runs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htaf", description="Train, compare, benchmark and explain networks with binary "
                                 "activations trained with HTAF.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_compare, _add_train, _add_explain, _add_export, _add_plot, _add_reproduce):
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
    except (ValueError, TypeError, OSError, RuntimeError, KeyError,   # OSError: paths
            subprocess.CalledProcessError) as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"htaf {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
