"""ICBM-ResNet18 vs the standard ResNet-18 on CIFAR-10: hard accuracy, discretization gap,
saturation, concept usage and stability (epoch to epoch, and between two seeds).

One command on a GPU machine (about 3 × 30 epochs of a CIFAR ResNet-18):

    python benchmarks/icbm_cifar10.py --data ../shared/datasets/cifar10-jpeg.zip

writes ``benchmarks/results/icbm_cifar10.json`` and the HTML report of the first ICBM seed under
``docs/icbm_report/``. ``--smoke`` runs a tiny version on the CPU (digits, width-4 networks, one
epoch, output under ``runs/icbm_cifar10_smoke/``) to check the script end to end.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from htaf.data import load_dataset
from htaf.engine import TrainConfig, load_run, train
from htaf.explain.metrics import collect, seed_flip_rate
from htaf.explain.report import explain_run, normalized_test_batches

CONCEPT_KEYS = ("acc_smooth", "acc_hard", "gap", "saturation", "active_per_image", "never_on",
                "always_on", "flip_rate_epoch")


def _config(model: str, args, seed: int, out_dir: Path) -> TrainConfig:
    kwargs = {"width": args.width}
    if model.startswith("icbm"):
        kwargs.update(num_concepts=args.concepts, sparsity=args.sparsity)
    return TrainConfig(model=model, model_kwargs=kwargs, data=args.data, epochs=args.epochs,
                       batch_size=args.batch_size, optimizer="sgd", lr=args.lr, momentum=0.9,
                       weight_decay=5e-4, schedule="onecycle", seed=seed,
                       anneal_gamma=(1.0, args.gamma_end), channels_last=args.device != "cpu",
                       device=args.device, out_dir=str(out_dir), name=f"{model}-s{seed}",
                       log="plain")


def _row(result) -> dict:
    m = result.metrics
    row = {"test_acc": m["test_acc"], "hard_test_acc": m["hard_test_acc"], "gap": m["gap"],
           "epochs": len(result.history), "train_time_s": m["time"]}
    row.update({k: m[k] for k in CONCEPT_KEYS if k in m})
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/datasets/cifar10-jpeg.zip"),
                   help="CIFAR-10 ImageFolder zip/dir or a dataset name")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: standard)")
    p.add_argument("--concepts", type=int, default=64, help="ICBM concepts K")
    p.add_argument("--sparsity", type=float, default=0.0, help="ICBM sparsity penalty weight")
    p.add_argument("--gamma-end", type=float, default=30.0, help="γ annealed from 1 to this")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="ICBM seeds (two or more give the seed flip rate); the baseline uses the first")
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default=None, help="run folders (default: runs/icbm_cifar10)")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/icbm_cifar10.json"))
    p.add_argument("--report", default=str(ROOT / "docs/icbm_report"))
    p.add_argument("--smoke", action="store_true",
                   help="tiny CPU run on digits (width 4, 1 epoch) to check the script")
    args = p.parse_args(argv)
    runs = Path(args.runs or ROOT / "runs/icbm_cifar10")
    if args.smoke:
        args.data, args.epochs, args.width, args.concepts, args.batch_size = "digits", 1, 4, 8, 128
        args.device, args.lr, args.seeds = "cpu", 0.05, args.seeds[:2]
        runs = ROOT / "runs/icbm_cifar10_smoke"
        args.json, args.report = str(runs / "icbm_cifar10.json"), str(runs / "report")
        torch.set_num_threads(1)

    t0 = time.time()
    data = load_dataset(args.data)                    # decoded once, shared by every run
    results = {}
    icbm_runs = []
    for seed in args.seeds:
        r = train(_config("icbm_resnet18", args, seed, runs), dataset=data)
        results[f"icbm_resnet18/s{seed}"] = _row(r)
        icbm_runs.append(r.run_dir)
    r = train(_config("std_resnet18", args, args.seeds[0], runs), dataset=data)
    results[f"std_resnet18/s{args.seeds[0]}"] = _row(r)

    seed_rate = None
    if len(icbm_runs) >= 2:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        codes = [collect(load_run(d, device=device)[0],
                         normalized_test_batches(data, 1000, device)).codes for d in icbm_runs[:2]]
        seed_rate = seed_flip_rate(*codes)
    report = explain_run(icbm_runs[0], out_dir=args.report,
                         extra_metrics={"seed_flip_rate": seed_rate} if seed_rate is not None else None,
                         device="cuda" if torch.cuda.is_available() else "cpu")

    out = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
        or "cpu",
        "torch": torch.__version__, "data": args.data, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "width": args.width,
        "concepts": args.concepts, "sparsity": args.sparsity, "gamma": [1.0, args.gamma_end],
        "runs": results, "seed_flip_rate": seed_rate, "report": str(report.path),
        "wall_time_s": time.time() - t0,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")

    print(f"\n{'run':<22}{'smooth acc':>11}{'hard acc':>10}{'gap':>8}{'saturation':>12}"
          f"{'active':>8}{'flips/ep':>10}")
    for name, row in results.items():
        pct = {k: f"{100 * row[k]:.2f}" if k in row else "-" for k in
               ("test_acc", "hard_test_acc", "gap", "saturation", "flip_rate_epoch")}
        active = f"{row['active_per_image']:.1f}" if "active_per_image" in row else "-"
        print(f"{name:<22}{pct['test_acc']:>11}{pct['hard_test_acc']:>10}{pct['gap']:>8}"
              f"{pct['saturation']:>12}{active:>8}{pct['flip_rate_epoch']:>10}")
    if seed_rate is not None:
        print(f"seed flip rate (after Hungarian matching): {100 * seed_rate:.2f}%")
    print(f"wrote {args.json} and {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
