"""htaf reproduce: a part is a comparison (same driver as htaf compare), runs end to end at smoke
size, splits over calls by seed, and the report and README sections are built from the JSON."""

import json
from pathlib import Path

from htaf import reproduce
from htaf.cli import main
from htaf.compare import CompareConfig, Variant
from htaf.results import CompareResult

QUIET = dict(say=lambda _m: None, jobs=1)


def test_every_part_is_a_compare_config(tmp_path):
    for name, part in reproduce.PARTS.items():
        cfg = reproduce.part_config(name, out=tmp_path, smoke=True)
        assert isinstance(cfg, CompareConfig) and len(cfg.seeds) >= 2
        full = reproduce.part_config(name, out=tmp_path, data="digits")
        if part.group != "defaults":                             # sweeps that only choose
            assert len(full.seeds) >= 3, name                    # ≥ 3 seeds per cell
        if part.select is not None:
            select = reproduce.part_config(name, out=tmp_path, data="digits", stage="select")
            assert select.name == f"{name}-select" and select.scales
    digits = reproduce.part_config("digits", out=tmp_path)
    default = CompareConfig()                                    # `htaf compare`, no arguments
    assert digits.recipe.trajectory() == default.recipe.trajectory()
    assert (digits.activations, digits.seeds, digits.scales) == (
        default.activations, default.seeds, default.scales)


def test_smoke_part_writes_its_folder(tmp_path):
    res = reproduce.run_part("snn", out=tmp_path, smoke=True, seeds=(0,), **QUIET)
    saved = json.loads((tmp_path / "snn" / "results.json").read_text())
    assert saved["config"]["recipe"]["data"] == "digits" and saved["config"]["recipe"]["epochs"] == 1
    names = [r["variant"]["name"] for r in saved["rows"]]
    assert names == list(reproduce.PARTS["snn"].config["activations"])
    for row in res.rows:
        assert 0.0 <= row["hard_test_acc"] <= 1.0 and row["seeds"] == [0]
    assert (tmp_path / "snn" / "report.md").exists()


def test_a_part_split_over_seeds_is_merged(tmp_path):
    quiet = dict(out=tmp_path, smoke=True, **QUIET)
    reproduce.run_part("icbm", seeds=(0,), **quiet)
    rec = reproduce.run_part("icbm", seeds=(0, 1), resume=True, **quiet)
    assert [r["seeds"] for r in rec.rows] == [[0, 1], [0, 1]]
    assert all(r["hard_test_acc_std"] is not None for r in rec.rows)
    assert [r["variant"].kind for r in rec.rows] == ["htaf", "ceiling"]
    lines = (tmp_path / "icbm" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 4                                      # seed 0 was not trained twice


def _result(part: str, accs: dict[str, list[float]]) -> CompareResult:
    """Made-up accuracies, only to check how the report reads a part's results.json."""
    cfg = reproduce.part_config(part, out=Path("unused"), data="digits").to_dict()
    runs = []
    for name, values in accs.items():
        kind = "ceiling" if name in ("relu", "standard ResNet-18") else (
            "htaf" if name.startswith(("htaf", "ICBM")) else "baseline")
        v = Variant(activation=name) if part != "icbm" else Variant(title=name, role=kind,
                                                                     model="m")
        for seed, acc in enumerate(values):
            runs.append({"variant": v, "seed": seed, "time": 30.0, "history": [],
                         "metrics": {"hard_val_acc": acc, "hard_test_acc": acc,
                                     "test_acc": acc, "test_gap": 0.0, "train_loss": 0.1}})
    return CompareResult(cfg, runs, dataset="cifar10", device="TestGPU")


def test_report_tables_and_readme_sections(tmp_path):
    results, speed = tmp_path / "results", tmp_path / "speed"
    speed.mkdir()
    _result("bnn", {"htaf": [0.80, 0.82, 0.81], "approx_sign": [0.79, 0.79, 0.80],
                    "ste": [0.70, 0.70, 0.71], "relu": [0.90, 0.90, 0.90]}).write(results / "bnn")
    _result("digits", {"htaf": [0.97, 0.96, 0.97], "sigmoid": [0.96, 0.96, 0.95],
                       "relu": [0.98, 0.98, 0.98]}).write(results / "digits")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{reproduce.README_BEGIN}\nold\n{reproduce.README_END}\n"
                      f"middle\n{reproduce.COMPARE_BEGIN}\nstale table\n{reproduce.COMPARE_END}\n"
                      f"after\n")
    text = reproduce.write_report(results, speed, tmp_path / "results.md", readme)
    assert "| htaf | — | — | 81.00 | 81.00 ± 1.00 | +1.67 [" in text
    assert "Not yet measured: dhn, snn, icbm — run `htaf reproduce dhn / snn / icbm` on a GPU" in text
    assert "Not yet measured: fmnist-dhn, fmnist-dhn-cnn" in text   # the CPU evidence suite
    assert "polynomial" in text and "95 % confidence" in text   # the honest notes
    body = readme.read_text()
    assert body.startswith("# x\n\nbefore\n") and body.endswith("after\n")
    assert "old" not in body and "stale table" not in body and "middle" in body
    assert "| approx_sign | — | — | 79.33 |" in body               # the CIFAR section
    assert "| sigmoid | 6 | — | 95.67 |" in body                   # the digits table
    assert body.count("hard val acc %") == 2
    # the scoreboard: every HTAF result against the best baseline chosen on validation
    # (approx_sign), paired over seeds: diffs 1, 3, 1 pts → 1.67 ± 4.303·1.155/√3 = [−1.20, +4.54]
    assert "| bnn | htaf | — | approx_sign | +1.67 [-1.20, +4.54] | tie |" in body
    assert "0 win(s), 1 tie(s), 0 loss(es)" in body


def test_cli_rejects_unknown_part(capsys):
    try:
        main(["reproduce", "xyz"])
    except SystemExit as e:
        assert e.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_speed_writes_where_the_report_reads_whatever_the_cwd(tmp_path, monkeypatch):
    """Regression: the benchmarks run with cwd = the repo root, and a relative ``out`` (the
    default ``benchmarks/results``, or ``--speed-dir``) was passed on as is, so from another
    folder the JSON landed under the repo while ``report`` looked for it under the cwd."""
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append((args, kw)))
    monkeypatch.chdir(tmp_path)
    written = reproduce.run_speed(Path("speed"), smoke=True, say=lambda _m: None)
    assert len(calls) == len(reproduce.SPEED)
    for (args, _), path in zip(calls, written):
        assert Path(args[-1]) == tmp_path / "speed" / path.name


def test_readme_compare_table_is_the_committed_output():
    """The README's htaf compare table is generated from docs/results/digits, never typed."""
    root = Path(__file__).resolve().parents[1]
    body = (root / "README.md").read_text()
    block = body.split(reproduce.COMPARE_BEGIN, 1)[1].split(reproduce.COMPARE_END, 1)[0]
    saved = root / "docs" / "results" / "digits" / "results.json"
    res = CompareResult.from_json(json.loads(saved.read_text())) if saved.exists() else None
    assert block.strip() == reproduce._compare_section(res).strip()


def test_speed_rows_read_the_bnn_benchmark_layout():
    rec = {"sizes": {"packed_state_bytes": 10, "float_state_dict_bytes": 200, "ratio_state": 20.0},
           "latency_median_ms": [{"threads": 1, "batch": 1, "packed_ms": 2.0,
                                  "float_pytorch_ms": 16.0, "ort_fp32_ms": 12.0,
                                  "ort_int8_ms": 8.0}]}
    rows = dict(reproduce._speed_rows("bench_bnn_infer.json", rec))
    assert rows["model size: packed vs float"].endswith("(20.0× smaller)")
    assert rows["CPU latency, batch 1, 1 thread(s), packed"] == (
        "2.00 ms; float PyTorch 16.00 ms (8.0×), ORT fp32 12.00 ms (6.0×), ORT int8 8.00 ms (4.0×)")


def test_speed_rows_summarize_the_gpu_benchmark_baselines_per_dtype():
    def row(impl, dtype, ratio, saved=1.0):
        return {"impl": impl, "dtype": dtype, "fwd_ratio": ratio - 0.02, "fwdbwd_ratio": ratio,
                "saved_ratio": saved}
    rec = {"results": [row("fused htaf", "float32", 1.04), row("eager htaf", "float32", 9.5, 2.0),
                       row("fused heaviside (atan)", "float32", 1.02),
                       row("fused heaviside (swish_sign)", "float32", 1.11),
                       row("fused heaviside (atan)", "bfloat16", 1.03)]}
    rows = dict(reproduce._speed_rows("bench_activation.json", rec))
    assert rows["fused htaf (float32)"] == (
        "fwd 1.02×, fwd+bwd 1.04× ideal; saved for backward 1.00× the input")
    assert "eager htaf (float32)" in rows and len(rows) == 4
    assert rows["fused heaviside, 2 baseline surrogates (float32)"] == (
        "fwd+bwd 1.02–1.11× ideal (slowest: swish_sign)")
    assert rows["fused heaviside, 1 baseline surrogates (bfloat16)"] == (
        "fwd+bwd 1.03–1.03× ideal (slowest: atan)")


def test_speed_rows_read_the_cpu_benchmark_with_and_without_runs():
    def table(**extra):
        row = lambda name, x: {"name": name, "ms": x, "x_ideal": x, **extra}
        return {"activations": [{"size": 2**20, "threads": 1, "rows": [
            row("heaviside (HTAF)", 1.1), row("reference: heaviside (HTAF)", 20.0)]}]}
    one = dict(reproduce._speed_rows("bench_cpu.json", table()))
    assert one["CPU heaviside (HTAF) fwd+bwd, 1M fp32, 1 thread"] == (
        "1.10× ideal (PyTorch reference 20.0×)")
    three = dict(reproduce._speed_rows("bench_cpu.json", table(x_ideal_runs=[1.0, 1.1, 1.3])))
    assert three["CPU heaviside (HTAF) fwd+bwd, 1M fp32, 1 thread"] == (
        "1.10× ideal, median of 3 runs, range 1.00–1.30 (PyTorch reference 20.0×)")


def test_every_fmnist_part_runs_at_smoke_size_with_its_selection_stage(tmp_path, monkeypatch):
    """Each Fashion-MNIST part end to end (tiny models on digits): the selection stage writes its
    own folder and the part's runs carry what it chose (scales on validation); the BNN part packs
    every run, the ICBM part measures its concepts across seeds."""
    monkeypatch.setattr(reproduce, "_render_png", lambda html, png: False)   # no browser here
    monkeypatch.setattr(reproduce, "_browser", lambda: None)
    said = []
    for name, part in reproduce.PARTS.items():
        if part.group != "fmnist":
            continue
        res = reproduce.run_part(name, out=tmp_path, smoke=True,
                                 seeds=(0, 1) if name == "fmnist-icbm" else (0,),
                                 **{**QUIET, "say": said.append})
        assert all(0.0 <= r["hard_val_acc"] <= 1.0 for r in res.rows), name
        if part.select is not None:
            assert (tmp_path / f"{name}-select" / "results.json").exists()
            assert set(res.config["act_params"]) == set(part.config["activations"])
        assert (tmp_path / name / "report.md").exists()
    packed = json.loads((tmp_path / "fmnist-bnn" / "packed.json").read_text())
    assert packed["all_equal"] and packed["runs"]           # htaf export's model = hard model
    assert all(r["packed_test_acc"] == r["hard_test_acc"] for r in packed["runs"])
    concepts = json.loads((tmp_path / "fmnist-icbm" / "concepts.json").read_text())
    assert set(concepts["per_seed"]) == {"0", "1"} and list(concepts["seed_flip_rate"]) == ["0-1"]
    assert 0.0 <= concepts["seed_flip_rate"]["0-1"] <= 1.0
    # the screenshot's absence is said, with what to install, not skipped silently
    assert "screenshot" not in concepts
    assert any("report.png not rendered: no Chromium found" in m and "apt-get install" in m
               for m in said)


def test_selected_params_are_each_activations_best_on_validation():
    runs = []
    for params, accs in ((("alpha", 1.0),), (0.7, 0.9)), ((("alpha", 4.0),), (0.8, 0.1)):
        v = Variant(activation="atan", params=params)
        runs.append({"variant": v, "seed": 0, "time": 1.0, "history": [],
                     "metrics": {"hard_val_acc": accs[0], "hard_test_acc": accs[1]}})
    cfg = reproduce.part_config("digits", out=Path("unused")).to_dict()
    res = CompareResult(cfg, runs, dataset="digits", device="cpu")
    assert reproduce.selected_params(res) == {"atan": {"alpha": 4.0}}   # validation, not test
