"""The dashboard's pure parts: view state in the URL, the HTTP client's error messages, chart data."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from clipmem.frontend import charts
from clipmem.frontend.client import ApiClient, BackendError, NotFound, Unauthorized
from clipmem.frontend.state import Paging, ViewFilter


def test_a_filter_round_trips_through_the_url_and_omits_defaults():
    flt = ViewFilter(run="demo", score="clipscore_g", lo=0.25, hi=0.9, split="candidate", truth="swapped",
                     tag="keep", q="red circle", sort="align_f", order="asc", size=48)
    params = flt.to_params()
    assert ViewFilter.from_params(params) == flt
    assert ViewFilter(run="demo").to_params() == {"run": "demo"}


@pytest.mark.parametrize("params, expected", [
    ({"lo": "0.8", "hi": "0.2"}, {"lo": 0.2, "hi": 0.8}),       # a reversed range is put in order
    ({"lo": "nan", "hi": "inf"}, {"lo": None, "hi": None}),     # not finite: no bound
    ({"split": "shared"}, {"split": None}),                     # only scored splits filter
    ({"order": "up", "size": "13"}, {"order": "desc", "size": 24}),
    ({"q": "   "}, {"q": None}),
    ({"truth": ["vague", "swapped"]}, {"truth": "vague"}),      # a repeated param: the first wins
])
def test_bad_url_values_fall_back_to_defaults(params, expected):
    flt = ViewFilter.from_params(params)
    for field, value in expected.items():
        assert getattr(flt, field) == value


def test_a_filter_drops_scores_the_run_does_not_have():
    flt = ViewFilter(score="mem_text", lo=0.5, sort="mem_image")
    assert flt.with_scores(["clipmem", "align_f"]) == ViewFilter()
    assert flt.with_scores(["clipmem", "mem_text", "mem_image"]) is flt


def test_describe_says_what_the_filter_selects():
    assert ViewFilter().describe() == "all scored pairs"
    text = ViewFilter(lo=0.5, truth="swapped", q="dog").describe()
    assert text == "clipmem in [0.500, max], truth swapped, caption contains “dog”"


def test_paging_walks_forward_and_back_through_cursors():
    first = Paging()
    second = first.next("c2")
    third = second.next("c3")
    assert (first.page_number, second.page_number, third.page_number) == (1, 2, 3)
    assert third.to_params() == {"cursor": "c3", "back": ["c2"]}
    assert Paging.from_params({"cursor": "c3", "back": ["c2"]}) == third
    assert third.previous() == second and second.previous() == first and first.previous() == first
    assert Paging.from_params({"back": ["c2"]}) == first  # a back stack without a cursor means nothing


def client_answering(status: int, body) -> ApiClient:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer tok"
        return httpx.Response(status, json=body)

    api = ApiClient("http://backend.test", token="tok")
    api._http = httpx.Client(base_url="http://backend.test", transport=httpx.MockTransport(handler),
                             headers=api._http.headers)
    return api


def test_client_turns_http_errors_into_readable_messages():
    validation = {"detail": [{"loc": ["query", "clipmem_min"], "msg": "Input should be a valid number"}]}
    with pytest.raises(BackendError, match="rejected the request: clipmem_min: Input should be a valid number"):
        client_answering(422, validation).get_json("/runs/x/samples")
    with pytest.raises(NotFound, match="no run named 'x'"):
        client_answering(404, {"detail": "no run named 'x'"}).get_json("/runs/x")
    with pytest.raises(BackendError, match=r"failed on GET /runs \(503\): the database is busy"):
        client_answering(503, {"detail": "the database is busy"}).get_json("/runs")
    with pytest.raises(Unauthorized, match="sign in with its read or write token"):
        client_answering(401, {"detail": "a valid bearer token is required"}).get_json("/runs")
    with pytest.raises(BackendError, match=r"refused the request \(403: this token may only read"):
        client_answering(403, {"detail": "this token may only read"}).delete("/runs/x")


def test_the_client_sends_only_the_token_it_is_given(monkeypatch):
    """The dashboard process's environment is not a credential: a client made without a token sends none."""
    monkeypatch.setenv("CLIPMEM_API_TOKEN", "from-the-environment")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={})

    for token in (None, "given"):
        api = ApiClient("http://backend.test", token=token)
        api._http = httpx.Client(base_url="http://backend.test", transport=httpx.MockTransport(handler),
                                 headers=api._http.headers)
        api.get_json("/runs")
    assert seen == [None, "Bearer given"]


def test_client_drops_empty_parameters():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(dict(request.url.params))
        return httpx.Response(200, json={})

    api = ApiClient("http://backend.test", token="")
    api._http = httpx.Client(base_url="http://backend.test", transport=httpx.MockTransport(handler))
    api.get_json("/runs/x/samples", split=None, truth="", tag=[], limit=24)
    assert seen == {"limit": "24"}


def test_roc_from_histograms_matches_the_exact_auroc():
    rng = np.random.default_rng(0)
    positive = rng.normal(0.6, 0.1, 400)
    negative = rng.normal(0.4, 0.1, 4000)
    edges = np.linspace(0, 1, 201)
    fpr, tpr = charts.roc_from_histograms(np.histogram(positive, edges)[0], np.histogram(negative, edges)[0])
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    binned_auc = np.trapezoid(tpr, fpr)
    exact_auc = (positive[:, None] > negative[None, :]).mean()
    assert binned_auc == pytest.approx(exact_auc, abs=0.005)


# ---------------------------------------------------------------- significance (issue 15)

def test_the_memorized_filters_round_trip_through_the_url_and_reach_the_backend():
    from clipmem.frontend.api import filter_query

    flt = ViewFilter(run="demo", memorized=True, clipmem_q_max=0.1)
    assert flt.to_params() == {"run": "demo", "memorized": "true", "clipmem_q_max": "0.1"}
    assert ViewFilter.from_params(flt.to_params()) == flt
    assert filter_query(flt)["memorized"] == "true" and filter_query(flt)["clipmem_q_max"] == 0.1
    # the score range on clipmem_q and the q threshold both bound q: the tighter one wins
    both = ViewFilter(score="clipmem_q", hi=0.05, clipmem_q_max=0.2)
    assert filter_query(both)["clipmem_q_max"] == 0.05
    assert "memorized" not in filter_query(ViewFilter())
    assert flt.describe() == "flagged memorized, q ≤ 0.100"


@pytest.mark.parametrize("params, memorized, q_max", [
    ({"memorized": "TRUE", "clipmem_q_max": "0.25"}, True, 0.25),
    ({"memorized": "no", "clipmem_q_max": "1.5"}, False, None),    # a q above 1 bounds nothing: dropped
    ({"memorized": "", "clipmem_q_max": "-0.1"}, False, None),
    ({"clipmem_q_max": "abc"}, False, None),
])
def test_bad_memorized_filters_fall_back(params, memorized, q_max):
    flt = ViewFilter.from_params(params)
    assert (flt.memorized, flt.clipmem_q_max) == (memorized, q_max)


def test_a_run_without_q_values_drops_the_memorized_filters():
    flt = ViewFilter(memorized=True, clipmem_q_max=0.1)
    assert flt.with_scores(["clipmem", "clipmem_raw"]) == ViewFilter()
    assert flt.with_scores(["clipmem", "clipmem_q"]) is flt


@pytest.mark.parametrize("value, text", [(0.0123, "0.012"), (0.001, "0.001"), (0.000123, "1.2e-04"),
                                         (1.0, "1.000"), (None, "–"), (float("nan"), "–")])
def test_p_and_q_values_keep_their_digits_when_small(value, text):
    from clipmem.frontend.state import format_probability

    assert format_probability(value) == text


def test_the_memorized_badge():
    from clipmem.frontend.ui import memorized_badge

    assert memorized_badge(True, 0.0123) == ":red-badge[:material/flag: memorized] q\u00a0=\u00a00.012"
    assert memorized_badge(False, 0.43) == ":gray[q\u00a0=\u00a00.430]"
    assert memorized_badge(None, None) == ""  # a run scored before significance testing


def test_error_bars_reach_from_the_estimate_to_the_interval():
    bars = charts.error_bars([1.0, 2.0, 3.0], [0.5, 1.0, None], [1.25, 4.0, None])["error_y"]
    assert bars["array"] == [0.25, 2.0, None] and bars["arrayminus"] == [0.5, 1.0, None]
    assert charts.error_bars([1.0], [None], [None]) == {}
    figure = charts.interval_bars(["clean", "swapped"], {"image side": [(0.001, 0.0, 0.002), (0.004, 0.003, 0.006)],
                                                         "text side": [(0.003, None, None), (0.01, 0.008, 0.011)]},
                                  "mean")
    image, text = figure.data
    assert list(image.error_y.array) == pytest.approx([0.001, 0.002])
    assert list(image.error_y.arrayminus) == pytest.approx([0.001, 0.001])
    assert list(text.error_y.array)[0] is None and list(text.error_y.array)[1] == pytest.approx(0.001)


def test_layer_curves_draw_the_interval_of_each_block():
    rows = [{"tower": "image", "layer": 2, "layer_mem": 0.3, "layer_mem_lo": 0.1, "layer_mem_hi": 0.4},
            {"tower": "image", "layer": 1, "layer_mem": 0.2, "layer_mem_lo": 0.15, "layer_mem_hi": 0.3}]
    (image,) = charts.layer_curves(rows, "layer_mem", "t").data
    assert list(image.x) == [1, 2]  # in block order, each block's bar with it
    assert list(image.error_y.array) == pytest.approx([0.1, 0.1])
    assert list(image.error_y.arrayminus) == pytest.approx([0.05, 0.2])
    older = [{k: v for k, v in r.items() if not k.endswith(("_lo", "_hi"))} for r in rows]
    assert charts.layer_curves(older, "layer_mem", "t").data[0].error_y.array is None


def test_unit_mem_curves_draw_the_mean_and_each_models_value_per_block():
    rows = [{"tower": "text", "layer": 2, "unit_mem": 0.5, "unit_mem_f": 0.4, "unit_mem_g": 0.6},
            {"tower": "text", "layer": 1, "unit_mem": 0.3, "unit_mem_f": 0.2, "unit_mem_g": 0.4},
            {"tower": "image", "layer": 1, "unit_mem": None, "unit_mem_f": None, "unit_mem_g": None}]
    traces = {t.name: t for t in charts.unit_mem_curves(rows, "t").data}
    assert set(traces) == {"text tower", "text, model f", "text, model g"}  # no image UnitMem: no image trace
    assert list(traces["text tower"].x) == [1, 2] and list(traces["text tower"].y) == [0.3, 0.5]
    assert list(traces["text, model f"].y) == [0.2, 0.4] and list(traces["text, model g"].y) == [0.4, 0.6]


def test_the_null_histogram_counts_every_null_pair_and_shows_a_pair_in_the_far_tail():
    null = np.array([-0.02, -0.01, -0.01, 0.0, 0.0, 0.0, 0.01, 0.02])
    figure = charts.null_histogram(null, 0.5, 0.45, 0.6, "A_f − A_g", bins=4)
    bars, pair = figure.data
    # 4 equal bins over [-0.02, 0.02], right edge included: counted by hand
    assert list(bars.y) == [1, 2, 3, 2]
    assert list(pair.x) == [0.5]
    assert list(pair.error_x.array) == pytest.approx([0.1]) and list(pair.error_x.arrayminus) == pytest.approx([0.05])
    low, high = figure.layout.xaxis.range
    assert low < -0.02 and high > 0.6  # the null and the pair's whole interval in view


def test_flagged_bars_show_fraction_and_count():
    figure = charts.flagged_bars([{"truth": "swapped", "pairs": 20, "flagged": 15, "fraction": 0.75},
                                  {"truth": "clean", "pairs": 200, "flagged": 2, "fraction": 0.01}])
    (bars,) = figure.data
    assert list(bars.y) == [0.75, 0.01] and list(bars.text) == ["15 of 20", "2 of 200"]
