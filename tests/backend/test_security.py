"""Bearer-token auth, and the image endpoint serving only the file recorded for a sample, inside its data root."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update

from clipmem.backend.api.app import create_app
from clipmem.backend.ingest import ingest
from clipmem.backend.models import Sample
from clipmem.backend.settings import Settings
from clipmem.backend.synthetic_run import write_synthetic_run


@pytest.fixture(scope="module")
def locked_client(db):
    with TestClient(create_app(Settings(database_url=db.url, api_token="s3cret-token"))) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/runs", "/runs/alpha", "/runs/alpha/samples", "/runs/alpha/images/pair-0000200",
                                  "/runs/alpha/histogram", "/runs/alpha/tags", "/comparisons?run_a=alpha&run_b=beta",
                                  "/runs/alpha/exports/selection.csv"])
def test_token_required_when_set(locked_client, path):
    missing = locked_client.get(path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = locked_client.get(path, headers={"Authorization": "Bearer not-it"})
    assert wrong.status_code == 401
    right = locked_client.get(path, headers={"Authorization": "Bearer s3cret-token"})
    assert right.status_code == 200, right.text


def test_writes_need_the_token_too(locked_client):
    assert locked_client.post("/runs/alpha/tags/x", json={"sample_ids": ["pair-0000200"]}).status_code == 401
    assert locked_client.delete("/runs/alpha").status_code == 401
    assert locked_client.get("/runs/alpha", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_health_is_open(locked_client):
    assert locked_client.get("/health").status_code == 200


def test_no_token_configured_means_open(client):
    assert client.get("/runs").status_code == 200


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_schema_and_docs_need_the_token_when_set(locked_client, path):
    missing = locked_client.get(path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert locked_client.get(path, headers={"Authorization": "Bearer not-it"}).status_code == 401
    right = locked_client.get(path, headers={"Authorization": "Bearer s3cret-token"})
    assert right.status_code == 200
    if path == "/openapi.json":
        assert "/runs/{run}/samples" in right.json()["paths"]
    else:
        assert "text/html" in right.headers["content-type"] and "/openapi.json" in right.text


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_schema_and_docs_open_without_a_token(client, path):
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("path", [
    "/runs/alpha/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/runs/alpha/images/%2Fetc%2Fpasswd",
    "/runs/alpha/images/images%2F..%2F..%2Fscores.parquet",
    "/runs/alpha/images/data%2Fimages%2F0000001.png",
])
def test_request_paths_never_reach_the_file_system(client, path):
    response = client.get(path)
    assert response.status_code == 404 and "has no sample" in response.text


@pytest.fixture
def own_run(db, client, tmp_path):
    """A run whose recorded image locations the test may tamper with."""
    path = write_synthetic_run(tmp_path / "tamper", 10, 10, 5, 2, seed=41)
    ingest(db.engine, path)
    yield path
    client.delete("/runs/tamper")


def set_image_ref(db, sample_id: str, ref: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(update(Sample).where(Sample.sample_id == sample_id,
                                          Sample.run_id.in_(conn.exec_driver_sql(
                                              "SELECT id FROM runs WHERE name = 'tamper'").scalars().all()))
                     .values(image_ref=ref))


@pytest.mark.parametrize("ref", ["../../../../../etc/passwd", "/etc/passwd", "images/../../samples.parquet"])
def test_recorded_location_outside_root_is_refused(db, client, own_run, ref):
    set_image_ref(db, "pair-0000010", ref)
    response = client.get("/runs/tamper/images/pair-0000010")
    assert response.status_code == 403 and "leaves the run's data root" in response.text


def test_symlink_out_of_the_root_is_refused(db, client, own_run, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(secret)
    (own_run / "data" / "images" / "link.png").symlink_to(secret)
    set_image_ref(db, "pair-0000010", "images/link.png")
    assert client.get("/runs/tamper/images/pair-0000010").status_code == 403


def test_serves_exactly_the_recorded_file(db, client, own_run):
    # point pair 10 at pair 11's file: the response follows the record, whatever the request says
    set_image_ref(db, "pair-0000010", "images/0000011.png")
    response = client.get("/runs/tamper/images/pair-0000010", params={"size": 24})
    served = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    recorded = np.asarray(Image.open(own_run / "data" / "images" / "0000011.png").convert("RGB"))
    assert np.array_equal(served, recorded)
    extra = client.get("/runs/tamper/images/pair-0000010", params={"size": 24, "path": "/etc/passwd"})
    assert extra.content == response.content


def test_missing_file_is_404(db, client, own_run):
    set_image_ref(db, "pair-0000010", "images/not-there.png")
    response = client.get("/runs/tamper/images/pair-0000010")
    assert response.status_code == 404 and "is missing" in response.text


@pytest.mark.parametrize("body", [
    b'{"sample_ids": ["\\ud800"]}',                  # a lone surrogate: Python decodes it, UTF-8 cannot encode it
    b'{"sample_ids": ["pair-0000200", "\\udfff x"]}',
    b'{"sample_ids": "\\ud800"}',
])
def test_lone_surrogates_in_a_body_are_a_422(client, body):
    response = client.post("/runs/alpha/tags/x", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    # the echoed input comes back as the same escape, in valid JSON
    assert "\\ud800" in response.text or "\\udfff" in response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/runs/alpha/samples/%ED%A0%80"),             # the UTF-8-style bytes of a surrogate
    ("GET", "/runs/%ED%A0%80"),
    ("DELETE", "/runs/alpha/tags/x?sample_id=%ED%A0%80"),
    ("GET", "/runs/alpha/samples?truth=%ED%A0%80"),
])
def test_surrogate_bytes_in_a_url_are_no_server_error(client, method, path):
    response = client.request(method, path)
    assert response.status_code < 500 and response.json()  # Starlette decodes them as U+FFFD
