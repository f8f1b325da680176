"""Packed-bit deployment: bit tricks, packed layers and models equal to the hard model bit for
bit, save/load, the `htaf export` command, ONNX export."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat

import pytest
import torch
from torch import nn

from bnn_digits import digits_split, trained_digits_mlp
from htaf import _native
from htaf.cli import main
from htaf.deploy import (
    PackedModel,
    hard_model,
    pack_bits,
    pack_model,
    packed_mismatches,
    popcount,
    state_nbytes,
    training_steps,
    unpack_bits,
)
from htaf.models import create_model
from htaf.nn import BinaryConv2d, BinaryLinear

BACKENDS = ["torch", "numpy"]


def _python_popcount(values, bits):
    return [bin(v & ((1 << bits) - 1)).count("1") for v in values]


@pytest.mark.parametrize("dtype,bits", [(torch.int64, 64), (torch.int32, 32)])
def test_popcount_matches_python(dtype, bits):
    g = torch.Generator().manual_seed(0)
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (500,), dtype=dtype, generator=g)
    x = torch.cat([x, torch.tensor([0, -1, 1, info.min, info.max], dtype=dtype)])
    assert popcount(x).tolist() == _python_popcount(x.tolist(), bits)
    with pytest.raises(TypeError):
        popcount(torch.zeros(2))


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 63, 64, 65, 130])
@pytest.mark.parametrize("word_bits", [32, 64])
def test_pack_unpack_roundtrip(n, word_bits):
    bits = torch.rand(3, 2, n, generator=torch.Generator().manual_seed(n)) > 0.5
    words = pack_bits(bits, word_bits)
    assert words.dtype == (torch.int64 if word_bits == 64 else torch.int32)
    assert words.shape == (3, 2, -(-n // word_bits))
    assert torch.equal(unpack_bits(words, n), bits)
    assert torch.equal(popcount(words).sum(-1), bits.sum(-1))  # zero fill adds no bits


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_mismatches_is_xnor_popcount_dot(backend):
    g = torch.Generator().manual_seed(0)
    n = 150
    a = torch.rand(37, n, generator=g) > 0.5
    w = torch.rand(11, n, generator=g) > 0.5
    mism = packed_mismatches(pack_bits(a), pack_bits(w), backend)
    sa, sw = a.float() * 2 - 1, w.float() * 2 - 1
    assert torch.equal((n - 2 * mism).float(), sa @ sw.T)


CONV_CASES = [
    dict(padding=1),
    dict(padding=1, pad_value=1),
    dict(padding=1, pad_value=-1),
    dict(padding=2, stride=2, dilation=2),
    dict(padding=(1, 0), stride=(1, 2), kernel_size=(3, 2)),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=1, groups=2),
    dict(padding=0, bias=False, scale=None),
    dict(padding=1, input_quantizer=None),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("word_bits", [32, 64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_conv_equals_hard_conv_bit_for_bit(case, word_bits, backend):
    torch.manual_seed(0)
    case = dict(case)
    k = case.pop("kernel_size", 3)
    model = nn.Sequential(BinaryConv2d(70, 10, k, **case), nn.BatchNorm2d(10))
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 70, 9, 11)
    x[0, :, 0, 0] = 0.0
    assert torch.equal(pack_model(model, word_bits=word_bits, backend=backend)(x),
                       hard_model(model)(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_linear_equals_hard_linear(backend):
    torch.manual_seed(0)
    for layer in (BinaryLinear(100, 7), BinaryLinear(64, 3, bias=False, scale=None),
                  BinaryLinear(20, 5, input_quantizer=None)):
        x = torch.randn(6, layer.in_features)
        assert torch.equal(pack_model(nn.Sequential(layer), backend=backend)(x), layer.eval()(x))


def _randomize_float_parts(model):
    """Give BN statistics and ReActNet's shifts non-trivial values (a fresh model has zeros)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    for name, p in model.named_parameters():
        if "shift" in name or name.endswith("threshold.bias"):
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("name,kw", [
    ("bnn_vgg_small", dict(in_channels=3, image_size=16, width_mult=0.25)),
    ("bnn_vgg_small", dict(in_channels=3, image_size=8, width_mult=1 / 16, binary_first=True,
                           binary_last=True, hidden=24)),
    ("bnn_resnet18", dict(in_channels=3, image_size=16, width_mult=1 / 16,
                          learnable_threshold=True, rprelu=True)),
    ("bnn_mlp", dict(in_channels=1, image_size=8, binary_first=True, binary_last=True)),
])
def test_packed_models_equal_hard_models(name, kw):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kw)
    with torch.no_grad():
        _randomize_float_parts(model)
    x = torch.randn(8, kw["in_channels"], kw["image_size"], kw["image_size"])
    packed = pack_model(model)
    expected = hard_model(model)(x)
    assert torch.equal(packed(x), expected)
    assert packed.nbytes() < state_nbytes(model)


def test_trained_mlp_packed_equals_hard_on_the_digits_test_set():
    model, _ = trained_digits_mlp()
    _, _, xte, yte = digits_split()
    packed = pack_model(model)
    expected = hard_model(model)(xte)
    got = packed(xte)
    assert torch.equal(got, expected)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert float((got.argmax(1) == yte).float().mean()) >= 0.9


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    kw = dict(in_channels=3, image_size=8, num_classes=4, width_mult=1 / 16)
    model = create_model("bnn_vgg_small", **kw)
    packed = pack_model(model, word_bits=32, arch={"model": "bnn_vgg_small", "model_kwargs": kw})
    path = packed.save(tmp_path / "m.htafbin")
    assert os.listdir(tmp_path) == ["m.htafbin"]  # atomic: no temp file left
    loaded = PackedModel.load(path)
    x = torch.randn(5, 3, 8, 8)
    assert loaded.word_bits == 32 and torch.equal(loaded(x), hard_model(model)(x))
    with pytest.raises(ValueError, match="architecture"):
        pack_model(model).save(tmp_path / "x.htafbin")
    torch.save({"format": "other"}, tmp_path / "bad.htafbin")
    with pytest.raises(ValueError, match="not an htaf packed model"):
        PackedModel.load(tmp_path / "bad.htafbin")


def test_load_puts_the_model_on_the_map_location_device(tmp_path):
    """Regression: ``PackedModel.load(path, map_location="cuda")`` loaded the tensors there but
    copied them into a model built on the CPU, so it stayed on the CPU (and failed on CUDA
    inputs). ``meta`` stands in for a GPU here."""
    kw = dict(in_channels=3, image_size=8, num_classes=4, width_mult=1 / 16)
    path = pack_model(create_model("bnn_vgg_small", **kw),
                      arch={"model": "bnn_vgg_small", "model_kwargs": kw}).save(tmp_path / "m.bin")
    loaded = PackedModel.load(path, map_location="meta")
    tensors = list(loaded.state_dict().values())
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert all(t.device.type == "cpu" for t in PackedModel.load(path).state_dict().values())


def test_full_precision_model_cannot_be_packed():
    with pytest.raises(ValueError, match="no binary layers"):
        pack_model(create_model("bnn_mlp", activation="relu"))
    with pytest.raises(ValueError, match="no binary layers"):
        pack_model(nn.Sequential(BinaryLinear(4, 4, weight_quantizer=None)))


def test_training_steps_definition():
    assert training_steps({"model": {}}) == 0
    assert training_steps({"step": 0, "epoch": 0}) == 0
    assert training_steps({"step": 12}) == 12 and training_steps({"epoch": 3}) == 3


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real `htaf.engine.train` run of bnn_mlp on digits (a few CPU seconds)."""
    from htaf.engine import TrainConfig, train

    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(model="bnn_mlp", model_kwargs={"activation": "htaf_st", "hidden": [128, 128]},
                      data="digits", epochs=3, optimizer="adamw", lr=1e-2, schedule="onecycle",
                      batch_size=64, weight_decay=0.0, device="cpu", out_dir=str(out),
                      name="bnn", log="none", anneal_gamma=None)
    return train(cfg).run_dir


def _rewrite_checkpoint(src, dst, **changes):
    shutil.copytree(src, dst)
    path = dst / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=False)
    ckpt.update(changes)
    torch.save(ckpt, path)


def test_cli_export_of_a_trained_run(trained_run, tmp_path, capsys):
    from htaf.engine import load_run

    out, onnx_path = tmp_path / "m.htafbin", tmp_path / "m.onnx"
    args = ["export", str(trained_run), "--out", str(out)]
    if importlib.util.find_spec("onnx"):
        args += ["--onnx", str(onnx_path)]
    old_umask = os.umask(0o022)
    try:
        assert main(args) == 0
    finally:
        os.umask(old_umask)
    printed = capsys.readouterr().out
    assert "argmax agree 360/360" in printed and "smaller" in printed
    assert "packed backend: " in printed
    accuracy = re.search(r"test accuracy: packed ([\d.]+)%, hard model ([\d.]+)%", printed)
    assert accuracy and accuracy[1] == accuracy[2] and float(accuracy[1]) > 50
    assert stat.S_IMODE(out.stat().st_mode) == 0o644    # like any file the user writes
    model, dataset, _ = load_run(trained_run)
    x = next(iter(dataset.batches("test", 1000, shuffle=False)))[0]
    assert torch.equal(PackedModel.load(out)(x), hard_model(model)(x))
    assert out.stat().st_size < state_nbytes(model)


def test_cli_export_refuses_untrained_missing_and_full_precision(trained_run, tmp_path, capsys):
    _rewrite_checkpoint(trained_run, tmp_path / "fresh", epoch=0, step=0)
    assert main(["export", str(tmp_path / "fresh"), "--out", str(tmp_path / "f.htafbin")]) == 2
    assert "untrained" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "f.htafbin")]) == 2
    assert "not a run folder" in capsys.readouterr().err

    relu = create_model("bnn_mlp", activation="relu", hidden=[128, 128])
    _rewrite_checkpoint(trained_run, tmp_path / "relu", model=relu.state_dict())
    cfg = json.loads((tmp_path / "relu" / "config.json").read_text())
    cfg["model_kwargs"]["activation"] = "relu"
    (tmp_path / "relu" / "config.json").write_text(json.dumps(cfg))
    assert main(["export", str(tmp_path / "relu"), "--out", str(tmp_path / "r.htafbin")]) == 2
    assert "no binary layers" in capsys.readouterr().err
    assert not (tmp_path / "f.htafbin").exists() and not (tmp_path / "r.htafbin").exists()


# -- ONNX: the exported hard model run by onnxruntime against PyTorch's hard model ----------------
ONNX_EXTRA = "install the onnx extra: pip install -e '.[onnx]'"


def _onnx_run(path, x, optimize: bool = True):
    ort = pytest.importorskip("onnxruntime", reason=f"onnxruntime is not installed ({ONNX_EXTRA})")
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


BNN_ONNX = {
    "bnn_mlp": ({"hidden": [64, 64]}, (1, 8, 8)),
    "bnn_vgg_small": ({"in_channels": 3, "image_size": 8, "num_classes": 4, "width_mult": 1 / 16},
                      (3, 8, 8)),
    "bnn_resnet18": ({"in_channels": 3, "image_size": 8, "num_classes": 4, "width_mult": 1 / 16},
                     (3, 8, 8)),
}


@pytest.mark.parametrize("name", list(BNN_ONNX))
def test_onnx_export_of_a_bnn_matches_the_hard_model(name, tmp_path):
    """Exported with a batch of 3, run by onnxruntime on a batch of 9 (the batch axis is dynamic):
    logits within 1e-4 of hard_model's, the same argmax, and export_onnx's own check agrees."""
    onnx = pytest.importorskip("onnx", reason=f"onnx is not installed ({ONNX_EXTRA})")
    pytest.importorskip("onnxruntime", reason=f"onnxruntime is not installed ({ONNX_EXTRA})")
    from htaf.deploy import export_onnx

    kw, shape = BNN_ONNX[name]
    torch.manual_seed(0)
    model = create_model(name, **kw)
    with torch.no_grad():
        _randomize_float_parts(model)
    info = export_onnx(model, tmp_path / "m.onnx", torch.randn(3, *shape))
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    assert info["onnxruntime"] and info["argmax_equal"] and info["max_abs_diff"] < 1e-4

    x = torch.randn(9, *shape)
    expected = hard_model(model)(x)
    got = _onnx_run(tmp_path / "m.onnx", x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_onnx_graph_keeps_exact_sign_ties(tmp_path):
    """A fresh BNN (BN mean 0, var 1) puts exact zeros into sign(): the exported graph still gives
    sign(0) = +1, as PyTorch does, when onnxruntime runs it as written."""
    pytest.importorskip("onnx", reason=f"onnx is not installed ({ONNX_EXTRA})")
    from htaf.deploy import export_onnx

    kw, shape = BNN_ONNX["bnn_vgg_small"]
    torch.manual_seed(0)
    model = create_model("bnn_vgg_small", **kw)
    x = torch.randn(9, *shape)
    export_onnx(model, tmp_path / "m.onnx", x, check=False)
    expected = hard_model(model)(x)
    got = _onnx_run(tmp_path / "m.onnx", x, optimize=False)
    assert float((got - expected).abs().max()) < 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_onnx_export_check_with_exact_sign_ties(tmp_path):
    """A fresh BNN feeds exact zeros into sign; onnxruntime's graph optimizations fold the weight
    scale into the Conv and round those sums to ±1e-8, so export_onnx checks with them off."""
    pytest.importorskip("onnx", reason=f"onnx is not installed ({ONNX_EXTRA})")
    pytest.importorskip("onnxruntime", reason=f"onnxruntime is not installed ({ONNX_EXTRA})")
    from htaf.deploy import export_onnx

    kw, shape = BNN_ONNX["bnn_vgg_small"]
    torch.manual_seed(0)
    model = create_model("bnn_vgg_small", **kw)
    info = export_onnx(model, tmp_path / "m.onnx", torch.randn(9, *shape))
    assert info["argmax_equal"] and info["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("name, kw, shape", [
    ("dhn_mlp", {"in_features": 64, "depth": 3, "width": 32}, (64,)),
    ("dhn_cnn", {"in_channels": 1, "image_size": 8, "depth": 2, "width_mult": 1 / 16}, (1, 8, 8)),
    ("icbm_cnn", {"num_concepts": 16, "width": 8}, (1, 8, 8)),
])
def test_onnx_export_of_dhn_and_icbm_in_hard_mode(name, kw, shape, tmp_path):
    pytest.importorskip("onnx", reason=f"onnx is not installed ({ONNX_EXTRA})")
    from htaf.deploy import export_onnx

    torch.manual_seed(0)
    model = create_model(name, **kw)
    with torch.no_grad():
        _randomize_float_parts(model)
    export_onnx(model, tmp_path / "m.onnx", torch.randn(3, *shape), check=False)
    x = torch.randn(9, *shape)
    expected = hard_model(model)(x)
    got = _onnx_run(tmp_path / "m.onnx", x)
    assert float((got - expected).abs().max()) < 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


# -- the C backend (compiled on first use; skipped where no C compiler works) --------------------
_WORDS = {32: torch.int32, 64: torch.int64}
needs_c = pytest.mark.skipif(not _native.available(), reason="no working C compiler")


@needs_c
@pytest.mark.parametrize("word_bits", [32, 64])
def test_c_mismatches_equal_numpy_and_torch_on_odd_shapes(word_bits):
    """Sizes not divisible by the kernel's 4-output block, nor by the NumPy path's row chunk."""
    g = torch.Generator().manual_seed(1)
    for m, o, n in [(1, 1, 1), (37, 11, 150), (5, 7, 64), (1000, 130, 700)]:
        a = pack_bits(torch.rand(m, n, generator=g) > 0.5, word_bits)
        w = pack_bits(torch.rand(o, n, generator=g) > 0.5, word_bits)
        got = packed_mismatches(a, w, "c")
        assert got.dtype == torch.int32 and got.shape == (m, o)
        assert torch.equal(got, packed_mismatches(a, w, "numpy"))
        assert torch.equal(got, packed_mismatches(a, w, "torch"))
    dt = _WORDS[word_bits]
    empty = packed_mismatches(torch.zeros(0, 3, dtype=dt), torch.ones(4, 3, dtype=dt), "c")
    assert empty.shape == (0, 4)


@needs_c
def test_c_mismatches_of_extreme_words():
    """All-ones/all-zeros and sign-bit words (int64 min/max) count every bit."""
    words = torch.tensor([[0, -1, -(2**63), 2**63 - 1]], dtype=torch.int64)
    got = packed_mismatches(words, torch.zeros(1, 4, dtype=torch.int64), "c")
    assert got.item() == 0 + 64 + 1 + 63


@needs_c
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_packed_conv_c_backend_equals_hard_conv(case):
    torch.manual_seed(0)
    case = dict(case)
    k = case.pop("kernel_size", 3)
    model = nn.Sequential(BinaryConv2d(70, 10, k, **case), nn.BatchNorm2d(10))
    model[1].running_mean.normal_()
    x = torch.randn(3, 70, 9, 11)
    assert torch.equal(pack_model(model, backend="c")(x), hard_model(model)(x))


def test_auto_backend_falls_back_when_no_compiler(monkeypatch):
    from htaf import deploy

    monkeypatch.setattr(_native, "available", lambda: False)
    assert deploy._resolve_backend("auto", torch.device("cpu")) == "numpy"
    assert deploy._resolve_backend("auto", torch.device("meta")) == "torch"
    with pytest.raises(ValueError, match="backend"):
        deploy._resolve_backend("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="runs on the CPU"):
        deploy._resolve_backend("numpy", torch.device("meta"))


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_mismatch_counts_past_uint16_do_not_wrap(backend):
    """The NumPy path sums per-word counts in uint16 only while they cannot reach 2^16."""
    if backend == "c" and not _native.available():
        pytest.skip("no working C compiler")
    n = 1024 * 64 + 5
    a = pack_bits(torch.ones(2, n, dtype=torch.bool))
    w = pack_bits(torch.zeros(3, n, dtype=torch.bool))
    assert torch.equal(packed_mismatches(a, w, backend), torch.full((2, 3), n, dtype=torch.int32))


@needs_c
def test_c_backend_float64_input_takes_the_general_path_exactly():
    """The fused NCHW kernel writes float32 only; other dtypes use the int32 path, still exact."""
    torch.manual_seed(0)
    model = nn.Sequential(BinaryConv2d(9, 6, 3, padding=1), nn.BatchNorm2d(6)).double()
    x = torch.randn(2, 9, 5, 7, dtype=torch.float64)
    assert torch.equal(pack_model(model, backend="c")(x), hard_model(model)(x))


def _fake_run(trained_run, dst, model_name, model_kwargs):
    """A copy of ``trained_run`` holding a fresh ``model_name`` (for the export command's
    messages; the weights are untrained but the checkpoint records training steps)."""
    from htaf.data import load_dataset

    kwargs = {**load_dataset("digits").model_kwargs(), **model_kwargs}
    model = create_model(model_name, **kwargs)
    _rewrite_checkpoint(trained_run, dst, model=model.state_dict())
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model"], cfg["model_kwargs"] = model_name, model_kwargs
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_cli_export_of_a_dhn_says_why_it_cannot_be_packed(trained_run, tmp_path, capsys):
    run = _fake_run(trained_run, tmp_path / "dhn", "dhn_mlp", {"depth": 2, "width": 16})
    assert main(["export", str(run), "--out", str(tmp_path / "d.htafbin")]) == 2
    err = capsys.readouterr().err
    assert "binary (0/1 or ±1) activations but real-valued weights" in err and "--onnx" in err
    assert not (tmp_path / "d.htafbin").exists()


def test_cli_exports_any_model_to_onnx(trained_run, tmp_path, capsys):
    """ONNX works for models without binary weights too: a DHN (Heaviside steps) and an ICBM
    (binary concepts, annealed γ in a buffer), checked against ONNX Runtime."""
    pytest.importorskip("onnx")
    for name, kw in (("dhn_mlp", {"depth": 2, "width": 16}),
                     ("icbm_cnn", {"num_concepts": 8, "width": 4})):
        run = _fake_run(trained_run, tmp_path / name, name, kw)
        path = tmp_path / f"{name}.onnx"
        assert main(["export", str(run), "--onnx", str(path)]) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        assert path.exists() and "onnx.checker ok" in printed
        if importlib.util.find_spec("onnxruntime"):
            assert "argmax equal True" in printed
