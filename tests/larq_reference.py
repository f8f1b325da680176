"""Larq's own quantizers evaluated on given inputs: the reference side of tests/test_peers.py.

    python larq_reference.py IN.npz OUT.npz CASES_JSON

IN holds ``x`` and an upstream gradient ``w`` (float64). CASES_JSON is a list of
``{"key": ..., "fn": ..., "kwargs": {...}}`` naming a function of ``larq.quantizers`` (``ste_sign``,
``approx_sign``, ``swish_sign``, ``ste_heaviside``) and its keyword arguments. OUT gets, per case,
``KEY.y`` (the forward value) and ``KEY.grad`` (d sum(w·y) / dx, Larq's custom gradient).

Run in a process of its own: Larq 0.14 needs Keras 2 (``tf-keras`` with ``TF_USE_LEGACY_KERAS=1``
set before TensorFlow is imported), and TensorFlow stays out of the pytest worker that runs torch.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def main(argv: list[str]) -> int:
    in_path, out_path, cases = argv[0], argv[1], json.loads(argv[2])
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import larq
    import tensorflow as tf

    data = np.load(in_path)
    x = tf.constant(data["x"], dtype=tf.float64)
    w = tf.constant(data["w"], dtype=tf.float64)
    out = {}
    for case in cases:
        fn = getattr(larq.quantizers, case["fn"])
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x, **case["kwargs"])
            loss = tf.reduce_sum(w * y)
        out[case["key"] + ".y"] = y.numpy()
        out[case["key"] + ".grad"] = tape.gradient(loss, x).numpy()
    np.savez(out_path, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
