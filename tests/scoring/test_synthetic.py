import json
from collections import Counter

import numpy as np
import pytest

from clipmem.scoring.data.sources import load_dataset
from clipmem.scoring.config import SynthConfig
from clipmem.scoring.data.synthetic import FAULT_TAGS, generate, parse_rates, write
from clipmem.scoring.errors import ClipmemError


def test_same_seed_same_data_and_other_seed_differs():
    a, b = generate(SynthConfig(n_pairs=200, seed=1)), generate(SynthConfig(n_pairs=200, seed=1))
    c = generate(SynthConfig(n_pairs=200, seed=2))
    assert [r["captions"] for r in a] == [r["captions"] for r in b]
    assert all(np.array_equal(x["pixels"], y["pixels"]) for x, y in zip(a, b))
    assert [r["captions"] for r in a] != [r["captions"] for r in c]


def test_fault_counts_and_truth_semantics():
    cfg = SynthConfig(n_pairs=1000, seed=0, faults={t: 0.02 for t in FAULT_TAGS})
    records = generate(cfg)
    counts = Counter(r["truth"] for r in records)
    assert all(counts[t] == 20 for t in FAULT_TAGS)
    by_id = {r["id"]: r for r in records}
    for r in records:
        if r["truth"] == "swapped":
            donor = by_id[r["source_id"]]
            assert r["captions"] == donor["captions"]
            assert (donor["objects"][0]["shape"], donor["objects"][0]["colour"]) != (
                r["objects"][0]["shape"], r["objects"][0]["colour"])
        if r["truth"] == "duplicate":
            donor = by_id[r["source_id"]]
            assert r["captions"] == donor["captions"]
            assert np.abs(r["pixels"].astype(int) - donor["pixels"].astype(int)).mean() < 8
        if r["truth"] == "clean":
            obj = r["objects"][0]
            assert all(obj["colour"] in c and obj["shape"] in c for c in r["captions"])


def test_captions_are_paraphrases_and_long_tailed():
    records = generate(SynthConfig(n_pairs=2000, seed=0))
    assert all(len(set(r["captions"])) == len(r["captions"]) >= 4 for r in records if r["truth"] != "vague")
    combos = Counter((r["objects"][0]["shape"], r["objects"][0]["colour"]) for r in records)
    freq = sorted(combos.values(), reverse=True)
    assert freq[0] > 10 * freq[-1]  # a long tail of rare combinations


def test_write_produces_readable_imagefolder(tmp_path):
    out = write(SynthConfig(n_pairs=50, seed=0), tmp_path / "d")
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 50 and all((out / r["file_name"]).is_file() for r in rows)
    ds = load_dataset("folder", out)
    assert len(ds) == 50 and ds.load_pixels([0, 1], 32).shape == (2, 3, 32, 32)
    with pytest.raises(ClipmemError, match="already holds a dataset"):
        write(SynthConfig(n_pairs=50), out)


def test_bad_configs_are_named():
    with pytest.raises(ClipmemError, match="unknown fault"):
        generate(SynthConfig(faults={"typo": 0.1}))
    with pytest.raises(ClipmemError, match="at least one pair"):
        generate(SynthConfig(n_pairs=0))
    with pytest.raises(ClipmemError, match="bad rate 'swapped'"):
        parse_rates("swapped")
    assert parse_rates("swapped=0.02, vague=0.01") == {"swapped": 0.02, "vague": 0.01}
