"""Runs: every ingested run with utility and scores, the memorization/utility trade-off, experiments (mitigation
grids over seeds, with the figures of scoring.experiment_report), detection quality, and a comparison of two
runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from clipmem.frontend import api, charts, trajectory, ui
from clipmem.frontend.client import BackendError
from clipmem.frontend.state import Q_SCORE
from clipmem.scoring.columns import REASON_LABELS, REASONS
from clipmem.scoring.experiment_report import KNOB_LABELS, scratch_comparison, towers_verdict
from clipmem.scoring.experiment_report import figures as experiment_figures

ROC_BINS = 200
EXPERIMENT_PICKER = "experiment_picker"
SUMMARY_COLUMNS = ["grid", "method", "value", "metric", "mean", "std", "n"]
EXPERIMENT_INT_COLUMNS = ("seed", "captions_per_image", "removal_count", "renderings", "common_pairs")
KINDS = {"faulty": "faulty pairs (every truth tag but clean)", "swapped": "swapped captions"}


def reason_table(confusion: dict) -> pd.DataFrame:
    """The confusion table as the page shows it: one row per reason (every one, in REASONS' order, by label), one
    column per truth tag of the run (clean first), and the row totals."""
    cells = pd.DataFrame(confusion["counts"], columns=["reason", "truth", "pairs"])
    table = cells.pivot_table(index="reason", columns="truth", values="pairs", aggfunc="sum", fill_value=0)
    table = table.reindex(index=list(REASONS), columns=sorted(confusion["truths"], key=lambda t: (t != "clean", t)),
                          fill_value=0)
    table["all"] = table.sum(axis=1)
    table.index = [REASON_LABELS[r] for r in table.index]
    table.index.name = "reason"
    table.columns.name = None
    return table.astype(int)


def interval_columns(intervals: dict | None) -> dict[str, str]:
    """The 95% interval of each mean that has one, as text beside it."""
    return {f"{name} 95% interval": f"{i['lo']:.4f} to {i['hi']:.4f}" for name, i in (intervals or {}).items()
            if i.get("lo") is not None and i.get("hi") is not None}


run = ui.pick_run("runs")
run_name = run["name"]
summaries = ui.fetch(api.runs)
details = {s["name"]: (run if s["name"] == run_name else ui.fetch_part(api.run, s["name"], what=f"run {s['name']}"))
           for s in summaries}

st.title("Runs", anchor=False)

# ---------------------------------------------------------------- the table
rows = []
for s in summaries:
    detail = details.get(s["name"]) or {}
    means = (detail.get("score_summary") or {}).get("means", {})
    row = {"run": s["name"], "dataset": s["dataset_kind"], "model": s["model"], "scored pairs": s["n_scored"],
           "mean CLIPMem": s["mean_clipmem"], "mean contrastive": means.get("clipmem_contrastive")}
    flagged = next((r for r in ui.flagged_rows(detail) or [] if r["truth"] == "all"), None)
    row["flagged memorized"] = None if flagged is None else flagged["flagged"]
    base = s.get("base") or {}
    row["base"] = base.get("file_name") or "scratch"
    row["locked"] = ", ".join(t for t in ("image", "text") if base.get(f"lock_{t}")) or "none"
    for metric, value in ((detail.get("utility") or {}).get("f") or {}).items():
        row[metric] = value
    if any(r.get("experiment") for r in summaries):
        row["experiment"] = s.get("experiment")
    row["ingested"] = pd.to_datetime(s["created_at"]).strftime("%Y-%m-%d %H:%M")
    rows.append(row)
table = pd.DataFrame(rows)
utility_metrics = sorted({m for d in details.values() if d for m in (d.get("utility") or {}).get("f", {})})
st.caption(f"{len(summaries)} run{'s' if len(summaries) != 1 else ''} in the backend. Utility columns are model f "
           "(trained with the candidates) on the held-out S_E: image→text and text→image recall@k, zero-shot "
           "accuracy.")
st.dataframe(table, hide_index=True, width="stretch", key="runs_table",
             column_config={c: st.column_config.NumberColumn(format="%.3f")
                            for c in ["mean CLIPMem", "mean contrastive", *utility_metrics]})
base_text = ui.training_base_text(run.get("base"))
if base_text:
    st.caption(f"**{ui.escape_md(run_name)}**: {base_text}.")

# ---------------------------------------------------------------- trade-off
st.header("Memorization against utility", anchor=False)
st.caption("One point per run. A mitigation that works (more captions per image, noise on the text embeddings, "
           "removing the most memorized pairs) moves a run down and to the right.")
if utility_metrics:
    default = utility_metrics.index("i2t_r1") if "i2t_r1" in utility_metrics else 0
    metric = st.selectbox("Utility", utility_metrics, index=default, key="tradeoff_metric")
    points = table.rename(columns={"mean CLIPMem": "mean_clipmem", "run": "name"}).dropna(subset=[metric])
    st.plotly_chart(charts.tradeoff_scatter(points, metric), key="tradeoff_chart")
else:
    st.info("No run reports utility metrics (metrics.json has no f section).", icon=":material/info:")

# ---------------------------------------------------------------- experiments
experiments = ui.fetch_part(api.experiments, what="the experiments") or []
if experiments:
    st.header("Experiments", anchor=False)
    by_name = {e["name"]: e for e in experiments}
    wanted = st.query_params.get("experiment")
    if wanted is not None and wanted not in by_name:
        st.warning(f"The backend has no experiment named “{wanted}”; showing another.", icon=":material/search_off:")
    current = wanted if wanted in by_name else run.get("experiment") if run.get("experiment") in by_name \
        else next(iter(by_name))
    if st.session_state.get(EXPERIMENT_PICKER) != current:
        st.session_state[EXPERIMENT_PICKER] = current
    if st.query_params.get("experiment") != current:
        st.query_params["experiment"] = current
        ui.remember_params()

    def _on_experiment() -> None:
        st.query_params["experiment"] = st.session_state[EXPERIMENT_PICKER]
        ui.remember_params()

    def _describe(name: str) -> str:
        e = by_name[name]
        return f"{name} · {e['runs']} run{'s' if e['runs'] != 1 else ''}, {len(e['seeds'])} seed" + \
            ("s" if len(e["seeds"]) != 1 else "")

    st.selectbox("Experiment", list(by_name), key=EXPERIMENT_PICKER, on_change=_on_experiment,
                 format_func=_describe, help="Runs made by `clipmem experiment`: the same split and seeds, one "
                                             "mitigation setting each.")
    detail = ui.fetch_part(api.experiment, current, what=f"experiment {current}")
    if detail is not None:
        summary = pd.DataFrame(detail["summary"], columns=SUMMARY_COLUMNS)
        grid_figures = experiment_figures(summary)
        st.caption("Mean raw CLIPMem and utility on S_E (averaged over f and g) against each grid's knob, "
                   "± one standard deviation over seeds. The removal grid's CLIPMem is the mean over the pairs "
                   "every run of the seed scores (a run scores none of the pairs it removed, so its own mean "
                   "would drop by construction). The baseline (1 caption per image, σ = 0, nothing removed, 1 "
                   "rendering per scene, both towers trained from the experiment's starting weights) is a point of "
                   "every grid. The towers and from-scratch grids (experiments with --pretrained) add, per truth "
                   "tag, the mean raw CLIPMem, and CLIPMem's swapped-pair AUROC.")
        if grid_figures:
            for tab, (grid, figure) in zip(st.tabs([f"{g}: {KNOB_LABELS[g]}" for g in grid_figures]),
                                           grid_figures.items()):
                with tab:
                    st.plotly_chart(figure, key=f"experiment_{grid}_chart")
        else:
            st.info("No grid of this experiment has two settings yet: each figure needs the baseline and at least "
                    "one other setting.", icon=":material/info:")
        # the towers verdict and the scratch comparison, from the same rows and functions as the report
        for line in towers_verdict(detail["runs"]) + [scratch_comparison(detail["runs"])]:
            if line:
                st.markdown(line)
        per_run = pd.DataFrame(detail["runs"]).drop(columns=["run_id", "experiment"], errors="ignore")
        # whole numbers stay whole where some runs have none (common_pairs outside the removal grid)
        per_run = per_run.astype({c: "Int64" for c in EXPERIMENT_INT_COLUMNS if c in per_run.columns})
        numbers = [c for c in per_run.columns if c not in EXPERIMENT_INT_COLUMNS and c not in ("run", "removal_method")
                   and pd.api.types.is_float_dtype(per_run[c])]
        st.dataframe(per_run, hide_index=True, width="stretch", key="experiment_runs_table",
                     column_config={c: st.column_config.NumberColumn(format="%.4f") for c in numbers})

# ---------------------------------------------------------------- pairs flagged memorized in the chosen run
st.header(f"Pairs flagged memorized · {run_name}", anchor=False)
flagged_rows = ui.flagged_rows(run)
if flagged_rows is None:
    st.info("This run was scored before significance testing: its pairs have no p- or q-values, so none is "
            "flagged. Scoring it again with this version of clipmem tests every pair against the run's null.",
            icon=":material/info:")
else:
    table_col, chart_col = st.columns([2, 3], gap="large")
    with table_col:
        st.dataframe(pd.DataFrame(flagged_rows, columns=["truth", "pairs", "flagged", "fraction"]), hide_index=True,
                     width="stretch", key="flagged_table",
                     column_config={"fraction": st.column_config.NumberColumn(format="percent")})
        st.caption("A pair is flagged when its q-value (Benjamini–Hochberg over the run's scored pairs) is at most "
                   f"the run's FDR of {run['fdr']:g}: its A_f − A_g is beyond what training two models gives pairs "
                   "neither trained on.")
    with chart_col:
        st.plotly_chart(charts.flagged_bars([r for r in flagged_rows if r["truth"] != "all"]), key="flagged_chart")

# ---------------------------------------------------------------- why pairs are memorized, against the truth
st.header(f"Why memorized, against the truth · {run_name}", anchor=False)
if not ui.has_reasons(run):
    st.info("This run was scored before the evidence of why a pair is memorized existed: its pairs have no reason. "
            "Scoring it again with this version of clipmem adds them.", icon=":material/info:")
else:
    significant = Q_SCORE in run["score_names"]
    memorized_only = st.toggle("Only memorized pairs", key="reasons_memorized_only", disabled=not significant,
                               help=f"Only the pairs the run flagged memorized (q ≤ its FDR of {run['fdr']:g})."
                               if significant else "This run was scored before significance testing: no pair is "
                                                   "flagged memorized.")
    confusion = ui.fetch_part(api.reasons, run_name, memorized_only and significant, what="the reasons")
    if confusion is not None:
        table = reason_table(confusion)
        st.dataframe(table, width="stretch", key="reasons_table")
        truths = confusion["truths"]
        which = "pairs flagged memorized" if memorized_only and significant else "scored pairs"
        if len(truths) < 2:
            st.caption(f"The run's {which} per reason. Its data has no truth tags besides "
                       f"{', '.join(truths) or 'none'}, so the reasons cannot be checked against the truth; runs on "
                       "the built-in data or with `--inject` have them.")
        else:
            st.caption(f"The run's {which}: one row per reason (docs/why.md), one column per truth tag of the data. "
                       "A good reason puts swapped, wrong_attribute and vague pairs under mis-captioned, atypical "
                       "ones under atypical image or caption.")

# ---------------------------------------------------------------- CLIPMem over training time in the chosen run
trajectory.run_section(run_name)

# ---------------------------------------------------------------- detection quality of the chosen run
st.header(f"Detection quality · {run_name}", anchor=False)
detection = ui.fetch_part(api.detection, run_name, what="detection quality")
if detection is not None:
    kinds = [k for k in KINDS if detection.get(k)]
    if not kinds:
        st.info("This run's truth tags do not have both faulty and clean pairs, so detection quality cannot be "
                "measured. Runs on the built-in synthetic data (or with `--inject`) have them.",
                icon=":material/label_off:")
    else:
        kind = st.radio("Find", kinds, horizontal=True, key="detection_kind", format_func=KINDS.get)
        found = detection[kind]
        frame = pd.DataFrame(found).rename(columns={"auroc": "AUROC", "average_precision": "avg precision",
                                                    "precision_at_k": "precision@k"})
        table_col, roc_col = st.columns([2, 3], gap="large")
        with table_col:
            st.dataframe(frame[["score", "AUROC", "avg precision", "precision@k"]], hide_index=True,
                         width="stretch", key="detection_table",
                         column_config={c: st.column_config.NumberColumn(format="%.3f")
                                        for c in ("AUROC", "avg precision", "precision@k")})
            st.caption(f"k = {found[0]['k']:,}: the number of {KINDS[kind]} among the {found[0]['pairs']:,} scored "
                       "pairs. The CLIPScore baselines are 1 − cosine, so for every score higher means more "
                       "suspicious.")
        with roc_col:
            curves = {}
            for row in found:
                try:
                    hist = api.histogram(run_name, row["score"], ROC_BINS, True)
                except BackendError as err:
                    ui.show_backend_error(err)
                    break
                zero = [0] * (len(hist["edges"]) - 1)
                positive_tags = [t for t in hist["by_truth"] if (t != "clean" if kind == "faulty" else t == "swapped")]
                positive = [sum(col) for col in zip(zero, *(hist["by_truth"][t] for t in positive_tags))]
                negative = [sum(col) for col in zip(zero, *(hist["by_truth"][t] for t in hist["by_truth"]
                                                            if t not in positive_tags))]
                fpr, tpr = charts.roc_from_histograms(positive, negative)
                curves[row["score"]] = (fpr, tpr, row["auroc"])
            if curves:
                st.plotly_chart(charts.roc_chart(curves), key="roc_chart")
                st.caption(f"ROC curves from each score's distribution in {ROC_BINS} bins; AUROC in brackets is "
                           "exact.")

by_truth = run["score_summary"]["by_truth"]
with st.expander(f"Mean of every score by truth tag · {run_name}"):
    st.dataframe(pd.DataFrame([{"truth": b["truth"], "pairs": b["pairs"], **b["means"],
                                **interval_columns(b.get("intervals"))} for b in by_truth]),
                 hide_index=True, width="stretch", key="means_by_truth",
                 column_config={name: st.column_config.NumberColumn(format="%.4f") for name in run["score_names"]})
    if not any(b.get("intervals") for b in by_truth):
        st.caption("This run was ingested before means carried intervals.")

# ---------------------------------------------------------------- comparison
st.header("Compare two runs", anchor=False)
others = [s["name"] for s in summaries if s["name"] != run_name]
if not others:
    st.caption("Ingest a second run (for example the same data with a mitigation) to compare it with this one.")
else:
    pick_col, score_col, k_col = st.columns([2, 2, 1])
    other = pick_col.selectbox(f"Compare {run_name} with", others, key="compare_with")
    common = [n for n in run["score_names"] if n in ((details.get(other) or {}).get("score_names") or [])]
    score = score_col.selectbox("Score", common or ["clipmem"], key="compare_score")
    k = k_col.number_input("Top k", min_value=1, max_value=100_000, value=100, step=10, key="compare_k")
    result = ui.fetch_part(api.comparison, run_name, other, score, int(k), what="the comparison")
    if result is not None:
        if result["shared_pairs"] == 0:
            st.info(f"{run_name} and {other} have no scored pair in common (same sample id, scored in both), so "
                    "their scores cannot be compared pair by pair.", icon=":material/info:")
        else:
            cols = st.columns(4)
            cols[0].metric("Pairs scored in both", f"{result['shared_pairs']:,}")
            cols[1].metric(f"Mean {score}", ui.score_text(result["mean_a"]),
                           delta=None if result["mean_b"] is None else f"{result['mean_a'] - result['mean_b']:+.3f} "
                                                                      f"vs {other}", delta_color="inverse")
            cols[2].metric("Spearman rank correlation", ui.score_text(result["spearman"]))
            cols[3].metric(f"Top-{result['k']} overlap", f"{result['top_k_overlap']:,}",
                           delta=f"{result['top_k_fraction']:.0%} of k" if result["top_k_fraction"] is not None
                           else None, delta_color="off", delta_arrow="off")
            if result["by_truth"]:
                st.plotly_chart(charts.compare_by_truth(result["by_truth"], run_name, other, score),
                                key="compare_chart")

# ---------------------------------------------------------------- delete
if not ui.can_write():
    st.caption("Deleting a run needs the write token (`CLIPMEM_API_WRITE_TOKEN`): sign out and sign in with it.")
else:
    with st.expander(f"Delete {run_name} from the database"):
        st.markdown(f"Removes run **{ui.escape_md(run_name)}** with its scores, embeddings, maps and user tags from "
                    "the backend's database. The run directory on disk is left alone; `clipmem ingest` loads it "
                    "again.")
        confirm = st.text_input("Type the run's name to confirm", key="delete_confirm")
        if st.button("Delete run", icon=":material/delete:", disabled=confirm != run_name, key="delete_run"):
            try:
                api.delete_run(run_name)
            except BackendError as err:
                ui.show_backend_error(err)
            else:
                st.query_params.clear()
                st.session_state.pop(ui.SAVED_PARAMS, None)
                st.rerun()
