"""The image normalisation follows the model config (open_clip's preprocess_cfg), for every model.

A config without mean and std normalises with OpenAI's, bit for bit as clipmem always has (checked against the plain
formulation written out here with open_clip's constants); a config naming others changes what the image tower reads,
in training and in scoring alike (checked on the tensors the tower receives).
"""

from __future__ import annotations

import json
from dataclasses import replace

import open_clip
import pandas as pd
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

import clipmem.scoring.pipeline as pipeline
import clipmem.scoring.score as score
import clipmem.scoring.train as train
from clipmem.scoring.config import AugmentConfig
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.models import create_model, resolve_config
from clipmem.scoring.train import read_state_dict
from clipmem.scoring.transform import OPENAI, Normalization, normalization_of, sample_views
from constructed import plain_augment
from run_fixtures import split_tiny_run

HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def open_clip_file(tmp_path, preprocess: dict | None, name: str = "open_clip_config.json"):
    """The tiny model in open_clip's {"model_cfg", "preprocess_cfg"} file form."""
    path = tmp_path / name
    body = {"model_cfg": resolve_config("clipmem-tiny")}
    if preprocess is not None:
        body["preprocess_cfg"] = preprocess
    path.write_text(json.dumps(body))
    return path


def test_the_normalisation_is_the_one_open_clip_reads_from_the_config(tmp_path):
    """open_clip's own factory, given the same files (local-dir: a {"model_cfg", "preprocess_cfg"} file) or name,
    sets the mean and std clipmem's models carry."""
    for preprocess, expected in ((None, OPENAI_DATASET_MEAN + OPENAI_DATASET_STD), ({"mean": None}, None),
                                 (HALF, (0.5,) * 6), ({"std": [0.25, 0.5, 1.0]}, OPENAI_DATASET_MEAN + (0.25, 0.5, 1))):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        path = open_clip_file(folder, preprocess)
        theirs = open_clip.create_model(f"local-dir:{folder}").visual.preprocess_cfg
        ours = normalization_of(create_model(resolve_config(str(path)), 0))
        assert ours == Normalization(tuple(theirs["mean"]), tuple(theirs["std"]))
        if expected is not None:
            assert ours.mean + ours.std == pytest.approx(expected, abs=0)
    assert normalization_of(create_model(resolve_config("clipmem-tiny"), 0)) is OPENAI
    theirs = open_clip.create_model("clipmem-tiny").visual.preprocess_cfg
    assert (tuple(theirs["mean"]), tuple(theirs["std"])) == (OPENAI.mean, OPENAI.std)
    # the config keeps only what differs from the default, so a run's model_config.json is unchanged without it
    assert "preprocess_cfg" not in resolve_config(str(open_clip_file(tmp_path, {"mean": list(OPENAI_DATASET_MEAN)})))
    assert resolve_config(str(open_clip_file(tmp_path, HALF)))["preprocess_cfg"] == HALF
    half = create_model(resolve_config(str(open_clip_file(tmp_path, HALF))), 0)
    assert normalization_of(half) == Normalization((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("preprocess, words", [
    ({"std": [0.5, 0.0, 0.5]}, r"std must be three finite numbers \(R, G, B\), each above 0, got \[0.5, 0.0, 0.5\]"),
    ({"mean": [0.5, 0.5]}, r"mean must be three finite numbers \(R, G, B\), got \[0.5, 0.5\]"),
    ({"mean": "grey"}, r"mean must be three finite numbers \(R, G, B\), got 'grey'"),
    ([0.5], r"preprocess_cfg must be a JSON object"),
])
def test_a_malformed_normalisation_is_refused_naming_the_file(tmp_path, preprocess, words):
    path = open_clip_file(tmp_path, preprocess, "bad.json")
    with pytest.raises(ClipmemError, match=f"model config {path}.*{words}"):
        resolve_config(str(path))


def _plain_everywhere(monkeypatch):
    """Training and scoring with every view made by the plain formulation and OpenAI's constants."""
    monkeypatch.setattr(train, "augment", lambda pixels, params, max_shift, source=None, norm=None:
                        plain_augment(pixels, params, max_shift, source))
    monkeypatch.setattr(score, "augment", lambda pixels, params, max_shift, source=None, norm=None:
                        plain_augment(pixels, params, max_shift, source))
    monkeypatch.setattr(score, "normalize", lambda pixels, norm=None:
                        (pixels.float() / 255.0 - torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
                        / torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1))


def test_without_mean_and_std_training_and_scoring_are_bit_identical_to_openai_constants(tmp_path, tiny_data,
                                                                                          monkeypatch):
    """One epoch of the tiny run and its scores: the default config (no preprocess_cfg) gives f, g and every
    score bit for bit what the plain formulation with OpenAI's constants, the normalisation clipmem always used,
    gives. (A config stating OpenAI's constants resolves to the same model config: the first test.)"""
    outcomes = []
    for how in ("default", "plain"):
        run, cfg = split_tiny_run(tmp_path / how, tiny_data, epochs=1)
        with monkeypatch.context() as patched:
            if how == "plain":
                _plain_everywhere(patched)
            pipeline.train_step(run, cfg, show_progress=False)
            pipeline.score_step(run, cfg, show_progress=False)
        weights = {name: read_state_dict(run.model_checkpoint(name)) for name in ("f", "g")}
        frames = {name: pd.read_parquet(run.path / name) for name in ("scores.parquet", "null.parquet")}
        outcomes.append((weights, frames))
    (weights, frames), others = outcomes[0], outcomes[1:]
    for other_weights, other_frames in others:
        for name in weights:
            assert all(torch.equal(weights[name][k], other_weights[name][k]) for k in weights[name])
        for name, frame in frames.items():
            for column in ("clipmem_raw", "clipmem_contrastive_raw", "align_f", "align_g"):
                assert (frame[column].to_numpy() == other_frames[name][column].to_numpy()).all()


def test_another_mean_and_std_is_what_the_image_tower_reads_in_training_and_scoring(tmp_path, tiny_data):
    """A config naming mean and std 0.5 (SigLIP's): without augmentation every image the tower receives, in
    training and in scoring, is (pixels / 255 - 0.5) / 0.5 of one of the run's images."""
    run, cfg = split_tiny_run(tmp_path / "half", tiny_data, epochs=1)
    cfg.train = replace(cfg.train, model=str(open_clip_file(tmp_path, HALF)), augment=AugmentConfig(enabled=False))
    run.save_config(cfg)
    seen = {"train": [], "score": []}
    stage = ["train"]

    def capture(module, args):
        if isinstance(module, open_clip.transformer.VisionTransformer):
            seen[stage[0]].append(args[0].detach().float().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(capture)
    try:
        pipeline.train_step(run, cfg, show_progress=False)
        stage[0] = "score"
        pipeline.score_step(run, cfg, show_progress=False)
    finally:
        handle.remove()
    corpus, _, _ = pipeline.load_corpus(run, cfg)
    pixels = corpus.pixels.float()
    expected = ((pixels / 255 - 0.5) / 0.5).flatten(1)
    openai = ((pixels / 255 - torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
              / torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)).flatten(1)
    assert json.loads((run.path / "model_config.json").read_text())["preprocess_cfg"] == HALF
    for stage_name, batches in seen.items():
        images = torch.cat(batches).flatten(1)
        assert len(images) >= 500, stage_name
        nearest = expected[torch.cdist(images, expected).argmin(1)]
        assert (images - nearest).abs().max() < 1e-5, stage_name  # (x - m) * 1 + m may round x by an ulp
        assert torch.cdist(images, openai).min(1).values.min() > 1.0, stage_name


def test_models_that_normalise_differently_are_not_shown_one_batch(tmp_path):
    half = create_model(resolve_config(str(open_clip_file(tmp_path, HALF))), 0)
    default = create_model(resolve_config("clipmem-tiny"), 0)
    pixels = torch.zeros((2, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ClipmemError, match="normalise them differently"):
        score.encode_images_each([half, default], pixels, 2, torch.device("cpu"))
    views = sample_views(2, AugmentConfig(), torch.Generator().manual_seed(0))
    got = score.encode_images(half, pixels + 51, 2, torch.device("cpu"), views=views, max_shift=3)
    plain = plain_augment(pixels + 51, views, 3, mean=(0.5,) * 3, std=(0.5,) * 3)
    with torch.inference_mode():
        assert torch.allclose(got, half.encode_image(plain, normalize=True), atol=1e-6)


def test_export_hands_open_clip_the_models_own_mean_and_std(tmp_path, tiny_data):
    """export-splits writes open_clip's {"model_cfg", "preprocess_cfg"} file: open_clip builds the model from it and
    reads the run model's 0.5/0.5 as its preprocessing (inside model_cfg, CLIP(**model_cfg) would refuse the key)."""
    from dataclasses import replace

    import open_clip

    from clipmem.scoring.export import export_run

    run, cfg = split_tiny_run(tmp_path / "run", tiny_data)
    cfg.train = replace(cfg.train, model=str(open_clip_file(tmp_path, HALF, name="half.json")))
    run.save_config(cfg)
    model_dir = export_run(run)["folder"] / "model"
    written = json.loads((model_dir / "open_clip_config.json").read_text())
    assert written["preprocess_cfg"] == HALF and "preprocess_cfg" not in written["model_cfg"]
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    normalize = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
    assert list(normalize.mean) == HALF["mean"] and list(normalize.std) == HALF["std"]
