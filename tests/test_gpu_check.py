"""benchmarks/gpu_check.sh, the prepared device check, run here on the CPU: its stages' plumbing
(time limits, the summary, the files it leaves in $OUT), so that the one call a GPU session
gets does not fail on the script itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    full = {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
            "GPU_CHECK_DATA": str(tmp_path / "no-data"), **env}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=300)
    return proc, json.loads((out / "summary.json").read_text())


def test_benchmark_stages_write_their_json_and_the_summary(tmp_path):
    proc, summary = _run(tmp_path, GPU_CHECK_STAGES="bench cifar", GPU_CHECK_SMOKE="1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert summary["bench_activation"]["rc"] == 0 and summary["bench_lif"]["rc"] == 0
    assert summary["cifar_dhn"]["rc"] == 125            # no data: skipped, and said so
    assert "cifar: skipped, no" in proc.stdout
    out = tmp_path / "out"
    act = json.loads((out / "bench_activation.json").read_text())
    impls = {r["impl"] for r in act["results"]}
    assert {"fused htaf", "fused heaviside", "fused heaviside (atan)",
            "fused heaviside (swish_sign)"} <= impls     # HTAF and every baseline
    assert all(r["fwdbwd_ratio"] > 0 for r in act["results"])
    assert json.loads((out / "bench_lif.json").read_text())["results"]
    assert sorted(p.name for p in out.iterdir()) == [    # at most 8 files come back
        "bench_activation.json", "bench_lif.json", "gpu_check.log", "summary.json"]


def test_stages_beyond_the_budget_are_skipped_and_recorded(tmp_path):
    proc, summary = _run(tmp_path, GPU_CHECK_STAGES="bench", GPU_CHECK_BUDGET_S="3")
    assert proc.returncode == 0
    assert summary == {"bench_activation": {"rc": 125, "seconds": 0},
                       "bench_lif": {"rc": 125, "seconds": 0}}
    assert proc.stdout.count("skipped") == 2
