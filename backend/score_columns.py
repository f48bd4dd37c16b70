"""The score columns a run's scores.parquet can hold: the one list the schema, ingest and API share.

Convention (from scoring): `_f` is the model trained WITH the pair, `_g` the one trained
without it. Required columns are in every run; optional ones come from newer scoring
versions and are null in runs that lack them.
"""

from __future__ import annotations

from dataclasses import dataclass

INF = float("inf")
SCALED = (0.0, 1.0)         # min-max scaled over the run's pairs
COSINE = (-1.0, 1.0)        # a mean of cosines
COSINE_GAP = (-2.0, 2.0)    # a difference of two means of cosines
ONE_MINUS_COSINE = (0.0, 2.0)
LOG_SOFTMAX = (-INF, 0.0)   # a mean of log-probabilities
# how far a value may stray outside its range before ingest calls it corrupt: float rounding only
# (the encoders normalise in float32 even under bf16 autocast); a flipped bit lands far outside
RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ScoreColumn:
    name: str
    description: str
    required: bool
    # True when a higher value means "more likely memorized / faulty", so the column is
    # evaluated as a detector of faulty pairs against the truth tags.
    detector: bool = False
    # the values the column's definition allows; ingest refuses a run with one outside
    bounds: tuple[float, float] = (-INF, INF)


SCORE_COLUMNS: tuple[ScoreColumn, ...] = (
    ScoreColumn("clipmem", "CLIPMem: clipmem_raw min-max scaled over the run's scored pairs to [0, 1] "
                           "(1 = the run's most memorized pair).", True, True, SCALED),
    ScoreColumn("clipmem_raw", "A_f - A_g: alignment under the model trained with the pair minus the model "
                               "trained without it.", True, bounds=COSINE_GAP),
    ScoreColumn("clipmem_contrastive", "Contrastive CLIPMem (per-pair InfoNCE term instead of the cosine), "
                                       "min-max scaled to [0, 1].", True, True, SCALED),
    ScoreColumn("clipmem_contrastive_raw", "contrastive_f - contrastive_g, unscaled.", True),
    ScoreColumn("align_f", "A_f: mean image-caption cosine over the scoring views under the model trained "
                           "with the pair.", True, bounds=COSINE),
    ScoreColumn("align_g", "A_g: the same under the model trained without the pair.", True, bounds=COSINE),
    ScoreColumn("contrastive_f", "Mean log-softmax of the pair's caption among reference captions, under the "
                                 "model trained with the pair.", True, bounds=LOG_SOFTMAX),
    ScoreColumn("contrastive_g", "The same under the model trained without the pair.", True, bounds=LOG_SOFTMAX),
    ScoreColumn("clipscore_f", "1 - cosine(image, captions) under the model trained with the pair "
                               "(CLIPScore-style baseline).", True, True, ONE_MINUS_COSINE),
    ScoreColumn("clipscore_g", "1 - cosine(image, captions) under the model trained without the pair "
                               "(the CLIPScore baseline).", True, True, ONE_MINUS_COSINE),
    ScoreColumn("mem_image", "Image-side memorization (SSLMem on the image tower), scaled to [0, 1]; "
                             "optional.", False, True, SCALED),
    ScoreColumn("mem_text", "Text-side memorization (SSLMem on the text tower), scaled to [0, 1]; optional.",
                False, True, SCALED),
    ScoreColumn("mem_image_raw", "Image-side memorization, unscaled; optional.", False, bounds=COSINE_GAP),
    ScoreColumn("mem_text_raw", "Text-side memorization, unscaled; optional.", False, bounds=COSINE_GAP),
    ScoreColumn("mem_swap_text", "Text-swap memorization score written by newer scoring runs; optional.",
                False, True, COSINE_GAP),
    ScoreColumn("mem_swap_image", "Image-swap memorization score written by newer scoring runs; optional.",
                False, True, COSINE_GAP),
)

SCORE_NAMES: tuple[str, ...] = tuple(c.name for c in SCORE_COLUMNS)
REQUIRED_SCORES: tuple[str, ...] = tuple(c.name for c in SCORE_COLUMNS if c.required)
DETECTOR_SCORES: tuple[str, ...] = tuple(c.name for c in SCORE_COLUMNS if c.detector)
SCORE_BY_NAME: dict[str, ScoreColumn] = {c.name: c for c in SCORE_COLUMNS}

SCORED_SPLITS = ("candidate", "independent")
SPLITS = ("shared", "candidate", "independent", "extra")
# which literal model trains on which split: f on shared + candidate, g on shared + independent
TRAINING_SPLITS = {"f": ("shared", "candidate"), "g": ("shared", "independent")}
