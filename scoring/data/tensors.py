"""The planned pairs as tensors: decoded pixels, the distinct-caption token table, and
each pair's caption indices. Training, scoring and evaluation all read this one view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from clipmem.scoring.columns import SPLITS
from clipmem.scoring.data.base import PairDataset
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.models import Vocabulary, apply_vocabulary, build_vocabulary, missing_ids, tokenize
from clipmem.scoring.splits import SplitPlan


@dataclass
class TensorCorpus:
    ids: list[str]                 # row -> sample id (every planned pair, split order)
    split: list[str]               # row -> split name
    truth: list[str]
    captions: list[list[str]]      # row -> the pair's captions (as in the source)
    attributes: list[dict]
    pixels: torch.Tensor           # (N, 3, H, W) uint8
    caption_texts: list[str]       # distinct caption strings
    tokens: torch.Tensor           # (M, context_length) model token ids
    caption_index: torch.Tensor    # (N, K) index into caption_texts, -1 padded
    caption_count: torch.Tensor    # (N,) number of captions used per pair
    truncated: int                 # captions longer than the context length
    removed: frozenset[int] = frozenset()  # rows left out of training and scoring (TrainConfig.remove_ids)
    fold: torch.Tensor | None = None       # k-fold scheme: (N,) fold of each row, -1 for S_E; None otherwise
    # k -> (N, k - 1, 3, H, W) uint8: renderings 1 .. k-1 of each row's scene, decoded only when training asks
    load_renderings: Callable[[int], torch.Tensor] | None = None

    @property
    def n_folds(self) -> int:
        return 0 if self.fold is None else int(self.fold.max()) + 1

    def rows(self, split: str) -> torch.Tensor:
        """Rows of a split, less the removed ones: neither model trains on those, so none is scored."""
        return torch.tensor([i for i, s in enumerate(self.split) if s == split and i not in self.removed],
                            dtype=torch.long)

    def remove(self, ids: list[str]) -> None:
        """Leave these pairs out; each must be a planned pair that some model trains on."""
        row_of = {sid: r for r, sid in enumerate(self.ids)}
        rows = set()
        for sid in ids:
            if sid not in row_of:
                raise ClipmemError(f"pair '{sid}' in the removal list is not in this run's split plan")
            if self.split[row_of[sid]] == "extra":
                raise ClipmemError(f"pair '{sid}' in the removal list is in S_E, which no model trains on")
            rows.add(row_of[sid])
        self.removed = frozenset(rows)

    def renderings(self, k: int) -> torch.Tensor:
        """(N, k, 3, H, W) uint8: each row's first k renderings, rendering 0 being `pixels`, the image that scoring,
        the null and evaluation use."""
        if k == 1:
            return self.pixels.unsqueeze(1)
        if self.load_renderings is None:
            raise ClipmemError(f"training asks for {k} renderings per scene (--renderings), but this corpus was "
                               "built without access to its source's renderings")
        return torch.cat([self.pixels.unsqueeze(1), self.load_renderings(k)], dim=1)

    def pick_captions(self, rows: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Caption table index for each row, drawn uniformly from its captions with u in [0, 1)."""
        counts = self.caption_count[rows]
        slot = torch.clamp((u * counts).long(), max=counts - 1)
        return self.caption_index[rows, slot]


def build_corpus(
    dataset: PairDataset,
    plan: SplitPlan,
    image_size: int,
    context_length: int,
    captions_per_image: int = 0,
    vocab: Vocabulary | None = None,
    compact_vocab: bool = False,
    extra_texts: list[str] = (),
) -> tuple[TensorCorpus, Vocabulary]:
    """Decode and tokenise every planned pair once.

    `captions_per_image` > 0 keeps only each pair's first k captions (1 is the
    published single-caption baseline). With `compact_vocab` and no `vocab` given,
    the vocabulary is shrunk to the tokens these captions (and `extra_texts`) use as encoded;
    a `vocab` given (the run's saved one) must hold all of them, else this fails before any
    model reads a text.
    """
    where = dataset.index_of()
    rows, split = [], []
    for name in SPLITS:
        for sid in plan.ids[name]:
            if sid not in where:
                raise ClipmemError(f"split plan names sample '{sid}' which the dataset does not contain")
            rows.append(where[sid])
            split.append(name)
    captions = [dataset.captions[i] for i in rows]
    used = [c[:captions_per_image] if captions_per_image > 0 else c for c in captions]
    texts = sorted({t for caps in used for t in caps} | set(extra_texts))
    text_id = {t: j for j, t in enumerate(texts)}
    width = max(len(c) for c in used)
    caption_index = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, caps in enumerate(used):
        caption_index[r, : len(caps)] = torch.tensor([text_id[t] for t in caps])
    tokenized = tokenize(texts, context_length)
    # every id the run's text encoder will read: each text as encoded (cut to the context), and for a
    # pair with one caption every id of it, since tower scoring drops a word of that caption and
    # later ids move into the context (attribution.draw_tower_views)
    single = {text_id[caps[0]] for caps in used if len(caps) == 1}
    needed = set(tokenized.tokens.unique().tolist())
    for j in single:
        needed.update(tokenized.encodings[j])
    if vocab is None:
        vocab = build_vocabulary(needed) if compact_vocab else Vocabulary()
    elif missing_ids(needed, vocab):
        for j, text in enumerate(texts):
            if missing_ids(set(tokenized.tokens[j].tolist()) | set(tokenized.encodings[j] if j in single else ()),
                           vocab):
                raise ClipmemError(
                    f"the run's saved vocabulary (vocab.json, {vocab.size} tokens) lacks tokens of the caption "
                    f"'{text}': it was built for other captions, or by an older clipmem that left out the tokens "
                    "past the context length; start the run again with --overwrite")
    fold = None
    if plan.folds is not None:
        fold_of = plan.fold_of()
        fold = torch.tensor([fold_of.get(dataset.ids[i], -1) for i in rows], dtype=torch.long)
    corpus = TensorCorpus(
        ids=[dataset.ids[i] for i in rows],
        split=split,
        truth=[dataset.truth[i] for i in rows],
        captions=captions,
        attributes=[dataset.attributes[i] if dataset.attributes else {} for i in rows],
        pixels=dataset.load_pixels(rows, image_size),
        caption_texts=texts,
        tokens=apply_vocabulary(tokenized.tokens, vocab),
        caption_index=caption_index,
        caption_count=torch.tensor([len(c) for c in used]),
        truncated=tokenized.truncated,
        fold=fold,
        load_renderings=lambda k: dataset.load_renderings(rows, k, image_size),
    )
    return corpus, vocab

