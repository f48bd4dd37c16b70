"""Reading speed of each source, and memory while planning the split of a 1,000,000-row CSV.

Each source holds the same N synthetic 32 px pairs; "read" indexes the source
(captions, ids, image references), "decode" opens and decodes every image once,
as `clipmem split` does when it verifies images. The planning figure reads a
1,000,000-row open_clip TSV (images need not exist for planning) and plans the
split, in a fresh process so its peak resident memory is its own.

    .venv/bin/python bench/source_throughput.py [--pairs 3000] [--csv-rows 1000000]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipmem.scoring.data.sources import load_dataset  # noqa: E402
from clipmem.scoring.config import SourceOptions, SynthConfig  # noqa: E402
from clipmem.scoring.data.base import Problems, verify_images  # noqa: E402
from clipmem.scoring.data.synthetic import write  # noqa: E402

PLAN_SNIPPET = """
import resource, sys, time
from pathlib import Path
from clipmem.scoring.config import SourceOptions
from clipmem.scoring.data.base import Problems
from clipmem.scoring.data.csvfile import read_csv
from clipmem.scoring.splits import SplitSizes, plan_splits
t = time.perf_counter()
ds = read_csv(Path(sys.argv[1]), SourceOptions(), Problems("fail"), check_files=False)
read = time.perf_counter() - t
plan = plan_splits(ds.ids, ds.truth, SplitSizes(0.85, 0.05, 0.05, 0.05), seed=0)
total = time.perf_counter() - t
print(len(ds), read, total, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def build_sources(folder_data: Path, work: Path) -> dict[str, tuple[str, str, SourceOptions]]:
    rows = [json.loads(x) for x in (folder_data / "metadata.jsonl").read_text().splitlines()]
    # COCO
    coco = {"images": [{"id": i, "file_name": r["file_name"]} for i, r in enumerate(rows)],
            "annotations": [{"id": len(r["text"]) * i + j, "image_id": i, "caption": c}
                            for i, r in enumerate(rows) for j, c in enumerate(r["text"])]}
    (work / "coco.json").write_text(json.dumps(coco))
    # CSV (tab-separated, relative paths)
    lines = ["filepath\ttitle"] + [f"{folder_data / r['file_name']}\t{c}" for r in rows for c in r["text"]]
    (work / "train.tsv").write_text("\n".join(lines) + "\n")
    # WebDataset: 4 shards
    shards = work / "shards"
    shards.mkdir()
    per = -(-len(rows) // 4)
    for s in range(4):
        with tarfile.open(shards / f"{s:06d}.tar", "w") as tar:
            for r in rows[s * per:(s + 1) * per]:
                for name, data in ((f"{r['id']}.png", (folder_data / r["file_name"]).read_bytes()),
                                   (f"{r['id']}.json", json.dumps({"caption": r["text"]}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return {
        "folder": ("folder", str(folder_data), SourceOptions()),
        "coco": ("coco", str(work / "coco.json"), SourceOptions(coco_images=str(folder_data))),
        "csv": ("csv", str(work / "train.tsv"), SourceOptions()),
        "webdataset": ("webdataset", str(shards / "{000000..000003}.tar"), SourceOptions()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--csv-rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "source_throughput.json")
    args = parser.parse_args()
    results: dict = {"pairs": args.pairs, "sources": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write(SynthConfig(n_pairs=args.pairs, faults={}), work / "folder")
        for name, (kind, path, options) in build_sources(data, work).items():
            t = time.perf_counter()
            problems = Problems("fail")
            dataset = load_dataset(kind, path, options, problems)
            read = time.perf_counter() - t
            verify_images(dataset, problems)
            total = time.perf_counter() - t
            results["sources"][name] = {"read_pairs_per_s": len(dataset) / read,
                                        "read_and_decode_pairs_per_s": len(dataset) / total}
        big = work / "big.tsv"
        with open(big, "w") as fh:
            fh.write("filepath\ttitle\n")
            for i in range(args.csv_rows):
                fh.write(f"images/{i // 1000:04d}/{i:07d}.jpg\ta photo of item {i} on a table\n")
        proc = subprocess.run([sys.executable, "-c", PLAN_SNIPPET, str(big)], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], check=True)
        n, read, total, peak = proc.stdout.split()
        results["csv_planning"] = {"rows": int(n), "read_seconds": float(read), "read_and_plan_seconds": float(total),
                                   "peak_rss_mb": float(peak)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"| source ({args.pairs} pairs, 32 px PNG) | read pairs/s | read + decode pairs/s |\n|---|---|---|")
    for name, r in results["sources"].items():
        print(f"| {name} | {r['read_pairs_per_s']:,.0f} | {r['read_and_decode_pairs_per_s']:,.0f} |")
    p = results["csv_planning"]
    print(f"\nplanning splits of a {p['rows']:,}-row CSV: {p['read_and_plan_seconds']:.1f} s, "
          f"peak memory {p['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
