"""A fused XOR + popcount kernel in C for the packed-bit BNN path (``htaf.deploy``, backend
``"c"``), compiled on first use with the system C compiler and loaded with :mod:`ctypes`.

NumPy has no fused ``popcount(a ⊕ w)`` reduction: the NumPy backend makes three passes over a
materialized ``[words, rows, out]`` block (XOR, ``bitwise_count``, sum), about 1 ns a word on one
core. The loop below keeps everything in registers (hardware ``popcnt`` with
``-march=native``), 7–10× faster. The library is built once per process into a temporary folder
(a fraction of a second) and the folder is removed once loaded, so nothing compiled for one CPU
is ever reused on another. If no compiler works, :func:`available` is False and
``backend="auto"`` falls back to NumPy. Set ``HTAF_NO_NATIVE=1`` to never compile.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading

import numpy as np

__all__ = ["available", "xor_popcount"]

# out[m, o] = Σ_j popcount(a[m, j] ⊕ w[o, j]); four outputs at a time share each loaded a word.
_SOURCE = r"""
#include <stdint.h>
#define KERNEL(NAME, T, POPCNT)                                                          \
void NAME(const T *a, const T *w, int32_t *out, int64_t M, int64_t O, int64_t W) {       \
    for (int64_t m = 0; m < M; ++m) {                                                    \
        const T *ar = a + m * W;                                                         \
        int32_t *orow = out + m * O;                                                     \
        int64_t o = 0;                                                                   \
        for (; o + 4 <= O; o += 4) {                                                     \
            const T *w0 = w + o * W, *w1 = w0 + W, *w2 = w1 + W, *w3 = w2 + W;           \
            int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                      \
            for (int64_t j = 0; j < W; ++j) {                                            \
                T x = ar[j];                                                             \
                s0 += POPCNT(x ^ w0[j]); s1 += POPCNT(x ^ w1[j]);                        \
                s2 += POPCNT(x ^ w2[j]); s3 += POPCNT(x ^ w3[j]);                        \
            }                                                                            \
            orow[o] = s0; orow[o + 1] = s1; orow[o + 2] = s2; orow[o + 3] = s3;          \
        }                                                                                \
        for (; o < O; ++o) {                                                             \
            const T *wr = w + o * W;                                                     \
            int32_t s = 0;                                                               \
            for (int64_t j = 0; j < W; ++j) s += POPCNT(ar[j] ^ wr[j]);                  \
            orow[o] = s;                                                                 \
        }                                                                                \
    }                                                                                    \
}
KERNEL(htaf_xor_popcount_u64, uint64_t, __builtin_popcountll)
KERNEL(htaf_xor_popcount_u32, uint32_t, __builtin_popcount)
"""
_FLAGS = (["-O3", "-march=native"], ["-O3"])  # the second where -march=native is refused
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _compile() -> ctypes.CDLL | None:
    if os.environ.get("HTAF_NO_NATIVE"):
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    tmp = tempfile.mkdtemp(prefix="htaf-native-")
    try:
        src, lib = os.path.join(tmp, "xor_popcount.c"), os.path.join(tmp, "xor_popcount.so")
        with open(src, "w") as f:
            f.write(_SOURCE)
        for flags in _FLAGS:
            cmd = [cc, *flags, "-shared", "-fPIC", "-o", lib, src]
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=120)
            except (OSError, subprocess.SubprocessError):
                return None
            if done.returncode == 0:
                dll = ctypes.CDLL(lib)  # mapped: the file can go
                ptr, i64 = ctypes.c_void_p, ctypes.c_int64
                for fn in (dll.htaf_xor_popcount_u64, dll.htaf_xor_popcount_u32):
                    fn.argtypes = [ptr, ptr, ptr, i64, i64, i64]
                    fn.restype = None
                return dll
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _lib, _tried = _compile(), True
    return _lib


def available() -> bool:
    """Whether the C kernel compiled and loaded in this process (compiles it on first call)."""
    return _load() is not None


def xor_popcount(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Σ_j popcount(a[m, j] ⊕ w[o, j])``: ``a [M, W]``, ``w [O, W]`` (same integer dtype, 32 or
    64 bits) → int32 ``[M, O]``. Raises ``RuntimeError`` if the kernel is not available."""
    lib = _load()
    if lib is None:
        raise RuntimeError("the native XOR-popcount kernel is not available (no working C "
                           "compiler, or HTAF_NO_NATIVE is set); use backend 'numpy' or 'torch'")
    if a.dtype != w.dtype or a.dtype.itemsize not in (4, 8) or a.dtype.kind not in "iu":
        raise TypeError(f"xor_popcount needs two int32/int64 arrays of one dtype, got "
                        f"{a.dtype} and {w.dtype}")
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[1]:
        raise ValueError(f"xor_popcount needs a [M, W] and w [O, W], got {a.shape} and {w.shape}")
    a, w = np.ascontiguousarray(a), np.ascontiguousarray(w)
    M, W = a.shape
    O = w.shape[0]
    out = np.empty((M, O), np.int32)
    fn = lib.htaf_xor_popcount_u64 if a.dtype.itemsize == 8 else lib.htaf_xor_popcount_u32
    fn(a.ctypes.data, w.ctypes.data, out.ctypes.data, M, O, W)
    return out
