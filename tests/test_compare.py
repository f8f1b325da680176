"""``htaf compare``: the variant line-up, the aggregation, and a tiny end-to-end run."""

import json
import math

import pytest

from htaf.cli import main
from htaf.compare import CompareConfig, CompareResult, Variant, _aggregate, build_variants


def test_variants_sweep_each_surrogates_own_scale():
    vs = build_variants(["htaf", "htaf_st", "atan", "fast_sigmoid", "ste", "relu"],
                        scales=(0.5, 1.0, 2.0), annealed=True)
    names = [v.name for v in vs]
    assert names[:5] == ["htaf", "htaf α=0.25", "htaf α=1", "htaf β=2", "htaf β=8"]
    # smooth HTAF's γ is set by the annealing schedule: the sweep scales the schedule
    assert [v.gamma_mult for v in vs if v.activation == "htaf"][-2:] == [0.5, 2.0]
    fixed = [v.name for v in build_variants(["htaf"], scales=(2.0,))]
    assert fixed == ["htaf", "htaf α=1", "htaf β=8", "htaf γ=2"]
    assert "htaf_st γ=2" in names and "htaf_st γ=0.5" in names
    assert {"atan α=1", "atan α=4", "fast_sigmoid k=12.5", "fast_sigmoid k=50",
            "ste clip=0.5", "ste clip=2"} <= set(names)
    assert [v.name for v in vs if v.activation == "relu"] == ["relu"]
    assert len(names) == len(set(names))
    kinds = {v.activation: v.kind for v in vs}
    assert kinds == {"htaf": "htaf", "htaf_st": "htaf", "atan": "baseline",
                     "fast_sigmoid": "baseline", "ste": "baseline", "relu": "ceiling"}


def test_variants_times_depths_and_bad_input():
    vs = build_variants(["htaf_st", "relu"], depths=(2, 6))
    assert [(v.activation, v.depth) for v in vs] == [("htaf_st", 2), ("htaf_st", 6),
                                                     ("relu", 2), ("relu", 6)]
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        build_variants(["htaf", "nope"])
    with pytest.raises(ValueError, match="depth"):
        CompareConfig(depths=(2, -1))
    with pytest.raises(ValueError, match="scale"):
        CompareConfig(scales=(0.0,))
    with pytest.raises(ValueError, match="unknown model"):
        CompareConfig(model="nope")


def test_train_config_of_a_variant():
    cfg = CompareConfig(epochs=3, anneal_gamma=(1.0, 10.0))
    tc = cfg.train_config(Variant("atan", (("alpha", 1.0),), depth=12), seed=4)
    assert tc.model_kwargs == {"depth": 12, "width": 128, "activation": "atan",
                               "act_params": {"alpha": 1.0}}
    assert tc.seed == 4 and tc.epochs == 3 and tc.out_dir is None
    smooth = cfg.train_config(Variant("htaf", gamma_mult=2.0), seed=0)
    assert smooth.anneal_gamma == (2.0, 20.0)


def _run(variant, seed, acc, loss=0.1, gap=0.0, dead=0.0):
    return {"variant": variant, "seed": seed, "hard_test_acc": acc, "test_acc": acc + gap,
            "gap": gap, "dead_units": dead, "train_loss": loss, "time": 1.0, "history": []}


def test_aggregation_table_and_best_baseline():
    h, a, s, r = Variant("htaf"), Variant("atan"), Variant("sigmoid"), Variant("relu")
    runs = [_run(h, 0, 0.90, gap=0.02), _run(h, 1, 0.94, gap=0.04),
            _run(a, 0, 0.80), _run(a, 1, 0.84, loss=math.nan),
            _run(s, 0, 0.85, dead=0.5), _run(s, 1, 0.85, dead=0.25),
            _run(r, 0, 0.99), _run(r, 1, 0.97)]
    rows = _aggregate([h, a, s, r], runs)
    res = CompareResult(CompareConfig(seeds=(0, 1)), runs, rows, None, "cpu")
    row = res.row(h)
    assert row["hard_acc"] == pytest.approx(0.92)
    assert row["hard_acc_std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert row["gap"] == pytest.approx(0.03)
    assert res.row(a)["diverged"] == 1 and res.row(a)["train_loss"] == pytest.approx(0.1)
    assert res.row(s)["dead_units"] == pytest.approx(0.375)
    assert res.best_baseline()["variant"] == s
    table = res.table().splitlines()
    assert table[2].startswith("| htaf | 6 | 92.00 ± 2.83 | 3.00 | 0.0 |")
    assert "| atan (1 diverged) |" in table[3]
    assert table[5].startswith("| relu | 6 | 98.00 ± 1.41 | — | — |")
    assert res.headline() == "depth 6: htaf 92.0%, relu 98.0%, best baseline sigmoid 85.0%"


def test_compare_end_to_end_writes_table_report_and_plots(tmp_path, capsys):
    rc = main(["compare", "--activations", "htaf", "sigmoid", "relu",
               "--seeds", "0", "1", "--epochs", "2", "--depths", "1", "3", "--width", "16",
               "--scales", "2", "--out", str(tmp_path), "--name", "tiny"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| activation | depth | hard test acc" in out
    assert "report: " in out and "tiny/report.md" in out
    folder = tmp_path / "tiny"
    for f in ("report.md", "results.json", "loss.png", "accuracy.png", "depth.png", "scales.png"):
        assert (folder / f).stat().st_size > 0, f
    report = (folder / "report.md").read_text()
    assert "## Depth sweep" in report and "| sigmoid α=8 |" in report
    assert "polynomial" in report                       # the honest note on tails
    data = json.loads((folder / "results.json").read_text())
    # htaf: 1 + α, β, γ×2 = 4; sigmoid 2; relu 1 → 7 variants × 2 depths × 2 seeds
    assert len(data["runs"]) == 28 and len(data["rows"]) == 14
    for r in data["runs"]:
        assert 0.0 <= r["hard_test_acc"] <= 1.0 and len(r["history"]) == 2
    assert {r["variant"]["depth"] for r in data["rows"]} == {1, 3}


def test_smooth_htaf_is_not_a_variant_of_a_binary_net(tmp_path):
    """'htaf' means smooth HTAF in every family: on a BNN (or SNN) it is an error naming both,
    and the default line-up there leaves it out instead of training htaf_st twice."""
    from htaf.compare import DEFAULT_ACTIVATIONS, CompareConfig

    with pytest.raises(ValueError, match="'htaf' is smooth.*BNN"):
        CompareConfig(model="bnn_mlp", activations=("htaf", "htaf_st", "relu")).variants()
    for model in ("bnn_mlp", "snn_mlp"):
        acts = CompareConfig(model=model).activations
        assert "htaf" not in acts and "htaf_st" in acts and set(acts) < set(DEFAULT_ACTIVATIONS)
    assert "htaf" in CompareConfig(model="dhn_mlp").activations
