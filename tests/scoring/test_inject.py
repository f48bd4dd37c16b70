"""Injected faults are the same in every step of a run: samples.parquet (what the dashboard shows and
exports) holds the captions the models train on, also when the split left unreadable images out."""

import json

import pandas as pd

from clipmem.scoring.config import DataConfig, RunConfig, SplitConfig
from clipmem.scoring.pipeline import open_planned, split_step
from clipmem.scoring.rundir import RunDir
from clipmem.scoring.splits import SplitSizes
from source_fixtures import png_bytes


def test_split_and_training_see_the_same_swaps_when_images_are_skipped(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "metadata.jsonl", "w") as fh:
        for i in range(60):
            (data / f"p{i}.png").write_bytes(b"not a png" if i in (0, 7) else png_bytes(i))
            fh.write(json.dumps({"file_name": f"p{i}.png", "id": f"p{i}", "text": f"caption number {i}"}) + "\n")
    run = RunDir(tmp_path / "run")
    run.prepare_new(overwrite=False)
    cfg = RunConfig(data=DataConfig(kind="folder", path=str(data), on_error="skip", inject={"swapped": 0.5}),
                    split=SplitConfig(sizes=SplitSizes(30, 10, 10, 8)))
    split_step(run, cfg)
    assert {item["sample_id"] for item in map(json.loads, run.skipped.read_text().splitlines())} == {"p0", "p7"}
    samples = pd.read_parquet(run.samples)
    assert (samples["truth"] == "swapped").sum() == 10
    dataset, _ = open_planned(cfg, run)  # what training, scoring and export read
    where = dataset.index_of()
    for row in samples.itertuples():
        assert list(row.captions) == dataset.captions[where[row.sample_id]], row.sample_id
        assert row.truth == dataset.truth[where[row.sample_id]]
