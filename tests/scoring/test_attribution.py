import json

import numpy as np
import pandas as pd
import torch

from clipmem.scoring.attribution import attribute, capture_blocks, image_blocks, orthogonal_map, text_blocks
from clipmem.scoring.columns import LAYER_UNIT_COLUMNS
from clipmem.scoring.config import ScoreConfig
from clipmem.scoring.models import Vocabulary, create_model, resolve_config
from clipmem.scoring.pipeline import load_corpus
from clipmem.scoring.score import score_run
from clipmem.scoring.train import load_model_weights

RESNET_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
              "text_cfg": {"context_length": 20, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2}}


def _pooled_per_block(model, blocks, run_forward):
    with capture_blocks(blocks) as store:
        run_forward()
    return [torch.cat(parts) for parts in store]


def test_hooks_return_one_tensor_per_block_vit_and_resnet():
    vit = create_model(resolve_config("clipmem-demo"), 0)
    images = torch.randn(3, 3, 32, 32)
    pooled = _pooled_per_block(vit, image_blocks(vit), lambda: vit.encode_image(images))
    assert len(pooled) == 2 and all(p.shape == (3, 64) for p in pooled)
    resnet = create_model(RESNET_CFG, 0)
    blocks = image_blocks(resnet)
    assert len(blocks) == 4
    pooled = _pooled_per_block(resnet, blocks, lambda: resnet.encode_image(images))
    assert [p.shape[1] for p in pooled] == [32, 64, 128, 256] and all(p.shape[0] == 3 for p in pooled)
    tokens = torch.randint(1, 63, (3, 20))
    pooled = _pooled_per_block(resnet, text_blocks(resnet), lambda: resnet.encode_text(tokens))
    assert len(pooled) == 2 and all(p.shape == (3, 32) for p in pooled)


def test_orthogonal_map_recovers_a_known_rotation():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    source = torch.randn(200, 16, generator=gen)
    w = orthogonal_map(source, source @ q)
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)
    assert torch.allclose(w, q, atol=1e-4)


def test_tower_scores_zero_when_f_and_g_are_one_model(tiny_run):
    run, cfg = tiny_run
    vocab = Vocabulary.from_json(json.loads(run.vocab.read_text()))
    corpus, vocab, model_cfg = load_corpus(run, cfg, vocab)
    model = create_model(model_cfg, 0).eval()
    load_model_weights(model, run.model_checkpoint("f"))
    models = {"f": model, "g": model}
    score_cfg = ScoreConfig(views=2)
    result = score_run(models, corpus, score_cfg, cfg.train, torch.device("cpu"))
    frame, layers, curves = attribute(models, corpus, result, score_cfg, cfg.train, 20, vocab, torch.device("cpu"),
                                      top_k_curves=5)
    for col in ("mem_image_raw", "mem_text_raw", "mem_swap_text", "mem_swap_image"):
        assert np.abs(frame[col]).max() < 1e-5, col
    assert np.abs(layers["layer_mem"]).max() < 1e-5
    assert set(curves["sample_id"]) <= set(frame["sample_id"]) and curves["sample_id"].nunique() == 5


def test_run_outputs_tower_columns_and_layer_tables(tiny_run):
    run, cfg = tiny_run
    scores = pd.read_parquet(run.scores)
    for col in ("mem_image", "mem_text", "mem_image_raw", "mem_text_raw", "mem_swap_text", "mem_swap_image"):
        assert col in scores and scores[col].notna().all()
    assert scores["mem_image"].min() == 0 and scores["mem_text"].max() == 1
    layers = pd.read_parquet(run.layers)
    n_blocks = {"image": 1, "text": 1}  # clipmem-tiny
    for tower, count in n_blocks.items():
        rows = layers[(layers["tower"] == tower) & (layers["truth"] == "all")]
        assert rows["layer"].tolist() == list(range(1, count + 1))
    assert {"all", "clean", "swapped"} <= set(layers["truth"])
    # UnitMem per block on the "all" rows: each model's in [0, 1], their mean beside them; null per truth group
    overall = layers[layers["truth"] == "all"]
    for name in LAYER_UNIT_COLUMNS:
        assert overall[name].between(0, 1).all(), name
    np.testing.assert_allclose(overall["unit_mem"], (overall["unit_mem_f"] + overall["unit_mem_g"]) / 2, atol=1e-12)
    assert layers.loc[layers["truth"] != "all", list(LAYER_UNIT_COLUMNS)].isna().all().all()
    curves = pd.read_parquet(run.layer_curves)
    top = scores.nlargest(cfg.score.layer_curves_top_k, "clipmem")["sample_id"]
    assert set(curves["sample_id"]) == set(top)


def test_tower_similarities_equal_view_by_view_encoding(tiny_run):
    """The scorer encodes each distinct text view once and augments views batch by batch; encoding every
    view on its own, in one batch, with hand-pooled block outputs, must give the same cosines."""
    from clipmem.scoring.attribution import draw_tower_views, tower_similarities
    from clipmem.scoring.score import scored_rows
    from clipmem.scoring.transform import augment

    run, cfg = tiny_run
    corpus, vocab, model_cfg = load_corpus(run, cfg, Vocabulary.from_json(json.loads(run.vocab.read_text())))
    model = create_model(model_cfg, 0).eval()
    rows = scored_rows(corpus)[:40]
    score_cfg = ScoreConfig(views=3, batch_size=16)
    views = draw_tower_views(corpus, rows, score_cfg, cfg.train, 20, vocab)
    tokens = torch.cat(views.text_tokens)
    assert len(torch.unique(tokens, dim=0)) < len(tokens)  # repeated text views, encoded once by the scorer
    got = tower_similarities(model, corpus, rows, views, score_cfg, torch.device("cpu"), layers=True)

    def encode_with_blocks(blocks, forward, inputs, mask=None):
        outputs = []
        handles = [b.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for b in blocks]
        with torch.inference_mode():
            final = forward(inputs, normalize=True)
        for h in handles:
            h.remove()
        if mask is None:
            return final, [o.mean(dim=1) for o in outputs]
        m = mask[:, :, None].float()
        return final, [(o * m).sum(1) / m.sum(1) for o in outputs]

    pixels = corpus.pixels[rows].repeat_interleave(score_cfg.views, 0)
    image = [encode_with_blocks(image_blocks(model), model.encode_image, augment(pixels, p, views.max_shift))
             for p in views.image_params]
    text = [encode_with_blocks(text_blocks(model), model.encode_text, t, t != 0) for t in views.text_tokens]
    for tower, pair in (("image", image), ("text", text)):
        (final_a, blocks_a), (final_b, blocks_b) = pair
        expected = (final_a * final_b).sum(-1).view(len(rows), score_cfg.views)
        torch.testing.assert_close(got[tower], expected, atol=1e-5, rtol=0)
        expected_layers = torch.stack([torch.nn.functional.cosine_similarity(a, b, dim=-1)
                                       for a, b in zip(blocks_a, blocks_b)]).view(-1, len(rows), score_cfg.views)
        torch.testing.assert_close(got[f"{tower}_layers"], expected_layers, atol=1e-5, rtol=0)
