"""Fused kernels for the surrogate ops, selected per device.

The ops (:mod:`htaf.kernels.ops`, :mod:`htaf.kernels.lif`) are ``torch.library`` operators with
one implementation per backend: Triton on CUDA (sm_70 and newer, float32/bfloat16/float16), native
code on the CPU (compiled once per machine; every floating dtype). :func:`fused` says whether one
serves a tensor; :mod:`htaf.surrogates` and :mod:`htaf.nn` call the ops only then, and run the
surrogates' PyTorch formulas (the references) everywhere else. Set ``HTAF_DISABLE_TRITON=1`` or
``HTAF_NO_NATIVE=1`` to force the references on CUDA or on the CPU.

On the CPU, outputs of 32 MiB or more live in memory the kernels keep and reuse
(:mod:`htaf.kernels.cpu_pool`; ``HTAF_CPU_POOL_MB`` caps the idle part, 0 turns it off,
:func:`empty_cache` gives it back now; ``HTAF_CPU_POOL_HUGEPAGES=1`` asks for huge pages).

The Triton modules are imported on the first CUDA tensor, so ``import htaf`` stays light.
"""

from __future__ import annotations

import os

import torch

from .._build import env_flag, native_disabled
from . import cpu_pool, lif, ops
from .cpu_pool import empty_cache
from .lif import lif_multistep

__all__ = ["fused", "saves_derivative", "htaf_forward", "htaf_forward_grad", "surrogate_backward",
           "step", "lif_multistep", "ops", "lif", "empty_cache", "times_saved"]

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_state: dict[str, bool] = {}
_capable: dict[int, bool] = {}


def _triton_ready() -> bool:
    if "triton" not in _state:
        ok = False
        if not env_flag("HTAF_DISABLE_TRITON"):
            try:
                from . import triton_elementwise, triton_lif
            except ImportError:   # Triton not installed (CPU-only setups, macOS, Windows)
                pass
            else:
                triton_elementwise.register_cuda_kernels()
                triton_lif.register_cuda_kernels()
                ok = True
        _state["triton"] = ok
    return _state["triton"]


def _cuda_capable(device: torch.device) -> bool:
    """sm_70 or newer (what Triton compiles for; PyTorch Inductor checks the same)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _capable:
        _capable[index] = tuple(torch.cuda.get_device_capability(index)) >= (7, 0)
    return _capable[index]


def _native_ready() -> bool:
    global cpu
    if "native" not in _state:
        ok = False
        if not native_disabled():
            try:
                from . import cpu
            except ImportError:
                pass
            else:
                ok = cpu.register_cpu_kernels()
        _state["native"] = ok
    return _state["native"]


@torch.compiler.assume_constant_result
def _fused(device_type: str, device: torch.device, dtype: torch.dtype) -> bool:
    if device_type == "cuda":
        return dtype in TRITON_DTYPES and _triton_ready() and _cuda_capable(device)
    if device_type == "cpu":
        return dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16) and _native_ready()
    return False


def fused(t: torch.Tensor) -> bool:
    """Whether a fused kernel serves ``t``'s device and dtype."""
    return _fused(t.device.type, t.device, t.dtype)


# Below this many bytes smooth HTAF saves its derivative on the CPU; from it on it recomputes,
# unless the kernels' memory pool (cpu_pool) serves tensors that large, which it does by default.
# glibc serves every block of 32 MiB or more (its largest mmap threshold) with fresh pages from
# the kernel, so each extra tensor of that size costs its page faults (≈55 ms for 64 MiB here)
# on every call, more than evaluating HTAF' a second time (≈16 ms for 16M elements):
# forward + backward of 16M elements took 190 ms saving HTAF' and 151 ms recomputing it, 8M
# 92 and 74 ms, 4M (16 MiB, from glibc's heap) 11.8 and 16.7 ms (docs/kernels.md). Where glibc
# is told never to mmap (MALLOC_MMAP_MAX_=0, or the glibc.malloc.mmap_max=0 tunable) freed
# blocks are reused without page faults and saving wins at every size (16M: 49 against 58 ms):
# no limit then. Set it yourself after mallopt() (as benchmarks/bench_cpu.py does).
def _never_mmap() -> bool:
    return (os.environ.get("MALLOC_MMAP_MAX_", "").strip() == "0"
            or "glibc.malloc.mmap_max=0" in os.environ.get("GLIBC_TUNABLES", ""))


SAVE_DERIVATIVE_MAX_BYTES = 1 << 62 if _never_mmap() else 32 << 20


def saves_derivative(t: torch.Tensor) -> bool:
    """Whether smooth HTAF on ``t`` evaluates its derivative in the forward and saves it
    (:func:`htaf_forward_grad`): the native CPU kernels with float32 or float64, where the math
    bounds the time, on tensors under :data:`SAVE_DERIVATIVE_MAX_BYTES`. Elsewhere the backward
    recomputes it from the input (CUDA: memory bounds the time; 16-bit types: the derivative
    would be rounded to 16 bits before the product; large tensors: one more fresh allocation
    costs more than the arithmetic)."""
    return (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and (t.numel() * t.element_size() < SAVE_DERIVATIVE_MAX_BYTES or cpu_pool.enabled())
            and fused(t))


def times_saved(grad: torch.Tensor, d: torch.Tensor, consume: bool = False) -> torch.Tensor:
    """``grad · d``, smooth HTAF's backward from its saved derivative.

    ``consume=True`` says that ``d`` is the caller's own buffer, read nowhere after this call: the
    product is then written into ``d`` itself (no new tensor: no allocation, no page faults, and
    the lines written are those just read) when ``grad`` matches it (dtype, shape), gradients are
    not being recorded (no ``create_graph``) and :func:`_direct` allows. Otherwise: on large plain
    CPU tensors of one dtype and shape :func:`htaf.kernels.cpu.mul` (into
    :func:`cpu_pool.empty_like`'s memory, no page faults; streaming stores, no read of the
    output's lines), elsewhere ``grad * d``. What writing in place gains: docs/kernels.md."""
    if grad.dtype == d.dtype and grad.shape == d.shape and _direct(grad, d):
        if consume and not torch.is_grad_enabled():
            return d.mul_(grad)
        if d.numel() * d.element_size() >= cpu_pool.MIN_BYTES:
            return cpu.mul(grad, d)
    return grad * d


def _direct(*tensors: torch.Tensor) -> bool:
    """Call the CPU kernels without the dispatcher: plain CPU tensors in eager mode, where the
    op's Python-kernel dispatch costs 13–45 µs a call (more than the kernel on a [64, 128]
    activation). Anything else — ``torch.compile`` tracing, fake/meta or wrapped tensors, an
    active dispatch mode, other devices — goes through ``torch.ops.htaf``."""
    return (_DIRECT_CHECKS and not torch.compiler.is_compiling() and _dispatch_modes() == 0
            and all(type(t) is torch.Tensor and t.device.type == "cpu" and not _wrapped(t)
                    for t in tensors)
            and _native_ready())   # last: a CUDA tensor does not build the CPU library


# Private PyTorch checks (present in 2.4–2.14); without them every call takes the ops.
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
_DIRECT_CHECKS = _dispatch_modes is not None and _wrapped is not None


def _served(t: torch.Tensor, cpu_only: bool = False) -> None:
    """Before a ``torch.ops.htaf`` call: registers the kernels of ``t``'s device on first use
    (:func:`fused`), or says plainly that none serves it (the dispatcher would only say that the
    op has no kernel for the backend)."""
    if not fused(t) or (cpu_only and t.device.type != "cpu"):
        raise RuntimeError(
            f"htaf.kernels: no fused kernel serves {t.device.type} {t.dtype} tensors here"
            + (" (this one is CPU-only)" if cpu_only else "") + "; htaf.kernels.fused(x) says "
            "which tensors are served (htaf's own callers fall back to PyTorch)")


def step(x: torch.Tensor, signed: bool) -> torch.Tensor:
    """1[x ≥ 0] or sign(x) (sign(0) = +1), NaN → NaN, in one fused pass."""
    if _direct(x):
        return cpu.step(x, signed)
    _served(x)
    return torch.ops.htaf.step(x, signed)


def htaf_forward(x: torch.Tensor, params) -> torch.Tensor:
    """σ(α·x + β·tanh(γ·x)) in one fused pass; ``params`` = [α, β, γ], numbers or 0-d tensors."""
    if _direct(x):
        return cpu.htaf_forward(x, *map(float, params))
    _served(x)
    return torch.ops.htaf.htaf_forward(x, as_tensors(params, x))


def htaf_forward_grad(x: torch.Tensor, params, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(HTAF(x), scale · HTAF'(x)) from one evaluation; CPU only (see :func:`saves_derivative`)."""
    if _direct(x):
        return cpu.htaf_forward_grad(x, *map(float, params), scale)
    _served(x, cpu_only=True)
    return torch.ops.htaf.htaf_forward_grad(x, as_tensors(params, x), scale)


def surrogate_backward(grad: torch.Tensor, x: torch.Tensor, kind: int, params,
                       scale: float) -> torch.Tensor:
    """``grad · scale · g'(x)`` for the surrogate whose ``kernel_id`` is ``kind``; ``params``
    numbers or 0-d tensors."""
    if _direct(grad, x):
        return cpu.surrogate_backward(grad, x, kind, tuple(map(float, params)), scale)
    _served(x)
    return torch.ops.htaf.surrogate_backward(grad, x, kind, as_tensors(params, x), scale)


def as_tensors(params, like: torch.Tensor) -> list[torch.Tensor]:
    """Hyperparameters as 0-d tensors on ``like``'s device (what the ``torch.ops.htaf`` ops
    take); numbers become cached float64 scalars, so a float64 computation sees them unrounded.
    The direct CPU calls take the numbers themselves (no tensor round trip: ``float()`` of a
    0-d tensor is ≈1 µs)."""
    return [p if isinstance(p, torch.Tensor) else _scalar(float(p), like.device) for p in params]


_SCALARS: dict[tuple[float, torch.device], torch.Tensor] = {}


def _scalar(value: float, device: torch.device) -> torch.Tensor:
    """A cached 0-d tensor (a Python-number hyperparameter, for a fused op)."""
    key = (value, device)
    t = _SCALARS.get(key)
    if t is None:
        if len(_SCALARS) > 4096:
            _SCALARS.clear()
        t = _SCALARS[key] = torch.tensor(value, dtype=torch.float64, device=device)
    return t
