"""Concurrent tag writes against a real `clipmem serve` (uvicorn, many worker threads) on each database:
every request succeeds (on SQLite a writer waits for the write lock instead of failing with 503), each
answer's `changed` counts only the rows that request changed, and readers are not held up by writers."""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy.engine import make_url

CLIENTS = 8
# the alpha run's first pairs (write_synthetic_run's default id format); the tags are removed again
PAIRS = [f"pair-{i:07d}" for i in range(24)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(db):
    """`clipmem serve` on 127.0.0.1 over the test database (its fake runs ingested), as a subprocess."""
    port = _free_port()
    env = {**os.environ, "CLIPMEM_DATABASE_URL": db.url}
    env.pop("CLIPMEM_API_TOKEN", None)
    process = subprocess.Popen([sys.executable, "-m", "clipmem", "serve", "--port",
                                str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if process.poll() is not None:
                pytest.fail(f"clipmem serve exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("clipmem serve did not answer /health within 30 s")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def _concurrently(base: str, jobs: list[list[tuple[str, str, str]]]) -> list[httpx.Response]:
    """Run each client's list of (method, tag, sample id) requests in its own thread, all at once."""
    def client(requests):
        with httpx.Client(base_url=base, timeout=60) as http:
            return [http.post(f"/runs/alpha/tags/{quote(tag)}", json={"sample_ids": [sid]}) if method == "POST"
                    else http.delete(f"/runs/alpha/tags/{quote(tag)}", params={"sample_id": sid})
                    for method, tag, sid in requests]

    with ThreadPoolExecutor(len(jobs)) as pool:
        return [response for responses in pool.map(client, jobs) for response in responses]


def _failures(responses: list[httpx.Response]) -> list[str]:
    return [f"{r.request.method} {r.status_code} {r.text[:120]}" for r in responses if r.status_code != 200]


def test_concurrent_tag_writes_all_succeed(server):
    rng = random.Random(9)
    tags = ["busy a", "busy b"]
    jobs = [[(rng.choice(("POST", "DELETE")), rng.choice(tags), rng.choice(PAIRS)) for _ in range(20)]
            for _ in range(CLIENTS)]
    try:
        responses = _concurrently(server, jobs)
        failures = _failures(responses)
        assert not failures, f"{len(failures)} of {len(responses)} concurrent tag writes failed: {failures[:5]}"
    finally:
        for tag in tags:
            httpx.delete(f"{server}/runs/alpha/tags/{quote(tag)}", timeout=60)


def test_changed_counts_only_this_requests_rows(server):
    """Every client puts the tag on every pair, one pair per request, then takes it off again the same way:
    24 pairs change each way however the requests interleave, so the answers' `changed` add up to 24."""
    tag = "mine only"
    rng = random.Random(11)
    orders = [rng.sample(PAIRS, len(PAIRS)) for _ in range(CLIENTS)]
    try:
        for method in ("POST", "DELETE"):
            responses = _concurrently(server, [[(method, tag, sid) for sid in order] for order in orders])
            assert not _failures(responses), _failures(responses)[:5]
            assert sum(r.json()["changed"] for r in responses) == len(PAIRS), method
            assert {r.json()["changed"] for r in responses} <= {0, 1}
            pairs = {t["tag"]: t["pairs"] for t in httpx.get(f"{server}/runs/alpha/tags").json()}.get(tag, 0)
            assert pairs == (len(PAIRS) if method == "POST" else 0)
    finally:
        httpx.delete(f"{server}/runs/alpha/tags/{quote(tag)}", timeout=60)


def test_readers_do_not_wait_for_a_writer(db, client):
    """While another connection holds SQLite's write lock (as an ingest does), reads still answer at once:
    only write requests take the lock."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's database-wide write lock")
    holder = sqlite3.connect(make_url(db.url).database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        for path in ("/runs/alpha/tags", "/runs/alpha", f"/runs/alpha/samples/{PAIRS[0]}"):
            assert client.get(path).status_code == 200, path
        assert time.perf_counter() - started < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
