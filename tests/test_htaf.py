"""HTAF itself: the spec's reference values, its properties, numerics in every dtype, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import htaf
from htaf.functional import htaf as htaf_fn
from htaf.functional import htaf_derivative

# x, HTAF(x), HTAF'(x) with α = 0.5, β = 4, γ = 1 (HTAF_SPEC.md)
REFERENCE = [
    (0.0, 0.5, 1.125),
    (0.5, 0.8907542485, 3.547760e-01),
    (1.0, 0.9719789089, 5.937149e-02),
    (2.0, 0.9922793822, 5.995532e-03),
    (5.0, 0.9984982733, 7.508249e-04),
    (10.0, 0.9998766054, 6.168968e-05),
    (20.0, 0.9999991685, 4.157637e-07),
]


def test_reference_values_float64():
    x = torch.tensor([r[0] for r in REFERENCE], dtype=torch.float64, requires_grad=True)
    y = htaf_fn(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    for (xi, yi, di), yv, gv in zip(REFERENCE, y.tolist(), g.tolist()):
        assert yv == pytest.approx(yi, abs=1e-9), xi
        # the spec prints derivatives to 7 significant digits
        assert gv == pytest.approx(di, rel=1e-6, abs=1e-9), xi
    assert torch.equal(htaf_derivative(x.detach()), g)


def test_reference_values_negative_side_by_symmetry():
    x = torch.tensor([r[0] for r in REFERENCE], dtype=torch.float64)
    assert torch.allclose(htaf_fn(-x), 1 - htaf_fn(x), atol=1e-15, rtol=0)
    assert torch.allclose(htaf_derivative(-x), htaf_derivative(x), atol=0, rtol=1e-14)


params = st.fixed_dictionaries({
    "alpha": st.floats(0.05, 3.0), "beta": st.floats(0.0, 10.0), "gamma": st.floats(0.1, 5.0)})


@settings(max_examples=60, deadline=None)
@given(p=params, xs=st.lists(st.floats(-30, 30), min_size=2, max_size=40))
def test_range_symmetry_monotonicity(p, xs):
    x = torch.tensor(sorted(set(xs)), dtype=torch.float64)
    y = htaf_fn(x, **p)
    # 0 < HTAF < 1 wherever float64 can tell it from 0 and 1 (|αx + β·tanh γx| < 36)
    z = p["alpha"] * x + p["beta"] * torch.tanh(p["gamma"] * x)
    inside = z.abs() < 36
    assert bool(((y[inside] > 0) & (y[inside] < 1)).all())
    assert bool(((y >= 0) & (y <= 1)).all())
    assert torch.allclose(htaf_fn(-x, **p), 1 - y, atol=1e-15, rtol=0)
    if len(x) > 1:
        assert bool((y[1:] >= y[:-1]).all())
        assert bool((htaf_derivative(x, **p) > 0)[inside].all())  # strictly increasing
    assert htaf_fn(torch.zeros(1, dtype=torch.float64), **p).item() == 0.5


def test_gradient_mass_near_zero():
    half = torch.tensor([-0.5, 0.5], dtype=torch.float64)
    mass = (htaf_fn(half)[1] - htaf_fn(half)[0]).item()
    sigmoid4 = (torch.sigmoid(4 * half)[1] - torch.sigmoid(4 * half)[0]).item()
    atan = 2 * math.atan(math.pi / 2 * 2 * 0.5) / math.pi  # atan surrogate with slope 1 at 0
    assert mass == pytest.approx(0.7815, abs=5e-5)
    assert sigmoid4 == pytest.approx(0.7616, abs=5e-5)
    assert atan == pytest.approx(0.6391, abs=5e-5)
    assert mass > sigmoid4 > atan   # but those two have slope 1 at zero, HTAF 1.125:
    slope = htaf_derivative(torch.zeros(1, dtype=torch.float64)).item()
    assert slope == pytest.approx(1.125)
    matched = (torch.sigmoid(4 * slope * half)[1] - torch.sigmoid(4 * slope * half)[0]).item()
    assert matched == pytest.approx(0.8093, abs=5e-5) and matched > mass   # σ(4.5x) holds more
    far = torch.tensor([6.0], dtype=torch.float64)   # ... and has a far lighter tail
    sig_tail = (4 * slope * torch.sigmoid(4 * slope * far) * torch.sigmoid(-4 * slope * far)).item()
    assert htaf_derivative(far).item() > 100 * sig_tail


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.1, 2.0), beta=st.floats(0.0, 8.0), gamma=st.floats(0.5, 4.0))
def test_tail_decays_like_exp_minus_alpha(alpha, beta, gamma):
    # far enough that sech²(γx) is negligible against α, near enough that float64 keeps σ'(z)
    # (and αx + β ≥ 40 so that σ(z)σ(−z) ≈ e^(−z) to 1e-17)
    x = torch.tensor([max(40.0 / gamma, (40.0 + beta) / alpha)], dtype=torch.float64)
    ratio = (htaf_derivative(x + 1, alpha, beta, gamma) / htaf_derivative(x, alpha, beta, gamma)).item()
    assert ratio == pytest.approx(math.exp(-alpha), rel=1e-9)


def test_default_tail_ratio():
    x = torch.tensor([40.0, 41.0], dtype=torch.float64)
    d = htaf_derivative(x)
    assert (d[1] / d[0]).item() == pytest.approx(0.6065, abs=1e-4)


def test_converges_to_heaviside():
    x = torch.tensor([-1.0, -0.1, -0.01, 0.01, 0.1, 1.0], dtype=torch.float64)
    errors = []
    for k in (10.0, 100.0, 1000.0):
        y = htaf_fn(x, alpha=0.5, beta=k, gamma=k)
        errors.append((y - (x > 0).double()).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-12


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_every_dtype(dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([-math.inf, -big, -1e4, -1.0, 0.0, 1.0, 1e4, big, math.inf, math.nan],
                     dtype=dtype, requires_grad=True)
    y = htaf_fn(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert y.dtype == dtype and g.dtype == dtype
    assert y[0].item() == 0.0 and y[-2].item() == 1.0
    assert g[0].item() == 0.0 and g[-2].item() == 0.0
    assert math.isnan(y[-1].item()) and math.isnan(g[-1].item())
    finite = slice(0, -1)
    assert bool(torch.isfinite(y[finite]).all()) and bool(torch.isfinite(g[finite]).all())
    assert bool(((y[finite] >= 0) & (y[finite] <= 1)).all())
    assert bool((g[finite] >= 0).all())
    assert y[4].item() == 0.5
    assert g[4].item() == pytest.approx(1.125, rel=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", [htaf.heaviside, htaf.sign])
def test_straight_through_special_values(dtype, fn):
    x = torch.tensor([-math.inf, -3.0, 0.0, 3.0, math.inf, math.nan], dtype=dtype, requires_grad=True)
    y = fn(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    low = -1.0 if fn is htaf.sign else 0.0
    assert y[:-1].tolist() == [low, low, 1.0, 1.0, 1.0]
    assert math.isnan(y[-1].item()) and math.isnan(g[-1].item())
    assert g[0].item() == 0.0 and g[4].item() == 0.0
    scale = 2.0 if fn is htaf.sign else 1.0
    assert g[2].item() == pytest.approx(scale * 1.125, rel=1e-2)


@pytest.mark.parametrize("kw, name", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": -1.0}, "alpha"), ({"beta": -0.1}, "beta"),
    ({"gamma": 0.0}, "gamma"), ({"alpha": math.nan}, "alpha"), ({"gamma": math.inf}, "gamma"),
    ({"beta": True}, "beta"), ({"alpha": "1"}, "alpha"),
])
def test_bad_parameters_raise_value_error_naming_them(kw, name):
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=name):
        htaf_fn(x, **kw)
    with pytest.raises(ValueError, match=name):
        htaf.HTAF(**kw)
    with pytest.raises(ValueError, match=name):
        htaf.heaviside(x, "htaf", **kw)


def test_beta_zero_is_a_plain_sigmoid():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert torch.allclose(htaf_fn(x, alpha=2.0, beta=0.0), torch.sigmoid(2.0 * x))


def test_non_tensor_and_integer_inputs_are_rejected():
    with pytest.raises(TypeError, match="torch.Tensor"):
        htaf_fn([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        htaf_fn(torch.arange(3))


def test_gradcheck_smooth_float64():
    x = torch.randn(64, dtype=torch.float64, requires_grad=True) * 3
    for p in ({}, {"alpha": 0.1, "beta": 8.0, "gamma": 2.0}, {"alpha": 1.5, "beta": 0.0, "gamma": 0.5}):
        assert torch.autograd.gradcheck(lambda t: htaf_fn(t, **p), (x.detach().requires_grad_(),))


def test_shapes_and_memory_layout_are_kept():
    x = torch.randn(4, 6, 5).transpose(0, 2)
    y = htaf_fn(x)
    assert y.shape == x.shape
    assert torch.allclose(y, htaf_fn(x.contiguous()), rtol=1e-6, atol=1e-7)
    assert htaf_fn(torch.empty(0, 3)).shape == (0, 3)


def test_backward_saves_only_the_input():
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(1000, requires_grad=True)
    for fn in (htaf_fn, htaf.heaviside, htaf.sign):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x * 1.0)
        assert sum(t.numel() * t.element_size() for t in saved) <= x.numel() * x.element_size()


def test_hard_mode_validates_the_surrogate_like_the_other_modes():
    """binarize(..., mode="hard") used to return the step before resolving the surrogate, so an
    unknown name or a misspelt parameter passed silently until the mode changed."""
    from htaf.functional import binarize

    x = torch.randn(5)
    with pytest.raises(ValueError, match="unknown surrogate 'nope'"):
        binarize(x, "nope", mode="hard")
    with pytest.raises(ValueError, match="unknown parameter.*gama"):
        binarize(x, "htaf", mode="hard", gama=3.0)
    assert torch.equal(binarize(x, "atan", mode="hard", alpha=3.0), (x >= 0).float())
