r"""Fused CPU kernels for the HTAF op family and the multi-step LIF neuron (plain C, ``ctypes``).

The PyTorch references (each surrogate class's ``derivative``/``primitive`` in
:mod:`htaf.surrogates`, and the neurons' time loop in :mod:`htaf.nn.spiking`) run about fifteen
elementwise passes with a temporary each; the kernels here make one pass over memory per op, with
every surrogate's derivative computed in registers:

* :func:`step` — 1[x ≥ 0] or sign(x) (sign(0) = +1), NaN stays NaN;
* :func:`htaf_forward` — HTAF(x) = σ(α·x + β·tanh(γ·x));
* :func:`htaf_forward_grad` — HTAF(x) and its derivative from one evaluation (smooth mode's
  forward on the CPU, where the math and not memory bounds the time);
* :func:`surrogate_backward` — ``grad · scale · g'(x)`` for HTAF and every baseline (:data:`KINDS`);
* :func:`lif_forward` / :func:`lif_backward` — the multi-step LIF/IF neuron and its BPTT with the
  semantics of :mod:`htaf.kernels.lif` (the backward recomputes H from X, the only saved sequence;
  dL/dk for PLIF).

**Why plain C** (measured on the 2-core AMD EPYC, Zen 3 with AVX2, this was written on; details
and numbers in ``docs/kernels.md``): gcc builds the source in about 4 s of CPU, once per machine
(cached by :mod:`htaf._build`), where a minimal PyTorch C++ extension over ATen's vectorised math
took 60 s, too much for CI and a user's first call; ``torch.compile`` of the formulas (Inductor's
C++) ran 1.3–3× slower in the same benchmark and compiles per new graph and shape. gcc vectorises
``tanh``/``exp`` only with ``-ffast-math``, which breaks NaN and inf, so the one transcendental,
e^v for v ≤ 0, is our own branch-free polynomial (about 1 ulp; subnormal results correctly
rounded), with NaN and ±inf handled explicitly; every loop is vectorised by the compiler
(``-O3 -march=native``, falling back to ``-O3``), except HTAF's two base-2 exponentials on AVX-512,
written with intrinsics (``vscalefps``, ``vrndscaleps``: HTAF 15 % faster) and giving the same
bits as the portable C, which ``HTAF_NO_SIMD=1`` builds instead. Outputs of 32 MiB or more are
written with streaming stores (x86; HTAF's only on AVX-512), which skip reading each line before
writing it (:func:`set_stream_min_bytes`).

**Numerics.** The formulas and their NaN/±inf conventions are the references', written in the
same stable form as the Triton kernels (``tanh(u) = sign(u)(1 − t)/(1 + t)``,
``sech²(u) = 4t/(1 + t)²``, ``σ(z)σ(−z) = e/(1 + e)²``; ``t``, ``e`` exponentials of non-positive
numbers). float32, float16 and bfloat16 are computed in float32 and rounded once on the store
(round to nearest even, as torch rounds); float64 is computed in float64 (libm's ``exp``). Mixed
dtypes (a float32 gradient of a bfloat16 input) take the reference.

**Layout.** A dense tensor (contiguous, transposed, channels-last) is processed as the flat block
of memory it is and the result keeps its strides (what ``torch.empty_like`` promises); other
inputs are first copied into the result's layout. Outputs of 32 MiB or more live in memory the
kernels keep and reuse (:mod:`htaf.kernels.cpu_pool`: no page faults on every call). The LIF works
on ``[T, N]`` rows.

**Threads.** A call uses ``torch.get_num_threads()`` threads, but only when every thread gets
enough work (thresholds in the C source, ``GRAIN_*``); results do not depend on the thread count.
Built with ``-fopenmp`` where the compiler has it (:func:`uses_openmp` says), the threads are
OpenMP's: ``libgomp.so.1`` resolves to the copy PyTorch already loaded, so the kernels share
PyTorch's pool. Threads of our own (the fallback, or ``HTAF_NO_OPENMP=1``: one POSIX thread per
piece) compete with PyTorch's OpenMP workers, which spin for a while after each parallel region.

``HTAF_NO_NATIVE=1`` (or no C compiler) leaves :func:`available` False; the ops then keep the
PyTorch reference, which remains the test oracle. :func:`register_cpu_kernels` installs these
functions as the CPU implementation of ``torch.ops.htaf.*``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from importlib import resources

import torch

from .._build import build_error, env_flag, load_library_openmp_first
from .cpu_pool import empty_like
from .ops import as_layout_of

__all__ = [
    "KINDS",
    "available",
    "backend_error",
    "constants",
    "htaf_forward",
    "lif_backward",
    "lif_forward",
    "register_cpu_kernels",
    "step",
    "surrogate_backward",
]

#: Surrogate kind ids of :func:`surrogate_backward` and :func:`lif_backward`, and the raw
#: hyperparameters each takes, in order.
KINDS: dict[str, tuple[int, tuple[str, ...]]] = {
    "htaf": (0, ("alpha", "beta", "gamma")),
    "sigmoid": (1, ("alpha",)),
    "atan": (2, ("alpha",)),
    "fast_sigmoid": (3, ("slope",)),
    "super_spike": (4, ("alpha",)),
    "piecewise_quadratic": (5, ("alpha",)),
    "piecewise_exp": (6, ("alpha",)),
    "erf": (7, ("alpha",)),
    "triangle": (8, ("alpha",)),
    "rect": (9, ("alpha",)),
    "ste": (10, ("clip",)),
    "approx_sign": (11, ()),
    "swish_sign": (12, ("beta",)),
}
_NAMES = {kid: name for name, (kid, _) in KINDS.items()}

_LIBS = {torch.float64: "htaf_cpu_f64", None: "htaf_cpu_f32"}
_FLAGS = ("-pthread", "-fno-trapping-math", "-fno-math-errno", "-Werror=implicit-function-declaration")
_STORAGE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 0}
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


# ----------------------------------------------------------------------------- loading
def _source() -> str:
    return resources.files(__package__).joinpath("cpu_kernels.c").read_text(encoding="utf-8")


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    sig = {
        "htaf_cpu_threading": ([], i32),
        "htaf_cpu_avx512": ([], i32),
        "htaf_cpu_set_stream_min": ([i64], None),
        "htaf_mul": ([p, p, p, i64, i32], None),
        "htaf_step": ([p, p, i64, i32, i32, i32], None),
        "htaf_forward": ([p, p, i64, i32, f64, f64, f64, i32], None),
        "htaf_forward_grad": ([p, p, p, i64, i32, f64, f64, f64, f64, i32], None),
        "htaf_surrogate_backward": ([p, p, p, i64, i32, i32, f64, f64, f64, f64, i32], None),
        "htaf_lif_forward": ([p, p, p, p, i64, i64, i32, f64, f64, f64, i32, i32, i32, i32],
                             i32),
        "htaf_lif_backward": ([p, p, p, p, p, p, p, i64, i64, i32, f64, f64, f64, i32, i32, i32,
                               i32, i32, f64, f64, f64, f64, i32, i32], i32),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def _lib(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The library serving ``dtype`` (built and loaded on first use), or None."""
    name = _LIBS[torch.float64 if dtype == torch.float64 else None]
    lib = _loaded.get(name)
    if lib is None and name not in _loaded:
        with _lock:
            if name not in _loaded:
                flags = (_FLAGS + (("-DHTAF_F64=1",) if dtype == torch.float64 else ())
                         + (("-DHTAF_NO_SIMD=1",) if env_flag("HTAF_NO_SIMD") else ()))
                lib = load_library_openmp_first(name, _source(), extra_flags=flags,
                                                libraries=("m",))
                if lib is not None:
                    _declare(lib)
                    lib.htaf_cpu_set_stream_min(_stream_min)
                _loaded[name] = lib
            lib = _loaded[name]
    return lib


def available() -> bool:
    """Whether the native kernels are compiled and loaded (compiles them on the first call)."""
    return _lib(torch.float32) is not None


def uses_openmp() -> bool:
    """Whether the loaded kernels run their threads on OpenMP (PyTorch's pool) rather than a
    POSIX thread per piece (no ``-fopenmp``, or ``HTAF_NO_OPENMP=1``)."""
    lib = _lib(torch.float32)
    return lib is not None and bool(lib.htaf_cpu_threading())


def uses_avx512() -> bool:
    """Whether HTAF's exponentials run the AVX-512 intrinsics (an AVX-512 CPU, the float32
    library, ``HTAF_NO_SIMD`` unset) rather than the portable C (the same bits either way)."""
    lib = _lib(torch.float32)
    return lib is not None and bool(lib.htaf_cpu_avx512())


def backend_error() -> str | None:
    """Why the native kernels are not available (None when they are, or were not tried)."""
    return build_error(_LIBS[None])


def supports(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can serve these tensors: CPU, one float dtype, library loaded."""
    dtype = tensors[0].dtype
    return (dtype in _STORAGE and all(t.device.type == "cpu" and t.dtype == dtype
                                      for t in tensors) and _lib(dtype) is not None)


def _require(*tensors: torch.Tensor) -> ctypes.CDLL:
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"htaf.kernels.cpu takes CPU tensors, got one on {t.device}")
        if t.dtype not in _STORAGE:
            raise TypeError(f"htaf.kernels.cpu takes float32/float64/float16/bfloat16, got "
                            f"{t.dtype}")
    if any(t.dtype != tensors[0].dtype for t in tensors):
        raise TypeError("htaf.kernels.cpu needs tensors of one dtype, got "
                        + ", ".join(str(t.dtype) for t in tensors))
    lib = _lib(tensors[0].dtype)
    if lib is None:
        raise RuntimeError(f"the native CPU kernels are not available: {backend_error()}")
    return lib


# ----------------------------------------------------------------------------- layout
def _threads() -> int:
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- elementwise ops
def step(x: torch.Tensor, signed: bool) -> torch.Tensor:
    """1[x ≥ 0] (``signed=False``) or sign(x) with sign(0) = +1; NaN stays NaN; x's dtype."""
    lib = _require(x)
    out = empty_like(x)
    if out.numel():
        x = as_layout_of(x, out)
        lib.htaf_step(x.data_ptr(), out.data_ptr(), out.numel(), _STORAGE[x.dtype],
                      bool(signed), _threads())
    return out


def htaf_forward(x: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """HTAF(x) = σ(α·x + β·tanh(γ·x)), one pass; x's dtype and layout."""
    lib = _require(x)
    out = empty_like(x)
    if out.numel():
        x = as_layout_of(x, out)
        lib.htaf_forward(x.data_ptr(), out.data_ptr(), out.numel(), _STORAGE[x.dtype],
                         float(alpha), float(beta), float(gamma), _threads())
    return out


def htaf_forward_grad(x: torch.Tensor, alpha: float, beta: float, gamma: float,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """HTAF(x) and ``scale``·HTAF'(x) in one pass (x's dtype and layout): the smooth mode's
    forward saving its derivative, so the backward is one multiplication (see the C source)."""
    lib = _require(x)
    y, d = empty_like(x), empty_like(x)
    if y.numel():
        x = as_layout_of(x, y)
        lib.htaf_forward_grad(x.data_ptr(), y.data_ptr(), d.data_ptr(), y.numel(),
                              _STORAGE[x.dtype], float(alpha), float(beta), float(gamma),
                              float(scale), _threads())
    return y, d


def mul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a · b`` for float32/float64 tensors of one shape and layout (``out`` too, if given):
    smooth HTAF's backward from its saved derivative, written with streaming stores when large
    (see the C source's "streaming stores")."""
    lib = _require(a, b)
    if a.dtype not in (torch.float32, torch.float64) or a.shape != b.shape:
        raise ValueError(f"cpu.mul takes float32/float64 tensors of one shape, got "
                         f"{a.dtype} {tuple(a.shape)} and {b.dtype} {tuple(b.shape)}")
    out = empty_like(b) if out is None else out
    if out.shape != a.shape or out.dtype != a.dtype:
        raise ValueError(f"cpu.mul: out must be {a.dtype} {tuple(a.shape)}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    if out.numel():
        a, b = as_layout_of(a, out), as_layout_of(b, out)
        lib.htaf_mul(a.data_ptr(), b.data_ptr(), out.data_ptr(), out.numel(), _threads())
    return out


def set_stream_min_bytes(nbytes: int) -> int:
    """Outputs of at least ``nbytes`` are written with streaming (non-temporal) stores
    (default 32 MiB; see the C source). Returns the previous value; for tests and benchmarks."""
    global _stream_min
    previous, _stream_min = _stream_min, int(nbytes)
    for lib in _loaded.values():
        if lib is not None:
            lib.htaf_cpu_set_stream_min(_stream_min)
    return previous


_stream_min = 32 << 20


def constants(kind: int, params) -> tuple[float, float, float]:
    """The kernel's three float64 constants for surrogate ``kind`` with raw ``params``: (α, β, γ)
    for HTAF, else ``(p, c, 0)`` (see :func:`_constants`)."""
    return _constants(kind, tuple(float(p) for p in params))


@functools.lru_cache(maxsize=256)
def _constants(kind: int, params: tuple[float, ...]) -> tuple[float, float, float]:
    """The kernel form of a surrogate: its raw hyperparameters folded into the two constants
    ``(p, c)`` of the C source's formula for ``kind`` (HTAF keeps α, β, γ), in float64 once per
    value rather than per element."""
    if kind not in _NAMES:
        raise ValueError(f"kind must be one of 0..{len(KINDS) - 1} "
                         f"({', '.join(f'{i} {n}' for i, n in _NAMES.items())}), got {kind!r}")
    name = _NAMES[kind]
    want = len(KINDS[name][1])
    if len(params) != want:
        raise ValueError(f"surrogate {name!r} takes {want} parameter(s) "
                         f"{KINDS[name][1]}, got {params}")
    if kind == 0:
        return params
    a = params[0] if params else 0.0
    p, c = {
        "sigmoid": (a, a),                                 # α·e/(1 + e)², e = e^(−c|x|)
        "atan": (a / 2, math.pi / 2 * a),                  # p / (1 + (c·x)²)
        "fast_sigmoid": (1.0, a),                          # p / (1 + c|x|)²
        "super_spike": (a, 1.0),                           # p / (1 + |x|)²
        "piecewise_quadratic": (a, a * a),                 # max(p − c|x|, 0)
        "piecewise_exp": (a / 2, a),                       # p·e^(−c|x|)
        "erf": (a / math.sqrt(math.pi), a),                # p·e^(−(c·x)²)
        "triangle": (a, 1.0),                              # p·max(1 − |x|, 0)
        "rect": (a, 0.5 / a if a else math.inf),           # p·1[|x| < c]
        "ste": (1.0, a),                                   # 1[|x| ≤ c]
        "approx_sign": (2.0, 2.0),                         # max(p − c|x|, 0)
        "swish_sign": (a / 2, a / 2),                      # p(2 − 2|u|tanh|u|)sech²u, u = c·x
    }[name]
    return float(p), float(c), 0.0


def surrogate_backward(grad: torch.Tensor, x: torch.Tensor, kind: int, params,
                       scale: float) -> torch.Tensor:
    """``grad · scale · g'(x)`` for surrogate ``kind`` (see :data:`KINDS`) with raw ``params``;
    grad's dtype and layout."""
    c = constants(kind, params)
    lib = _require(grad, x)
    out = empty_like(grad)
    if out.numel():
        grad, x = as_layout_of(grad, out), as_layout_of(x, out)
        lib.htaf_surrogate_backward(grad.data_ptr(), x.data_ptr(), out.data_ptr(), out.numel(),
                                    _STORAGE[x.dtype], kind, *c, float(scale), _threads())
    return out


# ----------------------------------------------------------------------------- LIF
def _lif_args(x, v0, k, v_threshold, v_reset, hard, leaky, decay_input):
    if x.dim() != 2 or v0.shape != x.shape[1:]:
        raise ValueError(f"lif kernels take x [T, N] and v0 [N], got {tuple(x.shape)} and "
                         f"{tuple(v0.shape)}")
    return (float(k), float(v_threshold), float(v_reset) if hard else 0.0, bool(hard),
            bool(leaky), bool(decay_input))


def lif_forward(x: torch.Tensor, v0: torch.Tensor, k: float, v_threshold: float, v_reset: float,
                hard: bool, leaky: bool, decay_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-step LIF/IF forward over ``x`` ``[T, N]``: returns S ``[T, N]`` (x's dtype) and the
    last V ``[N]``. Equations as :mod:`htaf.kernels.lif` (``v_reset`` unused unless ``hard``)."""
    lib = _require(x, v0)
    args = _lif_args(x, v0, k, v_threshold, v_reset, hard, leaky, decay_input)
    x, v0 = x.contiguous(), v0.contiguous()
    s = empty_like(x)
    v_last = torch.empty_like(v0)
    T, N = x.shape
    if T == 0 or N == 0:
        return s, v_last.copy_(v0)
    status = lib.htaf_lif_forward(x.data_ptr(), v0.data_ptr(), s.data_ptr(), v_last.data_ptr(),
                                  T, N, _STORAGE[x.dtype], *args, _threads())
    if status != 0:
        raise MemoryError("lif_forward: could not allocate its work buffer")
    return s, v_last


def lif_backward(gs: torch.Tensor, gv_last: torch.Tensor, x: torch.Tensor, v0: torch.Tensor,
                 k: float, v_threshold: float, v_reset: float, hard: bool, leaky: bool,
                 decay_input: bool, detach_reset: bool, kind: int, params, scale: float,
                 need_gk: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BPTT of :func:`lif_forward`: returns dL/dx ``[T, N]``, dL/dv0 ``[N]`` and dL/dk (a float64
    ``[1]`` tensor, zero unless ``need_gk``). H is recomputed from ``x``. The spike's surrogate is
    ``kind`` with raw ``params``, its derivative times ``scale`` (½ for a sign-native surrogate
    used for a step: :meth:`htaf.surrogates.Surrogate.grad_scale`)."""
    c = constants(kind, params)
    lib = _require(gs, gv_last, x, v0)
    args = _lif_args(x, v0, k, v_threshold, v_reset, hard, leaky, decay_input)
    if gs.shape != x.shape or gv_last.shape != v0.shape:
        raise ValueError(f"gradient shapes {tuple(gs.shape)}, {tuple(gv_last.shape)} do not "
                         f"match x {tuple(x.shape)}, v0 {tuple(v0.shape)}")
    gs, gv_last, x, v0 = (t.contiguous() for t in (gs, gv_last, x, v0))
    gx = empty_like(x)
    gv0 = torch.empty_like(v0)
    gk = torch.zeros(1, dtype=torch.float64)
    T, N = x.shape
    if N == 0:
        return gx, gv0, gk
    if T == 0:
        return gx, gv0.copy_(gv_last), gk
    status = lib.htaf_lif_backward(
        gs.data_ptr(), gv_last.data_ptr(), x.data_ptr(), v0.data_ptr(), gx.data_ptr(),
        gv0.data_ptr(), gk.data_ptr(), T, N, _STORAGE[x.dtype], *args, bool(detach_reset),
        kind, *c, float(scale), bool(need_gk), _threads())
    if status != 0:
        raise MemoryError(f"lif_backward: could not allocate its [T={T}, block] work buffer")
    return gx, gv0, gk


# ----------------------------------------------------------------------------- registration
def _floats(params) -> tuple[float, ...]:
    return tuple(float(p) for p in params)


def _op_step(x, signed):
    return step(x, signed)


def _op_htaf_forward(x, params):
    return htaf_forward(x, *_floats(params))


def _op_htaf_forward_grad(x, params, scale):
    return htaf_forward_grad(x, *_floats(params), scale)


def _op_surrogate_backward(grad, x, kind, params, scale):
    return surrogate_backward(grad, x, kind, _floats(params), scale)


def _op_lif_forward(x, v0, k, v_threshold, v_reset, hard, leaky, decay_input, detach_reset,
                    kind, params, scale, store_h):
    s, v_last = lif_forward(x, v0, float(k.detach()), v_threshold, v_reset, hard, leaky, decay_input)
    return s, v_last, x.new_empty((0,), dtype=torch.float32)   # H is recomputed


def _op_lif_backward(gs, gv_last, x, h, v0, k, v_threshold, v_reset, hard, leaky, decay_input,
                     detach_reset, kind, params, scale, need_gk):
    gx, gv0, gk = lif_backward(gs, gv_last, x, v0, float(k.detach()), v_threshold, v_reset, hard, leaky,
                               decay_input, detach_reset, kind, _floats(params), scale, need_gk)
    return gx, gv0, gk.to(k.dtype)


def register_cpu_kernels() -> bool:
    """Make these kernels the CPU implementation of the ``torch.ops.htaf`` ops (elementwise and
    LIF); False, registering nothing, when they are not available (no compiler,
    ``HTAF_NO_NATIVE``). :func:`htaf.kernels.fused` only sends them tensors of one CPU dtype."""
    if not available():
        return False
    for op, fn in (("step", _op_step), ("htaf_forward", _op_htaf_forward),
                   ("htaf_forward_grad", _op_htaf_forward_grad),
                   ("surrogate_backward", _op_surrogate_backward),
                   ("lif_forward", _op_lif_forward), ("lif_backward", _op_lif_backward)):
        torch.library.register_kernel(f"htaf::{op}", "cpu", fn)
    return True
