"""Spiking neurons and spiking models. Equality with SpikingJelly's and snnTorch's neurons:
tests/test_peers.py."""

from __future__ import annotations

import pytest
import torch

from htaf.models import create_model
from htaf.nn import IF, LIF, PLIF, IFNode, LIFNode, ParametricLIFNode, reset_net
from htaf.surrogates import get_surrogate

X3 = [1.5, 0.5, 2.5]  # one neuron, three steps


def _run(node, xs):
    out = node(torch.tensor(xs).view(len(xs), 1))
    return out.view(-1).tolist(), float(node.v.view(-1)[0])


# Hand-computed (SpikingJelly's equations, V_th = 1, τ = 2):
#   decay_input:    H = V + (X − (V − R))/τ       no decay_input: H = V − (V − R)/τ + X
@pytest.mark.parametrize("node, spikes, v_last", [
    # H: 0.75, 0.625, 1.5625 → spike at t=2; hard reset to 0, soft to 0.5625
    (LIFNode(2.0, step_mode="m"), [0, 0, 1], 0.0),
    (LIFNode(2.0, v_reset=None, step_mode="m"), [0, 0, 1], 0.5625),
    # R = −0.5, V starts at −0.5: H: 0.25, 0.125, 1.0625 → reset to −0.5
    (LIFNode(2.0, v_reset=-0.5, step_mode="m"), [0, 0, 1], -0.5),
    # no decay_input: H: 1.5 (spike, V=0), 0.5, 2.75 (spike, V=0)
    (LIFNode(2.0, decay_input=False, step_mode="m"), [1, 0, 1], 0.0),
    # soft: H 1.5 → V 0.5; H 0.75; H 0.75 − 0.375 + 2.5 = 2.875 → V 1.875
    (LIFNode(2.0, decay_input=False, v_reset=None, step_mode="m"), [1, 0, 1], 1.875),
    # IF: H 1.5 (spike), 0.5, 3.0 (spike)
    (IFNode(step_mode="m"), [1, 0, 1], 0.0),
    # IF soft: H 1.5 → V 0.5; H 1.0 fires (≥) → V 0; H 2.5 → V 1.5
    (IFNode(v_reset=None, step_mode="m"), [1, 1, 1], 1.5),
])
def test_equations_hand_computed(node, spikes, v_last):
    s, v = _run(node, X3)
    assert s == spikes
    assert v == pytest.approx(v_last, abs=1e-6)


def test_threshold_is_inclusive_and_aliases():
    assert _run(LIF(step_mode="m"), [2.0])[0] == [1.0]  # H = 1.0 = V_th fires (1[x ≥ 0])
    assert IF is IFNode and LIF is LIFNode and PLIF is ParametricLIFNode
    assert LIFNode().surrogate == get_surrogate("htaf")
    assert LIFNode(surrogate_function="atan").surrogate == get_surrogate("atan")


def test_only_tau_is_positional():
    """``LIFNode(2.0, 0.5)`` meant decay_input=0.5 in SpikingJelly's order and v_threshold=0.5 in
    the old ``LIF`` alias: everything after tau is keyword-only, so both are errors."""
    for cls in (LIFNode, LIF, ParametricLIFNode, PLIF):
        with pytest.raises(TypeError, match="positional"):
            cls(2.0, 0.5)
    with pytest.raises(TypeError, match="positional"):
        IFNode(0.5)
    a = LIF(3.0, v_threshold=0.5, v_reset=None, decay_input=False)
    assert (a.tau, a.v_threshold, a.v_reset, a.decay_input) == (3.0, 0.5, None, False)


def test_snn_options_keep_spikingjelly_names():
    """snnTorch's ``beta`` (membrane decay) is not silently read as HTAF's β; surrogate
    hyperparameters go in act_params; smooth 'htaf' is refused."""
    with pytest.raises(ValueError, match="unknown option.*beta.*act_params.*tau"):
        create_model("snn_mlp", beta=0.9)
    with pytest.raises(ValueError, match="'htaf' is smooth.*SNN.*htaf_st"):
        create_model("snn_mlp", activation="htaf")
    model = create_model("snn_mlp", activation="atan", act_params={"alpha": 3.0}, tau=4.0)
    neuron = next(m for m in model.modules() if isinstance(m, LIFNode))
    assert neuron.tau == 4.0 and neuron.surrogate == get_surrogate("atan", alpha=3.0)


NODES = [
    lambda m: LIFNode(step_mode=m, backend="torch"),
    lambda m: LIFNode(3.0, decay_input=False, v_reset=None, detach_reset=True, step_mode=m),
    lambda m: IFNode(v_threshold=0.7, surrogate="sigmoid", step_mode=m),
    lambda m: ParametricLIFNode(1.5, v_reset=-0.2, surrogate="atan", step_mode=m),
]


@pytest.mark.parametrize("make", NODES)
def test_multistep_equals_singlestep_loop(make):
    torch.manual_seed(0)
    x = (torch.randn(6, 3, 4) * 1.5 + 0.5).requires_grad_()
    multi, single = make("m"), make("s")
    single.load_state_dict(multi.state_dict())
    s_m = multi(x)
    s_s = torch.stack([single(x[t]) for t in range(x.shape[0])])
    assert torch.equal(s_m, s_s)
    assert ((s_m == 0) | (s_m == 1)).all() and s_m.sum() > 0
    torch.testing.assert_close(multi.v, single.v)
    w = torch.randn_like(s_m)
    g_m = torch.autograd.grad((s_m * w).sum(), [x, *multi.parameters()])
    g_s = torch.autograd.grad((s_s * w).sum(), [x, *single.parameters()])
    for a, b in zip(g_m, g_s):
        torch.testing.assert_close(a, b)
    assert g_m[0].abs().sum() > 0


def test_plif_learns_tau():
    node = PLIF(2.0, step_mode="m")
    assert node.tau == pytest.approx(2.0)
    s = node(torch.rand(4, 8, 3) * 3)
    (g,) = torch.autograd.grad(s.sum(), node.w)
    assert torch.isfinite(g) and g != 0


def test_store_v_seq_and_state_reset():
    node = LIFNode(step_mode="m", store_v_seq=True)
    x = torch.rand(5, 2, 3) * 2
    node(x)
    assert node.v_seq.shape == x.shape
    torch.testing.assert_close(node.v_seq[-1], node.v)
    single = LIFNode(store_v_seq=True)
    for t in range(5):
        single(x[t])
    torch.testing.assert_close(single.v_seq, node.v_seq)
    # single-step state persists across calls until reset
    assert isinstance(single.v, torch.Tensor) and single.v.abs().sum() > 0
    reset_net(single)
    assert single.v == 0.0 and single.v_seq is None
    torch.testing.assert_close(single(x[0]), LIFNode()(x[0]))
    with pytest.raises(ValueError, match="reset"):
        single(torch.zeros(7))


def test_model_resets_state_between_batches():
    torch.manual_seed(0)
    model = create_model("snn_mlp", in_channels=1, image_size=8, num_classes=10, T=3).eval()
    x = torch.randn(5, 1, 8, 8)
    y1 = model(x)
    model(torch.randn(2, 1, 8, 8) * 4)  # a different batch size in between
    assert torch.equal(model(x), y1)


@pytest.mark.parametrize("kwargs, match", [
    ({"step_mode": "x"}, "step_mode"),
    ({"tau": 1.0}, "tau"),
    ({"tau": 0.5}, "tau"),
    ({"v_threshold": float("nan")}, "v_threshold"),
    ({"backend": "cupy"}, "backend"),
    ({"surrogate": "nope"}, "surrogate"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LIFNode(**kwargs)


def test_bad_shapes():
    node = LIFNode(step_mode="m")
    with pytest.raises(ValueError, match="T = 0"):
        node(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"\[T, B"):
        node(torch.zeros(3))
    with pytest.raises(ValueError, match="init_tau"):
        ParametricLIFNode(init_tau=1.0)
    with pytest.raises(ValueError, match="T"):
        create_model("snn_mlp", T=0)
    with pytest.raises(ValueError, match="encoding"):
        create_model("snn_mlp", encoding="latency")
    with pytest.raises(ValueError, match="neuron"):
        create_model("snn_vgg", neuron="izhikevich")


@pytest.mark.parametrize("name, kw", [
    ("snn_vgg", {"width": 4, "depth": 4}),
    ("snn_vgg", {"width": 4, "depth": 2, "activation": "relu"}),
    ("snn_sew_resnet", {"width": 4, "neuron": "plif", "encoding": "rate", "activation": "atan"}),
    ("snn_sew_resnet", {"width": 4, "neuron": "if", "v_reset": None, "activation": "htaf_st",
                        "act_params": {"beta": 8.0}}),
    ("snn_vgg", {"width": 4, "depth": 2, "activation": "sigmoid", "act_params": {"alpha": 2.0}}),
    ("snn_csnn", {"width": 4, "hidden": 16, "activation": "atan", "act_params": {"alpha": 3.0}}),
])
def test_cnn_models_shapes_and_grads(name, kw):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, image_size=32, num_classes=10, T=2, **kw)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    neurons = [m for m in model.modules() if isinstance(m, LIFNode | IFNode | ParametricLIFNode)]
    assert bool(neurons) == (kw.get("activation") != "relu")
    if "act_params" in kw:
        assert neurons[0].surrogate == get_surrogate(kw["activation"].replace("_st", ""),
                                                     **kw["act_params"])


def test_rate_encoding_is_binary_and_random():
    model = create_model("snn_mlp", in_channels=1, image_size=8, num_classes=10, T=4,
                         encoding="rate")
    x = torch.randn(3, 1, 8, 8)
    seen = []
    model.stem.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    model(x)
    spikes = seen[0]
    assert spikes.shape == (12, 1, 8, 8) and ((spikes == 0) | (spikes == 1)).all()
    assert 0 < spikes.mean() < 1


def test_spiking_mlp_learns_digits():
    """HTAF spiking MLP, T=4, direct input: ≥ 90% test accuracy on sklearn digits, on the CPU."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x))
    tr, te = perm[:1400], perm[1400:]
    model = create_model("snn_mlp", in_channels=1, image_size=8, num_classes=10, T=4,
                         width=128, depth=1, activation="htaf_st")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        model.train()
        for idx in tr[torch.randperm(len(tr))].split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[te]).argmax(1) == y[te]).float().mean().item()
    assert acc >= 0.90, acc
    rate = model.epoch_metrics([(x[te], y[te])])["spike_rate"]
    assert 0.0 < rate < 1.0


def test_bfloat16_single_and_multi_step_agree():
    torch.manual_seed(0)
    x = (torch.randn(5, 3, 4) * 2).bfloat16()
    multi, single = LIFNode(step_mode="m"), LIFNode()
    s_m = multi(x)
    s_s = torch.stack([single(x[t]) for t in range(x.shape[0])])
    assert s_m.dtype == s_s.dtype == torch.bfloat16
    assert torch.equal(s_m, s_s)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["snn_vgg", "snn_sew_resnet"])
def test_cnn_on_cuda_uses_fused_kernel_and_matches_reference(name):
    torch.manual_seed(0)
    kw = {"in_channels": 3, "image_size": 32, "num_classes": 10, "T": 4, "width": 16}
    fused = create_model(name, **kw).cuda()
    ref = create_model(name, backend="torch", **kw).cuda()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(8, 3, 32, 32, device="cuda")
    assert all(n._use_triton(torch.zeros(4, 2, device="cuda"))
               for n in fused.modules() if isinstance(n, LIFNode))
    y1, y2 = fused(x), ref(x)
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
    g1 = torch.autograd.grad(y1.square().sum(), list(fused.parameters()))
    g2 = torch.autograd.grad(y2.square().sum(), list(ref.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(fused(x)).all()
