"""Read and check a finished run directory before anything is written to the database.

The file names come from scoring.rundir.RunDir and the columns, split names and score
definitions from scoring.columns: the contract scoring writes by, both torch-free.
Every problem is reported as a ClipmemError naming the file, column and an offending sample.
The files are first checked against the SHA-256 sums the COMPLETE marker records, and every
score against the range its definition allows, since a damaged Parquet file reads back
without error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipmem.scoring.columns import (COSINE, COSINE_GAP, CURVE_COLUMNS, EMBEDDING_ARRAYS, FLAG_COLUMNS,
                                     LAYER_COLUMNS, LAYER_INTERVAL_COLUMNS, LAYER_UNIT_COLUMNS,
                                     MEMORIZED, NEIGHBOUR_COLUMNS, NEIGHBOUR_KINDS, NULL_COLUMNS, RANGE_TOLERANCE,
                                     REASON, REASONS, SAMPLE_COLUMNS, SCORE_BY_NAME, SCORE_COLUMNS, SCORE_FILE_COLUMNS, SCORED_SPLITS,
                                     SEEN_BY, SPLITS, null_key)
from clipmem.scoring.columns import DYNAMICS_COLUMNS, TRAJECTORY_COLUMNS
from clipmem.scoring.config import RunConfig
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.experiment_report import REMOVAL_METHODS
from clipmem.scoring.rundir import COMPLETE, RunDir

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# an image location that could leave the data root: empty, absolute (also a tar member's
# part after '#'), backslashes, a '..' segment, or control characters
UNSAFE_REF = re.compile(r"^$|^/|#/|\\|(?:^|[/#])\.\.(?:[/#]|$)|[\x00-\x1f\x7f]")
MAX_SAMPLE_ID = 512
MAX_TRUTH = 64


@dataclass
class RunContents:
    path: Path
    config: dict               # config.json as written: stored and served as the run's settings
    run_config: RunConfig      # the same, read as scoring reads it
    data_root: Path
    dataset_kind: str
    split_sizes: dict[str, int]
    samples: pd.DataFrame      # SAMPLE_COLUMNS plus pair_index, in file order
    scores: pd.DataFrame       # SCORE_FILE_COLUMNS, the optional scores and flags present, reason when present,
                               # pair_index, and null_for (the pair's null key) when the run has a null
    score_names: list[str]     # score columns of this run, in SCORE_COLUMNS order
    embedding_pair_index: np.ndarray  # pair_index of each embedding row
    embeddings: dict[str, np.ndarray]  # f_image, f_text, g_image, g_text: (N, D) float32
    metrics: dict
    layers: list[dict] | None = None           # layers.parquet rows, when the run has LayerMem
    layer_curves: dict | None = None           # {sample_id: {tower: [value per block]}}
    experiment: str | None = None              # experiment.json's name, for runs made by `clipmem experiment`
    experiment_params: dict | None = None      # experiment.json as written
    flag_names: list[str] = field(default_factory=list)  # FLAG_COLUMNS this run's scores.parquet holds
    null_scores: dict[str, list[float]] | None = None  # null.parquet's clipmem_raw by null_for; None without one
    fdr: float | None = None                   # config score.fdr: the rate `memorized` controls
    # neighbours.parquet as pair_index, kind, rank, neighbour_index, similarity, agreement; None without one
    neighbours: pd.DataFrame | None = None
    # trajectory.parquet (issue 19) as pair_index, epoch, null_for and the scores of TRAJECTORY_COLUMNS, and its
    # tracked epochs ascending; None for runs trained without --track-epochs
    trajectory: pd.DataFrame | None = None
    tracked_epochs: list[int] | None = None
    warnings: list[str] = field(default_factory=list)  # what the reader could not check, for the user


def read_files(run: RunDir) -> tuple[Path, ...]:
    """The files of the run directory ingest reads (the optional ones only when present)."""
    return (run.config, run.data_root, run.split, run.samples, run.scores, run.embeddings, run.metrics,
            run.layers, run.layer_curves, run.experiment, run.null, run.neighbours, run.trajectory)


def _read_layers(run: RunDir) -> tuple[list[dict] | None, dict | None]:
    """The optional LayerMem tables; absent files mean the run was scored without layer curves."""
    layers = curves = None
    if run.layers.is_file():
        frame, _ = _read_parquet(run.layers, LAYER_COLUMNS, strings=("tower", "truth"))
        # the bootstrap intervals of newer runs: all four columns or none
        intervals = [c for c in LAYER_INTERVAL_COLUMNS if c in frame.columns]
        if intervals and len(intervals) < len(LAYER_INTERVAL_COLUMNS):
            missing = sorted(set(LAYER_INTERVAL_COLUMNS) - set(intervals))
            raise ClipmemError(f"{run.layers} has interval column(s) {', '.join(intervals)} but lacks "
                               f"{', '.join(missing)}")
        values = ["layer_mem", "delta_layer_mem", *intervals]
        try:
            finite = np.isfinite(frame[values].to_numpy(dtype=float)).all()
        except (TypeError, ValueError):
            raise ClipmemError(f"{run.layers}: columns {', '.join(values)} should be numeric") from None
        if not finite:
            raise ClipmemError(f"{run.layers} holds NaN or infinite values")
        for name in ("layer_mem", "delta_layer_mem") if intervals else ():
            lo, hi, value = frame[f"{name}_lo"], frame[f"{name}_hi"], frame[name]
            outside = (lo > value + RANGE_TOLERANCE) | (hi < value - RANGE_TOLERANCE)
            if outside.any():
                row = frame[outside].iloc[0]
                raise ClipmemError(f"{run.layers}: the interval [{name}_lo, {name}_hi] of tower {row.tower}, layer "
                                   f"{int(row.layer)}, truth {row.truth} does not contain {name}")
        units = _layer_units(run.layers, frame)
        layers = [{"tower": str(r.tower), "layer": int(r.layer), "truth": str(r.truth), "pairs": int(r.pairs),
                   "layer_mem": float(r.layer_mem), "delta_layer_mem": float(r.delta_layer_mem),
                   **{name: float(getattr(r, name)) for name in intervals},
                   **{name: None if np.isnan(getattr(r, name)) else float(getattr(r, name)) for name in units}}
                  for r in frame.itertuples()]
    if run.layer_curves.is_file():
        frame, _ = _read_parquet(run.layer_curves, CURVE_COLUMNS, strings=("sample_id", "tower"))
        frame = frame.sort_values(["sample_id", "tower", "layer"])
        curves = {}
        for (sid, tower), group in frame.groupby(["sample_id", "tower"], sort=False):
            curves.setdefault(str(sid), {})[str(tower)] = [float(v) for v in group["layer_mem"]]
    return layers, curves


def _layer_units(file: Path, frame: pd.DataFrame) -> list[str]:
    """The UnitMem columns of newer runs' layers.parquet (all three or none): numeric, null where UnitMem is not
    defined (truth groups, k-fold and replica runs), otherwise in [0, 1]."""
    units = [c for c in LAYER_UNIT_COLUMNS if c in frame.columns]
    if units and len(units) < len(LAYER_UNIT_COLUMNS):
        missing = sorted(set(LAYER_UNIT_COLUMNS) - set(units))
        raise ClipmemError(f"{file} has UnitMem column(s) {', '.join(units)} but lacks {', '.join(missing)}")
    for name in units:
        try:
            values = frame[name].to_numpy(dtype=float)
        except (TypeError, ValueError):
            raise ClipmemError(f"{file}: column {name} should be numeric") from None
        bad = ~np.isnan(values) & ~((values >= -RANGE_TOLERANCE) & (values <= 1 + RANGE_TOLERANCE))
        if bad.any():
            row = frame[bad].iloc[0]
            raise ClipmemError(f"{file}: {name} of tower {row.tower}, layer {int(row.layer)}, truth {row.truth} is "
                               f"{float(row[name])!r}, outside UnitMem's range [0, 1]")
    return units


def read_run(path: Path) -> RunContents:
    path = Path(path).expanduser().resolve()
    run = RunDir(path)
    if not path.is_dir():
        raise ClipmemError(f"run directory {path} does not exist")
    if not run.is_finished():
        raise ClipmemError(f"{path} is not a finished run (no {COMPLETE} marker): run `clipmem score` on it first")
    warnings = []
    if run.verify([file.name for file in read_files(run)]):
        warnings.append(f"{run.marker} records no checksums (the run was finished by an older clipmem): its files "
                        "were checked for form and range, but damage that keeps them in range would go unnoticed")
    config = _read_json(run.config)
    run_config = run.load_config()
    data_root_file = _read_json(run.data_root)
    split = _read_json(run.split)
    metrics = _read_json(run.metrics)
    root_value = data_root_file.get("data_root")
    if not isinstance(root_value, str) or not root_value:
        raise ClipmemError(f"{run.data_root} has no 'data_root' path")
    data_root = Path(root_value)
    if not data_root.is_absolute() or not data_root.is_dir():
        raise ClipmemError(f"data root {data_root} (from {run.data_root}) is not an existing absolute "
                           "folder: the images must be where the run found them")
    samples = _read_samples(run.samples)
    # one hash index of the sample ids, for every lookup by id below
    lookup = pd.Index(samples["sample_id"].to_numpy(), dtype=object)
    _check_split_plan(run.split, split, samples, lookup)
    scores, score_names = _read_scores(run.scores, samples, lookup, set(run_config.train.remove_ids or ()))
    fdr = _fdr(run.config, config)
    flag_names = _check_flags(run.scores, scores, score_names, fdr)
    null_scores = _read_null(run.null, samples, lookup, scores) if run.null.is_file() else None
    neighbours = _read_neighbours(run.neighbours, samples, lookup, scores) if run.neighbours.is_file() else None
    trajectory = (_read_trajectory(run.trajectory, samples, lookup, scores, run_config.train.epochs)
                  if run.trajectory.is_file() else None)
    tracked = sorted(int(e) for e in trajectory["epoch"].unique()) if trajectory is not None else None
    _check_dynamics(run.scores, scores, tracked)
    emb_index, embeddings = _read_embeddings(run.embeddings, samples, scores, lookup)
    sizes = {name: int((samples["split"] == name).sum()) for name in SPLITS}
    layers, curves = _read_layers(run)
    experiment, experiment_params = read_experiment(run.experiment)
    return RunContents(path=path, config=config, run_config=run_config, data_root=data_root.resolve(),
                       dataset_kind=str(data_root_file.get("kind", "unknown")), split_sizes=sizes,
                       samples=samples, scores=scores, score_names=score_names, embedding_pair_index=emb_index,
                       embeddings=embeddings, metrics=metrics, layers=layers, layer_curves=curves,
                       experiment=experiment, experiment_params=experiment_params, flag_names=flag_names,
                       null_scores=null_scores, fdr=fdr, neighbours=neighbours, trajectory=trajectory,
                       tracked_epochs=tracked, warnings=warnings)


def _fdr(file: Path, config: dict) -> float | None:
    """config.json's score.fdr (newer runs), checked to be a rate in (0, 1); None when the run has none."""
    score = config.get("score")
    fdr = score.get("fdr") if isinstance(score, dict) else None
    if fdr is None:
        return None
    if isinstance(fdr, bool) or not isinstance(fdr, (int, float)) or not 0 < fdr < 1:
        raise ClipmemError(f"{file}: score.fdr should be a number between 0 and 1 (exclusive), not {fdr!r}")
    return float(fdr)


def _check_flags(file: Path, scores: pd.DataFrame, score_names: list[str], fdr: float | None) -> list[str]:
    """The FLAG_COLUMNS scores.parquet holds, checked: true/false for every pair, and `memorized` the same as
    clipmem_q <= the run's FDR (both written by the same scoring step, so a difference means damage)."""
    present = [name for name in FLAG_COLUMNS if name in scores.columns]
    for name in present:
        if not pd.api.types.is_bool_dtype(scores[name].dtype):
            raise ClipmemError(f"{file}: column {name} should hold true or false for every pair (found "
                               f"{scores[name].dtype}{', with missing values' if scores[name].isna().any() else ''})")
    if MEMORIZED in present:
        if "clipmem_q" not in score_names:
            raise ClipmemError(f"{file} has column {MEMORIZED} but no clipmem_q, the q-values it is decided by")
        if fdr is None:
            raise ClipmemError(f"{file} has column {MEMORIZED} but config.json records no score.fdr, the false "
                               "discovery rate it was decided at")
        differ = scores[MEMORIZED].to_numpy() != (scores["clipmem_q"].to_numpy() <= fdr)
        if differ.any():
            raise ClipmemError(f"{file}: {MEMORIZED} of sample {_first_bad(scores, differ)} disagrees with its "
                               f"clipmem_q and the run's FDR {fdr:g} (memorized means clipmem_q <= FDR)")
    return present


def _locate(file: Path, frame: pd.DataFrame, lookup: pd.Index, what: str) -> np.ndarray:
    """Each row's position in samples.parquet; refuses an empty table or a sample that is not planned."""
    if frame.empty:
        raise ClipmemError(f"{file} holds no {what}")
    position = lookup.get_indexer(frame["sample_id"].to_numpy())
    if (position < 0).any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, position < 0)} is not in samples.parquet")
    return position


def _read_null(file: Path, samples: pd.DataFrame, lookup: pd.Index, scores: pd.DataFrame) -> dict[str, list[float]]:
    """null.parquet's clipmem_raw by null key, checked: S_E pairs of samples.parquet, each at most once per key,
    finite raw scores within their range, and a null for every key the scored pairs are tested against. Also sets
    scores["null_for"], each scored pair's key."""
    frame, _ = _read_parquet(file, NULL_COLUMNS, strings=("sample_id", "split", "truth", "null_for"),
                             raw=("views_f", "views_g"))
    position = _locate(file, frame, lookup, "null pairs")
    not_extra = samples["split"].to_numpy()[position] != "extra"
    if not_extra.any():
        sid = _first_bad(frame, not_extra)
        raise ClipmemError(f"{file}: sample {sid} is in split '{samples['split'].to_numpy()[position][not_extra][0]}' "
                           "in samples.parquet; the null is scored on S_E (extra) pairs, which no model trained on")
    long_key = frame["null_for"].str.len().to_numpy() > 16
    if long_key.any():
        raise ClipmemError(f"{file}: null_for of sample {_first_bad(frame, long_key)} is longer than 16 characters "
                           "(it names a split or a fold)")
    dup = frame.duplicated(["sample_id", "null_for"]).to_numpy()
    if dup.any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, dup)} appears more than once for null_for "
                           f"'{frame['null_for'].to_numpy()[dup][0]}'")
    for name, bounds in (("clipmem_raw", COSINE_GAP), ("clipmem_contrastive_raw", (-np.inf, np.inf))):
        _finite_column(file, frame, name, bounds)
    folds = scores["fold"].to_numpy() if "fold" in scores.columns else [None] * len(scores)
    scores["null_for"] = [null_key(split, fold) for split, fold in zip(scores["split"].tolist(), list(folds))]
    raw = frame["clipmem_raw"].to_numpy(dtype=np.float64)
    by_key = {str(key): raw[frame["null_for"].to_numpy() == key].tolist() for key in pd.unique(frame["null_for"])}
    lacking = sorted(set(scores["null_for"]) - set(by_key))
    if lacking:
        first = _first_bad(scores, scores["null_for"].to_numpy() == lacking[0])
        raise ClipmemError(f"{file} has no null for '{lacking[0]}', which scored pairs such as sample {first} are "
                           "tested against")
    return by_key


# experiment.json (written by `clipmem experiment`): "experiment" (the name) and "seed" are required; the grid
# parameters are checked when present (scoring.experiment_report reads a missing one as the baseline's); other
# keys are kept as they are
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
EXPERIMENT_NAME_RULE = "1-100 characters: letters, digits, '.', '_', '-', starting with a letter or digit"
# whole-number parameters and their least value (a scene has at least its one rendering)
_INT_KEYS = {"seed": 0, "captions_per_image": 0, "removal_count": 0, "renderings": 1}


def check_experiment_name(name: str, source: str) -> str:
    if not isinstance(name, str) or not EXPERIMENT_NAME.match(name):
        raise ClipmemError(f"{source}: experiment name {name!r} is not allowed ({EXPERIMENT_NAME_RULE})")
    return name


def read_experiment(file: Path) -> tuple[str | None, dict | None]:
    """(name, parameters) from a run's experiment.json; (None, None) when the run has none."""
    if not file.exists():
        return None, None
    params = _read_json(file)
    for key in ("experiment", "seed"):
        if key not in params:
            raise ClipmemError(f"{file} has no '{key}'")
    name = check_experiment_name(params["experiment"], str(file))
    try:
        json.dumps(params, allow_nan=False)
    except ValueError:
        raise ClipmemError(f"{file} holds NaN or infinite numbers") from None
    for key, least in _INT_KEYS.items():
        value = params.get(key)
        whole = isinstance(value, int) and not isinstance(value, bool) and value >= least
        if not whole and (key == "seed" or value is not None):
            raise ClipmemError(f"{file}: '{key}' should be a whole number >= {least}, not {value!r}")
    noise = params.get("text_noise")
    if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float))
                              or not np.isfinite(noise) or noise < 0):
        raise ClipmemError(f"{file}: 'text_noise' should be a number >= 0, not {noise!r}")
    lock = params.get("lock")
    if lock is not None and lock not in ("", "image", "text"):
        raise ClipmemError(f"{file}: 'lock' should be 'image', 'text' or '' (no tower locked), not {lock!r}")
    scratch = params.get("from_scratch")
    if scratch is not None and not isinstance(scratch, bool):
        raise ClipmemError(f"{file}: 'from_scratch' should be true or false, not {scratch!r}")
    method = params.get("removal_method")
    if method is not None and method not in REMOVAL_METHODS:
        raise ClipmemError(f"{file}: 'removal_method' should be one of {', '.join(REMOVAL_METHODS)} or null, "
                           f"not {method!r}")
    return name, params


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise ClipmemError(f"{file} is missing")
    try:
        value = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClipmemError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ClipmemError(f"{file} should hold a JSON object")
    return value


def _read_parquet(file: Path, required: tuple[str, ...], strings: tuple[str, ...] = (),
                  raw: tuple[str, ...] = ()) -> tuple[pd.DataFrame, dict]:
    """The file as a DataFrame with the `strings` columns checked to hold strings (no nulls); the `raw`
    columns, and the `strings` columns again, are also returned as pyarrow arrays (for vectorised checks)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not file.is_file():
        raise ClipmemError(f"{file} is missing")
    try:
        table = pq.read_table(file)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ClipmemError(f"{file} cannot be read as Parquet ({type(exc).__name__}: {exc})") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ClipmemError(f"{file} lacks column(s) {', '.join(missing)}")
    for name in strings:
        column = table.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                or pa.types.is_string_view(column.type)):
            raise ClipmemError(f"{file}: column {name} should hold strings (found {column.type})")
        if column.null_count:
            raise ClipmemError(f"{file}: column {name} has {column.null_count} missing values")
    kept = {name: table.column(name).combine_chunks() for name in (*raw, *strings)}
    frame = table.drop_columns(list(raw)).to_pandas()
    for name in frame.columns:
        # plain Python strings: pandas' Arrow-backed strings make isin/lookups row-by-row slow
        if pd.api.types.is_string_dtype(frame[name].dtype):
            frame[name] = frame[name].astype(object)
    return frame, kept


def _finite_column(file, frame: pd.DataFrame, name: str, bounds: tuple[float, float] | None) -> np.ndarray:
    """Column `name` of a per-pair table as float64, refused (naming the first sample at fault and how many pairs
    are) when it is not numeric, not finite or outside `bounds` (None: any finite value)."""
    try:
        values = frame[name].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ClipmemError(f"{file}: column {name} should be numeric") from None
    bad = ~np.isfinite(values)
    if bad.any():
        raise ClipmemError(f"{file}: column {name} is NaN or infinite for sample {_first_bad(frame, bad)}"
                           f" ({int(bad.sum())} pairs)")
    if bounds is not None:
        _check_range(file, frame, name, values, bounds)
    return values


def _first_bad(frame: pd.DataFrame, bad: pd.Series | np.ndarray) -> str:
    return str(frame["sample_id"].to_numpy()[np.flatnonzero(np.asarray(bad))[0]])


def _too_long(frame: pd.DataFrame, arrays: dict, column: str, file: Path, max_len: int) -> None:
    import pyarrow.compute as pc

    too_long = np.asarray(pc.greater(pc.utf8_length(arrays[column]), max_len))
    if too_long.any():
        raise ClipmemError(f"{file}: {column} of sample {_first_bad(frame, too_long)} is longer than "
                           f"{max_len} characters")


def _matching(arrays: dict, column: str, pattern: re.Pattern) -> np.ndarray:
    """Rows whose `column` contains a match of `pattern` (RE2, vectorised)."""
    import pyarrow.compute as pc

    return np.asarray(pc.match_substring_regex(arrays[column], pattern.pattern))


def _read_samples(file: Path) -> pd.DataFrame:
    frame, arrays = _read_parquet(file, SAMPLE_COLUMNS, strings=("sample_id", "split", "truth", "image_ref",
                                                                 "attributes"), raw=("captions",))
    if frame.empty:
        raise ClipmemError(f"{file} holds no pairs")
    _too_long(frame, arrays, "sample_id", file, MAX_SAMPLE_ID)
    _too_long(frame, arrays, "truth", file, MAX_TRUTH)
    ids = frame["sample_id"]
    empty = _matching(arrays, "sample_id", re.compile("^$"))
    if empty.any():
        raise ClipmemError(f"{file}: row {int(np.flatnonzero(empty)[0])} has an empty sample_id")
    control = _matching(arrays, "sample_id", CONTROL)
    if control.any():
        raise ClipmemError(f"{file}: sample_id {_first_bad(frame, control)!r} contains a control character")
    dup = ids.duplicated()
    if dup.any():
        raise ClipmemError(f"{file}: sample_id {_first_bad(frame, dup)} appears more than once")
    unknown = ~frame["split"].isin(SPLITS)
    if unknown.any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, unknown)} has split "
                           f"'{frame['split'][unknown].iloc[0]}' (expected one of {', '.join(SPLITS)})")
    frame["captions"] = _captions(arrays["captions"], frame, file)
    for text in pd.unique(frame["attributes"]):  # most pairs share a few distinct values
        if not _is_json_object(text):
            sid = _first_bad(frame, frame["attributes"].to_numpy() == text)
            raise ClipmemError(f"{file}: attributes of sample {sid} should be a JSON object, not {text[:80]!r}")
    unsafe = _matching(arrays, "image_ref", UNSAFE_REF)
    if unsafe.any():
        sid = _first_bad(frame, unsafe)
        raise ClipmemError(f"{file}: image_ref of sample {sid} is '{frame['image_ref'][unsafe].iloc[0]}': it must "
                           "be a relative path inside the data root (no leading '/', no '..')")
    frame["pair_index"] = np.arange(len(frame), dtype=np.int64)
    return frame


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _captions(column, frame: pd.DataFrame, file: Path) -> list[list[str]]:
    import pyarrow as pa

    if not ((pa.types.is_list(column.type) or pa.types.is_large_list(column.type))
            and (pa.types.is_string(column.type.value_type) or pa.types.is_large_string(column.type.value_type))):
        raise ClipmemError(f"{file}: column captions should hold lists of strings (found {column.type})")
    offsets = column.offsets.to_numpy()
    values = column.flatten()
    bad = (np.diff(offsets) == 0) | np.asarray(column.is_null())
    if values.null_count:
        null_at = np.flatnonzero(np.asarray(values.is_null()))
        bad[np.searchsorted(offsets - offsets[0], null_at, side="right") - 1] = True
    if bad.any():
        raise ClipmemError(f"{file}: captions of sample {_first_bad(frame, bad)} should be a non-empty list of "
                           "strings")
    return column.to_pylist()


def _check_split_plan(file: Path, split: dict, samples: pd.DataFrame, lookup: pd.Index) -> None:
    ids = split.get("ids")
    if not isinstance(ids, dict):
        raise ClipmemError(f"{file} has no 'ids' object")
    for name, members in ids.items():
        if name not in SPLITS or not isinstance(members, list):
            raise ClipmemError(f"{file}: 'ids' has an unexpected entry '{name}'")
    planned_ids = np.array([str(m) for members in ids.values() for m in members], dtype=object)
    planned_splits = np.repeat(np.array(list(ids), dtype=object), [len(m) for m in ids.values()])
    position = lookup.get_indexer(planned_ids)
    recorded = samples["split"].to_numpy()
    agree = (position >= 0) & (recorded[np.maximum(position, 0)] == planned_splits)
    covered = np.zeros(len(samples), dtype=bool)
    covered[position[position >= 0]] = True
    if not agree.all():
        k = int(np.flatnonzero(~agree)[0])
        sid, in_plan = planned_ids[k], planned_splits[k]
        in_samples = recorded[position[k]] if position[k] >= 0 else "absent"
    elif not covered.all():
        k = int(np.flatnonzero(~covered)[0])
        sid, in_plan, in_samples = samples["sample_id"].iloc[k], "absent", recorded[k]
    elif len(planned_ids) != len(samples):
        raise ClipmemError(f"{file}: sample {planned_ids[_duplicate(position)][0]} is listed more than once")
    else:
        return
    raise ClipmemError(f"{file} and samples.parquet disagree on the split plan (e.g. sample {sid}: "
                       f"{in_plan} in split.json, {in_samples} in samples.parquet)")


def _duplicate(position: np.ndarray) -> np.ndarray:
    """Rows whose position (into samples) was already taken by an earlier row."""
    first = np.full(position.max() + 1, -1, dtype=np.int64)
    rows = np.arange(len(position))
    first[position[::-1]] = rows[::-1]
    return first[position] != rows


def _read_scores(file: Path, samples: pd.DataFrame, lookup: pd.Index,
                 removed: set[str] = frozenset()) -> tuple[pd.DataFrame, list[str]]:
    """scores.parquet checked against samples.parquet; pairs the run removed from training (config
    train.remove_ids) are the only candidate or independent pairs allowed to lack a score."""
    frame, views = _read_parquet(file, SCORE_FILE_COLUMNS, strings=("sample_id", "split", "truth", "seen_by"),
                                 raw=("views_f", "views_g"))
    position = _locate(file, frame, lookup, "scored pairs")
    dup = _duplicate(position)
    if dup.any():
        raise ClipmemError(f"{file}: sample_id {_first_bad(frame, dup)} appears more than once")
    for column in ("split", "truth"):
        differ = frame[column].to_numpy() != samples[column].to_numpy()[position]
        if differ.any():
            raise ClipmemError(f"{file}: {column} of sample {_first_bad(frame, differ)} differs from samples.parquet")
    not_scored = ~frame["split"].isin(SCORED_SPLITS)
    if not_scored.any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, not_scored)} is in split "
                           f"'{frame['split'][not_scored].iloc[0]}', which is not scored")
    has_scores = np.zeros(len(samples), dtype=bool)
    has_scores[position] = True
    should_be_scored = samples["split"].isin(SCORED_SPLITS).to_numpy() & ~has_scores
    if removed:
        should_be_scored &= ~samples["sample_id"].isin(removed).to_numpy()
    if should_be_scored.any():
        raise ClipmemError(f"{file} has no scores for sample {_first_bad(samples, should_be_scored)} "
                           "(every candidate and independent pair is scored)")
    wrong_model = frame["seen_by"].to_numpy() != frame["split"].map(SEEN_BY).to_numpy()
    if wrong_model.any():
        raise ClipmemError(f"{file}: seen_by of sample {_first_bad(frame, wrong_model)} does not match its split "
                           "(candidate pairs are seen by f, independent pairs by g)")
    present = [c.name for c in SCORE_COLUMNS if c.name in frame.columns]
    for name in [*present, "n_captions"]:
        frame[name] = _finite_column(file, frame, name, SCORE_BY_NAME[name].bounds if name in SCORE_BY_NAME else None)
    for name in ("views_f", "views_g"):
        frame[name] = _views(views[name], frame, name, file)
    if REASON in frame.columns:
        frame[REASON] = _reasons(file, frame)
    frame["pair_index"] = samples["pair_index"].to_numpy()[position]
    frame["n_captions"] = frame["n_captions"].astype(np.int64)
    return frame, present


def _reasons(file: Path, frame: pd.DataFrame) -> np.ndarray:
    """The `reason` column as plain strings, each one of REASONS (written for every scored pair)."""
    values = frame[REASON].astype(object).to_numpy()
    missing = pd.isna(values)
    if missing.any():
        raise ClipmemError(f"{file}: column {REASON} is missing for sample {_first_bad(frame, missing)} "
                           f"({int(missing.sum())} pairs): it is written for every scored pair")
    unknown = ~np.isin(values.astype(str), REASONS) | np.array([not isinstance(v, str) for v in values])
    if unknown.any():
        sid = _first_bad(frame, unknown)
        raise ClipmemError(f"{file}: {REASON} of sample {sid} is {values[unknown][0]!r} (expected one of "
                           f"{', '.join(REASONS)})")
    return values


def _read_neighbours(file: Path, samples: pd.DataFrame, lookup: pd.Index, scores: pd.DataFrame) -> pd.DataFrame:
    """neighbours.parquet checked: rows of scored pairs, each (pair, kind, rank) once with kind one of
    NEIGHBOUR_KINDS and rank >= 1, neighbours that are other pairs of samples.parquet, finite cosines in range.
    Returned as pair_index, kind, rank, neighbour_index, similarity, agreement, by pair, kind and rank."""
    frame, arrays = _read_parquet(file, NEIGHBOUR_COLUMNS, strings=("sample_id", "kind", "neighbour_id"))
    if frame.empty:
        raise ClipmemError(f"{file} holds no neighbours")
    # each id repeats k times or more: look up the distinct ones (a hash lookup per row costs seconds at a million)
    position, neighbour = (_positions(lookup, arrays[name]) for name in ("sample_id", "neighbour_id"))
    if (position < 0).any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, position < 0)} is not in samples.parquet")
    scored = np.zeros(len(samples), dtype=bool)
    scored[scores["pair_index"].to_numpy()] = True
    not_scored = ~scored[position]
    if not_scored.any():
        split = samples["split"].to_numpy()[position][not_scored][0]
        raise ClipmemError(f"{file}: sample {_first_bad(frame, not_scored)} is not scored (split '{split}'); "
                           "neighbours are listed for scored pairs only")
    unknown_kind = ~frame["kind"].isin(NEIGHBOUR_KINDS).to_numpy()
    if unknown_kind.any():
        raise ClipmemError(f"{file}: kind of sample {_first_bad(frame, unknown_kind)} is "
                           f"{frame['kind'].to_numpy()[unknown_kind][0]!r} (expected one of {', '.join(NEIGHBOUR_KINDS)})")
    absent = neighbour < 0
    if absent.any():
        raise ClipmemError(f"{file}: neighbour_id {frame['neighbour_id'].to_numpy()[absent][0]!r} of sample "
                           f"{_first_bad(frame, absent)} is not a sample of the run (samples.parquet)")
    itself = neighbour == position
    if itself.any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, itself)} is listed as its own neighbour (neighbours "
                           "are other pairs)")
    try:
        rank = frame["rank"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ClipmemError(f"{file}: column rank should be numeric") from None
    bad_rank = ~np.isfinite(rank) | (rank < 1) | (rank != np.round(rank)) | (rank > 2**31 - 1)
    if bad_rank.any():
        raise ClipmemError(f"{file}: rank of sample {_first_bad(frame, bad_rank)} is {float(rank[bad_rank][0]):g} "
                           "(ranks are whole numbers from 1)")
    frame["rank"] = rank.astype(np.int64)
    dup = frame.duplicated(["sample_id", "kind", "rank"]).to_numpy()
    if dup.any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, dup)} has {frame['kind'].to_numpy()[dup][0]} "
                           f"neighbour rank {frame['rank'].to_numpy()[dup][0]} more than once")
    for name in ("similarity", "agreement"):
        frame[name] = _finite_column(file, frame, name, COSINE)
    pair_index = samples["pair_index"].to_numpy()
    out = pd.DataFrame({"pair_index": pair_index[position], "kind": frame["kind"].to_numpy(),
                        "rank": frame["rank"].to_numpy(), "neighbour_index": pair_index[neighbour],
                        "similarity": frame["similarity"].to_numpy(), "agreement": frame["agreement"].to_numpy()})
    return out.sort_values(["pair_index", "kind", "rank"], ignore_index=True)


def _read_trajectory(file: Path, samples: pd.DataFrame, lookup: pd.Index, scores: pd.DataFrame,
                     epochs: int) -> pd.DataFrame:
    """trajectory.parquet checked: whole epochs within the run's 1..epochs, rows with null null_for of scored pairs
    and the others of S_E pairs, each (pair, epoch, null_for) once, every scored pair at every tracked epoch, finite
    scores in range. Returned as pair_index and the other TRAJECTORY_COLUMNS, by pair, epoch and null_for."""
    frame, _ = _read_parquet(file, TRAJECTORY_COLUMNS, strings=("sample_id",))
    position = _locate(file, frame, lookup, "trajectory rows")
    try:
        epoch = frame["epoch"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ClipmemError(f"{file}: column epoch should be numeric") from None
    bad_epoch = ~np.isfinite(epoch) | (epoch != np.round(epoch)) | (epoch < 1) | (epoch > epochs)
    if bad_epoch.any():
        raise ClipmemError(f"{file}: epoch of sample {_first_bad(frame, bad_epoch)} is {float(epoch[bad_epoch][0]):g}, "
                           f"not a whole epoch within 1..{epochs} (the run trains {epochs} epochs, config.json "
                           "train.epochs)")
    frame["epoch"] = epoch.astype(np.int64)
    null_for = frame["null_for"].astype(object).where(frame["null_for"].notna(), None)
    is_null = null_for.notna().to_numpy()
    bad_key = is_null & ~np.array([isinstance(v, str) and 0 < len(v) <= 16 for v in null_for], dtype=bool)
    if bad_key.any():
        raise ClipmemError(f"{file}: null_for of sample {_first_bad(frame, bad_key)} is "
                           f"{null_for.to_numpy()[bad_key][0]!r} (a split or fold name of at most 16 characters, "
                           "or null on a scored pair's row)")
    split = samples["split"].to_numpy()[position]
    scored = np.zeros(len(samples), dtype=bool)
    scored[scores["pair_index"].to_numpy()] = True
    not_scored = ~is_null & ~scored[position]
    if not_scored.any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, not_scored)} (split '{split[not_scored][0]}') has a "
                           "row with null null_for, which only scored pairs have")
    not_extra = is_null & (split != "extra")
    if not_extra.any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, not_extra)} is in split '{split[not_extra][0]}' but has "
                           "a null row (null_for set): the null is scored on S_E (extra) pairs")
    frame["null_for"] = null_for.to_numpy()
    dup = frame.duplicated(["sample_id", "epoch", "null_for"]).to_numpy()
    if dup.any():
        raise ClipmemError(f"{file}: sample {_first_bad(frame, dup)} appears more than once at epoch "
                           f"{frame['epoch'].to_numpy()[dup][0]}")
    tracked = np.unique(frame["epoch"].to_numpy())
    counts = pd.Series(position[~is_null]).value_counts()
    lacking = scores["pair_index"].map(counts).fillna(0).to_numpy() < len(tracked)
    if lacking.any():
        raise ClipmemError(f"{file}: sample {_first_bad(scores, lacking)} lacks a row at some of the tracked epochs "
                           f"{', '.join(map(str, tracked.tolist()))} (every scored pair is scored at every one)")
    for name, bounds in (("align_f", COSINE), ("align_g", COSINE), ("clipmem_raw", COSINE_GAP),
                         ("clipmem_contrastive_raw", (-np.inf, np.inf))):
        frame[name] = _finite_column(file, frame, name, bounds)
    out = frame.drop(columns="sample_id").assign(pair_index=samples["pair_index"].to_numpy()[position])
    out = out[["pair_index", *TRAJECTORY_COLUMNS[1:]]]
    return out.sort_values(["pair_index", "epoch", "null_for"], ignore_index=True, na_position="first")


def _check_dynamics(file: Path, scores: pd.DataFrame, tracked: list[int] | None) -> None:
    """The per-pair summaries of the trajectory (DYNAMICS_COLUMNS) scores.parquet holds, checked and made floats:
    only in a tracked run; mem_auc and mem_variability finite and in range; mem_epoch null (never above the
    threshold) or one of the tracked epochs."""
    present = [c for c in DYNAMICS_COLUMNS if c.name in scores.columns]
    if present and tracked is None and scores[[c.name for c in present]].notna().to_numpy().any():
        raise ClipmemError(f"{file} has {present[0].name} values but the run has no trajectory.parquet "
                           "(it was trained without --track-epochs)")
    for c in present:
        try:
            values = scores[c.name].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise ClipmemError(f"{file}: column {c.name} should be numeric") from None
        if tracked is None:
            scores[c.name] = values
            continue
        if c.name == "mem_epoch":
            bad = ~np.isnan(values) & ~np.isin(values, tracked)
            if bad.any():
                raise ClipmemError(f"{file}: mem_epoch of sample {_first_bad(scores, bad)} is {values[bad][0]:g}, "
                                   f"not one of the tracked epochs {', '.join(map(str, tracked))} (or null)")
        else:
            bad = ~np.isfinite(values)
            if bad.any():
                raise ClipmemError(f"{file}: column {c.name} is NaN or infinite for sample {_first_bad(scores, bad)}")
            _check_range(file, scores, c.name, values, c.bounds)
        scores[c.name] = values


def _positions(lookup: pd.Index, ids) -> np.ndarray:
    """Each id's position in `lookup` (-1 when absent), for a pyarrow string array with many repeats."""
    encoded = ids.dictionary_encode()
    return lookup.get_indexer(encoded.dictionary.to_numpy(zero_copy_only=False))[encoded.indices.to_numpy()]


def _check_range(file: Path, frame: pd.DataFrame, name: str, values: np.ndarray, bounds: tuple[float, float],
                 offsets: np.ndarray | None = None) -> None:
    """Refuse values outside `bounds` (by more than rounding), naming the first offender's sample.
    `offsets` (of a list column, starting at 0) says which row each value belongs to; without, one value a row."""
    low, high = bounds
    bad = (values < low - RANGE_TOLERANCE) | (values > high + RANGE_TOLERANCE)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        row = first if offsets is None else int(np.searchsorted(offsets, first, side="right")) - 1
        sid = str(frame["sample_id"].to_numpy()[row])
        raise ClipmemError(f"{file}: column {name} is {values[first]:.6g} for sample {sid}, outside "
                           f"[{low:g}, {high:g}], the range its definition allows ({int(bad.sum())} values): "
                           "the file is damaged or was not written by clipmem's scoring")


def _views(column, frame: pd.DataFrame, name: str, file: Path) -> list[bytes]:
    """Each row's per-view alignments as float32 little-endian bytes."""
    import pyarrow as pa

    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or not (
            pa.types.is_floating(column.type.value_type)):
        raise ClipmemError(f"{file}: column {name} should hold lists of floats (found {column.type})")
    offsets = column.offsets.to_numpy()
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    values = column.flatten().to_numpy(zero_copy_only=False).astype("<f4")
    nan_rows = np.zeros(len(lengths), dtype=bool)
    bad_values = ~np.isfinite(values)
    if bad_values.any():
        nan_rows[np.searchsorted(offsets, np.flatnonzero(bad_values), side="right") - 1] = True
    bad = (lengths == 0) | np.asarray(column.is_null()) | nan_rows
    if bad.any():
        raise ClipmemError(f"{file}: {name} of sample {_first_bad(frame, bad)} should be a non-empty list of "
                           "finite floats")
    # each view's cosine between image and caption
    _check_range(file, frame, name, values, COSINE, offsets)
    data = values.tobytes()
    start = offsets * 4
    return [data[a:b] for a, b in zip(start[:-1].tolist(), start[1:].tolist())]


def _read_embeddings(file: Path, samples: pd.DataFrame, scores: pd.DataFrame,
                     lookup: pd.Index) -> tuple[np.ndarray, dict]:
    if not file.is_file():
        raise ClipmemError(f"{file} is missing")
    try:
        with np.load(file, allow_pickle=False) as npz:
            missing = [k for k in EMBEDDING_ARRAYS if k not in npz.files]
            if missing:
                raise ClipmemError(f"{file} lacks array(s) {', '.join(missing)}")
            arrays = {k: npz[k] for k in EMBEDDING_ARRAYS}
    except ClipmemError:
        raise
    except Exception as exc:
        raise ClipmemError(f"{file} cannot be read as a NumPy .npz archive ({type(exc).__name__}: {exc})") from None
    ids = arrays["sample_id"].astype(object)
    n = len(ids)
    matrices = {}
    for key in ("f_image", "f_text", "g_image", "g_text"):
        m = arrays[key]
        if m.ndim != 2 or m.shape[0] != n or m.shape[1] < 2 or m.shape[1] != arrays["f_image"].shape[1]:
            raise ClipmemError(f"{file}: array {key} has shape {m.shape}; expected ({n}, D) with the same D >= 2 "
                               "for all four arrays")
        m = m.astype(np.float32, copy=False)
        if not np.isfinite(m).all():
            raise ClipmemError(f"{file}: array {key} holds NaN or infinite values")
        matrices[key] = m
    position = lookup.get_indexer(ids)
    if (position < 0).any():
        raise ClipmemError(f"{file}: sample {ids[position < 0][0]} is not in samples.parquet")
    if _duplicate(position).any():
        raise ClipmemError(f"{file}: sample_id {ids[_duplicate(position)][0]} appears more than once")
    embedded = np.zeros(len(samples), dtype=bool)
    embedded[position] = True
    lacking = ~embedded[scores["pair_index"].to_numpy()]
    if lacking.any():
        raise ClipmemError(f"{file} has no embeddings for scored sample {_first_bad(scores, lacking)}")
    return samples["pair_index"].to_numpy()[position], matrices
