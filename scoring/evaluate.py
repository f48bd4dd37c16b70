"""Utility of a model on the held-out split S_E: retrieval and zero-shot accuracy.

Retrieval counts a hit by caption *text*, not by index: on data with repeated
captions several images legitimately own the same text.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from scoring.data.synthetic import COLOURS, SHAPES

# Prompts reuse caption words, so they fit a vocabulary compacted to the captions.
PROMPT = "a picture of a {colour} {shape}"


def zero_shot_prompts() -> list[str]:
    return [PROMPT.format(colour=c, shape=s) for c in COLOURS for s in SHAPES]


def retrieval(image: torch.Tensor, caption_table: torch.Tensor, caption_sets: list[set[int]]) -> dict[str, float]:
    """R@1 and R@5 both ways. caption_sets[i] holds the caption-table indices image i owns."""
    texts = sorted(set().union(*caption_sets))
    if not texts:
        return {}
    col = {t: j for j, t in enumerate(texts)}
    owners: dict[int, set[int]] = defaultdict(set)
    for i, caps in enumerate(caption_sets):
        for t in caps:
            owners[col[t]].add(i)
    sims = image @ caption_table[texts].T  # (images, texts)
    out = {}
    for k in (1, 5):
        top_t = sims.topk(min(k, sims.shape[1]), dim=1).indices
        out[f"i2t_r{k}"] = float(np.mean([any(texts[j] in caption_sets[i] for j in top_t[i].tolist())
                                          for i in range(len(caption_sets))]))
        top_i = sims.T.topk(min(k, sims.shape[0]), dim=1).indices
        out[f"t2i_r{k}"] = float(np.mean([bool(owners[j] & set(top_i[j].tolist())) for j in range(len(texts))]))
    return out


def zero_shot(image: torch.Tensor, prompt_emb: torch.Tensor, attributes: list[dict]) -> dict[str, float]:
    """Shape and colour accuracy on single-object images, class embedding = mean over the other attribute."""
    keep = [i for i, a in enumerate(attributes) if len(a.get("objects", [])) == 1]
    if not keep:
        return {}
    grid = prompt_emb.view(len(COLOURS), len(SHAPES), -1)
    out = {}
    for attr, classes, axis in (("colour", list(COLOURS), 1), ("shape", SHAPES, 0)):
        class_emb = torch.nn.functional.normalize(grid.mean(axis), dim=-1)
        pred = (image[keep] @ class_emb.T).argmax(1).tolist()
        truth = [classes.index(attributes[i]["objects"][0][attr]) for i in keep]
        out[f"zeroshot_{attr}"] = float(np.mean([p == t for p, t in zip(pred, truth)]))
    return out
