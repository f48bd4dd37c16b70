import json

import pytest
import torch

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.models import (Vocabulary, apply_vocabulary, build_vocabulary, create_model, resolve_config, tokenize,
                                    with_vocabulary)


def test_builtin_and_open_clip_names_resolve():
    import open_clip

    assert "clipmem-tiny" in open_clip.list_models()
    assert resolve_config("clipmem-demo")["vision_cfg"]["image_size"] == 32
    assert resolve_config("ViT-B-32")["vision_cfg"]["patch_size"] == 32
    assert "layers" in resolve_config("RN50")["vision_cfg"]


def test_unknown_model_and_bad_json(tmp_path):
    with pytest.raises(ClipmemError, match="unknown model 'ViT-Z-99'"):
        resolve_config("ViT-Z-99")
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ClipmemError, match="lacks vision_cfg, text_cfg"):
        resolve_config(str(bad))


def test_same_seed_same_init_and_json_config(tmp_path):
    cfg = resolve_config("clipmem-tiny")
    a, b = create_model(cfg, seed=5), create_model(cfg, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model_cfg": cfg}))
    assert resolve_config(str(path)) == cfg


def test_compact_vocabulary_keeps_eot_largest_and_pooling_equal():
    tokenized = tokenize(["a red circle", "a blue square on the left"], context_length=20)
    tokens = tokenized.tokens
    assert tokenized.truncated == 0
    vocab = build_vocabulary(tokens.unique().tolist())
    compact = apply_vocabulary(tokens, vocab)
    # end-of-text stays the argmax, so open_clip's text pooling finds the same position
    assert torch.equal(compact.argmax(-1), tokens.argmax(-1))
    model = create_model(with_vocabulary(resolve_config("clipmem-tiny"), vocab), seed=0)
    assert model.encode_text(compact).shape == (2, 32)
    with pytest.raises(ClipmemError, match="outside the run's compacted vocabulary"):
        apply_vocabulary(tokenize(["a zebra"], 20).tokens, vocab)
    assert Vocabulary.from_json(vocab.to_json()) == vocab


def test_truncation_counted():
    assert tokenize(["word " * 30], context_length=10).truncated == 1
