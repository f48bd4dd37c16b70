"""Hostile load: concurrent clients sending valid and hostile requests to a real `clipmem serve`.

For each database it makes a fresh one (a temporary SQLite file; a PostgreSQL schema of its own, dropped
afterwards), ingests a small synthetic run whose data root also holds hostile image files, starts
`clipmem serve` on 127.0.0.1 and lets C clients (default 16) send a random mix of requests for D seconds
(default 60):

  valid      pages, details, thumbnails, neighbours, histograms, maps, exports, tag writes
  malformed  unknown or repeated parameters, inverted ranges, NaN/inf, forged cursors, 10 kB values
  numbers    limits, sizes and bins far beyond any integer type (10**40, 1e400, -1)
  surrogate  lone surrogates in JSON bodies, surrogate and invalid UTF-8 bytes percent-encoded in paths
             and queries, bodies that are not UTF-8 or not JSON
  traversal  '../', encoded and double-encoded, absolute paths, NUL bytes, in sample ids and run names
  images     thumbnails of decompression bombs (a 48 kB PNG of 20000 x 20000, a 12000 x 12000 one),
             a 49-megapixel PNG under the limit, truncated, non-image and half-transparent files

It reports the status codes per kind (5xx and transport errors are failures, except "503 shed": a 503
with Retry-After, the server's answer when its bounded wait for decoding large images is over), error
bodies that show a server path (the data root), and the API process's resident memory before the load,
at its end and its peak (VmRSS, VmHWM from /proc).

    .venv/bin/python bench/hostile_load.py                         # SQLite, and PostgreSQL if a URL is known
    .venv/bin/python bench/hostile_load.py --clients 16 --seconds 60 --only sqlite

Bounded: the load stops after --seconds, every request times out after 60 s, and nothing leaves the
machine (the server listens on 127.0.0.1 only). The PostgreSQL URL defaults to CLIPMEM_TEST_DATABASE_URL.
Results go to bench/results/hostile_load{-label}.{json,md}; the table is printed. It exits 1 when any
request got a 5xx or no answer. Tests (tests/backend/test_security.py, test_images.py) assert the
behaviour; this measures it under load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipmem.backend.db import make_engine, migrate  # noqa: E402
from clipmem.backend.ingest import ingest  # noqa: E402
from clipmem.backend.synthetic_run import write_synthetic_run  # noqa: E402
from backend_bench import Server, memory_mb  # noqa: E402  (bench/ is the script's folder, first on sys.path)
from bench_common import each_database, machine, write_results  # noqa: E402

RUN = "hostile"
SIZES = (120, 100, 150, 40)  # candidate, independent, shared, extra: 410 pairs
N_PAIRS = sum(SIZES)
# pairs whose image file is replaced by a hostile one (sample ids pair-0000000 ...)
HOSTILE_FILES = {1: "bomb-20000", 2: "bomb-12000", 3: "large-49mp", 4: "truncated", 5: "not-an-image",
                 6: "half-transparent", 7: "empty"}
KINDS = ("valid", "malformed", "numbers", "surrogate", "traversal", "images")
WEIGHTS = (40, 15, 10, 12, 10, 13)


def plant_hostile_images(images: Path) -> None:
    """Overwrite the files of the HOSTILE_FILES pairs inside the run's data root."""
    from PIL import Image

    def save(index: int, img: Image.Image) -> None:
        img.save(images / f"{index:07d}.png", format="PNG")

    for index, what in HOSTILE_FILES.items():
        path = images / f"{index:07d}.png"
        if what == "bomb-20000":
            save(index, Image.new("1", (20_000, 20_000)))  # 48 kB on disk, 400 megapixels
        elif what == "bomb-12000":
            save(index, Image.new("1", (12_000, 12_000)))  # 144 megapixels: under Pillow's own error limit
        elif what == "large-49mp":
            save(index, Image.new("L", (7_000, 7_000), 90))  # under clipmem's 50-megapixel limit: decoded
        elif what == "truncated":
            full = path.read_bytes()
            path.write_bytes(full[: len(full) // 2])
        elif what == "not-an-image":
            path.write_bytes(b"<html><body>not an image</body></html>")
        elif what == "half-transparent":
            save(index, Image.new("RGBA", (24, 24), (255, 0, 0, 128)))
        else:
            path.write_bytes(b"")


def sample(rng: random.Random) -> str:
    return f"pair-{rng.randrange(N_PAIRS):07d}"


def valid(rng: random.Random):
    run = f"/runs/{RUN}"
    choice = rng.randrange(10)
    if choice == 0:
        return "GET", "/runs", {}
    if choice == 1:
        return "GET", f"{run}/samples", {"params": {"sort": rng.choice(["clipmem", "align_f"]),
                                                    "limit": rng.choice([10, 50]), "truth": "clean"}}
    if choice == 2:
        return "GET", f"{run}/samples/{sample(rng)}", {}
    if choice == 3:
        return "GET", f"{run}/images/pair-{rng.randrange(8, N_PAIRS):07d}", {"params": {"size": rng.choice([64, 256])}}
    if choice == 4:
        # pairs after the shared ones (written first) have embeddings
        return "GET", f"{run}/neighbours/pair-{rng.randrange(SIZES[2], N_PAIRS):07d}", {"params": {"k": 5}}
    if choice == 5:
        return "GET", f"{run}/histogram", {"params": {"score": "clipmem", "bins": 40}}
    if choice == 6:
        return "GET", f"{run}/maps", {"params": {"modality": "image", "max_points": 500}}
    if choice == 7:
        return "GET", f"{run}/exports/selection.csv", {"params": {"limit": 100}}
    if choice == 8:
        return "POST", f"{run}/tags/load", {"json": {"sample_ids": [sample(rng), sample(rng)]}}
    return "DELETE", f"{run}/tags/load", {"params": {"sample_id": sample(rng)}}


def malformed(rng: random.Random):
    run = f"/runs/{RUN}"
    return rng.choice([
        ("GET", f"{run}/samples", {"params": {"sort": "not_a_score"}}),
        ("GET", f"{run}/samples", {"params": {"clipmem_min": 0.9, "clipmem_max": 0.1}}),
        ("GET", f"{run}/samples", {"params": {"clipmem_min": "nan"}}),
        ("GET", f"{run}/samples", {"params": {"clipmem_max": "inf"}}),
        ("GET", f"{run}/samples", {"params": {"cursor": "eyJ4IjogMX0="}}),  # base64 of {"x": 1}
        ("GET", f"{run}/samples", {"params": {"cursor": "%%%not-base64%%%"}}),
        ("GET", f"{run}/samples", {"params": {"limit": ["5", "7"]}}),
        ("GET", f"{run}/samples", {"params": {"bogus": "1", "order": "sideways"}}),
        ("GET", f"{run}/samples", {"params": {"caption": "x" * 10_000}}),
        ("GET", f"{run}/histogram", {"params": {"score": "clipmem", "lo": 1, "hi": 0}}),
        ("GET", f"{run}/maps", {"params": {"modality": "sound"}}),
        ("GET", "/comparisons", {"params": {"run_a": RUN}}),
        ("POST", f"{run}/tags/load", {"content": b'{"sample_ids": [', "headers": {"Content-Type": "application/json"}}),
        ("POST", f"{run}/tags/load", {"json": {"sample_ids": []}}),
        ("POST", f"{run}/tags/load", {"json": {"sample_ids": [{"nested": [1, 2]}]}}),
        ("POST", f"{run}/tags/bad%20tag%00", {"json": {"sample_ids": [sample(rng)]}}),
        ("PUT", f"{run}/tags/load", {}),
    ])


def numbers(rng: random.Random):
    run = f"/runs/{RUN}"
    huge = rng.choice(["1" + "0" * 40, "1e400", "-1", "99999999999999999999999999", "0x10", "1_000"])
    return rng.choice([
        ("GET", f"{run}/samples", {"params": {"limit": huge}}),
        ("GET", f"{run}/samples", {"params": {"clipmem_min": huge}}),
        ("GET", f"{run}/images/{sample(rng)}", {"params": {"size": huge}}),
        ("GET", f"{run}/histogram", {"params": {"score": "clipmem", "bins": huge}}),
        ("GET", f"{run}/neighbours/{sample(rng)}", {"params": {"k": huge}}),
        ("GET", f"{run}/maps", {"params": {"modality": "image", "max_points": huge}}),
        ("GET", f"{run}/exports/selection.csv", {"params": {"limit": huge}}),
        ("GET", "/comparisons", {"params": {"run_a": RUN, "run_b": RUN, "k": huge}}),
    ])


def surrogate(rng: random.Random):
    run = f"/runs/{RUN}"
    json_type = {"Content-Type": "application/json"}
    return rng.choice([
        ("POST", f"{run}/tags/load", {"content": b'{"sample_ids": ["\\ud800"]}', "headers": json_type}),
        ("POST", f"{run}/tags/load", {"content": b'{"sample_ids": ["pair-0000009", "\\udfff\\ud800"]}',
                                      "headers": json_type}),
        ("POST", f"{run}/tags/load", {"content": b'{"sample_ids": "\\ud83d"}', "headers": json_type}),
        ("POST", f"{run}/tags/load", {"content": b'{"sample_ids": ["\xff\xfe\xfd"]}', "headers": json_type}),
        ("POST", f"{run}/tags/load", {"content": "{\"sample_ids\": [\"x\"]}".encode("utf-16"),
                                      "headers": json_type}),
        ("GET", f"{run}/samples/%ED%A0%80", {}),
        ("GET", f"{run}/samples/%FF%FE", {}),
        ("GET", "/runs/%ED%A0%80", {}),
        ("GET", f"{run}/samples?truth=%ED%A0%80&caption=%FF", {}),
        ("DELETE", f"{run}/tags/load?sample_id=%ED%B0%80", {}),
    ])


def traversal(rng: random.Random):
    run = f"/runs/{RUN}"
    return rng.choice([
        ("GET", f"{run}/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd", {}),
        ("GET", f"{run}/images/%2Fetc%2Fpasswd", {}),
        ("GET", f"{run}/images/..%252F..%252Fetc%252Fpasswd", {}),
        ("GET", f"{run}/images/images%2F0000010.png", {}),
        ("GET", f"{run}/images/pair-0000010%00.png", {}),
        ("GET", f"{run}/samples/..%2F..%2Fscores.parquet", {}),
        ("GET", "/runs/..%2F..%2Fetc", {}),
        ("GET", f"{run}/images/{sample(rng)}", {"params": {"path": "/etc/passwd"}}),
        ("GET", f"{run}/encoders/curves/..%2F..%2Fconfig.json", {}),
        ("GET", "/experiments/..%2F..%2Fetc%2Fpasswd", {}),
    ])


def images(rng: random.Random):
    index = rng.choice(list(HOSTILE_FILES))
    return "GET", f"/runs/{RUN}/images/pair-{index:07d}", {"params": {"size": rng.choice([64, 256, 512])}}


MAKERS = {"valid": valid, "malformed": malformed, "numbers": numbers, "surrogate": surrogate,
          "traversal": traversal, "images": images}


def load(base: str, clients: int, seconds: float, seed: int, data_root: str) -> dict:
    stop_at = time.monotonic() + seconds

    def client_loop(k: int):
        rng = random.Random(seed * 1000 + k)
        statuses: dict[str, Counter] = defaultdict(Counter)
        leaks, examples = 0, []
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.monotonic() < stop_at:
                kind = rng.choices(KINDS, WEIGHTS)[0]
                method, url, kwargs = MAKERS[kind](rng)
                try:
                    response = http.request(method, url, **kwargs)
                    status = str(response.status_code)
                    if status == "503" and "retry-after" in response.headers:
                        status = "503 shed"  # the bounded wait for the pixel budget (or a locked SQLite)
                    if response.status_code >= 400 and data_root in response.text:
                        leaks += 1
                    if response.status_code >= 500 and len(examples) < 5:
                        examples.append(f"{method} {url} {kwargs} -> {status} {response.text[:200]}")
                except httpx.TransportError as exc:
                    status = f"no answer ({type(exc).__name__})"
                    if len(examples) < 5:
                        examples.append(f"{method} {url} {kwargs} -> {status}")
                statuses[kind][status] += 1
        return statuses, leaks, examples

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client_loop, range(clients)))
    wall = time.perf_counter() - started
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for statuses, _, _ in results:
        for kind, counts in statuses.items():
            by_kind[kind].update(counts)
    total = Counter()
    for counts in by_kind.values():
        total.update(counts)
    failures = sum(n for status, n in total.items() if status != "503 shed" and not status.startswith(("2", "3", "4")))
    return {"clients": clients, "seconds": round(wall, 1), "requests": sum(total.values()),
            "statuses": dict(sorted(total.items())),
            "by_kind": {kind: dict(sorted(by_kind[kind].items())) for kind in KINDS},
            "failures": failures, "path_leaks": sum(leaks for _, leaks, _ in results),
            "failure_examples": [e for _, _, examples in results for e in examples][:10]}


def bench_database(kind: str, url: str, run: Path, clients: int, seconds: float, cap_mb: int) -> dict:
    engine = make_engine(url)
    migrate(engine)
    ingest(engine, run, name=RUN)
    engine.dispose()
    server = Server(url)
    try:
        if cap_mb:  # a server without the pixel bound (an older checkout) must not take the machine's memory
            import resource

            resource.prlimit(server.process.pid, resource.RLIMIT_AS, (cap_mb * 2**20, cap_mb * 2**20))
        with httpx.Client(base_url=server.base, timeout=60) as http:  # warm: the run's caches, one thumbnail
            for path in (f"/runs/{RUN}/samples", f"/runs/{RUN}/histogram?score=clipmem",
                         f"/runs/{RUN}/images/pair-0000010", f"/runs/{RUN}/neighbours/pair-0000010"):
                http.get(path)
        before = memory_mb(server.process.pid)
        out = load(server.base, clients, seconds, seed=clients, data_root=str(run.resolve().parent))
        after = memory_mb(server.process.pid)
        out.update(rss_before_mb=round(before["VmRSS"], 1), rss_after_mb=round(after["VmRSS"], 1),
                   rss_peak_mb=round(after["VmHWM"], 1))
        print(f"[{kind}] {json.dumps(out)}", flush=True)
        return out
    finally:
        server.stop()


def markdown(results: dict) -> str:
    lines = []
    for kind, row in results["databases"].items():
        lines += [f"**{kind}**: {row['requests']:,} requests from {row['clients']} clients in {row['seconds']} s; "
                  f"5xx (but shed) or no answer: {row['failures']}; error bodies showing a server path: {row['path_leaks']}; "
                  f"API resident memory {row['rss_before_mb']} MB before, {row['rss_after_mb']} MB after, "
                  f"peak {row['rss_peak_mb']} MB.", "",
                  "| kind | requests | status codes |", "|---|---|---|"]
        for name, counts in row["by_kind"].items():
            lines.append(f"| {name} | {sum(counts.values()):,} | "
                         + ", ".join(f"{s}: {n:,}" for s, n in counts.items()) + " |")
        lines.append(f"| all | {row['requests']:,} | " + ", ".join(f"{s}: {n:,}" for s, n in row["statuses"].items())
                     + " |")
        lines.append("")
    machine = results["machine"]
    return (f"Hostile load against `clipmem serve`. Machine: {machine['cpus']} CPUs, Python {machine['python']}, "
            f"load average {machine['load_average_start']} at start.\n\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients (default 16).")
    parser.add_argument("--seconds", type=float, default=60.0, help="How long the load lasts (default 60).")
    parser.add_argument("--postgres", default=os.environ.get("CLIPMEM_TEST_DATABASE_URL"),
                        help="PostgreSQL URL (default: CLIPMEM_TEST_DATABASE_URL); without one, SQLite only.")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="Measure one database only.")
    parser.add_argument("--memory-cap-mb", type=int, default=8192,
                        help="Address-space limit of the server process (default 8192; 0: none), so a server "
                             "that decodes bombs fails its allocations instead of exhausting the machine.")
    parser.add_argument("--label", default="", help="Appended to the result file names (e.g. 'before').")
    args = parser.parse_args()
    if not 1 <= args.clients <= 256:
        parser.error(f"--clients {args.clients}: use 1 to 256")
    if not 1 <= args.seconds <= 3600:
        parser.error(f"--seconds {args.seconds}: use 1 to 3600")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", args.label):
        parser.error(f"--label '{args.label}': use letters, digits, '_' and '-' only (it names the result files)")

    results = {"clients": args.clients, "seconds": args.seconds, "memory_cap_mb": args.memory_cap_mb,
               "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="clipmem-hostile-") as work:
        run = write_synthetic_run(Path(work) / RUN, *SIZES, seed=6)
        plant_hostile_images(run / "data" / "images")
        results["databases"] = each_database(
            args.only, args.postgres, f"sqlite:///{Path(work) / 'hostile.db'}",
            lambda kind, url: bench_database(kind, url, run, args.clients, args.seconds, args.memory_cap_mb))
    write_results("hostile_load", args.label, results, markdown(results))
    if any(row["failures"] for row in results["databases"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
