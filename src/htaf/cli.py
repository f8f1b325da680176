"""The ``htaf`` command. Each subcommand: an ``_add_<name>`` that declares its arguments and a
``_run_<name>`` that calls the library. Errors print one line (``--debug`` for the traceback)."""

from __future__ import annotations

import argparse
import subprocess
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
    p.add_argument("--model-arg", dest="model_arg", type=_parse_model_arg, action="append",
                   default=None, metavar="KEY=VALUE",
                   help="extra model keyword argument (repeatable), e.g. norm=layer")
    p.add_argument("--optimizer", default=d.optimizer, choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", default=d.schedule, choices=("cosine", "onecycle", "constant"))
    p.add_argument("--anneal-gamma", action=_PairAction, default=d.anneal_gamma,
                   metavar="START END|none",
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
    model_kwargs.update(dict(args.model_arg or []))
    config = CompareConfig(
        model=args.model, model_kwargs=model_kwargs, data=args.data,
        activations=tuple(args.activations), seeds=tuple(args.seeds), depths=args.depths,
        scales=tuple(args.scales), epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, anneal_gamma=None if args.no_anneal else args.anneal_gamma,
        device=args.device, out_dir=args.out, name=args.name, keep_runs=args.keep_runs)
    result = compare(config)
    print()
    print(result.table())
    print()
    print(result.headline())
    print("hard = every hidden activation is its exact step (1[x>=0]; sign(x) in binary nets; "
          "spikes in spiking nets; relu: full-precision ceiling); gap = smooth - hard accuracy of "
          "smooth HTAF; dead = units that never change state on the test set.")
    print(f"\nreport: {result.out_dir / 'report.md'}  (plots and results.json beside it)")


_TRAIN_EPILOG = """examples:
  htaf train --model dhn_mlp --activation htaf --depth 4 --epochs 20
  htaf train --model dhn_cnn --data ../shared/datasets/cifar10-jpeg.zip --activation htaf_st \\
             --optimizer sgd --lr 0.1 --schedule onecycle --epochs 15 --batch-size 256
  torchrun --nproc_per_node 2 -m htaf train --config run.json      # DDP, no code change
  htaf train --name my-run --resume                                # continue where it stopped

A run writes runs/<name>/: config.json, metrics.jsonl, checkpoints/last.pt, loss.png,
accuracy.png, summary.md. Flags override --config, which overrides the defaults."""


def _parse_pair(text: str):
    """``"1,30"`` → (1.0, 30.0); ``"none"`` → None; ``"auto"`` → "auto"."""
    if text.strip().lower() in ("none", "off", "null"):
        return None
    if text.strip().lower() == "auto":
        return "auto"
    parts = text.replace(":", ",").split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected START,END or none, got {text!r}")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers START,END, got {text!r}") from None


class _PairAction(argparse.Action):
    """``--flag 1 30``, ``--flag 1,30``, ``--flag none`` (or ``auto``) → :func:`_parse_pair`."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, _parse_pair(",".join(values)))
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentError(self, str(e)) from None


def _parse_model_arg(text: str):
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (numbers, true, lists), else text."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _add_train(sub) -> None:
    from .engine import LOG_FORMATS, OPTIMIZERS, SCHEDULES

    p = sub.add_parser(
        "train", help="train one network; write metrics, checkpoints, curves and a summary",
        description="Train one model on one dataset. Each epoch reports train loss/accuracy, "
                    "test accuracy as trained (smooth HTAF layers smooth) and in hard mode (every "
                    "binary activation the exact step), the gap, and the fraction of dead binary "
                    "units.",
        epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    S = argparse.SUPPRESS   # unset flags stay unset, so --config and the defaults show through
    g = p.add_argument_group("model")
    g.add_argument("--model", default=S, help="registered model name (default: dhn_mlp)")
    g.add_argument("--activation", default=S,
                   help="htaf (smooth), htaf_st (straight-through), any surrogate name, or relu")
    g.add_argument("--depth", type=int, default=S, help="number of hidden layers")
    g.add_argument("--width", type=int, default=S, help="hidden width (units or channels)")
    g.add_argument("--model-arg", dest="model_arg", type=_parse_model_arg, action="append",
                   default=S, metavar="KEY=VALUE",
                   help="any other model option, repeatable (VALUE read as JSON when possible)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=S, metavar="NAME|PATH",
                   help="digits (default), mnist5k, cifar10, cifar100, mnist, fashion-mnist, or an "
                        "ImageFolder directory or zip (train/<class>/*, test/<class>/*)")
    g.add_argument("--data-cache", dest="data_cache", default=S, metavar="DIR",
                   help="where decoded datasets are cached (default: $HTAF_CACHE or ~/.cache/htaf)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=S,
                   help="random crop + flip on the device (default: on for images >= 32 px)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=S,
                   help="horizontal flips when augmenting (default: off for digits and MNIST)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=S, help="number of epochs (default: 10)")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=S,
                   help="global batch size, split across torchrun processes (default: 128)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=S, help="default: sgd")
    g.add_argument("--lr", type=float, default=S, help="peak learning rate (default: 0.05)")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=S,
                   help="on weights, not biases or norms (default: 5e-4)")
    g.add_argument("--momentum", type=float, default=S, help="SGD momentum / AdamW beta1 (0.9)")
    g.add_argument("--schedule", choices=SCHEDULES, default=S, help="lr schedule (default: cosine)")
    g.add_argument("--warmup", type=float, default=S,
                   help="epochs of linear lr warmup (onecycle: rising phase, 30%% of the run if 0)")
    g.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=S)
    g.add_argument("--grad-clip", dest="grad_clip", type=float, default=S,
                   help="clip the global gradient norm (default: off)")
    g.add_argument("--seed", type=int, default=S, help="default: 0")
    g = p.add_argument_group("annealing of smooth HTAF layers (per epoch)")
    g.add_argument("--anneal-gamma", dest="anneal_gamma", action=_PairAction, default=S,
                   metavar="START,END|auto|none",
                   help="γ from START to END (default: auto = 1,30 for convolutional models, "
                        "fixed γ for MLPs; evidence in docs/training.md)")
    g.add_argument("--anneal-beta", dest="anneal_beta", action=_PairAction, default=S,
                   metavar="START,END|none", help="β from START to END (default: none)")
    g.add_argument("--anneal-schedule", dest="anneal_schedule", choices=("exp", "linear", "cosine"),
                   default=S, help="default: exp")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=S,
                   help="bf16 autocast (default: on for CUDA)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=S,
                   help="torch.compile the model (default: off)")
    g.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                   default=S, help="channels_last memory format (default: off)")
    g.add_argument("--sync-bn", dest="sync_bn", action=argparse.BooleanOptionalAction, default=S,
                   help="SyncBatchNorm under multi-GPU DDP (default: on)")
    g.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=S)
    g = p.add_argument_group("output")
    g.add_argument("--config", default=None, metavar="FILE.json",
                   help="start from this config (e.g. a run's config.json)")
    g.add_argument("--out", dest="out_dir", default=S, metavar="DIR", help="default: runs")
    g.add_argument("--name", default=S,
                   help="run folder name (default: model-activation-data-sSEED)")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=S,
                   help="continue from runs/<name>/checkpoints/last.pt if it exists")
    g.add_argument("--eval-every", dest="eval_every", type=int, default=S, help="epochs (1)")
    g.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=S,
                   help="epochs; the last epoch is always saved (1)")
    g.add_argument("--log", choices=LOG_FORMATS, default=S,
                   help="progress bars on a terminal, log lines otherwise (default: auto)")
    g.add_argument("--stop-after", dest="stop_after", type=int, default=S,
                   help="stop after this many epochs (resume later with --resume)")
    p.set_defaults(run=_run_train)


def train_config_from_args(args):
    """The :class:`~htaf.engine.TrainConfig` of parsed ``htaf train`` arguments."""
    import json

    from .engine import TrainConfig

    values = {}
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} not found")
        try:
            values = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
    model_kwargs = dict(values.get("model_kwargs") or {})
    for key in ("activation", "depth", "width"):
        if key in args:
            model_kwargs[key] = getattr(args, key)
    for key, value in getattr(args, "model_arg", None) or []:
        model_kwargs[key] = value
    values["model_kwargs"] = model_kwargs
    skip = {"command", "run", "debug", "config", "activation", "depth", "width", "model_arg"}
    values.update({k: v for k, v in vars(args).items() if k not in skip})
    return TrainConfig.from_dict(values)


def _run_train(args) -> int:
    from .engine import train

    result = train(train_config_from_args(args))
    m = result.metrics
    if m.get("hard_test_acc") is not None:
        print(f"final: test {100 * m['test_acc']:.2f}%, hard {100 * m['hard_test_acc']:.2f}%, "
              f"gap {100 * m['gap']:.2f}%, {m['time']:.1f} s")
    if result.run_dir is not None:
        print(f"wrote {result.run_dir}")


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
        "reproduce", help="the README's CIFAR-10 results: train each family, run the speed "
                          "benchmarks, write docs/results.md",
        description="Reproduce the results tables, one part at a time (each under 10 minutes on "
                    "one H100): " + ", ".join(PARTS) + " train HTAF vs the strongest baselines vs "
                    "full precision; 'speed' runs the benchmarks; 'report' writes docs/results.md "
                    "and the README's results section from the JSON files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example (GPU):\n  htaf reproduce dhn --data ../shared/datasets/cifar10-jpeg.zip\n"
               "  htaf reproduce report\nsmoke test of the whole pipeline (CPU, seconds):\n"
               "  htaf reproduce all --smoke")
    p.add_argument("part", choices=[*PARTS, "speed", "report", "all"])
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg.zip", metavar="PATH",
                   help="CIFAR-10 as an ImageFolder zip/dir or 'cifar10' (default: the shared zip)")
    p.add_argument("--epochs", type=int, default=None, help="override the part's epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the part's seeds")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models on digits, 1 epoch, tiny benchmarks: checks the pipeline")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="where part JSON goes (default: docs/results, or runs/reproduce-smoke)")
    p.add_argument("--speed-dir", default=None, metavar="DIR",
                   help="benchmark JSON folder (default: benchmarks/results, or the smoke folder)")
    p.add_argument("--doc", default=None, help="report path (default: docs/results.md)")
    p.add_argument("--readme", default="README.md",
                   help="README whose results section is regenerated ('' to leave it)")
    p.add_argument("--runs", default=None, metavar="DIR", help="also keep each run's folder here")
    p.set_defaults(run=_run_reproduce)


def _run_reproduce(args) -> int:
    from . import reproduce

    smoke_dir = Path("runs/reproduce-smoke")
    results = Path(args.results or (smoke_dir if args.smoke else "docs/results"))
    speed = Path(args.speed_dir or (smoke_dir if args.smoke else "benchmarks/results"))
    doc = Path(args.doc or (smoke_dir / "results.md" if args.smoke else "docs/results.md"))
    readme = None if args.smoke or not args.readme else Path(args.readme)
    data = "digits" if args.smoke else args.data
    parts = list(reproduce.PARTS) + ["speed", "report"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "speed":
            reproduce.run_speed(speed, smoke=args.smoke)
        elif part == "report":
            reproduce.write_report(results, speed, doc, readme)
            print(f"wrote {doc}" + (f" and the results section of {readme}" if readme else ""))
        else:
            reproduce.run_part(part, data=data, out=results, epochs=args.epochs,
                               seeds=tuple(args.seeds) if args.seeds else None,
                               device=args.device, compile=args.compile, smoke=args.smoke,
                               runs_dir=args.runs)
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
