"""Concept metrics on hand-built tensors; the HTML report and `htaf explain` on a trained run."""

import base64
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from htaf.cli import main
from htaf.explain.metrics import (
    ConceptOutputs,
    active_per_image,
    always_on,
    concept_metrics,
    flip_rate,
    match_concepts,
    never_on,
    saturation,
    seed_flip_rate,
)
from htaf.explain.report import explain_run, parse_flip
from icbm_helpers import trained_digits_run

SECTIONS = ("summary", "weights", "concepts", "images", "interventions")


# --- metrics ----------------------------------------------------------------------------------
def test_saturation_counts_activations_near_0_or_1():
    acts = torch.tensor([[0.0, 0.04, 0.05, 0.5], [0.951, 0.96, 1.0, 0.94]])
    assert saturation(acts) == pytest.approx(6 / 8)      # 0.05 and 0.95(1) are within tol
    assert saturation(acts, tol=0.01) == pytest.approx(2 / 8)


def test_usage_counts():
    codes = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 1, 1]])
    assert active_per_image(codes) == pytest.approx(6 / 3)
    assert never_on(codes) == 1 and always_on(codes) == 1
    assert active_per_image(codes.bool()) == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        never_on(torch.ones(3))


def test_flip_rate_between_epochs():
    a = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    b = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert flip_rate(a, b) == pytest.approx(2 / 8)
    assert flip_rate(a, a) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        flip_rate(a, b[:1])


def test_seed_matching_recovers_a_permutation():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(200, 12, generator=g) > 0.5
    perm = torch.randperm(12, generator=g)
    b = a[:, perm]                                       # seed B = seed A with concepts renamed
    for method in ("hungarian", "greedy"):
        rows, cols, agree = match_concepts(a, b, method=method)
        assert np.array_equal(perm[cols].numpy(), rows)  # b[:, cols[i]] is a[:, rows[i]]
        assert np.allclose(agree, 1.0)
        assert seed_flip_rate(a, b, method=method) == pytest.approx(0.0, abs=1e-7)
    b[:10, :] = ~b[:10, :]                               # 10 of 200 images disagree everywhere
    assert seed_flip_rate(a, b) == pytest.approx(10 / 200, abs=1e-6)
    assert flip_rate(a, b) > 0.3                         # unmatched, they look unrelated


def test_hungarian_beats_greedy_when_greedy_is_myopic():
    from htaf.explain.metrics import _greedy_assignment

    score = np.array([[0.9, 0.8], [0.8, 0.1]])        # greedy: 0.9 + 0.1; optimal: 0.8 + 0.8
    rows, cols = _greedy_assignment(score)
    assert score[rows, cols].sum() == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(64, 9, generator=g) > 0.5, torch.rand(64, 9, generator=g) > 0.5
    _, cols_h, hung = match_concepts(a, b)
    _, cols_g, greedy = match_concepts(a, b, method="greedy")
    assert sorted(cols_h) == sorted(cols_g) == list(range(9))          # both are permutations
    assert hung.sum() >= greedy.sum() - 1e-6


def test_concept_metrics_on_hand_built_outputs():
    out = ConceptOutputs(
        pre=torch.tensor([[2.0, -3.0], [-1.0, -2.0], [3.0, -1.0]]),
        smooth=torch.tensor([[0.99, 0.01], [0.3, 0.02], [0.97, 0.2]]),
        codes=torch.tensor([[True, False], [False, False], [True, False]]),
        logits_smooth=torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
        logits_hard=torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        labels=torch.tensor([0, 1, 1]))
    m = concept_metrics(out)
    assert m["acc_smooth"] == pytest.approx(1.0) and m["acc_hard"] == pytest.approx(2 / 3)
    assert m["gap"] == pytest.approx(1 / 3)
    assert m["saturation"] == pytest.approx(4 / 6)
    assert m["active_per_image"] == pytest.approx(2 / 3)
    assert (m["never_on"], m["always_on"]) == (1.0, 0.0)


# --- report -----------------------------------------------------------------------------------
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.classes, self.tags, self.text = set(), [], [], set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a["src"])
        if "class" in a:
            self.classes.append(a["class"])

    def handle_data(self, data):
        self.text.append(data)


def _check_images(page: _Page, folder: Path) -> None:
    assert page.images
    for src in page.images:
        if src.startswith("data:image/png;base64,"):
            assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
        else:
            path = folder / src
            assert not Path(src).is_absolute() and path.is_file(), src
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_every_section_and_image(tmp_path):
    run = trained_digits_run()
    report = explain_run(run.run_dir, out_dir=tmp_path, top=4, per_concept=6, images=[0, 5],
                         flips=[(0, [1, 2])])
    page = _Page()
    page.feed(report.path.read_text(encoding="utf-8"))
    assert set(SECTIONS) <= page.ids
    assert {f"concept-{k}" for k in report.concepts} <= page.ids and len(report.concepts) == 4
    assert {"image-0", "image-5"} <= page.ids
    _check_images(page, tmp_path)
    srcs = set(page.images)
    assert "weights.png" in srcs
    for k in report.concepts:
        assert {f"concept_{k:03d}_top.png", f"concept_{k:03d}_classes.png"} <= srcs
    assert {"image_00000_contrib.png", "image_00005_contrib.png", "flip_00000_1-2.png"} <= srcs
    assert report.metrics["acc_hard"] == pytest.approx(run.metrics["hard_test_acc"], abs=1e-6)

    # the intervention the report shows is exactly ±W[:, k] on the logits
    (r,) = report.interventions
    from htaf.engine import load_run
    from htaf.nn import using_mode

    model, data, _ = load_run(run.run_dir)
    x = next(iter(data.batches("test", 1, shuffle=False)))[0]
    with using_mode(model, "hard"), torch.no_grad():
        c = model.concepts(x)[0]
    w = model.head.weight.detach()
    expected = sum((1 - 2 * c[k]) * w[:, k] for k in r.concepts)
    torch.testing.assert_close(torch.tensor(r.after) - torch.tensor(r.before), expected,
                               rtol=0, atol=1e-5)


def test_report_escapes_class_names_and_title(tmp_path):
    """Class names and the title are text, whatever characters they hold: none becomes a tag, and
    each reads back exactly as given (the page is a Jinja2 template with autoescape on)."""
    import dataclasses

    from htaf.data import load_dataset
    from htaf.explain.report import build_report
    from htaf.models import create_model

    data = load_dataset("digits")
    data = dataclasses.replace(data, classes=[f"<i>{c}</i> & \"'{c}&amp;" for c in data.classes])
    torch.manual_seed(0)
    model = create_model("icbm_cnn", width=4, num_concepts=8)
    title = "<script>alert(1)</script> & <b>report</b>"
    report = build_report(model, data, tmp_path, top=2, per_concept=3, images=[0, 1],
                          flips=[(0, [1])], title=title)
    source = report.path.read_text(encoding="utf-8")
    assert "<script>" not in source and "<i>" not in source and "&amp;amp;" in source
    page = _Page()
    page.feed(source)
    assert not page.tags & {"script", "i"}
    assert set(SECTIONS) <= page.ids
    text = "".join(page.text)
    assert title in text
    for i in (0, 1):
        assert data.classes[int(data.test_y[i])] in text


def test_cli_explain_prints_intervention_and_writes_report(tmp_path, capsys):
    run = trained_digits_run()
    out = tmp_path / "rep"
    assert main(["explain", str(run.run_dir), "--out", str(out), "--top", "2",
                 "--per-concept", "4", "--images", "3", "--flip", "3:0,4"]) == 0
    text = capsys.readouterr().out
    assert "hard accuracy" in text and "flip concept(s) 0,4" in text
    assert "before:" in text and "after:" in text
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    _check_images(page, out)
    assert "flip_00003_0-4.png" in page.images

    assert main(["explain", str(run.run_dir), "--flip", "3"]) == 2
    assert main(["explain", str(run.run_dir), "--out", str(out), "--flip", "0:999"]) == 2
    assert main(["explain", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_parse_flip():
    assert parse_flip("17:3,5") == (17, [3, 5])
    for bad in ("17", "17:", "a:1", "1:x"):
        with pytest.raises(ValueError, match="IMAGE_INDEX:CONCEPT"):
            parse_flip(bad)


def test_explain_refuses_a_model_without_concepts(tmp_path, monkeypatch):
    import types

    import htaf.engine
    from htaf.models import create_model

    std = create_model("std_cnn", width=4)
    config = types.SimpleNamespace(model="std_cnn", data="digits")
    monkeypatch.setattr(htaf.engine, "load_run", lambda run_dir: (std, None, config))
    with pytest.raises(ValueError, match="needs an ICBM"):
        explain_run(tmp_path)
