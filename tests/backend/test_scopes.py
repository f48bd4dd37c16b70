"""Token scopes: the read token (CLIPMEM_API_TOKEN) browses, only the write token (CLIPMEM_API_WRITE_TOKEN)
changes the database, and GET /access tells a client which of the two it holds."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from clipmem.backend.api.app import create_app
from clipmem.backend.api.deps import require_write
from clipmem.backend.ingest import ingest
from clipmem.backend.settings import Settings
from clipmem.backend.synthetic_run import write_synthetic_run
from clipmem.cli import app

READ, WRITE = "read-token-1", "write-token-2"
SAMPLE = "pair-0000200"  # a scored pair of the fake runs (tests/backend/conftest.py)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def scoped(db):
    with TestClient(create_app(Settings(database_url=db.url, api_token=READ, api_write_token=WRITE))) as client:
        yield client


@pytest.fixture()
def doomed_run(db, tmp_path):
    """A run of this test's own, to delete."""
    ingest(db.engine, write_synthetic_run(tmp_path / "doomed", 10, 10, 10, 5, seed=71), name="doomed")
    return "doomed"


def test_only_the_write_token_deletes_a_run(scoped, doomed_run):
    assert scoped.delete(f"/runs/{doomed_run}").status_code == 401
    assert scoped.delete(f"/runs/{doomed_run}", headers=bearer("guess")).status_code == 401
    refused = scoped.delete(f"/runs/{doomed_run}", headers=bearer(READ))
    assert refused.status_code == 403 and "CLIPMEM_API_WRITE_TOKEN" in refused.json()["detail"]
    assert scoped.get(f"/runs/{doomed_run}", headers=bearer(READ)).status_code == 200  # still there
    assert scoped.delete(f"/runs/{doomed_run}", headers=bearer(WRITE)).status_code == 204
    assert scoped.get(f"/runs/{doomed_run}", headers=bearer(READ)).status_code == 404


def test_only_the_write_token_changes_tags(scoped):
    path = "/runs/alpha/tags/scoped"
    for token in (None, READ):
        headers = bearer(token) if token else {}
        assert scoped.post(path, json={"sample_ids": [SAMPLE]}, headers=headers).status_code == (403 if token else 401)
    assert scoped.get("/runs/alpha/tags", headers=bearer(READ)).json() == []  # nothing was written
    added = scoped.post(path, json={"sample_ids": [SAMPLE]}, headers=bearer(WRITE))
    assert added.status_code == 200 and added.json()["changed"] == 1
    assert scoped.delete(path, headers=bearer(READ)).status_code == 403
    assert scoped.get("/runs/alpha/tags", headers=bearer(READ)).json() == [{"tag": "scoped", "pairs": 1}]
    removed = scoped.delete(path, headers=bearer(WRITE))
    assert removed.status_code == 200 and removed.json()["changed"] == 1


@pytest.mark.parametrize("token", [READ, WRITE])
def test_both_tokens_read(scoped, token):
    for path in ("/runs", "/runs/alpha", f"/runs/alpha/samples/{SAMPLE}", "/openapi.json"):
        assert scoped.get(path, headers=bearer(token)).status_code == 200, path
    assert scoped.get("/runs").status_code == 401


def test_a_server_with_only_the_read_token_changes_nothing(db):
    with TestClient(create_app(Settings(database_url=db.url, api_token=READ))) as client:
        refused = client.post("/runs/alpha/tags/x", json={"sample_ids": [SAMPLE]}, headers=bearer(READ))
        assert refused.status_code == 403 and "has no write token" in refused.json()["detail"]
        assert client.delete("/runs/alpha", headers=bearer(READ)).status_code == 403
        assert client.get("/runs/alpha", headers=bearer(READ)).status_code == 200


def test_a_server_with_only_the_write_token_needs_it_to_read(db):
    with TestClient(create_app(Settings(database_url=db.url, api_write_token=WRITE))) as client:
        assert client.get("/runs").status_code == 401
        assert client.get("/runs", headers=bearer(WRITE)).status_code == 200


def test_access_says_what_a_token_allows(scoped, client):
    assert client.get("/access").json() == {"token_required": False, "read": True, "write": True}
    assert scoped.get("/access").json() == {"token_required": True, "read": False, "write": False}
    assert scoped.get("/access", headers=bearer(READ)).json() == {"token_required": True, "read": True,
                                                                  "write": False}
    assert scoped.get("/access", headers=bearer(WRITE)).json() == {"token_required": True, "read": True,
                                                                   "write": True}
    unknown = scoped.get("/access", headers=bearer("guess"))
    assert unknown.status_code == 401 and unknown.headers["www-authenticate"] == "Bearer"


def test_the_tokens_must_differ(monkeypatch, tmp_path):
    with pytest.raises(ValidationError, match="are the same"):
        Settings(database_url="sqlite://", api_token="same", api_write_token="same")
    assert not Settings(database_url="sqlite://", api_token="", api_write_token="").token_required
    monkeypatch.setenv("CLIPMEM_DATABASE_URL", f"sqlite:///{tmp_path / 'never.db'}")
    monkeypatch.setenv("CLIPMEM_API_TOKEN", "same")
    monkeypatch.setenv("CLIPMEM_API_WRITE_TOKEN", "same")
    result = CliRunner().invoke(app, ["serve", "--port", "8999"])
    assert result.exit_code == 2
    assert "CLIPMEM_API_TOKEN and CLIPMEM_API_WRITE_TOKEN are the same" in result.output
    assert not (tmp_path / "never.db").exists()


def _dependencies(dependant) -> set:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _dependencies(sub)
    return found


def _api_routes(routes) -> list[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI >= 0.160 keeps those as one entry each)."""
    out = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif hasattr(route, "original_router"):
            out += _api_routes(route.original_router.routes)
    return out


def test_every_route_that_writes_needs_the_write_token(scoped):
    """A new route that changes the database cannot forget the scope: it must depend on require_write (through
    the write session) and document the 403."""
    routes = _api_routes(scoped.app.routes)
    writing = [r for r in routes if r.methods - {"GET", "HEAD"}]
    assert {(m, r.path) for r in writing for m in r.methods} == {
        ("DELETE", "/runs/{run}"), ("POST", "/runs/{run}/tags/{tag}"), ("DELETE", "/runs/{run}/tags/{tag}")}
    for route in writing:
        assert require_write in _dependencies(route.dependant), route.path
    reading = [r for r in routes if not r.methods - {"GET", "HEAD"}]
    assert len(reading) > 10 and not any(require_write in _dependencies(r.dependant) for r in reading)
    schema = scoped.get("/openapi.json", headers=bearer(READ)).json()
    operations = [(method, path, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert sum(method != "get" for method, _, _ in operations) == 3
    for method, path, operation in operations:
        assert method == "get" or "403" in operation["responses"], (method, path)
