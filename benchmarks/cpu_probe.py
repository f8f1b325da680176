"""This CPU's clock and the throughput of the instruction mixes behind the XOR + popcount and
float FMA ceilings, measured with register-only loops (x86-64 only; compiled once and cached by
``htaf._build``). Used by ``bench_bnn_infer.py``; run alone to print the numbers:

    PYTHONPATH=src python3 benchmarks/cpu_probe.py

* clock: a chain of dependent 64-bit ``add`` instructions retires one a cycle on any x86 core,
  so adds / second of thread CPU time is the core clock (turbo included, descheduling not).
* ``avx2_xorpop``: the AVX2 kernel's inner loop on L1-resident operands: per 256 bits,
  2 ``vpxor`` + 2 ``vpshufb`` + 2 ``vpaddb`` (the nibble-split lookup of ``htaf/csrc/bconv.c``).
* ``scalar_xorpop``: the ``popcnt`` kernel's loop, per 64 bits ``xor`` + ``popcnt`` + ``add``.
* ``fma``: 10 independent chains of 8-wide float32 ``vfmadd`` (two pipes on Zen 3).

Each returns bit-ops (or float MACs) per cycle; the best of a few runs, timed with the thread's
CPU clock so other processes on a shared machine do not count (a job on the sibling hardware
thread of the same core still slows them: run it on a quiet machine).
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
/* The AVX2 kernel's inner loop (htaf/csrc/bconv.c) on L1-resident operands: 8 channels, per
   256 bit-pairs 2 vpxor + 2 vpshufb + 2 vpaddb. Returns bit-ops per second. */
#include <immintrin.h>
static uint8_t A[18 * 64] __attribute__((aligned(64))), Wt[18 * 512] __attribute__((aligned(64)));
#define STEP(c, j) c = _mm256_add_epi8(c, _mm256_shuffle_epi8(lut, _mm256_xor_si256(v, \
                       _mm256_load_si256(ws + j)))); __asm__("" : "+x"(c));
__attribute__((target("avx2"), noinline)) static void rows8(const uint8_t *a, const uint8_t *w,
                                                            long steps, __m256i *out) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
            c7 = c0;
    for (long s = 0; s < steps; ++s) {
        const __m256i *ws = (const __m256i *)(w + 512 * s);
        __m256i v = _mm256_load_si256((const __m256i *)(a + 64 * s));
        STEP(c0, 0) STEP(c1, 2) STEP(c2, 4) STEP(c3, 6) STEP(c4, 8) STEP(c5, 10) STEP(c6, 12)
        STEP(c7, 14)
        v = _mm256_load_si256((const __m256i *)(a + 64 * s + 32));
        STEP(c0, 1) STEP(c1, 3) STEP(c2, 5) STEP(c3, 7) STEP(c4, 9) STEP(c5, 11) STEP(c6, 13)
        STEP(c7, 15)
    }
    *out = _mm256_add_epi8(_mm256_add_epi8(_mm256_add_epi8(c0, c1), _mm256_add_epi8(c2, c3)),
                           _mm256_add_epi8(_mm256_add_epi8(c4, c5), _mm256_add_epi8(c6, c7)));
}
static void fill(uint8_t *p, long n, int mask) {   /* real pages, not the shared zero page */
    uint32_t x = 2463534242u;
    for (long i = 0; i < n; ++i) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; p[i] = x & mask; }
}
__attribute__((target("avx2"))) double probe_avx2_xorpop(long n) {
    __m256i out;
    fill(A, sizeof A, 15);
    fill(Wt, sizeof Wt, 15);
    double t = now();
    for (long i = 0; i < n; ++i) {
        __asm__ volatile("" ::: "memory");
        rows8(A, Wt, 18, &out);
    }
    t = now() - t;
    return n * 18.0 * 256 * 8 / t;
}
/* The popcnt kernel's inner loop: 8 channels, xor + popcnt + add per 64 bit-pairs. */
static uint64_t Aw[72], Ww[72 * 8];
__attribute__((target("popcnt"))) double probe_scalar_xorpop(long n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    fill((uint8_t *)Aw, sizeof Aw, 255);
    fill((uint8_t *)Ww, sizeof Ww, 255);
    double t = now();
    for (long i = 0; i < n; ++i) {
        const uint64_t *w = Ww;
        for (int k = 0; k < 72; ++k, w += 8) {
            const uint64_t v = Aw[k];
            s0 += __builtin_popcountll(v ^ w[0]); s1 += __builtin_popcountll(v ^ w[1]);
            s2 += __builtin_popcountll(v ^ w[2]); s3 += __builtin_popcountll(v ^ w[3]);
            s4 += __builtin_popcountll(v ^ w[4]); s5 += __builtin_popcountll(v ^ w[5]);
            s6 += __builtin_popcountll(v ^ w[6]); s7 += __builtin_popcountll(v ^ w[7]);
        }
        __asm__ volatile("" : "+r"(s0), "+r"(s1), "+r"(s2), "+r"(s3), "+r"(s4), "+r"(s5),
                         "+r"(s6), "+r"(s7));
    }
    t = now() - t;
    return n * 72.0 * 64 * 8 / t;
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
    clock = lambda: lib.probe_clock_hz(50_000_000)
    hz = max(clock() for _ in range(trials))

    def per_cycle(fn, n):
        # each run between two clock measurements (turbo moves with the load): the best ratio
        return max(fn(n) / max(clock(), clock()) for _ in range(trials))

    return {
        "clock_hz": hz,
        "avx2_xorpop_bits_per_cycle": per_cycle(lib.probe_avx2_xorpop, 100_000),
        "scalar_xorpop_bits_per_cycle": per_cycle(lib.probe_scalar_xorpop, 50_000),
        "fma_macs_per_cycle": per_cycle(lib.probe_fma, 10_000_000),
    }


if __name__ == "__main__":
    print(json.dumps(probe(), indent=2))
