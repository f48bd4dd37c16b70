"""Renderings per scene: the generator draws the same scene again without changing what its captions say, and
training with k renderings sees one of them per pair and step, while k = 1 trains exactly as without the knob."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from run_fixtures import TINY_SYNTH, split_tiny_run, weights
from run_fixtures import train_watched as train
from clipmem.scoring.config import AugmentConfig, SynthConfig
from clipmem.scoring.data.synthetic import POSITIONS, generate, write
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.pipeline import load_corpus
from clipmem.scoring.schemes import PUBLISHED_MODELS
from clipmem.scoring.transform import augment, sample_views

K = 5  # the images-captions grid's renderings


@pytest.fixture(scope="module")
def rendered_data(tmp_path_factory):
    """The tiny data set written with K renderings of each scene."""
    return write(replace(TINY_SYNTH, renderings=K), tmp_path_factory.mktemp("rendered") / "tiny")


def _foreground(pixels: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background by over 30 grey levels in some channel: the background colour is
    the median of the four 3 x 3 corners (no object reaches them), its pixel noise is 7.6 levels, and every object
    colour differs from its background by over 40 in some channel."""
    corners = np.concatenate([pixels[:3, :3], pixels[:3, -3:], pixels[-3:, :3], pixels[-3:, -3:]]).reshape(-1, 3)
    bg = np.median(corners, axis=0)
    return np.abs(pixels.astype(np.float32) - bg).max(axis=-1) > 30


def test_renderings_draw_the_scene_again_and_keep_what_its_captions_say():
    """Each further rendering differs from the image, and, like the image, shows a one-object scene's object in the
    captioned position and size: its centroid within 3.6 pixels of the named position's centre in each axis (the
    centres are 7.5 apart; jitter 1.5, a triangle's centroid 0.2 r = 1.8 below its centre), and an area under 88
    pixels when small, over it when large (every shape's area: small at most 77, large at least 100, with the ±10%
    size jitter). The image itself is the one written without renderings."""
    cfg = SynthConfig(n_pairs=120, seed=5, faults={"swapped": 0.05, "duplicate": 0.05, "atypical": 0.05})
    plain, rendered = generate(cfg), generate(replace(cfg, renderings=3))
    checked = 0
    for a, b in zip(plain, rendered):
        assert np.array_equal(a["pixels"], b["pixels"]) and a["renderings"] == []
        assert len(b["renderings"]) == 2 and not any(np.array_equal(b["pixels"], r) for r in b["renderings"])
        if len(b["objects"]) != 1 or b["rendering"] != "plain":
            continue
        obj = b["objects"][0]
        for image in [b["pixels"], *b["renderings"]]:
            mask = _foreground(image)
            cy, cx = np.argwhere(mask).mean(axis=0) + 0.5
            py, px = POSITIONS[obj["position"]]
            assert abs(cy - py) < 3.6 and abs(cx - px) < 3.6, (b["id"], obj, cy, cx)
            assert (mask.sum() < 88) == (obj["size"] == "small"), (b["id"], obj, mask.sum())
            checked += 1
    assert checked > 200
    # a duplicate's renderings are near-copies of its donor's
    dup = next(r for r in rendered if r["truth"] == "duplicate")
    donor = rendered[int(dup["source_id"].split("-")[1])]
    for mine, theirs in zip(dup["renderings"], donor["renderings"]):
        assert 0 < np.abs(mine.astype(int) - theirs).mean() < 6


def test_written_renderings_are_listed_in_the_manifest_and_read_back(rendered_data, tiny_data):
    from clipmem.scoring.data.base import Problems
    from clipmem.scoring.data.folder import read_folder

    plain = [json.loads(line) for line in (tiny_data / "metadata.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (rendered_data / "metadata.jsonl").read_text().splitlines()]
    # without the list, each row is the one written without renderings (same image bytes too)
    assert [{k: v for k, v in r.items() if k != "renderings"} for r in rows] == plain
    assert "renderings" not in plain[0]
    assert (rendered_data / rows[0]["file_name"]).read_bytes() == (tiny_data / plain[0]["file_name"]).read_bytes()
    dataset = read_folder(rendered_data, Problems())
    assert all(len(r) == K - 1 for r in dataset.renderings)
    extra = dataset.load_renderings([0, 1], K, 32)
    assert extra.shape == (2, K - 1, 3, 32, 32)
    assert not torch.equal(extra[0, 0], dataset.load_pixels([0], 32)[0])


@pytest.fixture(scope="module")
def rendered_run(tmp_path_factory, rendered_data):
    return split_tiny_run(tmp_path_factory.mktemp("rendered-run") / "run", rendered_data, epochs=1)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_data):
    return split_tiny_run(tmp_path_factory.mktemp("plain-run") / "run", tiny_data, epochs=1)


def test_one_rendering_trains_exactly_as_data_without_renderings(rendered_run, plain_run, tmp_path):
    """One epoch: the data written with renderings, trained with renderings = 1, gives the weights of the data
    without them trained without the option."""
    plain, _, _ = train(plain_run, tmp_path / "plain")
    one, _, _ = train(rendered_run, tmp_path / "one", renderings=1)
    for name in PUBLISHED_MODELS:
        assert torch.equal(weights(plain[name]), weights(one[name]))


def test_training_sees_one_drawn_rendering_per_pair_and_step(rendered_run, tmp_path):
    """Without augmentation every image a step trains on is the normalised rendering j of its pair: with k = 1
    always rendering 0; with k = K renderings other than 0 too, the same one for f and g in a slot."""
    no_aug = AugmentConfig(enabled=False)
    corpus, _, _ = load_corpus(*rendered_run)
    stack = corpus.renderings(K)
    assert torch.equal(stack[:, 0], corpus.pixels)
    flat = stack.flatten(0, 1)
    candidates = augment(flat, sample_views(len(flat), no_aug, torch.Generator().manual_seed(0)), 0)
    candidates = candidates.reshape(len(corpus.ids), K, *candidates.shape[1:])

    def renderings_seen(seen):
        out = []
        for name, rows, images, _ in seen:
            for r, image in zip(rows.tolist(), images):
                match = [j for j in range(K) if torch.allclose(candidates[r, j], image, atol=1e-6)]
                assert len(match) == 1
                out.append((name, r, match[0]))
        return out

    _, one, _ = train(rendered_run, tmp_path / "one", renderings=1, augment=no_aug)
    assert {j for _, _, j in renderings_seen(one)} == {0}
    _, several, _ = train(rendered_run, tmp_path / "k", renderings=K, augment=no_aug)
    picks = renderings_seen(several)
    assert {j for _, _, j in picks} == set(range(K))
    # per step, f's batch then g's: a shared pair is seen through the same rendering by both
    shared = set(corpus.rows("shared").tolist())
    start = 0
    for i in range(0, len(several), 2):
        (nf, rows_f, _, _), (ng, rows_g, _, _) = several[i], several[i + 1]
        assert (nf, ng) == ("f", "g")
        f_picks = dict((r, j) for _, r, j in picks[start:start + len(rows_f)])
        g_picks = dict((r, j) for _, r, j in picks[start + len(rows_f):start + len(rows_f) + len(rows_g)])
        start += len(rows_f) + len(rows_g)
        assert all(f_picks[r] == g_picks[r] for r in f_picks.keys() & g_picks.keys() & shared)


def test_more_renderings_than_the_data_has_is_refused_naming_a_pair(plain_run, tmp_path):
    with pytest.raises(ClipmemError, match="pair syn-\\d+ has 1 rendering.*asks for 2 .*--renderings 2"):
        train(plain_run, tmp_path, renderings=2)
