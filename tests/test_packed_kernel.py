"""The packed-bit C kernel (htaf._native) and the fused plan (htaf._fused): every microkernel
(AVX2, popcnt, portable C) against a float64 reference on awkward shapes, the folded
BatchNorm thresholds on adversarial statistics, packed models equal to the hard model bit for
bit, and the fallback without a compiler."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as TF

from bnn_digits import digits_split
from htaf import _build, _fused, _native
from htaf.deploy import hard_model, pack_bits, pack_model, packed_mismatches
from htaf.models import create_model
from htaf.nn import BinaryConv2d, BinaryLinear

needs_c = pytest.mark.skipif(not _native.available(), reason="no working C compiler")
ISAS = [pytest.param(name, marks=pytest.mark.skipif(
    name not in (_native.supported_isas() or []), reason=f"this CPU has no {name} kernel"))
    for name in _native.ISAS]


def _reference(xb, wb, stride, padding, dilation, pad_value, pool):
    """Exact integer conv of ±1 tensors in float64: xb bool [B, C, H, W], wb bool [O, kh, kw, C]."""
    xs, ws = xb.double() * 2 - 1, wb.permute(0, 3, 1, 2).double() * 2 - 1
    if pad_value != 0:
        ph, pw = padding
        xs, padding = TF.pad(xs, (pw, pw, ph, ph), value=float(pad_value)), (0, 0)
    y = TF.conv2d(xs, ws, None, stride, padding, dilation)
    if pool > 1:
        y = TF.max_pool2d(y, pool)
    return y.round().to(torch.int32)


# (B, C, H, W, O, kernel, stride, padding, dilation, pad_value, pool)
CASES = [
    (1, 70, 9, 11, 10, (3, 3), (1, 1), (1, 1), 1, 0, 1),      # odd sizes, C not a word, batch 1
    (2, 130, 8, 8, 17, (3, 3), (2, 2), (1, 1), 1, 1, 1),      # stride 2, pad +1
    (3, 64, 7, 9, 8, (1, 1), (1, 1), (0, 0), 1, 0, 1),        # 1x1, exactly one word
    (2, 5, 10, 10, 9, (3, 3), (1, 1), (1, 1), 1, -1, 2),      # tiny C, pad -1, fused 2x2 pool
    (1, 200, 6, 6, 70, (3, 3), (1, 1), (2, 2), 2, 0, 1),      # dilation, O not a multiple of 8
    (2, 128, 8, 8, 64, (3, 3), (1, 1), (1, 1), 1, 0, 2),      # VGG-like, pooled
    (1, 33, 5, 5, 3, (2, 3), (1, 2), (1, 0), 1, 0, 1),        # rectangular kernel and stride
    (2, 300, 5, 7, 20, (3, 3), (1, 1), (1, 1), 1, 1, 3),      # 3x3 pool, rows dropped (floor)
    (1, 1100, 3, 3, 9, (3, 3), (1, 1), (1, 1), 1, 0, 1),      # K > 31 AVX2 steps: counters flushed
]


@needs_c
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_bconv_every_mode_equals_reference(isa, case):
    B, C, H, W, O, k, s, p, d, pad_value, pool = case
    g = torch.Generator().manual_seed(C * 31 + O)
    x = torch.randn(B, C, H, W, generator=g)
    x[0, 0, 0, 0] = 0.0   # sign(0) = +1
    wb = torch.rand(O, *k, C, generator=g) > 0.5
    conv = _native.BConv(wb, stride=s, padding=p, dilation=(d, d), pad_value=pad_value)
    ref = _reference(x >= 0, wb, s, p, (d, d), pad_value, pool)           # [B, O, H', W']
    alpha, bias = torch.rand(O, generator=g), torch.randn(O, generator=g)
    thr = np.full(conv.O8 * 8, np.iinfo(np.int32).max, np.int32)
    flip = np.zeros_like(thr)
    thr[:O] = torch.randint(-6, 7, (O,), generator=g).numpy()
    flip[:O] = torch.randint(0, 2, (O,), generator=g).numpy()
    with _native.using_isa(isa):
        bits = _native.pack_nchw(x)
        got_int = conv(bits, mode=_native.MODE_INT, pool=pool)
        got_float = conv(bits, mode=_native.MODE_FLOAT, pool=pool, alpha=alpha, bias=bias)
        got_bits = conv(bits, mode=_native.MODE_BITS, pool=pool, thr=thr, flip=flip)
    assert torch.equal(got_int.permute(0, 3, 1, 2), ref)
    # · α then + b, two roundings, as the float layer does
    assert torch.equal(got_float, ref.float() * alpha.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1))
    keep = (ref >= torch.from_numpy(thr[:O]).view(1, -1, 1, 1)) ^ torch.from_numpy(
        flip[:O]).bool().view(1, -1, 1, 1)
    assert torch.equal(got_bits, pack_bits(keep.permute(0, 2, 3, 1)))


@needs_c
@pytest.mark.parametrize("isa", ISAS)
def test_pack_nchw_is_sign_packed_per_pixel(isa):
    g = torch.Generator().manual_seed(0)
    for C in (1, 63, 64, 65, 130):
        x = torch.randn(2, C, 3, 5, generator=g)
        x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, float("nan"), float("-inf")])
        with _native.using_isa(isa):
            got = _native.pack_nchw(x)
            got2d = _native.pack_nchw(x[:, :, 0, 0])
        expected = pack_bits((x >= 0).permute(0, 2, 3, 1))   # NaN → 0, −0.0 → 1
        assert torch.equal(got, expected)
        assert torch.equal(got2d, expected[:, :1, :1])


@needs_c
def test_bconv_threads_split_blocks_and_channels_alike():
    """Batch 1 splits output channels across threads, batch 9 splits pixel blocks."""
    g = torch.Generator().manual_seed(3)
    wb = torch.rand(75, 3, 3, 90, generator=g) > 0.5
    conv = _native.BConv(wb, padding=(1, 1))
    for B in (1, 9):
        bits = _native.pack_nchw(torch.randn(B, 90, 12, 12, generator=g))
        one = conv(bits, mode=_native.MODE_INT, pool=2, nthreads=1)
        for n in (2, 3, 7):
            assert torch.equal(conv(bits, mode=_native.MODE_INT, pool=2, nthreads=n), one)


@needs_c
def test_xor_popcount_every_isa_and_word_size():
    g = torch.Generator().manual_seed(1)
    a = pack_bits(torch.rand(37, 150, generator=g) > 0.5)
    w = pack_bits(torch.rand(11, 150, generator=g) > 0.5)
    expected = packed_mismatches(a, w, "torch")   # SWAR popcount, checked against Python's
    for isa in _native.supported_isas():
        with _native.using_isa(isa):
            assert torch.equal(torch.from_numpy(_native.xor_popcount(a.numpy(), w.numpy())),
                               expected)
            a32, w32 = a.view(torch.int32), w.view(torch.int32)
            assert torch.equal(torch.from_numpy(_native.xor_popcount(a32.numpy(), w32.numpy())),
                               expected)


@needs_c
def test_isa_can_be_forced_and_is_checked(monkeypatch):
    assert _native.isa() == _native.supported_isas()[-1]   # the best by default
    monkeypatch.setenv("HTAF_ISA", "generic")
    assert _native.isa() == "generic" and "portable C" in _native.describe()
    monkeypatch.setenv("HTAF_ISA", "sse9")
    with pytest.raises(ValueError, match="HTAF_ISA"):
        _native.isa()
    monkeypatch.delenv("HTAF_ISA")
    with pytest.raises(ValueError, match="isa must be"):
        with _native.using_isa("sse9"):
            pass
    with _native.using_isa("generic"):
        assert _native.isa() == "generic"
    assert _native.isa() == _native.supported_isas()[-1]


@needs_c
def test_bconv_rejects_bad_inputs():
    conv = _native.BConv(torch.ones(4, 3, 3, 70, dtype=torch.bool), padding=(1, 1))
    with pytest.raises(ValueError, match="packed CPU pixels"):
        conv(torch.zeros(1, 5, 5, 1, dtype=torch.int64))          # 70 channels need 2 words
    with pytest.raises(ValueError, match="thr and flip"):
        conv(torch.zeros(1, 5, 5, 2, dtype=torch.int64), mode=_native.MODE_BITS)
    with pytest.raises(ValueError, match="bool"):
        _native.BConv(torch.ones(4, 3, 3, 70))
    with pytest.raises(ValueError, match="float32"):
        _native.pack_nchw(torch.zeros(1, 3, 2, 2, dtype=torch.float64))


# -- folded BatchNorm thresholds ------------------------------------------------------------------
def _adversarial_bn(bn: nn.Module, alpha: torch.Tensor, n: int, g: torch.Generator) -> None:
    """Statistics that put BN(f(d)) within an ulp of 0 for some integer d: running means on
    f(d), one ulp either side; negative, zero and tiny scales."""
    C = bn.num_features
    with torch.no_grad():
        d = torch.randint(-n, n + 1, (C,), generator=g).float()
        f = d * alpha
        nudge = torch.randint(-1, 2, (C,), generator=g)
        mean = torch.where(nudge > 0, torch.nextafter(f, torch.full_like(f, np.inf)),
                           torch.where(nudge < 0, torch.nextafter(f, torch.full_like(f, -np.inf)), f))
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(torch.rand(C, generator=g) * 4 + 1e-3)
        bn.weight.copy_(torch.randn(C, generator=g))
        bn.weight[:3] = torch.tensor([0.0, -1e-30, 1e-30])[: min(3, C)]
        bn.bias.copy_(torch.where(torch.rand(C, generator=g) < 0.5, torch.zeros(C),
                                  torch.randn(C, generator=g) * 1e-7))


@needs_c
@pytest.mark.parametrize("isa", ISAS)
def test_fused_plan_equals_hard_model_on_adversarial_batchnorm(isa):
    """1×1 and 3×3 binary convs with BN statistics at the sign's decision boundary, with and
    without max-pooling, then a flatten into a binary linear layer: every sign decision of the
    fused plan (thresholds on integers) equals the float one."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12),
        BinaryConv2d(12, 10, 1), nn.BatchNorm2d(10),                          # d ∈ [−12, 12]
        BinaryConv2d(10, 14, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(14),
        BinaryConv2d(14, 9, 3, padding=1, pad_value=1, bias=True), nn.BatchNorm2d(9),
        nn.Flatten(), BinaryLinear(9 * 4 * 4, 11), nn.BatchNorm1d(11), BinaryLinear(11, 5),
    ).eval()
    for i, m in enumerate(model):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and i > 1:
            layer = model[i - 1] if not isinstance(model[i - 1], nn.MaxPool2d) else model[i - 2]
            n = layer.weight[0].numel()
            _adversarial_bn(m, layer.weight_scale(), n, g)
    packed = pack_model(model)
    x = torch.randn(64, 3, 8, 8, generator=g)
    with _native.using_isa(isa):
        plan = packed.fused_plan(x)
        assert plan.describe().count("bn→bits") == 4, plan.describe()
        assert torch.equal(packed(x), hard_model(model)(x))


def test_fold_threshold_is_the_step_of_the_float_decision():
    g = torch.Generator().manual_seed(2)
    bn = nn.BatchNorm1d(16).eval()
    alpha = torch.rand(16, generator=g)
    _adversarial_bn(bn, alpha, 40, g)
    thr, flip = _fused.fold_threshold(alpha, None, bn, 40, 16)
    assert thr.shape == (16,) and flip.dtype == np.int32
    d = torch.arange(-40, 41, dtype=torch.float32)
    want = bn((d.view(-1, 1) * alpha).contiguous()) >= 0                 # [81, 16]
    got = (d.view(-1, 1) >= torch.from_numpy(thr).float()) ^ torch.from_numpy(flip).bool()
    assert torch.equal(got, want)
    # a channel whose decision is not a step of d (impossible for a real BN) is refused
    class Wavy(nn.BatchNorm1d):
        def forward(self, x):
            return torch.cos(x)
    assert _fused.fold_threshold(torch.ones(2), None, Wavy(2).eval(), 9, 2) is None


def _odd_bn(bn: nn.Module, g: torch.Generator) -> nn.Module:
    """Negative, zero, tiny and huge scales, means on representable values."""
    C = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(C, generator=g) * 3)
        bn.running_var.copy_(torch.rand(C, generator=g) * 5 + 1e-6)
        bn.weight.copy_(torch.randn(C, generator=g))
        bn.weight[:4] = torch.tensor([0.0, -0.0, 1e-38, -3e38])[: min(4, C)]
        bn.bias.copy_(torch.randn(C, generator=g) * 0.5)
        bn.bias[4:6] = 0.0
    return bn.eval()


def test_fold_bounds_reproduce_the_float_decision_everywhere():
    g = torch.Generator().manual_seed(5)
    for bn in (nn.BatchNorm2d(24), nn.BatchNorm1d(24)):
        _odd_bn(bn, g)
        lo, hi = _fused.fold_bounds(bn, 24)
        lo, hi = torch.from_numpy(lo).view(-1, 1), torch.from_numpy(hi).view(-1, 1)
        y = torch.cat([torch.randn(24, 2000, generator=g) * 10 ** torch.randint(
            -30, 30, (24, 2000), generator=g).float(), lo.expand(-1, 3).nextafter(
            torch.tensor(-np.inf)), hi.expand(-1, 3).nextafter(torch.tensor(np.inf)),
            torch.tensor([0.0, -0.0, np.inf, -np.inf, np.nan]).expand(24, -1)], 1)
        y = y.nan_to_num(nan=0.0, posinf=np.inf, neginf=-np.inf)
        y[:, -1] = np.nan
        assert torch.equal(_fused._decisions(bn, y), (y >= lo) & (y <= hi))


@needs_c
@pytest.mark.parametrize("isa", ISAS)
def test_first_batchnorm_packed_as_bounds_equals_hard_model(isa):
    """A float BatchNorm feeding a binary conv becomes bounds in the packing; inputs sit on the
    bounds and one float either side of them."""
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    model = nn.Sequential(_odd_bn(nn.BatchNorm2d(70), g), BinaryConv2d(70, 9, 3, padding=1))
    packed = pack_model(model)
    x = torch.randn(4, 70, 6, 5, generator=g)
    plan = packed.fused_plan(x)
    assert plan.describe().startswith("BatchNorm2d→bits"), plan.describe()
    lo, hi = (torch.from_numpy(b).view(1, -1, 1, 1) for b in plan.steps[0].bounds)
    edges = torch.stack([lo, hi], 0).expand(2, 4, 70, 6, 5)
    pick = torch.randint(0, 2, x.shape, generator=g).bool()
    on_edge = torch.where(pick, edges[0], edges[1])
    step = torch.randint(-1, 2, x.shape, generator=g)
    x = torch.where(torch.isfinite(on_edge), on_edge, x)
    nudged = torch.where(step > 0, x.nextafter(torch.tensor(np.inf)),
                         torch.where(step < 0, x.nextafter(torch.tensor(-np.inf)), x))
    # finite inputs only: an infinite one times a zero BatchNorm weight is NaN, which the float
    # model propagates (NaN in, NaN out) and a bit cannot hold
    x = torch.where(torch.isfinite(nudged), nudged, x)
    with _native.using_isa(isa):
        assert torch.equal(packed(x), hard_model(model)(x))


@needs_c
def test_plan_keeps_unfoldable_layers_in_float():
    """A consumer with reflect padding cannot take packed bits; a BN in training mode cannot be
    folded; the model still equals the hard one."""
    torch.manual_seed(0)
    model = nn.Sequential(BinaryConv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8),
                          BinaryConv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                          nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
    packed = pack_model(model)
    x = torch.randn(3, 6, 7, 7)
    assert "bn→bits" not in packed.fused_plan(x).describe()
    assert torch.equal(packed(x), hard_model(model)(x))


# -- whole models ---------------------------------------------------------------------------------
def _calibrated_digits_vgg():
    """bnn_vgg_small on 8×8 digits, BatchNorm statistics measured on the training images (so
    the thresholds sit where the data are), weights random: a cheap stand-in for training."""
    torch.manual_seed(0)
    xtr, _, _, _ = digits_split()
    model = create_model("bnn_vgg_small", in_channels=1, image_size=8, num_classes=10,
                         width_mult=1 / 8, binary_last=True, hidden=32)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None                      # a plain average over the batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(xtr), 256):
            model(xtr[i:i + 256])
    return model.eval()


@needs_c
def test_packed_vgg_equals_hard_model_on_the_digits_test_set():
    """Every microkernel on 1 and 2 threads, and the NumPy and PyTorch backends, on all 360
    test images. (The hard model and the other backends run on 1 thread: PyTorch's own
    threads crawl when the test machine is oversubscribed.)"""
    model = _calibrated_digits_vgg()
    _, _, xte, _ = digits_split()
    expected = hard_model(model)(xte)
    packed = pack_model(model)
    assert "Linear+bn→bits" in packed.fused_plan(xte).describe()
    for isa in _native.supported_isas():
        for threads in (1, 2):
            plan = packed.fused_plan(xte)
            with _native.using_isa(isa):
                torch.set_num_threads(threads)   # restored by conftest
                got = plan(xte)
                torch.set_num_threads(1)
            assert torch.equal(got, expected), (isa, threads)
    for backend in ("numpy", "torch"):
        assert torch.equal(packed.set_backend(backend)(xte), expected), backend


@needs_c
def test_pthread_pool_build_gives_the_same_integers():
    """``HTAF_NO_OPENMP=1`` builds the library with its own pthread pool (what a compiler
    without OpenMP gets); several threads give the single-threaded result."""
    code = textwrap.dedent("""
        import torch
        from htaf import _native
        g = torch.Generator().manual_seed(0)
        conv = _native.BConv(torch.rand(75, 3, 3, 90, generator=g) > 0.5, padding=(1, 1))
        for B in (1, 9):
            bits = _native.pack_nchw(torch.randn(B, 90, 12, 12, generator=g), nthreads=3)
            one = conv(bits, mode=_native.MODE_INT, pool=2, nthreads=1)
            for n in (2, 3, 7):
                assert torch.equal(conv(bits, mode=_native.MODE_INT, pool=2, nthreads=n), one)
        print(_native.describe())
    """)
    env = {**os.environ, "HTAF_NO_OPENMP": "1",
           "PYTHONPATH": os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "(pthreads)" in out.stdout


def test_without_a_compiler_everything_falls_back_to_numpy(monkeypatch):
    """``HTAF_NO_NATIVE=1`` (as if no compiler worked; the library state reset as in a fresh
    process): available() is False, describe() says why, the kernels raise a clear error, and
    packed models run on NumPy with the same logits."""
    monkeypatch.setenv("HTAF_NO_NATIVE", "1")
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_tried", False)
    assert not _native.available()
    assert "NumPy fallback" in _native.describe()
    with pytest.raises(RuntimeError, match="not available"):
        _native.xor_popcount(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64))
    model = create_model("bnn_vgg_small", in_channels=3, image_size=8, width_mult=1 / 16)
    x = torch.randn(4, 3, 8, 8)
    packed = pack_model(model)
    assert packed.fused_plan(x) is None and torch.equal(packed(x), hard_model(model)(x))
    assert "NumPy fallback" in packed.backend_info() and "HTAF_NO_NATIVE" in packed.backend_info()


@needs_c
def test_a_used_packed_model_can_be_copied_and_pickled():
    """The bound kernel arguments hold raw pointers; copies bind afresh to their own tensors."""
    import copy
    import io

    torch.manual_seed(0)
    model = create_model("bnn_vgg_small", in_channels=3, image_size=16, width_mult=1 / 8)
    packed = pack_model(model)
    x = torch.randn(2, 3, 16, 16)
    expected = packed(x)                       # builds the plan and its bound arguments
    twin = copy.deepcopy(packed)
    del packed
    assert torch.equal(twin(x), expected)
    buf = io.BytesIO()
    torch.save(twin, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), expected)


@needs_c
def test_inputs_the_plan_was_not_built_for_run_module_by_module():
    """BatchNorm1d over the channels of a 3-d input whose last dim the linear layers take: the
    folds were built for [B, C] inputs, so the plan gives up and the model runs module by
    module, as the hard model does; 2-d inputs take the plan."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(5), BinaryLinear(5, 5), nn.BatchNorm1d(5),
                          BinaryLinear(5, 3)).eval()
    with torch.no_grad():
        model[0].running_mean.normal_()
        model[2].running_mean.normal_()
    packed = pack_model(model)
    assert packed.fused_plan().describe() == "BatchNorm1d→bits | Linear+bn→bits | Linear→float"
    for x in (torch.randn(2, 5, 5), torch.randn(7, 5)):
        assert torch.equal(packed(x), hard_model(model)(x))
