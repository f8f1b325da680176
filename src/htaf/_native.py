"""The packed-bit BNN kernel in C (``csrc/bconv.c``), compiled once per machine and loaded with
:mod:`ctypes`; what :mod:`htaf.deploy`'s backend ``"c"`` runs.

* :func:`pack_nchw` — sign and pack a float32 NCHW tensor into per-pixel 64-bit words;
* :class:`BConv` — a binary convolution (or linear layer) on packed pixels: XOR + popcount over
  an im2col row, exact border handling, and a fused epilogue (float ``· α + b``, max-pooling on
  the integers, or BatchNorm + sign folded into a per-channel threshold that writes packed
  bits for the next layer);
* :func:`xor_popcount` — ``Σ popcount(a ⊕ w)`` of two word matrices (the general fallback).

The library is built for the architecture's baseline (no ``-march=native``) and picks its
microkernel at run time from the CPU's flags: ``"avx2"`` (nibble lookup with ``vpshufb``),
``"popcnt"`` (64-bit XOR + hardware ``popcnt``) or ``"generic"`` (portable C). ``HTAF_ISA``
forces one (e.g. to compare them), as does :func:`using_isa` in tests. Threads: a small pthread
pool in the library, ``torch.get_num_threads()`` of them unless told otherwise. Where no C
compiler works (or ``HTAF_NO_NATIVE=1``), :func:`available` is False and ``htaf.deploy`` falls
back to NumPy; :func:`describe` says which.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from pathlib import Path

import numpy as np
import torch

from ._build import build_error, load_library_openmp_first

__all__ = ["available", "xor_popcount", "pack_nchw", "BConv", "ISAS", "isa", "supported_isas",
           "using_isa", "describe", "MODE_FLOAT", "MODE_BITS", "MODE_INT"]

ISAS = ("generic", "popcnt", "avx2")
MODE_FLOAT, MODE_BITS, MODE_INT = 0, 1, 2
_LIB_NAME = "htaf_bconv"
_SOURCE_PATH = Path(__file__).with_name("csrc") / "bconv.c"
# -ffp-contract=off: the float epilogue rounds after · α and after + b, like PyTorch's two ops.
# Built with -fopenmp where possible (load_library_openmp_first): PyTorch's OpenMP threads (see
# csrc/bconv.c); without it, a pthread pool.
_FLAGS = ("-ffp-contract=off", "-pthread")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_forced: str | None = None
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


class _Args(ctypes.Structure):
    """``bconv_t`` of csrc/bconv.c, field for field."""
    _fields_ = [("x", _ptr), *[(k, _i64) for k in "B H W C Cw".split()],
                *[(k, _i64) for k in "kh kw sh sw ph pw dh dw pad_ones zero_pad O O8 K".split()],
                ("wpanel", _ptr), ("wsplit", _ptr), ("wsum", _ptr), ("n", _i64), ("pool", _i64),
                ("mode", _i64), ("alpha", _ptr), ("bias", _ptr), ("thr", _ptr), ("flip", _ptr),
                ("out", _ptr), ("out_bytes", _i64), ("nthreads", _i64), ("isa", _i64)]


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:   # the common case, without the lock
        return _lib
    with _lock:
        if not _tried:
            _tried = True
            source = _SOURCE_PATH.read_text()
            lib = load_library_openmp_first(_LIB_NAME, source, extra_flags=_FLAGS,
                                            libraries=("pthread",), march_native=False)
            if lib is not None:
                lib.htaf_threading.restype = ctypes.c_int
                lib.htaf_isa_supported.argtypes = [_i64]
                lib.htaf_isa_supported.restype = ctypes.c_int
                lib.htaf_best_isa.restype = ctypes.c_int
                lib.htaf_bconv.argtypes = [ctypes.POINTER(_Args)]
                lib.htaf_bconv.restype = ctypes.c_int
                lib.htaf_pack_nchw.argtypes = [_ptr, _i64, _i64, _i64, _ptr, _i64, _i64, _ptr,
                                               _ptr]
                lib.htaf_pack_nchw.restype = None
                for fn in (lib.htaf_xor_popcount_u64, lib.htaf_xor_popcount_u32):
                    fn.argtypes = [_ptr, _ptr, _i64, _i64, _i64, _ptr, _i64]
                    fn.restype = None
            _lib = lib
    return _lib


def available() -> bool:
    """Whether the C kernel compiled and loaded in this process (compiles it on first call)."""
    return _load() is not None


def _require() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError("the native XOR-popcount kernel is not available "
                           f"({build_error(_LIB_NAME) or 'not built'}); use backend 'numpy' or "
                           "'torch'")
    return lib


@functools.cache
def _best(lib: ctypes.CDLL) -> str:
    return ISAS[lib.htaf_best_isa()]


def supported_isas() -> list[str]:
    """The microkernels this CPU can run, portable first (empty without the library)."""
    lib = _load()
    return [] if lib is None else [n for i, n in enumerate(ISAS) if lib.htaf_isa_supported(i)]


def isa() -> str:
    """The microkernel calls use now: forced by :func:`using_isa` or ``HTAF_ISA``, else the
    best this CPU supports. Raises ``RuntimeError`` without the library, ``ValueError`` for a
    forced one the CPU lacks."""
    lib = _require()
    name = _forced or os.environ.get("HTAF_ISA", "").strip().lower() or None
    if name is None:
        return _best(lib)
    if name not in ISAS:
        raise ValueError(f"HTAF_ISA must be one of {', '.join(ISAS)}, got {name!r}")
    if not lib.htaf_isa_supported(ISAS.index(name)):
        raise ValueError(f"this CPU cannot run the {name!r} kernel (supported: "
                         f"{', '.join(supported_isas())})")
    return name


@contextlib.contextmanager
def using_isa(name: str | None):
    """Force a microkernel (``"generic"``, ``"popcnt"``, ``"avx2"``) inside the block."""
    global _forced
    if name is not None and name not in ISAS:
        raise ValueError(f"isa must be one of {', '.join(ISAS)}, got {name!r}")
    previous, _forced = _forced, name
    try:
        isa()  # fail now for a kernel this CPU lacks
        yield
    finally:
        _forced = previous


def describe(threads: bool = True) -> str:
    """One line for users: which packed backend runs and why (and on how many threads)."""
    if not available():
        return (f"NumPy fallback (the C kernel is not available: "
                f"{build_error(_LIB_NAME) or 'not built'})")
    names = {"avx2": "AVX2 nibble-lookup popcount", "popcnt": "scalar 64-bit popcnt",
             "generic": "portable C popcount"}
    pool = "OpenMP" if _load().htaf_threading() else "pthreads"
    if not threads:
        return f"C kernel, {names[isa()]} ({pool} threads)"
    n = torch.get_num_threads()
    return f"C kernel, {names[isa()]}, {n} thread{'s' if n != 1 else ''} ({pool})"


def _threads(nthreads: int | None) -> int:
    return max(1, torch.get_num_threads() if nthreads is None else int(nthreads))


# -- the kernels ---------------------------------------------------------------------------------
def xor_popcount(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Σ_j popcount(a[m, j] ⊕ w[o, j])``: ``a [M, W]``, ``w [O, W]`` (same integer dtype, 32 or
    64 bits) → int32 ``[M, O]``. Raises ``RuntimeError`` if the kernel is not available."""
    lib = _require()
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
    fn(a.ctypes.data, w.ctypes.data, M, O, W, out.ctypes.data, ISAS.index(isa()))
    return out


def pack_nchw(x: torch.Tensor, nthreads: int | None = None, *,
              bounds: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
    """``x >= 0`` of a float32 ``[B, C, H, W]`` (or ``[B, C]``) CPU tensor, packed per pixel:
    int64 ``[B, H, W, ⌈C/64⌉]`` words, channel c at bit c mod 64 of word c // 64 (NaN → 0).
    With ``bounds = (lo, hi)`` (float32 ``[C]``) the bit is ``lo[c] <= x <= hi[c]`` instead."""
    lib = _require()
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() not in (2, 4):
        raise ValueError(f"pack_nchw needs a float32 CPU tensor [B, C, H, W] or [B, C], got "
                         f"{x.dtype} {tuple(x.shape)} on {x.device}")
    x4 = x.reshape(*x.shape, 1, 1) if x.dim() == 2 else x
    x4 = x4.contiguous()
    B, C, H, W = x4.shape
    lo = hi = None
    if bounds is not None:
        lo, hi = (np.ascontiguousarray(b, np.float32) for b in bounds)
        if lo.shape != (C,) or hi.shape != (C,):
            raise ValueError(f"bounds must be two float32 arrays of {C}")
    out = torch.empty(B, H, W, -(-C // 64), dtype=torch.int64)
    lib.htaf_pack_nchw(x4.data_ptr(), B, C, H * W, out.data_ptr(), _threads(nthreads),
                       ISAS.index(isa()), None if lo is None else lo.ctypes.data,
                       None if hi is None else hi.ctypes.data)
    return out


def _pack_bool64(bits: np.ndarray) -> np.ndarray:
    """bool ``[..., C]`` → uint64 ``[..., ⌈C/64⌉]`` (little-endian bit order, zero-filled)."""
    packed = np.packbits(bits, axis=-1, bitorder="little")
    pad = -packed.shape[-1] % 8
    if pad:
        packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, pad)])
    return np.ascontiguousarray(packed).view(np.uint64)


class BConv:
    """A binary convolution on packed pixels, weights prepared once for every microkernel.

    ``bits``: bool ``[O, kh, kw, C]`` weight signs (True = +1). ``pad_value`` is what the
    padding of the binarized input holds: 0 (true zero padding, corrected exactly), +1 or −1.
    A linear layer is a 1×1 convolution on a 1×1 image (or, after a flatten of a ``[C, h, w]``
    map, a 1×(h·w) convolution over the map's pixels taken as one row, its weights reordered
    to ``[O, 1, h·w, C]``). Memory: the weights are kept twice, as 64-bit words for the scalar
    kernels and split into nibbles for AVX2 (3 bytes per 8 binary weights, at run time only).
    """

    def __init__(self, bits: torch.Tensor, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                 pad_value: float = 0.0):
        if bits.dim() != 4 or bits.dtype != torch.bool:
            raise ValueError(f"bits must be a bool [O, kh, kw, C] tensor, got {bits.dtype} "
                             f"{tuple(bits.shape)}")
        O, kh, kw, C = bits.shape
        if kh * kw > 64 and any(padding):
            raise ValueError(f"padded kernels of more than 64 taps are not supported, got "
                             f"{kh}x{kw}")
        if pad_value not in (0, 1, -1):
            raise ValueError(f"pad_value must be 0, 1 or -1, got {pad_value!r}")
        self.O, self.kh, self.kw, self.C = O, kh, kw, C
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.pad_value = pad_value
        self.Cw = -(-C // 64)
        self.K = kh * kw * self.Cw
        self.O8, O32 = -(-O // 8), -(-O // 32)
        b = bits.cpu().numpy()
        words = _pack_bool64(b).reshape(O, self.K)
        rows = np.zeros((O32 * 32, self.K), np.uint64)
        rows[:O] = words
        # scalar panel [O8][K][8]: the 8 channels' words of one k side by side
        self.wpanel = np.ascontiguousarray(rows[:self.O8 * 8].reshape(self.O8, 8, self.K)
                                           .transpose(0, 2, 1))
        # AVX2 panel [O32][K][lo, hi][8 registers][4 channels][8 B]: the low and high nibbles of
        # every byte, channel 4j + q in qword q of register j
        byt = rows.view(np.uint8).reshape(O32, 8, 4, self.K, 8)
        split = np.stack([byt & 0x0F, byt >> 4], axis=4)  # [O32, 8, 4, K, 2, 8]
        self.wsplit = np.ascontiguousarray(split.transpose(0, 3, 4, 1, 2, 5))
        # Σ_c w_b[o, c, tap] = 2·popcount − C, for true zero padding: [O8][taps][8]
        wsum = np.zeros((self.O8 * 8, kh * kw), np.int32)
        wsum[:O] = 2 * b.reshape(O, kh * kw, C).sum(-1, dtype=np.int32) - C
        self.wsum = np.ascontiguousarray(wsum.reshape(self.O8, 8, kh * kw).transpose(0, 2, 1))

    def out_size(self, H: int, W: int) -> tuple[int, int]:
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        return ((H + 2 * ph - dh * (self.kh - 1) - 1) // sh + 1,
                (W + 2 * pw - dw * (self.kw - 1) - 1) // sw + 1)

    def __call__(self, x: torch.Tensor, *, mode: int = MODE_FLOAT, pool: int = 1,
                 alpha: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 thr: np.ndarray | None = None, flip: np.ndarray | None = None,
                 nthreads: int | None = None) -> torch.Tensor:
        """``x``: int64 ``[B, H, W, Cw]`` packed pixels. ``pool``: max-pool window (= stride;
        floor mode) applied on the integers. Returns, by ``mode``:

        * ``MODE_FLOAT`` — float32 NCHW ``[B, O, H', W']``: ``dot · α + b`` (α, b float32
          ``[O]`` or None, applied in that order with two roundings);
        * ``MODE_BITS`` — int64 ``[B, H', W', ⌈O/64⌉]``: bit o = ``(dot >= thr[o]) ⊕ flip[o]``
          (``thr``, ``flip`` int32 ``[O8·8]``, padding channels thr = 2³¹−1, flip = 0);
        * ``MODE_INT`` — int32 ``[B, H', W', O]``: the exact dot products.

        :meth:`bind` does the argument work once for repeated calls.
        """
        return self.bind(mode=mode, pool=pool, alpha=alpha, bias=bias, thr=thr,
                         flip=flip)(x, nthreads)

    def bind(self, *, mode: int = MODE_FLOAT, pool: int = 1, alpha: torch.Tensor | None = None,
             bias: torch.Tensor | None = None, thr: np.ndarray | None = None,
             flip: np.ndarray | None = None) -> _Bound:
        """This convolution with its epilogue fixed: a callable ``(x, nthreads=None)``."""
        return _Bound(self, mode, pool, alpha, bias, thr, flip)


class _Bound:
    """A :class:`BConv` with its epilogue arguments checked and laid out once; each call fills
    in the input, output and thread count (a few microseconds of Python)."""

    def __init__(self, conv: BConv, mode, pool, alpha, bias, thr, flip):
        if mode not in (MODE_FLOAT, MODE_BITS, MODE_INT):
            raise ValueError(f"unknown mode {mode!r}")
        if not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool must be a positive int, got {pool!r}")
        self.conv, self.mode, self.pool = conv, mode, pool
        self.spec = (alpha, bias, thr, flip)
        c = conv
        self.keep: list = []   # everything the C code reads stays referenced
        self.args = _Args(B=0, H=0, W=0, C=c.C, Cw=c.Cw, kh=c.kh, kw=c.kw,
                          sh=c.stride[0], sw=c.stride[1], ph=c.padding[0], pw=c.padding[1],
                          dh=c.dilation[0], dw=c.dilation[1], pad_ones=int(c.pad_value > 0),
                          zero_pad=int(c.pad_value == 0 and any(c.padding)), O=c.O, O8=c.O8,
                          K=c.K, wpanel=c.wpanel.ctypes.data,
                          wsplit=c.wsplit.ctypes.data, wsum=c.wsum.ctypes.data,
                          n=c.kh * c.kw * c.C, pool=pool, mode=mode)
        if mode == MODE_FLOAT:
            for field, t in (("alpha", alpha), ("bias", bias)):
                if t is not None:
                    t = t.detach().to(torch.float32).contiguous()
                    if t.numel() != c.O or t.device.type != "cpu":
                        raise ValueError(f"{field} must be a CPU tensor of {c.O} elements")
                    self.keep.append(t)
                    setattr(self.args, field, t.data_ptr())
        elif mode == MODE_BITS:
            if thr is None or flip is None or len(thr) != c.O8 * 8 or len(flip) != len(thr):
                raise ValueError(f"thr and flip must be int32 arrays of {c.O8 * 8}")
            thr, flip = np.ascontiguousarray(thr, np.int32), np.ascontiguousarray(flip, np.int32)
            self.keep += [thr, flip]
            self.args.thr, self.args.flip = thr.ctypes.data, flip.ctypes.data
            self.words = -(-c.O // 64)
            self.args.out_bytes = 8 * self.words
            # the kernel writes the first O8 bytes of each pixel; the rest must be zero
            self.make = torch.empty if c.O8 == 8 * self.words else torch.zeros

    def __reduce__(self):
        # the ctypes arguments hold raw pointers: a copy (deepcopy, pickle) binds afresh
        return _Bound, (self.conv, self.mode, self.pool, *self.spec)

    def __call__(self, x: torch.Tensor, nthreads: int | None = None) -> torch.Tensor:
        c, a = self.conv, self.args
        if x.dtype != torch.int64 or x.dim() != 4 or x.shape[3] != c.Cw or not x.is_cpu:
            raise ValueError(f"x must be packed CPU pixels int64 [B, H, W, {c.Cw}], got "
                             f"{x.dtype} {tuple(x.shape)}")
        x = x.contiguous()
        B, H, W, _ = x.shape
        HO, WO = c.out_size(H, W)
        if HO < 1 or WO < 1:
            raise ValueError(f"input {H}x{W} is smaller than the kernel")
        PH, PW = HO // self.pool, WO // self.pool
        if self.mode == MODE_FLOAT:
            out = torch.empty(B, c.O, PH, PW)
        elif self.mode == MODE_BITS:
            out = self.make(B, PH, PW, self.words, dtype=torch.int64)
        else:
            out = torch.empty(B, PH, PW, c.O, dtype=torch.int32)
        a = _Args.from_buffer_copy(a)   # a private copy: calls may come from several threads
        a.x, a.B, a.H, a.W, a.out = x.data_ptr(), B, H, W, out.data_ptr()
        a.nthreads, a.isa = _threads(nthreads), ISAS.index(isa())
        rc = _require().htaf_bconv(ctypes.byref(a))
        if rc == 2:
            raise MemoryError("htaf_bconv: out of memory for its scratch buffers")
        if rc != 0:
            raise ValueError("htaf_bconv rejected its arguments (kernel size, isa or buffers)")
        return out


if __name__ == "__main__":  # `python -m htaf._native`: build now (e.g. in a Dockerfile), report
    print(describe())
    if available():
        print(f"microkernels this CPU runs: {', '.join(supported_isas())}")
