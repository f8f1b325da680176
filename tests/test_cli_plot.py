import pytest

from htaf.cli import main
from htaf.plotting import gradient_mass_table


def test_gradient_mass_table_values():
    rows = {r["surrogate"]: r for r in gradient_mass_table()}
    assert rows["htaf"]["mass_|x|<0.5"] == pytest.approx(0.7815, abs=5e-5)
    assert rows["htaf"]["d(0)"] == pytest.approx(1.125)
    assert rows["htaf"]["d(10)"] == pytest.approx(6.168968e-05, rel=1e-6)
    assert rows["sigmoid"]["mass_|x|<0.5"] == pytest.approx(0.7616, abs=5e-5)
    # honest tails: the polynomial ones are heavier than HTAF far out
    assert rows["atan"]["d(10)"] > rows["htaf"]["d(10)"]
    assert rows["htaf"]["d(10)"] > rows["sigmoid"]["d(10)"]


def test_htaf_plot_writes_png_and_table(tmp_path, capsys):
    assert main(["plot", "--out", str(tmp_path), "--surrogates", "htaf", "sigmoid", "atan"]) == 0
    out = capsys.readouterr().out
    assert "| htaf |" in out and "0.7815" in out
    png = tmp_path / "surrogates.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "| sigmoid |" in (tmp_path / "gradient_mass.md").read_text()


def test_htaf_plot_bad_surrogate_is_one_line_error(tmp_path, capsys):
    assert main(["plot", "--out", str(tmp_path), "--surrogates", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown surrogate 'nope'" in err


def test_plot_surrogates_keeps_the_callers_matplotlib_backend(tmp_path):
    """A library call must not switch a notebook's backend (it used matplotlib.use("Agg"))."""
    import matplotlib

    from htaf.plotting import plot_surrogates

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        (path,) = plot_surrogates(tmp_path, ["htaf", "atan"])
        assert matplotlib.get_backend() == "svg"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


def test_output_path_that_is_a_file_is_one_line_error(tmp_path, capsys):
    """Any OSError on an output path (exists as a file, no permission) is a one-line error."""
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["plot", "--out", str(taken), "--surrogates", "htaf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "htaf plot: error:" in err and str(taken) in err


def test_the_legend_covers_no_curve():
    """The legend sits beside the panels (inside the derivative panel it hid swish_sign)."""
    from htaf.plotting import surrogates_figure

    fig = surrogates_figure()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert "swish_sign" in [t.get_text() for t in legend.get_texts()]
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    assert box.x1 <= fig.bbox.x1 + 1                      # and inside the image

