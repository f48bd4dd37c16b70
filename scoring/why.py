"""Why a pair is memorized: a wrong caption, or a rare but correct pair (docs/why.md).

CLIPMem alone does not tell the two apart: a model learns both by heart. The model that never trained on a pair (its
"without" model: g for S_C, f for S_I, a k-fold pair's fold model) can, together with the pair's neighbours in its
embedding space:

- a mis-captioned image has close neighbours whose captions disagree with its own, and those captions fit the image
  better than its own caption does; its caption's nearest captions belong to images unlike its own; and the model
  aligns the pair poorly (clipscore_g);
- an atypical image has no close image neighbour, an atypical caption no close caption;
- a duplicate has a near-identical image neighbour whose captions agree with its own.

The neighbours of a pair are drawn from the pool of the run's embedded pairs: the scored pairs, S_E and S_S, the pair
itself left out. Every signal is put on the scale of the same signal over the run's S_E pairs, which neither model
trained on (the reference; without S_E pairs, the scored pairs themselves), so thresholds adapt to each data set and
nothing is fitted to truth tags:

- mis-caption evidence: five signals, each higher when the caption is more likely wrong and each put on the
  reference's scale as a robust z-score (median, IQR / 1.349), in two groups. Misalignment: 1 - cos(image,
  captions) (clipscore_g), the neighbour caption margin (how much better the pair's nearest image neighbours'
  captions fit its image than its own captions do) and its mirror on the caption side (how much better the images
  of the pair's nearest captions fit its captions than its own image does). Contradiction: the disagreement of the
  nearest images' captions with the pair's (-neighbour_agreement) and the nearest image's closeness
  (image_neighbour_sim). The evidence is the smaller of the two groups' means: a mis-caption is misaligned *and*
  contradicted by close neighbours, while an atypical pair is misaligned only (the model never learned it either)
  and has no close neighbour to contradict it (as an intersection-union test takes the weaker of two tests);
- `miscaption` = about the fraction of reference pairs whose evidence (under the same model) is weaker than the
  pair's: their CDF smoothed by a Gaussian kernel, with exponential tails beyond them so that pairs past every
  reference pair stay ordered (weaker_fraction); 1 - miscaption acts as the pair's p-value;
- `reason`, the first that holds: duplicate (nearest image closer than for DUPLICATE_ABOVE of the reference pairs and
  its captions agreeing at least as well as for half of them), atypical_image (nearest image farther than for all but
  ATYPICAL_BELOW of the reference pairs), miscaptioned (the Benjamini-Hochberg q of 1 - miscaption over the run's
  scored pairs at most the run's FDR, as for `memorized`), atypical_caption (as atypical_image, for the nearest
  caption), typical.

The neighbours themselves go to neighbours.parquet (columns.NEIGHBOUR_COLUMNS), k per pair and kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtr

from clipmem.scoring.columns import NEIGHBOUR_COLUMNS, REASON
from clipmem.scoring.config import ScoreConfig
from clipmem.scoring.data.tensors import TensorCorpus
from clipmem.scoring.score import Embeddings, clean_embeddings, encode_images, scored_rows
from clipmem.scoring.schemes import trained_on
from clipmem.scoring.significance import bh_q_values

NEIGHBOURS = 5
# reference fractions (of the S_E pairs' values of the same signal under the same model) the reasons are cut at
ATYPICAL_BELOW = 0.05
DUPLICATE_ABOVE = 0.99
DUPLICATE_AGREEMENT_ABOVE = 0.5
# evidence_signals' first columns, the misalignment signals; the rest are the contradiction signals
MISALIGNMENT_SIGNALS = 3
SIGNAL_COLUMNS = ("image_neighbour_sim", "caption_neighbour_sim", "neighbour_agreement", "neighbour_caption_margin")
# similarity entries held at once while ranking neighbours (queries x pool), about 128 MB of float32
_BLOCK = 1 << 25


@dataclass
class Space:
    """The pool of pairs as one model sees them."""

    image: np.ndarray    # (N, D) unit image embeddings
    captions: np.ndarray  # (N, D) mean of each pair's unit caption embeddings (not renormalised): x @ captions[i]
    #                       is the mean cosine of x with pair i's captions

    @property
    def caption(self) -> np.ndarray:
        """(N, D) the unit direction of each pair's captions: what caption-caption cosines compare."""
        norm = np.linalg.norm(self.captions, axis=1, keepdims=True)
        return self.captions / np.where(norm > 0, norm, 1.0)


@dataclass
class Neighbourhood:
    """Each query pair's k nearest images and captions in a Space, with the signals read off them."""

    image_index: np.ndarray      # (Q, k) pool index of the nearest other images, nearest first
    image_sim: np.ndarray        # (Q, k) their image-image cosine
    image_agreement: np.ndarray  # (Q, k) cosine of their captions with the query's
    caption_index: np.ndarray    # (Q, k) pool index of the nearest other captions
    caption_sim: np.ndarray      # (Q, k) their caption-caption cosine
    caption_agreement: np.ndarray  # (Q, k) cosine of their images with the query's image
    misfit: np.ndarray           # (Q,) 1 - mean cos(image, own captions): clipscore under this model
    image_margin: np.ndarray     # (Q,) weighted mean cos(image, neighbours' captions) - mean cos(image, own captions)
    caption_margin: np.ndarray   # (Q,) weighted mean cos(own captions, caption neighbours' images) - own fit
    agreement: np.ndarray        # (Q,) similarity-weighted mean of image_agreement

    def evidence_signals(self) -> np.ndarray:
        """(Q, 5) the signals of the mis-caption evidence (mis_caption_evidence), each higher when the caption is
        more likely wrong: the misfit and the two margins (also high for an atypical pair, which the model never
        learned either), the disagreement of the nearest images' captions, and the nearest image's closeness (a
        mis-captioned image has close neighbours whose captions disagree with its own; an atypical one has none)."""
        return np.stack([self.misfit, self.image_margin, self.caption_margin, -self.agreement,
                         self.image_sim[:, 0]], axis=1)


def _nearest(query: np.ndarray, pool: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, cosine) of the k pool vectors nearest to each query vector, the query's own pool row left out;
    nearest first, ties by pool index."""
    n = len(pool)
    index = np.empty((len(rows), k), dtype=np.int64)
    sims = np.empty((len(rows), k), dtype=np.float64)
    step = max(1, _BLOCK // max(n, 1))
    for s in range(0, len(rows), step):
        block = (query[s:s + step] @ pool.T).astype(np.float64)
        block[np.arange(len(block)), rows[s:s + step]] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]  # k < n: the query's own row (-inf) is never among them
        top_sims = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_sims), axis=1)
        index[s:s + step] = np.take_along_axis(top, order, axis=1)[:, :k]
        sims[s:s + step] = np.take_along_axis(top_sims, order, axis=1)[:, :k]
    return index, sims


def _weighted(values: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Mean of values (Q, k) weighted by the neighbours' non-negative similarity (equal weights where all are 0)."""
    w = np.clip(sims, 0.0, None)
    total = w.sum(1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / sims.shape[1])
    return (values * w).sum(1)


def neighbourhood(space: Space, rows: np.ndarray, k: int = NEIGHBOURS) -> Neighbourhood:
    """The neighbourhood of the pool pairs at `rows` in `space` (k at most the pool's size - 1)."""
    rows = np.asarray(rows, dtype=np.int64)
    k = min(k, len(space.image) - 1)
    if k < 1:
        raise ValueError("neighbours need a pool of at least two pairs")
    image, captions, caption = space.image, space.captions, space.caption
    img_idx, img_sim = _nearest(image[rows], image, rows, k)
    cap_idx, cap_sim = _nearest(caption[rows], caption, rows, k)
    # cosines of float32 unit vectors may stray past 1 by rounding
    img_sim, cap_sim = np.clip(img_sim, -1.0, 1.0), np.clip(cap_sim, -1.0, 1.0)
    img_agree = np.clip(np.einsum("qd,qkd->qk", caption[rows], caption[img_idx]), -1.0, 1.0)
    cap_agree = np.clip(np.einsum("qd,qkd->qk", image[rows], image[cap_idx]), -1.0, 1.0)
    own_fit = np.einsum("qd,qd->q", image[rows], captions[rows])
    image_fit = np.einsum("qd,qkd->qk", image[rows], captions[img_idx])   # the image against neighbours' captions
    caption_fit = np.einsum("qd,qkd->qk", captions[rows], image[cap_idx])  # the captions against neighbours' images
    return Neighbourhood(
        image_index=img_idx, image_sim=img_sim, image_agreement=img_agree,
        caption_index=cap_idx, caption_sim=cap_sim, caption_agreement=cap_agree,
        misfit=1.0 - own_fit, image_margin=_weighted(image_fit, img_sim) - own_fit,
        caption_margin=_weighted(caption_fit, cap_sim) - own_fit, agreement=_weighted(img_agree, img_sim))


def robust_spread(reference: np.ndarray) -> np.ndarray:
    """Per column, IQR / 1.349 (the standard deviation, for normal data) of the reference; the standard deviation
    where the IQR is 0, 1 where that is 0 too."""
    q1, q3 = np.percentile(reference, [25, 75], axis=0)
    iqr, sd = (q3 - q1) / 1.349, reference.std(axis=0)
    return np.where(iqr > 0, iqr, np.where(sd > 0, sd, 1.0))


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(values - median) / robust_spread of the reference, per column."""
    return (values - np.median(reference, axis=0)) / robust_spread(reference)


def mis_caption_evidence(query: Neighbourhood, reference: Neighbourhood) -> tuple[np.ndarray, np.ndarray]:
    """(the queries' evidence, the reference pairs' evidence): each signal standardised against the reference pairs
    (robust z); the evidence is the weaker of two means, that of the misalignment signals (the pair is aligned
    poorly) and that of the contradiction signals (close neighbours disagree with its caption). A mis-caption must
    show both; an atypical pair shows the first only, a pair among look-alikes captioned alike neither."""
    ref = reference.evidence_signals()

    def weaker(z: np.ndarray) -> np.ndarray:
        return np.minimum(z[:, :MISALIGNMENT_SIGNALS].mean(1), z[:, MISALIGNMENT_SIGNALS:].mean(1))

    return weaker(robust_z(query.evidence_signals(), ref)), weaker(robust_z(ref, ref))


# points the smoothed reference CDF is evaluated at between the reference's ends (linear in between): keeps the
# cost O((grid + queries) x log) instead of queries x reference pairs, at an error far below 1 / reference pairs
_CDF_GRID = 4097


def weaker_fraction(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """About the fraction of reference values below each value; continuous and strictly increasing, so that no
    two pairs tie and float rounding cannot move a pair across tied reference values.

    Between the reference's ends: its CDF smoothed by a Gaussian kernel (bandwidth by Silverman's rule of thumb,
    0.9 x robust spread x m^(-1/5) for m reference values), where a
    step CDF would jump at each reference value, by 1/m at once where reference values tie (the tiny model's
    evidence ties often). Beyond either end: an exponential tail with the reference's robust spread (IQR / 1.349)
    as its scale, joined continuously to the smoothed CDF, which keeps pairs far past every reference pair apart
    where the kernel's Gaussian tail (or a floored p-value) would round them all to 1."""
    ref = np.sort(np.asarray(reference, dtype=float))
    values = np.asarray(values, dtype=float)
    spread = float(robust_spread(ref))
    bandwidth = 0.9 * spread * len(ref) ** -0.2
    if ref[-1] == ref[0]:  # a constant reference: no interior, the two tails meet at its value
        grid, cdf = ref[:1], np.array([0.5])
    else:
        grid = np.linspace(ref[0], ref[-1], _CDF_GRID)
        cdf = np.empty(len(grid))
        step = max(1, _BLOCK // len(ref))
        for s in range(0, len(grid), step):
            cdf[s:s + step] = ndtr((grid[s:s + step, None] - ref[None, :]) / bandwidth).mean(1)
    out = np.interp(values, grid, cdf)
    high, low = values > grid[-1], values < grid[0]
    out[high] = 1.0 - (1.0 - cdf[-1]) * np.exp(-(values[high] - grid[-1]) / spread)
    out[low] = cdf[0] * np.exp((values[low] - grid[0]) / spread)
    return out


def reference_fraction(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The fraction of reference values at or below each value (the reference's empirical CDF)."""
    ref = np.sort(np.asarray(reference, dtype=float))
    return np.searchsorted(ref, values, side="right") / len(ref)


def explain(ids: list[str], spaces: dict[str, Space], query_rows: np.ndarray, query_model: list[str],
            reference_rows: dict[str, np.ndarray], fdr: float,
            k: int = NEIGHBOURS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Signals, `miscaption` and `reason` of the pool pairs at `query_rows` (one row each, in order), each under its
    model `query_model[i]` (the model that did not train on it), against `reference_rows[model]` under the same
    model; and their neighbours (columns.NEIGHBOUR_COLUMNS)."""
    query_rows = np.asarray(query_rows, dtype=np.int64)
    query_model = np.asarray(query_model)
    q = len(query_rows)
    signals = {name: np.full(q, np.nan) for name in SIGNAL_COLUMNS}
    p = np.full(q, np.nan)
    image_frac, caption_frac, agree_frac = np.full(q, np.nan), np.full(q, np.nan), np.full(q, np.nan)
    blocks = []
    for name in sorted(set(query_model.tolist())):
        at = np.flatnonzero(query_model == name)
        space = spaces[name]
        mine = neighbourhood(space, query_rows[at], k)
        ref = neighbourhood(space, reference_rows[name], k)
        evidence, ref_evidence = mis_caption_evidence(mine, ref)
        p[at] = 1.0 - weaker_fraction(evidence, ref_evidence)
        signals["image_neighbour_sim"][at] = mine.image_sim[:, 0]
        signals["caption_neighbour_sim"][at] = mine.caption_sim[:, 0]
        signals["neighbour_agreement"][at] = mine.agreement
        signals["neighbour_caption_margin"][at] = mine.image_margin
        image_frac[at] = reference_fraction(mine.image_sim[:, 0], ref.image_sim[:, 0])
        caption_frac[at] = reference_fraction(mine.caption_sim[:, 0], ref.caption_sim[:, 0])
        agree_frac[at] = reference_fraction(mine.image_agreement[:, 0], ref.image_agreement[:, 0])
        blocks.append((at, mine))
    q_values = bh_q_values(p)
    reason = np.where(
        (image_frac >= DUPLICATE_ABOVE) & (agree_frac >= DUPLICATE_AGREEMENT_ABOVE), "duplicate",
        np.where(image_frac <= ATYPICAL_BELOW, "atypical_image",
                 np.where(q_values <= fdr, "miscaptioned",
                          np.where(caption_frac <= ATYPICAL_BELOW, "atypical_caption", "typical"))))
    frame = pd.DataFrame({"sample_id": [ids[r] for r in query_rows], **signals, "miscaption": 1.0 - p,
                          REASON: reason.astype(object)})
    return frame, _neighbour_rows(ids, query_rows, blocks)


def _neighbour_rows(ids: list[str], query_rows: np.ndarray, blocks: list[tuple[np.ndarray, Neighbourhood]]):
    ids_array = np.asarray(ids, dtype=object)
    parts = []
    for at, nb in blocks:
        k = nb.image_index.shape[1]
        owners = np.repeat(ids_array[query_rows[at]], k)
        ranks = np.tile(np.arange(1, k + 1), len(at))
        for kind, index, sim, agreement in (("image", nb.image_index, nb.image_sim, nb.image_agreement),
                                            ("caption", nb.caption_index, nb.caption_sim, nb.caption_agreement)):
            parts.append(pd.DataFrame({"sample_id": owners, "kind": kind, "rank": ranks,
                                       "neighbour_id": ids_array[index.ravel()], "similarity": sim.ravel(),
                                       "agreement": agreement.ravel()}))
    if not parts:
        return pd.DataFrame({c: [] for c in NEIGHBOUR_COLUMNS})
    out = pd.concat(parts, ignore_index=True)
    order = {sid: i for i, sid in enumerate(ids_array[query_rows])}
    out["_pair"] = out["sample_id"].map(order)
    out["_kind"] = (out["kind"] == "caption").astype(int)
    out = out.sort_values(["_pair", "_kind", "rank"], kind="stable").reset_index(drop=True)
    out["rank"] = out["rank"].astype(np.int32)
    return out[list(NEIGHBOUR_COLUMNS)]


def caption_means(caption_table: torch.Tensor, caption_index: torch.Tensor) -> np.ndarray:
    """(N, D) the mean of each pair's caption embeddings; caption_index (N, K) holds caption-table rows, -1 padded."""
    valid = (caption_index >= 0).to(caption_table.dtype)
    emb = caption_table[caption_index.clamp(min=0)] * valid[..., None]
    return (emb.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)).numpy()


def explain_run(corpus: TensorCorpus, scores: pd.DataFrame, clean: dict[str, Embeddings] | None,
                embedded: torch.Tensor, models: dict, cfg: ScoreConfig, device: torch.device,
                k: int = NEIGHBOURS) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """scores with the signal columns, `miscaption` and `reason` added, and the neighbours table; None when the run
    has fewer than two pairs to draw neighbours from.

    `clean` holds the clean embeddings of the `embedded` rows (scored + S_E) per model where the caller made them;
    the other models a scored pair needs are embedded here. The pool adds S_S, whose images are encoded here: a
    duplicate usually copies an S_S pair. Call under torch.inference_mode with the models on `device`."""
    names = tuple(models)
    row_of = {corpus.ids[r]: r for r in scored_rows(corpus).tolist()}
    missing = [sid for sid in scores["sample_id"] if sid not in row_of]
    if missing:
        raise ValueError(f"scores hold pairs the run does not score, e.g. {missing[0]}")
    scored = torch.tensor([row_of[sid] for sid in scores["sample_id"]], dtype=torch.long)
    pool_rows = torch.cat([embedded, corpus.rows("shared")])
    if len(pool_rows) < 2:
        return None
    position = {int(r): i for i, r in enumerate(pool_rows.tolist())}
    without = (~trained_on(corpus, scored)).to(torch.long).argmax(1)  # the one model that did not train on each
    query_model = [names[int(j)] for j in without]
    index = corpus.caption_index[pool_rows]
    shared = corpus.rows("shared")
    spaces = {}
    for name in sorted(set(query_model)):
        model = models[name]
        emb = (clean or {}).get(name) or clean_embeddings(model, corpus, embedded, cfg, device)
        image = emb.image
        if len(shared):
            image = torch.cat([image, encode_images(model, corpus.pixels[shared], cfg.batch_size, device)])
        spaces[name] = Space(image=image.numpy().astype(np.float32),
                             captions=caption_means(emb.caption_table, index).astype(np.float32))
    query_rows = np.array([position[int(r)] for r in scored.tolist()], dtype=np.int64)
    extra = np.array([position[int(r)] for r in corpus.rows("extra").tolist()], dtype=np.int64)
    reference = {name: extra if len(extra) else query_rows[np.asarray(query_model) == name] for name in spaces}
    ids = [corpus.ids[r] for r in pool_rows.tolist()]
    frame, neighbours = explain(ids, spaces, query_rows, query_model, reference, cfg.fdr, k)
    out = scores.drop(columns=[c for c in frame.columns if c != "sample_id" and c in scores])
    for column in frame.columns[1:]:
        out[column] = frame[column].to_numpy()
    return out, neighbours
