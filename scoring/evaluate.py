"""Utility of a model on the held-out split S_E: retrieval, zero-shot accuracy and linear probes.

Retrieval counts a hit by caption *text*, not by index: on data with repeated
captions several images legitimately own the same text.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from clipmem.scoring.config import RunConfig
from clipmem.scoring.data.synthetic import COLOURS, SHAPES
from clipmem.scoring.data.tensors import TensorCorpus
from clipmem.scoring.schemes import PUBLISHED_MODELS
from clipmem.scoring.score import clean_embeddings, encode_images

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


def probe_labels(attributes: list[dict], label_key: str | None) -> dict[str, list]:
    """Labels a linear probe can predict from an image, per label name (None where a pair has none).

    The built-in set gives shape and colour of single-object images; other data a
    label named by `label_key` (a CSV column or a key of the folder's attributes).
    """
    if label_key:
        return {label_key: [a.get(label_key) for a in attributes]}
    if any("objects" in a for a in attributes):
        single = [a["objects"][0] if len(a.get("objects", [])) == 1 else None for a in attributes]
        return {attr: [o[attr] if o else None for o in single] for attr in ("shape", "colour")}
    return {}


def linear_probe(train_x: torch.Tensor, train_y: list, test_x: torch.Tensor, test_y: list,
                 inverse_l2=(0.1, 1.0, 10.0, 100.0), seed: int = 0) -> float | None:
    """Test accuracy of a logistic regression fitted on frozen embeddings (CLIP's linear-probe protocol).

    The L2 strength is picked on a seeded fifth of the training set, then the probe is
    refitted on all of it. Pairs without a label (None) are left out of both sets.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    train = [i for i, y in enumerate(train_y) if y is not None]
    test = [i for i, y in enumerate(test_y) if y is not None]
    if len({train_y[i] for i in train}) < 2 or not test:
        return None
    x, y = train_x[train].double().numpy(), np.array([str(train_y[i]) for i in train])
    order = np.random.default_rng(seed).permutation(len(train))
    val, fit = order[: max(1, len(train) // 5)], order[max(1, len(train) // 5):]

    def probe(c, rows):
        return LogisticRegression(C=c, max_iter=1000).fit(x[rows], y[rows])

    # one BLAS thread: these products are too small to share, and waking a second thread for each of lbfgs's
    # hundreds of them made the default run's 20 fits take 63 s of its 77 s finishing step (5-7x slower)
    with threadpool_limits(1, user_api="blas"):
        best = max(inverse_l2, key=lambda c: probe(c, fit).score(x[val], y[val]))
        model = probe(best, np.arange(len(train)))
        return float(model.score(test_x[test].double().numpy(), np.array([str(test_y[i]) for i in test])))


def utility(models: dict, corpus: TensorCorpus, clean: dict, embedded: torch.Tensor, cfg: RunConfig, device) -> dict:
    """Utility of every model: from its clean embeddings of the scored and S_E pairs when it has them, else (fold
    models beyond the two literal ones) from its S_E embeddings alone."""
    names = tuple(models)
    extra = corpus.rows("extra")
    per_model = {}
    for name in names:
        if name in clean:
            per_model[name] = evaluate_model(models[name], corpus, clean[name], embedded, cfg, device,
                                             probe_rows=probe_rows(corpus, name, names))
        else:
            per_model[name] = evaluate_model(models[name], corpus,
                                             clean_embeddings(models[name], corpus, extra, cfg.score, device), extra,
                                             cfg, device, probe_rows=probe_rows(corpus, name, names))
    return per_model


def probe_rows(corpus, name: str, names: tuple[str, ...]) -> torch.Tensor:
    """Where the linear probe is fitted: S_S (both f and g trained on it); for fold model k, its training folds."""
    if names == PUBLISHED_MODELS:
        return corpus.rows("shared")
    k = names.index(name)
    rows = torch.cat([corpus.rows("candidate"), corpus.rows("independent")])
    return rows[corpus.fold[rows] != k]


def evaluate_model(model, corpus: TensorCorpus, emb, embedded: torch.Tensor, cfg: RunConfig, device,
                   probe_rows: torch.Tensor | None = None) -> dict:
    """Retrieval and zero-shot accuracy on S_E with this model's clean embeddings; a linear probe fitted on
    `probe_rows` (default S_S)."""
    extra = [i for i, r in enumerate(embedded.tolist()) if corpus.split[r] == "extra"]
    if not extra:
        return {}
    image = emb.image[extra]
    rows = embedded[extra]
    caption_sets = [set(x for x in corpus.caption_index[r].tolist() if x >= 0) for r in rows.tolist()]
    out = retrieval(image, emb.caption_table, caption_sets)
    prompts = zero_shot_prompts()
    text_id = {t: j for j, t in enumerate(corpus.caption_texts)}
    if all(p in text_id for p in prompts):
        prompt_emb = emb.caption_table[[text_id[p] for p in prompts]]
        out.update(zero_shot(image, prompt_emb, [corpus.attributes[r] for r in rows.tolist()]))
    # linear probe: fitted on the clean image embeddings of S_S (which both models trained on), tested on S_E
    labels = probe_labels(corpus.attributes, cfg.data.options.label_key)
    if labels:
        shared = corpus.rows("shared") if probe_rows is None else probe_rows
        train_x = encode_images(model, corpus.pixels[shared], cfg.score.batch_size, device)
        for label, values in labels.items():
            accuracy = linear_probe(train_x, [values[r] for r in shared.tolist()], image,
                                    [values[r] for r in rows.tolist()])
            if accuracy is not None:
                out[f"probe_{label}"] = accuracy
    return out
