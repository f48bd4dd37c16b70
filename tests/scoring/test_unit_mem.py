"""UnitMem (docs/layers.md): the formula on activation matrices with known answers, the units the hooks read
(checked against the blocks' MLPs computed by hand), and its aggregation into layers.parquet's columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from constructed import AUGMENT, CONTEXT, SCORE, VOCAB, base_model, make_corpus

from clipmem.scoring.attribution import (block_unit_mem, capture_unit_sums, draw_tower_views, image_blocks,
                                         layer_tables, text_blocks, tower_scores, unit_key, unit_mem, unit_modules)
from clipmem.scoring.columns import LAYER_UNIT_COLUMNS
from clipmem.scoring.models import create_model
from clipmem.scoring.score import score_run, scored_rows
from clipmem.scoring.transform import augment

CPU = torch.device("cpu")


def test_unit_mem_known_answers():
    """Per unit (column), over four samples (rows):
    - fires on one sample only: mu_max 2, mu_-max 0 -> 1;
    - the same on every sample: (3 - 3) / (3 + 3) = 0;
    - 4 on one sample, 1 on the rest: (4 - 1) / (4 + 1) = 0.6;
    - GELU-like negatives count as 0: [0.5, 0.1, 0, 0] -> mu_-max 0.1 / 3, (0.5 - 1/30) / (0.5 + 1/30) = 0.875;
    - two samples tie at the top: mu_-max is the mean of the other three (3, 0, 0) = 1 -> (3 - 1) / (3 + 1) = 0.5;
    - silent everywhere (all below 0): selective to no sample -> 0."""
    acts = np.array([[2.0, 3.0, 4.0, -0.1, 3.0, -0.2],
                     [0.0, 3.0, 1.0, 0.5, 3.0, -0.1],
                     [0.0, 3.0, 1.0, -0.2, 0.0, -0.3],
                     [0.0, 3.0, 1.0, 0.1, 0.0, -0.1]])
    np.testing.assert_allclose(unit_mem(acts), [1.0, 0.0, 0.6, 0.875, 0.5, 0.0], atol=1e-12)


def test_unit_mem_needs_two_samples():
    with pytest.raises(ValueError, match="at least two samples, got shape \\(1, 3\\)"):
        unit_mem(np.ones((1, 3)))


def _hand_units(model, blocks, inputs, forward, mask=None) -> list[torch.Tensor]:
    """Each block's MLP hidden activations computed by hand from the block's ln_2 output (the MLP's input):
    GELU(c_fc(x)), averaged over the (real) tokens."""
    ln_out = [[] for _ in blocks]
    handles = [b.ln_2.register_forward_hook(lambda _m, _i, out, k=k: ln_out[k].append(out))
               for k, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            forward(inputs)
    finally:
        for h in handles:
            h.remove()
    out = []
    for block, (x,) in zip(blocks, ln_out):
        hidden = F.gelu(x @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias)
        if mask is None:
            out.append(hidden.mean(1))
        else:
            m = mask[:, :, None].float()
            out.append((hidden * m).sum(1) / m.sum(1))
    return out


def test_units_are_the_mlp_hidden_activations_under_the_model_that_saw_the_pair():
    """Two different models, augmented views: each pair's unit activations at every block of both towers are the
    MLP hidden units (GELU(c_fc(ln_2 x)), computed here by hand) averaged over the pair's tokens and its 2 x 3
    views, under f for S_C pairs and g for S_I pairs."""
    corpus = make_corpus()
    models = {"f": base_model(0), "g": base_model(1)}
    result = score_run(models, corpus, SCORE, AUGMENT, CPU)
    _, per_pair = tower_scores(models, corpus, result, SCORE, AUGMENT, CONTEXT, VOCAB, CPU)
    rows = scored_rows(corpus)
    views = draw_tower_views(corpus, rows, SCORE, AUGMENT, CONTEXT, VOCAB)
    n, k = len(rows), SCORE.views
    pixels = corpus.pixels[rows].repeat_interleave(k, 0)
    expected = {}
    for name, model in models.items():
        image = [_hand_units(model, image_blocks(model), augment(pixels, p, views.max_shift), model.encode_image)
                 for p in views.image_params]
        text = [_hand_units(model, text_blocks(model), t, model.encode_text, mask=t != 0) for t in views.text_tokens]
        expected[name] = {tower: [(a + b).view(n, k, -1).mean(1) / 2 for a, b in zip(*sides)]
                          for tower, sides in (("image", image), ("text", text))}
    seen_f = torch.tensor([corpus.split[int(r)] == "candidate" for r in rows])
    assert 0 < seen_f.sum() < n
    widths = {"image": 4 * 32, "text": 4 * 48}  # mlp_ratio 4 x the towers' widths
    for tower in ("image", "text"):
        for layer in (1, 2):
            got = torch.from_numpy(per_pair[unit_key(tower, layer)]).T
            want = torch.where(seen_f[:, None], expected["f"][tower][layer - 1], expected["g"][tower][layer - 1])
            assert got.shape == (n, widths[tower])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{tower} block {layer}")
            # the choice of model matters: g's activations on f's pairs differ
            assert (got[seen_f] - expected["g"][tower][layer - 1][seen_f]).abs().max() > 1e-3


def test_resnet_stage_units_are_its_output_channels_spatially_averaged():
    """A ModifiedResNet stage ends in a ReLU: its units are its output channels, averaged over the feature map;
    three rows of two consecutive inputs each are summed per row."""
    resnet = create_model({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
                           "text_cfg": {"context_length": 20, "vocab_size": 64, "width": 32, "heads": 2,
                                        "layers": 2}}, 0).eval()
    stages = image_blocks(resnet)
    assert unit_modules(stages) == stages
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outputs = []
    handles = [s.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for s in stages]
    with torch.no_grad(), capture_unit_sums(stages, n_rows=3, repeat=2) as sums:
        resnet.encode_image(images)
    for h in handles:
        h.remove()
    assert [s.shape for s in sums] == [(3, 32), (3, 64), (3, 128), (3, 256)]
    for got, out in zip(sums, outputs):
        assert out.min() >= 0
        torch.testing.assert_close(got, out.mean(dim=(2, 3)).view(3, 2, -1).sum(1), atol=1e-5, rtol=0)


def test_a_block_without_known_units_leaves_unit_mem_out():
    assert unit_modules([torch.nn.Linear(2, 2)]) is None


def test_layer_tables_give_unit_mem_per_model_over_the_pairs_it_trained_on():
    """Two units per block, f's pairs a-c (S_C), g's pairs d-f (S_I). Block 1: f's unit 1 fires on one pair only
    (1), its unit 2 alike on all (0) -> 0.5; g's unit 1 [4, 1, 1] -> 0.6, unit 2 [2, 2, 0] -> (2 - 1) / (2 + 1)
    = 1/3 -> 0.4667. Block 2: every unit equal on all pairs -> 0. unit_mem is the mean of f's and g's, on the
    truth "all" rows; per truth group it is not defined (null)."""
    frame = pd.DataFrame({"sample_id": list("abcdef"), "truth": ["clean", "swapped", "clean"] * 2,
                          "seen_by": list("fffggg"), "clipmem": np.linspace(0, 1, 6)})
    layer_mem = np.zeros((2, 6))
    per_pair = {"image": layer_mem, "text": layer_mem,
                unit_key("image", 1): np.array([[5.0, 0.0, 0.0, 4.0, 1.0, 1.0],
                                                [7.0, 7.0, 7.0, 2.0, 2.0, 0.0]]),
                unit_key("image", 2): np.full((2, 6), 3.0)}
    layers, _ = layer_tables(frame, per_pair, top_k_curves=1)
    image = layers[(layers["tower"] == "image") & (layers["truth"] == "all")].set_index("layer")
    np.testing.assert_allclose(image["unit_mem_f"], [0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(image["unit_mem_g"], [(0.6 + 1 / 3) / 2, 0.0], atol=1e-12)
    np.testing.assert_allclose(image["unit_mem"], [(0.5 + (0.6 + 1 / 3) / 2) / 2, 0.0], atol=1e-12)
    assert layers.loc[layers["truth"] != "all", list(LAYER_UNIT_COLUMNS)].isna().all().all()
    assert layers.loc[layers["tower"] == "text", list(LAYER_UNIT_COLUMNS)].isna().all().all()  # no text units given
    # a mean over replicas averages unrelated models' units: not defined
    replicas = block_unit_mem(frame.assign(clipmem_raw_sd=0.1), per_pair, "image", 2)
    assert all(np.isnan(row[c]) for row in replicas for c in LAYER_UNIT_COLUMNS)


def test_unit_mem_at_two_samples_and_in_double_precision():
    """Two samples are enough: [1, 0] -> (1 - 0) / (1 + 0) = 1. float32 activations are computed in float64:
    with mu_max 2^24 and the rest 1 the exact answer (2^24 - 1) / (2^24 + 1) needs the 25th bit."""
    np.testing.assert_allclose(unit_mem(np.array([[1.0], [0.0]])), [1.0], atol=1e-12)
    big = np.array([[2.0 ** 24], [1.0], [1.0]], dtype=np.float32)
    np.testing.assert_allclose(unit_mem(big), [(2 ** 24 - 1) / (2 ** 24 + 1)], rtol=1e-12, atol=0)


def test_block_unit_mem_per_block_with_gaps_and_few_pairs():
    """Three blocks, block 2 without activations (NaN row) between two with: every block keeps its place. f has
    exactly two pairs (its UnitMem is defined), g one (not defined: unit_mem is then f's alone). A one-block tower
    is read too."""
    frame = pd.DataFrame({"sample_id": list("abc"), "seen_by": list("ffg"), "clipmem": [0.1, 0.2, 0.3]})
    acts = np.array([[2.0, 0.0, 9.0]])  # f's pairs a, b: [2, 0] -> 1
    rows = block_unit_mem(frame, {unit_key("image", 1): acts, unit_key("image", 3): acts * 0 + 1}, "image", 3)
    assert len(rows) == 3
    assert rows[0] == {"unit_mem": 1.0, "unit_mem_f": 1.0, "unit_mem_g": rows[0]["unit_mem_g"]}
    assert np.isnan(rows[0]["unit_mem_g"])
    assert all(np.isnan(rows[1][c]) for c in LAYER_UNIT_COLUMNS)
    assert rows[2]["unit_mem_f"] == 0.0 and rows[2]["unit_mem"] == 0.0  # equal on both of f's pairs
    one = block_unit_mem(frame, {unit_key("text", 1): acts}, "text", 1)
    assert one[0]["unit_mem_f"] == 1.0


def test_timm_blocks_units_are_their_mlp_act():
    """timm's transformer blocks name the MLP's activation `act` (open_clip's: `gelu`)."""
    act = torch.nn.GELU()
    block = torch.nn.Module()
    block.mlp = torch.nn.Module()
    block.mlp.act = act
    assert unit_modules([block]) == [act]
