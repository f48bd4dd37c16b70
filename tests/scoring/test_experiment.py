"""`clipmem experiment`: grids of runs sharing one split, resumable, with a report."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pandas as pd
import pytest
from typer.testing import CliRunner

from run_fixtures import TINY_SIZES, tiny_run_config
from clipmem.cli import app
from clipmem.scoring.cli import read_id_list
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.experiment import (Setting, grid_settings, open_experiment, parse_removal_counts, report_rows,
                                        resolve_removal_counts, run_experiment)
from clipmem.scoring.experiment_report import (TITLE_CHARACTERS, common_pair_means, figures, panel_title, run_row,
                                               summarize, write_report)
from tests.prerequisites import skip_or_fail

runner = CliRunner()


def test_default_grid_has_each_setting_once():
    settings = grid_settings(["captions", "text-noise", "removal"], removal_counts=(50, 150))
    # baseline + captions 2, 3, 4, 5 + the published σ 0.01..0.3 + 3 methods x 2 counts
    assert len(settings) == 1 + 4 + 7 + 6
    assert sorted(s.captions_per_image for s in settings) == [1] * 14 + [2, 3, 4, 5]
    assert sorted(s.text_noise for s in settings if s.text_noise) == [0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert len({s.slug for s in settings}) == len(settings)
    with pytest.raises(ClipmemError, match="unknown grid"):
        grid_settings(["captions", "dropout"])


def test_the_removal_grid_can_run_only_some_of_its_methods(tmp_path):
    settings = grid_settings(["removal"], removal_counts=(6, 24), removal_methods=["top-clipmem"])
    assert settings == [Setting(), Setting(removal_method="top-clipmem", removal_count=6),
                        Setting(removal_method="top-clipmem", removal_count=24)]
    assert len(grid_settings(["removal"], removal_counts=(6, 24))) == 1 + 3 * 2  # all three by default
    for methods, message in ((["top-clipmem", "largest"], "unknown removal method largest"), ([], "(none given)")):
        with pytest.raises(ClipmemError, match=message):
            grid_settings(["removal"], removal_counts=(6,), removal_methods=methods)
    with pytest.raises(ClipmemError, match="unknown removal method larges"):  # not silently ignored elsewhere
        grid_settings(["captions"], removal_methods=["larges"])
    result = runner.invoke(app, ["experiment", "--out", str(tmp_path / "x"), "--grids", "removal",
                                 "--removal-methods", "random,clipscore"])
    assert result.exit_code == 2 and "unknown removal method clipscore" in result.output
    assert not (tmp_path / "x").exists()  # refused before anything is written


def row(seed, captions=1, noise=0.0, method=None, count=0, raw=0.1, probe=0.5):
    experiment = {"experiment": "e", "seed": seed, "captions_per_image": captions, "text_noise": noise,
                  "removal_method": method, "removal_count": count}
    return run_row(experiment, raw, raw * 2, {"f": {"probe_shape": probe, "i2t_r1": 0.2},
                                              "g": {"probe_shape": probe + 0.1, "i2t_r1": 0.4}})


def test_summary_averages_over_seeds_and_puts_the_baseline_in_every_grid():
    rows = [row(0, raw=0.10), row(1, raw=0.20), row(0, captions=5, raw=0.05), row(1, captions=5, raw=0.07),
            row(0, noise=0.15, raw=0.3), row(0, method="random", count=50, probe=0.7)]
    assert rows[0]["probe_shape"] == pytest.approx(0.55)  # mean of f and g
    summary = summarize(rows)
    base = summary[(summary.grid == "captions") & (summary.value == 1) & (summary.metric == "mean_clipmem_raw")]
    assert base["mean"].item() == pytest.approx(0.15) and base["std"].item() == pytest.approx(math.sqrt(0.005))
    assert base["n"].item() == 2
    assert set(summary.grid) == {"captions", "text-noise", "removal"}
    removal = summary[(summary.grid == "removal") & (summary.metric == "probe_shape")]
    # N = 0 (the baseline) starts the curve of every method
    assert set(removal[removal.value == 0].method) == {"top-clipmem", "lowest-similarity", "random"}
    assert removal[(removal.method == "random") & (removal.value == 50)]["mean"].item() == pytest.approx(0.75)
    figs = figures(summary)
    assert set(figs) == {"captions", "text-noise", "removal"}
    assert any(trace.error_y.array is not None for trace in figs["captions"].data)


def test_removal_runs_are_compared_on_the_pairs_every_run_of_their_seed_scores():
    """A constructed grid: the baseline scores a, b, c, d; top-CLIPMem removal of 1 drops d (its top pair), random
    removal of 1 drops a. Pairs scored in every run: b and c, so each run's common mean is over b and c alone,
    while the plain mean of the top-CLIPMem run falls only because d is gone."""
    runs = {
        "base": (row(0, raw=0.25), {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}),
        "top": (row(0, method="top-clipmem", count=1), {"a": 0.1, "b": 0.1, "c": 0.3}),
        "random": (row(0, method="random", count=1), {"b": 0.5, "c": 0.5, "d": 0.2}),
        "captions": (row(0, captions=5), {"a": 9.0}),  # not a point of the removal grid: left alone
        "base-s1": (row(1), {"a": 0.7}),  # seed 1 has no removal run to compare with
    }
    rows, scores = [], {}
    for name, (r, values) in runs.items():
        r["run"] = name
        rows.append(r)
        scores[name] = pd.DataFrame({"sample_id": list(values), "clipmem_raw": list(values.values())})
    common_pair_means(rows, scores)
    by_run = {r["run"]: r for r in rows}
    assert by_run["base"]["mean_clipmem_raw_common"] == pytest.approx(0.25)  # (0.2 + 0.3) / 2
    assert by_run["top"]["mean_clipmem_raw_common"] == pytest.approx(0.2)
    assert by_run["random"]["mean_clipmem_raw_common"] == pytest.approx(0.5)
    assert all(by_run[n]["common_pairs"] == 2 for n in ("base", "top", "random"))
    assert "mean_clipmem_raw_common" not in by_run["captions"] and "mean_clipmem_raw_common" not in by_run["base-s1"]
    summary = summarize(rows)
    common = summary[summary.metric == "mean_clipmem_raw_common"]
    assert set(common.grid) == {"removal"}  # the baseline's common mean belongs to the removal grid only
    assert common[(common.method == "top-clipmem") & (common.value == 1)]["mean"].item() == pytest.approx(0.2)
    figs = figures(summary)
    removal_panels = [a.text for a in figs["removal"].layout.annotations]
    # long titles are broken into lines that fit their panel instead of running into the next panel's title
    assert removal_panels[0] == "mean raw CLIPMem, pairs scored in every<br>run"
    assert "mean raw CLIPMem" in [a.text for a in figs["captions"].layout.annotations]


def test_panel_titles_are_broken_into_lines_that_fit_their_panel():
    label = "mean raw CLIPMem, pairs scored in every run"  # 43 characters
    assert panel_title(label, 1) == label
    assert panel_title(label, 3) == "mean raw CLIPMem, pairs scored in every<br>run"
    five = panel_title(label, 5).split("<br>")
    assert five == ["mean raw CLIPMem, pairs", "scored in every run"]
    assert all(len(line) <= TITLE_CHARACTERS[4] for line in panel_title(label, 4).split("<br>"))


def test_the_removal_panel_of_mean_clipmem_is_left_out_without_the_common_pairs():
    summary = summarize([row(0, raw=0.3), row(0, method="top-clipmem", count=5, raw=0.1)])
    panels = [a.text.replace("<br>", " ") for a in figures(summary)["removal"].layout.annotations]
    assert "mean raw CLIPMem" not in panels and "linear probe: shape" in panels


def test_removal_counts_are_counts_or_percentages_of_the_scored_pairs():
    default = parse_removal_counts("1%,2%,4%,8%,16%,32%,64%")
    # the published N = 50 ... 3200 of 5,000, on the built-in set's 600 scored pairs
    assert resolve_removal_counts(default, 5000) == [50, 100, 200, 400, 800, 1600, 3200]
    assert resolve_removal_counts(default, 600) == [6, 12, 24, 48, 96, 192, 384]
    assert resolve_removal_counts(parse_removal_counts("150, 50,1%"), 100) == [1, 50, 150]
    for bad, message in (("0", "'0'.*>= 1"), ("120%", "'120%'"), ("ten", "'ten'"), (",", "name no count")):
        with pytest.raises(ClipmemError, match=message):
            parse_removal_counts(bad)


def test_percentage_removal_counts_resolve_against_the_planned_split(tmp_path, tiny_data):
    base = tiny_run_config(tiny_data, epochs=1)
    exp = open_experiment(tmp_path / "e", "e", ["removal"], [0], parse_removal_counts("1%,50%,64%"), base)
    # the tiny split scores 120 + 120 pairs: 2.4 -> 2, 120, 153.6 -> 154
    assert exp.removal_counts == [2, 120, 154]
    assert json.loads((exp.path / "experiment.json").read_text())["removal_counts"] == [2, 120, 154]
    assert {s.removal_count for s in exp.settings()} == {0, 2, 120, 154}


def test_images_captions_grid_is_one_or_five_renderings_by_one_or_five_captions():
    settings = grid_settings(["images-captions"])
    assert {(s.renderings, s.captions_per_image) for s in settings} == {(1, 1), (5, 1), (1, 5), (5, 5)}
    assert sorted(s.slug for s in settings) == ["c1-n0", "c1-n0-r5", "c5-n0", "c5-n0-r5"]
    # 1 rendering x 5 captions is the captions grid's 5-caption run: trained once
    both = grid_settings(["captions", "images-captions"])
    assert len(both) == 1 + 4 + 2


def test_images_captions_report_says_which_axis_lowers_clipmem_more_with_t_intervals():
    """Per seed, 1 x 1 -> 5 renderings x 1 caption changes raw CLIPMem by -0.01, and 1 x 1 -> 1 x 5 captions by
    -0.03, -0.04, -0.03: renderings minus captions is 0.02, 0.03, 0.02, mean 0.02333, standard error 0.00333,
    t(0.975, 2) = 4.3027, so the 95% interval is [0.0090, 0.0377]: more captions lower it more."""
    from clipmem.scoring.experiment_report import axis_comparison

    def run(seed, renderings, captions, raw):
        r = row(seed, captions=captions, raw=raw)
        r["renderings"] = renderings
        return r

    base = (0.10, 0.12, 0.11)
    rows = [run(s, 1, 1, base[s]) for s in range(3)]
    rows += [run(s, 5, 1, base[s] - 0.01) for s in range(3)]
    rows += [run(s, 1, 5, base[s] - d) for s, d in enumerate((0.03, 0.04, 0.03))]
    rows += [run(s, 5, 5, base[s] - 0.05) for s in range(3)]
    line = axis_comparison(rows)
    assert "renderings minus captions +0.0233 [+0.0090, +0.0377]" in line
    assert "5 renderings × 1 caption -0.0100 [-0.0100, -0.0100]" in line and "more captions lower it more" in line
    summary = summarize(rows)
    grid = summary[(summary.grid == "images-captions") & (summary.metric == "mean_clipmem_raw")]
    assert set(zip(grid.method, grid.value)) == {("1 rendering", 1), ("1 rendering", 5), ("5 renderings", 1),
                                                 ("5 renderings", 5)}
    assert grid[(grid.method == "5 renderings") & (grid.value == 5)]["mean"].item() == pytest.approx(0.06)
    # runs with renderings are points of no other grid; the captions grid keeps its two 1-rendering runs
    captions = summary[(summary.grid == "captions") & (summary.metric == "mean_clipmem_raw")]
    assert sorted(captions.value) == [1, 5] and set(captions.n) == {3}
    assert "images-captions" in figures(summary)
    # equal changes on both axes: not distinguishable
    same = [r if r["renderings"] == 1 or r["captions_per_image"] == 5 else {**r, "mean_clipmem_raw": r[
        "mean_clipmem_raw"] - 0.02} for r in rows]
    assert "not distinguishable" in axis_comparison(same)


def test_images_captions_grid_needs_a_run_with_renderings():
    # the captions grid's 1 and 5 captions are that grid's points alone until a run has renderings
    assert set(summarize([row(0), row(0, captions=5)]).grid) == {"captions"}


def test_a_grid_holding_only_the_baseline_is_left_out():
    summary = summarize([row(0), row(0, captions=2)])
    assert set(summary.grid) == {"captions"}


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory, tiny_data):
    """The removal grid on the tiny data, trained and scored: 1 seed, 1 epoch, N = 5 removed by each method (4 runs;
    the other grids' knobs reach their runs' configs in test_every_setting_is_planned_with_its_knobs)."""
    out = tmp_path_factory.mktemp("exp") / "e"
    base = tiny_run_config(tiny_data, epochs=1)
    base.score = replace(base.score, towers=False, layers=False, views=2)
    exp = open_experiment(out, "tiny-exp", ["removal"], [0], [5], base)
    finished = []
    runs = run_experiment(exp, jobs=2, on_finished=lambda run, name: finished.append(name))
    return exp, runs, finished


def test_experiment_runs_every_setting_on_one_split(experiment_dir):
    exp, runs, finished = experiment_dir
    assert len(runs) == 1 + 3 and len(set(finished)) == 4
    assert all(name.startswith("tiny-exp.") for name in finished)
    splits = {(run.path / "split.json").read_text() for run in runs}
    assert len(splits) == 1
    for run in runs:
        params = json.loads(run.experiment.read_text())
        cfg = run.load_config()
        assert cfg.train.captions_per_image == params["captions_per_image"]
        assert cfg.train.init_seed == params["seed"] == 0


def test_every_setting_is_planned_with_its_knobs(tmp_path, tiny_data):
    """Each run of the captions and text-noise grids gets the experiment's split and its setting's knobs and seed
    (planned only: the trained removal grid above runs the same path)."""
    from clipmem.scoring.experiment import plan_run, prepare_base

    exp = open_experiment(tmp_path / "e", "plan", ["captions", "text-noise"], [1], [5], tiny_run_config(tiny_data))
    prepare_base(exp)
    for setting in (Setting(captions_per_image=5), Setting(text_noise=0.15), Setting()):
        run = plan_run(exp, setting, 1)
        train = run.load_config().train
        assert (train.captions_per_image, train.text_noise, train.init_seed, train.data_seed) == \
            (setting.captions_per_image, setting.text_noise, 1, 1)
        assert run.split.read_text() == exp.base_run.split.read_text()
        assert json.loads(run.experiment.read_text())["captions_per_image"] == setting.captions_per_image


def test_removal_runs_drop_the_chosen_pairs_of_the_baseline(experiment_dir):
    exp, runs, _ = experiment_dir
    baseline = pd.read_parquet(exp.run_dir(Setting(), 0).scores)
    top = set(baseline.nlargest(5, "clipmem_raw")["sample_id"])
    lowest = set(baseline.nlargest(5, "clipscore_g")["sample_id"])
    for method, expected in (("top-clipmem", top), ("lowest-similarity", lowest)):
        run = exp.run_dir(Setting(removal_method=method, removal_count=5), 0)
        assert set(run.load_config().train.remove_ids) == expected
        assert not set(pd.read_parquet(run.scores)["sample_id"]) & expected
    random_run = exp.run_dir(Setting(removal_method="random", removal_count=5), 0)
    assert len(random_run.load_config().train.remove_ids) == 5


def test_rerunning_an_experiment_trains_nothing(experiment_dir):
    exp, runs, _ = experiment_dir
    stamps = {run.path: run.model_checkpoint("f").stat().st_mtime_ns for run in runs}
    messages = []
    again = run_experiment(exp, jobs=1, progress=lambda message, done, total: messages.append((message, done)))
    assert len(again) == len(runs)
    assert messages == [("4 of 4 runs already finished", 4)]
    assert all(run.model_checkpoint("f").stat().st_mtime_ns == stamps[run.path] for run in again)


def test_reopening_with_another_recipe_is_refused(experiment_dir, tiny_data):
    exp, _, _ = experiment_dir
    other = tiny_run_config(tiny_data, epochs=3)
    other.score = exp.base.score
    with pytest.raises(ClipmemError, match="other train settings"):
        open_experiment(exp.path, "tiny-exp", ["captions"], [0], [5], other)


def test_a_saved_recipe_without_the_noise_placement_reads_as_the_projection_placement(tmp_path, tiny_data):
    """Configs written before text_noise_on existed were trained with the noise on the projection output: they
    load as that (a run's config.json and an experiment's recipe alike), while new runs default to normalized."""
    from clipmem.scoring.config import RunConfig

    assert RunConfig().train.text_noise_on == "normalized"
    saved = RunConfig().to_json()
    assert RunConfig.from_json(saved).train.text_noise_on == "normalized"
    del saved["train"]["text_noise_on"]
    assert RunConfig.from_json(saved).train.text_noise_on == "projection"

    base = tiny_run_config(tiny_data, epochs=1)
    base.train = replace(base.train, text_noise_on="projection")
    open_experiment(tmp_path / "old", "old", ["text-noise"], [0], [5], base)
    manifest = tmp_path / "old" / "experiment.json"
    raw = json.loads(manifest.read_text())
    del raw["base"]["train"]["text_noise_on"]  # as an experiment made before the field existed wrote it
    manifest.write_text(json.dumps(raw))
    open_experiment(tmp_path / "old", "old", ["text-noise"], [0], [5], base)  # the same recipe: accepted
    manifest.write_text(json.dumps(raw))
    with pytest.raises(ClipmemError, match=r"other train settings \(text_noise_on\)"):
        open_experiment(tmp_path / "old", "old", ["text-noise"], [0], [5], tiny_run_config(tiny_data, epochs=1))


def test_report_has_tables_figures_and_findings(experiment_dir, tmp_path):
    exp, _, _ = experiment_dir
    rows = report_rows(exp.path)
    assert len(rows) == 4 and all("probe_shape" in r for r in rows)
    report = write_report(rows, tmp_path / "report", "tiny")
    text = report.read_text()
    assert "## Findings" in text and "Removing 5 pairs" in text
    assert (tmp_path / "report" / "removal.html").is_file()
    # PNGs need Chromium (kaleido); without it the report says so, and the test skips (fails under CI)
    if not (tmp_path / "report" / "removal.png").is_file():
        assert "PNG figures were not written for removal" in text
        skip_or_fail("no PNG figures: kaleido found no Chromium (the report says so)")


def test_cli_report_only_and_its_errors(experiment_dir, tmp_path):
    exp, _, _ = experiment_dir
    result = runner.invoke(app, ["experiment", "--out", str(exp.path), "--report"])
    assert result.exit_code == 0, result.output
    assert (exp.path / "report" / "report.md").is_file()
    result = runner.invoke(app, ["experiment", "--out", str(tmp_path / "empty"), "--report"])
    assert result.exit_code == 2 and "no finished experiment runs" in result.output
    result = runner.invoke(app, ["experiment", "--out", str(tmp_path / "x"), "--grids", "captions,nope"])
    assert result.exit_code == 2 and "unknown grid nope" in result.output


def test_id_lists_as_plain_lines_or_a_csv_export(tmp_path):
    plain = tmp_path / "ids.txt"
    plain.write_text("# pairs to drop\na\n\nb\na\n")
    assert read_id_list(plain) == ["a", "b"]
    exported = tmp_path / "export.csv"
    exported.write_text("sample_id,caption,clipmem\nx,a cat,0.9\ny,\"a dog, big\",0.8\n")
    assert read_id_list(exported) == ["x", "y"]
    with pytest.raises(ClipmemError, match="names no sample ids"):
        (tmp_path / "empty.txt").write_text("\n")
        read_id_list(tmp_path / "empty.txt")
    with pytest.raises(ClipmemError, match="cannot read the id list"):
        read_id_list(tmp_path / "missing.txt")


def test_train_cli_takes_the_mitigation_options(tmp_path, tiny_data):
    out = tmp_path / "run"
    sizes = ",".join(str(int(x)) for x in (TINY_SIZES.shared, TINY_SIZES.candidate, TINY_SIZES.independent,
                                           TINY_SIZES.extra))
    result = runner.invoke(app, ["split", "--out", str(out), "--dataset", "folder", "--data", str(tiny_data),
                                 "--sizes", sizes])
    assert result.exit_code == 0, result.output
    ids = tmp_path / "ids.txt"
    ids.write_text("no-such-pair\n")
    result = runner.invoke(app, ["train", str(out), "--epochs", "1", "--model", "clipmem-tiny", "--text-noise",
                                 "0.1", "--image-views", "2", "--remove-ids", str(ids)])
    assert result.exit_code == 2 and "'no-such-pair'" in result.output
    result = runner.invoke(app, ["train", str(out), "--epochs", "1", "--text-noise", "-1"])
    assert result.exit_code == 2 and "--text-noise" in result.output


@pytest.fixture(params=["sqlite", "postgresql"])
def experiment_database(request, tmp_path):
    """An empty database of this test's own: SQLite, and PostgreSQL (a schema of its own) when
    CLIPMEM_TEST_DATABASE_URL is set."""
    import os

    from sqlalchemy import text

    from tests.backend.conftest import PG_ENV, _postgres_schema_url

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'exp.db'}"
        return
    if not os.environ.get(PG_ENV):
        skip_or_fail(f"{PG_ENV} is not set: the PostgreSQL half of the backend tests is skipped")
    admin, schema, url = _postgres_schema_url(os.environ[PG_ENV])
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_experiment_runs_ingest_and_the_api_summarizes_them(experiment_dir, experiment_database, monkeypatch):
    """The real thing end to end: removal runs (which lack scores for removed pairs) ingest, and
    GET /experiments/{name} gives the same rows and summary as the report, the removal grid's mean over the pairs
    every run scores (which the API reads from the scores table) included."""
    from fastapi.testclient import TestClient

    from clipmem.backend.api.app import create_app
    from clipmem.backend.settings import Settings

    exp, runs, _ = experiment_dir
    monkeypatch.setenv("CLIPMEM_DATABASE_URL", experiment_database)
    monkeypatch.delenv("CLIPMEM_API_TOKEN", raising=False)
    from clipmem.backend.cli import experiment_ingester

    with experiment_ingester() as ingester:  # what `clipmem experiment --ingest` hands run_experiment
        run_experiment(exp, on_finished=ingester)
    with TestClient(create_app(Settings())) as client:
        listed = client.get("/experiments").json()
        assert [(e["name"], e["runs"]) for e in listed] == [("tiny-exp", 4)]
        detail = client.get("/experiments/tiny-exp").json()
    rows = report_rows(exp.path)
    # per run: the pairs every removal run scores are the baseline's less the 5 each removal run dropped
    key = ("seed", "captions_per_image", "text_noise", "removal_method", "removal_count", "renderings")
    served_rows = {tuple(r[k] for k in key): r for r in detail["runs"]}
    baseline = pd.read_parquet(exp.run_dir(Setting(), 0).scores)
    removed = set().union(*(set(baseline["sample_id"]) - set(pd.read_parquet(run.scores)["sample_id"])
                            for run in runs if json.loads(run.experiment.read_text())["removal_count"]))
    in_removal = 0
    for r in rows:
        got = served_rows[tuple(r[k] for k in key)]
        assert got.get("common_pairs") == r.get("common_pairs")
        if r["captions_per_image"] == 1:  # the baseline and the removal runs
            in_removal += 1
            assert got["common_pairs"] == len(baseline) - len(removed)
            # the report averages scores.parquet's float32 column in float32, the API the database's doubles
            assert got["mean_clipmem_raw_common"] == pytest.approx(r["mean_clipmem_raw_common"], rel=0, abs=1e-7)
        else:
            assert got["mean_clipmem_raw_common"] is None and "mean_clipmem_raw_common" not in r
    assert in_removal == 4
    assert len(removed) > 5  # the three methods removed different pairs
    expected = summarize(rows)
    assert "mean_clipmem_raw_common" in set(expected.metric)
    served = pd.DataFrame(detail["summary"])
    assert len(served) == len(expected)
    merged = expected.merge(served, on=["grid", "method", "value", "metric"], suffixes=("", "_api"))
    assert len(merged) == len(expected)
    assert (merged["mean"] - merged["mean_api"]).abs().max() < 1e-6
    # a rerun keeps the runs already ingested rather than failing on them
    with experiment_ingester() as ingester:
        run_experiment(exp, on_finished=ingester)


def test_a_failing_run_stops_the_experiment_with_its_log(tmp_path, tiny_data):
    base = tiny_run_config(tiny_data, epochs=1)
    base.score = replace(base.score, towers=False, layers=False, views=2)
    data = tmp_path / "data"
    import shutil

    shutil.copytree(tiny_data, data)
    base.data = replace(base.data, path=str(data))
    exp = open_experiment(tmp_path / "e", "broken", ["captions"], [0], [5], base)
    from clipmem.scoring.experiment import prepare_base

    prepare_base(exp)
    next(data.glob("**/*.png")).write_bytes(b"not an image")  # the runs find it corrupt when they decode it
    with pytest.raises(ClipmemError, match="failed .*worker.log.*rerun the same command"):
        run_experiment(exp, jobs=2)


# ---------------------------------------------------------------- towers and from-scratch (issue 17)

def tuned_row(seed, lock="", scratch=False, swapped=0.2, atypical=0.1, clean=0.0, auroc=0.7, ap=0.3):
    """A run of the towers or from-scratch grid with its per-truth means and swapped-pair detection."""
    experiment = {"experiment": "e", "seed": seed, "captions_per_image": 1, "text_noise": 0.0, "removal_method": None,
                  "removal_count": 0, "lock": lock, "from_scratch": scratch}
    quality = {"truth_clipmem_raw_swapped": swapped, "truth_clipmem_raw_atypical": atypical,
               "truth_clipmem_raw_clean": clean, "swapped_auroc": auroc, "swapped_average_precision": ap}
    return run_row(experiment, 0.05, 0.5, {"f": {"probe_shape": 0.6}, "g": {"probe_shape": 0.6}}, quality)


def test_towers_and_from_scratch_settings_are_distinct_and_need_a_pretrained_base(tmp_path, tiny_data):
    settings = grid_settings(["towers", "from-scratch"])
    assert settings == [Setting(), Setting(lock="text"), Setting(lock="image"), Setting(from_scratch=True)]
    assert [s.slug for s in settings] == ["c1-n0", "c1-n0-lock-text", "c1-n0-lock-image", "c1-n0-scratch"]
    base = tiny_run_config(tiny_data, epochs=1)
    with pytest.raises(ClipmemError, match=r"--grids towers compares runs fine-tuned .* pass --pretrained FILE"):
        open_experiment(tmp_path / "no-base", "x", ["captions", "towers"], [0], [5], base)
    assert not (tmp_path / "no-base").exists()
    locked = replace(base, train=replace(base.train, pretrained="/b.pt", lock_text=True))
    with pytest.raises(ClipmemError, match=r"^--lock-text: --grids from-scratch sets the towers' locks per run"):
        open_experiment(tmp_path / "locked", "x", ["from-scratch"], [0], [5], locked)
    result = runner.invoke(app, ["experiment", "--out", str(tmp_path / "cli"), "--grids", "towers", "--no-ingest"])
    assert result.exit_code == 2 and "pass --pretrained FILE" in result.output
    assert not (tmp_path / "cli").exists()


def test_towers_and_from_scratch_rows_are_points_of_their_grid_alone():
    rows = [tuned_row(0), tuned_row(0, lock="text"), tuned_row(0, lock="image"), tuned_row(0, scratch=True),
            row(0, captions=2)]
    summary = summarize(rows)
    assert set(summary.grid) == {"captions", "towers", "from-scratch"}
    towers = summary[(summary.grid == "towers") & (summary.metric == "swapped_auroc")]
    assert sorted(towers.value) == [0.0, 1.0, 2.0]
    assert sorted(summary[summary.grid == "from-scratch"].value.unique()) == [0.0, 1.0]
    # per-truth means and detection are compared in these two grids only
    captions = set(summary[summary.grid == "captions"].metric)
    assert "swapped_auroc" not in captions and "truth_clipmem_raw_swapped" not in captions
    assert {"towers", "from-scratch"} <= set(figures(summary))


def test_the_towers_verdict_names_a_tower_only_when_the_interval_of_the_difference_excludes_zero():
    """Three seeds. Swapped pairs: image tower only minus text tower only = 0.10, 0.12, 0.14 (mean 0.12, sd 0.02,
    t(0.975, 2) = 4.302653: half-width 0.049683), so [+0.0703, +0.1697]. Atypical: 0.05, -0.05, 0: not
    distinguishable."""
    from clipmem.scoring.experiment_report import towers_verdict

    rows = []
    for seed, (d_swapped, d_atypical) in enumerate([(0.10, 0.05), (0.12, -0.05), (0.14, 0.0)]):
        rows += [tuned_row(seed, swapped=0.3),
                 tuned_row(seed, lock="text", swapped=0.2 + d_swapped, atypical=0.1 + d_atypical),
                 tuned_row(seed, lock="image", swapped=0.2, atypical=0.1)]
    swapped, atypical = towers_verdict(rows)
    assert swapped == ("Towers, memorization of swapped pairs (mean raw CLIPMem, image tower only minus text tower "
                       "only, 95% t-interval over 3 seeds): +0.1200 [+0.0703, +0.1697]: the image tower's training "
                       "produces more of it.")
    assert atypical.endswith("+0.0000 [-0.1242, +0.1242]: not distinguishable.")  # sd 0.05: 4.302653 * 0.05 / √3
    # the text tower is named when the difference is negative throughout; one seed has no interval
    flipped = [dict(r, truth_clipmem_raw_swapped=-r["truth_clipmem_raw_swapped"]) for r in rows]
    assert towers_verdict(flipped)[0].endswith("the text tower's training produces more of it.")
    assert towers_verdict(rows[:3])[0].endswith("(one seed: no interval): not distinguishable.")


def test_the_from_scratch_comparison_pairs_seeds():
    """Fine-tuned minus scratch AUROC per seed 0.1, 0.2 (mean 0.15, sd 0.0707107, t(0.975, 1) = 12.706205:
    half-width 0.635310); clean-pair CLIPMem -0.02 on both seeds (sd 0: the interval is the point)."""
    from clipmem.scoring.experiment_report import interval_table, scratch_comparison

    rows = [tuned_row(0, auroc=0.8, clean=0.0), tuned_row(0, scratch=True, auroc=0.7, clean=0.02),
            tuned_row(1, auroc=0.9, clean=0.01), tuned_row(1, scratch=True, auroc=0.7, clean=0.03)]
    text = scratch_comparison(rows)
    assert text.startswith("Fine-tuned from the base minus from scratch (95% t-intervals over 2 seeds): "
                           "swapped-pair AUROC (CLIPMem) +0.1500 [-0.4853, +0.7853] (not distinguishable); ")
    assert text.endswith("mean raw CLIPMem, clean pairs -0.0200 [-0.0200, -0.0200] (lower fine-tuned).")
    table = interval_table(rows, "from-scratch", ["swapped_auroc"])
    assert "| fine-tuned from the base | 2 | 0.8500 [0.2147, 1.4853] |" in table
    assert "| from scratch | 2 | 0.7000 [0.7000, 0.7000] |" in table


def test_quality_metrics_are_the_per_truth_means_and_scikit_learns_detection():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from clipmem.scoring.experiment_report import scores_quality

    scores = pd.DataFrame({"truth": ["clean", "swapped", "clean", "atypical", "swapped", "clean"],
                           "clipmem_raw": [0.1, 0.4, -0.2, 0.3, 0.05, 0.2]})
    scores["clipmem"] = (scores["clipmem_raw"] + 0.2) / 0.6
    got = scores_quality(scores)
    swapped = scores["truth"] == "swapped"
    assert got == pytest.approx({
        "truth_clipmem_raw_clean": (0.1 - 0.2 + 0.2) / 3, "truth_clipmem_raw_swapped": 0.225,
        "truth_clipmem_raw_atypical": 0.3, "swapped_auroc": roc_auc_score(swapped, scores["clipmem"]),
        "swapped_average_precision": average_precision_score(swapped, scores["clipmem"])})


@pytest.fixture(scope="module")
def tuned_experiment(tmp_path_factory, tiny_data):
    """The towers and from-scratch grids on the tiny data, 1 seed, 1 epoch, from a base trained 1 epoch on it."""
    import clipmem.scoring.pipeline as pipeline
    from clipmem.scoring.cli import TrainOverrides
    from run_fixtures import split_tiny_run

    root = tmp_path_factory.mktemp("tuned")
    base_run, _ = split_tiny_run(root / "base", tiny_data, epochs=1)
    pipeline.train_step(base_run, base_run.load_config(), show_progress=False)
    base_file = base_run.model_checkpoint("f")
    cfg = TrainOverrides(pretrained=str(base_file), epochs=1).apply(tiny_run_config(tiny_data, epochs=1))
    cfg.score = replace(cfg.score, towers=False, layers=False, views=2)
    exp = open_experiment(root / "e", "tuned-exp", ["towers", "from-scratch"], [0], [5], cfg)
    return exp, run_experiment(exp, jobs=2), base_file


def test_the_tuned_grids_train_each_setting_from_the_base_or_from_scratch(tuned_experiment):
    import torch

    exp, runs, base_file = tuned_experiment
    assert len({run.path for run in runs}) == 4
    base = torch.load(base_file, weights_only=True)["state_dict"]
    text_key, image_key = "token_embedding.weight", "visual.proj"
    for setting, text_kept, image_kept in ((Setting(), False, False), (Setting(lock="text"), True, False),
                                          (Setting(lock="image"), False, True)):
        run = exp.run_dir(setting, 0)
        cfg = run.load_config().train
        assert cfg.pretrained == str(base_file) and (cfg.lock_text, cfg.lock_image) == (text_kept, image_kept)
        trained = torch.load(run.model_checkpoint("f"), weights_only=True)["state_dict"]
        assert torch.equal(trained[text_key], base[text_key]) == text_kept
        assert torch.equal(trained[image_key], base[image_key]) == image_kept
    scratch = exp.run_dir(Setting(from_scratch=True), 0).load_config().train
    # random weights, with the from-scratch recipe's learning rate and warm-up and the experiment's epochs
    assert scratch.pretrained is None and not (scratch.lock_text or scratch.lock_image)
    assert (scratch.lr, scratch.warmup_steps, scratch.epochs) == (2e-3, 50, 1)


def test_the_tuned_grids_report_and_the_api_agree(tuned_experiment, experiment_database, monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from clipmem.backend.api.app import create_app
    from clipmem.backend.cli import experiment_ingester
    from clipmem.backend.settings import Settings
    from clipmem.scoring.experiment_report import scores_quality

    exp, runs, _ = tuned_experiment
    rows = report_rows(exp.path)
    by_run = {r["run"]: r for r in rows}
    scratch = exp.run_dir(Setting(from_scratch=True), 0)
    expected = scores_quality(pd.read_parquet(scratch.scores))
    assert {k: by_run[scratch.path.name][k] for k in expected} == expected
    text = write_report(rows, tmp_path / "report", "tuned", png=False).read_text()
    assert "## towers: towers trained from the base" in text and "## from-scratch: initial weights" in text
    assert "| image tower only (text locked) | 1 |" in text and "| from scratch | 1 |" in text
    assert "Towers, memorization of swapped pairs" in text and "(one seed: no interval): not distinguishable" in text
    assert "Fine-tuned from the base minus from scratch" in text

    monkeypatch.setenv("CLIPMEM_DATABASE_URL", experiment_database)
    monkeypatch.delenv("CLIPMEM_API_TOKEN", raising=False)
    with experiment_ingester() as ingester:
        run_experiment(exp, on_finished=ingester)
    with TestClient(create_app(Settings())) as client:
        detail = client.get("/experiments/tuned-exp").json()
    assert detail["grids"] == ["towers", "from-scratch"]
    served = {(r["lock"], r["from_scratch"]): r for r in detail["runs"]}
    for r in rows:
        got = served[(r["lock"], r["from_scratch"])]
        for key in ("swapped_auroc", "swapped_average_precision", "truth_clipmem_raw_swapped"):
            # the report averages scores.parquet's float32 column, the API the database's doubles
            assert got[key] == pytest.approx(r[key], rel=0, abs=1e-6)
    expected_summary = summarize(rows)
    merged = expected_summary.merge(pd.DataFrame(detail["summary"]), on=["grid", "method", "value", "metric"],
                                    suffixes=("", "_api"))
    assert len(merged) == len(expected_summary) == len(detail["summary"])
    assert (merged["mean"] - merged["mean_api"]).abs().max() < 1e-6
