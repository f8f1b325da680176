"""ICBM models: learning digits through the engine, exact interventions, registry, hooks."""

import json

import pytest
import torch

from htaf.models import create_model, list_models
from htaf.models.icbm import ICBM
from htaf.nn import Anneal, set_mode, using_mode
from icbm_helpers import EPOCHS, trained_digits_run


def _small_icbm(k=8, classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("icbm_cnn", in_channels=1, image_size=8, num_classes=classes, width=4,
                        num_concepts=k, **kw)


def test_icbm_learns_digits_with_small_gap():
    run = trained_digits_run()
    m = run.metrics
    assert m["hard_val_acc"] >= 0.95                                 # on validation
    assert abs(m["val_acc"] - m["hard_val_acc"]) <= 0.01            # hard/smooth gap ≤ 1 point
    assert m["acc_hard"] == pytest.approx(m["hard_val_acc"], abs=1e-6)   # epoch_metrics: val
    assert m["saturation"] >= 0.9                                    # γ annealing ended binary
    assert m["flip_rate_epoch"] < 0.05                               # codes settled at the end
    lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == EPOCHS
    keys = {"acc_smooth", "acc_hard", "gap", "saturation", "active_per_image", "never_on",
            "always_on"}
    assert all(keys <= set(r) for r in records)
    assert "flip_rate_epoch" not in records[0] and all("flip_rate_epoch" in r for r in records[1:])
    summary = (run.run_dir / "summary.md").read_text()
    assert "| saturation |" in summary and "| flip_rate_epoch |" in summary


def test_reloaded_run_keeps_annealed_gamma_and_accuracy():
    from htaf.engine import load_run
    from htaf.explain.metrics import collect, concept_metrics

    run = trained_digits_run()
    model, data, _ = load_run(run.run_dir)
    assert model.act.gamma == pytest.approx(30.0)
    batches = data.batches("test", 512, shuffle=False)
    m = concept_metrics(collect(model, batches))
    assert m["acc_hard"] == pytest.approx(run.metrics["hard_test_acc"], abs=1e-6)


def test_intervention_moves_logits_by_exactly_the_head_column():
    model = _small_icbm().eval()
    x = torch.randn(6, 1, 8, 8)
    set_mode(model, "hard")
    with torch.no_grad():
        before, c = model(x, return_concepts=True)
        w = model.head.weight
        for k in range(model.num_concepts):
            after, c2 = model.intervene(x, flip=k, return_concepts=True)
            sign = (1 - 2 * c[:, k]).unsqueeze(1)                      # +1 if off→on, −1 if on→off
            torch.testing.assert_close(after - before, sign * w[:, k], rtol=0, atol=1e-6)
            assert torch.equal(c2[:, k], 1 - c[:, k])
            assert torch.equal(torch.cat([c2[:, :k], c2[:, k + 1:]], 1),
                               torch.cat([c[:, :k], c[:, k + 1:]], 1))
        on = model.intervene(x, set_on=[0, 1], set_off=2, return_concepts=True)[1]
        assert on[:, :2].eq(1).all() and on[:, 2].eq(0).all()
        mask = torch.zeros(6, model.num_concepts, dtype=torch.bool)
        mask[0, 3] = True
        edited = model.intervene(x, flip=mask, return_concepts=True)[1]
        assert edited[0, 3] == 1 - c[0, 3] and torch.equal(edited[1:], c[1:])
        torch.testing.assert_close(model.intervene(x), before)        # no edit, no change
    with pytest.raises(ValueError, match="flip: concept 8 out of range"):
        model.intervene(x, flip=8)


def test_concepts_smooth_in_training_hard_when_set():
    model = _small_icbm()
    x = torch.randn(16, 1, 8, 8)
    c = model.concepts(x)
    assert ((c > 0) & (c < 1)).all()                                 # smooth HTAF by default
    with using_mode(model, "hard"):
        h = model.concepts(x)
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(model.hard_codes(x), model.preactivations(x) >= 0)


def test_engine_annealer_finds_concept_layer_and_state_dict_keeps_it():
    model = _small_icbm()
    anneal = Anneal(model, gamma=(1.0, 30.0))
    assert anneal.layers == [model.act]
    anneal.set_progress(1.0)
    fresh = _small_icbm(seed=1)
    fresh.load_state_dict(model.state_dict())
    assert fresh.act.gamma == pytest.approx(30.0)


def test_sparsity_penalty_is_mean_activation_times_weight():
    model = _small_icbm(sparsity=0.3).train()
    _, c = model(torch.randn(4, 1, 8, 8), return_concepts=True)
    penalty = model.extra_loss()
    torch.testing.assert_close(penalty, 0.3 * c.mean())
    assert penalty.requires_grad
    assert model.extra_loss().item() == 0.0                          # consumed once
    assert _small_icbm().extra_loss().item() == 0.0                  # disabled by default


def test_epoch_metrics_track_flips_between_calls():
    model = _small_icbm()
    batches = [(torch.randn(10, 1, 8, 8), torch.randint(0, 5, (10,)))]
    first = model.epoch_metrics(batches)
    assert "flip_rate_epoch" not in first and 0 <= first["saturation"] <= 1
    assert model.training                                            # state restored
    assert model.epoch_metrics(batches)["flip_rate_epoch"] == 0.0
    with torch.no_grad():
        model.project.bias.add_(5.0)                                  # push every unit on
    assert model.epoch_metrics(batches)["flip_rate_epoch"] > 0


@pytest.mark.parametrize("name, kw, shape", [
    ("icbm_resnet18", {"width": 4, "num_concepts": 12}, (2, 3, 32, 32)),
    ("std_resnet18", {"width": 4}, (2, 3, 32, 32)),
    ("resnet18", {"width": 4}, (2, 3, 32, 32)),
    ("std_cnn", {"width": 4}, (2, 1, 28, 28)),
    ("icbm_cnn", {"width": 4}, (2, 1, 28, 28)),
    ("icbm_tv", {"arch": "mobilenet_v3_small", "num_concepts": 6}, (2, 1, 32, 32)),
])
def test_registered_models_forward(name, kw, shape):
    assert name in list_models()
    model = create_model(name, in_channels=shape[1], image_size=shape[2], num_classes=7, **kw)
    assert model(torch.randn(shape)).shape == (2, 7)
    if name.startswith("icbm"):
        assert isinstance(model, ICBM) and model.concepts(torch.randn(shape)).shape[1] == \
            model.num_concepts


def test_icbm_tv_never_downloads(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in torchvision's cache"):
        create_model("icbm_tv", arch="resnet18", pretrained_weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("icbm_tv", arch="resnet18", pretrained_weights=str(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match="is not a weight of"):
        create_model("icbm_tv", arch="resnet18", pretrained_weights="NOPE")
    with pytest.raises(ValueError, match="unknown torchvision model"):
        create_model("icbm_tv", arch="resnet_nope")


def test_icbm_tv_loads_a_local_state_dict(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = tv.models.get_model("mobilenet_v3_small", weights=None)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    model = create_model("icbm_tv", arch="mobilenet_v3_small", pretrained_weights=str(tmp_path / "w.pt"))
    torch.testing.assert_close(model.backbone.features[0][0].weight, ref.features[0][0].weight)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="num_concepts"):
        _small_icbm(k=0)
    with pytest.raises(ValueError, match="sparsity"):
        _small_icbm(sparsity=-1.0)
