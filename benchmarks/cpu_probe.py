"""This CPU's clock and the throughput of the instruction mixes behind the XOR + popcount and
float FMA ceilings, measured with register-only loops (x86-64 only; compiled once and cached by
``htaf._build``). Used by ``bench_bnn_infer.py``; run alone to print the numbers:

    PYTHONPATH=src python3 benchmarks/cpu_probe.py

* clock: a chain of dependent 64-bit ``add`` instructions retires one a cycle on any x86 core,
  so adds / second of thread CPU time is the core clock (turbo included, descheduling not).
* ``avx2_xorpop``: the AVX2 kernel's inner loop without memory: per 256 bits, 2 ``vpxor`` +
  2 ``vpshufb`` + 2 ``vpaddb`` (the nibble-split lookup of ``htaf/csrc/bconv.c``).
* ``scalar_xorpop``: per 64 bits, ``xor`` + ``popcnt`` + ``add``.
* ``fma``: 10 independent chains of 8-wide float32 ``vfmadd`` (two pipes on Zen 3).

Each returns bit-ops (or float MACs) per cycle; the best of a few runs, timed with the thread's
CPU clock so other processes on a shared machine do not count.
"""

from __future__ import annotations

import ctypes
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from htaf._build import load_library

_SOURCE = r"""
#include <stdint.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
#define REP8(s) s s s s s s s s
double probe_clock_hz(long n) {
    uint64_t x = 1; double t = now();
    for (long i = 0; i < n; i += 8) __asm__ volatile(REP8("add $1, %0\n\t") : "+r"(x));
    return n / (now() - t);
}
/* 6 vector ops per 256 bit-pairs, 4 independent accumulators; returns bits per second */
__attribute__((target("avx2"))) double probe_avx2_xorpop(long n) {
    double t = now();
    for (long i = 0; i < n; ++i)
        __asm__ volatile(
            "vpxor %%ymm14, %%ymm0, %%ymm2\n\t vpxor %%ymm15, %%ymm1, %%ymm3\n\t"
            "vpshufb %%ymm2, %%ymm13, %%ymm2\n\t vpshufb %%ymm3, %%ymm13, %%ymm3\n\t"
            "vpaddb %%ymm2, %%ymm4, %%ymm4\n\t vpaddb %%ymm3, %%ymm4, %%ymm4\n\t"
            "vpxor %%ymm14, %%ymm1, %%ymm5\n\t vpxor %%ymm15, %%ymm0, %%ymm6\n\t"
            "vpshufb %%ymm5, %%ymm13, %%ymm5\n\t vpshufb %%ymm6, %%ymm13, %%ymm6\n\t"
            "vpaddb %%ymm5, %%ymm7, %%ymm7\n\t vpaddb %%ymm6, %%ymm7, %%ymm7\n\t"
            "vpxor %%ymm12, %%ymm0, %%ymm8\n\t vpxor %%ymm11, %%ymm1, %%ymm9\n\t"
            "vpshufb %%ymm8, %%ymm13, %%ymm8\n\t vpshufb %%ymm9, %%ymm13, %%ymm9\n\t"
            "vpaddb %%ymm8, %%ymm10, %%ymm10\n\t vpaddb %%ymm9, %%ymm10, %%ymm10\n\t"
            "vpxor %%ymm12, %%ymm1, %%ymm2\n\t vpxor %%ymm11, %%ymm0, %%ymm3\n\t"
            "vpshufb %%ymm2, %%ymm13, %%ymm2\n\t vpshufb %%ymm3, %%ymm13, %%ymm3\n\t"
            "vpaddb %%ymm2, %%ymm15, %%ymm15\n\t vpaddb %%ymm3, %%ymm15, %%ymm15\n\t"
            ::: "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                "xmm15");
    return n * 4.0 * 256 / (now() - t);
}
double probe_scalar_xorpop(long n) {
    uint64_t a = 0x9E3779B97F4A7C15ull, w = 0xC2B2AE3D27D4EB4Full, s0 = 0, s1 = 0, s2 = 0,
             s3 = 0, t0, t1, t2, t3;
    double t = now();
    for (long i = 0; i < n; ++i)
        __asm__ volatile(
            "mov %[a], %[t0]\n\t xor %[w], %[t0]\n\t popcnt %[t0], %[t0]\n\t add %[t0], %[s0]\n\t"
            "mov %[w], %[t1]\n\t xor %[a], %[t1]\n\t popcnt %[t1], %[t1]\n\t add %[t1], %[s1]\n\t"
            "mov %[a], %[t2]\n\t xor %[w], %[t2]\n\t popcnt %[t2], %[t2]\n\t add %[t2], %[s2]\n\t"
            "mov %[w], %[t3]\n\t xor %[a], %[t3]\n\t popcnt %[t3], %[t3]\n\t add %[t3], %[s3]\n\t"
            : [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3), [t0] "=&r"(t0),
              [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3)
            : [a] "r"(a), [w] "r"(w));
    return n * 4.0 * 64 / (now() - t) + 0 * (double)(s0 + s1 + s2 + s3);
}
/* 10 chains x 8 float32 lanes: MACs per second */
__attribute__((target("avx2,fma"))) double probe_fma(long n) {
    double t = now();
    for (long i = 0; i < n; ++i)
        __asm__ volatile(
            "vfmadd231ps %%ymm14, %%ymm15, %%ymm0\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm1\n\t"
            "vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm3\n\t"
            "vfmadd231ps %%ymm14, %%ymm15, %%ymm4\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n\t"
            "vfmadd231ps %%ymm14, %%ymm15, %%ymm6\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm7\n\t"
            "vfmadd231ps %%ymm14, %%ymm15, %%ymm8\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm9\n\t"
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9");
    return n * 10.0 * 8 / (now() - t);
}
"""


def probe(trials: int = 5) -> dict | None:
    """Measured clock (Hz) and per-cycle throughputs, or None off x86-64 / without a compiler."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    lib = load_library("htaf_cpu_probe", _SOURCE, march_native=False)
    if lib is None:
        return None
    for name in ("probe_clock_hz", "probe_avx2_xorpop", "probe_scalar_xorpop", "probe_fma"):
        getattr(lib, name).restype = ctypes.c_double
        getattr(lib, name).argtypes = [ctypes.c_long]
    hz = max(lib.probe_clock_hz(200_000_000) for _ in range(trials))
    best = lambda fn, n: max(fn(n) for _ in range(trials)) / hz
    return {
        "clock_hz": hz,
        "avx2_xorpop_bits_per_cycle": best(lib.probe_avx2_xorpop, 2_000_000),
        "scalar_xorpop_bits_per_cycle": best(lib.probe_scalar_xorpop, 10_000_000),
        "fma_macs_per_cycle": best(lib.probe_fma, 10_000_000),
    }


if __name__ == "__main__":
    print(json.dumps(probe(), indent=2))
