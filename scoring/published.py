"""The CLIPMem paper's published mitigation figures (SPEC.md, "Published findings a run should be able to
reproduce") as data, and the clipmem setting that reproduces each.

Torch-free. The experiment report (scoring.experiment_report.published_comparison) puts each figure beside the
mean over seeds of the matching runs. The paper trains OpenCLIP ViT-Base on COCO and measures utility with an
ImageNet linear probe, so its numbers are not ours; what a run can reproduce is the direction of each change.
"""

from __future__ import annotations

from dataclasses import dataclass

# Table 1 is printed (to its last digit: 3 decimals of CLIPMem, 2 of accuracy); the figures are read off plots
# to about ±0.002 CLIPMem and ±0.3 accuracy points, and Fig. 5b's accuracy has error bars of about ±1 point
TABLE_1, FIG_5A, FIG_5B, FIG_6 = "Table 1", "Fig. 5a", "Fig. 5b", "Fig. 6"
READING = {  # source: (± CLIPMem, ± accuracy points) of one value as published or read
    TABLE_1: (0.0005, 0.005),
    FIG_5A: (0.002, 0.3),
    FIG_5B: (0.002, 1.0),
    FIG_6: (0.002, 0.3),
}
QUANTITIES = ("clipmem", "accuracy")  # CLIPMem (min-max scaled per model) and linear-probe accuracy (%)

# Fig. 6 removes N of 5,000 candidates; a clipmem run removes a count of the pairs its baseline scores
REMOVAL_CANDIDATES = 5000
REMOVAL_COUNTS = (0, 50, 100, 200, 400, 800, 1600, 3200)
REMOVAL_TOLERANCE = 0.1  # relative difference of the shares within which a count is the published N


@dataclass(frozen=True)
class PublishedPoint:
    """One published setting and its figures.

    `setting` is the clipmem run that reproduces it, as the run's experiment parameters (scoring.experiment.Setting
    fields; every other parameter at the baseline's value), with `removal_count` as the published N of 5,000
    (removal_counterpart maps a run's count onto it); None where clipmem has no counterpart. `baseline` marks
    the point the source's changes are measured from."""
    source: str
    grid: str
    label: str
    setting: dict | None
    clipmem: float | None = None
    accuracy: float | None = None
    baseline: bool = False

    def value(self, quantity: str) -> float | None:
        return self.clipmem if quantity == "clipmem" else self.accuracy

    def reading(self, quantity: str) -> float:
        return READING[self.source][QUANTITIES.index(quantity)]


def _table_1() -> list[PublishedPoint]:
    # "generated images" are the paper's images of a pair made by a diffusion model; the built-in set's renderings
    # of a scene are their analogue (all renderings are drawn, so none is "1 generated image" in place of the real)
    rows = [("1 image, 1 caption", {"renderings": 1, "captions_per_image": 1}, 0.438, 63.11, True),
            ("1 generated image, 1 caption", None, 0.428, 63.97, False),
            ("5 generated images, 1 caption", {"renderings": 5, "captions_per_image": 1}, 0.424, 64.60, False),
            ("1 image, 5 captions", {"renderings": 1, "captions_per_image": 5}, 0.423, 64.88, False),
            ("5 generated images, 5 captions", {"renderings": 5, "captions_per_image": 5}, 0.417, 64.79, False)]
    return [PublishedPoint(TABLE_1, "images-captions", label, setting, clipmem, accuracy, baseline)
            for label, setting, clipmem, accuracy, baseline in rows]


def _captions() -> list[PublishedPoint]:
    clipmem = (0.438, 0.435, 0.428, 0.424, 0.422)
    accuracy = (63.1, 63.2, 64.3, 64.8, 65.0)
    return [PublishedPoint(FIG_5A, "captions", f"{k} caption{'s' if k > 1 else ''} per image",
                           {"captions_per_image": k}, c, a, k == 1)
            for k, c, a in zip(range(1, 6), clipmem, accuracy)]


def _text_noise() -> list[PublishedPoint]:
    sigma = (0.0, 0.01, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30)
    clipmem = (0.438, 0.435, 0.428, 0.421, 0.417, 0.422, 0.436, 0.447)
    accuracy = (63.1, 63.3, 64.0, 64.9, 65.3, 64.9, 63.5, 61.5)
    return [PublishedPoint(FIG_5B, "text-noise", f"σ = {s:g}", {"text_noise": s}, c, a, s == 0)
            for s, c, a in zip(sigma, clipmem, accuracy)]


def _removal() -> list[PublishedPoint]:
    # Fig. 6 plots accuracy only; the values between the read ones (e.g. N = 800, 1,600) are not given
    rows = [(None, 0, 63.1), ("top-clipmem", 50, 65.0), ("top-clipmem", 100, 66.4), ("top-clipmem", 200, 64.6),
            ("top-clipmem", 400, 63.2), ("top-clipmem", 3200, 61.0), ("lowest-similarity", 100, 65.5),
            ("random", 3200, 62.4)]
    names = {None: "nothing removed", "top-clipmem": "by CLIPMem", "lowest-similarity": "by CLIP similarity",
             "random": "at random"}
    out = []
    for method, n, accuracy in rows:
        setting = {"removal_count": 0} if n == 0 else {"removal_method": method, "removal_count": n}
        label = f"N = {n:,} of {REMOVAL_CANDIDATES:,} removed {names[method]}" if n else f"N = 0 ({names[method]})"
        out.append(PublishedPoint(FIG_6, "removal", label, setting, accuracy=accuracy, baseline=n == 0))
    return out


PUBLISHED = (*_table_1(), *_captions(), *_text_noise(), *_removal())


def removal_counterpart(count: int, pool: int) -> int | None:
    """The published N (of 5,000 candidates) whose share is nearest `count`'s share of the `pool` pairs the
    baseline scores, when the two shares differ by at most 10% of the published one; None otherwise (0 for 0)."""
    if count == 0:
        return 0
    share = count / pool
    n = min(REMOVAL_COUNTS[1:], key=lambda n: abs(share / (n / REMOVAL_CANDIDATES) - 1))
    return n if abs(share / (n / REMOVAL_CANDIDATES) - 1) <= REMOVAL_TOLERANCE else None
