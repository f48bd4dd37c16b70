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
