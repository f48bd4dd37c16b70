"""CLIPMem over training time (issue 19, docs/trajectory.md) on the dashboard: a pair's curves on the Sample page, and
on the Runs page the mean per truth tag over epochs and the training-dynamics map, linked to the pairs."""

from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from clipmem.frontend import api, charts, ui

MAP_POINTS = 5000
LISTED = 50
UNTRACKED = ("This run was trained without `--track-epochs`, so it has no scores over training time; train it with "
             "`--track-epochs 5,10,20,40` (or `every:K`) to see when each pair is memorized.")


def _epoch_text(value: float | None) -> str:
    return "never" if value is None or pd.isna(value) else f"{int(value)}"


def pair_section(run_name: str, sample_id: str) -> None:
    """A scored pair's A_f, A_g and A_f − A_g after each tracked epoch against the null's 95th percentile."""
    st.header("Over training time", anchor=False)
    body = ui.fetch_part(api.trajectory, run_name, sample_id, what="the pair's trajectory")
    if body is None:
        return
    if not body["available"]:
        st.caption(UNTRACKED)
        return
    metrics = st.columns(3)
    metrics[0].metric("Memorized from epoch", _epoch_text(body["mem_epoch"]),
                      help="The first tracked epoch at which A_f − A_g exceeds the null's 95th percentile.")
    metrics[1].metric("Area under A_f − A_g", ui.score_text(body["mem_auc"], 4),
                      help="Over the fraction of training done, from 0 at the start (f and g start equal).")
    metrics[2].metric("Variability", ui.score_text(body["mem_variability"], 4),
                      help="Standard deviation of A_f − A_g over the tracked epochs.")
    st.plotly_chart(charts.pair_trajectory(body["points"]), key="trajectory_chart")
    st.caption("f and g scored after each tracked epoch with the run's final scoring views; the last epoch's values "
               "are the pair's scores above. Dashed: the 95th percentile of A_f − A_g over the S_E pairs neither "
               "model trained on, at the same epoch.")


def run_section(run_name: str) -> None:
    """Mean raw CLIPMem per truth tag over the tracked epochs, and the training-dynamics map."""
    st.header(f"Over training time · {run_name}", anchor=False)
    summary = ui.fetch_part(api.run_trajectory, run_name, what="the run's trajectory")
    if summary is None:
        return
    if not summary["available"]:
        st.info(UNTRACKED, icon=":material/info:")
        return
    st.plotly_chart(charts.tag_trajectories(summary["curves"], summary["null"]), key="tag_trajectories_chart")
    st.caption(f"Mean A_f − A_g per truth tag after each tracked epoch ({', '.join(map(str, summary['epochs']))}), "
               "with 95% bootstrap intervals over pairs; dashed: the null's 95th percentile (mean over the two "
               "directions), the threshold a pair crosses when it is memorized.")
    dynamics_map(run_name)


def dynamics_map(run_name: str) -> None:
    st.subheader("Training-dynamics map", anchor=False)
    frame = ui.fetch_part(api.dynamics, run_name, MAP_POINTS, what="the training-dynamics map")
    if frame is None or frame.empty:
        return
    event = st.plotly_chart(charts.dynamics_map(frame), key="dynamics_map", on_select="rerun",
                            selection_mode=("box", "lasso"))
    total = frame.attrs.get("total", len(frame))
    st.caption("One point per scored pair (Data Maps, Swayamdipta et al. 2020): its mean A_f − A_g over the tracked "
               "epochs against how much it moved. High and steady: memorized early and kept; high and variable: "
               f"memorized late. {len(frame):,} points" + (f", a uniform sample of the run's {total:,} pairs"
                                                             if total > len(frame) else "")
               + ". Draw a box or lasso to list those pairs.")
    selected: list[str] = []
    for point in (event.selection.points if event else None) or []:
        custom = point.get("customdata")
        if custom and str(custom[0]) not in selected:
            selected.append(str(custom[0]))
    if not selected:
        return
    chosen = frame.set_index("sample_id").loc[selected[:LISTED]].reset_index()
    chosen["memorized from"] = [_epoch_text(v) for v in chosen["mem_epoch"]]
    chosen["open"] = ["sample?" + urlencode({"run": run_name, "sample": sid}) for sid in chosen["sample_id"]]
    st.subheader(f"{len(selected):,} selected pairs", anchor=False)
    if len(selected) > LISTED:
        st.caption(f"The first {LISTED} of them.")
    st.dataframe(chosen[["sample_id", "truth", "mean_raw", "variability", "memorized from", "open"]]
                 .sort_values("mean_raw", ascending=False), hide_index=True, width="stretch",
                 key="dynamics_selected",
                 column_config={"mean_raw": st.column_config.NumberColumn("mean A_f − A_g", format="%.4f"),
                                "variability": st.column_config.NumberColumn(format="%.4f"),
                                "open": st.column_config.LinkColumn("open", display_text="open pair")})
