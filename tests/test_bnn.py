"""Binary layers and BNN models: exact ±1 operands, surrogate gradients, clipping, modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import htaf.nn.binary as binary
from bnn_digits import digits_split, trained_digits_mlp
from htaf.functional import htaf_derivative
from htaf.models import create_model
from htaf.nn import (
    BinaryConv2d,
    BinaryLinear,
    Sign,
    apply_constraints,
    binary_layers,
    set_mode,
    using_mode,
)


def _is_pm1(t: torch.Tensor) -> bool:
    return bool(((t == 1) | (t == -1)).all())


@pytest.fixture
def spy(monkeypatch):
    """Record the (input, weight) operands of every F.linear / F.conv2d call."""
    calls = []
    for name in ("linear", "conv2d"):
        orig = getattr(binary.TF, name)

        def wrapped(x, w, *args, _orig=orig, **kw):
            calls.append((x.detach().clone(), w.detach().clone()))
            return _orig(x, w, *args, **kw)

        monkeypatch.setattr(binary.TF, name, wrapped)
    return calls


@pytest.mark.parametrize("mode", ["straight_through", "hard"])
@pytest.mark.parametrize("surrogate", ["htaf_st", "ste", "approx_sign", "swish_sign", "atan"])
def test_operands_exactly_pm1(spy, mode, surrogate):
    torch.manual_seed(0)
    lin = BinaryLinear(13, 5, input_quantizer=surrogate)
    conv = BinaryConv2d(3, 4, 3, padding=1, input_quantizer=surrogate, pad_value=1)
    model = nn.Sequential(conv, nn.Flatten(), BinaryLinear(4 * 36, 5, input_quantizer=surrogate))
    set_mode(model, mode)
    x = torch.randn(2, 3, 6, 6)
    x[0, 0, 0, 0] = 0.0  # sign(0) = +1
    model(x)
    lin(torch.randn(4, 13))
    assert len(spy) == 3
    for xin, w in spy:
        assert _is_pm1(xin) and _is_pm1(w)
    padded = spy[0][0]  # pad_value=1: the binarized input is padded with +1, still binary
    assert padded.shape == (2, 3, 8, 8) and bool((padded[:, :, 0] == 1).all())
    assert spy[0][0][0, 0, 1, 1] == 1


def test_output_is_integer_dot_times_alpha_plus_bias():
    torch.manual_seed(0)
    lin = BinaryLinear(33, 6)
    x = torch.randn(5, 33)
    dot = torch.sign(x) @ torch.sign(lin.weight.detach()).T  # exact integers
    alpha = lin.weight.detach().abs().mean(1)
    assert torch.equal(lin(x), dot * alpha + lin.bias.detach())
    assert torch.equal(dot, dot.round())


def test_real_input_or_real_weight_options(spy):
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    BinaryLinear(8, 4, input_quantizer=None)(x)
    assert torch.equal(spy[-1][0], x) and _is_pm1(spy[-1][1])
    lin = BinaryLinear(8, 4, weight_quantizer=None)
    lin(x)
    assert _is_pm1(spy[-1][0]) and torch.equal(spy[-1][1], lin.weight.detach())


def test_zero_padding_keeps_true_zeros(spy):
    conv = BinaryConv2d(2, 3, 3, padding=1)  # pad_value=0: the op pads (with true zeros)
    conv(torch.randn(1, 2, 5, 5))
    xin, _ = spy[-1]
    assert xin.shape == (1, 2, 5, 5) and _is_pm1(xin)


@pytest.mark.parametrize("surrogate", ["htaf_st", "approx_sign", "ste"])
def test_input_and_weight_gradients_follow_surrogates(surrogate):
    torch.manual_seed(0)
    lin = BinaryLinear(7, 3, bias=False, input_quantizer=surrogate, scale=None)
    with torch.no_grad():
        lin.weight.mul_(4.0)  # some latent weights outside [-1, 1]: the clipped STE zeroes them
    x = torch.randn(5, 7, dtype=torch.float32, requires_grad=True)
    g = torch.randn(5, 3)
    (lin(x) * g).sum().backward()
    w = lin.weight.detach()
    wb, xb = torch.sign(w), torch.where(x.detach() >= 0, 1.0, -1.0)
    expected_w = (g.T @ xb) * (w.abs() <= 1).float()
    d = {"htaf_st": 2 * htaf_derivative(x.detach()),
         "approx_sign": torch.clamp(2 - 2 * x.detach().abs(), min=0),
         "ste": (x.detach().abs() <= 1).float()}[surrogate]
    expected_x = (g @ wb) * d
    assert (w.abs() > 1).any() and (w.abs() <= 1).any()
    torch.testing.assert_close(lin.weight.grad, expected_w)
    torch.testing.assert_close(x.grad, expected_x)


def test_channel_scale_is_constant_in_backward():
    torch.manual_seed(0)
    conv = BinaryConv2d(2, 3, 3, bias=False)  # scale="channel"
    x = torch.randn(1, 2, 4, 4)
    conv(x).sum().backward()
    alpha = conv.weight.detach().abs().mean((1, 2, 3))
    ref = BinaryConv2d(2, 3, 3, bias=False, scale=None)
    ref.weight.data.copy_(conv.weight.data)
    ref(x).sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad * alpha.view(-1, 1, 1, 1))


def test_apply_constraints_clips_latent_weights_only_of_binary_layers():
    model = nn.Sequential(nn.Linear(4, 4), BinaryLinear(4, 4, clip=0.5),
                          BinaryConv2d(1, 2, 3, clip=1.0), BinaryLinear(4, 4, clip=None))
    for p in model.parameters():
        p.data.normal_(0, 5)
    real_before = model[0].weight.detach().clone()
    unclipped = model[3].weight.detach().clone()
    apply_constraints(model)
    assert float(model[1].weight.detach().abs().max()) == 0.5
    assert float(model[2].weight.detach().abs().max()) == 1.0
    assert torch.equal(model[0].weight, real_before) and torch.equal(model[3].weight, unclipped)


def test_mode_switch_reaches_binary_layers_and_forward_is_unchanged():
    torch.manual_seed(0)
    model = create_model("bnn_vgg_small", in_channels=1, image_size=8, num_classes=3,
                         width_mult=1 / 16).eval()
    x = torch.randn(4, 1, 8, 8)
    st = model(x)
    with using_mode(model, "hard"):
        assert all(m.mode == "hard" for _, m in binary_layers(model))
        assert torch.equal(model(x), st)
    assert all(m.mode == "straight_through" for _, m in binary_layers(model))
    layer = binary_layers(model)[0][1]
    layer.mode = "smooth"  # a smooth-trained quantizer: forward is no longer binary
    assert layer.input_quantizer.mode == "smooth" and not torch.equal(model(x), st)


def test_input_quantizer_accepts_a_sign_module_and_rejects_others():
    q = Sign("atan", alpha=3.0)
    assert BinaryLinear(2, 2, input_quantizer=q).input_quantizer is q
    with pytest.raises(ValueError, match="input_quantizer"):
        BinaryLinear(2, 2, input_quantizer=3)
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        BinaryLinear(2, 2, input_quantizer="nope")
    with pytest.raises(ValueError, match="scale"):
        BinaryLinear(2, 2, scale="tensor")
    with pytest.raises(ValueError, match="pad_value"):
        BinaryConv2d(2, 2, 3, pad_value=0.5)


def test_drop_in_signatures_and_state_dict_keys():
    lin, ref = BinaryLinear(5, 3, False), nn.Linear(5, 3, False)
    conv = BinaryConv2d(4, 6, 3, 2, 1, 1, 2, True, "zeros")
    assert isinstance(lin, nn.Linear) and isinstance(conv, nn.Conv2d)
    quantizers = {"input_quantizer.alpha", "input_quantizer.beta", "input_quantizer.gamma",
                  "weight_quantizer.clip"}   # the surrogates' hyperparameters are buffers
    assert set(lin.state_dict()) == set(ref.state_dict()) | quantizers
    float_conv = nn.Conv2d(4, 6, 3, 2, 1, 1, 2)
    assert set(conv.state_dict()) == set(float_conv.state_dict()) | quantizers
    # a float checkpoint loads into the binary twin: only the quantizers' buffers are missing
    missing, unexpected = conv.load_state_dict(float_conv.state_dict(), strict=False)
    assert set(missing) == quantizers and not unexpected
    assert torch.equal(conv.weight, float_conv.weight)
    assert conv(torch.randn(1, 4, 7, 7)).shape == (1, 6, 4, 4)


@pytest.mark.parametrize("name,kw", [
    ("bnn_vgg_small", dict(in_channels=3, image_size=16, width_mult=1 / 16)),
    ("bnn_resnet18", dict(in_channels=3, image_size=16, width_mult=1 / 16,
                          learnable_threshold=True, rprelu=True)),
    ("bnn_mlp", dict(in_channels=1, image_size=8)),
])
@pytest.mark.parametrize("activation", ["htaf_st", "ste", "approx_sign", "swish_sign", "relu"])
def test_models_build_train_and_select_surrogate(name, kw, activation):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, activation=activation, **kw)
    x = torch.randn(2, kw["in_channels"], kw["image_size"], kw["image_size"])
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    layers = binary_layers(model)
    if activation == "relu":
        assert not layers and any(isinstance(m, nn.ReLU) for m in model.modules())
        return
    expected = "htaf" if activation.startswith("htaf") else activation
    assert layers and all(m.input_quantizer.surrogate.name == expected for _, m in layers)
    assert all(m.weight.grad is not None for _, m in layers)
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    assert not isinstance(first, binary.BinaryLayer) and not isinstance(last, binary.BinaryLayer)


def test_binary_first_and_last_and_bad_arguments():
    m = create_model("bnn_vgg_small", in_channels=3, image_size=8, width_mult=1 / 16,
                     binary_first=True, binary_last=True, hidden=8)
    assert len(binary_layers(m)) == 8
    m = create_model("bnn_mlp", in_features=64, hidden=32, binary_first=True, binary_last=True)
    assert len(binary_layers(m)) == 2
    with pytest.raises(ValueError, match="unknown activation|unknown surrogate"):
        create_model("bnn_mlp", activation="nope")
    with pytest.raises(ValueError, match="image_size >= 8"):
        create_model("bnn_vgg_small", image_size=6)
    with pytest.raises(ValueError, match="width_mult"):
        create_model("bnn_resnet18", width_mult=0)


@pytest.mark.parametrize("name, kw", [
    ("bnn_vgg_small", dict(in_channels=3, image_size=8, width_mult=1 / 16)),
    ("bnn_resnet18", dict(in_channels=3, image_size=8, width_mult=1 / 16)),
    ("bnn_mlp", dict(in_channels=1, image_size=8)),
])
def test_models_take_act_params_as_compare_passes_them(name, kw):
    """Regression: ``htaf compare --scales`` passes ``act_params``; the BNN factories rejected it
    (TypeError after the first variant had trained)."""
    model = create_model(name, num_classes=3, activation="atan", act_params={"alpha": 5.0}, **kw)
    qs = [m.input_quantizer.surrogate for _, m in binary_layers(model)]
    assert qs and all(q.name == "atan" and q.hyperparameters()["alpha"] == 5.0 for q in qs)
    model = create_model(name, num_classes=3, activation="htaf_st", act_params={"beta": 8.0}, **kw)
    assert all(m.input_quantizer.surrogate.hyperparameters()["beta"] == 8.0
               for _, m in binary_layers(model))
    with pytest.raises(ValueError, match="takes no parameters"):
        create_model(name, activation="relu", act_params={"alpha": 2.0}, **kw)


def test_binary_mlp_learns_digits():
    model, _ = trained_digits_mlp()
    _, _, xte, yte = digits_split()
    with torch.no_grad(), using_mode(model, "hard"):
        acc = float((model(xte).argmax(1) == yte).float().mean())
    assert acc >= 0.90, acc
    assert all(float(m.weight.detach().abs().max()) <= 1.0 for _, m in binary_layers(model))


@pytest.mark.parametrize("name", ["bnn_mlp", "bnn_vgg_small", "bnn_resnet18"])
def test_smooth_htaf_is_refused_by_name(name):
    """'htaf' is smooth HTAF in every family; a BNN's signs are exact, so it is an error naming
    both the activation and the family, not a silent switch to straight-through."""
    with pytest.raises(ValueError, match="'htaf' is smooth.*BNN.*htaf_st"):
        create_model(name, activation="htaf")
    with pytest.raises(ValueError, match="'htaf' is smooth.*BNN"):
        BinaryLinear(4, 2, input_quantizer="htaf")


@pytest.mark.parametrize("mode", ["straight_through", "hard"])
@pytest.mark.parametrize("grad", [True, False])
def test_binary_layers_forward_does_not_depend_on_grad_mode(mode, grad):
    """NaN in → NaN out, with and without gradient tracking, in every mode (it used to be NaN
    with grad enabled and finite numbers under no_grad)."""
    lin = BinaryLinear(2, 2)
    conv = BinaryConv2d(1, 2, 3, padding=1)
    set_mode(lin, mode)
    set_mode(conv, mode)
    x = torch.tensor([[float("nan"), 1.0]])
    img = torch.ones(1, 1, 4, 4)
    img[0, 0, 1, 1] = float("nan")
    with torch.set_grad_enabled(grad):
        y, z = lin(x), conv(img)
        finite = lin(torch.tensor([[-1.0, 1.0]]))
    assert y.isnan().all() and z.isnan().any() and torch.isfinite(finite).all()
    with torch.no_grad():
        assert torch.equal(lin(x).isnan(), y.isnan()) and torch.equal(conv(img).isnan(), z.isnan())


def test_vgg_small_takes_28_pixel_images():
    """Fashion-MNIST's 28×28: three floor-rounding pools (28 → 14 → 7 → 3)."""
    model = create_model("bnn_vgg_small", in_channels=1, image_size=28, width_mult=1 / 16)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="image_size >= 8"):
        create_model("bnn_vgg_small", in_channels=1, image_size=6)
