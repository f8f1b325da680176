"""VGG-small BNN on CIFAR-10: HTAF vs ste / approx_sign / swish_sign vs the full-precision ceiling.

One command on a GPU machine (with the shared zip beside the checkout):

    PYTHONPATH=src python3 benchmarks/bnn_cifar10.py --data ../shared/datasets/cifar10-jpeg.zip

Every run uses the same recipe (``bnn_vgg_small``, first conv and classifier real, clipped-STE
weights with per-channel scale, AdamW one-cycle, batch 256, crop + flip, bf16 autocast on CUDA);
only ``activation`` (the surrogate of the activation sign) changes. Writes
``benchmarks/results/bnn_cifar10.json`` with the final and best hard-mode test accuracy per run.
Anchor: BinaryNet reported about 89.9 % on CIFAR-10 (binary weights and activations).

Smoke test on the CPU (tiny): ``--data digits --epochs 1 --width-mult 0.0625 --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from htaf.engine import TrainConfig, train


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets"
                                         / "cifar10-jpeg.zip"))
    p.add_argument("--activations", nargs="+",
                   default=["htaf", "ste", "approx_sign", "swish_sign", "relu"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", default="runs/bnn_cifar10")
    p.add_argument("--out", default=str(ROOT / "results" / "bnn_cifar10.json"))
    args = p.parse_args(argv)
    runs = []
    for act in args.activations:
        for seed in args.seeds:
            cfg = TrainConfig(model="bnn_vgg_small",
                              model_kwargs={"activation": act, "width_mult": args.width_mult},
                              data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                              optimizer="adamw", lr=args.lr, schedule="onecycle",
                              weight_decay=args.weight_decay, seed=seed, device=args.device,
                              anneal_gamma=None, out_dir=args.out_dir, name=f"{act}_s{seed}",
                              log="plain")
            t = time.perf_counter()
            res = train(cfg)
            hard = [r["hard_test_acc"] for r in res.history if "hard_test_acc" in r]
            runs.append({"activation": act, "seed": seed,
                         "final_hard_test_acc": res.metrics.get("hard_test_acc"),
                         "best_hard_test_acc": max(hard) if hard else None,
                         "seconds": time.perf_counter() - t, "run_dir": str(res.run_dir)})
            print(json.dumps(runs[-1]))
    result = {"command": "PYTHONPATH=src python3 benchmarks/bnn_cifar10.py "
                         + " ".join(sys.argv[1:] if argv is None else argv),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
              platform.processor() or "cpu",
              "torch": torch.__version__, "epochs": args.epochs, "runs": runs,
              "anchor": "BinaryNet ~89.9% on CIFAR-10"}
    print("| activation | seed | final hard acc | best hard acc |")
    print("|---|---|---|---|")
    for r in runs:
        print(f"| {r['activation']} | {r['seed']} | {r['final_hard_test_acc']:.4f} | "
              f"{r['best_hard_test_acc']:.4f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
