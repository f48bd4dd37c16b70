"""Sample: one pair in full — image, captions, the with-versus-without comparison, what each model retrieves."""

from __future__ import annotations

import re

import numpy as np
import streamlit as st

from clipmem.frontend import api, charts, trajectory, ui
from clipmem.frontend.client import BackendError
from clipmem.frontend.state import Q_SCORE, ViewFilter, format_probability
from clipmem.scoring.columns import REASON_LABELS

# the API's rule for user tags (it checks it too; this explains a refusal before asking)
TAG_RULE = re.compile(r"^[A-Za-z0-9_.:-][A-Za-z0-9_. :-]{0,63}$")
IMAGE_PX = 384
NEIGHBOUR_PX = 96
NEIGHBOURS = 8
EVIDENCE_PX = 160
EVIDENCE_COLUMNS = 6
CAPTION_CHARS = 60
# what each reason means for this pair, in one plain line (the rules are in docs/why.md)
REASON_WORDS = {
    "miscaptioned": "Under the model that never saw it, the image fits its neighbours' captions better than its own, "
                    "more than correctly captioned held-out pairs do: the caption is likely wrong.",
    "atypical_image": "No other image in the run is close to this one: a rare image a model can only learn by heart; "
                      "its caption may well be right.",
    "atypical_caption": "No other caption in the run is close to this one: rare wording or a rare concept, not "
                        "contradicted by the images like it.",
    "duplicate": "A near-identical image, captioned alike, is in the run: memorized because it is seen twice.",
    "typical": "Nothing stands out: image and caption resemble others in the run and agree with them.",
}
SPLIT_WORDS = {"candidate": "S_C · trained into f only", "independent": "S_I · trained into g only",
               "shared": "S_S · trained into both models", "extra": "S_E · held out from both models"}


def against_the_null(run: dict, item: dict, scores: dict) -> None:
    """The pair's A_f − A_g with its interval over the scoring views, drawn over the run's null (the same
    score of S_E pairs, which neither model trained on, in this pair's direction), with its p- and q-value."""
    st.subheader("Memorized beyond the noise of training two models?", anchor=False)
    if Q_SCORE not in scores:
        st.info("This run was scored before significance testing: it has no null distribution, so this pair has no "
                "p- or q-value and no interval. Scoring the run again with this version of clipmem adds them.",
                icon=":material/info:")
        return
    null = ui.fetch_part(api.null, run["name"], what="the run's null distribution")
    if null is None:
        return
    key = item["null_for"]
    values = (null["by_key"].get(key) or {}).get("values") or []
    raw = scores["clipmem_raw"]
    interval = item.get("interval") or {}
    lo, hi = interval.get("lo"), interval.get("hi")
    numbers_col, chart_col = st.columns([1, 2], gap="large")
    with numbers_col:
        st.metric(f"At FDR {run['fdr']:g}", "memorized" if item["memorized"] else "not flagged")
        cells = st.columns(2)
        cells[0].metric("p-value", format_probability(scores.get("clipmem_p")),
                        help="One-sided: the chance that a pair neither model trained on scores at least this "
                             "high. Beyond the null's range a fitted tail gives values below 1/(null pairs + 1).")
        cells[1].metric("q-value", format_probability(scores.get(Q_SCORE)),
                        help="Benjamini–Hochberg over the run's scored pairs: flagged when q ≤ the run's FDR.")
        if lo is not None and hi is not None:
            st.markdown(f"A_f − A_g = **{raw:.4f}**, 95% interval over the scoring views "
                        f"**{lo:.4f} to {hi:.4f}**")
    with chart_col:
        if values:
            st.plotly_chart(charts.null_histogram(values, raw, lo, hi, "A_f − A_g"), key="null_chart")
            st.caption(f"Grey: A_f − A_g of the run's {len(values):,} held-out S_E pairs, which neither model "
                       f"trained on, scored the same way in this pair's direction (null “{key}”). Red: this pair, "
                       "with its 95% interval.")
        else:
            st.caption(f"The run's null has no values for this pair's direction (“{key}”).")


def neighbour_label(n: dict) -> str:
    return f"{n['truth']} · {n['sample_id']}"


def image_neighbours(run_name: str, found: list[dict], without_model: str) -> None:
    """The pair's nearest images under the model that did not train on it, each with its caption and how well that
    caption agrees with this pair's."""
    st.markdown(f"**Nearest images under model {without_model}**, which did not train on this pair")
    if not found:
        st.caption("No other image is embedded in this run.")
        return
    pictures = api.images(run_name, tuple(n["sample_id"] for n in found), EVIDENCE_PX)
    # at least as many columns as the default k, so a few neighbours stay thumbnails
    for cell, n in zip(st.columns(max(len(found), EVIDENCE_COLUMNS)), found):
        with cell:
            shown = pictures.get(n["sample_id"])
            if isinstance(shown, bytes):
                st.image(shown, width="stretch")
            else:
                st.caption(f":material/broken_image: {shown or 'no image'}")
            caption = (n.get("captions") or [""])[0]
            st.markdown(f"“{ui.escape_md(ui.short(caption, CAPTION_CHARS))}”",
                        help="\n\n".join(n.get("captions") or []) or None)
            st.markdown(f"image {n['similarity']:.2f} · caption agrees **{n['agreement']:.2f}**  \n"
                        f"{ui.truth_badge(n['truth'])}")
            st.page_link("views/sample.py", label="Open", icon=":material/open_in_full:",
                         query_params={"run": run_name, "sample": n["sample_id"]}, help=n["sample_id"])
    st.caption("image: cosine between that image and this one; caption agrees: cosine between that pair's caption and "
               "this pair's, both under the model that did not train on this pair. A wrong caption shows as close "
               "images whose captions disagree with it; a rare image has no close image at all.")


def caption_neighbours(found: list[dict], without_model: str) -> None:
    st.markdown(f"**Nearest captions under model {without_model}**")
    if not found:
        st.caption("No other caption is embedded in this run.")
        return
    rows = [{"rank": n["rank"], "caption": (n.get("captions") or [""])[0], "similarity": n["similarity"],
             "image agrees": n["agreement"], "truth": n["truth"], "pair": n["sample_id"]} for n in found]
    st.dataframe(rows, hide_index=True, width="stretch", key="evidence_captions",
                 column_config={"similarity": st.column_config.NumberColumn(format="%.3f", width="small",
                                                                            help="Cosine between that caption and "
                                                                                 "this pair's"),
                                "image agrees": st.column_config.NumberColumn(format="%.3f", width="small",
                                                                              help="Cosine between that pair's "
                                                                                   "image and this pair's image"),
                                "caption": st.column_config.TextColumn(width="large")})


def why_memorized(run_name: str, sample_id: str, with_model: str) -> None:
    """The evidence panel: the pair's reason and miscaption with what they mean, the with-versus-without and
    encoder-swap drops, and its nearest images and captions under the model that did not train on it."""
    st.header("Why is it memorized?", anchor=False)
    evidence = ui.fetch_part(api.evidence, run_name, sample_id, what="the evidence of why it is memorized")
    if evidence is None:
        return
    reason = evidence["reason"]
    if reason is None and not evidence["available"]:
        st.info("This run was scored before clipmem stored the evidence of why a pair is memorized (its reason, "
                "mis-caption score and neighbours); scoring it again with this version adds them.",
                icon=":material/history:")
        return
    without_model = "g" if with_model == "f" else "f"
    if reason is not None:
        st.markdown(f"{ui.reason_badge(reason)} miscaption **{ui.score_text(evidence['miscaption'])}** · "
                    f"{REASON_WORDS.get(reason, '')}")
    st.caption("miscaption is the share of the run's held-out S_E pairs (which neither model trained on) whose "
               "evidence of a wrong caption is weaker than this pair's: 0.5 is an ordinary pair, 0.99 stronger "
               "evidence than 99% of them (docs/why.md). Reasons: " + ", ".join(REASON_LABELS.values()) + ".")
    drops = st.columns(5)
    # labelled apart from the with-versus-without section's metrics below, which show A_f and A_g too
    drops[0].metric(f"A_f · model {with_model}, with it", ui.score_text(evidence["align_f"], 4))
    drops[1].metric(f"A_g · model {without_model}, without it", ui.score_text(evidence["align_g"], 4))
    drops[2].metric("A_f − A_g (raw CLIPMem)", ui.score_text(evidence["clipmem_raw"], 4))
    drops[3].metric("Image-swap drop", ui.score_text(evidence.get("mem_swap_image"), 4),
                    help="How much A_f falls when model f's image tower is replaced by the other model's (mapped "
                         "into f's space): the part of the memorization held by the image tower.")
    drops[4].metric("Text-swap drop", ui.score_text(evidence.get("mem_swap_text"), 4),
                    help="How much A_f falls when the text tower is replaced instead: the part held by the text "
                         "tower. A memorized wrong caption tends to sit in the text tower.")
    signals = st.columns(4)
    signals[0].metric("Nearest other image", ui.score_text(evidence.get("image_neighbour_sim")),
                      help=f"Cosine to the closest other image under model {without_model}; low = an atypical "
                           "image.")
    signals[1].metric("Nearest other caption", ui.score_text(evidence.get("caption_neighbour_sim")),
                      help=f"Cosine to the closest other caption under model {without_model}; low = an atypical "
                           "caption.")
    signals[2].metric("Neighbours' captions agree", ui.score_text(evidence.get("neighbour_agreement")),
                      help="Similarity-weighted mean cosine between the captions of the nearest images and this "
                           "pair's caption; low = the images like this one are described differently.")
    signals[3].metric("Neighbours' captions fit it better by", ui.score_text(evidence.get("neighbour_caption_margin")),
                      help="How much better the nearest images' captions fit this image than its own caption does "
                           "(mean cosines); above 0 = its own caption is the odd one out.")
    if not evidence["available"]:
        st.caption("This run stored no neighbours of its pairs: it was scored before clipmem kept them.")
        return
    image_neighbours(run_name, evidence["image_neighbours"], without_model)
    caption_neighbours(evidence["caption_neighbours"], without_model)


run = ui.pick_run("sample")
run_name = run["name"]
sample_id = st.query_params.get("sample")

if not sample_id:
    st.title("Sample", anchor=False)
    st.info("No pair is chosen. Open one from the Explore grid, or jump to this run's most memorized pair.",
            icon=":material/touch_app:")
    left, right = st.columns(2)
    with left:
        st.page_link("views/explore.py", label="Browse pairs on Explore", icon=":material/grid_view:",
                     query_params=ui.explore_params(run_name))
    if right.button("Open the most memorized pair", icon=":material/trending_up:"):
        top = ui.fetch(api.samples, ViewFilter(run=run_name), None)
        if top["items"]:
            st.query_params.from_dict({"run": run_name, "sample": top["items"][0]["sample_id"]})
            ui.remember_params()
            st.rerun()
        st.warning("This run has no scored pairs.")
    st.stop()

item = ui.fetch(api.sample, run_name, sample_id)
scores = item.get("scores")
with_model = item.get("seen_by")

st.page_link("views/explore.py", label="Back to Explore", icon=":material/arrow_back:",
             query_params=ui.explore_params(run_name))
st.title(f"Sample {item['sample_id']}", anchor=False)
header = [ui.truth_badge(item["truth"]), f"split **{item['split']}** ({SPLIT_WORDS.get(item['split'], '')})",
          f"run **{ui.escape_md(run_name)}**"]
if scores:
    header.append(f"CLIPMem **{ui.score_text(scores['clipmem'])}**")
    flag = ui.memorized_badge(item.get("memorized"), scores.get(Q_SCORE))
    if flag:
        header.append(flag)
st.markdown(" · ".join(header))
base_text = ui.training_base_text(run.get("base"))
if base_text:
    st.caption(base_text)


# ---------------------------------------------------------------- image, captions, tags
image_col, text_col = st.columns([2, 3], gap="large")
with image_col:
    picture = ui.fetch_part(api.image, run_name, sample_id, IMAGE_PX, what="the image")
    if picture is not None:
        st.image(picture, width=IMAGE_PX)
with text_col:
    st.subheader("Captions", anchor=False)
    st.markdown("\n".join(f"{i}. {ui.escape_md(caption)}" for i, caption in enumerate(item["captions"], start=1)))

    st.subheader("User tags", anchor=False)
    tags = item.get("tags") or []
    writable = ui.can_write()
    if tags and not writable:
        st.markdown(ui.user_tag_badges(tags))
        st.caption("Tagging pairs needs the write token: sign out and sign in with it.")
    elif tags:
        st.caption("Click a tag to remove it from this pair.")
        for tag, column in zip(tags, st.columns(min(len(tags), 4))):
            if column.button(tag, icon=":material/close:", key=f"untag_{tag}", help=f"Remove “{tag}” from this pair"):
                try:
                    api.remove_tag(run_name, sample_id, tag)
                except BackendError as err:
                    ui.show_backend_error(err)
                else:
                    st.rerun()
    else:
        st.caption("No user tags on this pair yet." + ("" if writable else " Tagging pairs needs the write token."))
    if writable:
        known = [t["tag"] for t in ui.fetch_part(api.user_tags, run_name, what="the run's user tags") or []]
        with st.form("add_tag", clear_on_submit=True, border=False):
            new_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
            new_tag = new_col.text_input("Add a tag", placeholder="e.g. wrong-caption, private, keep",
                                         help="Letters, digits, spaces and _ . : - ; up to 64 characters. Tags in "
                                              "this run: " + (", ".join(known) or "none yet"))
            added = button_col.form_submit_button("Add tag", icon=":material/add:")
        new_tag = new_tag.strip()
        if added and new_tag and not TAG_RULE.match(new_tag):
            st.error(f"“{new_tag}” is not a valid tag: use 1–64 letters, digits, spaces and _ . : - (not starting "
                     "with a space).", icon=":material/error:")
        elif added and new_tag:
            try:
                api.add_tag(run_name, sample_id, new_tag)
            except BackendError as err:
                ui.show_backend_error(err)
            else:
                st.rerun()

if scores:
    why_memorized(run_name, sample_id, with_model)

# ---------------------------------------------------------------- with versus without
st.header("With versus without this pair", anchor=False)
if not scores:
    st.info(f"This pair is in {SPLIT_WORDS.get(item['split'], item['split'])}, so there is no model trained "
            "without it to compare with: only S_C and S_I pairs are scored.", icon=":material/info:")
else:
    without_model = "g" if with_model == "f" else "f"
    st.caption(f"Model {with_model} was trained with this pair and model {without_model} without it; every other "
               "training pair, the initialisation and the scoring views are the same. CLIPMem is how much better "
               "the model trained with the pair aligns its image and caption (A_f − A_g), scaled over the run.")
    metrics = st.columns(4)
    metrics[0].metric("A_f · trained with it", ui.score_text(item["align_f"], 4))
    metrics[1].metric("A_g · trained without it", ui.score_text(item["align_g"], 4))
    metrics[2].metric("A_f − A_g", ui.score_text(scores["clipmem_raw"], 4))
    metrics[3].metric("CLIPMem", ui.score_text(scores["clipmem"]))
    against_the_null(run, item, scores)

    views_col, dist_col = st.columns(2, gap="large")
    with views_col:
        st.markdown("**Alignment in each scoring view**")
        if item.get("views_f") and item.get("views_g"):
            st.plotly_chart(charts.views_chart(item["views_f"], item["views_g"]), key="views_chart")
            st.caption("Each view is one augmentation of the image with one of its captions, the same for both "
                       "models.")
        else:
            st.caption("This run stored no per-view alignments.")
    with dist_col:
        names = [n for n in run["score_names"] if n in scores]
        dist_score = st.selectbox("Where this pair sits in the run", names, index=names.index("clipmem"),
                                  key="dist_score")
        hist = ui.fetch_part(api.histogram, run_name, dist_score, 50, True, what="the run's distribution")
        value = scores.get(dist_score)
        if hist is not None and value is not None:
            counts = np.asarray(hist["counts"])
            edges = np.asarray(hist["edges"])
            below = counts[edges[1:] <= value].sum() + 0.5 * counts[(edges[:-1] <= value) & (edges[1:] > value)].sum()
            share = below / max(counts.sum(), 1)
            st.plotly_chart(charts.truth_histogram(hist["edges"], hist["by_truth"] or {"all": hist["counts"]},
                                                   dist_score, marker=value, marker_label=f"this pair {value:.3f}"),
                            key="dist_chart")
            st.caption(f"{dist_score} = {value:.4f}, higher than about {share:.0%} of the run's "
                       f"{hist['matched']:,} scored pairs.")

    summary = ui.fetch_part(api.encoders, run_name, what="the run's layer curves")
    if summary is not None and sample_id in summary["curve_sample_ids"]:
        curves = ui.fetch_part(api.layer_curve, run_name, sample_id, what="this pair's layer curve")
        if curves is not None:
            curve_col, _ = st.columns(2, gap="large")
            with curve_col:
                st.markdown("**Memorization per layer of each tower**")
                st.plotly_chart(charts.pair_layer_curves(curves, summary["layers"], "this pair against the run's "
                                                                                   "mean"), key="pair_curve_chart")

    with st.expander("Every score of this pair"):
        st.dataframe({"score": list(scores), "value": list(scores.values())}, hide_index=True,
                     column_config={"value": st.column_config.NumberColumn(format="%.5f")})

    trajectory.pair_section(run_name, sample_id)

# ---------------------------------------------------------------- retrieval
st.header("What each model retrieves", anchor=False)
if not item.get("has_embedding"):
    st.info("This pair has no embeddings (only scored and S_E pairs are embedded), so there is nothing to "
            "retrieve.", icon=":material/info:")
    st.stop()
st.caption("The captions nearest to this image and the images nearest to its first caption, among the run's "
           "embedded pairs, in each model's own space. A memorized pair finds itself under the model trained "
           "with it more readily than under the other.")
nearby = ui.fetch_part(api.neighbours, run_name, sample_id, NEIGHBOURS, what="the nearest neighbours")
if nearby is None:
    st.stop()
order = [with_model, "g" if with_model == "f" else "f"] if with_model else ["f", "g"]
for column, model in zip(st.columns(2, gap="large"), order):
    if with_model:
        role = "trained with this pair" if model == with_model else "trained without it"
    else:
        role = "trained with it" if item["split"] == "shared" else "never saw it"
    lists = nearby[model]
    with column:
        st.subheader(f"Model {model} · {role}", anchor=False)
        st.markdown("**Captions nearest to the image**")
        rows = [{"similarity": n["similarity"], "caption": n["caption"],
                 "whose": "this pair" if n["same_pair"] else n["truth"]}
                for n in lists["captions_near_image"]]
        st.dataframe(rows, hide_index=True, width="stretch", key=f"captions_{model}",
                     column_config={"similarity": st.column_config.NumberColumn(format="%.3f", width="small"),
                                    "caption": st.column_config.TextColumn(width="large"),
                                    "whose": st.column_config.TextColumn(width="small",
                                                                         help="The truth tag of the pair the "
                                                                              "caption belongs to")})
        st.markdown("**Images nearest to the caption**")
        found = lists["images_near_caption"]
        pictures = api.images(run_name, tuple(n["sample_id"] for n in found), NEIGHBOUR_PX)
        for start in range(0, len(found), 4):
            for cell, n in zip(st.columns(4), found[start:start + 4]):
                with cell:
                    shown = pictures.get(n["sample_id"])
                    if isinstance(shown, bytes):
                        st.image(shown, width="stretch")
                    label = "this pair" if n["same_pair"] else n["truth"]
                    st.page_link("views/sample.py", label=f"{label} · {n['similarity']:.3f}",
                                 query_params={"run": run_name, "sample": n["sample_id"]},
                                 help=n["caption"])
