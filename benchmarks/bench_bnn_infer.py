"""Packed-bit BNN inference vs float PyTorch on the CPU: model size and latency, side by side.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/bench_bnn_infer.py [--threads 1]

Model: ``bnn_vgg_small`` for CIFAR-10 (3×32×32, 10 classes; first conv and classifier real),
random weights and BN statistics (latency does not depend on them; sizes are exact). Compared:

* ``float ceiling`` — the same architecture with real weights (``activation="relu"``), float32;
* ``hard BNN, float`` — the BNN in hard mode, binary ops run as float32 convs on ±1 tensors;
* ``packed (c|numpy|torch)`` — :class:`htaf.deploy.PackedModel`, XNOR + popcount on 64-bit words
  (``c``: fused XOR-popcount loop compiled on first use, the CPU default where a C compiler works;
  ``numpy``: ``np.bitwise_count`` over a materialized XOR block; ``torch``: SWAR bit trick).

Prints one table (medians of ``--repeats`` timed calls after one warm-up) and writes
``benchmarks/results/bench_bnn_infer.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from htaf import _native
from htaf.deploy import hard_model, pack_model, state_nbytes
from htaf.models import create_model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_ms(fn, x, repeats: int) -> tuple[float, list[float]]:
    with torch.no_grad():
        fn(x)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, nargs="+", default=[20, 5],
                   help="timed calls per batch size (one number, or one per batch size)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as set)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--backends", nargs="+", default=None,
                   help="packed backends to time (default: c if it compiles, numpy, torch)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_bnn_infer.json"))
    args = p.parse_args(argv)
    if args.backends is None:
        args.backends = (["c"] if _native.available() else []) + ["numpy", "torch"]
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats * len(args.batch_sizes) if len(args.repeats) == 1 else args.repeats
    torch.manual_seed(0)
    kw = dict(in_channels=3, image_size=32, num_classes=10, width_mult=args.width_mult)
    bnn = create_model("bnn_vgg_small", **kw)
    ceiling = create_model("bnn_vgg_small", activation="relu", **kw).eval()
    randomize_bn(bnn)
    randomize_bn(ceiling)
    hard = hard_model(bnn)
    packed = pack_model(bnn, arch={"model": "bnn_vgg_small", "model_kwargs": kw})
    with tempfile.TemporaryDirectory() as tmp:
        file_bytes = packed.save(Path(tmp) / "m.htafbin").stat().st_size
        torch.save(ceiling.state_dict(), Path(tmp) / "f.pt")
        float_file_bytes = (Path(tmp) / "f.pt").stat().st_size
    n_binary_weights = sum(m.weight.numel() for m in bnn.modules()
                           if hasattr(m, "binary_weight") and m.binary_weight)
    sizes = {
        "float_state_dict_bytes": state_nbytes(ceiling),
        "float_file_bytes": float_file_bytes,
        "packed_state_bytes": packed.nbytes(),
        "packed_file_bytes": file_bytes,
        "binary_weights": n_binary_weights,
        "ratio_state": state_nbytes(ceiling) / packed.nbytes(),
    }
    rows = []
    for bs, reps in zip(args.batch_sizes, repeats):
        x = torch.randn(bs, 3, 32, 32)
        exact = bool(torch.equal(packed(x), hard(x)))
        row = {"batch": bs, "repeats": reps, "packed_equals_hard": exact}
        row["float_ceiling_ms"], _ = median_ms(ceiling, x, reps)
        row["hard_bnn_float_ms"], _ = median_ms(hard, x, reps)
        for be in args.backends:
            packed.set_backend(be)
            row[f"packed_{be}_ms"], _ = median_ms(packed, x, reps)
        packed.set_backend("auto")
        rows.append(row)
    result = {
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/bench_bnn_infer.py "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "bnn_vgg_small", "model_kwargs": kw, "input": "float32 [B, 3, 32, 32]",
        "word_bits": packed.word_bits,
        "device": cpu_name(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "sizes": sizes, "latency_median_ms": rows,
        "note": "shared 2-core machine; medians of the timed calls",
    }
    print(f"bnn_vgg_small (width x{args.width_mult:g}) on {result['device']}, "
          f"{result['torch_threads']} torch thread(s), torch {torch.__version__}, "
          f"numpy {np.__version__}")
    print(f"size: float state_dict {sizes['float_state_dict_bytes']:,} B | packed "
          f"{sizes['packed_state_bytes']:,} B (file {sizes['packed_file_bytes']:,} B) | "
          f"{sizes['ratio_state']:.1f}x smaller")
    cols = ["float_ceiling_ms", "hard_bnn_float_ms"] + [f"packed_{b}_ms" for b in args.backends]
    print("| batch | " + " | ".join(c[:-3] + " (ms)" for c in cols)
          + " | packed/ceiling | bit-exact |")
    print("|" + "---|" * (len(cols) + 3))
    for r in rows:
        best = min(r[f"packed_{b}_ms"] for b in args.backends)
        print(f"| {r['batch']} | " + " | ".join(f"{r[c]:.1f}" for c in cols)
              + f" | {best / r['float_ceiling_ms']:.2f}x | {r['packed_equals_hard']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
