"""Modules, the mode switch, activation names, annealing."""

import math

import pytest
import torch
from torch import nn

import htaf
from htaf.nn import Anneal, apply_constraints, create_act, schedule_value


def _net():
    return nn.Sequential(nn.Linear(4, 8), htaf.HTAF(), nn.Linear(8, 8), htaf.Heaviside("atan"),
                         nn.Linear(8, 8), htaf.Sign(), nn.Linear(8, 2))


def test_module_defaults_and_repr():
    m = htaf.HTAF()
    assert (m.alpha, m.beta, m.gamma, m.mode) == (0.5, 4.0, 1.0, "smooth")
    assert repr(m) == "HTAF(alpha=0.5, beta=4, gamma=1, mode=smooth)"
    assert repr(htaf.Heaviside("atan", alpha=3)) == \
        "Heaviside(surrogate=atan, alpha=3, mode=straight_through)"
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(m(x), htaf.htaf(x))


def test_modes_switch_at_run_time():
    m = htaf.HTAF()
    x = torch.tensor([-1.0, 0.0, 0.2])
    assert m(x).tolist() != [0.0, 1.0, 1.0]
    m.mode = "hard"
    assert m(x).tolist() == [0.0, 1.0, 1.0]
    m.mode = "straight_through"
    xr = x.clone().requires_grad_()
    m(xr).sum().backward()
    assert torch.allclose(xr.grad, htaf.functional.htaf_derivative(x))
    with pytest.raises(ValueError, match="mode"):
        m.mode = "binary"


def test_set_mode_switches_every_layer_and_using_mode_restores():
    net = _net()
    before = [m.mode for m in net.modules() if isinstance(m, htaf.nn.BinaryActivation)]
    assert before == ["smooth", "straight_through", "straight_through"]
    x = torch.randn(16, 4)
    with htaf.using_mode(net, "hard"):
        assert {m.mode for m in net.modules() if isinstance(m, htaf.nn.BinaryActivation)} == {"hard"}
        hidden = net[:2](x)
        assert set(hidden.unique().tolist()) <= {0.0, 1.0}
    after = [m.mode for m in net.modules() if isinstance(m, htaf.nn.BinaryActivation)]
    assert after == before
    with pytest.raises(ValueError, match="mode"):
        htaf.set_mode(net, "nope")


def test_hyperparameters_are_validated_on_assignment():
    m = htaf.HTAF()
    m.gamma = 3.0
    assert m.surrogate.gamma == 3.0
    with pytest.raises(ValueError, match="gamma"):
        m.gamma = -1.0


def test_create_act_names():
    assert isinstance(create_act("relu"), nn.ReLU)
    smooth = create_act("htaf", gamma=2.0)
    assert smooth.mode == "smooth" and smooth.surrogate.gamma == 2.0
    st = create_act("htaf_st")
    assert st.mode == "straight_through" and st.surrogate.name == "htaf"
    s = create_act("approx_sign", signed=True)
    assert isinstance(s, htaf.Sign) and s.surrogate.name == "approx_sign"
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        create_act("tanhh")
    with pytest.raises(ValueError, match="atan.alpha"):
        create_act("atan", alpha=0)


def test_schedules():
    assert schedule_value(1, 30, 0.0) == 1 and schedule_value(1, 30, 1.0) == pytest.approx(30)
    assert schedule_value(1, 30, 0.5) == pytest.approx(math.sqrt(30))
    assert schedule_value(1, 3, 0.5, "linear") == 2
    assert schedule_value(1, 3, 0.25, "cosine") < schedule_value(1, 3, 0.25, "linear")
    assert schedule_value(1, 30, 7.0) == pytest.approx(30)  # clamped
    with pytest.raises(ValueError, match="schedule"):
        schedule_value(1, 2, 0.5, "step")


def test_anneal_sets_htaf_layers_only():
    net = _net()
    net[3] = htaf.Heaviside("htaf")          # straight-through HTAF is annealed too
    a = Anneal(net, gamma=(1.0, 16.0), beta=(4.0, 8.0), schedule="exp")
    assert len(a.layers) == 3                 # the HTAF, the Heaviside(htaf), the Sign(htaf)
    a.set_progress(0.5)
    assert net[1].gamma == pytest.approx(4.0) and net[1].beta == pytest.approx(math.sqrt(32))
    assert net[3].surrogate.gamma == pytest.approx(4.0)
    a.set_progress(1.0)
    assert net[5].surrogate.gamma == pytest.approx(16.0)
    with pytest.raises(ValueError, match="gamma start"):
        Anneal(net, gamma=(0.0, 30.0))
    with pytest.raises(ValueError, match="gamma or beta"):
        Anneal(net, gamma=None)


def test_annealed_smooth_layer_approaches_the_step():
    net = nn.Sequential(htaf.HTAF())
    x = torch.tensor([-0.5, -0.2, 0.2, 0.5])
    a = Anneal(net, gamma=(1.0, 30.0))
    gaps = []
    for p in (0.0, 0.5, 1.0):
        a.set_progress(p)
        gaps.append((net(x) - (x >= 0).float()).abs().max().item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02


def test_apply_constraints_calls_constrain_hooks():
    class Clipped(nn.Linear):
        def constrain_(self):
            with torch.no_grad():
                self.weight.clamp_(-0.1, 0.1)

    net = nn.Sequential(Clipped(4, 4), htaf.HTAF())
    nn.init.constant_(net[0].weight, 3.0)
    apply_constraints(net)
    assert net[0].weight.max().item() == pytest.approx(0.1)


def test_training_a_tiny_heaviside_net_reduces_loss():
    torch.manual_seed(0)
    x = torch.randn(256, 2)
    y = ((x[:, 0] * x[:, 1]) > 0).long()      # XOR-like: needs the hidden layer
    net = nn.Sequential(nn.Linear(2, 32), nn.BatchNorm1d(32), htaf.Heaviside(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), 0.02)
    losses = []
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    acc = (net(x).argmax(1) == y).float().mean().item()
    assert losses[-1] < 0.5 * losses[0] and acc > 0.9


def test_anneal_range_that_is_not_a_pair_is_a_value_error_naming_it():
    net = _net()
    for bad in (30.0, "1,30", (1.0,)):
        with pytest.raises(ValueError, match="gamma must be a \\(start, end\\) pair"):
            Anneal(net, gamma=bad)
    with pytest.raises(ValueError, match="beta must be a \\(start, end\\) pair"):
        Anneal(net, gamma=None, beta=4)
