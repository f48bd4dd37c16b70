"""The split plan: S_S (shared), S_C (candidates, f only), S_I (independent, g only), S_E (extra).

Pairs whose truth tag is not `clean` are placed in S_C and S_I, alternating, so
every injected fault is scored; the rest is a seeded shuffle. A plan is saved as
JSON with the sample ids of each split and reloads identically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scoring.errors import ClipmemError

SPLIT_NAMES = ("shared", "candidate", "independent", "extra")


@dataclass(frozen=True)
class SplitSizes:
    """Sizes as counts (>= 1) or fractions of the dataset (< 1); 0 is allowed for extra."""

    shared: float = 2400
    candidate: float = 300
    independent: float = 300
    extra: float = 300

    def resolve(self, n: int) -> dict[str, int]:
        counts = {}
        for name in SPLIT_NAMES:
            value = getattr(self, name)
            if value < 0:
                raise ClipmemError(f"split size {name}={value} is negative")
            counts[name] = int(round(value * n)) if 0 < value < 1 else int(value)
        total = sum(counts.values())
        if total > n:
            raise ClipmemError(
                f"split sizes {counts} need {total} pairs but the dataset has {n}; "
                "lower the sizes or give fractions"
            )
        if counts["shared"] < 1 or counts["candidate"] < 1 or counts["independent"] < 1:
            raise ClipmemError(f"shared, candidate and independent splits need at least one pair each, got {counts}")
        return counts


@dataclass
class SplitPlan:
    seed: int
    ids: dict[str, list[str]]

    def sizes(self) -> dict[str, int]:
        return {name: len(self.ids[name]) for name in SPLIT_NAMES}

    def split_of(self) -> dict[str, str]:
        return {sid: name for name in SPLIT_NAMES for sid in self.ids[name]}

    def save(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"seed": self.seed, "sizes": self.sizes(), "ids": self.ids}, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "SplitPlan":
        try:
            raw = json.loads(Path(path).read_text())
            plan = cls(seed=int(raw["seed"]), ids={name: list(raw["ids"][name]) for name in SPLIT_NAMES})
        except FileNotFoundError:
            raise ClipmemError(f"split plan {path} does not exist") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ClipmemError(f"split plan {path} is malformed ({exc})") from None
        return plan


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
    for name, members in zip(SPLIT_NAMES, (shared, candidate, independent, extra)):
        members = [members[j] for j in rng.permutation(len(members))] if members else []
        out[name] = [ids[int(j)] for j in members]
    return SplitPlan(seed=seed, ids=out)


def sizes_dict(sizes: SplitSizes) -> dict:
    return asdict(sizes)
