"""The dashboard in a real browser: Debian's Chromium (Playwright) against `clipmem serve` + `clipmem ui`.

Screenshots of every page go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import re
import time
from urllib.parse import unquote

import pandas as pd
import pytest

from tests.frontend.conftest import TINY, probability
from tests.frontend.stack import ARTIFACTS, CHROMIUM, GRID_IMAGE, chromium, dashboard, error_messages, wait_for_app
from tests.prerequisites import skip_or_fail


@pytest.fixture(scope="module", autouse=True)
def _chromium_is_installed():
    """Without Chromium these tests are skipped locally, with the reason, and fail the run under CI."""
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser, or apt-get install -y "
                     "chromium) to run browser tests")


COUNT = re.compile(r"([\d,]+) of ([\d,]+) scored pairs match")


@pytest.fixture(scope="module")
def ui_url(api_url, stack_dir):
    with dashboard(api_url, stack_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1200})
    yield context.new_page()
    context.close()


def settle(page) -> None:
    wait_for_app(page)
    assert not error_messages(page), error_messages(page)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(600)  # let Plotly's transitions finish
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def match_count(page) -> int:
    found = COUNT.search(page.inner_text('[data-testid="stMain"]'))
    assert found, "Explore shows no match count"
    return int(found.group(1).replace(",", ""))


def test_explore_filter_and_open_a_sample(page, ui_url, api, tiny_files):
    page.goto(f"{ui_url}/?run={TINY}")
    page.wait_for_selector(GRID_IMAGE, state="visible", timeout=60_000)
    settle(page)
    assert match_count(page) == 240
    assert page.locator(GRID_IMAGE).count() == 24
    shot(page, "explore")

    # drag the lower end of the score range to the middle of the track, as a user would
    slider = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"]')
    start = slider.locator('input[type="range"]').first
    thumb = start.locator("xpath=../..").bounding_box()
    track = slider.locator('[data-testid="stSliderTickBar"]').bounding_box()
    page.mouse.move(thumb["x"] + thumb["width"] / 2, thumb["y"] + thumb["height"] / 2)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] / 2, thumb["y"] + thumb["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_url(re.compile(r"[?&]lo=0\.\d+"), timeout=30_000)
    settle(page)
    low = float(re.search(r"[?&]lo=([\d.]+)", page.url).group(1))
    assert 0.3 < low < 0.7
    expected = api.get(f"/runs/{TINY}/samples", params={"limit": 1, "clipmem_min": low}).json()["total"]
    assert match_count(page) == expected < 240
    assert start.get_attribute("aria-valuetext") == f"{low:.3f}"
    shot(page, "explore-filtered")

    # open the first pair of the filtered grid
    page.get_by_role("link", name="Open").first.click()
    page.wait_for_url(re.compile(r"/sample\?"), timeout=30_000)
    page.get_by_text("With versus without this pair").wait_for(timeout=60_000)
    page.get_by_text("What each model retrieves").wait_for(timeout=60_000)
    settle(page)
    main = page.inner_text('[data-testid="stMain"]')
    assert "Captions" in main and "A_f · trained with it" in main and "Captions nearest to the image" in main
    assert f"run {TINY}" in main
    # the pair's captions in full and its A_f, as the backend has them
    sample_id = re.search(r"[?&]sample=([^&]+)", page.url).group(1)
    detail = api.get(f"/runs/{TINY}/samples/{unquote(sample_id)}").json()
    assert detail["captions"] and all(caption in main for caption in detail["captions"])
    assert f"{detail['align_f']:.4f}" in main
    # the pair against the run's null: the chart drawn, and its p- and q-value as scores.parquet has them
    pair = tiny_files.scores.set_index("sample_id").loc[unquote(sample_id)]
    null_chart = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="null pairs")
    null_chart.scroll_into_view_if_needed()
    assert null_chart.count() == 1 and null_chart.locator(".barlayer .point").count() > 0
    numbers = page.locator('[data-testid="stMetric"]').all_inner_texts()
    assert any(t.startswith("p-value") and probability(pair["clipmem_p"]) in t for t in numbers), numbers
    assert any(t.startswith("q-value") and probability(pair["clipmem_q"]) in t for t in numbers), numbers
    shot(page, "sample")


@pytest.mark.parametrize("name, heading", [("encoders", "Embedding maps of f and g"),
                                           ("runs", "Detection quality")])
def test_every_other_page_renders(page, ui_url, name, heading):
    page.goto(f"{ui_url}/{name}?run={TINY}")
    page.get_by_text(heading).first.wait_for(timeout=60_000)
    settle(page)
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 2
    shot(page, name)


def test_export_downloads_the_filtered_pairs(page, ui_url, api):
    """Export with the filter 'swapped pairs': the count the user reads and the CSV the user saves hold exactly
    the backend's swapped pairs of the run, in the filter's order."""
    page.goto(f"{ui_url}/export?run={TINY}&truth=swapped")
    page.get_by_text("A training set without them").first.wait_for(timeout=60_000)
    settle(page)
    swapped = api.get(f"/runs/{TINY}/samples", params={"truth": "swapped", "limit": 500}).json()
    total = swapped["total"]
    assert 0 < total < 240 and len(swapped["items"]) == total
    main = page.inner_text('[data-testid="stMain"]')
    assert f"selects {total} of the 240 scored pairs of run {TINY}" in main
    assert f"{total} rows, one per pair" in main
    page.get_by_role("button", name="Prepare the selection CSV").click()
    download_button = page.get_by_role("button", name=f"Download {TINY}-selection.csv")
    download_button.wait_for(timeout=60_000)
    with page.expect_download(timeout=60_000) as info:
        download_button.click()
    saved = pd.read_csv(info.value.path())
    assert saved["sample_id"].tolist() == [item["sample_id"] for item in swapped["items"]]
    assert set(saved["truth"]) == {"swapped"}
    shot(page, "export")


def test_an_unreachable_backend_is_explained_in_the_browser(browser, stack_dir):
    from tests.frontend.stack import free_port

    with dashboard(f"http://127.0.0.1:{free_port()}", stack_dir) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_text("The clipmem backend is not reachable").wait_for(timeout=60_000)
        wait_for_app(page)
        assert "clipmem serve" in page.inner_text('[data-testid="stMain"]')
        assert page.locator('[data-testid="stException"]').count() == 0
        shot(page, "backend-unreachable")
        page.close()


def test_selecting_points_on_a_map_lists_those_pairs(page, ui_url, api):
    page.goto(f"{ui_url}/encoders?run={TINY}")
    page.get_by_text("Embedding maps of f and g").wait_for(timeout=60_000)
    settle(page)
    f_map = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="f · image embeddings")
    f_map.scroll_into_view_if_needed()
    box = f_map.bounding_box()
    # lasso (the maps' default drag mode) around the whole plotting area
    corners = [(0.02, 0.1), (0.85, 0.1), (0.85, 0.97), (0.02, 0.97), (0.02, 0.1)]
    points = [(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy) for fx, fy in corners]
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=10)
    page.mouse.up()
    page.get_by_text(re.compile(r"\d+ selected pairs")).wait_for(timeout=60_000)
    settle(page)
    selected = int(re.search(r"(\d+) selected pairs", page.inner_text('[data-testid="stMain"]')).group(1))
    assert selected > 10
    # the listing under the maps: one row per selected pair (the first 50), highest CLIPMem first
    table = page.locator('[data-testid="stDataFrame"]').filter(has_text="CLIPMem")
    grid = table.locator('[role="grid"]').first
    assert int(grid.get_attribute("aria-rowcount")) == min(selected, 50) + 1  # and the header row
    first = grid.locator('[role="row"]').nth(1).locator('[role="gridcell"]')
    cells = [first.nth(i).inner_text().strip() for i in range(first.count())]
    sample_id = next(cell for cell in cells if api.get(f"/runs/{TINY}/samples/{cell}").status_code == 200)
    top = api.get(f"/runs/{TINY}/samples/{sample_id}").json()
    # its first caption and its CLIPMem (blank for a pair outside the scored splits) as the backend has them
    assert top["captions"][0] in cells, cells
    if top["scores"]:
        assert f"{top['scores']['clipmem']:.3f}" in cells, cells
    else:
        assert not any(re.fullmatch(r"-?\d+\.\d{3}", cell) for cell in cells), cells
    shot(page, "encoders-selection")


def sign_in_in_the_browser(page, token: str) -> None:
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_without_a_token_a_visitor_sees_no_data_and_cannot_delete(browser, locked_backend, stack_dir):
    """The backend has a read and a write token, and the dashboard's environment holds both (as the compose
    file once handed it the token): a fresh browser sees no pair and no way to delete; the read token shows
    the data but no delete; only the write token deletes a run."""
    from tests.frontend.conftest import KEPT, READ_TOKEN, WRITE_TOKEN

    doomed = locked_backend.add_run("doomed-browser", seed=22)
    held = {"CLIPMEM_API_TOKEN": READ_TOKEN, "CLIPMEM_API_WRITE_TOKEN": WRITE_TOKEN}
    with dashboard(locked_backend.url, stack_dir, extra_env=held) as url:
        # no credentials: the sign-in form, and nothing of the runs, on Explore and on Runs (where a delete
        # would be); test_pages.py holds every page to the same in-process
        for path in (f"/?run={KEPT}", f"/runs?run={doomed}"):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(url + path)
            page.get_by_label("Token").wait_for(timeout=60_000)
            settle(page)
            shown = page.inner_text("body")
            assert "Sign in" in shown and KEPT not in shown and doomed not in shown and "Delete" not in shown
            assert page.locator(GRID_IMAGE).count() == 0
            assert page.locator('[data-testid="stDataFrame"], [data-testid="stPlotlyChart"]').count() == 0
            if path.startswith("/?"):
                shot(page, "sign-in")
            context.close()

        # the read token: the data, and no delete
        context = browser.new_context(viewport={"width": 1600, "height": 1200})
        page = context.new_page()
        page.goto(f"{url}/?run={KEPT}")
        sign_in_in_the_browser(page, READ_TOKEN)
        page.wait_for_selector(GRID_IMAGE, state="visible", timeout=60_000)
        settle(page)
        assert match_count(page) == 120 and page.locator(GRID_IMAGE).count() == 24
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Runs", exact=True).click()  # same session
        page.get_by_text("Detection quality").first.wait_for(timeout=60_000)
        settle(page)
        assert "Deleting a run needs the write token" in page.inner_text('[data-testid="stMain"]')
        assert page.get_by_text(re.compile("^Delete ")).count() == 0
        shot(page, "runs-read-only")
        context.close()

        # the write token deletes
        context = browser.new_context(viewport={"width": 1600, "height": 1200})
        page = context.new_page()
        page.goto(f"{url}/runs?run={doomed}")
        sign_in_in_the_browser(page, WRITE_TOKEN)
        page.get_by_text(f"Delete {doomed} from the database").click(timeout=60_000)
        confirm = page.get_by_label("Type the run's name to confirm")
        confirm.fill(doomed)
        confirm.press("Enter")
        settle(page)
        page.get_by_role("button", name="Delete run").click()
        deadline = time.monotonic() + 30
        while locked_backend.get(f"/runs/{doomed}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert locked_backend.get(f"/runs/{doomed}").status_code == 404
        assert locked_backend.get(f"/runs/{KEPT}").status_code == 200
        context.close()
