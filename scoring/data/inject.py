"""Fault injection on any source, so memorization can be checked against known bad pairs.

`--inject swapped=0.02,vague=0.01` corrupts that fraction of S_C and of S_I
(chosen among their clean pairs, seeded) and records the truth tag:
- swapped: the pair takes the captions of another pair of the dataset;
- vague: the captions become uninformative ("a picture of something");
- duplicate: the pair becomes a copy of a shared pair (its image and captions),
  so both models saw a copy of it.
The same config and split always give the same corruption, so every step of a
run (and an export for open_clip) sees the same data.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from clipmem.scoring.columns import SCORED_SPLITS
from clipmem.scoring.data.base import PairDataset
from clipmem.scoring.data.synthetic import VAGUE_CAPTIONS
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.splits import SplitPlan

INJECTABLE = ("swapped", "vague", "duplicate")


def check_rates(rates: dict[str, float]) -> None:
    unknown = set(rates) - set(INJECTABLE)
    if unknown:
        raise ClipmemError(f"cannot inject {sorted(unknown)}; injectable tags: {', '.join(INJECTABLE)}")
    if any(not 0 <= r <= 1 for r in rates.values()) or sum(rates.values()) > 1:
        raise ClipmemError(f"injection rates must lie in [0, 1] and sum to at most 1, got {rates}")


def inject_faults(dataset: PairDataset, plan: SplitPlan, rates: dict[str, float], seed: int) -> PairDataset:
    check_rates(rates)
    if not any(rates.values()):
        return dataset
    rng = np.random.default_rng(seed)
    where = dataset.index_of()
    captions, truth = list(dataset.captions), list(dataset.truth)
    refs = list(dataset.image_refs)
    attributes = list(dataset.attributes) if dataset.attributes else [{} for _ in dataset.ids]
    shared = [where[s] for s in plan.ids["shared"]]
    if plan.folds is not None:  # k-fold: no S_S; a duplicate copies a pair of the pool, which most models train on
        shared = [where[s] for s in plan.ids["candidate"] + plan.ids["independent"]]
    for split in SCORED_SPLITS:
        pool = [where[s] for s in plan.ids[split] if truth[where[s]] == "clean"]
        order = list(rng.permutation(pool)) if pool else []
        cursor = 0
        for tag in INJECTABLE:
            count = int(round(rates.get(tag, 0.0) * len(plan.ids[split])))
            if cursor + count > len(order):
                raise ClipmemError(f"not enough clean pairs in {split} to inject {count} '{tag}' pairs")
            for i in order[cursor:cursor + count]:
                i = int(i)
                if tag == "swapped":
                    donor = _donor(rng, len(captions), i, lambda d: captions[d] != captions[i])
                    captions[i] = list(dataset.captions[donor])
                    attributes[i] = {**attributes[i], "injected_from": dataset.ids[donor]}
                elif tag == "vague":
                    k = max(1, min(len(captions[i]), len(VAGUE_CAPTIONS)))
                    captions[i] = [VAGUE_CAPTIONS[j] for j in rng.choice(len(VAGUE_CAPTIONS), k, replace=False)]
                else:
                    if not shared:
                        raise ClipmemError("duplicate injection needs a non-empty shared split")
                    donor = int(shared[rng.integers(len(shared))])
                    if donor == i:  # only in a k-fold plan, whose pool holds i itself
                        donor = int(shared[(shared.index(i) + 1) % len(shared)])
                    captions[i], refs[i] = list(dataset.captions[donor]), dataset.image_refs[donor]
                    attributes[i] = {**attributes[i], "injected_from": dataset.ids[donor]}
                truth[i] = tag
            cursor += count
    return replace(dataset, captions=captions, truth=truth, image_refs=refs, attributes=attributes)


def _donor(rng, n: int, i: int, ok) -> int:
    for _ in range(1000):
        d = int(rng.integers(n))
        if d != i and ok(d):
            return d
    raise ClipmemError("could not find a pair with different captions to swap with")
