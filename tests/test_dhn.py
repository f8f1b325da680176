"""Deep Heaviside Networks: shapes, exact binarity in hard mode, argument errors, and learning
digits in hard mode with HTAF (smooth, annealed) and HTAF straight-through."""

import pytest
import torch
from torch import nn

from htaf.cli import main
from htaf.models import create_model, list_models
from htaf.models.dhn import DHNCNN, DHNMLP
from htaf.nn import BinaryActivation, set_mode, using_mode

DIGITS = dict(in_channels=1, image_size=8, num_classes=10)


def _binary_outputs(model, x):
    outs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
             for m in model.modules() if isinstance(m, BinaryActivation)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def test_registered():
    assert {"dhn_mlp", "dhn_cnn"} <= set(list_models())


@pytest.mark.parametrize("activation", ["htaf", "htaf_st", "atan", "ste"])
def test_mlp_hidden_outputs_exactly_binary_in_hard_mode(activation):
    torch.manual_seed(0)
    m = create_model("dhn_mlp", **DIGITS, depth=4, width=32, activation=activation).eval()
    x = torch.randn(64, 1, 8, 8)
    with using_mode(m, "hard"):
        outs = _binary_outputs(m, x)
    assert len(outs) == 4
    for o in outs:
        assert o.shape == (64, 32)
        assert set(o.unique().tolist()) <= {0.0, 1.0}
    if activation == "htaf":            # smooth as built: not binary until switched
        assert not set(_binary_outputs(m, x)[0].unique().tolist()) <= {0.0, 1.0}


def test_cnn_hidden_outputs_exactly_binary_in_hard_mode_and_shapes():
    torch.manual_seed(0)
    m = create_model("dhn_cnn", in_channels=3, image_size=32, num_classes=10, width_mult=1 / 16,
                     activation="htaf").eval()
    x = torch.randn(4, 3, 32, 32)
    assert m(x).shape == (4, 10)
    set_mode(m, "hard")
    outs = _binary_outputs(m, x)
    assert [o.shape[1] for o in outs] == [8, 8, 16, 16, 32, 32]
    assert all(set(o.unique().tolist()) <= {0.0, 1.0} for o in outs)


def test_cnn_default_is_the_probe_network():
    m = DHNCNN(in_channels=3, image_size=32, num_classes=10)
    convs = [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert convs == [128, 128, 256, 256, 512, 512]
    assert sum(isinstance(c, nn.MaxPool2d) for c in m.modules()) == 3
    assert sum(isinstance(c, nn.BatchNorm2d) for c in m.modules()) == 6
    # deeper: widths keep doubling up to 512; pooling stops once the map is 1×1
    deep = DHNCNN(in_channels=1, image_size=8, num_classes=10, depth=10, width_mult=1 / 32)
    assert deep(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert sum(isinstance(c, nn.MaxPool2d) for c in deep.modules()) == 3
    custom = DHNCNN(in_channels=1, image_size=8, num_classes=3, widths=(4, 6, 8))
    assert [c.out_channels for c in custom.modules() if isinstance(c, nn.Conv2d)] == [4, 6, 8]


def test_relu_ceiling_and_act_params_and_norms():
    relu = create_model("dhn_mlp", **DIGITS, depth=3, width=16, activation="relu")
    assert not any(isinstance(m, BinaryActivation) for m in relu.modules())
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 3
    atan = create_model("dhn_mlp", **DIGITS, depth=2, width=16, activation="atan",
                        act_params={"alpha": 1.0})
    acts = [m for m in atan.modules() if isinstance(m, BinaryActivation)]
    assert all(a.surrogate.name == "atan" and a.surrogate.alpha == 1.0 for a in acts)
    ln = DHNMLP(64, 10, depth=2, width=16, norm="layer", dropout=0.1)
    assert sum(isinstance(m, nn.LayerNorm) for m in ln.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in ln.modules()) == 2
    bare = DHNMLP(64, 10, depth=2, width=16, norm="none")
    assert all(lin.bias is not None for lin in bare.modules() if isinstance(lin, nn.Linear))
    assert DHNMLP(64, 10, depth=0)(torch.randn(2, 64)).shape == (2, 10)   # a linear classifier


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=-1), "depth"),
    (dict(width=0), "width"),
    (dict(norm="group"), "norm"),
    (dict(dropout=1.0), "dropout"),
    (dict(activation="nope"), "unknown activation"),
    (dict(activation="atan", act_params={"slope": 2.0}), "slope"),
    (dict(activation="relu", act_params={"alpha": 2.0}), "takes no parameters"),
])
def test_mlp_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("dhn_mlp", **DIGITS, **kwargs)


def test_cnn_bad_args_and_input_mismatch():
    with pytest.raises(ValueError, match="depth"):
        create_model("dhn_cnn", **DIGITS, depth=0)
    with pytest.raises(ValueError, match=r"widths\[1\]"):
        create_model("dhn_cnn", **DIGITS, widths=(8, -2))
    with pytest.raises(ValueError, match="in_features"):
        create_model("dhn_mlp", num_classes=10)
    with pytest.raises(ValueError, match="64 input features"):
        create_model("dhn_mlp", **DIGITS, depth=1)(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="unknown model"):
        create_model("dhn_transformer", **DIGITS)


@pytest.mark.parametrize("argv, match", [
    (["compare", "--depths", "-1"], "depth must be >= 0"),
    (["compare", "--model", "dhn_nope"], "unknown model"),
    (["compare", "--activations", "htaf", "no_such_surrogate"], "unknown activation"),
    (["compare", "--data", "/no/such/folder"], "no/such/folder"),
])
def test_cli_bad_config_is_one_line_exit_2(argv, match, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err and err.startswith("htaf compare: error:")


# -- learning: the binary network (hard mode) must classify digits ---------------------------

@pytest.mark.parametrize("activation", ["htaf", "htaf_st"])
def test_deep_heaviside_mlp_learns_digits_in_hard_mode(activation):
    from htaf.compare import CompareConfig, Variant
    from htaf.engine import train

    torch.set_num_threads(1)
    # The `htaf compare` recipe (AdamW one-cycle, batch 64, fixed γ) at lr 1e-2, its best on
    # digits at shallow depth (docs/results/train-defaults), so 12 epochs suffice; 4 binary layers.
    cfg = CompareConfig(recipe={"model_kwargs": {"depth": 4, "width": 128}, "epochs": 12,
                                "lr": 1e-2},
                        out_dir=None)
    # Two seeds, their mean: one of the 144 validation images is 0.7 points, and ulp-level
    # changes of the CPU kernels or BLAS move a single seed by 1–2 images (seed 0 measured
    # 95.8–96.5 % hard, gap 0.7–2.1 points, across kernel builds; seed 1 97.2–97.9 %, 0–0.7;
    # HTAF-st 97.2 and 97.9 %).
    runs = [train(cfg.train_config(Variant(activation), seed=seed)).metrics for seed in (0, 1)]
    mean = lambda key: sum(m[key] for m in runs) / len(runs)
    assert mean("hard_val_acc") >= 0.95, runs      # on validation: the test split only reports
    if activation == "htaf":                       # smooth training ended (nearly) binary
        assert sum(abs(m["val_gap"]) for m in runs) / len(runs) <= 0.02, runs
