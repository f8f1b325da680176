"""htaf against the peers' own code: SpikingJelly 2.0 and snnTorch (the ``peers`` extra) and Larq
(the ``larq`` extra). Each comparison runs the peer's real functions and modules on the same inputs;
without the extra the tests skip and say which extra to install.

What is compared, and the conventions that differ:

* Surrogates: forward (the exact step) and gradient, at the peer's default and at another parameter
  value. SpikingJelly's step is 1[x ≥ 0], as ours, so x = 0 is compared too. snnTorch's is
  1[x > 0] and Larq's ``ste_heaviside`` too: at x = 0 exactly they give 0 where we give 1 (the spec's
  H(0) = 1); those comparisons stay away from 0 and one test pins the difference. Larq's sign is
  +1 at 0, as ours.
* Neurons: ``LIFNode``/``IFNode``/``ParametricLIFNode`` against SpikingJelly's, for every reset
  (hard to 0, hard to another value, soft), ``decay_input``, ``detach_reset`` and both step modes;
  and against snnTorch's ``Leaky`` where the equations correspond (see ``LEAKY_CASES``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import htaf
from htaf.interop import SpikeFunction, snntorch_spike_grad, spikingjelly_surrogate
from htaf.nn import IFNode, LIFNode, ParametricLIFNode

PEERS = "install the peers extra: pip install -e '.[peers]'"


@pytest.fixture(scope="module")
def sj_surrogate():
    return pytest.importorskip("spikingjelly.activation_based.surrogate",
                               reason=f"SpikingJelly is not installed ({PEERS})")


@pytest.fixture(scope="module")
def sj_neuron():
    return pytest.importorskip("spikingjelly.activation_based.neuron",
                               reason=f"SpikingJelly is not installed ({PEERS})")


@pytest.fixture(scope="module")
def snntorch():
    return pytest.importorskip("snntorch", reason=f"snnTorch is not installed ({PEERS})")


def _grid(*kinks: float, dtype=torch.float64, zero: bool = True) -> torch.Tensor:
    """−3 … 3 in steps of 0.01, plus ±each kink (where a piecewise formula switches branch);
    without x = 0 (and −0.0) when ``zero`` is False."""
    x = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([k for v in kinks for k in (v, -v)], dtype=torch.float64)])
    x = x if zero else x[x != 0]
    return x.to(dtype)


def _value_and_grad(fn, x: torch.Tensor, w: torch.Tensor):
    """``fn(x)`` and d sum(w·fn(x)) / dx."""
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (g,) = torch.autograd.grad((y * w).sum(), x)
    return y.detach(), g


# -- surrogates against SpikingJelly ---------------------------------------------------------------
# (SpikingJelly class, our name, another α). Every one takes ``alpha`` on both sides.
SJ_SURROGATES = [
    ("Sigmoid", "sigmoid", 2.0),
    ("ATan", "atan", 5.0),
    ("PiecewiseQuadratic", "piecewise_quadratic", 2.5),
    ("PiecewiseExp", "piecewise_exp", 3.0),
    ("Erf", "erf", 0.7),
    ("SuperSpike", "super_spike", 2.0),
    ("Rect", "rect", 2.5),
]
SJ_CASES = [(cls, ours, alpha) for cls, ours, other in SJ_SURROGATES for alpha in (None, other)]


def _case_id(case) -> str:
    return "-".join("default" if v is None else str(v) for v in case)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", SJ_CASES, ids=_case_id)
def test_surrogate_equals_spikingjelly(sj_surrogate, case, dtype):
    """htaf.heaviside(x, name, alpha=α) ≡ SpikingJelly's surrogate.<Class>(alpha=α): the same step
    (x = 0 included) and the same gradient; α = None compares each side's default."""
    cls, ours, alpha = case
    kw = {} if alpha is None else {"alpha": alpha}
    theirs = getattr(sj_surrogate, cls)(**kw)
    if alpha is None:
        assert theirs.alpha == htaf.get_surrogate(ours).alpha, "defaults differ"
    a = theirs.alpha
    x = _grid(1.0, 1 / a, 0.5 / a, dtype=dtype)
    x = torch.cat([x, torch.tensor([-0.0], dtype=dtype)])
    w = torch.randn(x.shape, dtype=dtype)
    y_t, g_t = _value_and_grad(theirs, x, w)
    y_o, g_o = _value_and_grad(lambda t: htaf.heaviside(t, ours, **kw), x, w)
    assert y_o.dtype == y_t.dtype == dtype
    assert torch.equal(y_o, y_t)
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == torch.float64 else {}
    torch.testing.assert_close(g_o, g_t, **tol)
    assert g_o.abs().sum() > 0


@pytest.mark.parametrize("case", [c for c in SJ_CASES if c[0] != "SuperSpike"], ids=_case_id)
def test_smooth_primitive_equals_spikingjelly(sj_surrogate, case):
    """``spiking=False``: htaf's SpikeFunction gives SpikingJelly's primitive function (SuperSpike
    has none in SpikingJelly)."""
    cls, ours, alpha = case
    kw = {} if alpha is None else {"alpha": alpha}
    theirs = getattr(sj_surrogate, cls)(spiking=False, **kw)
    x = _grid(1.0, 1 / theirs.alpha, 0.5 / theirs.alpha)
    torch.testing.assert_close(SpikeFunction(ours, spiking=False, **kw)(x), theirs(x),
                               rtol=1e-12, atol=1e-15)


def test_step_at_zero_spikingjelly_as_ours(sj_surrogate):
    z = torch.tensor([0.0, -0.0])
    assert htaf.heaviside(z).tolist() == [1.0, 1.0]
    assert sj_surrogate.Sigmoid()(z).tolist() == [1.0, 1.0]


# -- surrogates against snnTorch -------------------------------------------------------------------
# (snnTorch factory in snntorch.surrogate, its kwargs, our name, our kwargs): each of its
# defaults, then another value. snnTorch names the sigmoid's scale `slope` (default 25); ours is
# `alpha` with SpikingJelly's default 4. Its STE is unclipped: ours with clip = inf.
SNNTORCH_SURROGATES = [
    ("atan", {}, "atan", {}),
    ("atan", {"alpha": 5.0}, "atan", {"alpha": 5.0}),
    ("sigmoid", {}, "sigmoid", {"alpha": 25.0}),
    ("sigmoid", {"slope": 4.0}, "sigmoid", {}),
    ("fast_sigmoid", {}, "fast_sigmoid", {}),
    ("fast_sigmoid", {"slope": 3.0}, "fast_sigmoid", {"slope": 3.0}),
    ("straight_through_estimator", {}, "ste", {"clip": math.inf}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("factory, their_kw, ours, our_kw", SNNTORCH_SURROGATES,
                         ids=[f"{f}-{k or 'default'}" for f, k, _, _ in SNNTORCH_SURROGATES])
def test_surrogate_equals_snntorch(snntorch, factory, their_kw, ours, our_kw, dtype):
    """Same step away from 0 (snnTorch's forward is 1[x > 0], always float32) and the same gradient.
    On [−3, 3]: snnTorch's sigmoid computes e^(−kx) and overflows to NaN below x ≈ −88/k in float32,
    where ours stays finite."""
    from snntorch import surrogate

    theirs = getattr(surrogate, factory)(**their_kw)
    x = _grid(1.0, dtype=dtype, zero=False)
    # snnTorch's spikes are float32, so the upstream gradient reaches it in float32 (and its sigmoid
    # multiplies it by the slope there): small integers keep that exact
    w = torch.randint(1, 4, x.shape).to(dtype) * torch.where(torch.rand(x.shape) < 0.5, -1, 1)
    y_t, g_t = _value_and_grad(theirs, x, w)
    y_o, g_o = _value_and_grad(lambda t: htaf.heaviside(t, ours, **our_kw), x, w)
    assert torch.equal(y_o, y_t.to(dtype))
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == torch.float64 else {}
    torch.testing.assert_close(g_o, g_t, **tol)


def test_step_at_zero_snntorch_differs(snntorch):
    """The one convention difference: snnTorch fires for x > 0, we (and the spec) for x ≥ 0."""
    from snntorch import surrogate

    z = torch.tensor([0.0, 1e-30, -1e-30])
    assert surrogate.atan()(z).tolist() == [0.0, 1.0, 0.0]
    assert htaf.heaviside(z, "atan").tolist() == [1.0, 1.0, 0.0]


def test_snntorch_triangular_is_not_our_triangle(snntorch):
    """surrogates.Triangle's docstring says snnTorch's ``triangular`` is another function: its
    gradient is ±threshold (the slope of a triangle), not α·max(0, 1 − |x|)."""
    from snntorch import surrogate

    x = _grid(1.0, zero=False)
    _, g_t = _value_and_grad(surrogate.triangular(), x, torch.ones_like(x))
    _, g_o = _value_and_grad(lambda t: htaf.heaviside(t, "triangle"), x, torch.ones_like(x))
    assert torch.equal(g_t, torch.where(x >= 0, -1.0, 1.0).double())
    assert not torch.allclose(g_t, g_o)


# -- sign quantizers against Larq (its own process: TensorFlow + Keras 2) ----------------------------
# (key, Larq function, its kwargs, ours: "sign"/"heaviside", our surrogate, our kwargs)
LARQ_CASES = [
    ("ste_sign", "ste_sign", {}, "sign", "ste", {}),
    ("ste_sign_clip0.5", "ste_sign", {"clip_value": 0.5}, "sign", "ste", {"clip": 0.5}),
    ("ste_sign_unclipped", "ste_sign", {"clip_value": None}, "sign", "ste", {"clip": math.inf}),
    ("approx_sign", "approx_sign", {}, "sign", "approx_sign", {}),
    ("swish_sign", "swish_sign", {}, "sign", "swish_sign", {}),
    ("swish_sign_beta2.5", "swish_sign", {"beta": 2.5}, "sign", "swish_sign", {"beta": 2.5}),
    ("ste_heaviside", "ste_heaviside", {}, "heaviside", "ste", {}),
    ("ste_heaviside_clip0.5", "ste_heaviside", {"clip_value": 0.5}, "heaviside", "ste",
     {"clip": 0.5}),
]
LARQ_X = _grid(1.0, 0.5, 2.5)
LARQ_W = torch.randn(LARQ_X.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def larq_outputs(tmp_path_factory):
    """Larq's forward values and gradients for every case of LARQ_CASES, computed by
    tests/larq_reference.py in a child process and read back through NumPy."""
    if importlib.util.find_spec("larq") is None:
        pytest.skip("Larq is not installed (install the larq extra: pip install -e '.[larq]')")
    folder = tmp_path_factory.mktemp("larq")
    np.savez(folder / "in.npz", x=LARQ_X.numpy(), w=LARQ_W.numpy())
    cases = [{"key": key, "fn": fn, "kwargs": kw} for key, fn, kw, *_ in LARQ_CASES]
    script = Path(__file__).with_name("larq_reference.py")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(script), str(folder / "in.npz"),
                           str(folder / "out.npz"), json.dumps(cases)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, ("Larq could not run (it needs tf-keras, Keras 2):\n"
                                  + done.stderr[-3000:])
    with np.load(folder / "out.npz") as out:
        return {k: torch.from_numpy(out[k]) for k in out.files}


@pytest.mark.parametrize("key, fn, their_kw, kind, ours, our_kw", LARQ_CASES,
                         ids=[c[0] for c in LARQ_CASES])
def test_sign_quantizer_equals_larq(larq_outputs, key, fn, their_kw, kind, ours, our_kw):
    """htaf.sign / htaf.heaviside with ste, approx_sign, swish_sign ≡ Larq's quantizers: forward and
    gradient on the same float64 inputs (the clip boundaries ±1, ±0.5 included). Larq's sign is +1
    at 0 as ours; its heaviside is 0 at 0 where ours is 1, so that case leaves x = 0 out."""
    op = htaf.sign if kind == "sign" else htaf.heaviside
    y_o, g_o = _value_and_grad(lambda t: op(t, ours, **our_kw), LARQ_X, LARQ_W)
    y_t, g_t = larq_outputs[key + ".y"], larq_outputs[key + ".grad"]
    keep = LARQ_X != 0 if kind == "heaviside" else torch.ones_like(LARQ_X, dtype=torch.bool)
    assert torch.equal(y_o[keep], y_t[keep])
    torch.testing.assert_close(g_o, g_t, rtol=1e-12, atol=1e-15)
    if kind == "heaviside":
        assert y_t[LARQ_X == 0].eq(0).all() and y_o[LARQ_X == 0].eq(1).all()


# -- neurons against SpikingJelly ------------------------------------------------------------------
def _neuron_cases():
    for kind in ("lif", "if", "plif"):
        for v_reset in (0.0, -0.3, None):
            for decay_input in ((True, False) if kind != "if" else (None,)):
                for detach_reset in (False, True):
                    for step_mode in ("m", "s"):
                        yield kind, v_reset, decay_input, detach_reset, step_mode


def _neuron_pair(sj_neuron, kind, v_threshold=0.8, our_surrogate="sigmoid", their_surrogate=None,
                 **kw):
    """(htaf neuron, SpikingJelly neuron) built with the same keyword arguments; SpikingJelly's
    default spike function (surrogate.Sigmoid(), α = 4) unless ``their_surrogate`` is given."""
    kw = {k: v for k, v in kw.items() if v is not None or k == "v_reset"}
    theirs_kw = dict(kw) if their_surrogate is None else {**kw, "surrogate_function": their_surrogate}
    if kind == "lif":
        return (LIFNode(tau=3.0, v_threshold=v_threshold, surrogate=our_surrogate, **kw),
                sj_neuron.LIFNode(tau=3.0, v_threshold=v_threshold, **theirs_kw))
    if kind == "plif":
        return (ParametricLIFNode(init_tau=3.0, v_threshold=v_threshold, surrogate=our_surrogate,
                                  **kw),
                sj_neuron.ParametricLIFNode(init_tau=3.0, v_threshold=v_threshold, **theirs_kw))
    return (IFNode(v_threshold=v_threshold, surrogate=our_surrogate, **kw),
            sj_neuron.IFNode(v_threshold=v_threshold, **theirs_kw))


def _run_neuron(node, x: torch.Tensor, step_mode: str):
    """Spikes for ``x`` [T, B, N]: one call in step mode 'm', one call per step in 's'."""
    if step_mode == "m":
        return node(x)
    return torch.stack([node(x[t]) for t in range(x.shape[0])])


def _assert_same_neuron(ours, theirs, step_mode, x=None):
    """Same spikes, final potential and gradients (of the spikes and the final potential, w.r.t.
    the input and every parameter: PLIF's w) for one random input sequence."""
    if x is None:
        x = torch.randn(6, 4, 5) * 1.5 + 0.5
    x_o, x_t = x.clone().requires_grad_(), x.clone().requires_grad_()
    s_o, s_t = _run_neuron(ours, x_o, step_mode), _run_neuron(theirs, x_t, step_mode)
    assert torch.equal(s_o, s_t)
    assert 0 < s_o.sum() < s_o.numel(), "the input should make some neurons fire and some not"
    torch.testing.assert_close(ours.v, theirs.v)
    ws, wv = torch.randn_like(s_o), torch.randn_like(ours.v)
    g_o = torch.autograd.grad((s_o * ws).sum() + (ours.v * wv).sum(), [x_o, *ours.parameters()])
    g_t = torch.autograd.grad((s_t * ws).sum() + (theirs.v * wv).sum(),
                              [x_t, *theirs.parameters()])
    assert len(g_o) == len(g_t)
    for a, b in zip(g_o, g_t):
        torch.testing.assert_close(a, b)
    assert g_o[0].abs().sum() > 0


@pytest.mark.parametrize("kind, v_reset, decay_input, detach_reset, step_mode", list(_neuron_cases()),
                         ids=lambda v: repr(v))
def test_neuron_equals_spikingjelly(sj_neuron, kind, v_reset, decay_input, detach_reset, step_mode):
    """LIFNode(τ = 3) / IFNode / ParametricLIFNode(init_tau = 3), V_th = 0.8, each reset, decay_input
    and detach_reset, multi- and single-step, spike function sigmoid(α = 4) on both sides (SpikingJelly's
    own fused CPU path runs for its built-in surrogate)."""
    ours, theirs = _neuron_pair(sj_neuron, kind, v_reset=v_reset, decay_input=decay_input,
                                detach_reset=detach_reset, step_mode=step_mode)
    _assert_same_neuron(ours, theirs, step_mode)


@pytest.mark.parametrize("ours_name, their_name", [
    ("atan", "ATan"), ("piecewise_quadratic", "PiecewiseQuadratic"),
    ("piecewise_exp", "PiecewiseExp"), ("erf", "Erf"), ("super_spike", "SuperSpike"),
])
def test_lif_with_each_surrogate_equals_spikingjelly(sj_neuron, sj_surrogate, ours_name, their_name):
    ours, theirs = _neuron_pair(sj_neuron, "lif", our_surrogate=ours_name,
                                their_surrogate=getattr(sj_surrogate, their_name)(),
                                v_reset=None, step_mode="m")
    _assert_same_neuron(ours, theirs, "m")


@pytest.mark.parametrize("kind", ["lif", "if", "plif"])
@pytest.mark.parametrize("wrap", ["spikingjelly_surrogate", "surrogate"])
def test_htaf_inside_spikingjelly_equals_our_neuron(sj_neuron, kind, wrap):
    """HTAF handed to SpikingJelly's neuron (htaf.interop's module, or the Surrogate itself) runs
    SpikingJelly's PyTorch reference path and equals our neuron with its default spike function."""
    spike = spikingjelly_surrogate("htaf") if wrap != "surrogate" else htaf.get_surrogate("htaf")
    ours, theirs = _neuron_pair(sj_neuron, kind, our_surrogate="htaf", their_surrogate=spike,
                                v_reset=0.0, step_mode="m")
    _assert_same_neuron(ours, theirs, "m")


def test_stored_potentials_equal_spikingjelly(sj_neuron):
    ours, theirs = _neuron_pair(sj_neuron, "lif", v_reset=-0.3, step_mode="m", store_v_seq=True)
    x = torch.randn(5, 3, 4) + 0.5
    assert torch.equal(ours(x), theirs(x))
    torch.testing.assert_close(ours.v_seq, theirs.v_seq)


# -- neurons against snnTorch's Leaky -----------------------------------------------------------------
# snnTorch's Leaky: U[t] = β·U[t−1] + X[t] − reset, S[t] = 1[U[t] − θ > 0], with the reset applied at
# the next step (reset_delay=True, its default) or at once (reset_delay=False). With β = 1 − 1/τ and
# decay_input=False (our H = V − V/τ + X = β·V + X), these correspond, each as stated:
#   (reset_mechanism, reset_delay, β, our neuron, what snnTorch's returned mem is)
LEAKY_CASES = [
    # reset to zero, delayed: the reset term is detached; snnTorch's mem is our H (before the reset)
    ("zero", True, 0.75, lambda b: LIFNode(tau=1 / (1 - b), decay_input=False, v_reset=0.0,
                                           detach_reset=True, v_threshold=0.8, surrogate="atan"), "H"),
    # reset to zero at once: the spike's gradient flows through the reset; mem is our V (after it)
    ("zero", False, 0.5, lambda b: LIFNode(tau=1 / (1 - b), decay_input=False, v_reset=0.0,
                                           detach_reset=False, v_threshold=0.8, surrogate="atan"), "V"),
    # subtract at once: our soft reset, as long as the potential after a reset stays below θ (H < 2θ;
    # above that, snnTorch subtracts θ once more before the next spike)
    ("subtract", False, 0.75, lambda b: LIFNode(tau=1 / (1 - b), decay_input=False, v_reset=None,
                                                detach_reset=False, v_threshold=0.8,
                                                surrogate="atan"), "V"),
    # subtract, delayed (snnTorch's default): U[t] = βU[t−1] + X − θS[t−1] does not decay the reset,
    # ours H[t] = β(H[t−1] − θS[t−1]) + X does; they agree only for β = 1, an IF neuron
    ("subtract", True, 1.0, lambda b: IFNode(v_reset=None, detach_reset=True, v_threshold=0.8,
                                             surrogate="atan"), "H"),
]


@pytest.mark.parametrize("reset_mechanism, reset_delay, beta, make, mem_is", LEAKY_CASES,
                         ids=[f"{m}-delay{d}-beta{b}" for m, d, b, _, _ in LEAKY_CASES])
def test_neuron_equals_snntorch_leaky(snntorch, reset_mechanism, reset_delay, beta, make, mem_is):
    """snnTorch's Leaky(β, θ = 0.8) with its default spike function (atan, α = 2) ≡ the neuron named in
    LEAKY_CASES with surrogate "atan": the same spikes, potentials and input gradients."""
    torch.manual_seed(0)
    x = torch.rand(8, 4, 5) * 0.95 - 0.1          # below θ(2 − β): H < 2θ, see LEAKY_CASES
    x_o, x_t = x.clone().requires_grad_(), x.clone().requires_grad_()
    leaky = snntorch.Leaky(beta=beta, threshold=0.8, reset_mechanism=reset_mechanism,
                           reset_delay=reset_delay)
    spikes, mems = [], []
    for t in range(x.shape[0]):
        s, mem = leaky(x_t[t])
        spikes.append(s)
        mems.append(mem)
    s_t, mem_t = torch.stack(spikes), mems[-1]
    ours = make(beta)
    ours.step_mode = "m"
    s_o = ours(x_o)
    assert torch.equal(s_o, s_t)
    assert 0 < s_o.sum() < s_o.numel()
    if mem_is == "H":   # our potential after the last reset, from snnTorch's before it
        after = mem_t * (1 - s_t[-1]) if reset_mechanism == "zero" else mem_t - 0.8 * s_t[-1]
    else:
        after = mem_t
    torch.testing.assert_close(ours.v, after)
    w = torch.randn_like(s_o)
    (g_o,) = torch.autograd.grad((s_o * w).sum(), x_o)
    (g_t,) = torch.autograd.grad((s_t * w).sum(), x_t)
    torch.testing.assert_close(g_o, g_t)
    assert g_o.abs().sum() > 0


def test_htaf_inside_snntorch_equals_our_neuron(snntorch):
    """HTAF as snnTorch's spike_grad (htaf.interop) in Leaky(reset="zero") ≡ our LIF with HTAF."""
    x = (torch.rand(8, 4, 5) * 1.2).requires_grad_()
    leaky = snntorch.Leaky(beta=0.75, reset_mechanism="zero",
                           spike_grad=snntorch_spike_grad("htaf", beta=8.0))
    s_t = torch.stack([leaky(x[t])[0] for t in range(x.shape[0])])
    ours = LIFNode(tau=4.0, decay_input=False, v_reset=0.0, detach_reset=True, step_mode="m",
                   surrogate=htaf.get_surrogate("htaf", beta=8.0))
    s_o = ours(x)
    assert torch.equal(s_o, s_t) and 0 < s_o.sum() < s_o.numel()
    (g_o,) = torch.autograd.grad(s_o.sum(), x)
    (g_t,) = torch.autograd.grad(s_t.sum(), x)
    torch.testing.assert_close(g_o, g_t)
