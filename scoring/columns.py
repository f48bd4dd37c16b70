"""What the run directory's tables hold: split names, columns, which columns are scores, image references.

The one statement of the contract that scoring writes (pipeline.py, score.py, attribution.py) and the
backend and the dashboard read (backend/rundir.py, ingest, the API, the dashboard's filters); the file
names are scoring.rundir.RunDir's. Torch-free, so every layer may import it.

Score convention: `_f` is the model trained WITH the pair, `_g` the one trained without it. Required
score columns are in every run; optional ones come from newer scoring versions (or scoring options) and
are null in runs that lack them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPLITS = ("shared", "candidate", "independent", "extra")
SCORED_SPLITS = ("candidate", "independent")
# which literal model trains on which split: f on shared + candidate, g on shared + independent
TRAINING_SPLITS = {"f": ("shared", "candidate"), "g": ("shared", "independent")}
# the literal model that saw a scored pair
SEEN_BY = {"candidate": "f", "independent": "g"}

INF = float("inf")
SCALED = (0.0, 1.0)         # min-max scaled over the run's pairs
COSINE = (-1.0, 1.0)        # a mean of cosines
COSINE_GAP = (-2.0, 2.0)    # a difference of two means of cosines
ONE_MINUS_COSINE = (0.0, 2.0)
LOG_SOFTMAX = (-INF, 0.0)   # a mean of log-probabilities
PROBABILITY = (0.0, 1.0)    # p- and q-values
SPREAD = (0.0, 2.0)         # a standard deviation of cosine gaps
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
    # significance (issue 15): each scored pair's raw score tested against the run's measured null (null.parquet)
    ScoreColumn("clipmem_p", "One-sided p-value of clipmem_raw against the run's null: the same score on S_E pairs, "
                             "which neither model trained on, in the pair's direction (docs/significance.md); "
                             "optional.", False, bounds=PROBABILITY),
    ScoreColumn("clipmem_q", "Benjamini-Hochberg q-value of clipmem_p over the run's scored pairs: the pair is "
                             "flagged memorized when clipmem_q <= the run's FDR; optional.", False, bounds=PROBABILITY),
    ScoreColumn("clipmem_raw_lo", "Lower end of the 95% interval of clipmem_raw over the scoring views; optional.",
                False, bounds=COSINE_GAP),
    ScoreColumn("clipmem_raw_hi", "Upper end of the 95% interval of clipmem_raw over the scoring views; optional.",
                False, bounds=COSINE_GAP),
    ScoreColumn("clipmem_raw_sd", "Standard deviation of clipmem_raw across the run's replicas (independently "
                                  "seeded f/g pairs, --replicas R > 1; clipmem_raw is their mean); optional.",
                False, bounds=SPREAD),
    ScoreColumn("clipmem_contrastive_p", "One-sided p-value of clipmem_contrastive_raw against the run's null; "
                                         "optional.", False, bounds=PROBABILITY),
    ScoreColumn("clipmem_contrastive_q", "Benjamini-Hochberg q-value of clipmem_contrastive_p; optional.", False,
                bounds=PROBABILITY),
    # why a pair is memorized (issue 18, scoring/why.py, docs/why.md): neighbours under the model that did NOT train
    # on the pair (g for S_C, f for S_I, a k-fold pair's own fold model), among the run's scored and S_E pairs
    ScoreColumn("miscaption", "How likely the caption is wrong: the fraction of the run's S_E reference pairs (which "
                              "neither model trained on) whose mis-caption evidence is weaker than the pair's "
                              "(docs/why.md); optional.", False, True, PROBABILITY),
    ScoreColumn("image_neighbour_sim", "Cosine between the pair's image and its nearest other image under the model "
                                       "that did not train on it; optional.", False, bounds=COSINE),
    ScoreColumn("caption_neighbour_sim", "Cosine between the pair's caption and its nearest other caption under the "
                                         "model that did not train on it; optional.", False, bounds=COSINE),
    ScoreColumn("neighbour_agreement", "How well the captions of the pair's nearest image neighbours agree with its "
                                       "own: their similarity-weighted mean caption-caption cosine, same model; "
                                       "optional.", False, bounds=COSINE),
    ScoreColumn("neighbour_caption_margin", "How much better the pair's image matches its nearest image neighbours' "
                                            "captions than its own caption (similarity-weighted mean image-caption "
                                            "cosine minus its own), same model; optional.", False, bounds=COSINE_GAP),
)

SCORE_NAMES: tuple[str, ...] = tuple(c.name for c in SCORE_COLUMNS)
REQUIRED_SCORES: tuple[str, ...] = tuple(c.name for c in SCORE_COLUMNS if c.required)
# the scores evaluated as detectors of faulty pairs, by `clipmem report` and at ingest alike
DETECTOR_SCORES: tuple[str, ...] = tuple(c.name for c in SCORE_COLUMNS if c.detector)
SCORE_BY_NAME: dict[str, ScoreColumn] = {c.name: c for c in SCORE_COLUMNS}

# boolean flags in scores.parquet (optional: null in runs scored before significance)
MEMORIZED = "memorized"     # clipmem_q <= the run's FDR (config score.fdr, `clipmem run --fdr`, default 0.05)
FLAG_COLUMNS = (MEMORIZED,)

# why a pair is memorized (issue 18, docs/why.md): a categorical column of scores.parquet, one of REASONS (optional:
# null in runs scored before it)
REASON = "reason"
REASONS = ("miscaptioned", "atypical_image", "atypical_caption", "duplicate", "typical")
REASON_LABELS = {"miscaptioned": "mis-captioned", "atypical_image": "atypical image",
                 "atypical_caption": "atypical caption", "duplicate": "duplicate", "typical": "typical"}
# the truth tags (where the data has them) of a wrong caption: what `miscaption` is evaluated against
MISCAPTION_TRUTH = ("swapped", "wrong_attribute", "vague")
# neighbours.parquet (RunDir.neighbours): per scored pair, kind ("image": its nearest other images, "caption": its
# nearest other captions) and rank 1..k, under the pair's "without" model. `similarity`: image-image cosine (kind
# image) or caption-caption cosine (kind caption); `agreement`: the neighbour's caption against the pair's caption
# (kind image), the neighbour's image against the pair's image (kind caption)
NEIGHBOUR_KINDS = ("image", "caption")
NEIGHBOUR_COLUMNS = ("sample_id", "kind", "rank", "neighbour_id", "similarity", "agreement")

# null.parquet: the scored pairs' columns on S_E pairs, once per direction they serve as null for. `null_for` is the
# key of the scored pairs the row is the null of (null_key): in the published scheme "candidate" (raw = A_f - A_g,
# `_f` = literal f) and "independent" (raw = A_g - A_f, `_f` = literal g); in the k-fold scheme "fold{k}" (with = the
# models other than fold k, without = fold k). `_f` / `_g` keep their meaning: the model(s) in the role of "with".
NULL_COLUMNS = ("sample_id", "split", "truth", "null_for", "clipmem_raw", "clipmem_contrastive_raw", "align_f",
                "align_g", "contrastive_f", "contrastive_g", "views_f", "views_g")
# the columns of layers.parquet beyond LAYER_COLUMNS written by newer runs: bootstrap 95% intervals over pairs
LAYER_INTERVAL_COLUMNS = ("layer_mem_lo", "layer_mem_hi", "delta_layer_mem_lo", "delta_layer_mem_hi")
# and UnitMem per tower and block (docs/layers.md): of literal f over the S_C pairs, of g over S_I, and their mean;
# in [0, 1], on the truth "all" rows only (null on the others, and where it is not defined: k-fold and replica runs)
LAYER_UNIT_COLUMNS = ("unit_mem", "unit_mem_f", "unit_mem_g")


def null_key(split: str, fold: int | None = None) -> str:
    """Which null a scored pair is tested against: its split (published scheme) or its fold (k-fold)."""
    return split if fold is None else f"fold{int(fold)}"


# CLIPMem over training time (issue 19, scoring/trajectory.py, docs/trajectory.md), runs trained with --track-epochs.
# trajectory.parquet (RunDir.trajectory): one row per pair and tracked epoch, the epoch's scores as scores.parquet's
# columns of the same names define them. `null_for` is null on the scored pairs' rows and holds the null key
# (null_key, as in null.parquet) on the S_E null pairs' rows, one row per direction
TRAJECTORY_COLUMNS = ("sample_id", "epoch", "null_for", "align_f", "align_g", "clipmem_raw", "clipmem_contrastive_raw")
# per-pair summaries of a pair's trajectory in scores.parquet: optional score columns, null in runs trained without
# tracking. Not (yet) in SCORE_COLUMNS, which the backend's scores table mirrors column for column
DYNAMICS_COLUMNS: tuple[ScoreColumn, ...] = (
    ScoreColumn("mem_epoch", "Memorization epoch: the first tracked epoch at which clipmem_raw exceeds the 95th "
                             "percentile of the null's clipmem_raw (the pair's direction) at that epoch; null when it "
                             "never does; optional.", False, bounds=(1.0, INF)),
    ScoreColumn("mem_auc", "Area under the pair's clipmem_raw curve over training time: trapezoid over the tracked "
                           "epochs as fractions of the run's epochs, from raw 0 at epoch 0 (f and g start equal); "
                           "optional.", False, bounds=COSINE_GAP),
    ScoreColumn("mem_variability", "Standard deviation of clipmem_raw over the tracked epochs; optional.", False,
                bounds=SPREAD),
)
DYNAMICS_NAMES: tuple[str, ...] = tuple(c.name for c in DYNAMICS_COLUMNS)

# the columns (and arrays) every finished run's files hold; scores.parquet also holds the optional
# scores present, and may hold more (the caption, a k-fold run's fold)
SAMPLE_COLUMNS = ("sample_id", "split", "truth", "captions", "image_ref", "attributes")
SCORE_FILE_COLUMNS = ("sample_id", "split", "truth", "n_captions", "seen_by", *REQUIRED_SCORES, "views_f", "views_g")
EMBEDDING_ARRAYS = ("sample_id", "split", "f_image", "f_text", "g_image", "g_text")
LAYER_COLUMNS = ("tower", "layer", "truth", "pairs", "layer_mem", "delta_layer_mem")
CURVE_COLUMNS = ("sample_id", "tower", "layer", "layer_mem")

# an image_ref is a path relative to the run's data root: a plain image file, or `SHARD.tar#MEMBER`,
# a member of a WebDataset tar shard
_TAR_REF = re.compile(r"^(?P<shard>.+?\.tar)#(?P<member>.+)$")


def join_image_ref(file: str, member: str | None = None) -> str:
    """The image_ref of a plain image `file`, or of `member` inside the tar shard `file`."""
    return file if member is None else f"{file}#{member}"


def split_image_ref(ref: str) -> tuple[str, str | None]:
    """(the file holding the image, the tar member or None): a tar shard and the member inside it, or a plain
    image file and None."""
    match = _TAR_REF.match(ref)
    return (match["shard"], match["member"]) if match else (ref, None)
