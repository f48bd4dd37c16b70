"""The dashboard's view state as URL query parameters, so every view is a link that can be shared and reloaded.

`ViewFilter` is the set of pairs Explore shows and Export downloads. It is parsed
leniently: a hand-edited URL with a bad value falls back to the default for that
field instead of failing. Only non-default values are written back, so URLs stay short.

Query parameters:
    run            the run's name (every page)
    score, lo, hi  keep pairs whose `score` lies in [lo, hi]
    split          candidate | independent (pairs scored against f or against g)
    truth          a ground-truth tag (clean, swapped, ...)
    tag            a user tag
    q              caption substring (case-insensitive)
    memorized      true: only pairs flagged memorized (clipmem_q <= the run's FDR)
    reason         only pairs scored with this reason for being memorized (one of scoring.columns.REASONS)
    clipmem_q_max  only pairs whose q-value is at most this (an FDR level of the user's choosing)
    sort, order    sort by a score, desc or asc
    size           pairs per page
    cursor, back   keyset position of the page shown, and the cursors of the pages before it
    sample         the sample id of the pair shown on the Sample page
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from clipmem.scoring.columns import REASON_LABELS, REASONS, SCORED_SPLITS

DEFAULT_SCORE = "clipmem"
ORDERS = ("desc", "asc")
PAGE_SIZES = (24, 48, 96)

# the keys of ViewFilter, and the paging keys that belong to one filter
FILTER_KEYS = ("run", "score", "lo", "hi", "split", "truth", "tag", "q", "memorized", "clipmem_q_max", "reason",
               "sort", "order", "size")
# the score the significance filters read; runs scored before significance testing lack it
Q_SCORE = "clipmem_q"
# the score written with each pair's reason (docs/why.md); runs scored before the evidence lack both
MISCAPTION_SCORE = "miscaption"
MISCAPTIONED = REASONS[0]
TRUE_WORDS = ("true", "1", "yes", "on")
PAGING_KEYS = ("cursor", "back")


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _first(params: Mapping[str, Any], key: str) -> Any:
    value = params.get(key)
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _all(params: Mapping[str, Any], key: str) -> list[str]:
    getter = getattr(params, "get_all", None)
    if getter is not None:
        return [str(v) for v in getter(key)]
    value = params.get(key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def format_score(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def format_probability(value: float | None) -> str:
    """A p- or q-value: three decimals, or two significant digits in scientific notation below 0.001 (a fitted
    tail gives p-values far below the null's 1/(m + 1), and "0.000" would read as impossible)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


@dataclass(frozen=True)
class ViewFilter:
    run: str | None = None
    score: str = DEFAULT_SCORE
    lo: float | None = None
    hi: float | None = None
    split: str | None = None
    truth: str | None = None
    tag: str | None = None
    q: str | None = None
    memorized: bool = False
    clipmem_q_max: float | None = None
    reason: str | None = None
    sort: str = DEFAULT_SCORE
    order: str = "desc"
    size: int = PAGE_SIZES[0]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ViewFilter":
        get = lambda key: _first(params, key)  # noqa: E731
        lo, hi = _float(get("lo")), _float(get("hi"))
        if lo is not None and hi is not None and lo > hi:
            lo, hi = hi, lo
        split = _text(get("split"))
        order = _text(get("order"))
        size = _int(get("size"))
        q_max = _float(get("clipmem_q_max"))
        reason = _text(get("reason"))
        return cls(
            run=_text(get("run")),
            score=_text(get("score")) or DEFAULT_SCORE,
            lo=lo,
            hi=hi,
            split=split if split in SCORED_SPLITS else None,
            truth=_text(get("truth")),
            tag=_text(get("tag")),
            q=_text(get("q")),
            memorized=(_text(get("memorized")) or "").lower() in TRUE_WORDS,
            clipmem_q_max=q_max if q_max is not None and 0.0 <= q_max <= 1.0 else None,
            reason=reason if reason in REASONS else None,
            sort=_text(get("sort")) or DEFAULT_SCORE,
            order=order if order in ORDERS else "desc",
            size=size if size in PAGE_SIZES else PAGE_SIZES[0],
        )

    def to_params(self) -> dict[str, str]:
        """Only what differs from the defaults, as strings."""
        default = ViewFilter()
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == getattr(default, f.name):
                continue
            if f.name == "memorized":
                out[f.name] = "true"
            else:
                out[f.name] = repr(float(value)) if f.name in ("lo", "hi", "clipmem_q_max") else str(value)
        return out

    def with_scores(self, available: tuple[str, ...] | list[str]) -> "ViewFilter":
        """Drop references to score columns this run does not have."""
        changes: dict[str, Any] = {}
        if self.score not in available:
            changes.update(score=DEFAULT_SCORE, lo=None, hi=None)
        if self.sort not in available:
            changes["sort"] = DEFAULT_SCORE
        if Q_SCORE not in available and (self.memorized or self.clipmem_q_max is not None):
            changes.update(memorized=False, clipmem_q_max=None)
        if MISCAPTION_SCORE not in available and self.reason is not None:
            changes["reason"] = None
        return replace(self, **changes) if changes else self

    def likely_miscaptioned(self) -> "ViewFilter":
        """The pairs flagged memorized whose reason is a wrong caption, most likely mis-captioned first; the run,
        page size and the filters other than these stay."""
        return replace(self, memorized=True, reason=MISCAPTIONED, sort=MISCAPTION_SCORE, order="desc")

    def is_likely_miscaptioned(self) -> bool:
        return self.memorized and self.reason == MISCAPTIONED

    def has_range(self) -> bool:
        return self.lo is not None or self.hi is not None

    def describe(self) -> str:
        """The filter in words, for headings and export summaries."""
        parts = []
        if self.has_range():
            lo = format_score(self.lo) if self.lo is not None else "min"
            hi = format_score(self.hi) if self.hi is not None else "max"
            parts.append(f"{self.score} in [{lo}, {hi}]")
        if self.split:
            parts.append(f"split {self.split}")
        if self.truth:
            parts.append(f"truth {self.truth}")
        if self.tag:
            parts.append(f"user tag {self.tag}")
        if self.q:
            parts.append(f"caption contains “{self.q}”")
        if self.memorized:
            parts.append("flagged memorized")
        if self.clipmem_q_max is not None:
            parts.append(f"q ≤ {format_probability(self.clipmem_q_max)}")
        if self.reason:
            parts.append(f"reason {REASON_LABELS[self.reason]}")
        return ", ".join(parts) if parts else "all scored pairs"


@dataclass(frozen=True)
class Paging:
    """Where in the filtered list the page starts: `cursor` (None = first page) and the cursors before it."""

    cursor: str | None = None
    back: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Paging":
        cursor = _text(_first(params, "cursor"))
        back = tuple(_all(params, "back")) if cursor else ()
        return cls(cursor=cursor, back=back)

    @property
    def page_number(self) -> int:
        return 1 if self.cursor is None else len(self.back) + 2

    def next(self, next_cursor: str) -> "Paging":
        back = self.back + (self.cursor,) if self.cursor is not None else ()
        return Paging(cursor=next_cursor, back=back)

    def previous(self) -> "Paging":
        if self.cursor is None:
            return self
        if not self.back:
            return Paging()
        return Paging(cursor=self.back[-1], back=self.back[:-1])

    def to_params(self) -> dict[str, Any]:
        if self.cursor is None:
            return {}
        out: dict[str, Any] = {"cursor": self.cursor}
        if self.back:
            out["back"] = list(self.back)
        return out
