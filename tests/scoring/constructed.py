"""Constructed scoring cases with answers known by construction: a hand-made corpus (no data source, no split
plan) and open_clip models with two blocks per tower whose weights are set by hand (no training).

The corpus has 12 shared pairs, 4 candidates, 4 independent and 6 extra pairs; every pair has two distinct
captions, so the text tower's two views are always its two captions. With augmentation off, the image views
are the clean image and cosines reduce to closed forms the tests compute directly.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from clipmem.scoring.config import ScoreConfig, TrainConfig
from clipmem.scoring.data.tensors import TensorCorpus
from clipmem.scoring.models import Vocabulary, apply_vocabulary, build_vocabulary, create_model, tokenize
from clipmem.scoring.transform import AugmentConfig, normalize

CFG = {"embed_dim": 8,
       "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
       "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 48, "heads": 2, "layers": 2}}
CONTEXT = CFG["text_cfg"]["context_length"]
SIZES = {"shared": 12, "candidate": 4, "independent": 4, "extra": 6}
VOCAB = Vocabulary()
SCORE = ScoreConfig(views=3, batch_size=64)
NO_AUGMENT = TrainConfig(augment=AugmentConfig(enabled=False))
AUGMENT = TrainConfig()


def make_corpus(seed: int = 0, one_text: bool = False) -> TensorCorpus:
    """With `one_text`, each pair's two captions are one text (caption index j twice): its text views agree."""
    gen = torch.Generator().manual_seed(seed)
    split = [s for s, n in SIZES.items() for _ in range(n)]
    n = len(split)
    pixels = torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)
    # two captions per pair: 5 random word ids, end-of-text (63, the largest id: text pooling takes the argmax)
    tokens = torch.zeros(2 * n, CONTEXT, dtype=torch.long)
    tokens[:, :5] = torch.randint(1, 63, (2 * n, 5), generator=gen)
    tokens[1::2, :4] = tokens[0::2, :4]  # a pair's second caption differs from its first in the last word only
    tokens[:, 5] = 63
    texts = [f"caption {j}" for j in range(2 * n)]
    return TensorCorpus(
        ids=[f"p{r}" for r in range(n)], split=split, truth=["clean"] * n,
        captions=[[texts[2 * r], texts[2 * r + 1]] for r in range(n)], attributes=[{} for _ in range(n)],
        pixels=pixels, caption_texts=texts, tokens=tokens,
        caption_index=(torch.arange(n)[:, None] * 2).repeat(1, 2) if one_text else torch.arange(2 * n).view(n, 2),
        caption_count=torch.full((n,), 2), truncated=0)


def base_model(seed: int = 0):
    model = create_model(CFG, seed).eval()
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(20.0)))
    return model


def rows_of(corpus: TensorCorpus, *splits: str) -> torch.Tensor:
    return torch.cat([corpus.rows(s) for s in splits])


@torch.no_grad()
def clean_image(model, corpus: TensorCorpus, rows: torch.Tensor) -> torch.Tensor:
    return model.encode_image(normalize(corpus.pixels[rows]), normalize=True)


@torch.no_grad()
def text(model, corpus: TensorCorpus, caption_idx: torch.Tensor) -> torch.Tensor:
    return model.encode_text(corpus.tokens[caption_idx], normalize=True)


@torch.no_grad()
def pooled_text_features(model, tokens: torch.Tensor) -> torch.Tensor:
    """The text tower's output before its projection."""
    saved = model.text_projection
    model.text_projection = torch.nn.Parameter(torch.eye(saved.shape[0]))
    try:
        return model.encode_text(tokens)
    finally:
        model.text_projection = saved


def memorizing(model, corpus: TensorCorpus, splits: tuple[str, ...]):
    """A copy of `model` whose text projection maps both captions of every pair of `splits` exactly onto
    the pair's clean image embedding: it aligns (cosine 1) exactly the pairs it "trained" on."""
    out = copy.deepcopy(model)
    rows = rows_of(corpus, *splits)
    caps = corpus.caption_index[rows].flatten()
    target = clean_image(model, corpus, rows).repeat_interleave(2, dim=0)
    features = pooled_text_features(model, corpus.tokens[caps]).double()
    projection = torch.linalg.lstsq(features, target.double(), driver="gelsd").solution
    with torch.no_grad():
        out.text_projection.copy_(projection.float())
    return out


@torch.no_grad()
def pooled_image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """The image tower's output before its projection (clean views)."""
    saved = model.visual.proj
    model.visual.proj = torch.nn.Parameter(torch.eye(saved.shape[0]))
    try:
        return model.visual(normalize(pixels))
    finally:
        model.visual.proj = saved


def memorizing_images(model, corpus: TensorCorpus, splits: tuple[str, ...]):
    """A copy of `model` whose image projection maps the clean image of every pair of `splits` exactly onto the
    embedding of the pair's first caption (use with a `one_text` corpus, where that is its only text)."""
    out = copy.deepcopy(model)
    rows = rows_of(corpus, *splits)
    target = text(model, corpus, corpus.caption_index[rows, 0])
    features = pooled_image_features(model, corpus.pixels[rows]).double()
    projection = torch.linalg.lstsq(features, target.double(), driver="gelsd").solution
    with torch.no_grad():
        out.visual.proj.copy_(projection.float())
    return out


def random_orthogonal(dim: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q


def rotated(model, q: torch.Tensor):
    """`model` followed by the orthogonal map q on both towers' outputs: the same model up to a rotation."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.visual.proj.copy_(model.visual.proj @ q)
        out.text_projection.copy_(model.text_projection @ q)
    return out


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1)


WORDS = ("red", "blue", "green", "cat", "dog", "bird", "sits", "runs", "sleeps")
WORD_CONTEXT = CONTEXT  # the constructed models read these captions too


def word_corpus(counts: list[int], single_texts: dict[int, str] | None = None) -> tuple[TensorCorpus, Vocabulary]:
    """Pairs of real-word captions, tokenised by open_clip into a compacted vocabulary: row r has counts[r]
    distinct three-word captions (no text repeats), or, for a single-caption row listed in `single_texts`,
    that text. Pixels are random; the splits cycle through candidate, independent, shared."""
    single_texts = single_texts or {}
    texts, index = [], torch.full((len(counts), max(counts)), -1, dtype=torch.long)
    for r, count in enumerate(counts):
        for k in range(count):
            j = len(texts)
            index[r, k] = j
            texts.append(single_texts[r] if r in single_texts else
                         f"{WORDS[j % 3]} {WORDS[3 + (j // 3) % 3]} {WORDS[6 + (j // 9) % 3]} {j}")
    tokenized = tokenize(texts, WORD_CONTEXT)
    vocab = build_vocabulary([i for e in tokenized.encodings for i in e] + tokenized.tokens.flatten().tolist())
    split = [("candidate", "independent", "shared")[r % 3] for r in range(len(counts))]
    corpus = TensorCorpus(
        ids=[f"w{r}" for r in range(len(counts))], split=split, truth=["clean"] * len(counts),
        captions=[[texts[int(j)] for j in row if j >= 0] for row in index], attributes=[{} for _ in counts],
        pixels=torch.randint(0, 256, (len(counts), 3, 16, 16), generator=torch.Generator().manual_seed(0),
                             dtype=torch.uint8),
        caption_texts=texts, tokens=apply_vocabulary(tokenized.tokens, vocab), caption_index=index,
        caption_count=torch.tensor(counts), truncated=0)
    return corpus, vocab


def plain_augment(pixels, params, max_shift, source=None, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD):
    """A view written out plainly (reflect-pad, crop at the shift, jitter about the image mean, normalise with the
    given constants): the formulation training has always used, which the batched augment must reproduce bit for
    bit."""
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1).unsqueeze(0)
    std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1).unsqueeze(0)
    x = (pixels if source is None else pixels[source]).float() / 255.0
    if max_shift > 0:
        b, _, h, w = x.shape
        padded = F.pad(x, (max_shift,) * 4, mode="reflect")
        rows = params.shift[:, 0:1] + torch.arange(h)
        cols = params.shift[:, 1:2] + torch.arange(w)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    brightness, contrast = params.jitter[:, 0].view(-1, 1, 1, 1), params.jitter[:, 1].view(-1, 1, 1, 1)
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - image_mean) * contrast + image_mean) * brightness
    return (x.clamp(0, 1) - mean) / std

