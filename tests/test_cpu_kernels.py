"""The native CPU kernels (``htaf.kernels.cpu``) against the PyTorch references they replace.

The references (each surrogate class's ``derivative``/``primitive``, and the neurons' PyTorch time
loop, ``backend="torch"``) are the oracle: every surrogate kind × dtype, odd
sizes, layouts, ±inf/NaN/huge values, float32 accuracy in ulp against float64, gradcheck in
float64 through the registered ops, the LIF neuron's values and gradients (PLIF's dL/dk,
detach_reset, soft/hard reset, IF), the fallback without native code and thread-count
independence.
"""

from __future__ import annotations

import math

import pytest
import torch

from htaf import functional as F
from htaf import kernels
from htaf.kernels import cpu
from htaf.nn import IFNode, LIFNode, ParametricLIFNode
from htaf.surrogates import HTAFSurrogate, compute_dtype, get_surrogate

needs_native = pytest.mark.skipif(not cpu.available(),
                                  reason=f"native CPU kernels unavailable: {cpu.backend_error()}")
pytestmark = needs_native

HALF = (torch.bfloat16, torch.float16)
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
KINDS = {name: kid for name, (kid, _) in cpu.KINDS.items()}
#: two parameter sets per kind (raw hyperparameters)
PARAMS = {
    "htaf": [(0.5, 4.0, 1.0), (0.1, 8.0, 3.0)], "sigmoid": [(4.0,), (25.0,)],
    "atan": [(2.0,), (0.7,)], "fast_sigmoid": [(25.0,), (1.5,)], "super_spike": [(1.0,), (3.0,)],
    "piecewise_quadratic": [(1.0,), (2.5,)], "piecewise_exp": [(1.0,), (4.0,)],
    "erf": [(2.0,), (0.5,)], "triangle": [(1.0,), (0.3,)], "rect": [(1.0,), (3.0,)],
    "ste": [(1.0,), (math.inf,)], "approx_sign": [()], "swish_sign": [(5.0,), (1.5,)],
}
SPECIAL = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e30, -1e30, 3.0e38, -3.0e38, 65504.0,
           -65504.0, 1e-30, -1e-30, 1e-40, -1e-40, 6e-8, -6e-8, 1.0, -1.0, 0.5, -0.5, 20.0,
           -20.0, 88.0, -88.0, 200.0, -200.0]


def reference_backward(grad, x, name, params, scale=1.0):
    """``grad · scale · g'(x)`` from the surrogate class's own derivative (the reference)."""
    d = type(get_surrogate(name)).derivative(x.to(compute_dtype(x.dtype)), *params) * scale
    return (grad.to(d.dtype) * d).to(grad.dtype)


class ref:
    """The HTAF references, from :class:`htaf.surrogates.HTAFSurrogate`."""

    @staticmethod
    def htaf_forward(x, a, b, g):
        return HTAFSurrogate.primitive(x.to(compute_dtype(x.dtype)), a, b, g).to(x.dtype)

    @staticmethod
    def htaf_derivative(x, a, b, g):
        return HTAFSurrogate.derivative(x.to(compute_dtype(x.dtype)), a, b, g)

    @staticmethod
    def htaf_backward(grad, x, a, b, g, scale=1.0):
        return reference_backward(grad, x, "htaf", (a, b, g), scale)

    @staticmethod
    def step_forward(x, signed):
        on = x >= 0
        y = torch.where(on, 1.0, -1.0).to(x.dtype) if signed else on.to(x.dtype)
        return torch.where(torch.isnan(x), x, y)


def _t(*values):
    return [torch.tensor(float(v)) for v in values]


def lif_multistep(x, v0, k, *, surrogate, backend, v_threshold=1.0, v_reset=0.0,
                  decay_input=True, detach_reset=False, leaky=True):
    """The fused op (``backend="cpu"``) or the neurons' PyTorch loop (``"torch"``)."""
    kw = dict(v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset)
    if backend == "cpu":
        assert kernels.fused(x)          # (registers the kernels on first use)
        return kernels.lif_multistep(x, v0, k, decay_input=decay_input, leaky=leaky,
                                     kind=surrogate.kernel_id, params=_t(*surrogate.params),
                                     scale=surrogate.grad_scale(False), **kw)
    node = (LIFNode(decay_input=decay_input, surrogate=surrogate, step_mode="m", backend="torch",
                    **kw) if leaky else IFNode(surrogate=surrogate, step_mode="m",
                                               backend="torch", **kw))
    node.decay = lambda: k
    node.v = v0
    return node(x), node.v


def tolerance(dtype):
    """float32: a few ulp of a float32 computation; half types: one storage ulp (each side rounds
    a float32 value once); float64: a few float64 ulp."""
    return {torch.float32: {"rtol": 1e-5, "atol": 1e-6},
            torch.float64: {"rtol": 1e-12, "atol": 1e-15},
            torch.bfloat16: {"rtol": 2**-7, "atol": 1e-6},
            torch.float16: {"rtol": 2**-10, "atol": 6e-8}}[dtype]


def close(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.stride() == expected.stride()
    torch.testing.assert_close(actual, expected, equal_nan=True, **tolerance(actual.dtype))


def sample(n, dtype, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype)


def ulp32(v: torch.Tensor) -> torch.Tensor:
    """The float32 ulp at |v| (v float64; subnormals have the fixed ulp 2^−149)."""
    return torch.pow(2.0, torch.floor(torch.log2(v.abs().clamp_min(2.0**-126))) - 23)


# ----------------------------------------------------------------------------- accuracy
def test_exponential_is_within_about_one_ulp_including_subnormals():
    """piecewise_exp with α = 2 is exactly e^(−2|x|): the kernel's exponential, tested on a fine
    grid of exact arguments over [−110, 0] (results down into the subnormals)."""
    v = torch.linspace(-110, 0, 400_001, dtype=torch.float32)
    x = -v / 2                                             # exact: 2|x| == −v
    e = cpu.surrogate_backward(torch.ones_like(x), x, KINDS["piecewise_exp"], (2.0,), 1.0)
    exact = torch.exp(v.double())
    err = (e.double() - exact).abs() / ulp32(exact)
    assert err.max() <= 1.1, (err.max(), v[err.argmax()])
    assert (e[v < -104.5] == 0).all() and (e[(v < -88) & (v > -100)] > 0).all()


def test_htaf_far_tail_reaches_the_subnormals():
    """HTAF's base-2 exponentials (exp2_nonpos) give correctly rounded subnormals: far in the
    negative tail (z down to about −103, e^z below 2^−126) value and slope follow the float64
    reference to within the conditioning of e^z, and are 0 only where it rounds to 0."""
    x = torch.linspace(-215.0, -150.0, 20_001)
    a, b, g = 0.5, 4.0, 1.0
    for out, exact in ((cpu.htaf_forward(x, a, b, g), ref.htaf_forward(x.double(), a, b, g)),
                       (cpu.surrogate_backward(torch.ones_like(x), x, 0, (a, b, g), 1.0),
                        ref.htaf_derivative(x.double(), a, b, g))):
        assert (exact < 2.0**-126).any() and (exact < 2.0**-150).any()
        z = (a * x.double() + b * torch.tanh(g * x.double())).abs()
        err = (out.double() - exact).abs() / ulp32(exact)
        assert (err / (1 + z)).max() <= 5.0, (err.max(), x[err.argmax()])
        assert (out[exact > 2.0**-148] > 0).all() and (out[exact < 2.0**-151] == 0).all()


@pytest.mark.parametrize("what", ["forward", "backward"])
def test_htaf_float32_accuracy_against_float64(what):
    """Within a few ulp where the output is well conditioned; in the tails the conditioning of
    e^z (relative error |z|·ulp) dominates, for the float32 reference too."""
    x = torch.cat([sample(200_000, torch.float32), torch.linspace(-100, 100, 100_001),
                   torch.tensor([20.0, -20.0, 88.0, -88.0])])
    a, b, g = 0.5, 4.0, 1.0
    if what == "forward":
        out = cpu.htaf_forward(x, a, b, g)
        exact = ref.htaf_forward(x.double(), a, b, g)
        ref32 = ref.htaf_forward(x, a, b, g)
    else:
        out = cpu.surrogate_backward(torch.ones_like(x), x, 0, (a, b, g), 1.0)
        exact = ref.htaf_derivative(x.double(), a, b, g)
        ref32 = ref.htaf_derivative(x, a, b, g)
    z = (a * x.double() + b * torch.tanh(g * x.double())).abs()
    err = (out.double() - exact).abs() / ulp32(exact)
    err_ref = (ref32.double() - exact).abs() / ulp32(exact)
    assert (err / (1 + z)).max() <= 5.0, (err.max(), x[err.argmax()])
    assert (err / (1 + z)).max() <= 2.5 * (err_ref / (1 + z)).max()   # as good as torch's float32
    assert err[z < 1].max() <= 8.0      # torch's float32 reference: up to 5


def test_spec_reference_values():
    xs = torch.tensor([0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0])
    y = [0.5, 0.8907542485, 0.9719789089, 0.9922793822, 0.9984982733, 0.9998766054, 0.9999991685]
    d = [1.125, 3.547760e-01, 5.937149e-02, 5.995532e-03, 7.508249e-04, 6.168968e-05,
         4.157637e-07]
    torch.testing.assert_close(cpu.htaf_forward(xs, 0.5, 4.0, 1.0), torch.tensor(y), rtol=2e-7,
                               atol=0)
    got = cpu.surrogate_backward(torch.ones(7), xs, 0, (0.5, 4.0, 1.0), 1.0)
    torch.testing.assert_close(got, torch.tensor(d), rtol=2e-6, atol=0)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(KINDS))
def test_surrogate_backward_parity_every_kind(name, dtype):
    x = torch.cat([sample(4097, dtype), sample(64, dtype, 0.3, seed=1)])
    grad = sample(x.numel(), dtype, 1.0, seed=2)
    for params in PARAMS[name]:
        for scale in (1.0, 2.0, 0.5):
            got = cpu.surrogate_backward(grad, x, KINDS[name], params, scale)
            close(got, reference_backward(grad, x, name, params, scale))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 4097, 2**20 + 3])
def test_htaf_forward_backward_step_sizes(n, dtype):
    if n > 5000 and dtype != torch.float32:
        pytest.skip("the large size once, in float32")
    x, g = sample(n, dtype), sample(n, dtype, 1.0, seed=3)
    for abg in PARAMS["htaf"]:
        close(cpu.htaf_forward(x, *abg), ref.htaf_forward(x, *abg))
        close(cpu.surrogate_backward(g, x, 0, abg, 2.0), ref.htaf_backward(g, x, *abg, 2.0))
    for signed in (False, True):
        assert torch.equal(cpu.step(x, signed), ref.step_forward(x, signed))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 511, 513, 4097, 2**20 + 3])
def test_htaf_forward_grad_is_forward_and_backward_in_one(n, dtype):
    """The smooth mode's CPU forward: the value bit-equal to htaf_forward, the saved derivative
    bit-equal to the backward kernel with grad 1 (both run the same stages), specials included."""
    if n > 5000 and dtype != torch.float32:
        pytest.skip("the large size once, in float32")
    x = torch.cat([sample(n, dtype), torch.tensor(SPECIAL, dtype=torch.float64).to(dtype)])
    for abg in PARAMS["htaf"]:
        for scale in (1.0, 2.0):
            y, d = cpu.htaf_forward_grad(x, *abg, scale)
            assert y.dtype == d.dtype == dtype
            assert torch.equal(y.nan_to_num(7), cpu.htaf_forward(x, *abg).nan_to_num(7))
            want = cpu.surrogate_backward(torch.ones_like(x), x, 0, abg, scale)
            assert torch.equal(d.nan_to_num(7), want.nan_to_num(7))
            close(d, ref.htaf_backward(torch.ones_like(x), x, *abg, scale))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_smooth_htaf_saves_its_derivative_on_the_cpu(dtype, signed):
    """float32/float64 on the CPU: the forward saves HTAF' (one tensor the size of x, not x) and
    the backward multiplies; values and gradients equal the recomputing path exactly. Half
    types keep recomputing (a saved 16-bit derivative would round before the product)."""
    from htaf.surrogates import _BinaryFunction
    s = get_surrogate("htaf", alpha=0.3, beta=5.0, gamma=2.0)
    x = torch.cat([sample(1000, dtype), torch.tensor(SPECIAL, dtype=torch.float64).to(dtype)])
    g = sample(x.numel(), dtype, 1.0, seed=5)
    saved = []
    x1 = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y1 = s.apply(x1, "smooth", signed)
    (dx1,) = torch.autograd.grad(y1, x1, g)
    x2 = x.clone().requires_grad_()
    y2 = _BinaryFunction.apply(x2, s, s.params, signed, True)
    (dx2,) = torch.autograd.grad(y2, x2, g)
    assert torch.equal(y1.nan_to_num(7), y2.nan_to_num(7))
    assert torch.equal(dx1.nan_to_num(7), dx2.nan_to_num(7))
    if dtype in HALF:
        assert not kernels.saves_derivative(x1) and any(t is x1 for t in saved)
    else:
        assert kernels.saves_derivative(x1)
        assert len(saved) == 1 and saved[0].shape == x.shape and saved[0] is not x1
        close(saved[0], ref.htaf_backward(torch.ones_like(x), x, *s.params, 2.0 if signed else 1.0))


def _smooth_grads(x, g, **grad_kw):
    """(y, dx, ptr): smooth HTAF's value and gradient, and the address of the derivative it
    saved (looked at through ``grad_fn.saved_tensors`` and let go before the backward)."""
    y = F.htaf(x, 0.3, 5.0, 2.0)
    ptr = y.grad_fn.saved_tensors[0].data_ptr()
    (dx,) = torch.autograd.grad(y, x, g, **grad_kw)
    return y, dx, ptr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_smooth_htaf_backward_writes_into_its_saved_derivative(dtype):
    """When the graph is freed (no retain_graph, no create_graph, no saved-tensor hooks) the
    backward's product grad·HTAF' goes into the saved derivative's own memory (no new tensor);
    the numbers are those of the out-of-place product, for a dense, an expanded (``sum()``'s)
    and a transposed gradient."""
    x0 = torch.cat([sample(999, dtype), torch.tensor(SPECIAL, dtype=torch.float64).to(dtype)])
    d = cpu.htaf_forward_grad(x0, 0.3, 5.0, 2.0, 1.0)[1]
    x = x0.clone().requires_grad_()
    for g in (sample(x.numel(), dtype, 1.0, seed=5), torch.ones(()).to(dtype).expand(x.shape)):
        _, dx, ptr = _smooth_grads(x, g)
        assert dx.data_ptr() == ptr
        assert torch.equal(dx.nan_to_num(7), (g * d).nan_to_num(7))
    xt = x0[:1000].reshape(40, 25).t().detach().requires_grad_()   # non-contiguous x and grad
    gt = sample(1000, dtype, 1.0, seed=6).reshape(25, 40)             # contiguous: another layout
    _, dx, ptr = _smooth_grads(xt, gt)
    assert dx.data_ptr() == ptr and dx.stride() == xt.stride()
    assert torch.equal(dx, gt * cpu.htaf_forward_grad(xt.detach(), 0.3, 5.0, 2.0, 1.0)[1])


def test_smooth_htaf_keeps_its_saved_derivative_when_it_may_be_read_again(monkeypatch):
    """retain_graph (a second backward reads HTAF' again), create_graph, saved-tensor hooks
    (the hook's object may be kept elsewhere), and a PyTorch without the private function that
    says whether the graph is kept: the product goes into a new tensor, and every backward gives
    the same gradient."""
    from htaf import surrogates
    x = sample(1000, torch.float32).requires_grad_()
    g = sample(1000, torch.float32, 1.0, seed=5)
    want = g * cpu.htaf_forward_grad(x.detach(), 0.3, 5.0, 2.0, 1.0)[1]
    y = F.htaf(x, 0.3, 5.0, 2.0)
    first = torch.autograd.grad(y, x, g, retain_graph=True)[0]
    second = torch.autograd.grad(y, x, g)[0]
    assert torch.equal(first, want) and torch.equal(second, want)
    assert first.data_ptr() != second.data_ptr()
    _, dx, ptr = _smooth_grads(x, g, create_graph=True, retain_graph=False)
    assert dx.data_ptr() != ptr and torch.equal(dx.detach(), want)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        y = F.htaf(x, 0.3, 5.0, 2.0)
    before = kept[0].clone()
    (dx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(dx, want) and torch.equal(kept[0], before)
    monkeypatch.setattr(surrogates, "_keep_graph", None)
    _, dx, ptr = _smooth_grads(x, g)
    assert dx.data_ptr() != ptr and torch.equal(dx, want)


def test_glibc_told_never_to_mmap_lifts_the_limit(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert kernels._never_mmap()
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert not kernels._never_mmap()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1:glibc.malloc.mmap_max=0")
    assert kernels._never_mmap()


def test_smooth_htaf_recomputes_its_derivative_on_large_tensors(monkeypatch):
    """From 32 MiB on, an extra saved tensor costs fresh pages on every call (glibc) unless the
    kernels' pool serves it: with the pool off, smooth HTAF saves x and recomputes HTAF' in the
    backward, with the same values and gradients (tests/test_cpu_pool.py: with it)."""
    monkeypatch.setattr(kernels, "SAVE_DERIVATIVE_MAX_BYTES", 32 << 20)   # whatever the env says
    monkeypatch.setenv("HTAF_CPU_POOL_MB", "0")
    limit = kernels.SAVE_DERIVATIVE_MAX_BYTES
    below, at = torch.empty(limit // 4 - 1), torch.empty(limit // 4)
    assert kernels.saves_derivative(below) and not kernels.saves_derivative(at)
    assert not kernels.saves_derivative(torch.empty(limit // 8, dtype=torch.float64))
    x = sample(at.numel(), torch.float32).requires_grad_()
    g = sample(x.numel(), torch.float32, 1.0, seed=5)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = F.htaf(x)
    assert len(saved) == 1 and saved[0] is x          # x, not HTAF'(x)
    (dx,) = torch.autograd.grad(y, x, g)
    head = x[:4097].detach().clone().requires_grad_()  # a small one saves HTAF': same numbers
    y_small = F.htaf(head)
    assert torch.equal(y_small, y[:4097])
    assert torch.equal(torch.autograd.grad(y_small, head, g[:4097])[0], dx[:4097])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_special_values(dtype):
    x = torch.tensor(SPECIAL, dtype=torch.float64).to(dtype)
    g = torch.linspace(-2, 2, x.numel(), dtype=torch.float64).to(dtype)
    fwd = cpu.htaf_forward(x, 0.5, 4.0, 1.0)
    close(fwd, ref.htaf_forward(x, 0.5, 4.0, 1.0))
    assert fwd[0] == 1 and fwd[1] == 0 and fwd[2].isnan()
    for name, kid in KINDS.items():
        for params in PARAMS[name]:
            got = cpu.surrogate_backward(g, x, kid, params, 1.0)
            close(got, reference_backward(g, x, name, params, 1.0))
            assert torch.isfinite(got[[0, 1] + list(range(3, x.numel()))]).all(), name
    for signed in (False, True):
        s = cpu.step(x, signed)
        assert torch.equal(s.nan_to_num(7), ref.step_forward(x, signed).nan_to_num(7))
        assert s[4] == 1 and s[3] == 1        # sign(±0) = +1


def test_half_types_round_once_like_torch():
    """Conversions of every float16/bfloat16 bit pattern: load exactly, store rounded to
    nearest-even (a sign-symmetric STE with clip inf is the identity times grad·scale)."""
    for dtype in HALF:
        bits = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16)
        x = bits.view(dtype)
        ones = torch.ones_like(x)
        same = cpu.surrogate_backward(x, ones, KINDS["ste"], (math.inf,), 1.0)   # grad·1
        assert torch.equal(same.view(torch.int16)[~x.isnan()], bits[~x.isnan()])
        assert same[x.isnan()].isnan().all()
        for scale in (0.1, 3.0, 1e-5, 7e4):
            got = cpu.surrogate_backward(x, ones, KINDS["ste"], (math.inf,), scale)
            want = (x.float() * scale).to(dtype)
            assert torch.equal(got.nan_to_num(0), want.nan_to_num(0)), (dtype, scale)
    # calls of fewer than 8 elements take the portable float16 conversions (not F16C's)
    x = torch.arange(-2**15, 2**15, 5, dtype=torch.int32).to(torch.int16).view(torch.float16)
    for scale in (1.0, 0.1):
        got = torch.cat([cpu.surrogate_backward(c, torch.ones_like(c), KINDS["ste"], (math.inf,),
                                                scale) for c in x.split(7)])
        want = (x.float() * scale).to(torch.float16)
        assert torch.equal(got.nan_to_num(0), want.nan_to_num(0)), scale


# ----------------------------------------------------------------------------- layouts
def _layouts(dtype):
    base = sample(2 * 3 * 5 * 7, dtype).reshape(2, 3, 5, 7)
    return {
        "transposed": base.transpose(1, 3),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "stepped": sample(400, dtype)[::3],
        "expanded": sample(7, dtype).expand(5, 7),
        "offset": sample(100, dtype)[13:90],
        "size_one": sample(7, dtype).reshape(7, 1, 1)[:, :, :1],
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["transposed", "channels_last", "stepped", "expanded", "offset",
                                    "size_one"])
def test_non_contiguous_inputs(layout, dtype):
    x = _layouts(dtype)[layout]
    g = sample(x.numel(), dtype, 1.0, seed=9).reshape(x.shape)
    close(cpu.htaf_forward(x, 0.5, 4.0, 1.0), ref.htaf_forward(x, 0.5, 4.0, 1.0))
    close(cpu.surrogate_backward(g, x, 0, (0.5, 4.0, 1.0), 1.0),
          ref.htaf_backward(g, x, 0.5, 4.0, 1.0, 1.0))
    close(cpu.surrogate_backward(x, g, KINDS["atan"], (2.0,), 1.0),
          reference_backward(x, g, "atan", (2.0,), 1.0))
    assert torch.equal(cpu.step(x, True), ref.step_forward(x, True))


def test_grad_and_input_layouts_differ():
    x = sample(6 * 9, torch.float32).reshape(6, 9)
    g = sample(9 * 6, torch.float32, 1.0, seed=1).reshape(9, 6).t()        # strides (1, 6)
    got = cpu.surrogate_backward(g, x, KINDS["sigmoid"], (4.0,), 1.0)
    close(got, reference_backward(g, x, "sigmoid", (4.0,), 1.0))


def test_inputs_untouched_and_errors():
    x = sample(100, torch.float32)
    keep = x.clone()
    cpu.htaf_forward(x, 0.5, 4.0, 1.0)
    cpu.surrogate_backward(x, x, 0, (0.5, 4.0, 1.0), 1.0)
    assert torch.equal(x, keep)
    with pytest.raises(ValueError, match="kind must be one of"):
        cpu.surrogate_backward(x, x, 13, (1.0,), 1.0)
    with pytest.raises(ValueError, match="takes 1 parameter"):
        cpu.surrogate_backward(x, x, 1, (1.0, 2.0), 1.0)
    with pytest.raises(TypeError, match="one dtype"):
        cpu.surrogate_backward(x, x.double(), 1, (1.0,), 1.0)
    with pytest.raises(TypeError, match="float32/float64"):
        cpu.step(torch.zeros(3, dtype=torch.int32), False)
    with pytest.raises(ValueError, match="shape mismatch"):
        cpu.surrogate_backward(x, x[:50], 1, (1.0,), 1.0)


# ----------------------------------------------------------------------------- the ops
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_registered_ops_run_the_kernels(dtype):
    assert kernels.fused(torch.zeros(1, dtype=dtype))
    x, g = sample(999, dtype), sample(999, dtype, 1.0, seed=1)
    ops = torch.ops.htaf
    assert torch.equal(ops.htaf_forward(x, _t(0.5, 4.0, 1.0)), cpu.htaf_forward(x, 0.5, 4.0, 1.0))
    assert torch.equal(ops.step(x, True), cpu.step(x, True))
    for name, kid in KINDS.items():
        want = cpu.surrogate_backward(g, x, kid, PARAMS[name][0], 0.5)
        got = ops.surrogate_backward(g, x, kid, _t(*PARAMS[name][0]), 0.5)
        assert torch.equal(got.nan_to_num(7), want.nan_to_num(7)), name
    # mixed dtypes (a float32 gradient of a float64 input) keep the reference
    s = get_surrogate("htaf")
    got = s.backward(g.float(), x.double())
    assert torch.equal(got, ref.htaf_backward(g.float(), x.double(), 0.5, 4.0, 1.0, 1.0))


def test_gradcheck_float64_through_the_ops():
    x = (torch.rand(40, dtype=torch.float64) * 8 - 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: F.htaf(t, 0.5, 4.0, 1.0), (x,))
    assert torch.autograd.gradcheck(lambda t: F.htaf(t, 0.2, 7.0, 2.5), (x,))
    # the baselines' fused backward against the derivative of their smooth primitive, away from
    # the kinks of the piecewise ones
    for name in KINDS:
        s = get_surrogate(name)
        kinks = torch.tensor([0.0, 1.0, 0.5, 0.25, 1 / 3, 0.2], dtype=torch.float64)
        xs = torch.rand(30, dtype=torch.float64) * 4 - 2
        xs = xs[((xs.abs()[:, None] - kinks).abs() > 1e-3).all(1)].requires_grad_()
        for signed in (False, True):
            fn = lambda t, s=s, signed=signed: F.binarize(t, s, mode="smooth", signed=signed)
            assert torch.autograd.gradcheck(fn, (xs,)), (name, signed)


def test_straight_through_gradient_is_the_kernel():
    x = sample(300, torch.float32).requires_grad_()
    g = sample(300, torch.float32, 1.0, seed=1)
    for name in KINDS:
        params = dict(zip(cpu.KINDS[name][1], PARAMS[name][0]))
        for signed, fn in ((False, F.heaviside), (True, F.sign)):
            (dx,) = torch.autograd.grad(fn(x, name, **params), x, g)
            scale = get_surrogate(name, **params).grad_scale(signed)
            want = cpu.surrogate_backward(g, x.detach(), KINDS[name], PARAMS[name][0], scale)
            assert torch.equal(dx, want), (name, signed)


# ----------------------------------------------------------------------------- fallback
def test_fallback_without_native_code(monkeypatch):
    """Without the kernels every op keeps the PyTorch reference (the same numbers, within the
    float32 rounding of the formula), and the neurons their time loop."""
    x, g = sample(999, torch.float32).requires_grad_(), sample(999, torch.float32, 1.0, seed=1)
    fused = torch.autograd.grad(F.htaf(x), x, g)[0], F.htaf(x)
    monkeypatch.setattr(kernels, "_state", {"native": False})
    assert not kernels.fused(x)
    slow = torch.autograd.grad(F.htaf(x), x, g)[0], F.htaf(x)
    assert slow[1].grad_fn is not None
    torch.testing.assert_close(slow[1], ref.htaf_forward(x.detach(), 0.5, 4.0, 1.0))
    for a, b in zip(fused, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not LIFNode(step_mode="m")._use_fused(x.detach().reshape(9, 111))
    with pytest.raises(ValueError, match="backend='auto'"):
        LIFNode(step_mode="m", backend="fused")(x.detach().reshape(9, 111))


def test_htaf_no_native_environment_variable(monkeypatch):
    from htaf import _build

    monkeypatch.setenv("HTAF_NO_NATIVE", "1")
    for module in (cpu, _build):
        monkeypatch.setattr(module, "_loaded", {})
    monkeypatch.setattr(_build, "_errors", {})
    monkeypatch.setattr(kernels, "_state", {})
    assert not cpu.available() and "HTAF_NO_NATIVE" in cpu.backend_error()
    x = sample(100, torch.float32)
    assert not kernels.fused(x)
    assert torch.equal(F.binarize(x, "htaf", mode="hard"), ref.step_forward(x, False))


def test_the_kernel_functions_work_as_the_first_call_and_say_when_nothing_serves():
    """htaf.kernels.step & co. register the kernels themselves on first use (they used to
    need an earlier htaf.kernels.fused() call, else the dispatcher said the op had no CPU
    kernel); where no kernel serves a tensor they say so by name."""
    import os
    import subprocess
    import sys

    code = ("import torch, htaf.kernels as k\n"
            "x = torch.tensor([-1.0, 0.0, 2.0])\n"
            "print(k.step(x, False).tolist(), k.surrogate_backward(torch.ones(3), x, 0, "
            "[torch.tensor(0.5), torch.tensor(4.0), torch.tensor(1.0)], 1.0)[1].item())\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["[0.0,", "1.0,", "1.0]", "1.125"]
    env = {**os.environ, "HTAF_NO_NATIVE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode != 0
    assert "no fused kernel serves cpu torch.float32 tensors" in run.stderr


# ----------------------------------------------------------------------------- threads
def test_results_do_not_depend_on_the_thread_count():
    x = sample(2**19 + 2**17 + 5, torch.float32)
    g = sample(x.numel(), torch.float32, 1.0, seed=1)
    xs = (sample(4 * 20001, torch.float32, 1.5, seed=2) + 0.6).reshape(4, 20001)
    gs = sample(xs.numel(), torch.float32, 1.0, seed=3).reshape(xs.shape)
    v0, gv = torch.zeros(20001), sample(20001, torch.float32, 1.0, seed=4)
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs.append([cpu.step(x, True), cpu.htaf_forward(x, 0.5, 4.0, 1.0),
                     cpu.surrogate_backward(g, x, 0, (0.5, 4.0, 1.0), 1.0),
                     cpu.surrogate_backward(g, x, KINDS["erf"], (2.0,), 1.0),
                     *cpu.lif_forward(xs, v0, 0.5, 1.0, 0.0, True, True, True),
                     *cpu.lif_backward(gs, gv, xs, v0, 0.5, 1.0, 0.0, True, True, True, False, 0,
                                       (0.5, 4.0, 1.0), 1.0, True)])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


_THREADS_SCRIPT = """
import sys, torch
from htaf.kernels import cpu
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
x = torch.randn(2**19 + 2**17 + 5, generator=g) * 4
xs = (torch.randn(4, 20001, generator=g) * 1.5 + 0.6)
outs = [cpu.htaf_forward(x, 0.5, 4.0, 1.0), cpu.surrogate_backward(x, x, 0, (0.5, 4.0, 1.0), 1.0),
        *cpu.lif_backward(xs, xs[0], xs, xs[1], 0.5, 1.0, 0.0, True, True, True, False, 0,
                          (0.5, 4.0, 1.0), 1.0, True)]
torch.save({"openmp": cpu.uses_openmp(), "outs": outs}, sys.argv[1])
"""


def _two_builds(tmp_path, script: str, flag: str, threads: int) -> list[dict]:
    """What ``script`` saves (to the path it is given) in a fresh process with the environment
    variable ``flag`` set to 0, then to 1: the two builds of the library."""
    import os
    import subprocess
    import sys

    results = []
    for value in ("0", "1"):
        out = tmp_path / f"{flag}{value}.pt"
        env = dict(os.environ, **{flag: value}, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True, timeout=300)
        results.append(torch.load(out))
    return results


def test_openmp_and_pthread_builds_agree(tmp_path):
    """The kernels share PyTorch's OpenMP pool where the compiler has -fopenmp; HTAF_NO_OPENMP=1
    builds the pthread fallback. Both give the same bits with two threads."""
    results = _two_builds(tmp_path, _THREADS_SCRIPT, "HTAF_NO_OPENMP", threads=2)
    assert results[1]["openmp"] is False
    for a, b in zip(results[0]["outs"], results[1]["outs"]):
        assert torch.equal(a, b)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_streamed_outputs_are_the_ordinary_ones(dtype):
    """Outputs from 32 MiB on are written with streaming stores (the cheap ops from a block
    buffer, HTAF's from registers on AVX-512): with the threshold lowered to 0, every op gives
    the same bits as with ordinary stores, at odd lengths and offsets; cpu.mul is the product."""
    prev = cpu.set_stream_min_bytes(1 << 50)
    try:
        for n in (1, 17, 4099, 70_001):
            x = sample(n, dtype, seed=n)
            x[::7], x[::11] = math.nan, math.inf
            g = sample(n, dtype, 1.0, seed=n + 1)
            outs = []
            for threshold in (1 << 50, 0):
                cpu.set_stream_min_bytes(threshold)
                outs.append([cpu.step(x, True), cpu.step(x[1:], False),
                             cpu.surrogate_backward(g, x, KINDS["atan"], (2.0,), 1.0),
                             cpu.surrogate_backward(g[1:], x[:-1], KINDS["sigmoid"], (4.0,), 0.5),
                             cpu.surrogate_backward(g, x, 0, (0.5, 4.0, 1.0), 1.0),
                             cpu.surrogate_backward(g[3:], x[3:], 0, (0.1, 8.0, 3.0), 2.0),
                             cpu.htaf_forward(x, 0.5, 4.0, 1.0), cpu.htaf_forward(x[5:], 1, 2, 3),
                             *cpu.htaf_forward_grad(x, 0.5, 4.0, 1.0, 0.5)]
                            + ([cpu.mul(x, g), cpu.mul(x[1:], g[:-1])]
                               if dtype in (torch.float32, torch.float64) else []))
            for a, b in zip(*outs):
                assert torch.equal(_bits(a), _bits(b)), n
            if dtype in (torch.float32, torch.float64):
                assert torch.equal(_bits(outs[1][-2]), _bits(x * g))
    finally:
        cpu.set_stream_min_bytes(prev)


def test_mul_checks_its_arguments():
    a = torch.ones(3)
    with pytest.raises(ValueError, match="one shape"):
        cpu.mul(a, torch.ones(4))
    with pytest.raises(ValueError, match="float32/float64"):
        cpu.mul(a.half(), a.half())
    with pytest.raises(ValueError, match="out must be"):
        cpu.mul(a, a, out=torch.empty(3, dtype=torch.float64))
    assert torch.equal(cpu.mul(a * 2, a * 3), torch.full((3,), 6.0))


_SIMD_SCRIPT = """
import sys, torch
from htaf.kernels import cpu
g = torch.Generator().manual_seed(0)
special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-42, float("inf"), -float("inf"), float("nan"),
                        -float("nan"), 43.4, -43.4, 88.7, -88.7, 180.0, -180.0, 3e38, -3e38])
x = torch.cat([torch.linspace(-230, 230, 460_001), torch.randn(100_003, generator=g) * 4, special])
grad = torch.randn(x.numel(), generator=g)
outs = []
for a, b, c in ((0.5, 4.0, 1.0), (0.05, 12.0, 3.0), (2.0, 0.0, 0.7), (1.0, 0.5, 0.01)):
    outs += [cpu.htaf_forward(x, a, b, c), *cpu.htaf_forward_grad(x, a, b, c, 0.5),
             cpu.surrogate_backward(grad, x, 0, (a, b, c), 2.0),
             cpu.htaf_forward(x[1:], a, b, c)]          # another alignment, other tail lengths
torch.save({"avx512": cpu.uses_avx512(), "outs": outs}, sys.argv[1])
"""


def test_avx512_and_portable_builds_agree_bit_for_bit(tmp_path):
    """HTAF's exponentials on AVX-512 (intrinsics) and in portable C (HTAF_NO_SIMD=1) give the
    same bits: values and slopes over the whole range (tails down into the subnormals, ±inf,
    NaN, ±0), four parameter sets (β = 0 included), odd lengths and offsets. On a CPU without
    AVX-512 both builds are the portable C and the test checks only that."""
    from pathlib import Path

    results = _two_builds(tmp_path, _SIMD_SCRIPT, "HTAF_NO_SIMD", threads=1)
    assert results[1]["avx512"] is False
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        assert results[0]["avx512"] is ("avx512f" in cpuinfo.read_text().split())
    for a, b in zip(results[0]["outs"], results[1]["outs"]):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


# ----------------------------------------------------------------------------- LIF
# (name, leaky, decay_input, v_reset, detach_reset, surrogate, T, N, learn_k)
LIF_CASES = [
    ("lif_hard", True, True, 0.0, False, "htaf", 5, 37, False),
    ("lif_hard_detach", True, True, 0.0, True, "sigmoid", 4, 300, False),
    ("lif_soft", True, True, None, False, "atan", 4, 29, False),
    ("lif_soft_detach", True, True, None, True, "erf", 3, 131, False),
    ("lif_nodecay_hard_vr", True, False, -0.25, False, "swish_sign", 4, 30, False),
    ("lif_nodecay_soft", True, False, None, False, "approx_sign", 3, 17, False),
    ("if_hard", False, True, 0.0, False, "piecewise_quadratic", 4, 19, False),
    ("if_soft_detach", False, True, None, True, "rect", 3, 23, False),
    ("plif_hard", True, True, 0.0, False, "htaf", 4, 41, True),
    ("plif_nodecay_soft", True, False, None, False, "fast_sigmoid", 3, 270, True),
    ("plif_soft_detach", True, True, None, True, "ste", 6, 65, True),
    ("T1", True, True, 0.0, False, "super_spike", 1, 7, True),
    ("N1_T8", True, True, 0.0, False, "triangle", 8, 1, False),
    ("long_T", True, True, 0.0, False, "piecewise_exp", 40, 150, True),
    ("blocks", True, True, 0.0, False, "htaf", 3, 2500, True),   # 5000 neurons: 3 blocks
]


def _run_lif(case, dtype, backend):
    name, leaky, decay, v_reset, detach, sname, T, N, learn_k = case
    gen = torch.Generator().manual_seed(len(name) * 7919 + T)
    x = (torch.randn(T, 2, N, generator=gen, dtype=torch.float64) * 1.5 + 0.6).to(dtype)
    v0 = (torch.randn(2, N, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    gs = torch.randn(T, 2, N, generator=gen, dtype=torch.float64).to(dtype)
    gv = torch.randn(2, N, generator=gen, dtype=torch.float64).to(dtype)
    xi, vi = x.clone().requires_grad_(), v0.clone().requires_grad_()
    w = torch.tensor(0.3, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                     requires_grad=learn_k)
    k = w.sigmoid() if learn_k else 1 / 2.5
    s, v = lif_multistep(xi, vi, k, v_threshold=1.0, v_reset=v_reset, decay_input=decay,
                         detach_reset=detach, surrogate=get_surrogate(sname), leaky=leaky,
                         backend=backend)
    loss = (s.double() * gs.double()).sum() + (v.double() * gv.double()).sum()
    return s, v, torch.autograd.grad(loss, [xi, vi] + ([w] if learn_k else []))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LIF_CASES, ids=[c[0] for c in LIF_CASES])
def test_lif_matches_reference(case, dtype):
    s1, v1, g1 = _run_lif(case, dtype, "cpu")
    s2, v2, g2 = _run_lif(case, dtype, "torch")
    assert s1.dtype == dtype and torch.equal(s1, s2)
    tol = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5)}.get(dtype, (1e-2, 1e-2))
    torch.testing.assert_close(v1, v2, rtol=tol[0], atol=tol[1])
    for a, b in zip(g1, g2):
        assert a.dtype == b.dtype
        scale = b.double().abs().max().item() + 1e-12
        torch.testing.assert_close(a.double() / scale, b.double() / scale, rtol=tol[0],
                                   atol=tol[1])


def test_lif_special_values_and_empty():
    x = torch.tensor([[math.nan, math.inf, -math.inf, 2.0, 0.5],
                      [0.5, 0.5, 0.5, math.nan, 0.5]]).requires_grad_()
    v0 = torch.zeros(5)
    sur = get_surrogate("htaf")
    s1, v1 = lif_multistep(x, v0, 0.5, surrogate=sur, backend="cpu")
    s2, v2 = lif_multistep(x, v0, 0.5, surrogate=sur, backend="torch")
    assert torch.equal(s1.nan_to_num(7), s2.nan_to_num(7))
    assert torch.equal(v1.nan_to_num(7), v2.nan_to_num(7))
    g1 = torch.autograd.grad(s1.nan_to_num(0).sum() + v1.nan_to_num(0).sum(), x)[0]
    g2 = torch.autograd.grad(s2.nan_to_num(0).sum() + v2.nan_to_num(0).sum(), x)[0]
    assert torch.equal(g1.isnan(), g2.isnan())
    torch.testing.assert_close(g1.nan_to_num(0), g2.nan_to_num(0))
    s, v = cpu.lif_forward(torch.zeros(3, 0), torch.zeros(0), 0.5, 1.0, 0.0, True, True, True)
    assert s.shape == (3, 0) and v.shape == (0,)
    gx, gv0, gk = cpu.lif_backward(torch.zeros(3, 0), torch.zeros(0), torch.zeros(3, 0),
                                   torch.zeros(0), 0.5, 1.0, 0.0, True, True, True, False, 0,
                                   (0.5, 4.0, 1.0), 1.0, True)
    assert gx.shape == (3, 0) and gk.item() == 0


@pytest.mark.parametrize("node", ["lif", "plif", "if"])
def test_lif_nodes_use_the_cpu_kernel(node):
    make = {"lif": lambda b: LIFNode(tau=3.0, step_mode="m", backend=b, surrogate="atan"),
            "plif": lambda b: ParametricLIFNode(step_mode="m", backend=b, v_reset=None),
            "if": lambda b: IFNode(step_mode="m", backend=b, detach_reset=True)}[node]
    fused, loop = make("auto"), make("torch")
    x = (sample(4 * 3 * 50, torch.float32, 1.5) + 0.5).reshape(4, 3, 50).requires_grad_()
    assert fused._use_fused(x) and not loop._use_fused(x)
    s1, s2 = fused(x), loop(x)
    assert torch.equal(s1, s2)
    torch.testing.assert_close(fused.v, loop.v)
    p1, p2 = list(fused.parameters()), list(loop.parameters())
    g1 = torch.autograd.grad((s1 * x).sum(), [x] + p1)
    g2 = torch.autograd.grad((s2 * x).sum(), [x] + p2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_benchmark_tables_and_docs_markers(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu.py"
    spec = importlib.util.spec_from_file_location("bench_cpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = {
        "activations": [{"size": 2**20, "threads": t, "ideal_ms": 1.0,
                         "rows": [{"name": "htaf (smooth)", "ms": 2.0, "x_ideal": 2.0}]}
                        for t in (1, 2)],
        "lif": [{"shape": [4, 8], "threads": 1, "ideal_ms": 1.0,
                 "rows": [{"name": "htaf LIFNode, native (HTAF)", "ms": 1.0, "x_ideal": 1.0},
                          {"name": "snnTorch Leaky (atan)", "ms": 3.0, "x_ideal": 3.0},
                          {"name": "SpikingJelly", "missing": "missing (ImportError)"}]}],
    }
    text = bench.markdown(report)
    assert "| htaf (smooth) | 2.00× | 2.00× |" in text and "| 3.0× faster |" in text
    # --runs: each run's ratio within its run, the median over runs, the range beside it
    one = lambda copy, row: {"size": 8, "threads": 1, "copy_ms": copy, "ideal_ms": 2.5 * copy,
                             "copy_median_ms": copy,
                             "rows": [{"name": "htaf (smooth)", "ms": row,
                                       "x_ideal": row / (2.5 * copy), "median_ms": row}]}
    both = bench.combine_runs([one(1.0, 3.0), one(2.0, 4.0), one(1.0, 5.0)])
    assert both["runs"] == 3 and both["rows"][0]["x_ideal_runs"] == [1.2, 0.8, 2.0]
    assert both["rows"][0]["x_ideal"] == 1.2 and both["rows"][0]["ms"] == 4.0
    table = bench.markdown({"activations": [both], "lif": []})
    assert "(median of 3 runs, range)" in table and "| htaf (smooth) | 1.20× (0.80–2.00) |" in table
    assert bench.combine_runs([one(1.0, 3.0)]) == one(1.0, 3.0)
    assert "warm" not in table      # older JSON without the warm copy: no such line
    warm = [dict(one(1.0, 3.0), ideal_warm_ms=w) for w in (0.5, 0.9, 0.7)]
    table = bench.markdown({"activations": [bench.combine_runs(warm)], "lif": []})
    assert "| *ideal, warm (2.5 × copy_ repeated back to back)* | 0.70 ms |" in table
    with pytest.raises(SystemExit):
        bench.parse_args(["--runs", "0"])
    doc = tmp_path / "k.md"
    doc.write_text(f"intro\n{bench.DOCS_BEGIN}\nold\n{bench.DOCS_END}\nend\n")
    bench.update_docs(doc, text)
    body = doc.read_text()
    assert "old" not in body and text in body and body.endswith("end\n")


def test_benchmark_reference_rows_run_the_pytorch_reference():
    """bench_cpu's 'reference' rows switch the library to its PyTorch path (HTAF_NO_NATIVE's),
    and back: a broken switch had made every reference row raise once the native kernels became
    the ops' CPU implementations."""
    import importlib.util
    from pathlib import Path

    from htaf import functional as F
    from htaf import kernels

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu.py"
    spec = importlib.util.spec_from_file_location("bench_cpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    before = kernels.fused(x)
    with bench.reference_path():
        assert not kernels.fused(x)
        y = F.htaf(x)
        (g,) = torch.autograd.grad(y.sum(), x)
    assert kernels.fused(x) == before
    torch.testing.assert_close(y, F.htaf(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, torch.autograd.grad(F.htaf(x).sum(), x)[0], rtol=1e-5, atol=1e-6)


def test_eager_calls_skip_the_dispatcher_and_dispatch_modes_still_see_the_ops():
    """Plain CPU tensors in eager mode call the kernels directly (the op dispatch costs more than
    a small activation's kernel); under a dispatch mode the same code goes through the ops, with
    the same results."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    import contextlib

    x = sample(300, torch.float32).requires_grad_()
    outs = []
    for mode in (contextlib.nullcontext(), Record()):
        with mode:
            y = F.heaviside(x, "htaf") + F.htaf(x)
            (g,) = torch.autograd.grad(y.sum(), x)
        outs.append((y, g))
    assert kernels._direct(x.detach())
    for op in ("htaf.step", "htaf.surrogate_backward", "htaf.htaf_forward_grad"):
        assert any(op in o for o in mode.ops), (op, mode.ops)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
