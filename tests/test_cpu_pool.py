"""The CPU kernels' memory pool for large outputs (``htaf.kernels.cpu_pool``): results equal to
the unpooled path, memory reused only once no tensor holds it, layouts kept, the idle cap, the
switch, and tensors that behave as any other (autograd, in-place ops, save)."""

from __future__ import annotations

import io
import mmap
import os

import pytest
import torch

from htaf import functional as F
from htaf import kernels
from htaf.kernels import cpu_pool

pytestmark = pytest.mark.skipif(not kernels.fused(torch.zeros(1)),
                                reason="native CPU kernels unavailable")


@pytest.fixture
def small_pool(monkeypatch):
    """The pool serving outputs from 64 KiB (16K fp32 elements), emptied before and after."""
    monkeypatch.setattr(cpu_pool, "MIN_BYTES", 1 << 16)
    monkeypatch.setenv("HTAF_CPU_POOL_MB", "64")
    cpu_pool.empty_cache()
    yield
    cpu_pool.empty_cache()


def _from_pool(t: torch.Tensor) -> bool:
    return not t.untyped_storage().resizable()


def test_reuses_a_mapping_only_once_no_tensor_holds_it(small_pool):
    x = torch.zeros(1 << 15)
    a = cpu_pool.empty_like(x)
    assert _from_pool(a) and a.shape == x.shape and a.dtype == x.dtype
    view = a[5:]
    del a
    b = cpu_pool.empty_like(x)                     # `view` still holds the first mapping
    assert b.data_ptr() != view.data_ptr() - 5 * 4
    assert cpu_pool.stats() == {"mappings": 2, "bytes": 2 * (2 << 20), "free_mappings": 0,
                                "free_bytes": 0}
    first = view.data_ptr() - 5 * 4
    del view
    assert cpu_pool.stats()["free_mappings"] == 1
    c = cpu_pool.empty_like(x)
    assert c.data_ptr() == first                   # reused, no new mapping
    assert cpu_pool.stats()["mappings"] == 2
    storage = c.untyped_storage()                  # a storage reference alone keeps it busy
    del c
    assert cpu_pool.stats()["free_mappings"] == 0
    del storage
    assert cpu_pool.stats()["free_mappings"] == 1   # `b` still holds the second
    del b
    assert cpu_pool.stats()["free_mappings"] == 2
    assert cpu_pool.empty_cache() == 2 * (2 << 20) and cpu_pool.stats()["mappings"] == 0


def test_small_outputs_and_the_switch_use_torch(small_pool, monkeypatch):
    assert not _from_pool(cpu_pool.empty_like(torch.zeros(100)))
    monkeypatch.setenv("HTAF_CPU_POOL_MB", "0")
    assert not cpu_pool.enabled() and not _from_pool(cpu_pool.empty_like(torch.zeros(1 << 15)))
    monkeypatch.setenv("HTAF_CPU_POOL_MB", "64")
    monkeypatch.setattr(cpu_pool, "_FREE_REFS", None)   # reference counts found unusable
    assert not cpu_pool.enabled() and not _from_pool(cpu_pool.empty_like(torch.zeros(1 << 15)))
    monkeypatch.undo()
    monkeypatch.setattr(cpu_pool, "MIN_BYTES", 1 << 16)
    monkeypatch.setenv("HTAF_CPU_POOL_MB", "lots")
    with pytest.raises(ValueError, match="HTAF_CPU_POOL_MB"):
        cpu_pool.empty_like(torch.zeros(1 << 15))


def test_free_mappings_beyond_the_idle_cap_are_unmapped(small_pool, monkeypatch):
    monkeypatch.setenv("HTAF_CPU_POOL_MB", "4")    # two 2 MiB mappings
    x = torch.zeros(1 << 15)
    held = [cpu_pool.empty_like(x) for _ in range(5)]
    assert cpu_pool.stats()["mappings"] == 5
    held.clear()
    assert cpu_pool.stats()["free_mappings"] == 5
    kept = cpu_pool.empty_like(x)                  # reuses one, trims the free ones to the cap
    s = cpu_pool.stats()
    assert s == {"mappings": 3, "bytes": 3 * (2 << 20), "free_mappings": 2,
                 "free_bytes": 4 << 20}
    assert _from_pool(kept)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "sliced"])
def test_layouts_are_those_of_empty_like(small_pool, layout):
    x = torch.randn(4, 8, 32, 32)
    x = {"contiguous": x, "channels_last": x.to(memory_format=torch.channels_last),
         "transposed": x.transpose(0, 3), "sliced": x[:, :, ::2]}[layout]
    out = cpu_pool.empty_like(x)
    want = torch.empty_like(x)
    assert out.shape == want.shape and out.stride() == want.stride() and not out._is_view()
    assert _from_pool(out) == (x.numel() * 4 >= cpu_pool.MIN_BYTES)


def test_kernels_give_the_same_results_from_the_pool(small_pool, monkeypatch):
    from htaf.kernels import cpu

    x = torch.randn(3, 1 << 14) * 3
    g = torch.randn_like(x)
    pooled = (cpu.step(x, False), cpu.htaf_forward(x, 0.5, 4.0, 1.0),
              *cpu.htaf_forward_grad(x, 0.5, 4.0, 1.0, 1.0),
              cpu.surrogate_backward(g, x, cpu.KINDS["atan"][0], (2.0,), 1.0))
    assert all(_from_pool(t) for t in pooled)
    monkeypatch.setenv("HTAF_CPU_POOL_MB", "0")
    plain = (cpu.step(x, False), cpu.htaf_forward(x, 0.5, 4.0, 1.0),
             *cpu.htaf_forward_grad(x, 0.5, 4.0, 1.0, 1.0),
             cpu.surrogate_backward(g, x, cpu.KINDS["atan"][0], (2.0,), 1.0))
    for a, b in zip(pooled, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("pool", ["64", "0"])
def test_smooth_htaf_saves_its_derivative_with_the_pool_and_its_product_is_pooled(
        small_pool, monkeypatch, pool):
    """With the pool a large smooth HTAF saves HTAF' (no fresh pages to pay for) and its backward
    writes grad·HTAF' into pooled memory; without it, it recomputes from x. Same numbers."""
    monkeypatch.setenv("HTAF_CPU_POOL_MB", pool)
    monkeypatch.setattr(kernels, "SAVE_DERIVATIVE_MAX_BYTES", 1 << 16)
    x = (torch.randn(1 << 15) * 3).requires_grad_(True)
    g = torch.randn(1 << 15)
    assert kernels.saves_derivative(x) == (pool != "0")
    y = F.htaf(x)
    (dx,) = torch.autograd.grad(y, x, g)
    assert _from_pool(y) == _from_pool(dx) == (pool != "0")
    ref = torch.sigmoid(0.5 * x.detach().double() + 4.0 * torch.tanh(x.detach().double()))
    d_ref = ref * (1 - ref) * (0.5 + 4.0 / torch.cosh(x.detach().double()) ** 2)
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dx.double(), g.double() * d_ref, rtol=1e-5, atol=1e-7)
    # a gradient of another dtype (or any non-plain case) takes grad * d
    torch.testing.assert_close(kernels.times_saved(g.double(), dx), g.double() * dx)


def test_pooled_outputs_behave_as_tensors(small_pool):
    x = torch.randn(1 << 15, requires_grad=True)
    y = F.heaviside(x)
    assert _from_pool(y)
    y.mul_(2.0)                                    # in place on the output of a Function
    (y * torch.arange(1.0, 1 + y.numel())).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    buf = io.BytesIO()
    torch.save(y.detach(), buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), y.detach())
    z = y.detach().clone()
    assert not _from_pool(z) and torch.equal(z, y.detach())
    shared = F.heaviside(torch.randn(1 << 15)).share_memory_()
    assert shared.is_shared() and set(shared.unique().tolist()) <= {0.0, 1.0}


def test_lif_outputs_come_from_the_pool_with_equal_results(small_pool, monkeypatch):
    from htaf.kernels import cpu

    x = torch.randn(4, 1 << 14)
    v0 = torch.zeros(1 << 14)
    s, v = cpu.lif_forward(x, v0, 0.5, 1.0, 0.0, True, True, True)
    assert _from_pool(s)
    monkeypatch.setenv("HTAF_CPU_POOL_MB", "0")
    s2, v2 = cpu.lif_forward(x, v0, 0.5, 1.0, 0.0, True, True, True)
    assert torch.equal(s, s2) and torch.equal(v, v2)


def _vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = (line.split() or [""])[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE") or not os.path.exists("/proc/self/smaps")
                    or not os.path.exists("/sys/kernel/mm/transparent_hugepage"),
                    reason="needs Linux with transparent huge pages (MADV_HUGEPAGE, /proc/self/smaps)")
@pytest.mark.parametrize("advise", ["1", "0"])
def test_new_mappings_are_advised_huge_pages_when_asked(small_pool, monkeypatch, advise):
    """With HTAF_CPU_POOL_HUGEPAGES=1 each new mapping carries the kernel's huge-page advice
    ("hg" in its VmFlags); with 0 it does not; unset, it follows PyTorch's THP_MEM_ALLOC_ENABLE;
    a bad value is named."""
    monkeypatch.setenv("HTAF_CPU_POOL_HUGEPAGES", advise)
    out = cpu_pool.empty_like(torch.zeros(1 << 15))
    assert _from_pool(out)
    out.fill_(1.0)
    assert ("hg" in _vm_flags(out.data_ptr())) == (advise == "1")
    assert torch.equal(out, torch.ones(1 << 15))
    if advise == "0":   # unset: as PyTorch's allocator is told (THP_MEM_ALLOC_ENABLE)
        monkeypatch.delenv("HTAF_CPU_POOL_HUGEPAGES")
        for thp in ("0", "1"):
            monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", thp)
            unset = cpu_pool.empty_like(torch.zeros(1 << 15))
            assert ("hg" in _vm_flags(unset.data_ptr())) == (thp == "1")
    monkeypatch.setenv("HTAF_CPU_POOL_HUGEPAGES", "yes")
    with pytest.raises(ValueError, match="HTAF_CPU_POOL_HUGEPAGES"):
        cpu_pool.empty_like(torch.zeros(1 << 15))
