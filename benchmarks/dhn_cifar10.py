"""Deep Heaviside CNN on CIFAR-10: HTAF vs the best baseline vs the ReLU ceiling.

The probe network of ``PROBES.md`` (``dhn_cnn``: six 3×3 convs 128-128-256-256-512-512, BatchNorm,
max-pool after every second conv, global average pool, linear head), trained by the project's
engine with the same recipe for every activation: SGD one-cycle lr 0.1, batch 256, random crop +
flip on the device, bf16 autocast and channels_last on a GPU, optional ``torch.compile``.
Reported per activation: hard-mode test accuracy (every hidden activation is the exact step),
accuracy as trained, the smooth→hard gap, and the time per epoch (median over epochs after the
first, which includes compilation). One table on stdout, JSON in
``benchmarks/results/dhn_cifar10.json``.

GPU (one command)::

    python benchmarks/dhn_cifar10.py --data ../shared/datasets/cifar10-jpeg.zip --compile

CPU smoke check (a few hundred images, a narrow network; the numbers mean nothing)::

    python benchmarks/dhn_cifar10.py --epochs 1 --limit 500 --width-mult 0.0625 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from htaf.engine import TrainConfig, train  # noqa: E402  (after the sys.path line)

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.zip"
# HTAF both ways; clipped STE was the best baseline of the probes (77.5 % vs sigmoid-4 77.2 %).
DEFAULT_ACTIVATIONS = ("htaf", "htaf_st", "ste", "relu")


def limited_zip(src: Path, per_split: int, out_dir: Path) -> Path:
    """A copy of the ImageFolder zip ``src`` with its first ``per_split`` train and test images
    (spread over the classes), for smoke runs."""
    dst = out_dir / f"{src.stem}-limit{per_split}.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        names = sorted(n for n in zin.namelist() if not n.endswith("/"))
        for split in ("train", "test"):
            files = [n for n in names if f"{split}/" in n]
            by_class: dict[str, list[str]] = {}
            for n in files:
                by_class.setdefault(n.rsplit("/", 2)[-2], []).append(n)
            k = max(1, per_split // max(1, len(by_class)))
            for group in by_class.values():
                for n in group[:k]:
                    zout.writestr(n, zin.read(n))
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 ImageFolder zip or dir")
    p.add_argument("--activations", nargs="+", default=list(DEFAULT_ACTIVATIONS))
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--limit", type=int, default=None,
                   help="use only about this many train and test images (smoke runs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dhn_cifar10.json"))
    args = p.parse_args(argv)

    data = Path(args.data)
    if not data.exists():
        print(f"dhn_cifar10: error: {data} not found (pass --data PATH to the CIFAR-10 zip)",
              file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory()
    if args.limit:
        data = limited_zip(data, args.limit, Path(tmp.name))
    cuda = torch.cuda.is_available() and args.device != "cpu"

    rows = []
    for act in args.activations:
        for seed in args.seeds:
            config = TrainConfig(
                model="dhn_cnn", model_kwargs={"activation": act, "width_mult": args.width_mult},
                data=str(data), epochs=args.epochs, batch_size=args.batch_size, optimizer="sgd",
                lr=args.lr, momentum=0.9, weight_decay=5e-4, schedule="onecycle", seed=seed,
                anneal_gamma=(1.0, 30.0), device=args.device, compile=args.compile,
                channels_last=cuda, out_dir=None, log="plain" if not args.limit else "none",
                data_cache=str(Path(tmp.name) / "cache") if args.limit else None)
            t0 = time.perf_counter()
            result = train(config)
            wall = time.perf_counter() - t0
            times = [r["epoch_time"] for r in result.history]
            m = result.metrics
            rows.append({
                "activation": act, "seed": seed, "hard_test_acc": m["hard_test_acc"],
                "test_acc": m["test_acc"], "gap": m["gap"], "dead_units": m.get("dead_units"),
                "epoch_time_s": statistics.median(times[1:] or times),
                "first_epoch_time_s": times[0], "wall_s": wall})
            r = rows[-1]
            print(f"{act:<10} seed {seed}: hard {100 * r['hard_test_acc']:.2f}%  "
                  f"epoch {r['epoch_time_s']:.2f} s", flush=True)

    device = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"\nDHN-CNN (width ×{args.width_mult:g}) on {data.name}, {args.epochs} epochs, "
          f"{device}, torch {torch.__version__}, {'bf16 autocast, channels_last' if cuda else 'fp32'}"
          f"{', compiled' if args.compile else ''}")
    print("| activation | hard test acc % | as trained % | gap (pts) | s / epoch |")
    print("|---|---|---|---|---|")
    summary = []
    for act in args.activations:
        rs = [r for r in rows if r["activation"] == act]
        acc = statistics.fmean(r["hard_test_acc"] for r in rs)
        spread = f" ± {100 * statistics.stdev(r['hard_test_acc'] for r in rs):.2f}" if len(rs) > 1 else ""
        entry = {"activation": act, "hard_test_acc": acc,
                 "test_acc": statistics.fmean(r["test_acc"] for r in rs),
                 "gap": statistics.fmean(r["gap"] for r in rs),
                 "epoch_time_s": statistics.fmean(r["epoch_time_s"] for r in rs)}
        summary.append(entry)
        print(f"| {act} | {100 * acc:.2f}{spread} | {100 * entry['test_acc']:.2f} | "
              f"{100 * entry['gap']:.2f} | {entry['epoch_time_s']:.2f} |")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python " + " ".join([Path(__file__).name, *(argv or sys.argv[1:])]),
        "device": device, "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
        "dtype": "bf16 autocast" if cuda else "fp32", "channels_last": cuda,
        "compile": args.compile, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "width_mult": args.width_mult, "limit": args.limit,
        "data": str(args.data), "summary": summary, "runs": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
