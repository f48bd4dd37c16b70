"""The experiment report's PNG figures: written when the exporter works; without kaleido's browser the report
and a warning name the figures left out and the cause; any other failure is raised, not swallowed."""

from __future__ import annotations

import pytest

from clipmem.scoring.experiment_report import FigureExportWarning, exporter_missing, run_row, write_report
from tests.prerequisites import skip_or_fail

NO_CHROME = "\n\nKaleido requires Google Chrome to be installed.\n\nEither download and install Chrome ...\n"


def _rows() -> list[dict]:
    """A baseline and a 2-captions setting, two seeds each: the captions grid only."""
    rows = []
    for seed in (0, 1):
        for captions, raw in ((1, 0.30), (2, 0.20)):
            experiment = {"experiment": "e", "seed": seed, "captions_per_image": captions, "text_noise": 0.0,
                          "removal_method": None, "removal_count": 0}
            rows.append(run_row(experiment, raw + 0.01 * seed, 0.5, {"f": {"i2t_r1": 0.4}, "g": {"i2t_r1": 0.3}}))
    return rows


def test_without_a_browser_the_report_and_a_warning_name_the_figure_and_the_cause(tmp_path, monkeypatch):
    def no_chrome(self, *args, **kwargs):
        raise RuntimeError(NO_CHROME)

    monkeypatch.setattr("plotly.graph_objects.Figure.write_image", no_chrome)
    with pytest.warns(FigureExportWarning) as caught:
        text = write_report(_rows(), tmp_path, "t").read_text()
    message = str(caught[0].message)
    assert "PNG figures were not written for captions" in message
    assert "RuntimeError: Kaleido requires Google Chrome to be installed." in message
    assert message in text and "PNG figure not written: RuntimeError: Kaleido requires Google Chrome" in text
    assert (tmp_path / "captions.html").is_file() and not (tmp_path / "captions.png").exists()


def test_any_other_figure_failure_is_raised(tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise ValueError("Invalid property specified for object of type plotly.graph_objs.Layout")

    monkeypatch.setattr("plotly.graph_objects.Figure.write_image", broken)
    with pytest.raises(ValueError, match="Invalid property"):
        write_report(_rows(), tmp_path, "t")


def test_exporter_missing_recognises_only_the_exporter_failures():
    from choreographer.errors import BrowserFailedError

    assert exporter_missing(RuntimeError(NO_CHROME)) == "RuntimeError: Kaleido requires Google Chrome to be installed."
    assert exporter_missing(BrowserFailedError("Chromium did not start")) == \
        "BrowserFailedError: Chromium did not start"
    assert exporter_missing(RuntimeError("something else")) is None
    assert exporter_missing(OSError("disk full")) is None


def test_png_figures_are_written(tmp_path):
    """With Chromium the PNG is there; without it this skips locally and fails under CI."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = write_report(_rows(), tmp_path, "t").read_text()
    missing = [str(w.message) for w in caught if issubclass(w.category, FigureExportWarning)]
    if missing:
        skip_or_fail(f"figure export does not work here: {missing[0]}")
    png = (tmp_path / "captions.png").read_bytes()
    assert png.startswith(b"\x89PNG") and "![captions](captions.png)" in text
