"""The CPU paths: HTAF, every baseline surrogate and the multi-step LIF neuron against the memory
ideal and the peers, measured side by side in one run.

Part 1, activations (fp32, forward + backward through autograd, as a layer runs them):
``htaf`` (smooth), ``heaviside`` (straight-through with HTAF) and every baseline surrogate
(straight-through) on the native kernels (``htaf.kernels.cpu``); the same two HTAF modes on the
PyTorch reference those kernels replace (``HTAF_NO_NATIVE``'s path) and as the naive eager
formula a user would write. Ideal = the time of moving the bytes: forward reads x and writes y,
backward reads grad and x and writes dx, 5 tensor passes = 2.5 × a ``copy_`` of the tensor,
measured in the same run. Also shown: ``x*1`` forward + backward through autograd (the yardstick
issue 16 quoted), a real autograd op that only moves bytes.

Part 2, the LIF neuron (fp32, multi-step forward + BPTT, T steps): ``htaf.nn.LIFNode`` on the
native kernel (HTAF, and Sigmoid like SpikingJelly's default) and on the reference loop;
SpikingJelly 2.0 ``LIFNode`` (its CPU path, default Sigmoid surrogate, and HTAF through
``htaf.interop.spikingjelly_surrogate``); snnTorch 1.0 ``Leaky`` with ``surrogate.atan()``.
Same input, same gradient, same thread count. Ideal = 2.5 × a copy of X (5 passes of T·N).

Timing: wall clock, the best of ``--reps`` calls per row (medians in the JSON too), the rows of a
table interleaved, in a new random order each round, so that a change of machine load hits them
alike and no row always follows the same one (a call's time depends on what the call before it
left in the caches); ``--cold`` empties the caches before every call instead. Ratios are to the
ideal of the same table. Results go to ``benchmarks/results/bench_cpu.json`` (``--json``); the
tables of ``docs/kernels.md`` are generated from it (``--update-docs docs/kernels.md``).

    python benchmarks/bench_cpu.py                          # full run (~5 min on 2 cores)
    python benchmarks/bench_cpu.py --quick                  # smoke run, seconds
    python benchmarks/bench_cpu.py --markdown               # print the docs tables of the JSON
    python benchmarks/bench_cpu.py --compile                # also torch.compile of the formulas
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BASELINES, cpu_name, snntorch_rows  # noqa: E402 - benchmarks/ is on sys.path above

from htaf import functional as F
from htaf import kernels
from htaf.kernels import cpu
from htaf.nn import LIFNode

RESULTS = Path(__file__).resolve().parent / "results" / "bench_cpu.json"


# ----------------------------------------------------------------------------- timing
class ColdCaches:
    """With ``--cold``: before each timed call, read a buffer of twice the last-level cache
    (clean lines: no write-back is left for the call to pay), so that every call starts with
    empty caches, its data in DRAM and the interpreter's own state evicted as well (which costs
    a Python-heavy path ~0.3 ms more than ``x*1`` here, even on a 64-element tensor)."""

    def __init__(self, enabled: bool):
        self.bytes = 2 * last_level_cache_bytes() if enabled else 0
        self.buf = torch.ones(self.bytes // 4) if enabled else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.sum()

    def describe(self) -> str:
        return (f"cold: {self.bytes >> 20} MiB read before each timed call" if self.bytes
                else "as the previous (random) row left them")


def last_level_cache_bytes(default: int = 32 << 20) -> int:
    """The largest CPU cache (sysfs), or ``default`` where the system does not say."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return max(sizes, default=default)


def interleaved_times(fns: dict, reps: int, warmup: int = 2,
                      before=lambda: None) -> dict[str, dict[str, float]]:
    """Best and median wall milliseconds of each callable: ``reps`` rounds, each calling every
    callable once in a new random order (fixed seed); ``before`` runs untimed ahead of each call
    (:class:`ColdCaches`).

    The order is shuffled because a call's time depends on what the call before it left in the
    caches: in a fixed order straight-through HTAF at 1M elements took 1.3-1.4× the ideal when
    only the native rows were timed and 1.7-2.1× with the eager-formula and ``torch.compile``
    rows interleaved (their temporaries evict the caches), and ``copy_``, always timed after the
    cheap ``x*1``, found its input warm. The tables use the best of ``reps``: on a machine shared
    with other jobs the median measures them as much as us, the minimum what the code costs
    (both are in the JSON)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rng = random.Random(0)
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        rng.shuffle(names)
        for name in names:
            before()
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: {"min": min(s), "median": statistics.median(s)} for name, s in samples.items()}


@contextlib.contextmanager
def reference_path():
    """The library as without the native kernels (``HTAF_NO_NATIVE``'s path): ``kernels.fused``
    answers False on the CPU, so every layer runs its PyTorch reference."""
    saved = kernels._state.get("native")
    kernels._state["native"] = False
    try:
        yield
    finally:
        if saved is None:
            kernels._state.pop("native", None)
        else:
            kernels._state["native"] = saved


def on_reference(fn):
    def run():
        with reference_path():
            return fn()
    return run


# ----------------------------------------------------------------------------- activations
def plain_htaf(x):
    return torch.sigmoid(0.5 * x + 4.0 * torch.tanh(x))


def plain_heaviside(x):
    soft = plain_htaf(x)
    return soft + ((x >= 0).to(x.dtype) - soft).detach()


def activation_rows(compile_: bool = False) -> dict:
    rows = {
        "htaf (smooth)": lambda x: F.htaf(x),
        "heaviside (HTAF)": lambda x: F.heaviside(x),
    }
    rows.update({f"heaviside ({name})": (lambda x, n=name: F.heaviside(x, n))
                 for name in BASELINES})
    rows["reference: htaf (smooth)"] = rows["htaf (smooth)"]
    rows["reference: heaviside (HTAF)"] = rows["heaviside (HTAF)"]
    rows["eager formula: htaf (smooth)"] = plain_htaf
    rows["eager formula: heaviside (HTAF)"] = plain_heaviside
    if compile_:
        rows["torch.compile formula: htaf (smooth)"] = torch.compile(plain_htaf)
        rows["torch.compile formula: heaviside (HTAF)"] = torch.compile(plain_heaviside)
    rows["x*1 (autograd yardstick)"] = lambda x: x * 1
    return rows


def bench_activations(size: int, threads: int, reps: int, reference_reps: int,
                      compile_: bool = False, cold: ColdCaches | None = None) -> dict:
    torch.set_num_threads(threads)
    x = torch.randn(size) * 3
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(size)
    dst = torch.empty_like(x)
    rows = activation_rows(compile_)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(xg), xg, grad)

    compile_s = {}
    for name, fn in rows.items():
        if name.startswith("torch.compile"):   # the first call compiles: time it apart
            t0 = time.perf_counter()
            fwd_bwd(fn)()
            compile_s[name] = time.perf_counter() - t0

    fns = {"copy_": lambda: dst.copy_(x)}
    fns.update({name: fwd_bwd(fn) for name, fn in rows.items() if not name.startswith("ref")})
    before = cold or ColdCaches(False)
    times = interleaved_times(fns, reps, before=before)
    refs = {name: on_reference(fwd_bwd(fn)) for name, fn in rows.items()
            if name.startswith("ref")}
    times.update(interleaved_times(refs, reference_reps, warmup=1, before=before))
    ideal = 2.5 * times["copy_"]["min"]
    # The table's copy_ writes into a buffer no other row touches, so whatever ran before it
    # has often evicted that buffer, while the rows' outputs reuse the heap blocks the previous
    # row just freed. Its own repetition, back to back, is the other end: both tensors as warm
    # as they can be (the L3 at 1M elements, DRAM at 16M), with --cold too.
    warm = interleaved_times({"copy_": fns["copy_"]}, reps)["copy_"]["min"]
    out = {"size": size, "threads": threads, "copy_ms": times["copy_"]["min"], "ideal_ms": ideal,
           "copy_median_ms": times["copy_"]["median"], "ideal_warm_ms": 2.5 * warm,
           "rows": [{"name": name, "ms": times[name]["min"], "x_ideal": times[name]["min"] / ideal,
                     "median_ms": times[name]["median"]} for name in rows]}
    if compile_s:
        out["compile_s"] = compile_s
    return out


def combine_runs(runs: list[dict]) -> dict:
    """One table from whole repeated runs of :func:`bench_activations` (same size and threads):
    each row's ratio to the ideal is computed within its run (the copy and the row timed in the
    same rounds), and the table keeps the median ratio over runs with every run's ratio beside it
    (``x_ideal_runs``); ``ms`` and ``ideal_ms`` are medians too. On a shared machine one run's
    ratio moves by ±15 % (the copy's time moves as much as the row's), so a goal is read off the
    spread of several runs, not off one."""
    if len(runs) == 1:
        return runs[0]
    med = statistics.median
    out = {key: runs[0][key] for key in ("size", "threads")}
    out.update({"runs": len(runs), "copy_ms": med(r["copy_ms"] for r in runs),
                "ideal_ms": med(r["ideal_ms"] for r in runs),
                "copy_median_ms": med(r["copy_median_ms"] for r in runs)})
    if all("ideal_warm_ms" in r for r in runs):
        out["ideal_warm_ms"] = med(r["ideal_warm_ms"] for r in runs)
    rows = []
    for i, first in enumerate(runs[0]["rows"]):
        each = [r["rows"][i] for r in runs]
        assert all(row["name"] == first["name"] for row in each)
        ratios = [row["x_ideal"] for row in each]
        rows.append({"name": first["name"], "ms": med(row["ms"] for row in each),
                     "x_ideal": med(ratios), "x_ideal_runs": ratios,
                     "median_ms": med(row["median_ms"] for row in each)})
    out["rows"] = rows
    compile_s = [r["compile_s"] for r in runs if "compile_s" in r]
    if compile_s:
        out["compile_s"] = compile_s[0]
    return out


# ----------------------------------------------------------------------------- LIF
def lif_rows(device="cpu") -> dict:
    rows: dict[str, object] = {}

    def ours(**kw):
        node = LIFNode(tau=2.0, step_mode="m", **kw)
        return lambda x: (node.reset(), node(x))[1]

    rows["htaf LIFNode, native (HTAF)"] = ours()
    rows["htaf LIFNode, native (Sigmoid)"] = ours(surrogate="sigmoid")
    rows["htaf LIFNode, PyTorch loop (HTAF)"] = ours(backend="torch")
    try:
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import neuron as sjn

        from htaf.interop import spikingjelly_surrogate

        for label, kw in (("Sigmoid, its default", {}),
                          ("HTAF via htaf.interop", {"surrogate_function":
                                                     spikingjelly_surrogate("htaf")})):
            node = sjn.LIFNode(tau=2.0, step_mode="m", **kw)
            rows[f"SpikingJelly LIFNode ({label})"] = (
                lambda x, node=node: (sjf.reset_net(node), node(x))[1])
    except Exception as e:  # noqa: BLE001 - a missing peer is reported, not fatal
        rows["SpikingJelly"] = f"missing ({type(e).__name__}: {e})"
    rows.update(snntorch_rows(device))
    return rows


def bench_lif(shape: tuple[int, ...], threads: int, reps: int,
              cold: ColdCaches | None = None) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.5).requires_grad_()
    g = torch.randn(shape, generator=gen)
    rows = lif_rows()

    def fwd_bwd(step):
        def run():
            x.grad = None
            step(x).backward(g)
        return run

    fns = {"copy": lambda: x.detach().clone()}
    fns.update({name: fwd_bwd(step) for name, step in rows.items() if not isinstance(step, str)})
    times = interleaved_times(fns, reps, before=cold or ColdCaches(False))
    ideal = 2.5 * times["copy"]["min"]
    out = []
    for name, step in rows.items():
        if isinstance(step, str):
            out.append({"name": name, "missing": step})
        else:
            t = times[name]
            out.append({"name": name, "ms": t["min"], "x_ideal": t["min"] / ideal,
                        "median_ms": t["median"]})
    return {"shape": list(shape), "threads": threads, "copy_ms": times["copy"]["min"],
            "ideal_ms": ideal, "rows": out}


# ----------------------------------------------------------------------------- report
def versions() -> dict:
    from htaf import _build
    from htaf.results import code_version

    cc = _build._compiler()
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "htaf": code_version(), "cc": _build._version(cc) if cc else None}
    for pkg in ("spikingjelly", "snntorch"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = None
    return out


def _size_label(n: int) -> str:
    return f"{n // 2**20}M" if n % 2**20 == 0 else str(n)


def _ratio_cell(row: dict) -> str:
    """× ideal; with several runs, the median and the runs' range."""
    runs = row.get("x_ideal_runs")
    if not runs or len(runs) == 1:
        return f"{row['x_ideal']:.2f}×"
    return f"{row['x_ideal']:.2f}× ({min(runs):.2f}–{max(runs):.2f})"


def markdown(report: dict) -> str:
    """The docs tables: activations (× ideal per size and thread count; with ``--runs N`` the
    median over runs and their range), then LIF."""
    act = report["activations"]
    runs = max((r.get("runs", 1) for r in act), default=1)
    keys = [(r["size"], r["threads"]) for r in act]
    by = {(r["size"], r["threads"]): {row["name"]: row for row in r["rows"]} for r in act}
    head = [f"fwd+bwd, fp32{f' (median of {runs} runs, range)' if runs > 1 else ''}"] + [
        f"{_size_label(s)}, {t} thr" for s, t in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in by[keys[0]]:
        cells = [_ratio_cell(by[k][name]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ideal = " | ".join(f"{r['ideal_ms']:.2f} ms" for r in act)
    lines.append(f"| *ideal (2.5 × copy_)* | {ideal} |")
    if all("ideal_warm_ms" in r for r in act):
        warm = " | ".join(f"{r['ideal_warm_ms']:.2f} ms" for r in act)
        lines.append(f"| *ideal, warm (2.5 × copy_ repeated back to back)* | {warm} |")
    lines.append("")
    lif = report["lif"]
    if not lif:
        return "\n".join(lines)
    names = list(dict.fromkeys(row["name"] for r in lif for row in r["rows"]))
    head = ["LIF fwd+BPTT, fp32, ms (× ideal)", "ideal"] + names + ["htaf (HTAF) vs fastest peer"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in lif:
        rows = {row["name"]: row for row in r["rows"]}
        cells = [f"{r['shape']}, {r['threads']} thr", f"{r['ideal_ms']:.2f}"]
        for name in names:
            row = rows.get(name, {"missing": "—"})
            cells.append("missing" if "missing" in row else
                         f"{row['ms']:.1f} ({row['x_ideal']:.1f}×)")
        ours = rows.get("htaf LIFNode, native (HTAF)", {}).get("ms")
        peers = [row["ms"] for name, row in rows.items()
                 if name.startswith(("SpikingJelly", "snnTorch")) and "ms" in row]
        cells.append(f"{min(peers) / ours:.1f}× faster" if ours and peers else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _titled(report: dict) -> str:
    load = report.get("load_average_start", [])
    head = (f"`{report.get('command', '?')}` — {report.get('device', '?')}, torch "
            f"{report.get('versions', {}).get('torch', '?')}, allocator: "
            f"{report.get('allocator', 'default')}, caches: "
            f"{report.get('caches', 'as the previous row left them, fixed order')}, load average at start "
            f"{', '.join(str(v) for v in load) or '?'}")
    return head + "\n\n" + markdown(report)


DOCS_BEGIN = "<!-- bench_cpu:begin (generated by benchmarks/bench_cpu.py --update-docs) -->"
DOCS_END = "<!-- bench_cpu:end -->"


def update_docs(doc: Path, tables: str) -> None:
    body = doc.read_text()
    if DOCS_BEGIN not in body or DOCS_END not in body:
        raise SystemExit(f"{doc} has no bench_cpu markers ({DOCS_BEGIN!r} ... {DOCS_END!r})")
    head, rest = body.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    doc.write_text(f"{head}{DOCS_BEGIN}\n{tables}\n{DOCS_END}{tail}")
    print(f"updated {doc}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2**20, 2**24],
                   help="activation tensor sizes (elements)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=15, help="timed calls per row")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat the whole activation tables this many times (one after the "
                        "other, every size and thread count in each) and report each row's "
                        "median ratio with the runs' range")
    p.add_argument("--reference-reps", type=int, default=5,
                   help="timed calls of the (slow) reference rows")
    p.add_argument("--T", type=int, nargs="+", default=[4, 8], help="LIF time steps")
    p.add_argument("--lif-shapes", default="128x512,32x32x16x16",
                   help="per-step LIF shapes, comma-separated (BxN and a conv-shaped BxCxHxW)")
    p.add_argument("--compile", action="store_true",
                   help="also torch.compile (Inductor C++) of the plain formulas; first-call "
                        "compile time recorded apart")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc: keep freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^30, "
                        "as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 would), so a new "
                        "output tensor reuses pages instead of faulting in fresh ones")
    p.add_argument("--thp", action="store_true",
                   help="PyTorch's allocator with transparent huge pages for buffers of 2 MB or "
                        "more (THP_MEM_ALLOC_ENABLE=1; the script restarts itself with it, as "
                        "PyTorch reads it at its first allocation)")
    p.add_argument("--cold", action="store_true",
                   help="read twice the last-level cache before each timed call (every call "
                        "starts with empty caches) instead of leaving them as the previous row did")
    p.add_argument("--no-lif", action="store_true", help="only the activation tables")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few reps (smoke run)")
    p.add_argument("--json", type=Path, default=None,
                   help="output (default benchmarks/results/bench_cpu.json)")
    p.add_argument("--no-json", action="store_true", help="print only")
    p.add_argument("--markdown", action="store_true",
                   help="print the docs tables of an existing JSON (--json) and exit")
    p.add_argument("--also", type=Path, nargs="*", default=[], metavar="JSON",
                   help="with --markdown/--update-docs: more result files, tables appended")
    p.add_argument("--update-docs", type=Path, default=None, metavar="MD",
                   help="replace the tables between the bench_cpu markers of MD (docs/kernels.md) "
                        "with those of the JSON (--json) and exit")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    if args.quick:
        args.sizes, args.reps, args.reference_reps, args.T = [4096], 3, 1, [2]
        args.lif_shapes = "4x64,2x4x4x4"
        args.no_json = args.json is None
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    path = args.json or RESULTS
    if args.markdown or args.update_docs:
        text = "\n\n".join(_titled(json.loads(p.read_text())) for p in [path, *args.also])
        if args.update_docs:
            update_docs(args.update_docs, text)
        else:
            print(text)
        return {}
    if not cpu.available():
        print(f"note: native CPU kernels unavailable ({cpu.backend_error()}): the 'native' rows "
              "run the reference", file=sys.stderr)
    if args.thp and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"})
    allocators = []
    if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":
        allocators.append("PyTorch with transparent huge pages (THP_MEM_ALLOC_ENABLE=1)")
    if args.keep_freed_memory:
        allocators.append(keep_freed_memory())
    allocator = "; ".join(allocators) or "default"
    allocator += ("; htaf's pool for outputs of 32 MiB or more (HTAF_CPU_POOL_MB="
                  f"{kernels.cpu_pool.idle_cap() >> 20}"
                  + (", huge pages advised" if kernels.cpu_pool.hugepages() else "") + ")"
                  if kernels.cpu_pool.enabled() else "; htaf's pool off")
    cold = ColdCaches(args.cold)
    threads0 = torch.get_num_threads()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.lif_shapes.split(",")]
    report = {
        "command": "python " + " ".join([sys.argv[0]] + (list(argv) if argv is not None
                                                         else sys.argv[1:])),
        "device": cpu_name(), "cores": torch.get_num_threads(), "versions": versions(),
        "native": cpu.available(), "dtype": "float32", "allocator": allocator,
        "caches": cold.describe(),
        "load_average_start": list(_loadavg()),
        "activations": [], "lif": [],
    }
    print(f"CPU: {report['device']} | {report['versions']} | caches {report['caches']}")
    try:
        keys = [(threads, size) for threads in args.threads for size in args.sizes]
        runs: dict[tuple[int, int], list[dict]] = {key: [] for key in keys}
        for run in range(args.runs):
            for threads, size in keys:
                r = bench_activations(size, threads, args.reps, args.reference_reps,
                                      args.compile, cold)
                runs[threads, size].append(r)
                print(f"\n[activations{f', run {run + 1}/{args.runs}' if args.runs > 1 else ''}]"
                      f" {_size_label(size)} fp32, {threads} thread(s): copy_ "
                      f"{r['copy_ms']:.3f} ms → ideal {r['ideal_ms']:.3f} ms (warm "
                      f"{r['ideal_warm_ms']:.3f} ms)")
                for row in r["rows"]:
                    print(f"  {row['name']:40s} {row['ms']:9.3f} ms {row['x_ideal']:7.2f}×")
                for name, sec in r.get("compile_s", {}).items():
                    print(f"  ({name}: first call, compiling, {sec:.1f} s)")
        report["activations"] = [combine_runs(runs[key]) for key in keys]
        for threads in args.threads if not args.no_lif else ():
            for T in args.T:
                for shape in shapes:
                    r = bench_lif((T, *shape), threads, args.reps, cold)
                    report["lif"].append(r)
                    print(f"\n[LIF] {[T, *shape]} fp32, {threads} thread(s): ideal "
                          f"{r['ideal_ms']:.3f} ms")
                    for row in r["rows"]:
                        if "missing" in row:
                            print(f"  {row['name']:42s} {row['missing']}")
                        else:
                            print(f"  {row['name']:42s} {row['ms']:9.3f} ms "
                                  f"{row['x_ideal']:7.2f}×")
    finally:
        torch.set_num_threads(threads0)
    report["load_average_end"] = list(_loadavg())
    print("\n" + markdown(report))
    if not args.no_json:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {path}")
    return report


def keep_freed_memory() -> str:
    """Make glibc's malloc keep freed memory (no mmap per large block, no trimming)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_max = -1, -4
    if not (libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**30)):
        raise SystemExit("--keep-freed-memory needs glibc's mallopt")
    kernels.SAVE_DERIVATIVE_MAX_BYTES = 1 << 62   # as with MALLOC_MMAP_MAX_=0 (kernels docs)
    return "glibc, freed memory kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^30)"


def _loadavg() -> tuple[float, ...]:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except (OSError, AttributeError):
        return ()


if __name__ == "__main__":
    main()
