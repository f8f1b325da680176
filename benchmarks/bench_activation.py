"""HTAF forward and forward+backward against the memory ideal, beside eager and compiled PyTorch.

An elementwise op only moves bytes, so its ideal time is set by a ``copy_`` of the same tensor
measured in the same run: ×1 copy for the forward (read x, write y), ×2.5 copies for forward +
backward (forward as above; backward reads grad and x, writes dx). Rows:

* ``fused htaf``         ``htaf.functional.htaf`` (smooth) — the Triton kernels on CUDA
* ``fused heaviside``    ``htaf.functional.heaviside`` (forward 1[x ≥ 0], backward HTAF')
* ``fused heaviside (atan)`` … one row per baseline surrogate (``--no-baselines`` drops them)
* ``eager htaf`` / ``eager heaviside``        the same formulas written plainly in PyTorch
* ``compiled htaf`` / ``compiled heaviside``  ``torch.compile`` of those plain formulas

Also reported: bytes autograd saves for backward (counted with ``saved_tensors_hooks``, distinct
storages), relative to the input's size.

    python benchmarks/bench_activation.py                      # GPU: 2^28 elements, fp32 + bf16
    python benchmarks/bench_activation.py --size 4096 --skip-compile   # CPU smoke run

On a GPU the results are also written to ``benchmarks/results/bench_activation.json``. On the
CPU the "fused" rows run the PyTorch reference (Triton kernels are CUDA-only) and no JSON is
written: the numbers only show that the script runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BASELINES  # noqa: E402 - benchmarks/ is on sys.path above

import htaf  # noqa: E402 - src/ is on sys.path above
from htaf import functional as F  # noqa: E402
from htaf import kernels  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_activation.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- the contenders
def plain_htaf(x, alpha, beta, gamma):
    return torch.sigmoid(alpha * x + beta * torch.tanh(gamma * x))


def plain_heaviside(x, alpha, beta, gamma):
    """Straight-through as people write it: the step forward, HTAF's gradient backward."""
    soft = plain_htaf(x, alpha, beta, gamma)
    return soft + ((x >= 0).to(x.dtype) - soft).detach()


def contenders(alpha, beta, gamma, compile_, baselines=True):
    fused = {
        "fused htaf": lambda x: F.htaf(x, alpha, beta, gamma),
        "fused heaviside": lambda x: F.heaviside(x, "htaf", alpha=alpha, beta=beta, gamma=gamma),
    }
    if baselines:   # each peer's surrogate, straight-through, at its own default scale
        fused.update({f"fused heaviside ({name})": (lambda x, n=name: F.heaviside(x, n))
                      for name in BASELINES})
    plain = {"htaf": plain_htaf, "heaviside": plain_heaviside}
    rows = dict(fused)
    for name, fn in plain.items():
        rows[f"eager {name}"] = lambda x, fn=fn: fn(x, alpha, beta, gamma)
    if compile_:
        for name, fn in plain.items():
            compiled = torch.compile(fn)
            rows[f"compiled {name}"] = lambda x, fn=compiled: fn(x, alpha, beta, gamma)
    return rows


# ----------------------------------------------------------------------------- measuring
def timer(device: torch.device, reps: int):
    """Median milliseconds of a call: ``triton.testing.do_bench`` on CUDA (L2 flushed between
    calls), wall clock around a few calls on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=max(reps, 100), return_mode="median")

    def cpu_time(fn):
        fn()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)

    return cpu_time


def saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn(x)``."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    del y
    return sum(storages.values())


def bench_dtype(rows, dtype, size, device, measure):
    x = (torch.randn(size, device=device) * 3).to(dtype)
    xg = x.detach().clone().requires_grad_(True)
    grad = torch.randn(size, device=device).to(dtype)
    dst = torch.empty_like(x)
    copy_ms = measure(lambda: dst.copy_(x))
    out = []
    for name, fn in rows.items():
        with torch.no_grad():
            fwd_ms = measure(lambda fn=fn: fn(x))
        fwdbwd_ms = measure(lambda fn=fn: torch.autograd.grad(fn(xg), xg, grad))
        try:
            saved = saved_bytes(fn, xg)
        except Exception as err:  # noqa: BLE001 (e.g. a compiler refusing saved-tensor hooks)
            print(f"  ({name}: saved-tensor count unavailable: {type(err).__name__})",
                  file=sys.stderr)
            saved = None
        nbytes = x.numel() * x.element_size()
        out.append({
            "impl": name, "dtype": str(dtype).removeprefix("torch."),
            "fwd_ms": fwd_ms, "fwdbwd_ms": fwdbwd_ms,
            "fwd_ratio": fwd_ms / copy_ms, "fwdbwd_ratio": fwdbwd_ms / (2.5 * copy_ms),
            "saved_bytes": saved, "saved_ratio": None if saved is None else saved / nbytes,
        })
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return copy_ms, out


# ----------------------------------------------------------------------------- report
def table(results, copies) -> str:
    names = list(dict.fromkeys(r["impl"] for r in results))
    dtypes = list(copies)
    head = ["impl"] + [f"{d} {k}" for d in dtypes for k in ("fwd", "fwd+bwd", "saved")]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    by = {(r["impl"], r["dtype"]): r for r in results}
    for name in names:
        cells = [name]
        for d in dtypes:
            r = by[(name, d)]
            saved = "n/a" if r["saved_ratio"] is None else f"{r['saved_ratio']:.2f}×"
            cells += [f"{r['fwd_ratio']:.2f}×", f"{r['fwdbwd_ratio']:.2f}×", saved]
        lines.append(" | ".join(cells))
    ideal = ", ".join(f"{d} {ms:.3f} ms" for d, ms in copies.items())
    lines.append(f"\nratios to the memory ideal (copy_ ×1 fwd, ×2.5 fwd+bwd; copy: {ideal}); "
                 "saved = bytes kept for backward / input bytes")
    return "\n".join("| " + ln + " |" if ln.count("|") else ln for ln in lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2**28, help="elements per tensor (default 2^28)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=4.0)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=100,
                   help="timed calls (at least 100 ms of them on CUDA)")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile rows")
    p.add_argument("--no-baselines", action="store_true",
                   help="leave out the baseline surrogates' straight-through rows")
    p.add_argument("--json", type=Path, default=None,
                   help=f"where to write results (default on CUDA: {RESULTS})")
    args = p.parse_args(argv)
    if args.size < 1:
        p.error("--size must be ≥ 1")
    bad = set(args.dtypes.split(",")) - set(DTYPES)
    if bad:
        p.error(f"unknown dtype(s) {', '.join(sorted(bad))}; choose from {', '.join(DTYPES)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        fused = kernels.fused(torch.empty(1, device=device))
        path = "Triton kernels" if fused else "PyTorch reference (Triton off)"
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        name = "CPU"
        path = ("native C kernels where built, else the PyTorch reference (CPU: a smoke run, "
                "not a measurement; benchmarks/bench_cpu.py measures the CPU)")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    print(f"device: {name} | fused path: {path}")
    print(f"torch {torch.__version__} | triton {triton_version} | htaf {htaf.__version__} | "
          f"shape ({args.size},) | dtypes {args.dtypes} | "
          f"α={args.alpha:g} β={args.beta:g} γ={args.gamma:g}")

    rows = contenders(args.alpha, args.beta, args.gamma, not args.skip_compile,
                      not args.no_baselines)
    measure = timer(device, args.reps)
    copies, results = {}, []
    for key in args.dtypes.split(","):
        copy_ms, res = bench_dtype(rows, DTYPES[key], args.size, device, measure)
        copies[str(DTYPES[key]).removeprefix("torch.")] = copy_ms
        results += res
    print(table(results, copies))

    report = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None
                                                         else sys.argv[1:])),
        "device": name, "fused_path": path, "torch": torch.__version__,
        "triton": triton_version, "htaf": htaf.__version__, "shape": [args.size],
        "params": {"alpha": args.alpha, "beta": args.beta, "gamma": args.gamma},
        "copy_ms": copies, "results": results,
    }
    out = args.json or (RESULTS if device.type == "cuda" else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
