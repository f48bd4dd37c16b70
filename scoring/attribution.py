"""Which encoder memorizes: per-tower scores, per-layer curves (LayerMem) and the encoder-swap check.

Tower scores are SSLMem on one tower: the mean cosine between the embeddings of
two views of the same input, under the model that saw the pair minus under the
one that did not. Image views are two independent seeded augmentations; text
views are two different captions of the pair, or, for a single-caption pair, the
caption and a seeded one-word dropout of it. LayerMem applies the same score to
the mean-pooled output of every block (ViT/text resblocks, ResNet stages), read
with forward hooks during the same passes.

UnitMem (clipmem's extension, after Wang et al., "Localizing Memorization in SSL Vision Encoders", NeurIPS
2024) is read in the same passes: per unit (a transformer block's MLP hidden unit after its activation,
token-averaged; a ResNet stage's output channel, spatially averaged) each pair's mean activation over its
augmented views under the model that trained on it, then per model over the pairs it trained on (f: S_C,
g: S_I) the unit's selectivity to one of them, (mu_max - mu_-max) / (mu_max + mu_-max), averaged over the
block's units (`unit_mem`; docs/layers.md).

The swap check fits orthogonal maps between g's and f's spaces on the shared
pairs (which both models saw) and recomputes the alignment with one tower taken
from the model that did not see the pair: the drop tells which tower carried
the pair's memorization. It needs the published scheme's S_S, so k-fold runs have
no swap columns (they are optional in scores.parquet); tower scores and LayerMem
use the same with/without means as CLIPMem itself.

Like the views of CLIPMem, the tower views are drawn for the whole scored set and
sliced, so a shard of the scored pairs gets the values a single pass gives them;
per-pair layer values are aggregated afterwards (`layer_tables`).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from clipmem.scoring.columns import LAYER_UNIT_COLUMNS
from clipmem.scoring.config import ScoreConfig, TrainConfig
from clipmem.scoring.data.tensors import TensorCorpus
from clipmem.scoring.models import apply_vocabulary, pack, word_encodings
from clipmem.scoring.score import (ScoreResult, encode_captions, encode_context, encode_images_each, minmax,
                                   scored_rows, swap_captions, to_device, with_without)
from clipmem.scoring.significance import bootstrap_block_means
from clipmem.scoring.transform import sample_views

TOWERS = ("image", "text")


def image_blocks(model) -> list[torch.nn.Module]:
    """The blocks of the image tower whose outputs LayerMem reads, in order."""
    visual = model.visual
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return list(visual.transformer.resblocks)
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):  # open_clip's ModifiedResNet
        return [getattr(visual, f"layer{i}") for i in range(1, 5)]
    if hasattr(visual, "trunk"):  # timm towers: their top-level stages or blocks
        for name in ("stages", "blocks", "layers"):
            if hasattr(visual.trunk, name):
                return list(getattr(visual.trunk, name))
    raise ValueError(f"cannot find the blocks of image tower {type(visual).__name__}")


def text_blocks(model) -> list[torch.nn.Module]:
    if hasattr(model, "transformer") and hasattr(model.transformer, "resblocks"):
        return list(model.transformer.resblocks)
    if hasattr(model, "text") and hasattr(model.text, "transformer"):
        return list(model.text.transformer.resblocks)
    raise ValueError(f"cannot find the blocks of the text tower of {type(model).__name__}")


def _pool(output, mask: torch.Tensor | None) -> torch.Tensor:
    x = output[0] if isinstance(output, tuple) else output
    if x.dim() == 4:  # conv stage: (B, C, H, W)
        return x.float().mean(dim=(2, 3))
    if mask is not None:  # text tokens: average over real tokens only
        m = mask[:, : x.shape[1], None].to(x.dtype)
        return ((x * m).sum(1) / m.sum(1).clamp(min=1)).float()
    return x.float().mean(dim=1)


@contextmanager
def _forward_hooks(modules: list[torch.nn.Module], on_output):
    """Call on_output(i, output) after each forward of modules[i], for the duration of the block."""
    handles = [module.register_forward_hook(lambda _module, _inputs, output, i=i: on_output(i, output))
               for i, module in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_blocks(blocks: list[torch.nn.Module], mask_ref: dict | None = None):
    """Collect each block's mean-pooled output during forward passes; yields the per-block lists."""
    store: list[list[torch.Tensor]] = [[] for _ in blocks]

    def keep(i, output):
        store[i].append(_pool(output, mask_ref.get("mask") if mask_ref else None).cpu())
    with _forward_hooks(blocks, keep):
        yield store


def unit_modules(blocks: list[torch.nn.Module]) -> list[torch.nn.Module] | None:
    """Per block, the module whose output channels are the block's units for UnitMem, or None when some block has
    none that clipmem knows (UnitMem is then left out for that tower).

    A transformer block's units are its MLP's hidden units after the activation (open_clip: `mlp.gelu`, timm:
    `mlp.act`), where the paper finds a ViT's memorization; the residual stream is a sum of every block's writes,
    not one unit's response. A ResNet stage's units are its output channels: the stage ends in a ReLU.
    """
    found = []
    for block in blocks:
        mlp = getattr(block, "mlp", None)
        act = next((getattr(mlp, name) for name in ("gelu", "act") if hasattr(mlp, name)), None)
        if act is not None:
            found.append(act)
        elif isinstance(block, torch.nn.Sequential) and len(block) and all(hasattr(b, "act3") for b in block):
            found.append(block)  # open_clip's ModifiedResNet stage of Bottlenecks
        else:
            return None
    return found


@contextmanager
def capture_unit_sums(modules: list[torch.nn.Module], n_rows: int, repeat: int):
    """Per module, the (n_rows, units) sum of its pooled output over each row's `repeat` consecutive inputs.

    Summed in the hook, so a pass holds one row per pair rather than one per view."""
    sums: list[torch.Tensor | None] = [None] * len(modules)
    count = [0] * len(modules)

    def add(i, output):
        pooled = _pool(output, None).cpu()
        rows = torch.arange(count[i], count[i] + len(pooled)) // repeat
        if sums[i] is None:
            sums[i] = torch.zeros(n_rows, pooled.shape[1])
        sums[i].index_add_(0, rows, pooled)
        count[i] += len(pooled)
    with _forward_hooks(modules, add):
        yield sums


def unit_mem(activations) -> np.ndarray:
    """UnitMem of each unit from its per-sample mean activations, (samples, units) -> (units,).

    mu_max is the unit's highest per-sample mean, mu_-max its mean over the other samples; UnitMem =
    (mu_max - mu_-max) / (mu_max + mu_-max): 1 for a unit that responds to one sample only, 0 for one that responds
    to all alike. Means below 0 (GELU dips to -0.17) count as 0, so the ratio stays in [0, 1]; a unit silent on
    every sample is selective to none of them: 0.
    """
    a = np.clip(np.asarray(activations, dtype=np.float64), 0.0, None)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"UnitMem needs a (samples, units) matrix of at least two samples, got shape {a.shape}")
    top = a.max(0)
    rest = (a.sum(0) - top) / (a.shape[0] - 1)
    total = top + rest
    return np.divide(top - rest, total, out=np.zeros_like(top), where=total > 0)


def unit_key(tower: str, layer: int) -> str:
    """The per_pair key of a block's unit activations under the model that saw each pair: (units, N)."""
    return f"units_{tower}_{layer}"


@dataclass
class TowerViews:
    image_params: tuple        # two ViewParams, one per image view, (N * n) each
    text_tokens: tuple         # two (N * n, L) token tensors
    max_shift: int


def draw_tower_views(corpus: TensorCorpus, rows: torch.Tensor, cfg: ScoreConfig, train_cfg: TrainConfig,
                     context_length: int, vocab, part: slice | None = None) -> TowerViews:
    """Seeded view pairs for both towers; the same for every model.

    Drawn for all `rows`; `part` (a slice of rows) returns that part's views, identical to
    the same rows' views in the whole (only the part's captions are tokenised).
    """
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    n = cfg.views * len(rows)
    image_params = (sample_views(n, train_cfg.augment, gen), sample_views(n, train_cfg.augment, gen))
    rep = rows.repeat_interleave(cfg.views)
    counts = corpus.caption_count[rep]
    # two different captions where the pair has several
    first = torch.clamp((torch.rand(n, generator=gen) * counts).long(), max=counts - 1)
    offset = 1 + torch.clamp((torch.rand(n, generator=gen) * (counts - 1)).long(), min=0)
    second = torch.where(counts > 1, (first + offset) % counts.clamp(min=1), first)
    flat = slice(0, n) if part is None else slice(part.start * cfg.views, part.stop * cfg.views)
    idx_a = corpus.caption_index[rep, first]
    idx_b = corpus.caption_index[rep, second]
    tokens_a = corpus.tokens[idx_a[flat]]
    tokens_b = corpus.tokens[idx_b[flat]].clone()
    # one-word dropout of single-caption pairs: the draws of the rows before the part are made (and
    # dropped) so the generator reaches the part's rows in the same state as in a single pass
    single = torch.nonzero(counts[: flat.stop] == 1).flatten().tolist()
    dropped = [_drop_index(corpus.caption_texts[int(idx_a[j])], gen) for j in single]
    keep = [(j - flat.start, corpus.caption_texts[int(idx_a[j])], k)
            for j, k in zip(single, dropped) if j >= flat.start and k is not None]
    if keep:
        encodings = [_without_word(text, k) for _, text, k in keep]
        tokens_b[[j for j, _, _ in keep]] = apply_vocabulary(pack(encodings, context_length), vocab)
    image_params = tuple(p.select(flat) for p in image_params)
    max_shift = train_cfg.augment.max_shift if train_cfg.augment.enabled else 0
    return TowerViews(image_params=image_params, text_tokens=(tokens_a, tokens_b), max_shift=max_shift)


def _drop_index(text: str, gen: torch.Generator) -> int | None:
    """Which word of the caption its second view drops (None for a one-word caption: no draw)."""
    words = text.split()
    if len(words) < 2:
        return None
    return int(torch.randint(len(words), (1,), generator=gen))


def _without_word(text: str, k: int) -> list[int]:
    """The caption's token ids less those of its word k: the ids of the caption with that word removed,
    taken from the caption's own encoding so that every id is one the run's vocabulary holds."""
    groups = word_encodings(text)
    if len(groups) >= 2:  # the tokenizer's cleaning can join or drop words of odd text: fewer may remain
        del groups[min(k, len(groups) - 1)]
    return [i for ids in groups for i in ids]


@torch.inference_mode()
def tower_similarities(model, corpus: TensorCorpus, rows: torch.Tensor, views: TowerViews, cfg: ScoreConfig,
                       device, layers: bool) -> dict[str, torch.Tensor]:
    """Cosine between the two views per (pair, view): final embedding (N, n) and, with layers, per block (B, N, n)."""
    return tower_similarities_each({"model": model}, corpus, rows, views, cfg, device, layers)["model"]


@torch.inference_mode()
def tower_similarities_each(models: dict, corpus: TensorCorpus, rows: torch.Tensor, views: TowerViews,
                            cfg: ScoreConfig, device, layers: bool) -> dict[str, dict[str, torch.Tensor]]:
    """`tower_similarities` under each model: {model: {"image", "text"[, "image_layers", "text_layers"]}}; with
    layers also "image_units" / "text_units" where the tower has units (`unit_modules`): per block, each pair's
    (N, units) mean activation over its two views of each of its n view pairs.

    Each image view is augmented once and encoded by every model. Text views repeat (each pair has a few
    captions and n views of them), and a text's encoding does not depend on the batch it is in, so every
    distinct token sequence is encoded once per model and looked up.
    """
    distinct_models = {id(m): m for m in models.values()}
    if len(distinct_models) < len(models):  # one module under two names: hooked once, encoded once
        sims = tower_similarities_each({i: m for i, m in distinct_models.items()}, corpus, rows, views, cfg,
                                       device, layers)
        return {name: sims[id(m)] for name, m in models.items()}
    n_rows = len(rows)
    finals: dict[str, list] = {name: [] for name in models}
    pooled: dict[str, list] = {name: [] for name in models}
    blocks = {name: image_blocks(m) if layers else [] for name, m in models.items()}
    units = {name: unit_modules(blocks[name]) if layers else None for name in models}
    unit_sums: dict[str, list] = {name: [] for name in models}
    for params in views.image_params:
        with ExitStack() as stack:
            stores = {name: stack.enter_context(capture_blocks(blocks[name])) for name in models}
            sums = {name: stack.enter_context(capture_unit_sums(units[name] or [], n_rows, cfg.views))
                    for name in models}
            encoded = encode_images_each(list(models.values()), corpus.pixels[rows], cfg.batch_size, device,
                                         views=params, max_shift=views.max_shift, repeat=cfg.views)
        for name, final in zip(models, encoded):
            finals[name].append(final)
            pooled[name].append([torch.cat(parts) for parts in stores[name]])
            unit_sums[name].append(sums[name])
    out = {name: _view_cosines(finals[name], pooled[name], n_rows, cfg.views, "image", layers) for name in models}
    for name in models:
        if units[name] is not None:
            out[name]["image_units"] = [sum(parts) / (len(views.image_params) * cfg.views)
                                        for parts in zip(*unit_sums[name])]

    n = len(views.text_tokens[0])
    distinct, index = torch.unique(torch.cat(views.text_tokens), dim=0, return_inverse=True)
    # the pair of each text view: both halves of `index` run over (pair, view) in order
    view_rows = (torch.arange(2 * n) % n) // cfg.views
    for name, model in models.items():
        mask_ref: dict = {}
        chunks = []
        tower_blocks = text_blocks(model) if layers else []
        text_units = unit_modules(tower_blocks) if layers else None
        with capture_blocks(tower_blocks, mask_ref) as store, capture_blocks(text_units or [], mask_ref) as unit_store:
            for s in range(0, len(distinct), cfg.batch_size):
                chunk = to_device(distinct[s:s + cfg.batch_size], device)
                mask_ref["mask"] = chunk != 0
                with encode_context(device):
                    chunks.append(model.encode_text(chunk, normalize=True).float().cpu())
        final = torch.cat(chunks)
        per_block = [torch.cat(parts) for parts in store]
        out[name].update(_view_cosines([final[index[:n]], final[index[n:]]],
                                       [[p[index[:n]] for p in per_block], [p[index[n:]] for p in per_block]],
                                       n_rows, cfg.views, "text", layers))
        if text_units is not None:
            out[name]["text_units"] = [
                torch.zeros(n_rows, parts[0].shape[1]).index_add_(0, view_rows, torch.cat(parts)[index])
                / (2 * cfg.views) for parts in unit_store]
    return out


def _view_cosines(finals: list, pooled: list, n_rows: int, n_views: int, tower: str, layers: bool) -> dict:
    """{tower: (N, n) cosine of the two views' final embeddings[, tower_layers: (B, N, n) of each block's]}."""
    out = {tower: (finals[0] * finals[1]).sum(-1).view(n_rows, n_views)}
    if layers:
        out[f"{tower}_layers"] = torch.stack([
            F.cosine_similarity(a, b, dim=-1).view(n_rows, n_views) for a, b in zip(*pooled)])
    return out


def orthogonal_map(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """W minimising ||source @ W - target|| over orthogonal W (Procrustes)."""
    u, _, vh = torch.linalg.svd(source.double().T @ target.double())
    return (u @ vh).float()


@torch.inference_mode()
def swap_check(models: dict, corpus: TensorCorpus, result: ScoreResult, cfg: ScoreConfig, device) -> dict[str, np.ndarray]:
    """Memorization removed by swapping in the text (or image) tower of the model that did not see the pair.

    Published scheme only (f and g, fitted on S_S); {} otherwise.
    """
    shared = corpus.rows("shared")
    if len(shared) == 0 or tuple(models) != ("f", "g"):
        return {}
    first_caption = swap_captions(corpus)
    caption = result.view_captions
    needed = torch.cat([caption, first_caption])
    emb = {}
    images = encode_images_each(list(models.values()), corpus.pixels[shared], cfg.batch_size, device)
    for (name, model), image in zip(models.items(), images):
        table = result.tables.get(name)
        if table is None or not table.covers(needed):  # score_run's table holds them all: no second encoding
            table = encode_captions(model, corpus, needed, cfg.batch_size, device)
        emb[name] = {"image": image, "text": table[first_caption], "table": table}
    # maps from g's space to f's, fitted where both models saw the data; the inverse is the transpose
    w = {tower: orthogonal_map(emb["g"][tower], emb["f"][tower]) for tower in ("image", "text")}
    n = len(result.scored)
    seen_f = result.seen_by_f.repeat_interleave(cfg.views)

    def pick(a, b):
        return torch.where(seen_f[:, None], a, b)

    img_seen = pick(result.view_images["f"], result.view_images["g"])
    txt_seen = pick(emb["f"]["table"][caption], emb["g"]["table"][caption])
    # the unseen model's towers carried into the seen model's space
    img_unseen = pick(result.view_images["g"] @ w["image"], result.view_images["f"] @ w["image"].T)
    txt_unseen = pick(emb["g"]["table"][caption] @ w["text"], emb["f"]["table"][caption] @ w["text"].T)
    full = (img_seen * txt_seen).sum(-1).view(n, cfg.views).mean(1)
    text_swapped = (img_seen * F.normalize(txt_unseen, dim=-1)).sum(-1).view(n, cfg.views).mean(1)
    image_swapped = (F.normalize(img_unseen, dim=-1) * txt_seen).sum(-1).view(n, cfg.views).mean(1)
    return {"mem_swap_text": (full - text_swapped).numpy(), "mem_swap_image": (full - image_swapped).numpy()}


@torch.inference_mode()
def tower_scores(models: dict, corpus: TensorCorpus, result: ScoreResult, cfg: ScoreConfig, train_cfg: TrainConfig,
                 context_length: int, vocab, device, layers: bool = True) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The score table with per-tower (raw and scaled over these pairs) and swap scores added, and, with
    `layers`, each pair's LayerMem per block: {tower: (blocks, N)}, and in the published scheme each block's unit
    activations under the model that saw the pair: {unit_key(tower, layer): (units, N)}."""
    views = draw_tower_views(corpus, scored_rows(corpus), cfg, train_cfg, context_length, vocab, result.part)
    sims = tower_similarities_each(models, corpus, result.scored, views, cfg, device, layers)

    def seen_minus_unseen(key: str) -> torch.Tensor:
        values = torch.stack([sims[name][key] for name in models])  # (models, [blocks,] N, n)
        if values.dim() == 4:  # pairs first for the with/without means
            values = values.transpose(1, 2)
        with_, without = with_without(values, result.seen)
        out = (with_ - without).mean(-1)
        return out.T if out.dim() == 2 else out

    frame = result.frame.copy()
    for tower in TOWERS:
        raw = seen_minus_unseen(tower).numpy()
        frame[f"mem_{tower}_raw"] = raw
        frame[f"mem_{tower}"] = minmax(raw)
    frame = frame.assign(**swap_check(models, corpus, result, cfg, device))
    per_pair = {tower: seen_minus_unseen(f"{tower}_layers").numpy() for tower in TOWERS} if layers else {}
    if layers and tuple(models) == ("f", "g"):
        per_pair.update(_seen_units(sims, result.seen_by_f))
    return frame, per_pair


def _seen_units(sims: dict, seen_f: torch.Tensor) -> dict[str, np.ndarray]:
    """{unit_key(tower, layer): (units, N)}: each pair's unit activations under the model that trained on it.

    Published scheme only: in a k-fold run every pair is seen by several models, whose units do not correspond."""
    out = {}
    for tower in TOWERS:
        key = f"{tower}_units"
        if key in sims["f"] and key in sims["g"]:
            for layer, (f_acts, g_acts) in enumerate(zip(sims["f"][key], sims["g"][key]), start=1):
                out[unit_key(tower, layer)] = torch.where(seen_f[:, None], f_acts, g_acts).T.numpy()
    return out


def layer_tables(frame: pd.DataFrame, per_pair: dict[str, np.ndarray],
                 top_k_curves: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """LayerMem and ΔLayerMem per tower, block and truth tag, each with its bootstrap 95% interval over the group's
    pairs (columns.LAYER_INTERVAL_COLUMNS), and UnitMem per tower and block (columns.LAYER_UNIT_COLUMNS, on the
    truth "all" rows; `block_unit_mem`); per-pair curves of the top_k most memorized pairs.

    ΔLayerMem's interval is the bootstrap of the per-pair difference of consecutive blocks, resampled with the same
    pairs as LayerMem's, so it reflects that a pair's blocks move together. per_pair: {tower: (blocks, N)} in frame
    order; the frame's `clipmem` must be scaled over the whole run.
    """
    layer_rows, curve_rows = [], []
    if not per_pair:
        return pd.DataFrame(layer_rows), pd.DataFrame(curve_rows)
    top = np.argsort(-frame["clipmem"].to_numpy(), kind="stable")[:top_k_curves]
    truth = frame["truth"].to_numpy()
    for tower in TOWERS:
        values = per_pair[tower]  # (blocks, N)
        groups = {"all": np.ones(len(frame), bool), **{t: truth == t for t in np.unique(truth)}}
        # a pair's increase at each block; block 1's increase is its LayerMem
        deltas = np.diff(values, axis=0, prepend=np.zeros((1, values.shape[1])))
        units = block_unit_mem(frame, per_pair, tower, len(values))
        no_units = dict.fromkeys(LAYER_UNIT_COLUMNS, float("nan"))
        for group, mask in groups.items():
            means = values[:, mask].mean(1)
            # the same seed for both: LayerMem and ΔLayerMem come from the same resampled pairs
            mem_lo, mem_hi = bootstrap_block_means(values[:, mask], seed=0)
            delta_lo, delta_hi = bootstrap_block_means(deltas[:, mask], seed=0)
            for layer, value in enumerate(means):
                layer_rows.append({"tower": tower, "layer": layer + 1, "truth": group, "pairs": int(mask.sum()),
                                   "layer_mem": float(value),
                                   "delta_layer_mem": float(value - (means[layer - 1] if layer else 0.0)),
                                   "layer_mem_lo": float(mem_lo[layer]), "layer_mem_hi": float(mem_hi[layer]),
                                   "delta_layer_mem_lo": float(delta_lo[layer]),
                                   "delta_layer_mem_hi": float(delta_hi[layer]),
                                   # a property of a model's units over all the pairs it trained on, not of a group
                                   **(units[layer] if group == "all" else no_units)})
        for j in top:
            for layer, value in enumerate(values[:, j]):
                curve_rows.append({"sample_id": frame["sample_id"].iloc[j], "tower": tower, "layer": layer + 1,
                                   "layer_mem": float(value)})
    return pd.DataFrame(layer_rows), pd.DataFrame(curve_rows)


def block_unit_mem(frame: pd.DataFrame, per_pair: dict[str, np.ndarray], tower: str, blocks: int) -> list[dict]:
    """Per block of the tower, {"unit_mem_f": f's UnitMem over the pairs it trained on (S_C), "unit_mem_g": g's
    over S_I, "unit_mem": their mean}, each the mean over the block's units of `unit_mem`; NaN where it is not
    defined: no unit activations in per_pair (k-fold runs, towers without known units, runs scored without
    layers), a model with fewer than two of its pairs, or a mean over replicas."""
    nan = float("nan")
    missing = dict.fromkeys(LAYER_UNIT_COLUMNS, nan)
    # replica runs average per_pair over independently seeded models, whose unit k are unrelated units
    if "clipmem_raw_sd" in frame or not any(unit_key(tower, b) in per_pair for b in range(1, blocks + 1)):
        return [dict(missing) for _ in range(blocks)]
    seen_by = frame["seen_by"].to_numpy()
    rows = []
    for layer in range(1, blocks + 1):
        acts = per_pair.get(unit_key(tower, layer))  # (units, N)
        if acts is None:
            rows.append(dict(missing))
            continue
        per_model = {model: float(unit_mem(acts[:, seen_by == model].T).mean()) if (seen_by == model).sum() >= 2
                     else nan for model in ("f", "g")}
        defined = [v for v in per_model.values() if not np.isnan(v)]
        rows.append({"unit_mem": float(np.mean(defined)) if defined else nan,
                     "unit_mem_f": per_model["f"], "unit_mem_g": per_model["g"]})
    return rows


def attribute(models: dict, corpus: TensorCorpus, result: ScoreResult, cfg: ScoreConfig, train_cfg: TrainConfig,
              context_length: int, vocab, device, layers: bool = True, top_k_curves: int = 50):
    """Add tower and swap scores to the score table; return (frame, layers table, per-pair curves)."""
    frame, per_pair = tower_scores(models, corpus, result, cfg, train_cfg, context_length, vocab, device, layers)
    layer_frame, curves = layer_tables(frame, per_pair, top_k_curves)
    return frame, layer_frame, curves
