"""Response (and request) bodies of the API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from clipmem.backend.api.limits import MAX_TAG_BATCH
from clipmem.backend.api.query import Reason, SampleIdText, UserTag
from clipmem.scoring.significance import LARGE_N


REASON_TEXT = ("Why the pair is memorized: miscaptioned, atypical_image, atypical_caption, duplicate or typical "
               "(scoring.columns.REASONS, docs/why.md);")


class Health(BaseModel):
    status: str = Field(description="ok when the database answers.")
    schema_revision: str | None = Field(description="Alembic revision of the database schema.")


class Access(BaseModel):
    token_required: bool = Field(description="Whether the server has tokens (CLIPMEM_API_TOKEN, "
                                             "CLIPMEM_API_WRITE_TOKEN), so requests need one.")
    read: bool = Field(description="Whether this request's credentials may read.")
    write: bool = Field(description="Whether they may change the database (delete a run, add or remove tags).")


class Interval(BaseModel):
    """A value with the ends of its 95% interval (scoring.significance.Interval)."""

    estimate: float | None = Field(description="The value itself (a mean, or a pair's clipmem_raw); null when there "
                                               "are no pairs to take it over.")
    lo: float | None = Field(description="Lower end of the 95% interval.")
    hi: float | None = Field(description="Upper end of the 95% interval.")


MEAN_INTERVALS = ("95% intervals of the means of clipmem and clipmem_raw (scoring.significance.bootstrap_mean, "
                  f"seed 0): the percentile bootstrap over the pairs, or above {LARGE_N:,} pairs the normal interval "
                  "mean +- 1.96 sd / sqrt(n)")


class TruthSummary(BaseModel):
    truth: str = Field(description="The truth tag.")
    pairs: int = Field(description="Scored pairs with this truth tag.")
    means: dict[str, float] = Field(description="Mean of each score over the run's pairs with this truth tag.")
    intervals: dict[str, Interval] | None = Field(None, description=f"{MEAN_INTERVALS} over these pairs; null for "
                                                                    "runs ingested before intervals.")


class ScoreSummary(BaseModel):
    pairs: int = Field(description="Scored pairs of the run.")
    means: dict[str, float] = Field(description="Mean of each score over all scored pairs.")
    intervals: dict[str, Interval] | None = Field(None, description=f"{MEAN_INTERVALS} over all scored pairs; null "
                                                                    "for runs ingested before intervals.")
    by_truth: list[TruthSummary] = Field(description="Per truth tag, highest mean CLIPMem first.")


class FlaggedCount(BaseModel):
    truth: str = Field(description="Truth tag, or 'all' (every scored pair; listed last).")
    pairs: int = Field(description="Scored pairs with this truth tag.")
    flagged: int = Field(description="Of them, the pairs flagged memorized (clipmem_q <= the run's FDR).")
    fraction: float | None = Field(description="flagged / pairs; null when there are no pairs.")


class TrainingBase(BaseModel):
    """What f and g started from (config.json train.pretrained, train.pretrained_sha256) and which tower was locked
    (train.lock_*, open_clip_train's options); runs configured before fine-tuning existed read as from scratch."""

    pretrained: str | None = Field(description="The pretrained checkpoint f and g were fine-tuned from (its path when "
                                               "the run was configured); null when they were trained from scratch.")
    file_name: str | None = Field(description="The checkpoint's file name (the last part of `pretrained`); null "
                                              "from scratch.")
    sha256: str | None = Field(description="The checkpoint's SHA-256 (hex), which says which base it was even when "
                                           "the file has moved; null from scratch.")
    lock_image: bool = Field(description="Whether the image tower was locked (`--lock-image`).")
    lock_image_unlocked_groups: int = Field(description="Image-tower groups left trainable under the lock, last "
                                                        "first (`--lock-image-unlocked-groups`).")
    lock_image_freeze_bn_stats: bool = Field(description="Whether a locked ResNet tower's BatchNorm statistics were "
                                                         "frozen too (`--lock-image-freeze-bn-stats`).")
    lock_text: bool = Field(description="Whether the text tower was locked (`--lock-text`).")
    lock_text_unlocked_layers: int = Field(description="Text-tower groups left trainable under the lock, last first "
                                                       "(`--lock-text-unlocked-layers`).")
    lock_text_freeze_layer_norm: bool = Field(description="`--lock-text-freeze-layer-norm` as given (open_clip 3.x "
                                                          "freezes a locked layer's LayerNorms either way).")


class RunSummary(BaseModel):
    name: str = Field(description="The run's name.")
    dataset_kind: str = Field(description="Kind of data the run was made from (data_root.json: folder, webdataset, "
                                          "synthetic, ...).")
    model: str = Field(description="The CLIP model configuration trained (config train.model).")
    created_at: datetime = Field(description="When the run was ingested.")
    split_sizes: dict[str, int] = Field(description="Pairs per split: shared, candidate, independent, extra.")
    n_samples: int = Field(description="Pairs of the run in all four splits.")
    n_scored: int = Field(description="Scored pairs (candidate and independent).")
    mean_clipmem: float = Field(description="Mean CLIPMem (min-max scaled) over the scored pairs.")
    experiment: str | None = Field(description="The experiment the run belongs to (runs made by `clipmem "
                                               "experiment`, or ingested with --experiment); null for others.")
    experiment_params: dict | None = Field(description="The run's experiment.json: seed, captions_per_image, "
                                                       "text_noise, removal_method, removal_count, renderings "
                                                       "(runs from before renderings lack it: 1); null when the "
                                                       "run has none.")
    fdr: float | None = Field(description="The false discovery rate the run flags memorized pairs at (settings "
                                          "score.fdr, `clipmem run --fdr`); null for runs scored without "
                                          "significance.")
    flagged: int | None = Field(description="Scored pairs flagged memorized (clipmem_q <= fdr); null for runs "
                                            "scored without significance.")
    flagged_by_truth: list[FlaggedCount] = Field(description="Flagged pairs per truth tag (sorted) and 'all' last; "
                                                             "empty for runs scored without significance.")
    base: TrainingBase = Field(description="The pretrained weights f and g were fine-tuned from and the towers locked "
                                           "(`pretrained` null: trained from scratch).")


class RunDetail(RunSummary):
    source_dir: str = Field(description="The run directory it was ingested from.")
    data_root: str = Field(description="Folder the run's images are read from.")
    settings: dict = Field(description="The run's config.json: data, split, training and scoring settings.")
    utility: dict[str, dict] = Field(description="Utility of models f and g on S_E (retrieval recall, zero-shot "
                                                 "accuracy), from metrics.json.")
    run_metrics: dict = Field(description="The rest of metrics.json: scoring throughput, timings, peak memory.")
    score_names: list[str] = Field(description="Score columns this run has.")
    flag_names: list[str] = Field(description="Flag columns this run has: ['memorized'] when it was scored with "
                                              "significance, else empty.")
    has_null: bool = Field(description="Whether the run has a measured null (GET /runs/{run}/null).")
    has_reasons: bool = Field(description="Whether its pairs have a reason and miscaption (GET /runs/{run}/reasons; "
                                          "false for runs scored before them).")
    has_evidence: bool = Field(description="Whether its pairs have stored neighbours (GET /runs/{run}/samples/"
                                           "{sample_id}/evidence; false for runs scored before them).")
    score_summary: ScoreSummary = Field(description="Means of every score, overall and per truth tag, with intervals.")
    n_embedded: int = Field(description="Pairs with embeddings (scored and S_E pairs).")
    embedding_dim: int = Field(description="Dimension of the joint embedding space.")
    map_method: str = Field(description="How the 2-D maps were made at ingest: pca or umap.")


class SampleSummary(BaseModel):
    sample_id: str = Field(description="The pair's id in the run.")
    split: str = Field(description="candidate or independent.")
    truth: str = Field(description="The pair's truth tag (clean, swapped, vague, atypical, ...).")
    caption: str = Field(description="The pair's first caption.")
    n_captions: int = Field(description="Captions the pair has.")
    seen_by: str = Field(description="The literal model (f or g) that trained on the pair.")
    scores: dict[str, float] = Field(description="Every score the run has for this pair (clipmem_p and clipmem_q "
                                                 "among them when the run was scored with significance).")
    memorized: bool | None = Field(description="Whether the pair is flagged memorized (clipmem_q <= the run's FDR); "
                                               "null when the run was scored without significance.")
    interval: Interval | None = Field(description="clipmem_raw with its 95% interval over the scoring views "
                                                  "(clipmem_raw_lo, clipmem_raw_hi); null when the run has none.")
    miscaption: float | None = Field(description="How likely the pair's caption is wrong, in [0, 1] (docs/why.md); "
                                                 "null when the run was scored before it.")
    reason: Reason | None = Field(description=f"{REASON_TEXT} null when the run was scored before reasons.")
    tags: list[str] = Field(description="User tags on the pair.")


class SamplePage(BaseModel):
    run: str = Field(description="The run's name.")
    total: int = Field(description="Pairs matching the filter, over all pages.")
    sort: str = Field(description="The score the page is sorted by.")
    order: str = Field(description="desc or asc.")
    items: list[SampleSummary] = Field(description="The pairs of this page, in sort order.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class SampleDetail(BaseModel):
    run: str = Field(description="The run's name.")
    sample_id: str = Field(description="The pair's id in the run.")
    split: str = Field(description="shared, candidate, independent or extra.")
    truth: str = Field(description="The pair's truth tag.")
    captions: list[str] = Field(description="Every caption of the pair.")
    attributes: dict = Field(description="Labels recorded with the pair (e.g. the synthetic shape and colour).")
    image_ref: str = Field(description="Where the image was found, relative to the run's data root.")
    seen_by: str | None = Field(description="The literal model that trained on the pair (f or g); null for pairs "
                                            "that are not scored (shared, extra).")
    scores: dict[str, float] | None = Field(description="Every score; null for pairs that are not scored.")
    memorized: bool | None = Field(description="Whether the pair is flagged memorized (clipmem_q <= the run's FDR); "
                                               "null for pairs that are not scored and runs scored without "
                                               "significance.")
    interval: Interval | None = Field(description="clipmem_raw with its 95% interval over the scoring views; null "
                                                  "when the pair is not scored or the run has no intervals.")
    miscaption: float | None = Field(description="How likely the pair's caption is wrong, in [0, 1] (docs/why.md); "
                                                 "null for pairs that are not scored and runs scored before it.")
    reason: Reason | None = Field(description=f"{REASON_TEXT} null for pairs that are not scored and runs scored "
                                              "before reasons.")
    null_for: str | None = Field(description="The key of the null (GET /runs/{run}/null, by_key) the pair's "
                                             "clipmem_raw is tested against: its split (candidate, independent), or "
                                             "fold<k> in k-fold runs; null when the run has no null.")
    align_f: float | None = Field(description="A_f: mean alignment under the model trained with the pair.")
    align_g: float | None = Field(description="A_g: mean alignment under the model trained without it.")
    views_f: list[float] | None = Field(description="Per-view alignments under the model trained with the pair.")
    views_g: list[float] | None = Field(description="Per-view alignments under the model trained without it.")
    tags: list[str] = Field(description="User tags on the pair.")
    has_embedding: bool = Field(description="Whether neighbours and map positions exist for the pair.")


class NullKey(BaseModel):
    pairs: int = Field(description="S_E pairs in this null.")
    mean: float = Field(description="Mean of their clipmem_raw.")
    sd: float = Field(description="Standard deviation of their clipmem_raw (ddof 1; 0 for one pair).")
    values: list[float] = Field(description="Every null pair's clipmem_raw (A_with - A_without), in null.parquet's "
                                            "order.")


class NullDistribution(BaseModel):
    run: str = Field(description="The run's name.")
    fdr: float | None = Field(description="The false discovery rate the run flags memorized pairs at; null when it "
                                          "records none.")
    null_pairs: int = Field(description="S_E pairs scored for the null (the largest count over the keys; each key "
                                        "scores the same pairs).")
    tail_method: str | None = Field(description="How p-values beyond the null's empirical range were computed "
                                                "(metrics.json significance.tail); null when not recorded.")
    by_key: dict[str, NullKey] = Field(description="Per null key (candidate and independent; fold<k> in k-fold "
                                                   "runs): the clipmem_raw of S_E pairs, which neither model "
                                                   "trained on, in that key's direction: what f/g drift alone "
                                                   "produces. A scored pair is tested against the key in its "
                                                   "null_for.")


class Neighbour(BaseModel):
    sample_id: str = Field(description="The neighbour's id in the run.")
    caption: str = Field(description="The neighbour's first caption.")
    split: str = Field(description="The neighbour's split.")
    truth: str = Field(description="The neighbour's truth tag.")
    similarity: float = Field(description="Cosine similarity in the model's joint space.")
    same_pair: bool = Field(description="True when the neighbour is the queried pair itself.")


class NeighbourLists(BaseModel):
    captions_near_image: list[Neighbour] = Field(description="Captions nearest the pair's image.")
    images_near_caption: list[Neighbour] = Field(description="Images nearest the pair's first caption.")


class Neighbours(BaseModel):
    run: str = Field(description="The run's name.")
    sample_id: str = Field(description="The queried pair.")
    k: int = Field(description="Neighbours listed per direction.")
    seen_by: str | None = Field(description="The literal model that trained on the pair; null if neither did.")
    f: NeighbourLists = Field(description="Under the literal model f (trained on shared + candidate pairs).")
    g: NeighbourLists = Field(description="Under the literal model g (trained on shared + independent pairs).")


class EvidenceNeighbour(BaseModel):
    rank: int = Field(description="1 = the nearest.")
    sample_id: str = Field(description="The neighbouring pair's id in the run (a scored or S_E pair).")
    similarity: float = Field(description="Cosine between the two images (image neighbours) or the two captions "
                                          "(caption neighbours), under the model that did not train on the queried "
                                          "pair.")
    agreement: float = Field(description="Image neighbours: cosine between the neighbour's caption and the queried "
                                         "pair's caption; caption neighbours: between the neighbour's image and the "
                                         "queried pair's image; same model.")
    captions: list[str] = Field(description="Every caption of the neighbour.")
    image_url: str = Field(description="The neighbour's thumbnail: GET this path (relative to the API root, the "
                                       "sample id URL-quoted as in GET /runs/{run}/images/{sample_id}).")
    truth: str = Field(description="The neighbour's truth tag.")


class Evidence(BaseModel):
    """Why a scored pair is memorized: its reason and miscaption, the signals they are made of, and the neighbours
    under the model that did not train on it (neighbours.parquet, stored at ingest; docs/why.md)."""

    run: str = Field(description="The run's name.")
    sample_id: str = Field(description="The queried pair.")
    truth: str = Field(description="The pair's truth tag.")
    seen_by: str = Field(description="The literal model (f or g) that trained on the pair; the neighbours are "
                                     "under the other one (a k-fold pair's own fold model).")
    available: bool = Field(description="Whether the run has stored neighbours; false for runs scored before the "
                                        "evidence (the lists are then empty).")
    reason: Reason | None = Field(description=f"{REASON_TEXT} null for runs scored before reasons.")
    miscaption: float | None = Field(description="How likely the caption is wrong, in [0, 1]; null for runs scored "
                                                 "before it.")
    image_neighbour_sim: float | None = Field(description="Cosine between the pair's image and its nearest other "
                                                          "image; null for older runs.")
    caption_neighbour_sim: float | None = Field(description="Cosine between the pair's caption and its nearest other "
                                                            "caption; null for older runs.")
    neighbour_agreement: float | None = Field(description="Similarity-weighted mean cosine between the captions of "
                                                          "the pair's nearest images and its own caption; null for "
                                                          "older runs.")
    neighbour_caption_margin: float | None = Field(description="How much better the pair's image matches its image "
                                                               "neighbours' captions than its own caption; null for "
                                                               "older runs.")
    align_f: float = Field(description="A_f: mean image-caption cosine under the model trained with the pair.")
    align_g: float = Field(description="A_g: the same under the model trained without it.")
    clipmem_raw: float = Field(description="A_f - A_g: the with-vs-without drop.")
    mem_swap_image: float | None = Field(description="The encoder-swap drop on the image side; null when the run "
                                                     "has no swap scores.")
    mem_swap_text: float | None = Field(description="The encoder-swap drop on the text side; null when the run has "
                                                    "no swap scores.")
    image_neighbours: list[EvidenceNeighbour] = Field(description="The pair's nearest other images, nearest first.")
    caption_neighbours: list[EvidenceNeighbour] = Field(description="The pair's nearest other captions, nearest "
                                                                    "first.")


class ReasonCount(BaseModel):
    reason: Reason = Field(description="The reason.")
    truth: str = Field(description="The truth tag.")
    pairs: int = Field(description="Counted pairs with this reason and truth tag.")


class ReasonTable(BaseModel):
    run: str = Field(description="The run's name.")
    available: bool = Field(description="Whether the run's pairs have reasons; false for runs scored before them "
                                        "(no counts).")
    memorized_only: bool = Field(description="Whether only the pairs flagged memorized were counted.")
    pairs: int = Field(description="Pairs counted.")
    reasons: list[Reason] = Field(description="Every reason, in scoring.columns.REASONS order.")
    labels: dict[str, str] = Field(description="Display label of each reason (scoring.columns.REASON_LABELS).")
    truths: list[str] = Field(description="Truth tags of the run's scored pairs, sorted.")
    counts: list[ReasonCount] = Field(description="One row per reason and truth tag (zeros included), by reason "
                                                  "then truth tag.")


class Histogram(BaseModel):
    run: str = Field(description="The run's name.")
    score: str = Field(description="The score binned.")
    lo: float = Field(description="Left edge of the first bin.")
    hi: float = Field(description="Right edge of the last bin (included).")
    edges: list[float] = Field(description="bins + 1 bin edges.")
    counts: list[int] = Field(description="Matching pairs per bin.")
    by_truth: dict[str, list[int]] | None = Field(description="Counts per bin for each truth tag, when asked.")
    matched: int = Field(description="Pairs matching the filter.")
    outside: int = Field(description="Matching pairs outside [lo, hi], not counted in any bin.")


class MapPoints(BaseModel):
    """Columnar: the i-th entry of every list describes the same pair."""

    run: str = Field(description="The run's name.")
    method: str = Field(description="How the map was made at ingest: pca or umap.")
    modality: str = Field(description="image or text: whose embeddings the map places.")
    score: str = Field(description="The score in score_value.")
    total_points: int = Field(description="Embedded pairs of the run (scored and S_E).")
    sample_id: list[str] = Field(description="Each point's pair.")
    split: list[str] = Field(description="Each point's split.")
    truth: list[str] = Field(description="Each point's truth tag.")
    score_value: list[float | None] = Field(description="The chosen score; null for S_E pairs, which are not "
                                                        "scored.")
    f_x: list[float] = Field(description="x on model f's map.")
    f_y: list[float] = Field(description="y on model f's map.")
    g_x: list[float] = Field(description="x on model g's map.")
    g_y: list[float] = Field(description="y on model g's map.")


class DetectionRow(BaseModel):
    score: str = Field(description="The score evaluated as a detector (higher = more likely positive).")
    auroc: float = Field(description="Area under the ROC curve.")
    average_precision: float = Field(description="Average precision.")
    precision_at_k: float = Field(description="Fraction of the k highest-scored pairs that are positives.")
    k: int = Field(description="Number of positives.")
    pairs: int = Field(description="Scored pairs evaluated.")


class Detection(BaseModel):
    run: str = Field(description="The run's name.")
    faulty: list[DetectionRow] = Field(description="Finding faulty pairs (every truth tag but clean); empty when "
                                                   "the run has no faulty or no clean pairs.")
    swapped: list[DetectionRow] = Field(description="Finding swapped pairs among all scored pairs.")


class ComparedTag(BaseModel):
    truth: str = Field(description="The truth tag.")
    pairs: int = Field(description="Shared pairs with this truth tag (tag as recorded in run_a).")
    mean_a: float = Field(description="Mean of the score over these pairs in run_a.")
    mean_b: float = Field(description="Mean of the score over these pairs in run_b.")


class Comparison(BaseModel):
    run_a: str = Field(description="The first run's name.")
    run_b: str = Field(description="The second run's name.")
    score: str = Field(description="The score compared.")
    shared_pairs: int = Field(description="Scored pairs present in both runs (same sample id).")
    mean_a: float | None = Field(description="Mean of the score over the shared pairs in run_a.")
    mean_b: float | None = Field(description="Mean of the score over the shared pairs in run_b.")
    spearman: float | None = Field(description="Spearman rank correlation of the score over the shared pairs.")
    k: int = Field(description="Top-k size used (the requested k, at most the shared pairs).")
    top_k_overlap: int = Field(description="Pairs in both runs' top k (by the score, among shared pairs).")
    top_k_fraction: float | None = Field(description="top_k_overlap / k.")
    by_truth: list[ComparedTag] = Field(description="Means in both runs per truth tag (of run_a).")
    utility: dict[str, dict[str, dict]] = Field(description="Each run's utility of f and g, by run name.")


class TagCount(BaseModel):
    tag: str = Field(description="The user tag.")
    pairs: int = Field(description="Pairs of the run carrying it.")


class TagChange(BaseModel):
    sample_ids: list[SampleIdText] = Field(min_length=1, max_length=MAX_TAG_BATCH,
                                  description="Sample ids of the run to tag (at most 10,000 per request).")


class TagResult(BaseModel):
    tag: UserTag = Field(description="The user tag.")
    changed: int = Field(description="Pairs that gained (or lost) the tag with this request.")
    pairs: int = Field(description="Pairs carrying the tag afterwards.")


class ExperimentSummary(BaseModel):
    name: str = Field(description="The experiment's name (experiment.json, or `clipmem ingest --experiment`).")
    runs: int = Field(description="Runs of the experiment in the database.")
    seeds: list[int] = Field(description="The seeds its runs were trained with, ascending.")
    grids: list[str] = Field(description="Grids with a curve (two settings or more): "
                                         "captions (captions per image), text-noise (σ of the noise on text "
                                         "embeddings), removal (pairs removed before training), images-captions "
                                         "(1 or 5 renderings per scene × 1 or 5 captions per image); the baseline "
                                         "run belongs to every grid.")


class ExperimentRunRow(BaseModel):
    """One run of an experiment as scoring.experiment_report.run_row makes it: its parameters, mean scores, and
    each utility metric of metrics.json averaged over f and g (i2t_r1, i2t_r5, t2i_r1, t2i_r5, zeroshot_colour,
    zeroshot_shape, probe_<label>, ...) as further number-valued fields, with the run's mean raw CLIPMem per truth
    tag (truth_clipmem_raw_<tag>) and CLIPMem's swapped-pair AUROC and average precision (swapped_auroc,
    swapped_average_precision; absent without swapped pairs), which the towers and from-scratch grids compare."""

    model_config = ConfigDict(extra="allow")

    run: str = Field(description="The run's name.")
    run_id: int = Field(description="The run's database id.")
    experiment: str = Field(description="The experiment's name.")
    seed: int = Field(description="The seed the run was trained with.")
    captions_per_image: int = Field(description="Captions per image in training (0 when not recorded).")
    text_noise: float = Field(description="σ of the Gaussian noise added to text embeddings in training (where it "
                                          "is added, on the normalised embedding or on the projection output, is "
                                          "the base recipe's train.text_noise_on, not a grid parameter).")
    removal_method: str | None = Field(description="How removed pairs were chosen: top-clipmem, lowest-similarity, "
                                                   "random; null when none were removed.")
    removal_count: int = Field(description="Scored pairs of the baseline removed before training.")
    renderings: int = Field(description="Renderings per scene training drew each pair's image from (1: the image "
                                        "alone, also for runs from before the knob).")
    lock: str = Field(description="Towers grid: the tower kept at the experiment's pretrained weights, 'image' or "
                                  "'text'; '' when both towers trained (also for runs from before the grid).")
    from_scratch: bool = Field(description="From-scratch grid: trained from random weights although the experiment "
                                           "has a pretrained base.")
    mean_clipmem_raw: float = Field(description="Mean raw CLIPMem (A_f - A_g) over the run's scored pairs.")
    mean_clipmem: float = Field(description="Mean CLIPMem (min-max scaled per run) over its scored pairs.")
    mean_clipmem_raw_common: float | None = Field(
        default=None, description="Removal grid only: mean raw CLIPMem over the pairs that every removal-grid run "
                                  "of this seed scores (the mean over the run's own pairs drops by construction "
                                  "when the top pairs are removed); null outside the removal grid, when the seed's "
                                  "removal grid is the baseline alone, or when those runs share no pair.")
    common_pairs: int | None = Field(
        default=None, description="Removal grid only: how many pairs mean_clipmem_raw_common is over (0 when the "
                                  "runs share none); null outside the removal grid or when the seed's removal grid "
                                  "is the baseline alone.")


class ExperimentSummaryRow(BaseModel):
    grid: str = Field(description="captions, text-noise, removal or images-captions.")
    method: str = Field(description="The line the point is on: the removal method (removal grid), '1 rendering' or "
                                    "'5 renderings' (images-captions grid); empty for the other grids.")
    value: float = Field(description="The grid's knob: captions per image (captions, images-captions), σ "
                                     "(text-noise), or pairs removed (removal).")
    metric: str = Field(description="mean_clipmem_raw, mean_clipmem, mean_clipmem_raw_common (removal grid only: "
                                    "over the pairs every run of the seed scores), or a utility metric.")
    mean: float = Field(description="Mean of the metric over the runs (seeds) at this point.")
    std: float = Field(description="Standard deviation over seeds (ddof 1; 0 for a single seed).")
    n: int = Field(description="Runs (seeds) at this point.")


class ExperimentDetail(BaseModel):
    name: str = Field(description="The experiment's name.")
    seeds: list[int] = Field(description="The seeds its runs were trained with, ascending.")
    grids: list[str] = Field(description="Grids with a curve, of captions, text-noise, removal, images-captions.")
    runs: list[ExperimentRunRow] = Field(description="Every run, by parameters then seed.")
    summary: list[ExperimentSummaryRow] = Field(description="clipmem.scoring.experiment_report.summarize of the "
                                                            "runs: one row per grid, method, knob value and metric.")
