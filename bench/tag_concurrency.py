"""Concurrent tag writes: success counts, p50/p95 latency and the `changed` bookkeeping, SQLite and PostgreSQL.

For each database it makes a fresh one (a temporary SQLite file; a PostgreSQL schema of its own, dropped
afterwards), ingests a small synthetic run (no training), starts a real `clipmem serve` (uvicorn) on
127.0.0.1 and lets C concurrent clients (default 2, then 16) each send R single-pair tag POSTs (default 20
and 40: 40 and 640 requests) on random pairs of the run, one tag per clients row. It reports how many
answered 200 (and the other status codes), p50/p95 latency, and whether the answers' `changed` add up to
the pairs that carry the tag afterwards (each pair changes once, however the requests interleave).

    .venv/bin/python bench/tag_concurrency.py                     # SQLite, and PostgreSQL if a URL is known
    .venv/bin/python bench/tag_concurrency.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Bounded: every request times out after 60 s and a row stops sending after --deadline seconds; nothing
leaves the machine (the server listens on 127.0.0.1 only). The PostgreSQL URL defaults to
CLIPMEM_TEST_DATABASE_URL. Results go to bench/results/tag_concurrency.{json,md}; the table is printed.
This is a benchmark, not a test: tests/backend/test_tag_concurrency.py asserts the behaviour.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipmem.backend.db import make_engine, migrate  # noqa: E402
from clipmem.backend.ingest import ingest  # noqa: E402
from clipmem.backend.synthetic_run import write_synthetic_run  # noqa: E402
from backend_bench import Server  # noqa: E402  (bench/ is the script's folder, first on sys.path)
from bench_common import each_database, machine, write_results  # noqa: E402

RUN = "tagbench"
SIZES = (200, 200, 50, 10)  # candidate, independent, shared, extra: 460 pairs


def tag_row(base: str, clients: int, per_client: int, deadline_s: float, seed: int) -> dict:
    """`clients` threads, each sending `per_client` single-pair POSTs of one fresh tag on random pairs."""
    tag = f"bench-{clients}-{seed}"
    n_pairs = sum(SIZES)
    stop_at = time.monotonic() + deadline_s

    def client_loop(k: int) -> list[tuple[int, float, int]]:
        rng = random.Random(seed * 1000 + k)
        out = []
        with httpx.Client(base_url=base, timeout=60) as http:
            for _ in range(per_client):
                if time.monotonic() > stop_at:
                    break
                sid = f"pair-{rng.randrange(n_pairs):07d}"
                started = time.perf_counter()
                try:
                    response = http.post(f"/runs/{RUN}/tags/{tag}", json={"sample_ids": [sid]})
                    status = response.status_code
                    changed = response.json()["changed"] if status == 200 else 0
                except httpx.TransportError:
                    status, changed = -1, 0
                out.append((status, (time.perf_counter() - started) * 1000, changed))
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        samples = [s for result in pool.map(client_loop, range(clients)) for s in result]
    wall = time.perf_counter() - started
    with httpx.Client(base_url=base, timeout=60) as http:
        pairs = {t["tag"]: t["pairs"] for t in http.get(f"/runs/{RUN}/tags").json()}.get(tag, 0)
    ms = sorted(m for _, m, _ in samples)
    ok = sorted(m for status, m, _ in samples if status == 200)
    return {"clients": clients, "requests": len(samples), "ok": len(ok),
            "statuses": dict(sorted(Counter(str(s) for s, _, _ in samples).items())),
            "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "ok_p95_ms": round(ok[int(0.95 * (len(ok) - 1))], 1) if ok else None,
            "sum_changed": sum(c for _, _, c in samples), "pairs_tagged": pairs, "seconds": round(wall, 2)}


def bench_database(kind: str, url: str, run: Path, rows: list[tuple[int, int]], deadline_s: float) -> dict:
    engine = make_engine(url, bulk_write=True)
    migrate(engine)
    ingest(engine, run, name=RUN)
    engine.dispose()
    server = Server(url)
    try:
        out = {}
        for clients, per_client in rows:
            out[f"{clients}_clients"] = row = tag_row(server.base, clients, per_client, deadline_s, seed=clients)
            print(f"[{kind}] {row}", flush=True)
        return out
    finally:
        server.stop()


def markdown(results: dict) -> str:
    lines = ["| database | clients | 200 / requests | other statuses | p50 / p95 ms "
             "| sum of `changed` / pairs tagged |", "|---|---|---|---|---|---|"]
    for kind, rows in results["databases"].items():
        for row in rows.values():
            other = ", ".join(f"{s}: {n}" for s, n in row["statuses"].items() if s != "200") or "-"
            lines.append(f"| {kind} | {row['clients']} | {row['ok']} / {row['requests']} | {other} | "
                         f"{row['p50_ms']} / {row['p95_ms']} | {row['sum_changed']} / {row['pairs_tagged']} |")
    machine = results["machine"]
    return (f"Concurrent single-pair tag POSTs on a run of {sum(SIZES)} pairs. Machine: {machine['cpus']} CPUs, "
            f"Python {machine['python']}, load average {machine['load_average_start']} at start.\n\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2x20,16x40",
                        help="Comma-separated CLIENTSxREQUESTS_PER_CLIENT rows (default 2x20,16x40).")
    parser.add_argument("--deadline", type=float, default=120.0, help="Seconds after which a row stops sending.")
    parser.add_argument("--postgres", default=os.environ.get("CLIPMEM_TEST_DATABASE_URL"),
                        help="PostgreSQL URL (default: CLIPMEM_TEST_DATABASE_URL); without one, SQLite only.")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="Measure one database only.")
    parser.add_argument("--label", default="", help="Appended to the result file names (e.g. 'before').")
    args = parser.parse_args()
    try:
        rows = [tuple(int(x) for x in row.split("x")) for row in args.rows.split(",")]
        if any(len(row) != 2 or min(row) < 1 for row in rows):
            raise ValueError
    except ValueError:
        parser.error(f"--rows '{args.rows}': write rows as CLIENTSxREQUESTS, e.g. 2x20,16x40")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", args.label):
        parser.error(f"--label '{args.label}': use letters, digits, '_' and '-' only (it names the result files)")

    results = {"rows": args.rows, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="clipmem-tagbench-") as work:
        run = write_synthetic_run(Path(work) / RUN, *SIZES, seed=5)
        results["databases"] = each_database(
            args.only, args.postgres, f"sqlite:///{Path(work) / 'tags.db'}",
            lambda kind, url: bench_database(kind, url, run, rows, args.deadline))
    write_results("tag_concurrency", args.label, results, markdown(results))

if __name__ == "__main__":
    main()
