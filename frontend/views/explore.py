"""Explore: the run's pairs as a grid of thumbnails, filtered and sorted from the sidebar."""

from __future__ import annotations

import streamlit as st

from clipmem.frontend import api, ui
from clipmem.frontend.state import MISCAPTION_SCORE, Paging, ViewFilter

COLUMNS = 6
THUMB_PX = 160
CAPTION_CHARS = 70


def pager(flt: ViewFilter, paging: Paging, page: dict, where: str) -> None:
    first = (paging.page_number - 1) * flt.size + 1
    last = first + len(page["items"]) - 1
    left, middle, right = st.columns([1, 3, 1], vertical_alignment="center")
    if left.button("Previous page", icon=":material/chevron_left:", key=f"prev_{where}",
                   disabled=paging.cursor is None, width="stretch"):
        ui.set_params(flt, paging.previous())
        st.rerun()
    middle.markdown(f"page {paging.page_number} · pairs {first:,}–{last:,} of {page['total']:,}",
                    text_alignment="center")
    if right.button("Next page", icon=":material/chevron_right:", icon_position="right", key=f"next_{where}",
                    disabled=not page.get("next_cursor"), width="stretch"):
        ui.set_params(flt, paging.next(page["next_cursor"]))
        st.rerun()


def tile(run: dict, flt: ViewFilter, item: dict, image: bytes | str | None) -> None:
    with st.container(border=True, height="stretch"):
        if isinstance(image, bytes):
            st.image(image, width="stretch")
        else:
            st.caption(f":material/broken_image: {image or 'no image'}")
        st.markdown(ui.escape_md(ui.short(item["caption"], CAPTION_CHARS)),
                    help=item["caption"] if len(item["caption"]) > CAPTION_CHARS else None)
        line = f"CLIPMem **{ui.score_text(item['scores']['clipmem'])}** {ui.truth_badge(item['truth'])}"
        flag = ui.memorized_badge(item.get("memorized"), item["scores"].get("clipmem_q"))
        if flag:
            line += f"  \n{flag}"
        reason = ui.reason_badge(item.get("reason"))
        if reason:
            line += f"  \n{reason} miscaption\u00a0{ui.score_text(item.get('miscaption'), 2)}"
        if flt.sort not in ("clipmem", MISCAPTION_SCORE):
            line += f"  \n`{flt.sort}` {ui.score_text(item['scores'].get(flt.sort))}"
        if item.get("tags"):
            line += "  \n" + ui.user_tag_badges(item["tags"])
        st.markdown(line)
        st.page_link("views/sample.py", label="Open", icon=":material/open_in_full:",
                     query_params={"run": run["name"], "sample": item["sample_id"]})


def grid(run: dict, flt: ViewFilter) -> None:
    paging = Paging.from_params(st.query_params)
    page = ui.fetch_part(api.samples, flt, paging.cursor, what="the pairs")
    if page is None:
        return
    order = "highest" if flt.order == "desc" else "lowest"
    ui.likely_miscaptioned_button(run, flt)
    st.markdown(f"**{page['total']:,}** of {run['n_scored']:,} scored pairs match · {flt.describe()} · "
                f"sorted by `{flt.sort}`, {order} first")
    items = page["items"]
    if not items:
        if paging.cursor is not None:
            st.info("This page is past the end of the list: the matching pairs changed since the link was made.",
                    icon=":material/last_page:")
            if st.button("Back to the first page"):
                ui.set_params(flt)
                st.rerun()
        else:
            st.info("No pair matches this filter. Widen the score range or clear a filter in the sidebar.",
                    icon=":material/filter_alt_off:")
        return
    pager(flt, paging, page, "top")
    images = api.images(run["name"], tuple(item["sample_id"] for item in items), THUMB_PX)
    for start in range(0, len(items), COLUMNS):
        for column, item in zip(st.columns(COLUMNS), items[start:start + COLUMNS]):
            with column:
                tile(run, flt, item, images.get(item["sample_id"]))
    pager(flt, paging, page, "bottom")


run = ui.pick_run("explore", draw=False)
flt = ui.view_filter(run)
st.title("Explore", anchor=False)
grid(run, flt)
ui.pause_for_first_paint()  # the grid first, then the sidebar
ui.run_picker("explore")
ui.filter_sidebar(run, flt)
