"""The split plan: S_S (shared), S_C (candidates, f only), S_I (independent, g only), S_E (extra).

Pairs whose truth tag is not `clean` are placed in S_C and S_I, alternating, so
every injected fault is scored; the rest is a seeded shuffle. A plan is saved as
JSON with the sample ids of each split and reloads identically.

The k-fold scheme (`plan_kfold`) holds S_E out and splits every other pair into K
seeded folds; model k trains on all folds but fold k. Its plan keeps the four split
names so that a run directory reads the same to every consumer: with the literal
models f = fold model 0 and g = fold model 1, fold 0 is S_I (seen by g, not by f)
and every other fold is S_C (seen by f); S_S is empty. The folds themselves are
saved under "folds" (and "scheme": "kfold"); a published plan's file is unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from clipmem.scoring.columns import SPLITS
from clipmem.scoring.errors import ClipmemError

SCHEMES = ("published", "kfold")


@dataclass(frozen=True)
class SplitSizes:
    """Sizes as counts (>= 1) or fractions of the dataset (< 1); 0 is allowed for extra."""

    shared: float = 2400
    candidate: float = 300
    independent: float = 300
    extra: float = 300

    def resolve(self, n: int) -> dict[str, int]:
        """Pair counts for a dataset of n pairs.

        Fractions are shares of n, apportioned by largest remainder: each takes the floor of its
        exact share, and the pairs the floors leave out (as many as the rounded sum of the shares)
        go to the largest remainders, so fractions summing to 1 use exactly n pairs and never more.
        """
        exact, counts = {}, {}
        for name in SPLITS:
            value = getattr(self, name)
            if value < 0:
                raise ClipmemError(f"split size {name}={value:g} is negative")
            if 0 < value < 1:
                exact[name] = Fraction(repr(float(value))) * n  # the decimal the user wrote, not its binary float
            elif value != int(value):
                raise ClipmemError(f"split size {name}={value:g} is neither a whole count nor a fraction below 1")
            else:
                counts[name] = int(value)
        share = sum(exact.values(), Fraction(0)) / n if exact and n else Fraction(0)
        if share > 1:
            given = ",".join(f"{getattr(self, name):g}" for name in exact)
            raise ClipmemError(f"split fractions {given} sum to {float(share):g}, more than the whole dataset; "
                               "give fractions that sum to at most 1")
        floors = {name: math.floor(q) for name, q in exact.items()}
        left = math.floor(sum(exact.values(), Fraction(0)) + Fraction(1, 2)) - sum(floors.values())
        for name in sorted(exact, key=lambda k: exact[k] - floors[k], reverse=True)[:left]:
            floors[name] += 1
        counts = {name: counts[name] if name in counts else floors[name] for name in SPLITS}
        total = sum(counts.values())
        if total > n:
            hint = ("lower the counts" if exact else "lower the sizes or give fractions of the dataset "
                    "(e.g. 0.7,0.1,0.1,0.1)")
            raise ClipmemError(f"split sizes {counts} need {total} pairs but the dataset has {n}; {hint}")
        if counts["shared"] < 1 or counts["candidate"] < 1 or counts["independent"] < 1:
            raise ClipmemError(f"shared, candidate and independent splits need at least one pair each, got {counts}")
        return counts


@dataclass
class SplitPlan:
    seed: int
    ids: dict[str, list[str]]
    folds: list[list[str]] | None = None  # k-fold scheme only: the sample ids of each fold

    @property
    def scheme(self) -> str:
        return "published" if self.folds is None else "kfold"

    def sizes(self) -> dict[str, int]:
        return {name: len(self.ids[name]) for name in SPLITS}

    def split_of(self) -> dict[str, str]:
        return {sid: name for name in SPLITS for sid in self.ids[name]}

    def fold_of(self) -> dict[str, int]:
        return {sid: k for k, members in enumerate(self.folds or []) for sid in members}

    def to_json(self) -> dict:
        """split.json's content, which `load` reads back."""
        content = {"seed": self.seed, "sizes": self.sizes(), "ids": self.ids}
        if self.folds is not None:
            content.update(scheme="kfold", folds=self.folds)
        return content

    @classmethod
    def load(cls, path: Path) -> "SplitPlan":
        try:
            raw = json.loads(Path(path).read_text())
            folds = raw.get("folds")
            plan = cls(seed=int(raw["seed"]), ids={name: list(raw["ids"][name]) for name in SPLITS},
                       folds=None if folds is None else [list(map(str, f)) for f in folds])
            if plan.folds is not None:
                _check_folds(plan)
        except FileNotFoundError:
            raise ClipmemError(f"split plan {path} does not exist") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClipmemError(f"split plan {path} is malformed ({exc})") from None
        return plan


def _check_folds(plan: SplitPlan) -> None:
    """A k-fold plan's folds partition S_C ∪ S_I, fold 0 being S_I."""
    if len(plan.folds) < 2 or any(not f for f in plan.folds):
        raise ValueError(f"a k-fold plan needs at least 2 non-empty folds, got sizes {[len(f) for f in plan.folds]}")
    members = [sid for f in plan.folds for sid in f]
    if len(members) != len(set(members)) or set(members) != set(plan.ids["candidate"]) | set(plan.ids["independent"]):
        raise ValueError("the folds do not partition the candidate and independent pairs")
    if set(plan.folds[0]) != set(plan.ids["independent"]) or plan.ids["shared"]:
        raise ValueError("in a k-fold plan fold 0 is the independent split and the shared split is empty")


def plan_splits(ids: list[str], truth: list[str], sizes: SplitSizes, seed: int) -> SplitPlan:
    """Assign pairs to the four splits; faulty pairs go to S_C / S_I so they are scored."""
    n = len(ids)
    if n == 0:
        raise ClipmemError("cannot plan splits of an empty dataset")
    if len(set(ids)) != n:
        raise ClipmemError("dataset ids are not unique; cannot plan splits")
    counts = sizes.resolve(n)
    rng = np.random.default_rng(seed)
    faulty = [i for i, t in enumerate(truth) if t != "clean"]
    clean = [i for i, t in enumerate(truth) if t == "clean"]
    faulty = list(rng.permutation(faulty)) if faulty else []
    clean = list(rng.permutation(clean)) if clean else []
    if len(faulty) > counts["candidate"] + counts["independent"]:
        raise ClipmemError(
            f"{len(faulty)} pairs carry a fault tag but the scored splits hold only "
            f"{counts['candidate'] + counts['independent']}; raise the candidate/independent sizes"
        )
    candidate, independent = faulty[0::2], faulty[1::2]
    # balance the tag mix: if sizes differ, move the overflow to the other side
    while len(candidate) > counts["candidate"]:
        independent.append(candidate.pop())
    while len(independent) > counts["independent"]:
        candidate.append(independent.pop())
    take = iter(clean)
    candidate += [next(take) for _ in range(counts["candidate"] - len(candidate))]
    independent += [next(take) for _ in range(counts["independent"] - len(independent))]
    shared = [next(take) for _ in range(counts["shared"])]
    extra = [next(take) for _ in range(counts["extra"])]
    # within a split, order by a fresh shuffle so faulty pairs are not all first
    out = {}
    for name, members in zip(SPLITS, (shared, candidate, independent, extra)):
        members = [members[j] for j in rng.permutation(len(members))] if members else []
        out[name] = [ids[int(j)] for j in members]
    return SplitPlan(seed=seed, ids=out)


def plan_kfold(ids: list[str], truth: list[str], sizes: SplitSizes, folds: int, seed: int) -> SplitPlan:
    """Hold S_E out and split the rest into `folds` seeded folds of near-equal size.

    The pool is as large as S_S + S_C + S_I of `sizes` (so a published and a k-fold plan of one
    source use the same number of pairs); pairs with a fault tag are never put in S_E, so every
    one is scored, and are dealt round-robin over the folds.
    """
    n = len(ids)
    if folds < 2:
        raise ClipmemError(f"--folds must be >= 2 for the k-fold scheme, got {folds}")
    if n == 0:
        raise ClipmemError("cannot plan splits of an empty dataset")
    if len(set(ids)) != n:
        raise ClipmemError("dataset ids are not unique; cannot plan splits")
    counts = sizes.resolve(n)
    pool_size = counts["shared"] + counts["candidate"] + counts["independent"]
    if pool_size < 2 * folds:
        raise ClipmemError(f"{pool_size} pairs cannot fill {folds} folds of at least 2 pairs each")
    rng = np.random.default_rng(seed)
    faulty = [i for i, t in enumerate(truth) if t != "clean"]
    clean = [i for i, t in enumerate(truth) if t == "clean"]
    faulty = list(rng.permutation(faulty)) if faulty else []
    clean = list(rng.permutation(clean)) if clean else []
    if len(faulty) > pool_size:
        raise ClipmemError(f"{len(faulty)} pairs carry a fault tag but the folds hold only {pool_size}; "
                           "raise the sizes")
    pool = faulty + clean[: pool_size - len(faulty)]
    extra = clean[pool_size - len(faulty): pool_size - len(faulty) + counts["extra"]]
    # faulty pairs first, dealt round-robin, then the clean ones: every fold gets its share of each
    members: list[list[int]] = [[] for _ in range(folds)]
    for j, i in enumerate(pool):
        members[j % folds].append(i)
    fold_ids = []
    for m in members:
        fold_ids.append([ids[int(m[j])] for j in rng.permutation(len(m))])
    extra_ids = [ids[int(extra[j])] for j in rng.permutation(len(extra))] if extra else []
    out = {"shared": [], "candidate": [sid for f in fold_ids[1:] for sid in f], "independent": list(fold_ids[0]),
           "extra": extra_ids}
    return SplitPlan(seed=seed, ids=out, folds=fold_ids)
