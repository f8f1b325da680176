"""htaf.engine and ``htaf train``: files written, reproducibility, exact resume, DDP equality,
hooks, metrics, and one-line errors for bad configs."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import engine_models  # noqa: F401 - registers test_mlp / test_hooked_mlp
from htaf import cli
from htaf.data import load_dataset
from htaf.engine import RunResult, TrainConfig, load_run, lr_factor, resolve_anneal_gamma, train
from htaf.metrics import binary_units, dead_unit_fraction, evaluate
from htaf.nn import Heaviside

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(model="test_mlp", model_kwargs={"activation": "htaf", "depth": 2, "width": 32},
                data="digits", epochs=3, batch_size=64, lr=0.05, out_dir=str(tmp_path / "runs"),
                log="none", seed=0, anneal_gamma=(1.0, 30.0))
    base.update(kw)
    return TrainConfig(**base)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _trajectory(history):
    return [{k: v for k, v in r.items() if "time" not in k} for r in history]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ------------------------------------------------------------------------------ a run's output

def test_run_writes_everything_and_reloads(tmp_path, digits):
    result = train(_config(tmp_path))
    assert isinstance(result, RunResult)
    run = tmp_path / "runs" / "test_mlp-htaf-digits-s0"
    assert result.run_dir == run
    for name in ("config.json", "metrics.jsonl", "checkpoints/last.pt", "loss.png",
                 "accuracy.png", "summary.md"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    final = lines[-1]
    for key in ("train_loss", "train_acc", "test_acc", "hard_test_acc", "gap", "dead_units", "lr",
                "gamma", "epoch_time", "time"):
        assert key in final, key
    assert final["gap"] == pytest.approx(final["test_acc"] - final["hard_test_acc"])
    assert [r["gamma"] for r in lines] == pytest.approx([1.0, math.sqrt(30.0), 30.0])  # exp anneal
    assert final["hard_test_acc"] > 0.5          # 3 epochs of a 2-layer Heaviside MLP on digits
    assert result.metrics == lines[-1]
    assert json.loads((run / "config.json").read_text())["model_kwargs"]["activation"] == "htaf"
    assert "hard_test_acc" in (run / "summary.md").read_text()
    assert not list(run.rglob("*.tmp*"))

    model, ds, config = load_run(run)
    assert config.model == "test_mlp" and ds.name == "digits"
    assert model[3].surrogate.gamma == pytest.approx(30.0)      # annealed γ restored
    x, _ = next(iter(ds.batches("test", 1000)))
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model(x))
    hard = evaluate(model, ds.batches("test", 1000), mode="hard")
    assert hard["acc"] == pytest.approx(final["hard_test_acc"])


def test_same_seed_same_run_other_seed_differs(tmp_path, digits):
    kw = {"epochs": 2, "out_dir": None, "model_kwargs": {"activation": "htaf_st"}}
    a, b = train(_config(tmp_path, **kw)), train(_config(tmp_path, **kw), dataset=digits)
    c = train(_config(tmp_path, seed=1, **kw), dataset=digits)
    assert a.run_dir is None and not (tmp_path / "runs").exists()
    assert _same_weights(a.model.state_dict(), b.model.state_dict())
    assert _trajectory(a.history) == _trajectory(b.history)
    assert not _same_weights(a.model.state_dict(), c.model.state_dict())


def test_resume_is_bit_exact(tmp_path):
    kw = dict(epochs=4, augment=True, optimizer="adamw", lr=3e-3, schedule="onecycle")
    full = train(_config(tmp_path, name="full", **kw))
    part = train(_config(tmp_path, name="part", stop_after=2, **kw))
    assert len(part.history) == 2
    ckpt = torch.load(part.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "rng", "scheduler"} <= set(ckpt)
    resumed = train(_config(tmp_path, name="part", resume=True, **kw))
    assert _same_weights(full.model.state_dict(), resumed.model.state_dict())
    assert _trajectory(full.history) == _trajectory(resumed.history)
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_resume_refuses_a_different_config(tmp_path):
    train(_config(tmp_path, name="r", epochs=1))
    with pytest.raises(ValueError, match="differs in lr"):
        train(_config(tmp_path, name="r", epochs=1, lr=0.1, resume=True))


_DDP_SCRIPT = """
import os, sys, torch
sys.path[:0] = [{tests!r}, {src!r}]
torch.set_num_threads(1)
import engine_models
from htaf.engine import TrainConfig, train
result = train(TrainConfig(**{config!r}))
if torch.distributed.is_initialized():
    raise SystemExit("process group left open")
if os.environ["RANK"] == "0":
    torch.save({{"model": result.model.state_dict(), "history": result.history}}, {out!r})
"""


def _digits_zip(path: Path, ds, n_train: int, n_test: int) -> Path:
    """A slice of digits as an ImageFolder zip of PNGs (so workers need not import sklearn)."""
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", n_train), ("test", n_test)):
            xs, ys = getattr(ds, f"{split}_x")[:n], getattr(ds, f"{split}_y")[:n]
            for i, (x, y) in enumerate(zip(xs, ys.tolist())):
                buf = io.BytesIO()
                Image.fromarray(x[0].numpy(), mode="L").save(buf, format="PNG")
                z.writestr(f"{split}/{y}/{i:04d}.png", buf.getvalue())
    return path


def test_ddp_two_processes_equal_one(tmp_path, digits):
    """torchrun, 2 gloo processes with per-rank batch 32 == 1 process with batch 64 (no
    BatchNorm; the last batch of 29 samples splits 15/14, exercising the loss scaling)."""
    data = _digits_zip(tmp_path / "digits.zip", digits, 509, 120)
    config = dict(model="test_mlp", data=str(data), data_cache=str(tmp_path / "cache"), epochs=1,
                  batch_size=64, lr=0.1, out_dir=None, log="plain", device="cpu",
                  model_kwargs={"activation": "htaf_st", "depth": 2, "width": 32, "norm": False})
    script, out = tmp_path / "worker.py", tmp_path / "ddp.pt"
    script.write_text(_DDP_SCRIPT.format(tests=str(TESTS), src=str(SRC), config=config,
                                         out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--standalone", "--monitor-interval", "0.2", str(script)]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "× 2" in proc.stdout and proc.stdout.count("epoch 1/1") == 1   # rank 0 logs alone

    single = train(TrainConfig(**{**config, "log": "none"}))
    ddp_ckpt = torch.load(out, weights_only=False)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp_ckpt["model"][k], v, rtol=1e-5, atol=1e-6)
    ddp, one = ddp_ckpt["history"][-1], single.history[-1]
    for key in ("train_loss", "train_acc", "test_acc", "hard_test_acc", "dead_units"):
        assert ddp[key] == pytest.approx(one[key], abs=1e-5), key


# ------------------------------------------------------------------------------ hooks, metrics

def test_model_hooks_are_called(tmp_path):
    result = train(_config(tmp_path, model="test_hooked_mlp", epochs=2, out_dir=None))
    model = result.model
    assert model.extra_calls == 2 * math.ceil(1437 / 64)
    assert model.metric_calls == 2
    assert result.metrics["hook_test_samples"] == 360.0         # the whole test set
    assert result.metrics["hook_training_flag"] == 0.0          # called in eval mode
    assert model[1].weight.abs().max() <= model[1].clip         # constrain_ after every step


def test_dead_units_counts_constant_units(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), Heaviside(), nn.Linear(8, 10))
    with torch.no_grad():
        model[1].bias[:3] = torch.tensor([1e4, -1e4, 1e4])     # 3 units stuck at 1, 0, 1
        model[1].weight[:3] = 0
    batches = digits.batches("test", 100)
    layers = binary_units(model, batches)
    assert list(layers.values()) == [(3, 8)]
    assert dead_unit_fraction(model, batches) == pytest.approx(3 / 8)
    hard = evaluate(model, batches, mode="hard", dead_units=True)
    assert hard["dead_units"] == pytest.approx(3 / 8)
    assert dead_unit_fraction(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), batches) is None


def test_relu_model_has_no_gap_and_no_dead_metric(tmp_path):
    result = train(_config(tmp_path, epochs=1, out_dir=None, model_kwargs={"activation": "relu"}))
    m = result.metrics
    assert m["gap"] == 0.0 and m["dead_units"] is None and m["gamma"] is None
    assert m["test_acc"] == m["hard_test_acc"] > 0.8


def test_lr_schedules():
    total = 100
    cos = [lr_factor(s, total, 10, "cosine") for s in range(total)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(cos[9:])) and cos[-1] < 1e-3
    one = [lr_factor(s, total, 0, "onecycle") for s in range(total)]
    assert one[0] == pytest.approx(0.04) and max(one) == pytest.approx(1.0) and one[-1] < 0.02
    assert one.index(max(one)) == 30
    assert {lr_factor(s, total, 0, "constant") for s in range(total)} == {1.0}


# ------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kw,match", [
    (dict(model="no_such_model"), "unknown model 'no_such_model'"),
    (dict(model_kwargs={"activation": "nope"}), "unknown activation 'nope'"),
    (dict(model_kwargs={"depth": -1}), "depth must be >= 0"),
    (dict(model_kwargs={"num_classes": 3}), "come from the data"),
    (dict(data="/no/such/data.zip"), "neither a known dataset"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(lr=-1.0), "lr must be > 0"),
    (dict(optimizer="lion"), "optimizer must be one of"),
    (dict(schedule="step"), "schedule must be one of"),
    (dict(anneal_gamma=(1.0,)), "anneal_gamma must be a"),
    (dict(device="tpu"), "device must be"),
    (dict(momentum=1.0), "momentum must be < 1"),
])
def test_bad_config_is_one_clear_error(tmp_path, kw, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        _config(tmp_path, **kw)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown config field.*lrr"):
        TrainConfig.from_dict({"model": "test_mlp", "lrr": 0.1})


@pytest.mark.parametrize("argv,match", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "test_mlp", "--activation", "nope"], "unknown activation 'nope'"),
    (["--model", "test_mlp", "--depth", "-2"], "depth must be >= 0"),
    (["--model", "test_mlp", "--data", "/missing/dir"], "neither a known dataset"),
    (["--model", "test_mlp", "--config", "/missing.json"], "config file /missing.json not found"),
    (["--model", "test_mlp", "--model-arg", "bogus=1", "--epochs", "1"], "bogus"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, match):
    assert cli.main(["train", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("htaf train: error:") and match in err and "\n" not in err


def test_cli_train_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "base.json"
    cfg.write_text(json.dumps({"model": "test_mlp", "epochs": 5, "lr": 0.01}))
    argv = ["train", "--config", str(cfg), "--activation", "htaf_st", "--depth", "2",
            "--width", "32", "--model-arg", "norm=true", "--lr", "0.1", "--batch-size", "64",
            "--anneal-gamma", "none", "--out", str(tmp_path / "runs"), "--name", "cli",
            "--log", "plain", "--no-amp"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch 5/5" in out and "wrote" in out
    saved = json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())
    assert saved["lr"] == 0.1 and saved["epochs"] == 5 and saved["anneal_gamma"] is None
    assert saved["model_kwargs"] == {"activation": "htaf_st", "depth": 2, "width": 32, "norm": True}
    final = json.loads((tmp_path / "runs" / "cli" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["hard_test_acc"] > 0.9


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--data", "--activation", "--model-arg", "--resume", "--config",
                 "--amp", "--compile", "torchrun"):
        assert flag in out


@pytest.mark.slow
def test_compiled_run_matches_eager(tmp_path, digits):
    """torch.compile (inductor, CPU here) trains the same model: γ changes every epoch and hard
    mode flips at evaluation, so this also exercises the recompiles."""
    kw = {"epochs": 3, "out_dir": None}
    eager = train(_config(tmp_path, **kw), dataset=digits)
    compiled = train(_config(tmp_path, compile=True, **kw), dataset=digits)
    for key in ("train_loss", "test_acc", "hard_test_acc"):
        assert compiled.metrics[key] == pytest.approx(eager.metrics[key], abs=0.03), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_with_amp_channels_last_and_augment(tmp_path, digits):
    result = train(_config(tmp_path, device="cuda", amp=True, channels_last=True, augment=True,
                           epochs=3, out_dir=None), dataset=digits)
    assert next(result.model.parameters()).is_cuda
    assert result.metrics["hard_test_acc"] > 0.5


def test_auto_annealing_follows_the_evidence():
    """"auto": γ 1 → 30 for convolutional models (the CIFAR CNN probe), fixed γ for MLPs (digits)."""
    from htaf.models import create_model

    mlp = create_model("dhn_mlp", in_features=64, num_classes=10, depth=2, width=16)
    cnn = create_model("dhn_cnn", in_channels=1, image_size=8, num_classes=10, width_mult=1 / 16)
    assert resolve_anneal_gamma("auto", mlp) is None
    assert resolve_anneal_gamma("auto", cnn) == (1.0, 30.0)
    assert resolve_anneal_gamma((2.0, 5.0), mlp) == (2.0, 5.0)
    assert TrainConfig().anneal_gamma == "auto"
    assert TrainConfig.from_dict(TrainConfig().to_dict()).anneal_gamma == "auto"


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL an `htaf train` process mid-run, resume it, and compare with an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    args = ["--model", "dhn_mlp", "--depth", "3", "--width", "256", "--epochs", "10",
            "--optimizer", "adamw", "--lr", "0.003", "--out", str(tmp_path), "--log", "plain"]

    def htaf_train(*extra):
        return [sys.executable, "-m", "htaf", "train", *args, *extra]

    subprocess.run(htaf_train("--name", "full"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(htaf_train("--name", "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 2 <= done < 10
    subprocess.run(htaf_train("--name", "killed", "--resume"), env=env, check=True,
                   capture_output=True)

    def final(name):
        ckpt = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=False)
        return ckpt["model"], [json.loads(x) for x in (tmp_path / name / "metrics.jsonl")
                               .read_text().splitlines()]

    (w_full, h_full), (w_res, h_res) = final("full"), final("killed")
    assert _same_weights(w_full, w_res)
    assert _trajectory(h_full) == _trajectory(h_res)


def test_compile_limit_covers_every_annealed_epoch(digits, monkeypatch):
    """A compiled, annealed run recompiles every epoch (new γ; smooth and hard evaluation); the
    limit must cover the whole run, else Dynamo silently runs the later epochs eager."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from htaf import engine, metrics
    from htaf.nn import Anneal

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            monkeypatch.setattr(cfg, name, getattr(cfg, name))   # restored after the test
    torch._dynamo.reset()
    counters.clear()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), Heaviside(mode="smooth"),
                          nn.Linear(16, 10))
    anneal = Anneal(model, gamma=(1.0, 30.0))
    fast = torch.compile(model, backend="eager")
    x, y = digits.train_x[:8].float(), digits.train_y[:8]
    epochs = 3
    for epoch in range(epochs):
        anneal.set_progress(epoch / (epochs - 1))
        model.train()
        fast(x).sum().backward()
        metrics.evaluate(fast, [(x, y)])
        metrics.evaluate(fast, [(x, y)], mode="hard", dead_units=True)
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert graphs <= engine._GRAPHS_PER_EPOCH * epochs
    long_run = 200
    engine._configure_compile(long_run)
    assert cfg.recompile_limit >= engine._GRAPHS_PER_EPOCH * long_run


def test_cpu_run_never_touches_cuda_rng(tmp_path, digits, monkeypatch):
    """A CPU run on a GPU machine must not save (hence initialize) every GPU's RNG, and a resume
    must not set them: ``get_rng_state_all`` opens a CUDA context on each visible device."""
    def forbidden(*a, **k):
        raise AssertionError("CUDA RNG touched by a CPU run")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state_all", "set_rng_state_all", "get_rng_state", "set_rng_state"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    cfg = _config(tmp_path, device="cpu", epochs=2, stop_after=1, name="cpu-rng")
    train(cfg, dataset=digits)
    result = train(_config(tmp_path, device="cpu", epochs=2, name="cpu-rng", resume=True),
                   dataset=digits)
    assert len(result.history) == 2


def test_anneal_beta_from_zero_with_a_linear_schedule(tmp_path, digits):
    """htaf.nn.Anneal accepts β from 0 (a sigmoid) when the schedule is not geometric; the
    config must too, and still refuse it for the geometric one."""
    cfg = _config(tmp_path, anneal_gamma=None, anneal_beta=(0.0, 4.0), anneal_schedule="linear",
                  epochs=2, out_dir=None)
    result = train(cfg, dataset=digits)
    assert [r["beta"] for r in result.history] == [0.0, 4.0]
    with pytest.raises(ValueError, match="anneal_beta start must be > 0"):
        _config(tmp_path, anneal_beta=(0.0, 4.0), anneal_schedule="exp")


def test_nccl_process_group_is_bound_to_the_local_gpu(monkeypatch):
    """Without ``device_id`` NCCL's first barrier (before any collective) guesses the GPU from
    the global rank, which hangs or crosses GPUs when that is not the local rank."""
    from htaf import engine

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(engine.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(engine.dist, "init_process_group",
                        lambda backend, **kw: calls.update(backend=backend, **kw))
    assert engine._setup_distributed("auto") == (3, 4, 1, True)
    assert calls == {"set_device": 1, "backend": "nccl", "device_id": torch.device("cuda", 1)}


def test_dead_units_of_binary_layers_are_counted_in_hard_mode():
    """BinaryLinear/BinaryConv2d binarize their input with a plain sign in hard mode and under
    no_grad, bypassing their quantizer module: the metric saw no binary unit (None) for BNNs."""
    from htaf.nn.binary import BinaryConv2d, BinaryLinear

    torch.manual_seed(0)
    lin = nn.Sequential(BinaryLinear(8, 4, input_quantizer="htaf_st", weight_quantizer="ste"))
    x = torch.randn(32, 8)
    x[:, :3] = x[:, :3].abs() + 0.1                     # 3 of the 8 input units always +1
    batches = [(x, torch.randint(0, 4, (32,)))]
    assert evaluate(lin, batches, mode="hard", dead_units=True)["dead_units"] == 3 / 8
    assert binary_units(lin, batches) == {"0.input_quantizer[8]": (3, 8)}
    conv = nn.Sequential(BinaryConv2d(4, 2, 3, padding=1, input_quantizer="htaf_st"),
                         nn.Flatten(), nn.LazyLinear(3))
    xc = torch.randn(16, 4, 5, 5)
    xc[:, 1] = -xc[:, 1].abs() - 0.1                    # channel 1 always −1
    assert dead_unit_fraction(conv, [(xc, None)]) == 1 / 4


def test_checkpoints_with_every_gpus_rng_still_resume():
    """Checkpoints written before the fix hold a list of per-device CUDA states."""
    from htaf import engine

    g = torch.Generator().manual_seed(1)
    state = engine._rng_state(g, torch.device("cpu"))
    assert state["cuda"] is None
    g.manual_seed(2)
    engine._set_rng_state({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)]}, g,
                          torch.device("cpu"))
    assert torch.equal(g.get_state(), state["data"])


def test_resume_without_a_run_folder_is_an_error():
    with pytest.raises(ValueError, match="resume needs out_dir"):
        TrainConfig(out_dir=None, resume=True)


def test_anneal_flags_take_one_or_two_tokens():
    from htaf.cli import build_parser

    parser = build_parser()
    for cmd in ("train", "compare"):
        assert parser.parse_args([cmd, "--anneal-gamma", "1", "30"]).anneal_gamma == (1.0, 30.0)
        assert parser.parse_args([cmd, "--anneal-gamma", "1,30"]).anneal_gamma == (1.0, 30.0)
        assert parser.parse_args([cmd, "--anneal-gamma", "none"]).anneal_gamma is None
