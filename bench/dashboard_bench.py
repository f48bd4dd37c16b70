"""Time to the first rendered grid on Explore, measured in a real browser.

For each run: ingest it into a fresh SQLite database, start `clipmem serve` and
`clipmem ui` on free ports, then open Explore in headless Chromium (Playwright) and
measure from navigation start to the moment the grid's first thumbnail is visible and
decoded. "cold" is the first load after both servers started (Streamlit compiles the
pages, the backend loads the run); "warm" is the median of later loads, each in a new
browser context (a new Streamlit session, nothing cached in the browser).

    python bench/dashboard_bench.py                     # the demo run (runs/demo, from `make demo`)
    python bench/dashboard_bench.py --million           # also the 1,000,000-pair run of backend_bench.py
    python bench/dashboard_bench.py --demo-run PATH     # another finished run directory

Target: <= 2 s for the demo run. Results go to bench/results/dashboard_bench.json and are
printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.frontend.stack import (CHROMIUM, GRID_IMAGE, backend, chromium, dashboard,  # noqa: E402
                                  ingest)

RESULTS = ROOT / "bench" / "results" / "dashboard_bench.json"
TARGET_S = 2.0
MILLION = 1_000_000

FIRST_THUMBNAIL_VISIBLE = f"""() => {{
    const img = document.querySelector('{GRID_IMAGE}');
    if (!img || !img.complete || img.naturalWidth === 0) return null;
    const box = img.getBoundingClientRect();
    return box.width > 0 && box.height > 0 ? performance.now() : null;
}}"""


def time_to_grid(browser, url: str, timeout_s: float = 120) -> float:
    """Seconds from navigation start to the first grid thumbnail visible, in a fresh browser context."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    try:
        page = context.new_page()
        page.goto(url, wait_until="commit")
        handle = page.wait_for_function(FIRST_THUMBNAIL_VISIBLE, timeout=timeout_s * 1000, polling="raf")
        return handle.json_value() / 1000
    finally:
        context.close()


def million_run(work: Path) -> Path:
    """The 1,000,000-scored-pair run of bench/backend_bench.py (its generator, and its copy when that
    benchmark already wrote one into the same work folder)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("backend_bench", ROOT / "bench" / "backend_bench.py")
    backend_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend_bench)
    work.mkdir(parents=True, exist_ok=True)
    return backend_bench.run_dir(work, MILLION, 32)


def measure(label: str, run_dir: Path, warm_loads: int, work: Path) -> dict:
    database = f"sqlite:///{work / (label + '.db')}"
    started = time.perf_counter()
    ingest(run_dir, database, label, work / "ingest.log")
    ingest_s = time.perf_counter() - started
    load = os.getloadavg()[0]  # the CPU is shared: a busy machine slows the browser down most
    with backend(database, work) as api_url, dashboard(api_url, work) as ui_url, chromium() as browser:
        import httpx

        runs = httpx.get(f"{api_url}/runs", timeout=30).json()
        run = next(r for r in runs if r["name"] == label)
        url = f"{ui_url}/?run={run['name']}"  # Explore is the default page
        cold = time_to_grid(browser, url)
        warm = [time_to_grid(browser, url) for _ in range(warm_loads)]
    return {"run": label, "run_dir": str(run_dir), "scored_pairs": run["n_scored"], "ingest_s": round(ingest_s, 2),
            "cold_s": round(cold, 3), "warm_median_s": round(statistics.median(warm), 3),
            "warm_max_s": round(max(warm), 3), "warm_loads": warm_loads, "target_s": TARGET_S,
            "meets_target": statistics.median(warm) <= TARGET_S, "load_avg_1m": round(load, 2),
            "cpus": os.cpu_count()}


def markdown(rows: list[dict]) -> str:
    lines = ["| run | scored pairs | ingest (s) | first grid, cold (s) | first grid, warm median (s) | "
             "warm max (s) | ≤ 2 s | load avg |",
             "|---|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['scored_pairs']:,} | {r['ingest_s']:.1f} | {r['cold_s']:.2f} | "
                     f"{r['warm_median_s']:.2f} | {r['warm_max_s']:.2f} | {'yes' if r['meets_target'] else 'no'} | "
                     f"{r.get('load_avg_1m', float('nan')):.1f} on {r.get('cpus', '?')} CPUs |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-run", type=Path, default=ROOT / "runs" / "demo",
                        help="finished run directory to measure as the demo run (default runs/demo)")
    parser.add_argument("--million", action="store_true", help="also measure a 1,000,000-pair synthetic run")
    parser.add_argument("--skip-demo", action="store_true", help="measure only the 1,000,000-pair run")
    parser.add_argument("--warm-loads", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipmem-bench"),
                        help="where the 1,000,000-pair run is written (shared with bench/backend_bench.py)")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium (Playwright's own download does not work here)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dashboard_bench_") as tmp:
        work = Path(tmp)
        if not args.skip_demo:
            if not (args.demo_run / "COMPLETE").is_file():
                sys.exit(f"{args.demo_run} is not a finished run: run `make demo` first or pass --demo-run PATH")
            rows.append(measure("demo", args.demo_run, args.warm_loads, work))
            print(markdown(rows[-1:]), flush=True)
        if args.million:
            rows.append(measure("million", million_run(args.work), args.warm_loads, work))
    for row in rows:
        row["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    # keep the other runs' latest results (the million-pair run is measured less often)
    measured = {row["run"] for row in rows}
    earlier = json.loads(RESULTS.read_text())["results"] if RESULTS.is_file() else []
    rows = [r for r in earlier if r["run"] not in measured] + rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"results": rows}, indent=2))
    print()
    print(markdown(rows))
    print(f"\n(results in {RESULTS.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
