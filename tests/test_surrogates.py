"""The surrogate registry: formulas, straight-through semantics, registration, errors."""

import math
from dataclasses import dataclass

import pytest
import torch

import htaf
from htaf.functional import binarize
from htaf.surrogates import (
    Surrogate,
    get_surrogate,
    hyperparameter,
    list_surrogates,
    register_surrogate,
)

ALL = list_surrogates()
BASELINES = ["sigmoid", "atan", "fast_sigmoid", "super_spike", "piecewise_quadratic",
             "piecewise_exp", "erf", "triangle", "rect", "ste", "approx_sign", "swish_sign"]


def test_every_spec_baseline_is_registered():
    assert ALL[0] == "htaf"
    assert set(BASELINES) <= set(ALL)


# Spec table formulas, written independently of the implementation, at each default.
SPEC = {
    "sigmoid": lambda x: 4 * torch.sigmoid(4 * x) * (1 - torch.sigmoid(4 * x)),
    "atan": lambda x: 1.0 / (1 + (math.pi / 2 * 2 * x) ** 2),
    "fast_sigmoid": lambda x: 1 / (1 + 25 * x.abs()) ** 2,
    "super_spike": lambda x: 1 / (1 + x.abs()) ** 2,
    "piecewise_quadratic": lambda x: torch.where(x.abs() <= 1, 1 - x.abs(), 0.0),
    "piecewise_exp": lambda x: 0.5 * torch.exp(-x.abs()),
    "erf": lambda x: 2 / math.sqrt(math.pi) * torch.exp(-4 * x * x),
    "triangle": lambda x: torch.clamp(1 - x.abs(), min=0),
    "rect": lambda x: (x.abs() < 0.5).double(),
    "ste": lambda x: (x.abs() <= 1).double(),
    "approx_sign": lambda x: torch.where(x.abs() <= 1, 2 - 2 * x.abs(), 0.0),
    "swish_sign": lambda x: 5 * (2 - 5 * x * torch.tanh(2.5 * x)) / (1 + torch.cosh(5 * x)),
}


@pytest.mark.parametrize("name", BASELINES)
def test_derivative_matches_spec_formula(name):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    assert torch.allclose(get_surrogate(name).grad(x), SPEC[name](x), rtol=1e-12, atol=1e-14)


def _away_from_kinks(name, n=48):
    x = torch.linspace(-2.9, 2.9, n, dtype=torch.float64)
    kinks = torch.tensor([0.0, -1.0, 1.0, -0.5, 0.5], dtype=torch.float64)
    keep = ((x[:, None] - kinks[None]).abs() > 1e-3).all(1)
    return x[keep]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("signed", [False, True])
def test_gradcheck_smooth_mode(name, signed):
    """Smooth mode's backward is the derivative: gradcheck checks it against its primitive."""
    x = _away_from_kinks(name).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: binarize(t, name, mode="smooth", signed=signed), (x,), atol=1e-6)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("signed", [False, True])
def test_straight_through_forward_exact_backward_surrogate(name, signed):
    s = get_surrogate(name)
    x = torch.linspace(-3, 3, 97, dtype=torch.float64).requires_grad_()
    y = binarize(x, s, mode="straight_through", signed=signed)
    low = -1.0 if signed else 0.0
    assert torch.equal(y, torch.where(x >= 0, 1.0, low).double())
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(y, x, g)
    expected = g * s.grad(x.detach()) * s.grad_scale(signed)
    assert torch.allclose(gx, expected, rtol=1e-12, atol=1e-15)


def test_grad_scale_conventions():
    assert get_surrogate("htaf").grad_scale(signed=True) == 2.0
    assert get_surrogate("atan").grad_scale(signed=False) == 1.0
    assert get_surrogate("approx_sign").grad_scale(signed=True) == 1.0
    assert get_surrogate("approx_sign").grad_scale(signed=False) == 0.5
    assert get_surrogate("ste").grad_scale(True) == get_surrogate("ste").grad_scale(False) == 1.0


def test_hard_mode_has_no_gradient_path():
    x = torch.randn(5, requires_grad=True)
    y = binarize(x, "htaf", mode="hard")
    assert not y.requires_grad and torch.equal(y, (x >= 0).float())


@pytest.mark.parametrize("name", ALL)
def test_smooth_form_is_anchored_and_increasing(name):
    s = get_surrogate(name)
    x = torch.linspace(-0.4, 0.4, 81, dtype=torch.float64)
    g = s.smooth(x)
    assert s.smooth(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(0.5)
    assert bool((g[1:] >= g[:-1]).all())


def test_parameters_are_settable_and_validated():
    assert get_surrogate("atan", alpha=3.0).alpha == 3.0
    assert get_surrogate("ste", clip=math.inf).grad(torch.tensor([1e6])).item() == 1.0
    with pytest.raises(ValueError, match="atan.alpha"):
        get_surrogate("atan", alpha=-2.0)
    with pytest.raises(ValueError, match="unknown parameter.*slope"):
        get_surrogate("atan", slope=2.0)
    with pytest.raises(ValueError, match="unknown surrogate 'nope'.*htaf"):
        get_surrogate("nope")
    with pytest.raises(ValueError, match="unknown surrogate"):
        htaf.heaviside(torch.zeros(2), "nope")


def test_surrogates_are_immutable_hashable_values():
    a, b = get_surrogate("htaf", gamma=2.0), get_surrogate("htaf", gamma=2.0)
    assert a == b and hash(a) == hash(b) and a != get_surrogate("htaf")
    with pytest.raises(AttributeError, match="cannot assign"):
        a.gamma = 3.0
    c = a.replace(gamma=5.0)
    assert c.gamma == 5.0 and a.gamma == 2.0
    assert get_surrogate(a) is a and get_surrogate("HTAF").name == "htaf"
    assert repr(c) == "HTAFSurrogate(alpha=0.5, beta=4, gamma=5)"


def test_register_user_surrogate():
    @register_surrogate("test_box")
    @dataclass(frozen=True)
    class Box(Surrogate):
        """g'(x) = 1[|x| < w] / (2w)."""

        width: float = hyperparameter(0.5)

        @staticmethod
        def derivative(x, width):
            return (x.abs() < width).to(x.dtype) / (2 * width)

    try:
        assert "test_box" in list_surrogates()
        x = torch.tensor([0.1, 2.0], requires_grad=True)
        htaf.heaviside(x, "test_box", width=0.25).sum().backward()
        assert x.grad.tolist() == [2.0, 0.0]
        with pytest.raises(ValueError, match="already registered"):
            register_surrogate("test_box")(Box)
        assert Box.kernel_id is None and get_surrogate("test_box").width == 0.5
        with pytest.raises(NotImplementedError, match="no smooth form"):
            htaf.Heaviside("test_box", mode="smooth")(x)
    finally:
        from htaf import surrogates

        surrogates._REGISTRY.pop("test_box", None)


def test_surrogate_instance_is_a_spike_function():
    spike = get_surrogate("atan", alpha=2.0)
    v = torch.tensor([-0.2, 0.0, 0.3], requires_grad=True)
    s = spike(v)
    s.sum().backward()
    assert s.tolist() == [0.0, 1.0, 1.0]
    assert v.grad[1].item() == pytest.approx(1.0)


def test_get_surrogate_shares_one_frozen_instance_per_numeric_setting():
    """The per-call path reuses instances (they are frozen): the same name and numbers give the
    same object, 2 and 2.0 too; other numbers and other classes do not; values that are not
    plain int/float (a Fraction here) are validated anew every time."""
    a = get_surrogate("atan", alpha=2.0)
    assert get_surrogate("ATan", alpha=2) is a and a.alpha == 2.0
    assert get_surrogate("atan", alpha=3.0) is not a and get_surrogate("atan", alpha=3.0).alpha == 3.0
    assert get_surrogate("sigmoid", alpha=2.0) is not a
    from fractions import Fraction

    half = Fraction(1, 2)                           # a number, but not a plain int/float
    assert get_surrogate("atan", alpha=half) is not get_surrogate("atan", alpha=half)
    assert get_surrogate("atan", alpha=half).alpha == 0.5
    with pytest.raises(ValueError, match="alpha"):
        get_surrogate("atan", alpha=-1.0)          # validation still runs on a miss
    with pytest.raises(ValueError, match="unknown parameter"):
        get_surrogate("atan", beta=1.0)


def test_override_of_a_builtin_name_uses_its_own_derivative():
    """A class registered over a built-in name (``override=True``) must not run the built-in's
    fused backward op: that silently gave the old surrogate's gradient."""
    from htaf import surrogates

    builtin = surrogates._REGISTRY["sigmoid"]

    @register_surrogate("sigmoid", override=True)
    @dataclass(frozen=True)
    class FlatSigmoid(builtin):
        @staticmethod
        def derivative(x, alpha):
            return torch.full_like(x, 0.25)

    try:
        x = torch.tensor([0.0, 3.0], requires_grad=True)
        htaf.heaviside(x, "sigmoid").sum().backward()
        assert x.grad.tolist() == [0.25, 0.25]
    finally:
        surrogates._REGISTRY["sigmoid"] = builtin
        builtin.name = "sigmoid"
    x = torch.tensor([0.0], requires_grad=True)
    htaf.heaviside(x, "sigmoid").sum().backward()
    assert x.grad.item() == pytest.approx(1.0)        # the built-in again: α/4 at 0


def test_a_registered_surrogate_must_be_a_dataclass():
    class Loose(Surrogate):
        @staticmethod
        def derivative(x):
            return torch.ones_like(x)

    with pytest.raises(TypeError, match="dataclass"):
        register_surrogate("loose")(Loose)


def test_every_builtin_names_its_kernel_form():
    """One source per formula: each built-in class names the fused kernel's form of its own
    derivative (a distinct id the Triton and native kernels dispatch on)."""
    ids = {name: get_surrogate(name).kernel_id for name in ALL}
    assert ids["htaf"] == 0 and sorted(ids.values()) == list(range(len(ALL)))
