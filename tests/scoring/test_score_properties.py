"""Known answers for every score the product shows, on constructed models (no training; see constructed.py).

- f and g with the same towers but text projections fitted to align exactly their own training pairs: the
  model that saw a pair aligns it with cosine 1, so CLIPMem, the contrastive score, the text-tower score and
  the text swap drop are positive with values computed here from the embeddings directly; the image tower
  and the image swap drop are 0.
- g = f with its image (or text) tower cut: only that tower's score moves, with the sign of "seen - unseen".
- g = f followed by an orthogonal map: every score is 0 (the Procrustes fit undoes the rotation).
- Two blocks per tower: LayerMem of a block no model difference reaches is 0, ΔLayerMem is the difference of
  consecutive LayerMem, and a scored part of the pairs gets the values the whole gives it.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from constructed import (
    AUGMENT,
    CONTEXT,
    NO_AUGMENT,
    SCORE,
    VOCAB,
    base_model,
    clean_image,
    cos,
    make_corpus,
    memorizing,
    memorizing_images,
    random_orthogonal,
    rotated,
    rows_of,
    text,
    word_corpus,
)

from clipmem.scoring.attribution import attribute, draw_tower_views, layer_tables, tower_scores
from clipmem.scoring.columns import LAYER_COLUMNS, LAYER_INTERVAL_COLUMNS, LAYER_UNIT_COLUMNS
from clipmem.scoring.score import reference_set, score_run, scored_rows, view_draws
from clipmem.scoring.transform import augment

CPU = torch.device("cpu")


def score(models, corpus, train_cfg=NO_AUGMENT, layers=True):
    result = score_run(models, corpus, SCORE, train_cfg, CPU)
    frame, layer_frame, _ = attribute(models, corpus, result, SCORE, train_cfg, CONTEXT, VOCAB, CPU, layers=layers)
    return result, frame, layer_frame


@pytest.fixture(scope="module")
def memorized():
    """f aligns exactly S_S ∪ S_C, g exactly S_S ∪ S_I; same image tower. (corpus, f, g, frame, layers)."""
    corpus = make_corpus()
    base = base_model()
    f = memorizing(base, corpus, ("shared", "candidate"))
    g = memorizing(base, corpus, ("shared", "independent"))
    _, frame, layers = score({"f": f, "g": g}, corpus)
    return corpus, f, g, frame, layers


def seen_unseen(corpus, f, g):
    """Per scored pair (frame order): the model that saw it and the one that did not."""
    return [(f, g) if corpus.split[int(r)] == "candidate" else (g, f) for r in scored_rows(corpus)]


def expected_alignment(corpus, model, row, captions):
    """A(h, x) with clean views: mean over the drawn captions of cos(image, caption)."""
    return float(cos(clean_image(model, corpus, torch.tensor([row])), text(model, corpus, captions)).mean())


def test_memorized_pairs_have_the_alignment_scores_computed_by_hand(memorized):
    corpus, f, g, frame, _ = memorized
    rows = scored_rows(corpus)
    _, captions = view_draws(corpus, rows, SCORE, NO_AUGMENT)
    captions = captions.view(len(rows), SCORE.views)
    with_, without = [], []
    for i, (seen, unseen) in enumerate(seen_unseen(corpus, f, g)):
        with_.append(expected_alignment(corpus, seen, int(rows[i]), captions[i]))
        without.append(expected_alignment(corpus, unseen, int(rows[i]), captions[i]))
    np.testing.assert_allclose(with_, 1, atol=1e-5)  # the construction: the seen model aligns the pair exactly
    np.testing.assert_allclose(frame["align_f"], with_, atol=1e-5)
    np.testing.assert_allclose(frame["align_g"], without, atol=1e-5)
    np.testing.assert_allclose(frame["clipmem_raw"], np.subtract(with_, without), atol=1e-5)
    # every pair is memorized: positive raw score, and the scaled score ranks as the raw one
    assert (frame["clipmem_raw"] > 0.05).all()
    assert frame["clipmem"].idxmax() == frame["clipmem_raw"].idxmax()
    assert frame["clipmem"].idxmin() == frame["clipmem_raw"].idxmin()


def test_memorized_pairs_have_the_contrastive_score_computed_by_hand(memorized):
    """log-softmax of the pair's caption among the S_E reference captions, with minus without: positive."""
    corpus, f, g, frame, _ = memorized
    rows = scored_rows(corpus)
    _, captions = view_draws(corpus, rows, SCORE, NO_AUGMENT)
    captions = captions.view(len(rows), SCORE.views)
    refs = corpus.caption_index[corpus.rows("extra")].flatten()  # all 12 S_E captions (fewer than 256)
    assert torch.equal(reference_set(corpus, SCORE.reference_captions, SCORE.seed), refs.sort().values)

    def contrastive(model, row, caps):
        scale = float(model.logit_scale.detach().exp())
        image = clean_image(model, corpus, torch.tensor([row]))
        positive = scale * cos(image, text(model, corpus, caps))                      # (views,)
        negatives = scale * (image @ text(model, corpus, refs).T).expand(len(caps), -1)  # (views, refs)
        logits = torch.cat([positive[:, None], negatives], dim=1)
        return float(torch.log_softmax(logits, dim=1)[:, 0].mean())

    expected_f, expected_g = [], []
    for i, (seen, unseen) in enumerate(seen_unseen(corpus, f, g)):
        expected_f.append(contrastive(seen, int(rows[i]), captions[i]))
        expected_g.append(contrastive(unseen, int(rows[i]), captions[i]))
    np.testing.assert_allclose(frame["contrastive_f"], expected_f, atol=1e-4)
    np.testing.assert_allclose(frame["contrastive_g"], expected_g, atol=1e-4)
    np.testing.assert_allclose(frame["clipmem_contrastive_raw"], np.subtract(expected_f, expected_g), atol=1e-4)
    assert (frame["clipmem_contrastive_raw"] > 0.5).all()


def test_memorized_text_projection_shows_in_the_text_tower_only(memorized):
    """Image towers are identical: mem_image is 0. The seen model maps both captions of the pair to one point
    (cosine 1); the unseen one gives them the cosine computed here: mem_text = 1 - that cosine > 0."""
    corpus, f, g, frame, _ = memorized
    rows = scored_rows(corpus)
    expected = [1 - float(cos(*text(unseen, corpus, corpus.caption_index[int(rows[i])])))
                for i, (_, unseen) in enumerate(seen_unseen(corpus, f, g))]
    np.testing.assert_allclose(frame["mem_text_raw"], expected, atol=1e-5)
    assert (frame["mem_text_raw"] > 0.01).all()
    np.testing.assert_array_equal(frame["mem_image_raw"], 0)
    np.testing.assert_array_equal(frame["mem_image"], 0)  # a constant raw score scales to 0
    assert frame["mem_text"].max() == pytest.approx(1) and frame["mem_text"].min() == 0


def test_swap_drop_is_the_text_towers_share(memorized):
    """The Procrustes maps fitted on S_S are the identity here (both models place S_S alike), so swapping in the
    unseen text tower drops the alignment from 1 to the unseen model's: mem_swap_text = CLIPMem raw > 0;
    swapping the (identical) image tower drops nothing."""
    _, _, _, frame, _ = memorized
    np.testing.assert_allclose(frame["mem_swap_text"], 1 - frame["align_g"], atol=1e-5)
    assert (frame["mem_swap_text"] > 0.05).all()
    np.testing.assert_allclose(frame["mem_swap_image"], 0, atol=1e-5)


def test_swap_drop_is_the_image_towers_share_when_the_image_projection_memorizes():
    """The mirror case: f and g share the text tower and each image projection maps its own pairs' images onto
    their caption (one text per pair). Alignment with the pair is 1, the image swap drop is 1 minus the unseen
    model's alignment (the CLIPMem raw score, > 0) and the text swap drop is 0."""
    corpus = make_corpus(one_text=True)
    base = base_model()
    f = memorizing_images(base, corpus, ("shared", "candidate"))
    g = memorizing_images(base, corpus, ("shared", "independent"))
    _, frame, _ = score({"f": f, "g": g}, corpus, layers=False)
    np.testing.assert_allclose(frame["align_f"], 1, atol=1e-5)
    assert (frame["clipmem_raw"] > 0.05).all()
    np.testing.assert_allclose(frame["mem_swap_image"], frame["clipmem_raw"], atol=1e-5)
    np.testing.assert_allclose(frame["mem_swap_text"], 0, atol=1e-5)
    np.testing.assert_array_equal(frame["mem_text_raw"], 0)  # identical text towers


def test_layer_mem_of_a_projection_only_difference_is_zero(memorized):
    """The models differ after the last block: every block's LayerMem is 0 in both towers."""
    _, _, _, _, layers = memorized
    assert len(layers[(layers["truth"] == "all")]) == 4  # two blocks per tower
    np.testing.assert_allclose(layers["layer_mem"], 0, atol=1e-6)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_cutting_one_tower_of_g_moves_that_towers_score_only(tower):
    """g = f with one tower's projection zeroed (its embeddings are 0, so its view cosine is 0). The other
    tower is identical: its score is exactly 0. The cut tower's score is f's view cosine, seen minus unseen:
    positive on S_C (f saw them), negative on S_I. Text views are two different captions; image views are
    two augmentations."""
    corpus = make_corpus()
    f = base_model()
    g = copy.deepcopy(f)
    with torch.no_grad():
        (g.visual.proj if tower == "image" else g.text_projection).zero_()
    _, frame, _ = score({"f": f, "g": g}, corpus, train_cfg=AUGMENT, layers=False)
    other = "text" if tower == "image" else "image"
    np.testing.assert_array_equal(frame[f"mem_{other}_raw"], 0)
    cand = frame["split"] == "candidate"
    assert (frame.loc[cand, f"mem_{tower}_raw"] > 0.1).all()
    assert (frame.loc[~cand, f"mem_{tower}_raw"] < -0.1).all()
    rows = scored_rows(corpus)
    if tower == "text":  # f's cosine of the pair's two captions, computed here
        cosines = np.array([float(cos(*text(f, corpus, corpus.caption_index[int(r)]))) for r in rows])
    else:  # f's cosine of the two drawn augmentations of each image, averaged over the views, computed here
        views = draw_tower_views(corpus, rows, SCORE, AUGMENT, CONTEXT, VOCAB)
        pixels = corpus.pixels[rows].repeat_interleave(SCORE.views, dim=0)
        with torch.no_grad():
            a, b = (f.encode_image(augment(pixels, p, views.max_shift), normalize=True) for p in views.image_params)
        cosines = cos(a, b).view(len(rows), SCORE.views).mean(1).numpy()
        assert (cosines < 0.999).all()  # the two views differ
    np.testing.assert_allclose(frame[f"mem_{tower}_raw"], np.where(cand, cosines, -cosines), atol=1e-5)


def test_a_rotation_of_f_has_no_memorization_anywhere():
    """g = f followed by an orthogonal map on both towers: cosines are unchanged and the swap check's
    Procrustes fit on S_S recovers the map, so every score, including both swap drops, is 0."""
    corpus = make_corpus()
    f = base_model()
    g = rotated(f, random_orthogonal(8, seed=5))
    assert not torch.allclose(clean_image(f, corpus, rows_of(corpus, "shared")),
                              clean_image(g, corpus, rows_of(corpus, "shared")), atol=0.1)
    _, frame, layers = score({"f": f, "g": g}, corpus, train_cfg=AUGMENT)
    for col in ("clipmem_raw", "clipmem_contrastive_raw", "mem_image_raw", "mem_text_raw", "mem_swap_text",
                "mem_swap_image"):
        np.testing.assert_allclose(frame[col], 0, atol=2e-5, err_msg=col)
    np.testing.assert_allclose(layers["layer_mem"], 0, atol=1e-6)


def test_swapping_the_roles_of_f_and_g_negates_every_raw_score(memorized):
    corpus, f, g, frame, _ = memorized
    _, swapped, _ = score({"f": g, "g": f}, corpus, layers=False)
    for col in ("clipmem_raw", "clipmem_contrastive_raw", "mem_image_raw", "mem_text_raw"):
        np.testing.assert_allclose(swapped[col], -frame[col], atol=1e-5, err_msg=col)


# ---- LayerMem and ΔLayerMem


def test_layer_tables_give_mean_layer_mem_and_its_increase_per_block():
    """Hand-computed means per tower, block and truth tag over three blocks; ΔLayerMem of block 1 is its
    LayerMem, of block b > 1 LayerMem(b) - LayerMem(b - 1)."""
    frame = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "truth": ["clean", "clean", "swapped", "swapped"],
                          "clipmem": [0.0, 0.2, 1.0, 0.6]})
    per_pair = {"image": np.array([[0.1, 0.3, 0.2, 0.4],     # block 1: clean 0.2, swapped 0.3, all 0.25
                                   [0.2, 0.2, 0.9, 0.7],     # block 2: clean 0.2, swapped 0.8, all 0.5
                                   [0.0, 0.2, 0.5, 0.5]]),   # block 3: clean 0.1, swapped 0.5, all 0.3
                "text": np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0], [6.0, 6.0, 6.0, 6.0]])}
    layers, curves = layer_tables(frame, per_pair, top_k_curves=2)
    table = layers.set_index(["tower", "truth", "layer"])
    expected = {("image", "clean"): ([0.2, 0.2, 0.1], [0.2, 0.0, -0.1]),
                ("image", "swapped"): ([0.3, 0.8, 0.5], [0.3, 0.5, -0.3]),
                ("image", "all"): ([0.25, 0.5, 0.3], [0.25, 0.25, -0.2]),
                ("text", "all"): ([1.0, 3.0, 6.0], [1.0, 2.0, 3.0])}
    for (tower, truth), (layer_mem, delta) in expected.items():
        rows = table.loc[(tower, truth)].sort_index()
        np.testing.assert_allclose(rows["layer_mem"], layer_mem, atol=1e-12, err_msg=f"{tower} {truth}")
        np.testing.assert_allclose(rows["delta_layer_mem"], delta, atol=1e-12, err_msg=f"{tower} {truth}")
    assert table.loc[("image", "swapped", 1), "pairs"] == 2
    assert list(layers.columns) == [*LAYER_COLUMNS, *LAYER_INTERVAL_COLUMNS, *LAYER_UNIT_COLUMNS]
    assert layers[list(LAYER_UNIT_COLUMNS)].isna().all().all()  # no unit activations given: no UnitMem
    assert layers["layer"].tolist() == [1, 2, 3] * 6  # two towers, three groups (all, clean, swapped)
    # bootstrap intervals: reproducible, around the mean; block 1's increase is its LayerMem, resampled alike
    again, _ = layer_tables(frame, per_pair, top_k_curves=2)
    pd.testing.assert_frame_equal(again, layers)
    assert (layers["layer_mem_lo"] <= layers["layer_mem"] + 1e-12).all()
    assert (layers["layer_mem"] <= layers["layer_mem_hi"] + 1e-12).all()
    first = layers[layers["layer"] == 1]
    np.testing.assert_allclose(first["delta_layer_mem_lo"], first["layer_mem_lo"], atol=1e-12)
    np.testing.assert_allclose(first["delta_layer_mem_hi"], first["layer_mem_hi"], atol=1e-12)
    # per-pair curves of the two most memorized pairs (c, then d)
    image = curves[curves["tower"] == "image"]
    assert image["sample_id"].tolist() == ["c"] * 3 + ["d"] * 3 and image["layer"].tolist() == [1, 2, 3] * 2
    np.testing.assert_allclose(image["layer_mem"], [0.2, 0.9, 0.5, 0.4, 0.7, 0.5])


@pytest.fixture(scope="module")
def first_text_block_differs():
    """g = f with the MLP of its first text block changed: text LayerMem moves at both blocks, image not."""
    corpus = make_corpus()
    f = base_model()
    g = copy.deepcopy(f)
    with torch.no_grad():
        fc = g.transformer.resblocks[0].mlp.c_fc.weight
        fc.add_(torch.randn(fc.shape, generator=torch.Generator().manual_seed(1)) * fc.std() * 2)
    _, frame, layers = score({"f": f, "g": g}, corpus)
    return corpus, {"f": f, "g": g}, frame, layers


def test_layer_mem_of_two_blocks_moves_only_where_the_models_differ(first_text_block_differs):
    _, _, frame, layers = first_text_block_differs
    overall = layers[layers["truth"] == "all"].set_index(["tower", "layer"])
    np.testing.assert_allclose(overall.loc["image", "layer_mem"], 0, atol=1e-6)
    np.testing.assert_array_equal(frame["mem_image_raw"], 0)
    text_mem = overall.loc["text", "layer_mem"].sort_index().to_numpy()
    assert len(text_mem) == 2 and (np.abs(text_mem) > 1e-3).all()
    assert abs(text_mem[1] - text_mem[0]) > 1e-3  # a ΔLayerMem that returned LayerMem would differ
    delta = overall.loc["text", "delta_layer_mem"].sort_index().to_numpy()
    np.testing.assert_allclose(delta, [text_mem[0], text_mem[1] - text_mem[0]], atol=1e-9)
    assert np.abs(frame["mem_text_raw"]).max() > 1e-3


def test_a_part_of_the_scored_pairs_gets_the_whole_runs_layer_values(first_text_block_differs):
    """Scoring pairs 0-2 and 3-7 as two parts gives the single pass's per-pair scores and, merged, the same
    LayerMem, ΔLayerMem and UnitMem tables (two blocks per tower); UnitMem, a max over each model's pairs, is
    computed only after the merge."""
    corpus, models, frame, layers = first_text_block_differs
    frames, per_pair = [], {}
    for part in (slice(0, 3), slice(3, 8)):
        res = score_run(models, corpus, SCORE, NO_AUGMENT, CPU, part=part, embed=False)
        part_frame, part_layers = tower_scores(models, corpus, res, SCORE, NO_AUGMENT, CONTEXT, VOCAB, CPU)
        frames.append(part_frame)
        for key, values in part_layers.items():
            per_pair.setdefault(key, []).append(values)
    merged = pd.concat(frames, ignore_index=True)
    for col in ("clipmem_raw", "clipmem_contrastive_raw", "mem_image_raw", "mem_text_raw", "mem_swap_text",
                "mem_swap_image"):
        np.testing.assert_allclose(merged[col], frame[col], atol=1e-5, err_msg=col)
    merged_layers, _ = layer_tables(frame, {t: np.concatenate(v, axis=1) for t, v in per_pair.items()})
    for col in ("layer_mem", "delta_layer_mem", *LAYER_UNIT_COLUMNS):
        np.testing.assert_allclose(merged_layers[col], layers[col], atol=1e-6, err_msg=col)
    assert layers.loc[layers["truth"] == "all", "unit_mem"].notna().all()
    assert (np.abs(layers.loc[layers["tower"] == "text", "delta_layer_mem"]) > 1e-4).all()


@torch.no_grad()
def pooled_block_outputs(blocks, forward, mask=None) -> list[torch.Tensor]:
    """Each block's output (read with this test's own hooks), averaged over the tokens (the real ones where a
    token mask is given)."""
    outputs = [[] for _ in blocks]
    handles = [block.register_forward_hook(lambda _m, _i, out, k=k: outputs[k].append(out))
               for k, block in enumerate(blocks)]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    if mask is None:
        return [out.mean(1) for (out,) in outputs]
    weights = mask[:, :, None].float()
    return [(out * weights).sum(1) / weights.sum(1) for (out,) in outputs]


def test_layer_mem_per_pair_is_the_block_outputs_view_cosine_seen_minus_unseen():
    """g = f with the first image and the first text block changed. Each pair's LayerMem at block b is the
    cosine between the two views' token-averaged block-b outputs (padding left out for text) under the model
    that saw the pair minus under the one that did not, averaged over the views: computed here from the blocks'
    outputs, for every scored pair (the curves hold them all) and as the means per block."""
    corpus = make_corpus()
    f = base_model()
    g = copy.deepcopy(f)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in (g.transformer.resblocks[0], g.visual.transformer.resblocks[0]):
            fc = block.mlp.c_fc.weight
            fc.add_(torch.randn(fc.shape, generator=gen) * fc.std() * 2)
    result = score_run({"f": f, "g": g}, corpus, SCORE, AUGMENT, CPU)
    _, layers, curves = attribute({"f": f, "g": g}, corpus, result, SCORE, AUGMENT, CONTEXT, VOCAB, CPU)
    rows = scored_rows(corpus)
    n = SCORE.views
    views = draw_tower_views(corpus, rows, SCORE, AUGMENT, CONTEXT, VOCAB)
    pixels = corpus.pixels[rows].repeat_interleave(n, dim=0)

    def view_cosines(model, tower):  # (blocks, pairs): mean over the views of the two views' cosine
        if tower == "image":
            pooled = [pooled_block_outputs(model.visual.transformer.resblocks,
                                           lambda p=p: model.encode_image(augment(pixels, p, views.max_shift)))
                      for p in views.image_params]
            per_view = [cos(a, b).view(len(rows), n) for a, b in zip(*pooled)]
        else:  # a pair's two text views are its two captions (the cosine does not depend on their order)
            tokens = corpus.tokens[corpus.caption_index[rows]]
            pooled = [pooled_block_outputs(model.transformer.resblocks, lambda t=t: model.encode_text(t), t != 0)
                      for t in (tokens[:, 0], tokens[:, 1])]
            per_view = [cos(a, b)[:, None].expand(len(rows), n) for a, b in zip(*pooled)]
        return torch.stack(per_view).mean(-1).numpy()

    candidate = np.array([corpus.split[int(r)] == "candidate" for r in rows])
    for tower in ("image", "text"):
        of_f, of_g = view_cosines(f, tower), view_cosines(g, tower)
        expected = np.where(candidate, of_f - of_g, of_g - of_f)  # (blocks, pairs)
        assert np.abs(expected).max() > 1e-3
        got = (curves[curves["tower"] == tower].pivot(index="layer", columns="sample_id", values="layer_mem")
               [[corpus.ids[int(r)] for r in rows]].to_numpy())
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=tower)
        overall = layers[(layers["tower"] == tower) & (layers["truth"] == "all")].sort_values("layer")
        np.testing.assert_allclose(overall["layer_mem"], expected.mean(1), atol=1e-5, err_msg=tower)
    # the image views differ (augmentation on), and a block's change reaches the later block
    assert np.abs(view_cosines(f, "image") - 1).max() > 1e-3


def test_clipscore_labels_and_clean_embeddings_of_the_memorized_pairs(memorized):
    """The CLIPScore baseline is 1 - the mean cosine of the clean image with the pair's captions: 0 under the
    model that aligned the pair exactly, computed here under the other. The clean embeddings stored for the map
    are each model's clean image and first-caption embeddings of the scored and S_E pairs."""
    corpus, f, g, _, _ = memorized
    result = score_run({"f": f, "g": g}, corpus, SCORE, NO_AUGMENT, CPU)
    frame, rows = result.frame, scored_rows(corpus)
    unseen_cos = [float(cos(clean_image(unseen, corpus, rows[i:i + 1]), text(unseen, corpus,
                                                                         corpus.caption_index[int(rows[i])])).mean())
                  for i, (_, unseen) in enumerate(seen_unseen(corpus, f, g))]
    np.testing.assert_allclose(frame["clipscore_f"], 0, atol=1e-5)
    np.testing.assert_allclose(frame["clipscore_g"], 1 - np.array(unseen_cos), atol=1e-5)
    assert (frame["clipscore_g"] > 0.05).all()
    assert frame["sample_id"].tolist() == [corpus.ids[int(r)] for r in rows]
    assert frame["split"].tolist() == ["candidate"] * 4 + ["independent"] * 4
    assert frame["seen_by"].tolist() == ["f"] * 4 + ["g"] * 4
    assert frame["caption"].tolist() == [corpus.captions[int(r)][0] for r in rows]
    assert frame["n_captions"].tolist() == [2] * 8 and frame["truth"].tolist() == ["clean"] * 8
    np.testing.assert_allclose(np.stack(frame["views_f"]).mean(1), frame["align_f"], atol=1e-6)
    np.testing.assert_allclose(np.stack(frame["views_g"]).mean(1), frame["align_g"], atol=1e-6)
    embedded = rows_of(corpus, "candidate", "independent", "extra")
    assert result.embedded.tolist() == embedded.tolist()
    for name, model in (("f", f), ("g", g)):
        torch.testing.assert_close(result.clean[name].image, clean_image(model, corpus, embedded))
        torch.testing.assert_close(result.clean[name].text, text(model, corpus, corpus.caption_index[embedded, 0]))


def test_single_caption_pairs_text_score_compares_the_caption_with_itself_less_a_word():
    """Pairs with one caption (of one, two or three words), two and three captions; g = f with its text tower cut.
    The text score of a pair is f's cosine between its two text views, seen minus unseen: computed here from the
    drawn views' tokens (for a single caption: the caption and the caption less one word) encoded by f."""
    counts = [1, 1, 2, 1, 3, 1, 1, 2, 1]
    corpus, vocab = word_corpus(counts, {0: "cat", 3: "red dog", 5: "bird &nbsp; sits"})
    f = base_model()
    g = copy.deepcopy(f)
    with torch.no_grad():
        g.text_projection.zero_()
    models = {"f": f, "g": g}
    result = score_run(models, corpus, SCORE, NO_AUGMENT, CPU)
    frame, layers, curves = attribute(models, corpus, result, SCORE, NO_AUGMENT, CONTEXT, vocab, CPU, top_k_curves=3)
    rows = scored_rows(corpus)
    views = draw_tower_views(corpus, rows, SCORE, NO_AUGMENT, CONTEXT, vocab)
    first, second = views.text_tokens
    single = torch.tensor(counts)[rows].repeat_interleave(SCORE.views) == 1
    assert (first[single] != second[single]).any(1).sum() > 6  # most single captions lose a word
    with torch.no_grad():
        cosines = cos(f.encode_text(first, normalize=True), f.encode_text(second, normalize=True))
    cosines = cosines.view(len(rows), SCORE.views).mean(1).numpy()
    cand = frame["split"] == "candidate"
    np.testing.assert_allclose(frame["mem_text_raw"], np.where(cand, cosines, -cosines), atol=1e-5)
    np.testing.assert_array_equal(frame["mem_image_raw"], 0)
    # the curves of the three most memorized pairs (scaled CLIPMem), two blocks per tower
    top = frame.sort_values("clipmem", ascending=False, kind="stable")["sample_id"].iloc[:3].tolist()
    assert curves["sample_id"].drop_duplicates().tolist() == top and len(curves) == 3 * 2 * 2
    assert len(layers[layers["truth"] == "all"]) == 4
    # without layers: the tower scores alone, no LayerMem table and no curves
    frame_only, no_layers, no_curves = attribute(models, corpus, result, SCORE, NO_AUGMENT, CONTEXT, vocab, CPU,
                                                 layers=False)
    assert no_layers.empty and no_curves.empty
    np.testing.assert_array_equal(frame_only["mem_text_raw"], frame["mem_text_raw"])
