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

In general "with" is the mean over the models that trained on the pair and "without"
the mean over those that did not (scoring.schemes.trained_on): one model each in the
published scheme; in the k-fold scheme, for a pair of fold k, the K-1 other fold models
against model k.

Every draw (views, captions, reference set) is made for the whole scored set and then
sliced, so any contiguous part of the scored pairs (`part`, a shard) gets exactly the
values it gets in a single pass; only the min-max scaling needs the whole set
(`scale_scores`).

The null (`score_null`): the S_E pairs, which no model trained on, scored the same way (their own seeded
views, the same reference set, the same with/without means) once per direction a scored pair can take, so
each scored pair's A_with - A_without can be compared with what model drift alone gives (scoring.significance).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from clipmem.scoring.columns import NULL_COLUMNS, SCORED_SPLITS, SEEN_BY, TRAINING_SPLITS, null_key
from clipmem.scoring.config import ScoreConfig, TrainConfig
from clipmem.scoring.data.tensors import TensorCorpus
from clipmem.scoring.schemes import PUBLISHED_MODELS, trained_on
from clipmem.scoring.transform import augment, normalize, sample_views, shared_normalization


@dataclass
class Embeddings:
    """Clean-view embeddings of the given rows under one model."""

    image: torch.Tensor  # (N, D), L2-normalised
    text: torch.Tensor   # (N, D) of each pair's first caption
    caption_table: torch.Tensor  # (M, D) every distinct caption


def encode_context(device: torch.device):
    """bf16 autocast for the encoders on CUDA; nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to device: pinned and non-blocking on CUDA; the tensor itself on the CPU."""
    if device.type != "cuda" or t.device.type == "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def prepare_model(model, device: torch.device):
    """Evaluation mode on `device`; channels_last image tower on CUDA."""
    model.to(device).eval()
    if device.type == "cuda":
        model.visual.to(memory_format=torch.channels_last)
    return model


@torch.inference_mode()
def encode_images_each(models: list, pixels: torch.Tensor, batch_size: int, device: torch.device,
                       views=None, max_shift: int = 0, repeat: int = 1) -> list[torch.Tensor]:
    """Embeddings of uint8 images (clean, or through the given views) under each of `models`, in batches on
    `device`: each batch is normalised or augmented once and encoded by every model in turn, normalised with the
    models' mean and std (their config's: transform.normalization_of; models that differ are refused).

    With `repeat` = n each image stands for n consecutive inputs (its n views), as if the pixels
    were repeat_interleave'd. On CUDA the pixels go to the GPU once and are augmented there.
    """
    out: list[list[torch.Tensor]] = [[] for _ in models]
    norm = shared_normalization(models)
    on_cuda = device.type == "cuda"
    if on_cuda:
        pixels = to_device(pixels, device)
    total = len(pixels) * repeat
    with encode_context(device):
        for s in range(0, total, batch_size):
            e = min(s + batch_size, total)
            if views is None:
                chunk = pixels[s:e] if repeat == 1 else pixels[torch.arange(s, e, device=pixels.device) // repeat]
                x = normalize(chunk, norm)
            else:  # the chunk's base images, each read by its `repeat` views (no repeated copy of the pixels)
                first = s // repeat
                source = torch.arange(s, e, device=pixels.device) // repeat - first
                x = augment(pixels[first:(e - 1) // repeat + 1], views.select(slice(s, e)), max_shift, source, norm)
            x = x.contiguous(memory_format=torch.channels_last) if on_cuda else x.to(device)
            for model, parts in zip(models, out):
                parts.append(model.encode_image(x, normalize=True).float().cpu())
    return [torch.cat(parts) if parts else torch.empty(0) for parts in out]


def encode_images(model, pixels: torch.Tensor, batch_size: int, device: torch.device,
                  views=None, max_shift: int = 0, repeat: int = 1) -> torch.Tensor:
    """`encode_images_each` for one model."""
    return encode_images_each([model], pixels, batch_size, device, views, max_shift, repeat)[0]


@torch.inference_mode()
def encode_texts(model, tokens: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = []
    with encode_context(device):
        for s in range(0, len(tokens), batch_size):
            out.append(model.encode_text(to_device(tokens[s : s + batch_size], device), normalize=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class CaptionTable:
    """Embeddings of some distinct captions, looked up by caption-table index."""

    rows: torch.Tensor   # (M,) position of each caption in `emb`, -1 where not encoded
    emb: torch.Tensor    # (m, D)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb[self.rows[idx]]

    def covers(self, idx: torch.Tensor) -> bool:
        """Whether every caption at `idx` (ignoring -1) was encoded."""
        idx = idx[idx >= 0]
        return bool((self.rows[idx] >= 0).all())


def encode_captions(model, corpus: TensorCorpus, needed: torch.Tensor | None, batch_size: int,
                    device: torch.device) -> CaptionTable:
    """Encode the captions at `needed` (every caption when None)."""
    n = len(corpus.tokens)
    needed = torch.arange(n) if needed is None else torch.unique(needed[needed >= 0])
    rows = torch.full((n,), -1, dtype=torch.long)
    rows[needed] = torch.arange(len(needed))
    return CaptionTable(rows=rows, emb=encode_texts(model, corpus.tokens[needed], batch_size, device))


def clean_embeddings(model, corpus: TensorCorpus, rows: torch.Tensor, cfg: ScoreConfig,
                     device: torch.device) -> Embeddings:
    """Clean image and first-caption embeddings of `rows`, and the whole caption table, under one model."""
    table = encode_texts(model, corpus.tokens, cfg.batch_size, device)
    image = encode_images(model, corpus.pixels[rows], cfg.batch_size, device)
    return Embeddings(image=image, text=table[corpus.caption_index[rows, 0]], caption_table=table)


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


def scored_rows(corpus: TensorCorpus) -> torch.Tensor:
    """Corpus rows of the scored pairs (S_C, then S_I), in scores.parquet order."""
    return torch.cat([corpus.rows(s) for s in SCORED_SPLITS])


# seed offset of the null pairs' views: a stream of their own, so the scored pairs' draws are those they always had
NULL_STREAM = 15485863


def view_draws(corpus: TensorCorpus, rows: torch.Tensor, cfg: ScoreConfig, train_cfg: TrainConfig,
               part: slice | None = None, stream: int = 0):
    """The n paired views of each row: augmentation parameters and caption indices, seeded.

    Drawn for all `rows`; `part` (a slice of rows) returns that part's draws, identical to
    the same rows' draws in the whole. `stream` offsets the seed (the null's views: NULL_STREAM).
    """
    gen = torch.Generator().manual_seed(cfg.seed + stream)
    views = sample_views(len(rows) * cfg.views, train_cfg.augment, gen)  # row-major: (row, view)
    u = torch.rand(len(rows) * cfg.views, generator=gen)
    if part is not None:
        flat = slice(part.start * cfg.views, part.stop * cfg.views)
        views, u, rows = views.select(flat), u[flat], rows[part]
    captions = corpus.pick_captions(rows.repeat_interleave(cfg.views), u)
    return views, captions


@dataclass
class ScoreResult:
    frame: pd.DataFrame               # one row per scored pair (scores.parquet, scaled over these pairs)
    clean: dict[str, "Embeddings"] | None  # per model, rows = `embedded` (None when not asked for)
    embedded: torch.Tensor            # corpus rows of scored + S_E pairs (or of the scored pairs alone)
    scored: torch.Tensor              # corpus rows of scored pairs, frame order
    view_images: dict[str, torch.Tensor]  # per model, (N * n, D) image embeddings of the views
    view_captions: torch.Tensor       # (N * n,) caption-table index of each view
    seen: torch.Tensor                # (N, models) True where the model trained on the pair
    names: tuple[str, ...]            # the models, in `seen`'s column order
    part: slice | None = None         # the part of the scored set these rows are (None: all of it)
    tables: dict[str, "CaptionTable"] = field(default_factory=dict)  # per model, the captions encoded here

    @property
    def seen_by_f(self) -> torch.Tensor:
        """(N,) True where f (the first model) is a model that saw the pair."""
        return self.seen[:, 0]


def with_without(values: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the models that saw each pair, and over those that did not.

    values: (models, N, ...); seen: (N, models). With one model on each side (the published
    scheme) these are exactly that model's values.
    """
    w = seen.T.to(values.dtype).reshape(*seen.T.shape, *([1] * (values.dim() - 2)))
    u = 1 - w
    return (values * w).sum(0) / w.sum(0), (values * u).sum(0) / u.sum(0)


@torch.inference_mode()
def view_alignments(model, corpus, rows, views, caption_idx, text_table, ref_idx, cfg: ScoreConfig,
                    train_cfg: TrainConfig, device, own_captions: torch.Tensor | None = None,
                    image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-view cosine and contrastive (log-softmax vs. reference captions) scores, shape (N, n),
    and the views' image embeddings. `text_table` maps caption-table indices to embeddings.

    `own_captions` ((N, K) caption indices, -1 padded): captions of each row that are never its negatives
    either. The null's S_E pairs pass theirs: the reference set is drawn from S_E's captions, so it may hold
    a null pair's other captions, which no scored pair meets. `image`: the views' embeddings under `model`
    when the caller has encoded them already (`view_images`)."""
    if image is None:
        image = view_images({"model": model}, corpus, rows, views, cfg, train_cfg, device)["model"]
    text = text_table[caption_idx]
    cos = (image * text).sum(-1)
    scale = model.logit_scale.exp().float().cpu()
    ref_logits = scale * image @ text_table[ref_idx].T
    # the pair's own caption text is the positive, never a negative
    ref_logits[caption_idx[:, None] == ref_idx[None, :]] = float("-inf")
    if own_captions is not None:
        own = own_captions.repeat_interleave(cfg.views, dim=0)
        ref_logits[(own[:, :, None] == ref_idx[None, None, :]).any(1)] = float("-inf")
    positive = scale * cos
    contrastive = positive - torch.logsumexp(torch.cat([positive[:, None], ref_logits], dim=1), dim=1)
    return cos.view(len(rows), cfg.views), contrastive.view(len(rows), cfg.views), image


def view_images(models: dict, corpus, rows, views, cfg: ScoreConfig, train_cfg: TrainConfig,
                device) -> dict[str, torch.Tensor]:
    """(N * n, D) image embeddings of the rows' n views under each model, each view augmented once for all."""
    max_shift = train_cfg.augment.max_shift if train_cfg.augment.enabled else 0
    images = encode_images_each(list(models.values()), corpus.pixels[rows], cfg.batch_size, device, views=views,
                                max_shift=max_shift, repeat=cfg.views)
    return dict(zip(models, images))


def minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


SCALED = {"clipmem": "clipmem_raw", "clipmem_contrastive": "clipmem_contrastive_raw",
          "mem_image": "mem_image_raw", "mem_text": "mem_text_raw"}


def scale_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """(Re)compute the min-max scaled scores from their raw columns, over the pairs of `frame`."""
    frame = frame.copy()
    for scaled, raw in SCALED.items():
        if raw in frame:
            frame[scaled] = minmax(frame[raw].to_numpy())
    return frame


def swap_captions(corpus: TensorCorpus) -> torch.Tensor:
    """Caption-table indices of the S_S first captions, whose embeddings the encoder-swap check fits on."""
    return corpus.caption_index[corpus.rows("shared"), 0]


def score_run(models: dict, corpus: TensorCorpus, cfg: ScoreConfig, train_cfg: TrainConfig,
              device: torch.device, part: slice | None = None, embed: bool = True) -> ScoreResult:
    """Score S_C ∪ S_I (or the contiguous `part` of it); also return the views' embeddings and, with
    `embed`, the clean embeddings of the scored + S_E rows under every model.

    `models` are the scheme's models in order (f, g; or fold0..fold{K-1}).
    """
    for m in models.values():  # outside inference mode: moved parameters stay ordinary tensors
        prepare_model(m, device)
    with torch.inference_mode():
        return _score(models, corpus, cfg, train_cfg, device, part, embed)


def _score(models: dict, corpus: TensorCorpus, cfg: ScoreConfig, train_cfg: TrainConfig,
           device: torch.device, part: slice | None, embed: bool) -> ScoreResult:
    names = tuple(models)
    scored_all = scored_rows(corpus)
    whole = part is None or (part.start == 0 and part.stop >= len(scored_all))
    if embed and not whole:
        raise ValueError("clean embeddings (embed=True) are made for the whole scored set, not for a part")
    part = slice(0, len(scored_all)) if part is None else part
    scored = scored_all[part]
    embedded = torch.cat([scored, corpus.rows("extra")]) if embed else scored
    ref_idx = reference_set(corpus, cfg.reference_captions, cfg.seed)
    views, caption_idx = view_draws(corpus, scored_all, cfg, train_cfg, part)
    cap_idx = corpus.caption_index[scored]
    # a part encodes only the captions it looks at; the whole run encodes the table once
    needed = None if whole else torch.cat([caption_idx, ref_idx, cap_idx.flatten(), swap_captions(corpus)])

    cos, con, clipscore, emb, tables = [], [], [], {}, {}
    valid = cap_idx >= 0
    images = view_images(models, corpus, scored, views, cfg, train_cfg, device)
    clean = dict(zip(names, encode_images_each(list(models.values()), corpus.pixels[embedded], cfg.batch_size,
                                               device)))
    for name, model in models.items():
        table = tables[name] = encode_captions(model, corpus, needed, cfg.batch_size, device)
        c, k, _ = view_alignments(model, corpus, scored, views, caption_idx, table, ref_idx, cfg, train_cfg, device,
                                  image=images[name])
        cos.append(c)
        con.append(k)
        image = clean[name]
        if embed:
            emb[name] = Embeddings(image=image, text=table[corpus.caption_index[embedded, 0]], caption_table=table.emb)
        # CLIPScore-style baseline on the clean image against every caption the pair trains with
        sims = (image[: len(scored), None, :] * table[cap_idx.clamp(min=0)]).sum(-1)
        clipscore.append(1 - (sims * valid).sum(1) / valid.sum(1))

    seen = trained_on(corpus, scored)
    with_cos, without_cos = with_without(torch.stack(cos), seen)
    with_con, without_con = with_without(torch.stack(con), seen)
    cs_seen, cs_unseen = with_without(torch.stack(clipscore), seen)

    align_f, align_g = with_cos.mean(1).numpy(), without_cos.mean(1).numpy()
    con_f, con_g = with_con.mean(1).numpy(), without_con.mean(1).numpy()
    raw = align_f - align_g
    raw_con = con_f - con_g
    rows = scored.tolist()
    split = [corpus.split[r] for r in rows]
    columns = {
        "sample_id": [corpus.ids[r] for r in rows],
        "split": split,
        "truth": [corpus.truth[r] for r in rows],
        "caption": [corpus.captions[r][0] for r in rows],
        "n_captions": [len(corpus.captions[r]) for r in rows],
        # the literal model that saw the pair: f for S_C, g for S_I (in a k-fold run: fold0, fold1)
        "seen_by": np.array([SEEN_BY[s] for s in split], dtype=str),
    }
    if corpus.fold is not None:
        columns["fold"] = corpus.fold[scored].numpy()
    columns.update({
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
        "views_f": list(with_cos.numpy().astype(np.float32)),
        "views_g": list(without_cos.numpy().astype(np.float32)),
    })
    return ScoreResult(frame=pd.DataFrame(columns), clean=emb if embed else None, embedded=embedded, scored=scored,
                       view_images=images, view_captions=caption_idx, seen=seen, names=names,
                       part=None if whole else part, tables=tables)


def null_roles(corpus: TensorCorpus, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{null key: (models,) bool}: for the scored pairs of each key, which of the models trained on them.

    Published scheme: "candidate" (f saw it), "independent" (g saw it); k-fold: "fold{k}" (every model but k).
    A null pair plays each role in turn: its "with" is the mean over the models marked, as for the scored pairs.
    """
    if corpus.fold is None:
        if tuple(names) != PUBLISHED_MODELS:
            raise ValueError(f"the published scheme scores models {PUBLISHED_MODELS}, not {names}")
        return {null_key(split): torch.tensor([split in TRAINING_SPLITS[m] for m in names])
                for split in SCORED_SPLITS}
    return {null_key("", k): torch.arange(len(names)) != k for k in range(len(names))}


def score_null(models: dict, corpus: TensorCorpus, cfg: ScoreConfig, train_cfg: TrainConfig,
               device: torch.device, tables: dict[str, CaptionTable] | None = None) -> pd.DataFrame:
    """null.parquet's rows (columns.NULL_COLUMNS): the S_E pairs scored as the scored pairs are, once per null key.

    Each S_E pair gets n views drawn from the null's own stream (NULL_STREAM), is aligned under every model by
    `view_alignments` and takes each role of `null_roles`: its clipmem_raw is A_with - A_without for the models
    a scored pair of that key is "with". No S_E pairs: an empty frame.
    """
    for m in models.values():  # outside inference mode: moved parameters stay ordinary tensors
        prepare_model(m, device)
    with torch.inference_mode():
        return _score_null(models, corpus, cfg, train_cfg, device, tables or {})


def _score_null(models: dict, corpus: TensorCorpus, cfg: ScoreConfig, train_cfg: TrainConfig,
                device: torch.device, tables: dict[str, CaptionTable]) -> pd.DataFrame:
    rows = corpus.rows("extra")
    if len(rows) == 0:
        return pd.DataFrame({c: [] for c in NULL_COLUMNS})
    ref_idx = reference_set(corpus, cfg.reference_captions, cfg.seed)
    views, caption_idx = view_draws(corpus, rows, cfg, train_cfg, stream=NULL_STREAM)
    own = corpus.caption_index[rows]
    needed = torch.cat([caption_idx, ref_idx, own.flatten()])
    cos, con = [], []
    images = view_images(models, corpus, rows, views, cfg, train_cfg, device)
    for name, model in models.items():
        table = tables.get(name)
        if table is None or not table.covers(needed):  # the scored pairs' table, when it holds every one
            table = encode_captions(model, corpus, needed, cfg.batch_size, device)
        c, k, _ = view_alignments(model, corpus, rows, views, caption_idx, table, ref_idx, cfg, train_cfg, device,
                                  own_captions=own, image=images[name])
        cos.append(c)
        con.append(k)
    cos, con = torch.stack(cos), torch.stack(con)
    ids = [corpus.ids[r] for r in rows.tolist()]
    frames = []
    for key, with_models in null_roles(corpus, tuple(models)).items():
        seen = with_models.expand(len(rows), -1)
        with_cos, without_cos = with_without(cos, seen)
        with_con, without_con = with_without(con, seen)
        align_f, align_g = with_cos.mean(1).numpy(), without_cos.mean(1).numpy()
        con_f, con_g = with_con.mean(1).numpy(), without_con.mean(1).numpy()
        frames.append(pd.DataFrame({
            "sample_id": ids,
            "split": [corpus.split[r] for r in rows.tolist()],
            "truth": [corpus.truth[r] for r in rows.tolist()],
            "null_for": key,
            "clipmem_raw": align_f - align_g,
            "clipmem_contrastive_raw": con_f - con_g,
            "align_f": align_f,
            "align_g": align_g,
            "contrastive_f": con_f,
            "contrastive_g": con_g,
            "views_f": list(with_cos.numpy().astype(np.float32)),
            "views_g": list(without_cos.numpy().astype(np.float32)),
        }))
    return pd.concat(frames, ignore_index=True)[list(NULL_COLUMNS)]


def mean_over_replicas(frames: list[pd.DataFrame], spread: bool = False) -> pd.DataFrame:
    """One frame of the same pairs from the frames of R replicas: every float column (and the per-view lists) the
    mean over replicas, every other column replica 0's; with `spread`, clipmem_raw_sd: the sample standard
    deviation of clipmem_raw across replicas. One frame comes back as it is."""
    if len(frames) == 1:
        return frames[0]
    first = frames[0]
    for other in frames[1:]:
        if not other["sample_id"].equals(first["sample_id"]) or list(other.columns) != list(first.columns):
            raise ValueError("replica frames must hold the same pairs and columns in the same order")
    out = first.copy()
    for column in first.columns:
        if column.startswith("views_"):
            views = np.mean([np.stack(f[column].to_numpy()) for f in frames], axis=0)
            out[column] = list(views.astype(np.float32))
        elif first[column].dtype.kind == "f":
            out[column] = np.mean([f[column].to_numpy() for f in frames], axis=0)
    if spread:
        out["clipmem_raw_sd"] = np.std([f["clipmem_raw"].to_numpy() for f in frames], axis=0, ddof=1)
    return out


def embeddings_arrays(corpus: TensorCorpus, emb: dict[str, Embeddings], rows: torch.Tensor) -> dict[str, np.ndarray]:
    """embeddings.npz: ids, splits and `{model}_image` / `{model}_text` per key of `emb` (the literal f and g)."""
    out = {
        "sample_id": np.array([corpus.ids[r] for r in rows.tolist()]),
        "split": np.array([corpus.split[r] for r in rows.tolist()]),
    }
    for name, e in emb.items():
        out[f"{name}_image"] = e.image.numpy().astype(np.float32)
        out[f"{name}_text"] = e.text.numpy().astype(np.float32)
    return out
