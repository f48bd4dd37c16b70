"""CLIPMem scores for the scored splits (S_C and, with roles swapped, S_I).

A(h, x) = mean over n seeded views v of cos(h_img(aug_v(I)), h_txt(t_v)), with
the same views for f and g. raw = A(model that saw x) - A(model that did not);
CLIPMem is raw min-max scaled over the run's scored set. The contrastive variant
replaces the cosine by the pair's log-softmax among a fixed reference set of
other captions (S_E's). Everything is computed from one set of embeddings.

Column convention in scores.parquet: `_f` is the model trained *with* the pair
(model f for S_C, model g for S_I: the roles swap, as in the metric) and `_g` the
model trained without it; `seen_by` names the literal model. Embeddings are stored
per literal model, since they live in that model's space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from scoring.config import ScoreConfig, TrainConfig
from scoring.data.tensors import TensorCorpus
from scoring.transform import augment, normalize, sample_views

SCORED_SPLITS = ("candidate", "independent")


@dataclass
class Embeddings:
    """Clean-view embeddings of the given rows under one model."""

    image: torch.Tensor  # (N, D), L2-normalised
    text: torch.Tensor   # (N, D) of each pair's first caption
    caption_table: torch.Tensor  # (M, D) every distinct caption


@torch.no_grad()
def encode_images(model, pixels: torch.Tensor, batch_size: int, device: torch.device,
                  views=None, max_shift: int = 0) -> torch.Tensor:
    out = []
    for s in range(0, len(pixels), batch_size):
        chunk = pixels[s : s + batch_size]
        x = normalize(chunk) if views is None else augment(chunk, views.select(slice(s, s + batch_size)), max_shift)
        out.append(model.encode_image(x.to(device), normalize=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def encode_texts(model, tokens: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = [model.encode_text(tokens[s : s + batch_size].to(device), normalize=True).float().cpu()
           for s in range(0, len(tokens), batch_size)]
    return torch.cat(out)


def reference_set(corpus: TensorCorpus, size: int, seed: int) -> torch.Tensor:
    """Distinct caption indices of S_E (or, without S_E, of S_S) used as contrastive negatives."""
    rows = corpus.rows("extra")
    if len(rows) == 0:
        rows = corpus.rows("shared")
    idx = corpus.caption_index[rows]
    pool = torch.unique(idx[idx >= 0])
    if len(pool) > size:
        pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:size]].sort().values
    return pool


def view_draws(corpus: TensorCorpus, rows: torch.Tensor, cfg: ScoreConfig, train_cfg: TrainConfig):
    """The n paired views of each row: augmentation parameters and caption indices, seeded."""
    gen = torch.Generator().manual_seed(cfg.seed)
    views = sample_views(len(rows) * cfg.views, train_cfg.augment, gen)  # row-major: (row, view)
    u = torch.rand(len(rows) * cfg.views, generator=gen)
    captions = corpus.pick_captions(rows.repeat_interleave(cfg.views), u)
    return views, captions


@dataclass
class ScoreResult:
    frame: pd.DataFrame               # one row per scored pair (scores.parquet)
    clean: dict[str, "Embeddings"]    # per literal model, rows = `embedded`
    embedded: torch.Tensor            # corpus rows of scored + S_E pairs
    scored: torch.Tensor              # corpus rows of scored pairs, frame order
    view_images: dict[str, torch.Tensor]  # per literal model, (N * n, D) image embeddings of the views
    view_captions: torch.Tensor       # (N * n,) caption-table index of each view
    seen_by_f: torch.Tensor           # (N,) True where f is the model that saw the pair


@torch.no_grad()
def view_alignments(model, corpus, rows, views, caption_idx, text_table, ref_idx, cfg: ScoreConfig,
                    train_cfg: TrainConfig, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-view cosine and contrastive (log-softmax vs. reference captions) scores, shape (N, n),
    and the views' image embeddings."""
    max_shift = train_cfg.augment.max_shift if train_cfg.augment.enabled else 0
    pixels = corpus.pixels[rows].repeat_interleave(cfg.views, dim=0)
    image = encode_images(model, pixels, cfg.batch_size, device, views=views, max_shift=max_shift)
    text = text_table[caption_idx]
    cos = (image * text).sum(-1)
    scale = model.logit_scale.exp().float().cpu()
    ref_logits = scale * image @ text_table[ref_idx].T
    # the pair's own caption text is the positive, never a negative
    ref_logits[caption_idx[:, None] == ref_idx[None, :]] = float("-inf")
    positive = scale * cos
    contrastive = positive - torch.logsumexp(torch.cat([positive[:, None], ref_logits], dim=1), dim=1)
    return cos.view(len(rows), cfg.views), contrastive.view(len(rows), cfg.views), image


def minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


@torch.no_grad()
def score_run(models: dict, corpus: TensorCorpus, cfg: ScoreConfig, train_cfg: TrainConfig,
              device: torch.device) -> ScoreResult:
    """Score S_C ∪ S_I; also return the clean embeddings of scored + S_E rows and the views' embeddings."""
    for m in models.values():
        m.to(device).eval()
    scored = torch.cat([corpus.rows(s) for s in SCORED_SPLITS])
    embedded = torch.cat([scored, corpus.rows("extra")])
    ref_idx = reference_set(corpus, cfg.reference_captions, cfg.seed)
    views, caption_idx = view_draws(corpus, scored, cfg, train_cfg)

    per_model, emb, view_images = {}, {}, {}
    for name, model in models.items():
        table = encode_texts(model, corpus.tokens, cfg.batch_size, device)
        *per_model[name], view_images[name] = view_alignments(model, corpus, scored, views, caption_idx, table,
                                                              ref_idx, cfg, train_cfg, device)
        image = encode_images(model, corpus.pixels[embedded], cfg.batch_size, device)
        emb[name] = Embeddings(image=image, text=table[corpus.caption_index[embedded, 0]], caption_table=table)

    # CLIPScore-style baselines on the clean image against every caption the pair trains with
    n_scored = len(scored)
    cap_idx = corpus.caption_index[scored]
    valid = cap_idx >= 0
    clipscore = {}
    for name in models:
        sims = (emb[name].image[:n_scored, None, :] * emb[name].caption_table[cap_idx.clamp(min=0)]).sum(-1)
        clipscore[name] = 1 - (sims * valid).sum(1) / valid.sum(1)

    is_candidate = torch.tensor([corpus.split[int(r)] == "candidate" for r in scored])
    seen, unseen = {}, {}
    for key, values in (("cos", 0), ("contrastive", 1)):
        f_vals, g_vals = per_model["f"][values], per_model["g"][values]
        seen[key] = torch.where(is_candidate[:, None], f_vals, g_vals)
        unseen[key] = torch.where(is_candidate[:, None], g_vals, f_vals)
    cs_seen = torch.where(is_candidate, clipscore["f"], clipscore["g"])
    cs_unseen = torch.where(is_candidate, clipscore["g"], clipscore["f"])

    align_f, align_g = seen["cos"].mean(1).numpy(), unseen["cos"].mean(1).numpy()
    con_f, con_g = seen["contrastive"].mean(1).numpy(), unseen["contrastive"].mean(1).numpy()
    raw = align_f - align_g
    raw_con = con_f - con_g
    rows = scored.tolist()
    frame = pd.DataFrame({
        "sample_id": [corpus.ids[r] for r in rows],
        "split": [corpus.split[r] for r in rows],
        "truth": [corpus.truth[r] for r in rows],
        "caption": [corpus.captions[r][0] for r in rows],
        "n_captions": [len(corpus.captions[r]) for r in rows],
        "seen_by": np.where(is_candidate.numpy(), "f", "g"),
        "clipmem": minmax(raw),
        "clipmem_raw": raw,
        "clipmem_contrastive": minmax(raw_con),
        "clipmem_contrastive_raw": raw_con,
        "align_f": align_f,
        "align_g": align_g,
        "contrastive_f": con_f,
        "contrastive_g": con_g,
        "clipscore_f": cs_seen.numpy(),
        "clipscore_g": cs_unseen.numpy(),
        "views_f": list(seen["cos"].numpy().astype(np.float32)),
        "views_g": list(unseen["cos"].numpy().astype(np.float32)),
    })
    return ScoreResult(frame=frame, clean=emb, embedded=embedded, scored=scored, view_images=view_images,
                       view_captions=caption_idx, seen_by_f=is_candidate)


def embeddings_arrays(corpus: TensorCorpus, emb: dict[str, Embeddings], rows: torch.Tensor) -> dict[str, np.ndarray]:
    out = {
        "sample_id": np.array([corpus.ids[r] for r in rows.tolist()]),
        "split": np.array([corpus.split[r] for r in rows.tolist()]),
    }
    for name, e in emb.items():
        out[f"{name}_image"] = e.image.numpy().astype(np.float32)
        out[f"{name}_text"] = e.text.numpy().astype(np.float32)
    return out
