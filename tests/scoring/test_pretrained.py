"""Fine-tuning from pretrained weights (--pretrained) and locked towers (--lock-image, --lock-text), on the tiny
config: what the models start from, which vocabulary their text tower reads, what a lock keeps bit for bit, and the
refusals (a hub tag, uncovered words) that come before any training."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import clipmem.scoring.pipeline as pipeline
from clipmem.cli import app
from clipmem.scoring.cli import TrainOverrides
from clipmem.scoring.config import FINE_TUNE_RECIPE, RunConfig
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.models import create_model, resolve_config
from clipmem.scoring.rundir import RunDir, file_sha256
from clipmem.scoring.train import make_optimizer, read_state_dict
from run_fixtures import split_tiny_run

TINY = ["--model", "clipmem-tiny", "--batch-size", "128", "--sizes", "600,120,120,60"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_data) -> Path:
    """A clipmem run trained one epoch on the tiny data: its f.pt (compacted vocabulary, vocab.json beside it)."""
    run, cfg = split_tiny_run(tmp_path_factory.mktemp("base") / "base", tiny_data, epochs=1)
    pipeline.train_step(run, cfg, show_progress=False)
    return run.model_checkpoint("f")


def fine_tune(tmp_path: Path, tiny_data: Path, source, name: str = "ft", epochs: int = 1, **options):
    """A split tiny run with the recipe of `--pretrained SOURCE` and `options` applied as the command line does."""
    run, cfg = split_tiny_run(tmp_path / name, tiny_data, epochs=epochs)
    return run, TrainOverrides(pretrained=str(source), epochs=epochs, **options).apply(cfg)


def initial_weights(monkeypatch, run, cfg) -> dict[str, dict]:
    """The state dict every model (and replica) holds when training is handed it; training itself is not run."""
    seen = {}

    def capture(models, corpus, train_cfg, *args, **kwargs):
        for name, model in models.items():
            seen[f"{name}@{train_cfg.init_seed}"] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"models": list(models), "epochs": train_cfg.epochs}

    monkeypatch.setattr(pipeline, "train_models", capture)
    monkeypatch.setattr(pipeline, "save_model", lambda *a, **k: None)
    pipeline.train_step(run, cfg, show_progress=False)
    return seen


def same(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_models_start_from_a_checkpoint_file_and_from_a_module_prefixed_state_dict(tmp_path, tiny_data, base,
                                                                                    monkeypatch):
    """f and g of every replica start from the file's weights, read as an open_clip trainer checkpoint
    ({'state_dict': ...}) or as a bare state dict whose keys carry DDP's 'module.' prefix."""
    weights = torch.load(base, weights_only=True)["state_dict"]
    plain = tmp_path / "plain" / "weights.pt"
    plain.parent.mkdir()
    torch.save({f"module.{k}": v for k, v in weights.items()}, plain)
    (plain.parent / "vocab.json").write_text((base.parent / "vocab.json").read_text())
    for source in (base, plain):
        run, cfg = fine_tune(tmp_path, tiny_data, source, name=source.stem, replicas=2)
        seen = initial_weights(monkeypatch, run, cfg)
        assert len(seen) == 4  # f and g of replicas 0 and 1
        for state in seen.values():
            assert state.keys() == weights.keys() and same(state, weights, weights)
        assert cfg.train.pretrained == str(source.resolve()) and cfg.train.pretrained_sha256 == file_sha256(source)


def test_a_hub_tag_fails_in_one_line_before_anything_is_written(tmp_path, tiny_data):
    out = tmp_path / "run"
    for model, tag in (("ViT-B-32", "laion2b_s34b_b79k"), ("clipmem-tiny", "openai")):
        result = invoke("run", "--out", out, "--model", model, "--pretrained", tag)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and tag in lines[0] and "local checkpoint file" in lines[0]
        assert not out.exists()
    # on a planned run, `clipmem train` leaves its files as they were
    assert invoke("split", "--out", out, "--dataset", "folder", "--data", tiny_data, "--sizes",
                  "600,120,120,60").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = invoke("train", out, "--model", "clipmem-tiny", "--pretrained", "openai")
    assert result.exit_code == 2 and "openai" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def locked_training(tmp_path, tiny_data, base, **locks):
    """(pretrained weights, {f, g: weights after one epoch of fine-tuning with these locks})."""
    run, cfg = fine_tune(tmp_path, tiny_data, base, name="_".join(locks), **locks)
    pipeline.train_step(run, cfg, show_progress=False)
    after = {name: read_state_dict(run.model_checkpoint(name)) for name in ("f", "g")}
    return read_state_dict(base), after


def test_a_locked_tower_keeps_its_pretrained_weights_bit_for_bit(tmp_path, tiny_data, base):
    for lock, tower in (("lock_text", lambda k: not k.startswith("visual.") and k != "logit_scale"),
                        ("lock_image", lambda k: k.startswith("visual."))):
        pretrained, after = locked_training(tmp_path, tiny_data, base, **{lock: True})
        locked = [k for k in pretrained if tower(k)]
        free = [k for k in pretrained if not tower(k) and k != "logit_scale"]
        for name, state in after.items():
            assert same(state, pretrained, locked), (lock, name)
            assert all(not torch.equal(state[k], pretrained[k]) for k in free), (lock, name)  # the other tower trained


def test_unlocked_text_layers_follow_open_clips_groups(tmp_path, tiny_data, base):
    """open_clip's text groups, last first: the projection, then the last block with ln_final, ...; one unlocked
    group trains the projection alone."""
    pretrained, after = locked_training(tmp_path, tiny_data, base, lock_text=True, lock_text_unlocked_layers=1)
    text = [k for k in pretrained if not k.startswith("visual.") and k != "logit_scale"]
    for state in after.values():
        assert [k for k in text if not torch.equal(state[k], pretrained[k])] == ["text_projection"]


def test_the_optimizer_holds_only_trainable_parameters():
    model = create_model(resolve_config("clipmem-tiny"), 0)
    model.lock_image_tower()
    held = {id(p) for group in make_optimizer(model, RunConfig().train).param_groups for p in group["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if not n.startswith("visual.")}


def test_another_runs_vocabulary_is_kept_and_uncovered_words_refused(tmp_path, tiny_data, base):
    run, cfg = fine_tune(tmp_path, tiny_data, base)
    assert cfg.train.compact_vocab  # the base's compacted vocabulary, not open_clip's full one
    pipeline.train_step(run, cfg, show_progress=False)
    assert json.loads(run.vocab.read_text()) == json.loads((base.parent / "vocab.json").read_text())

    # the same pairs, one caption made of two words the base's captions never use
    data = tmp_path / "zebra"
    data.mkdir()
    for item in tiny_data.iterdir():
        if item.name != "metadata.jsonl":
            (data / item.name).symlink_to(item)
    lines = (tiny_data / "metadata.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["text"] = ["zebra kiwi"] + (first["text"][1:] if isinstance(first["text"], list) else [])
    (data / "metadata.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    run, cfg = fine_tune(tmp_path, data, base, name="uncovered")
    with pytest.raises(ClipmemError, match=r"lacks 2 words of this run's captions: 'zebra', 'kiwi'"):
        pipeline.train_step(run, cfg, show_progress=False)
    assert not run.model_checkpoint("f").exists() and not any(run.checkpoints.glob("epoch_*.pt"))


def test_open_clips_full_vocabulary_is_kept(tmp_path, tiny_data, monkeypatch):
    full = tmp_path / "full" / "open_clip.pt"
    full.parent.mkdir()
    model = create_model(resolve_config("clipmem-tiny"), 5)
    torch.save({"epoch": 3, "name": "clipmem-tiny", "state_dict": model.state_dict()}, full)
    run, cfg = fine_tune(tmp_path, tiny_data, full)
    assert not cfg.train.compact_vocab
    seen = initial_weights(monkeypatch, run, cfg)
    assert json.loads(run.vocab.read_text()) == {"kept": None}
    for state in seen.values():
        assert state["token_embedding.weight"].shape[0] == 49408 and same(state, model.state_dict(), state)


def test_a_compacted_table_without_its_vocabulary_is_refused(tmp_path, tiny_data, base):
    alone = tmp_path / "alone" / "f.pt"
    alone.parent.mkdir()
    alone.write_bytes(base.read_bytes())
    rows = torch.load(base, weights_only=True)["state_dict"]["token_embedding.weight"].shape[0]
    with pytest.raises(ClipmemError, match=f"has {rows} rows, neither the model's full vocabulary .49,408. nor a "
                                           "clipmem run's compacted one .no vocab.json beside it."):
        fine_tune(tmp_path, tiny_data, alone)
    with pytest.raises(ClipmemError, match="does not fit the model architecture"):
        fine_tune(tmp_path, tiny_data, base, name="demo", model="clipmem-demo")


def test_fine_tuning_defaults_apply_where_the_command_line_sets_none(tmp_path, tiny_data, base):
    run, cfg = split_tiny_run(tmp_path / "defaults", tiny_data)
    tuned = TrainOverrides(pretrained=str(base)).apply(run.load_config()).train
    assert (tuned.lr, tuned.warmup_steps, tuned.epochs) == (2e-4, 10, 20) == tuple(FINE_TUNE_RECIPE.values())
    given = TrainOverrides(pretrained=str(base), lr=1e-3, warmup=0, epochs=3).apply(run.load_config()).train
    assert (given.lr, given.warmup_steps, given.epochs) == (1e-3, 0, 3)
    with pytest.raises(ClipmemError, match="give --pretrained"):
        TrainOverrides(lock_text=True).apply(run.load_config())


def test_a_model_config_with_other_normalisation_fine_tunes_with_it(tmp_path, tiny_data, base):
    """A checkpoint's config naming SigLIP's mean and std (0.5) is accepted, and its models carry that
    normalisation, which training and scoring follow (test_normalization.py)."""
    from clipmem.scoring.transform import Normalization, normalization_of

    config = tmp_path / "siglip-like.json"
    config.write_text(json.dumps({"model_cfg": resolve_config("clipmem-tiny"),
                                  "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    _, cfg = fine_tune(tmp_path, tiny_data, base, model=str(config))
    assert cfg.train.model == str(config)
    model = create_model(resolve_config(cfg.train.model), 0)
    assert normalization_of(model) == Normalization((0.5,) * 3, (0.5,) * 3)


def test_a_fine_tuning_run_resumes_exactly(tmp_path, tiny_data, base):
    """Stopped after epoch 1 of 2 and resumed, a fine-tuning run (text tower locked) ends on the weights of one
    trained straight through, and its summary names the base."""
    run, cfg = fine_tune(tmp_path, tiny_data, base, epochs=2, lock_text=True)
    pipeline.train_step(run, cfg, show_progress=False)
    straight = {name: read_state_dict(run.model_checkpoint(name)) for name in ("f", "g")}
    for path in (run.checkpoints / "epoch_2.pt", run.model_checkpoint("f"), run.model_checkpoint("g")):
        path.unlink()
    summary = pipeline.train_step(run, run.load_config(), resume=True, show_progress=False)
    for name in ("f", "g"):
        resumed = read_state_dict(run.model_checkpoint(name))
        assert same(resumed, straight[name], straight[name])
    assert summary["pretrained"] == {"path": str(base.resolve()), "sha256": file_sha256(base),
                                     "locks": {"lock_text": True}}


def test_the_documented_recipe_for_a_base_that_never_saw_the_runs_pairs(tmp_path, tiny_data):
    """docs/fine-tuning.md: a base trained on a synthetic set of another seed, then a fine-tuning run from it."""
    other = tmp_path / "synth7"
    assert invoke("synth", "--out", other, "--seed", "7", "--n", "900").exit_code == 0
    result = invoke("split", "--out", tmp_path / "base", "--dataset", "folder", "--data", other, "--seed", "7",
                    "--sizes", "600,120,120,60")
    assert result.exit_code == 0, result.output
    result = invoke("train", tmp_path / "base", "--seed", "7", "--epochs", "1", *TINY[:4], "--no-progress")
    assert result.exit_code == 0, result.output
    result = invoke("run", "--out", tmp_path / "ft", "--dataset", "folder", "--data", tiny_data, "--pretrained",
                    tmp_path / "base" / "f.pt", "--epochs", "1", "--views", "1", *TINY)
    assert result.exit_code == 0, result.output
    ft = RunDir(tmp_path / "ft")
    assert ft.is_finished()
    # ids are positions (syn-000002 names a pair of each set): the base never saw the run's pairs as no image of
    # its set is one of the run's
    digest = lambda folder: {hashlib.sha256(p.read_bytes()).digest() for p in folder.rglob("*.png")}  # noqa: E731
    assert not digest(other) & digest(tiny_data)
    assert json.loads((ft.path / "train_summary.json").read_text())["pretrained"]["sha256"] == \
        file_sha256(tmp_path / "base" / "f.pt")


def test_every_fold_model_starts_from_the_pretrained_weights(tmp_path, tiny_data, base, monkeypatch):
    from run_fixtures import tiny_run_config

    run = RunDir(tmp_path / "kfold")
    cfg = tiny_run_config(tiny_data, epochs=1)
    cfg.split = replace(cfg.split, scheme="kfold", folds=3)
    run.prepare_new(overwrite=False)
    pipeline.split_step(run, cfg)
    cfg = TrainOverrides(pretrained=str(base), epochs=1).apply(cfg)
    seen = initial_weights(monkeypatch, run, cfg)
    weights = read_state_dict(base)
    assert sorted(seen) == ["fold0@0", "fold1@0", "fold2@0"]
    assert all(same(state, weights, weights) for state in seen.values())
