"""A fused XOR + popcount kernel in C for the packed-bit BNN path (``htaf.deploy``, backend
``"c"``), compiled on first use with the system C compiler and loaded with :mod:`ctypes`.

NumPy has no fused ``popcount(a ⊕ w)`` reduction: the NumPy backend makes three passes over a
materialized ``[words, rows, out]`` block (XOR, ``bitwise_count``, sum), about 1 ns a word on one
core. The loop below keeps everything in registers (hardware ``popcnt`` with
``-march=native``), 7–10× faster. The library is built once per machine and cached
(:mod:`htaf._build`). If no compiler works, :func:`available` is False and ``backend="auto"``
falls back to NumPy. Set ``HTAF_NO_NATIVE=1`` to never compile.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from ._build import load_library

__all__ = ["available", "xor_popcount", "xnor_conv_nchw"]

# out[m, o] = Σ_j popcount(a[m, j] ⊕ w[o, j]); four outputs at a time share each loaded a word.
# The conv variant writes float32 (n − 2·popcount + corr[m mod L, o]) straight into NCHW
# ([B, Ot, L] with m = b·L + l), so no int32 [M, O] block is made, transposed and converted.
_SOURCE = r"""
#include <stdint.h>
#define KERNEL(NAME, T, POPCNT, STORE_ARGS, STORE)                                       \
void NAME(const T *a, const T *w, int64_t M, int64_t O, int64_t W STORE_ARGS) {          \
    for (int64_t m = 0; m < M; ++m) {                                                    \
        const T *ar = a + m * W;                                                         \
        int64_t o = 0;                                                                   \
        for (; o + 4 <= O; o += 4) {                                                     \
            const T *w0 = w + o * W, *w1 = w0 + W, *w2 = w1 + W, *w3 = w2 + W;           \
            int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                      \
            for (int64_t j = 0; j < W; ++j) {                                            \
                T x = ar[j];                                                             \
                s0 += POPCNT(x ^ w0[j]); s1 += POPCNT(x ^ w1[j]);                        \
                s2 += POPCNT(x ^ w2[j]); s3 += POPCNT(x ^ w3[j]);                        \
            }                                                                            \
            STORE(o, s0); STORE(o + 1, s1); STORE(o + 2, s2); STORE(o + 3, s3);          \
        }                                                                                \
        for (; o < O; ++o) {                                                             \
            const T *wr = w + o * W;                                                     \
            int32_t s = 0;                                                               \
            for (int64_t j = 0; j < W; ++j) s += POPCNT(ar[j] ^ wr[j]);                  \
            STORE(o, s);                                                                 \
        }                                                                                \
    }                                                                                    \
}
#define COUNT_ARGS , int32_t *out
#define COUNT_STORE(o, s) (out[m * O + (o)] = (s))
#define CONV_ARGS , int64_t L, int64_t Ot, int32_t n, const int32_t *corr, float *out
#define CONV_STORE(o, s) (out[((m / L) * Ot + (o)) * L + m % L] =                         \
    (float)(n - 2 * (s) + (corr ? corr[(m % L) * Ot + (o)] : 0)))
KERNEL(htaf_xor_popcount_u64, uint64_t, __builtin_popcountll, COUNT_ARGS, COUNT_STORE)
KERNEL(htaf_xor_popcount_u32, uint32_t, __builtin_popcount, COUNT_ARGS, COUNT_STORE)
KERNEL(htaf_xnor_conv_u64, uint64_t, __builtin_popcountll, CONV_ARGS, CONV_STORE)
KERNEL(htaf_xnor_conv_u32, uint32_t, __builtin_popcount, CONV_ARGS, CONV_STORE)
"""
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    with _lock:
        if not _tried:
            _lib, _tried = load_library("htaf_xor_popcount", _SOURCE), True
            if _lib is not None:
                ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
                for fn in (_lib.htaf_xor_popcount_u64, _lib.htaf_xor_popcount_u32):
                    fn.argtypes = [ptr, ptr, i64, i64, i64, ptr]
                    fn.restype = None
                for fn in (_lib.htaf_xnor_conv_u64, _lib.htaf_xnor_conv_u32):
                    fn.argtypes = [ptr, ptr, i64, i64, i64, i64, i64, i32, ptr, ptr]
                    fn.restype = None
    return _lib


def available() -> bool:
    """Whether the C kernel compiled and loaded in this process (compiles it on first call)."""
    return _load() is not None


def xor_popcount(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Σ_j popcount(a[m, j] ⊕ w[o, j])``: ``a [M, W]``, ``w [O, W]`` (same integer dtype, 32 or
    64 bits) → int32 ``[M, O]``. Raises ``RuntimeError`` if the kernel is not available."""
    lib = _checked(a, w)
    a, w = np.ascontiguousarray(a), np.ascontiguousarray(w)
    M, W = a.shape
    O = w.shape[0]
    out = np.empty((M, O), np.int32)
    fn = lib.htaf_xor_popcount_u64 if a.dtype.itemsize == 8 else lib.htaf_xor_popcount_u32
    fn(a.ctypes.data, w.ctypes.data, M, O, W, out.ctypes.data)
    return out


def xnor_conv_nchw(a: np.ndarray, w: np.ndarray, n: int, corr: np.ndarray | None,
                   out: np.ndarray) -> None:
    """Write ``n − 2·popcount(a[m] ⊕ w[o]) + corr[l, o]`` as float32 into ``out[b, o, l]``
    (``m = b·L + l``): ``a [B·L, W]``, ``w [O, W]``, ``corr`` int32 ``[L, O]`` or None, ``out``
    C-contiguous float32 ``[B, O, L]`` (the NCHW output of a convolution, ``L = H·W``)."""
    lib = _checked(a, w)
    a, w = np.ascontiguousarray(a), np.ascontiguousarray(w)
    M, W = a.shape
    O = w.shape[0]
    if (out.dtype != np.float32 or out.ndim != 3 or not out.flags.c_contiguous
            or out.shape[1] != O or out.shape[0] * out.shape[2] != M):
        raise ValueError(f"out must be a C-contiguous float32 [B, {O}, L] array with B·L = {M}, "
                         f"got {out.dtype} {out.shape}")
    L = out.shape[2]
    if corr is not None:
        if corr.shape != (L, O):
            raise ValueError(f"corr must be [L, O] = [{L}, {O}], got {corr.shape}")
        corr = np.ascontiguousarray(corr, dtype=np.int32)
    fn = lib.htaf_xnor_conv_u64 if a.dtype.itemsize == 8 else lib.htaf_xnor_conv_u32
    fn(a.ctypes.data, w.ctypes.data, M, O, W, L, O, n,
       None if corr is None else corr.ctypes.data, out.ctypes.data)


def _checked(a: np.ndarray, w: np.ndarray) -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError("the native XOR-popcount kernel is not available (no working C "
                           "compiler, or HTAF_NO_NATIVE is set); use backend 'numpy' or 'torch'")
    if a.dtype != w.dtype or a.dtype.itemsize not in (4, 8) or a.dtype.kind not in "iu":
        raise TypeError(f"xor_popcount needs two int32/int64 arrays of one dtype, got "
                        f"{a.dtype} and {w.dtype}")
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[1]:
        raise ValueError(f"xor_popcount needs a [M, W] and w [O, W], got {a.shape} and {w.shape}")
    return lib
