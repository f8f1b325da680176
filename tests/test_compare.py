"""The experiment driver (``htaf compare``): the line-up, selection on validation, the paired
confidence interval, parallel runs that equal serial ones, resumption, and a tiny end-to-end run."""

import json
import math
import time
from pathlib import Path

import pytest

from htaf.cli import main
from htaf.compare import CompareConfig, Variant, build_variants, compare
from htaf.results import CompareResult
from htaf.stats import paired_difference, t_quantile_975


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
    assert {v.family for v in vs if v.activation == "atan"} == {"atan"}


def test_variants_times_depths_grid_and_bad_input():
    vs = build_variants(["htaf_st", "relu"], depths=(2, 6))
    assert [(v.activation, v.depth) for v in vs] == [("htaf_st", 2), ("htaf_st", 6),
                                                     ("relu", 2), ("relu", 6)]
    cfg = CompareConfig(activations=("htaf",), grid={"anneal_gamma": [None, [1, 30]]},
                        out_dir=None)
    grid = cfg.variants()
    assert [v.name for v in grid] == ["htaf anneal_gamma=none", "htaf anneal_gamma=1:30"]
    assert [cfg.train_config(v, 0).anneal_gamma for v in grid] == [None, (1.0, 30.0)]
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        build_variants(["htaf", "nope"])
    with pytest.raises(ValueError, match="depth"):
        CompareConfig(depths=(2, -1))
    with pytest.raises(ValueError, match="scale"):
        CompareConfig(scales=(0.0,))
    with pytest.raises(ValueError, match="unknown model"):
        CompareConfig(recipe={"model": "nope"})
    with pytest.raises(ValueError, match="'seed' is not a recipe field"):
        CompareConfig(grid={"seed": [1, 2]})
    with pytest.raises(ValueError, match="lr must be > 0"):
        CompareConfig(grid={"lr": [0.1, -1.0]})


def test_train_config_of_a_variant():
    cfg = CompareConfig(recipe={"epochs": 3, "anneal_gamma": (1.0, 10.0)})
    tc = cfg.train_config(Variant("atan", (("alpha", 1.0),), depth=12), seed=4)
    assert tc.model_kwargs == {"depth": 12, "width": 128, "activation": "atan",
                               "act_params": {"alpha": 1.0}}
    assert tc.seed == 4 and tc.epochs == 3 and tc.out_dir is None and tc.optimizer == "adamw"
    smooth = cfg.train_config(Variant("htaf", gamma_mult=2.0), seed=0)
    assert smooth.anneal_gamma == (2.0, 20.0)
    again = CompareConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


# ---------------------------------------------------------------------------------- statistics

def test_paired_confidence_interval_on_a_known_case():
    """Differences 1, 2, 3: mean 2, sd 1, n 3 → 2 ± t(0.975, 2)·1/√3 = 2 ± 2.4841: a tie, although
    every seed favours the first; 0.02, 0.03, 0.04 → [0.0052, 0.0548]: a win."""
    d = paired_difference({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0) and d["std"] == pytest.approx(1.0)
    assert d["ci"] == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))
    assert d["verdict"] == "tie"
    win = paired_difference({0: 0.90, 1: 0.92, 2: 0.94, 7: 0.5}, {0: 0.88, 1: 0.89, 2: 0.90})
    assert win["n"] == 3 and win["verdict"] == "win"                # seed 7 has no pair
    assert win["ci"] == pytest.approx((0.03 - 0.024841, 0.03 + 0.024841), abs=1e-6)
    loss = paired_difference({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.5, 1: 0.7, 2: 0.8})
    assert loss["verdict"] == "loss"
    assert paired_difference({0: 0.9}, {0: 0.8})["verdict"] == "—"   # one seed: no interval


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 41), 60, 100, 1000):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-5)


def _run(variant, seed, val, test, loss=0.1, gap=0.0, dead=0.0):
    return {"variant": variant, "seed": seed, "time": 1.0, "history": [],
            "metrics": {"hard_val_acc": val, "hard_test_acc": test, "val_acc": val + gap,
                        "test_acc": test + gap, "test_gap": gap, "val_gap": gap,
                        "test_dead_units": dead, "val_dead_units": dead, "train_loss": loss}}


def test_selection_on_validation_and_the_verdict_from_the_interval():
    h, a = Variant("htaf"), Variant("atan")
    s1, s8, r = Variant("sigmoid"), Variant("sigmoid", (("alpha", 8.0),)), Variant("relu")
    runs = [_run(h, i, 0.95, t, gap=0.01) for i, t in enumerate((0.90, 0.92, 0.94))]
    # sigmoid α=8 is better on validation and worse on test: validation chooses it anyway
    runs += [_run(s1, i, 0.80, 0.99) for i in range(3)]
    runs += [_run(s8, i, 0.93, t) for i, t in enumerate((0.88, 0.89, 0.90))]
    runs += [_run(a, 0, 0.85, 0.85), _run(a, 1, 0.86, 0.86, loss=math.nan),
             _run(a, 2, 0.87, 0.87)]
    runs += [_run(r, i, 0.99, 0.98) for i in range(3)]
    config = CompareConfig(seeds=(0, 1, 2), out_dir=None).to_dict()
    res = CompareResult(config, runs)
    assert res.row(s8)["selected"] and not res.row(s1)["selected"]
    assert res.best_baseline()["variant"] == s8
    assert res.row(h)["hard_test_acc"] == pytest.approx(0.92)
    assert res.row(h)["hard_test_acc_std"] == pytest.approx(0.02)
    assert res.row(a)["diverged"] == 1 and res.row(a)["train_loss"] == pytest.approx(0.1)
    (cmp,) = res.comparisons
    assert cmp["baseline"] == "sigmoid α=8" and cmp["verdict"] == "win"
    table = res.table().splitlines()
    assert "hard val acc %" in table[0] and "hard test acc % (mean ± std, 3 seeds)" in table[0]
    assert table[2].startswith("| htaf | 6 | — | 95.00 | 92.00 ± 2.00 | +3.00 [+0.52, +5.48] | "
                               "win | 1.00 |")
    assert table[3].startswith("| sigmoid | 6 | α=8 | 93.00 | 89.00 ± 1.00 | (best baseline) |")
    assert "| atan (1 diverged) |" in table[4]
    assert table[5].startswith("| relu | 6 | — | 99.00 | 98.00 ± 0.00 |  |  | — | — |")
    assert res.headline().startswith("depth 6: hard test accuracy htaf 92.0% (+3.00 pts "
                                     "[+0.52, +5.48]: win), best baseline sigmoid α=8 89.0%")
    full = res.full_table()
    assert "| sigmoid α=8 | 6 | ✓ | 93.00 ± 0.00 | 89.00 ± 1.00 |" in full
    again = CompareResult.from_json(json.loads(json.dumps(res.to_json(), default=str)))
    assert again.table() == res.table()


def test_a_result_records_the_code_that_produced_it():
    """results.json names htaf's version and git commit (a rerun on other kernels can differ),
    a result reloaded from an older JSON keeps what that JSON said, and the description shows it."""
    from htaf.results import code_version
    version = code_version()
    assert version.startswith("0.") or version == "unknown"
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert "+g" in version
    h = Variant("htaf")
    config = CompareConfig(seeds=(0,), out_dir=None).to_dict()
    res = CompareResult(config, [_run(h, 0, 0.9, 0.9)], code="0.1.0+gabc1234", wall=3.0)
    data = json.loads(json.dumps(res.to_json(), default=str))
    assert data["htaf"] == "0.1.0+gabc1234"
    assert CompareResult.from_json(data).code == "0.1.0+gabc1234"
    del data["htaf"]
    assert CompareResult.from_json(data).code == ""
    assert "; htaf 0.1.0+gabc1234; total wall time 3 s." in res.setup()


# ----------------------------------------------------------------------------------- running

def _small(tmp_path, **kw):
    base = dict(activations=("htaf_st", "relu"), seeds=(0, 1), jobs=1, out_dir=str(tmp_path),
                recipe={"epochs": 1, "model_kwargs": {"depth": 1, "width": 8}})
    return CompareConfig(**{**base, **kw})


def test_parallel_runs_equal_serial_ones(tmp_path):
    """Runs in 2 spawned processes of one thread each give the numbers of the same runs here."""
    par = compare(_small(tmp_path, jobs=2, name="par"), progress=None)
    ser = compare(_small(tmp_path, jobs=1, name="ser"), progress=None)

    def numbers(res):
        return [(r["variant"], r["seed"], {k: v for k, v in r["metrics"].items()
                                           if "time" not in k}) for r in res.runs]

    assert numbers(par) == numbers(ser)
    assert par.table() == ser.table()


def test_a_comparison_folder_is_resumed_or_refused(tmp_path):
    messages = []
    first = compare(_small(tmp_path, name="c"), progress=messages.append)
    lines = (tmp_path / "c" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len(first.runs) == 4
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        compare(_small(tmp_path, name="c"), progress=None)
    messages.clear()
    more = compare(_small(tmp_path, name="c", seeds=(0, 1, 2), resume=True),
                   progress=messages.append)
    assert "4 reused" in messages[0] and sum("seed 2:" in m for m in messages) == 2
    assert [r["seed"] for r in more.runs] == [0, 1, 2, 0, 1, 2]
    assert more.runs[0]["metrics"] == first.runs[0]["metrics"]       # reused, not retrained
    other = compare(_small(tmp_path, name="c", seeds=(0,), resume=True,
                           recipe={"epochs": 2, "model_kwargs": {"depth": 1, "width": 8}}),
                    progress=messages.append)
    assert any("have other settings" in m for m in messages) and len(other.runs) == 2
    assert len((tmp_path / "c" / "runs.jsonl").read_text().splitlines()) == 8   # nothing lost
    fresh = compare(_small(tmp_path, name="c", seeds=(0,), overwrite=True), progress=None)
    assert len(fresh.runs) == 2
    assert len((tmp_path / "c" / "runs.jsonl").read_text().splitlines()) == 2


def test_compare_end_to_end_writes_table_report_and_plots(tmp_path, capsys):
    rc = main(["compare", "--activations", "htaf", "sigmoid", "relu", "--seeds", "0", "1",
               "--epochs", "1", "--depths", "1", "2", "--width", "8", "--scales", "2",
               "--jobs", "1", "--out", str(tmp_path), "--name", "tiny"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| activation | depth | chosen on val | hard val acc % | hard test acc" in out
    assert "95 % confidence" in out and "report: " in out and "tiny/report.md" in out
    folder = tmp_path / "tiny"
    for f in ("report.md", "results.json", "runs.jsonl", "loss.png", "accuracy.png", "depth.png",
              "scales.png"):
        assert (folder / f).stat().st_size > 0, f
    report = (folder / "report.md").read_text()
    assert "## Depth sweep" in report and "| sigmoid α=8 |" in report
    assert "## Every variant" in report and "polynomial" in report   # the honest note on tails
    data = json.loads((folder / "results.json").read_text())
    # htaf: 1 + α, β, γ×2 = 4; sigmoid 2; relu 1 → 7 variants × 2 depths × 2 seeds
    assert len(data["runs"]) == 28 and len(data["rows"]) == 14
    assert sum(r["selected"] for r in data["rows"]) == 6          # 3 families × 2 depths
    for r in data["runs"]:
        m = r["metrics"]
        assert 0.0 <= m["hard_val_acc"] <= 1.0 and 0.0 <= m["hard_test_acc"] <= 1.0
        assert len(r["history"]) == 1 and "hard_test_acc" not in r["history"][0]
    assert {r["variant"]["depth"] for r in data["rows"]} == {1, 2}
    assert {c["depth"] for c in data["comparisons"]} == {1, 2}
    assert main(["compare", "--config", str(folder / "results.json"), "--jobs", "1",
                 "--resume", "--out", str(tmp_path), "--name", "tiny"]) == 0
    assert "28 reused" in capsys.readouterr().out


def test_cli_compare_grid_and_model_options():
    from htaf.cli import build_parser, compare_config_from_args

    args = build_parser().parse_args(["compare", "--activations", "htaf", "--grid",
                                      "anneal_gamma=none,1:30", "--grid", "lr=0.01,0.003",
                                      "--model", "dhn_cnn", "--model-arg", "width_mult=0.25",
                                      "--epochs", "2", "--out", "none"])
    cfg = compare_config_from_args(args)
    assert cfg.grid == {"anneal_gamma": [None, (1.0, 30.0)], "lr": [0.01, 0.003]}
    assert cfg.recipe.model == "dhn_cnn" and cfg.recipe.model_kwargs == {"width_mult": 0.25}
    assert cfg.recipe.epochs == 2 and cfg.recipe.optimizer == "adamw"
    assert len(cfg.variants()) == 4


def test_smooth_htaf_is_not_a_variant_of_a_binary_net(tmp_path):
    """'htaf' means smooth HTAF in every family: on a BNN (or SNN) it is an error naming both,
    and the default line-up there leaves it out instead of training htaf_st twice."""
    from htaf.compare import DEFAULT_ACTIVATIONS, CompareConfig

    with pytest.raises(ValueError, match="'htaf' is smooth.*BNN"):
        CompareConfig(recipe={"model": "bnn_mlp"}, activations=("htaf", "htaf_st", "relu"))
    for model in ("bnn_mlp", "snn_mlp"):
        acts = CompareConfig(recipe={"model": model}, out_dir=None).activations
        assert "htaf" not in acts and "htaf_st" in acts and set(acts) < set(DEFAULT_ACTIVATIONS)
    assert "htaf" in CompareConfig(out_dir=None).activations


def test_each_architecture_is_compared_with_its_own_baselines():
    """A part with an MLP line-up and a CNN line-up (fmnist-bnn): the binary CNN's HTAF is
    compared with the best *CNN* baseline, never with the MLP's (which may be far better)."""
    cfg = CompareConfig(activations=("htaf_st", "approx_sign"), out_dir=None).to_dict()
    mlp_h, mlp_b = Variant("htaf_st"), Variant("approx_sign")
    cnn_h = Variant(model="bnn_vgg_small", title="CNN htaf_st", role="htaf")
    cnn_b = Variant(model="bnn_vgg_small", title="CNN ste", role="baseline")
    runs = []
    for seed in range(3):
        runs += [_run(mlp_h, seed, 0.88, 0.87), _run(mlp_b, seed, 0.89, 0.88 + 0.001 * seed),
                 _run(cnn_h, seed, 0.84, 0.83 + 0.001 * seed), _run(cnn_b, seed, 0.83, 0.82)]
    res = CompareResult(cfg, runs)
    against = {c["htaf"]: c["baseline"] for c in res.comparisons}
    assert against == {"htaf_st": "approx_sign", "CNN htaf_st": "CNN ste"}
    cnn = next(c for c in res.comparisons if c["htaf"] == "CNN htaf_st")
    assert cnn["verdict"] == "win" and cnn["mean"] > 0       # +1.1 points, not −5 vs the MLP


def _worker_that_outlives(parent):
    from htaf.compare import _exit_with_parent

    _exit_with_parent(parent, poll=0.05)
    time.sleep(60)


def test_workers_end_when_their_parent_is_killed():
    """A killed parent runs no clean-up: its workers must notice and exit, not train on."""
    import multiprocessing
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = multiprocessing.get_context("spawn").Process(target=_worker_that_outlives,
                                                          args=(parent.pid,))
    worker.start()
    try:
        time.sleep(0.5)
        assert worker.is_alive()
        parent.kill()
        parent.wait()
        worker.join(timeout=30)
        assert not worker.is_alive() and worker.exitcode == 1
    finally:
        parent.kill()
        if worker.is_alive():
            worker.kill()


def test_a_selected_gamma_schedule_multiple_reaches_the_main_stage():
    """Selection can choose a multiple of annealed smooth HTAF's γ schedule (gamma_mult); the
    main stage must run that setting, not the default schedule."""
    from htaf.reproduce import selected_params

    class Chosen:
        selected = {"htaf": {"variant": Variant("htaf", (), None, 0.5)},
                    "atan": {"variant": Variant("atan", (("alpha", 4.0),))}}

    act_params = selected_params(Chosen())
    assert act_params == {"htaf": {"gamma_mult": 0.5}, "atan": {"alpha": 4.0}}
    (main,) = build_variants(["htaf"], annealed=True, act_params=act_params)
    assert main.gamma_mult == 0.5 and main.params == () and main.choice == "γ×0.5"
    swept = build_variants(["htaf"], scales=(0.5, 1.0, 2.0), annealed=True,
                           act_params=act_params)
    assert sorted({v.gamma_mult for v in swept}) == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="gamma_mult"):
        build_variants(["htaf"], annealed=False, act_params=act_params)
    with pytest.raises(ValueError, match="gamma_mult"):
        build_variants(["htaf_st"], annealed=True, act_params={"htaf_st": {"gamma_mult": 2.0}})
