"""LIF multi-step forward + backward: htaf's fused kernel vs the memory ideal and the peers.

    python benchmarks/bench_lif.py                      # GPU: T=8, [64,128,32,32], fp32 and bf16
    python benchmarks/bench_lif.py --T 4 --size 2 4 8 8 --reps 3      # CPU smoke run

One run, one machine: every time is a ratio to the *memory ideal* = 2.5 × the time of copying the
input (forward reads X and writes S; backward reads dL/dS and the saved X, writes dL/dX: 5 passes
of T·N elements, a copy is 2). Rows: htaf fused Triton (HTAF surrogate), htaf's PyTorch loop and
``torch.compile`` of it, SpikingJelly ``LIFNode`` with its Sigmoid and ATan (its fused path on
CUDA) and with HTAF passed as ``surrogate_function`` (its reference path), snnTorch ``Leaky``.
Peers that are not installed are reported as missing. Peak memory is the allocator's peak during
one forward+backward, above the input and its gradient. JSON goes to
``benchmarks/results/bench_lif.json`` when run on a GPU (or to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import snntorch_rows  # noqa: E402 - benchmarks/ is on sys.path above

from htaf.nn import LIFNode
from htaf.surrogates import get_surrogate

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, reps: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in ms (CUDA events on the GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mb(fn, device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def fwd_bwd(step, x, g):
    """One forward + backward of a multi-step neuron ``step: [T, ...] → spikes``."""

    def run():
        x.grad = None
        step(x).backward(g)

    return run


def make_rows(device, T, size, dtype):
    """name → a callable ``[T, ...] → spikes`` (or a string saying why it is missing)."""
    rows: dict[str, object] = {}
    on_gpu = device.type == "cuda"
    if on_gpu:
        fused = LIFNode(step_mode="m", backend="fused")
        rows["htaf fused Triton (HTAF)"] = lambda x: (fused.reset(), fused(x))[1]
    else:
        rows["htaf fused Triton (HTAF)"] = "needs CUDA"
    eager = LIFNode(step_mode="m", backend="torch")
    rows["htaf PyTorch loop (HTAF)"] = lambda x: (eager.reset(), eager(x))[1]
    compiled = torch.compile(lambda x: (eager.reset(), eager(x))[1])
    rows["torch.compile of the loop"] = compiled
    try:
        from spikingjelly.activation_based import neuron as sjn
        from spikingjelly.activation_based import surrogate as sjs

        for label, sur in (("Sigmoid", sjs.Sigmoid()), ("ATan", sjs.ATan()),
                           ("HTAF custom", get_surrogate("htaf"))):
            node = sjn.LIFNode(tau=2.0, surrogate_function=sur, step_mode="m").to(device)
            rows[f"SpikingJelly LIFNode ({label})"] = (
                lambda x, node=node: (node.reset(), node(x))[1])
    except Exception as e:  # noqa: BLE001 - report any import problem as "missing"
        rows["SpikingJelly"] = f"missing ({type(e).__name__}: {e})"
    rows.update(snntorch_rows(device))
    return rows


def bench(device, T, size, dtype_name, reps):
    dtype = DTYPES[dtype_name]
    shape = (T, *size)
    x = (torch.randn(shape, device=device) * 1.5 + 0.5).to(dtype).requires_grad_()
    g = torch.randn(shape, device=device).to(dtype)
    copy_ms = time_ms(lambda: x.detach().clone(), device, reps)
    ideal = 2.5 * copy_ms
    result = {"dtype": dtype_name, "shape": list(shape), "copy_ms": copy_ms, "ideal_ms": ideal,
              "rows": []}
    for name, step in make_rows(device, T, size, dtype).items():
        if isinstance(step, str):
            result["rows"].append({"name": name, "missing": step})
            continue
        try:
            run = fwd_bwd(step, x, g)
            ms = time_ms(run, device, reps)
            result["rows"].append({"name": name, "ms": ms, "x_ideal": ms / ideal,
                                   "peak_mb": peak_mb(run, device)})
        except Exception as e:  # noqa: BLE001 - one failing peer must not hide the others
            result["rows"].append({"name": name, "missing": f"failed: {type(e).__name__}: {e}"})
    return result


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "spikingjelly", "snntorch"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod)
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--size", type=int, nargs="+", default=[64, 128, 32, 32],
                   help="per-step shape [B, ...]")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="output path (default on GPU: "
                   "benchmarks/results/bench_lif.json)")
    args = p.parse_args(argv)
    if args.T < 1:
        p.error("--T must be >= 1")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    report = {"device": name or device.type, "versions": versions(), "T": args.T,
              "size": args.size, "command": " ".join(["python", *sys.argv]), "results": []}
    print(f"LIF multi-step fwd+bwd, T={args.T}, per-step {args.size}, device {report['device']}")
    print(f"versions: {report['versions']}")
    for dt in args.dtypes:
        r = bench(device, args.T, tuple(args.size), dt, args.reps)
        report["results"].append(r)
        print(f"\n[{dt}] copy {r['copy_ms']:.3f} ms → ideal (×2.5) {r['ideal_ms']:.3f} ms")
        print(f"{'implementation':40s} {'ms':>9s} {'× ideal':>8s} {'peak MiB':>9s}")
        for row in r["rows"]:
            if "missing" in row:
                print(f"{row['name']:40s} {row['missing']}")
                continue
            peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
            print(f"{row['name']:40s} {row['ms']:9.3f} {row['x_ideal']:8.2f} {peak:>9s}")
    out = args.json or (str(Path(__file__).parent / "results" / "bench_lif.json")
                        if device.type == "cuda" else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
