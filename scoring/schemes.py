"""Which reference models a run trains, and which pairs each one sees.

published: models f (S_S ∪ S_C) and g (S_S ∪ S_I).
kfold:     models fold0 .. fold{K-1}; model k trains on every fold but fold k (S_E is held out).

Training and scoring read the scheme through three views of the same facts:
- `model_names`: the models, in training order;
- `slot_table`: (models, slots) rows per batch slot, -1 where a model has no pair; a pair
  sits in the same slot for every model that trains on it, and one augmentation and
  caption draw per slot serves them all (the coupling that keeps the models close);
- `trained_on`: for scored rows, which models saw each pair. A pair's "with" alignment is
  the mean over the models that saw it, its "without" alignment the mean over those that
  did not (one model in both schemes: g or f; model k for a pair of fold k).

The run directory names two literal models, f and g, for the per-model outputs
(embeddings.npz, utility in metrics.json, the dashboard's neighbours and maps): in a k-fold
run these are fold0 and fold1 (`LITERAL`), consistent with the plan's split labels.
"""

from __future__ import annotations

import torch

from clipmem.scoring.columns import TRAINING_SPLITS
from clipmem.scoring.data.tensors import TensorCorpus

PUBLISHED_MODELS = ("f", "g")


def model_names(corpus: TensorCorpus) -> tuple[str, ...]:
    if corpus.fold is None:
        return PUBLISHED_MODELS
    return tuple(f"fold{k}" for k in range(corpus.n_folds))


def literal_models(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The run's literal model f and g: which trained model each stands for."""
    return {"f": names[0], "g": names[1]}


def published_slots(corpus: TensorCorpus) -> tuple[torch.Tensor, torch.Tensor]:
    """Row of each slot for f and for g: shared pairs, then candidate i (f) paired with independent i (g)."""
    shared, cand, indep = corpus.rows("shared"), corpus.rows("candidate"), corpus.rows("independent")
    width = max(len(cand), len(indep))
    pad = lambda rows: torch.cat([rows, torch.full((width - len(rows),), -1, dtype=torch.long)])  # noqa: E731
    return torch.cat([shared, pad(cand)]), torch.cat([shared, pad(indep)])


def slot_table(corpus: TensorCorpus) -> torch.Tensor:
    """(models, slots) corpus rows; -1 where the model has no pair in the slot."""
    if corpus.fold is None:
        return torch.stack(published_slots(corpus))
    pool = torch.cat([corpus.rows("shared"), corpus.rows("candidate"), corpus.rows("independent")])
    pool = pool[corpus.fold[pool] >= 0]
    folds = corpus.fold[pool]
    return torch.stack([torch.where(folds == k, -1, pool) for k in range(corpus.n_folds)])


def slot_batch_size(table: torch.Tensor, batch_size: int) -> int:
    """Slots per step such that the fullest model averages `batch_size` pairs per step.

    The recipe's batch size in the published scheme (f or g fills every slot); about
    batch_size * K / (K - 1) in the k-fold scheme, where model k leaves fold k's slots empty.
    """
    slots = table.shape[1]
    fullest = int((table >= 0).sum(1).max())
    return max(2, (batch_size * slots + fullest // 2) // max(fullest, 1))


def trained_on(corpus: TensorCorpus, rows: torch.Tensor) -> torch.Tensor:
    """(len(rows), models) bool: whether each model trained on each row."""
    if corpus.fold is None:
        split = [corpus.split[int(r)] for r in rows]
        f = torch.tensor([s in TRAINING_SPLITS["f"] for s in split], dtype=torch.bool)
        g = torch.tensor([s in TRAINING_SPLITS["g"] for s in split], dtype=torch.bool)
        return torch.stack([f, g], dim=1).reshape(len(rows), 2)
    fold = corpus.fold[rows]
    return (fold[:, None] >= 0) & (fold[:, None] != torch.arange(corpus.n_folds)[None, :])


def configured_names(scheme: str, folds: int) -> tuple[str, ...]:
    """The models a run's split config asks for (before its corpus is built)."""
    return PUBLISHED_MODELS if scheme == "published" else tuple(f"fold{k}" for k in range(folds))
