"""htaf reproduce: a part runs end to end (smoke size) and the report is built from the JSON."""

import json
from pathlib import Path

from htaf import reproduce
from htaf.cli import main


def test_smoke_part_writes_its_json(tmp_path):
    rec = reproduce.run_part("snn", data="digits", out=tmp_path, smoke=True, say=lambda _: None)
    saved = json.loads((tmp_path / "snn.json").read_text())
    assert saved["smoke"] is True and saved["epochs"] == 1 and saved["data"] == "digits"
    labels = [r["label"] for r in saved["rows"]]
    assert labels == [v[0] for v in reproduce.PARTS["snn"].variants]
    for row in rec["rows"]:
        assert 0.0 <= row["hard_acc_mean"] <= 1.0 and len(row["runs"]) == 1
        assert row["wall_s_per_run"] > 0


def _record(part, accs):
    rows = []
    for (label, model, kw), acc in zip(reproduce.PARTS[part].variants, accs):
        runs = [{"seed": s, "hard_test_acc": a, "gap": 0.0} for s, a in enumerate(acc)]
        rows.append({"label": label, "model": model, "model_kwargs": kw,
                     "hard_acc_mean": sum(acc) / len(acc),
                     "hard_acc_std": 0.001 if len(acc) > 1 else None, "gap_mean": 0.0,
                     "saturation_mean": None, "epoch_time_s": 2.0, "wall_s_per_run": 30.0,
                     "runs": runs})
    return {"part": part, "title": reproduce.PARTS[part].title, "baseline_note": "note",
            "smoke": False, "data": "cifar10", "epochs": 3, "seeds": [0, 1], "recipe": {},
            "hardware": {}, "device": "TestGPU", "versions": "torch x", "rows": rows}


def test_report_tables_discussion_and_readme_section(tmp_path):
    results, speed = tmp_path / "results", tmp_path / "speed"
    results.mkdir()
    speed.mkdir()
    # made-up accuracies, only to check how the report reads them
    (results / "bnn.json").write_text(json.dumps(
        _record("bnn", [[0.80, 0.82], [0.79, 0.79], [0.70, 0.70], [0.90, 0.90]])))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{reproduce.README_BEGIN}\nold\n{reproduce.README_END}\nafter\n")
    text = reproduce.write_report(results, speed, tmp_path / "results.md", readme)
    assert "| BNN | HTAF (2·HTAF') | 81.00 ± 0.10 | 2 |" in text
    assert "ahead of the best baseline (approx_sign (Bi-Real), 79.00%" in text
    assert "full-precision ceiling 90.00%" in text
    assert "Not yet measured: DHN, SNN, ICBM" in text
    assert "polynomial" in text                      # the honest note about tails
    body = readme.read_text()
    assert body.startswith("# x\n\nbefore\n") and body.endswith("after\n") and "old" not in body
    assert "| BNN | full precision | 90.00" in body


def test_cli_rejects_unknown_part(capsys):
    try:
        main(["reproduce", "xyz"])
    except SystemExit as e:
        assert e.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_part_split_over_seeds_is_merged(tmp_path):
    quiet = dict(data="digits", out=tmp_path, smoke=True, say=lambda _: None)
    reproduce.run_part("icbm", seeds=(0,), **quiet)
    rec = reproduce.run_part("icbm", seeds=(1,), **quiet)
    assert rec["seeds"] == [0, 1]
    for row in rec["rows"]:
        assert [r["seed"] for r in row["runs"]] == [0, 1] and row["hard_acc_std"] is not None
    again = reproduce.run_part("icbm", seeds=(1,), **quiet)       # a rerun replaces, not appends
    assert [len(row["runs"]) for row in again["rows"]] == [2, 2]
    other = reproduce.run_part("icbm", seeds=(1,), epochs=2, **quiet)   # other settings: fresh
    assert other["seeds"] == [1]


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


def test_speed_rows_read_the_bnn_benchmark_layout():
    rec = {"sizes": {"packed_state_bytes": 10, "float_state_dict_bytes": 200, "ratio_state": 20.0},
           "latency_median_ms": [{"threads": 1, "batch": 1, "packed_ms": 2.0,
                                  "float_pytorch_ms": 16.0, "ort_fp32_ms": 12.0,
                                  "ort_int8_ms": 8.0}]}
    rows = dict(reproduce._speed_rows("bench_bnn_infer.json", rec))
    assert rows["model size: packed vs float"].endswith("(20.0× smaller)")
    assert rows["CPU latency, batch 1, 1 thread(s), packed"] == (
        "2.00 ms; float PyTorch 16.00 ms (8.0×), ORT fp32 12.00 ms (6.0×), ORT int8 8.00 ms (4.0×)")
