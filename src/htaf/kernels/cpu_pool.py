r"""Reused memory for the CPU kernels' large outputs (32 MiB and more).

glibc serves every block of 32 MiB or more (its largest mmap threshold) with fresh pages from
the kernel and gives them back when the block is freed, so an output that large faults in all of
its pages again on every call: 16 384 faults for a 64 MiB tensor (16M fp32 elements), 18–30 ms
in the VM this was written on, where the kernels' own forward + backward takes 12–20 ms. Smaller
blocks come from glibc's heap and are recycled without faults.

The kernels' outputs of :data:`MIN_BYTES` or more are therefore placed in anonymous private
mappings that this module keeps after their tensors die and hands out again: a training step
that allocates the same large activations each step faults them in once. The tensors are
ordinary CPU tensors (not views; autograd, in-place ops, ``torch.save``, ``share_memory_`` work)
whose storage cannot grow beyond its mapping. A mapping is free again when no tensor holds its
storage (its Python reference count says so), and reused for a request of at least 4/5 of its
size. At most ``HTAF_CPU_POOL_MB`` MiB of free mappings are kept (default 512; ``0`` turns the
pool off and every output comes from ``torch.empty_like``); the rest are unmapped as soon as
they are found free. :func:`empty_cache` unmaps every free mapping now (as
``torch.cuda.empty_cache`` does for CUDA's caching allocator), :func:`stats` says what is held.

``HTAF_CPU_POOL_HUGEPAGES=1`` (Linux; by default only where PyTorch's own allocator is asked
for huge pages, ``THP_MEM_ALLOC_ENABLE=1``) advises each new mapping ``MADV_HUGEPAGE``: where
transparent huge pages are ``always`` or ``madvise``, the kernel backs it with 2 MiB pages, 512
times fewer TLB entries for the same bytes, which made memory-bound calls 5–12 % faster in the
steady state (docs/kernels.md), but a huge page costs its zeroing, and often a compaction of
memory, on the first touch: the first call of a large LIF took 1.0–1.6 s longer, the first step
of a CPU CNN 0.5–1.1 s longer, and a conv net's later steps gained nothing measurable. A
per-workload choice, like PyTorch's own ``THP_MEM_ALLOC_ENABLE``: long runs of large
memory-bound ops gain, short ones lose.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading

import torch

__all__ = ["MIN_BYTES", "empty_cache", "empty_like", "enabled", "hugepages", "idle_cap", "stats"]

#: Outputs at least this large come from the pool: glibc's largest mmap threshold.
MIN_BYTES = 32 << 20
_ROUND = 2 << 20           # mapping sizes are multiples of 2 MiB, so near sizes share them


def idle_cap() -> int:
    """Bytes of free mappings the pool keeps: ``HTAF_CPU_POOL_MB`` MiB (default 512; 0 = off)."""
    raw = os.environ.get("HTAF_CPU_POOL_MB", "512").strip()
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"HTAF_CPU_POOL_MB must be a number of MiB (0 turns the pool off), "
                         f"got {raw!r}") from None
    if mb < 0:
        raise ValueError(f"HTAF_CPU_POOL_MB must be >= 0, got {raw!r}")
    return int(mb * (1 << 20))


def hugepages() -> bool:
    """Whether the pool advises its new mappings ``MADV_HUGEPAGE`` (Linux only):
    ``HTAF_CPU_POOL_HUGEPAGES`` (1 or 0) where set, else as PyTorch's own allocator is told
    (``THP_MEM_ALLOC_ENABLE=1``), so that htaf's outputs and PyTorch's tensors get the same pages."""
    raw = os.environ.get("HTAF_CPU_POOL_HUGEPAGES", "").strip()
    if not raw:
        raw = "1" if os.environ.get("THP_MEM_ALLOC_ENABLE", "").strip() == "1" else "0"
    if raw not in ("0", "1"):
        raise ValueError(f"HTAF_CPU_POOL_HUGEPAGES must be 1 (advise huge pages) or 0, got {raw!r}")
    return raw == "1" and hasattr(mmap, "MADV_HUGEPAGE")


def _advise_hugepages(m: mmap.mmap) -> None:
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:        # EINVAL: a kernel without transparent huge pages; 4 KiB pages then
        pass


def _refs(obj) -> int:
    return sys.getrefcount(obj)


def _calibrate() -> int | None:
    """What :func:`_refs` says of an object that only a list holds, called as ``_refs(list[i])``
    as the pool calls it; None (the pool then stays off) unless one more holder counts one more,
    which is what tells a mapping in use (a tensor's storage holds an export of it) from a free
    one. Measured, not assumed: reference counting details differ across Python versions."""
    held = [object()]
    base = _refs(held[0])
    extra = held[0]
    ok = _refs(held[0]) == base + 1
    del extra
    return base if ok and _refs(held[0]) == base else None


# POSIX only (private anonymous mappings), and not on a free-threaded Python (whose reference
# counts are not exact); elsewhere every output comes from torch.empty_like.
_FREE_REFS = (_calibrate() if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")
              and getattr(sys, "_is_gil_enabled", lambda: True)() else None)


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: list[mmap.mmap] = []

    def _free(self, i: int) -> bool:
        """Whether mapping ``i`` is free: no tensor's storage holds an export of it."""
        return _refs(self._maps[i]) <= _FREE_REFS

    def take(self, nbytes: int, idle_cap: int, huge: bool = False) -> mmap.mmap:
        """A free mapping of at least ``nbytes`` (the smallest that fits, if it is not more than
        5/4 of the request), else a new one (advised huge pages if ``huge``); then unmap free
        ones beyond ``idle_cap``."""
        want = -(-nbytes // _ROUND) * _ROUND
        with self._lock:
            best = None
            for i in range(len(self._maps)):
                size = len(self._maps[i])
                if (want <= size <= want * 5 // 4 and self._free(i)
                        and (best is None or size < len(self._maps[best]))):
                    best = i
            if best is not None:
                m = self._maps.pop(best)
            else:
                m = mmap.mmap(-1, want, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                if huge:
                    _advise_hugepages(m)
            self._trim(idle_cap)
            self._maps.append(m)   # last: the front of the list is the least recently taken
            return m

    def _trim(self, idle_cap: int) -> None:
        """Unmap the least recently used free mappings until at most ``idle_cap`` bytes are free."""
        free = [i for i in range(len(self._maps)) if self._free(i)]
        held = sum(len(self._maps[i]) for i in free)
        gone = []
        for i in free:             # oldest first
            if held <= idle_cap:
                break
            held -= len(self._maps[i])
            gone.append(i)
        for i in reversed(gone):
            self._maps.pop(i).close()

    def empty_cache(self) -> int:
        with self._lock:
            before = sum(len(m) for m in self._maps)
            self._trim(0)
            return before - sum(len(m) for m in self._maps)

    def stats(self) -> dict[str, int]:
        with self._lock:
            free = [len(self._maps[i]) for i in range(len(self._maps)) if self._free(i)]
            return {"mappings": len(self._maps), "bytes": sum(len(m) for m in self._maps),
                    "free_mappings": len(free), "free_bytes": sum(free)}


_POOL = _Pool()
if hasattr(os, "register_at_fork"):   # a child forked while another thread held the lock
    os.register_at_fork(after_in_child=lambda: setattr(_POOL, "_lock", threading.Lock()))


def enabled() -> bool:
    """Whether outputs of :data:`MIN_BYTES` or more come from the pool (``HTAF_CPU_POOL_MB`` > 0,
    and this Python's reference counts tell a free mapping from one in use)."""
    return _FREE_REFS is not None and idle_cap() > 0


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)`` (same shape, dtype and, for a dense ``x``, strides) on the CPU;
    from the pool when it is at least :data:`MIN_BYTES` and the pool is on."""
    if x.numel() * x.element_size() < MIN_BYTES or x.device.type != "cpu" or _FREE_REFS is None:
        return torch.empty_like(x)
    cap = idle_cap()
    if cap == 0:
        return torch.empty_like(x)
    like = torch.empty_like(x, device="meta")          # the strides empty_like would choose
    span = 1 + sum((n - 1) * s for n, s in zip(like.shape, like.stride()) if n)
    try:
        m = _POOL.take(span * x.element_size(), cap, hugepages())
    except OSError:                    # no mapping to be had: leave it to PyTorch's allocator
        return torch.empty_like(x)
    storage = torch.frombuffer(m, dtype=torch.uint8).untyped_storage()
    return torch.empty(0, dtype=x.dtype).set_(storage, 0, like.shape, like.stride())


def empty_cache() -> int:
    """Unmap every free mapping of the pool now; returns the bytes given back."""
    return _POOL.empty_cache()


def stats() -> dict[str, int]:
    """The pool's mappings: how many and how many bytes in all, and of those free."""
    return _POOL.stats()
