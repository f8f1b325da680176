"""One small ICBM trained on digits with the engine, shared by test_icbm.py and test_explain.py
(trained once per test session, in a temporary folder)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import torch

from htaf.engine import RunResult, TrainConfig, train

EPOCHS = 10


@functools.cache
def trained_digits_run() -> RunResult:
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="htaf-icbm-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    config = TrainConfig(model="icbm_cnn", model_kwargs={"width": 16, "num_concepts": 32},
                         data="digits", epochs=EPOCHS, batch_size=64, optimizer="adamw", lr=0.01,
                         weight_decay=1e-4, schedule="onecycle", out_dir=root, name="icbm-digits",
                         log="none", device="cpu", seed=0, anneal_gamma=(1.0, 30.0))
    return train(config)
