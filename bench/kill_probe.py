"""SIGKILL probe: ingest and training killed at random moments, then checked and resumed.

Ingest (SQLite, and PostgreSQL with --postgres): a made-up run (backend.synthetic_run) of
--pairs scored pairs is ingested as run "probe" by `clipmem ingest` in a subprocess that is
killed with SIGKILL after a seeded random delay within one measured ingest's duration. The
kills alternate between a first ingest and an `--replace` of the ingested run (whose pairs
carry a user tag). After each kill the database must hold no trace of a half-ingested run:
no run left under its placeholder name, no rows or PostgreSQL partitions of a run that does
not exist, and every run's rows complete (samples, scores, embedding points, its score and
embedding-row snapshots read back whole, embedding blocks; SQLite's integrity_check ok); run "probe" is absent (first ingest killed
before its commit) or complete, the old one or the new one, and a replaced run's user tag is
on whichever is there. Then the ingest is run again to the end and checked the same way.
Whether the kill caught the ingest inside its write transaction is recorded (SQLite: its
rollback journal exists; PostgreSQL: pg_stat_activity shows its transaction open).

Training (`clipmem run` on the built-in tiny configuration, clipmem-tiny, CPU): one run goes
uninterrupted, its phases timed (start, before the settings are saved; split; training before
epoch 1 and after each checkpoint; scoring). Then for each of --train-kills kill points a fresh run with the same arguments is
killed inside one phase (mid-split, mid-training past the first checkpoint, mid-scoring, then
the other epochs): a seeded fraction of the phase's uninterrupted length after it begins, or
as it ends if that comes first. It is continued with `clipmem run --out RUN_DIR --resume`
(the run's saved settings). Its scores.parquet must equal the uninterrupted run's bit for bit
(every score column and per-view alignment), and so must the weights digests of
train_summary.json. The phase the kill hit is read off the files present at that moment.

    .venv/bin/python bench/kill_probe.py --ingest-kills 10 --train-kills 3 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Prints a summary and writes bench/results/kill_probe.json. Counts are bounded (at most 100
ingest kills per database and 10 training kill points).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

RUN = "probe"
TAG = "probe-kept"
PER_RUN_TABLES = ("samples", "scores", "embedding_points", "embedding_blocks", "run_snapshots", "thumbnails", "tags")
APP_NAME = "clipmem-kill-probe"
MAX_INGEST_KILLS, MAX_TRAIN_KILLS = 100, 10


def clipmem(*args) -> list[str]:
    return [sys.executable, "-m", "clipmem", *map(str, args)]


def env_for(database_url: str | None = None, threads: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = str(threads)
    if database_url:
        env["CLIPMEM_DATABASE_URL"] = database_url
    return env


def run_to_end(cmd, env) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


# ---------------------------------------------------------------- ingest

class Database:
    """One database the probe ingests into: a fresh SQLite file, or a fresh schema of a PostgreSQL database."""

    def __init__(self, kind: str, work: Path, postgres: str | None = None):
        self.kind = kind
        self.schema = None
        if kind == "sqlite":
            self.file = work / "probe.db"
            self.url = f"sqlite:///{self.file}"
        else:
            self.schema = f"kill_probe_{uuid.uuid4().hex[:10]}"
            self.admin = create_engine(postgres)
            with self.admin.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {self.schema}"))
            separator = "&" if "?" in postgres else "?"
            self.url = f"{postgres}{separator}options=-csearch_path%3D{self.schema}&application_name={APP_NAME}"
        self.engine = create_engine(self.url)
        from clipmem.backend.db import migrate  # the backend: torch-free, quick to import

        migrate(self.engine)

    def drop(self) -> None:
        self.engine.dispose()
        if self.schema:
            with self.admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {self.schema} CASCADE"))
            self.admin.dispose()

    def in_transaction(self) -> bool:
        """Whether an ingest's write transaction is open right now."""
        if self.kind == "sqlite":
            return Path(f"{self.file}-journal").exists()  # ingest writes through a rollback journal
        with self.admin.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a AND xact_start IS NOT NULL "
                "AND pid <> pg_backend_pid()"), {"a": APP_NAME}).scalar())

    def problems(self) -> tuple[list[str], dict | None]:
        """What is wrong with the database's runs (nothing, after any kill), and run "probe" as it is."""
        self.engine.dispose()  # a fresh connection: SQLite rolls a hot journal back on open
        from clipmem.backend.snapshots import EMBEDDING_ROWS, SCORES, read_snapshot

        found = []
        with self.engine.connect() as conn:
            runs = {r.id: r for r in conn.execute(text(
                "SELECT id, name, n_samples, n_scored, n_embedded FROM runs")).all()}
            for r in runs.values():
                if r.name.startswith("~ingesting-"):
                    found.append(f"run {r.id} left under its placeholder name {r.name}")
            for table in PER_RUN_TABLES:
                orphans = set(conn.execute(text(f"SELECT DISTINCT run_id FROM {table}")).scalars()) - set(runs)
                if orphans:
                    found.append(f"{table} holds rows of missing run(s) {sorted(orphans)}")
            if self.kind == "postgresql":
                parts = conn.execute(text(
                    "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :s AND relname ~ '_run_[0-9]+$'"), {"s": self.schema}).scalars().all()
                stray = [p for p in parts if int(p.rsplit("_", 1)[1]) not in runs]
                if stray:
                    found.append(f"partitions of missing runs: {stray}")
            else:
                check = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
                if check != "ok":
                    found.append(f"integrity_check: {check}")
            for r in runs.values():
                counts = {t: conn.execute(text(f"SELECT count(*) FROM {t} WHERE run_id = :r"), {"r": r.id}).scalar()
                          for t in PER_RUN_TABLES}
                want = {"samples": r.n_samples, "scores": r.n_scored, "embedding_points": r.n_embedded}
                short = {t: (counts[t], n) for t, n in want.items() if counts[t] != n}
                for name, rows in ((SCORES, r.n_scored), (EMBEDDING_ROWS, r.n_embedded)):
                    snapshot = read_snapshot(conn, r.id, name)
                    if snapshot is None or snapshot.num_rows != rows:
                        short[f"snapshot {name}"] = (None if snapshot is None else snapshot.num_rows, rows)
                if short or counts["embedding_blocks"] < 4:
                    found.append(f"run {r.name} is incomplete: {short or counts}")
            probe = next((r for r in runs.values() if r.name == RUN), None)
            state = None
            if probe is not None:
                tags = conn.execute(text("SELECT count(*) FROM tags WHERE run_id = :r AND tag = :t"),
                                    {"r": probe.id, "t": TAG}).scalar()
                state = {"id": probe.id, "tagged": tags}
        return found, state

    def tag_probe(self, pairs: int) -> int:
        with self.engine.begin() as conn:
            rid = conn.execute(text("SELECT id FROM runs WHERE name = :n"), {"n": RUN}).scalar_one()
            now = datetime.now(timezone.utc)
            conn.execute(text("INSERT INTO tags (run_id, pair_index, tag, created_at) VALUES (:r, :p, :t, :c)"),
                         [{"r": rid, "p": p, "t": TAG, "c": now} for p in range(pairs)])
        return rid

    def delete_probe(self) -> None:
        from clipmem.backend.store import delete_run

        with self.engine.begin() as conn:
            rid = conn.execute(text("SELECT id FROM runs WHERE name = :n"), {"n": RUN}).scalar()
            if rid is not None:
                delete_run(conn, rid)


def watched(db: Database, cmd: list[str], env: dict) -> tuple[float, float, float]:
    """Run `cmd` to the end: (seconds, first and last moment its write transaction was seen open)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    while proc.poll() is None:
        if db.in_transaction():
            seen.append(time.perf_counter() - started)
        time.sleep(0.02)
    duration = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(map(str, cmd))}\n{proc.stderr.read()[-3000:]}")
    return (duration, seen[0], seen[-1]) if seen else (duration, 0.0, duration)


def ingest_cmd(run_dir: Path, replace: bool) -> list[str]:
    return clipmem("ingest", run_dir, "--name", RUN, *(["--replace"] if replace else []))


def probe_ingest(db: Database, run_dir: Path, kills: int, rng: random.Random, tagged_pairs: int = 25) -> dict:
    env = env_for(db.url, threads=2)
    # one ingest to the end, watched: when its transaction opens and closes (most of the command's time is
    # the interpreter starting, where a kill tells nothing)
    db.delete_probe()
    duration, first, last = watched(db, ingest_cmd(run_dir, False), env)
    low, high = max(0.0, first - 0.5), min(duration, last + 0.3)
    rows = []
    attempts = 0
    while len(rows) < kills and attempts < 3 * kills:
        attempts += 1
        mode = "replace" if len(rows) % 2 else "first"
        if mode == "first":
            db.delete_probe()
            old_id = None
        else:
            state = db.problems()[1]
            if state is None:
                run_to_end(ingest_cmd(run_dir, False), env)
                state = db.problems()[1]
            if state["tagged"] == 0:
                db.tag_probe(tagged_pairs)
            old_id = state["id"]
        delay = rng.uniform(low, high)
        proc = subprocess.Popen(ingest_cmd(run_dir, mode == "replace"), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        open_transaction = db.in_transaction()
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        if code != -signal.SIGKILL:
            continue  # it finished before the kill: not a kill; drawn again
        found, state = db.problems()
        if state is None:
            outcome = "absent" if mode == "first" else "replaced run lost"
        elif state["id"] == old_id:
            outcome = "old run kept"
        else:
            outcome = "committed"
        if mode == "replace" and state is not None and state["tagged"] != tagged_pairs:
            found.append(f"run {RUN} has {state['tagged']} of the {tagged_pairs} tagged pairs after the kill")
        if mode == "replace" and state is None:
            found.append("the replaced run is gone and no new one is there")
        # then to the end, and the same checks
        run_to_end(ingest_cmd(run_dir, state is not None), env)
        after, state_after = db.problems()
        if state_after is None:
            after.append("the ingest run after the kill left no run")
        elif mode == "replace" and state_after["tagged"] != tagged_pairs:
            after.append(f"user tag on {state_after['tagged']} of {tagged_pairs} pairs after the rerun")
        rows.append({"mode": mode, "kill_after_s": round(delay, 3), "in_transaction": open_transaction,
                     "outcome": outcome, "problems_after_kill": found, "problems_after_rerun": after})
        print(f"  {db.kind:10s} kill {len(rows):3d} ({mode:7s}) at {delay:5.2f} s"
              f"{' in transaction' if open_transaction else '               '}: {outcome:12s} "
              f"{'OK' if not found and not after else found + after}", flush=True)
    return {"database": db.kind, "ingest_seconds": round(duration, 2),
            "transaction_window_s": [round(first, 2), round(last, 2)], "kills": len(rows),
            "in_transaction": sum(r["in_transaction"] for r in rows),
            "outcomes": {o: sum(r["outcome"] == o for r in rows) for o in sorted({r["outcome"] for r in rows})},
            "half_ingested": sum(bool(r["problems_after_kill"]) for r in rows),
            "rerun_problems": sum(bool(r["problems_after_rerun"]) for r in rows), "rows": rows}


# ---------------------------------------------------------------- training

def phase_of(run_dir: Path) -> str:
    """Which step a run directory is in, from the files present."""
    if (run_dir / "COMPLETE").exists():
        return "finished"
    if (run_dir / "f.pt").exists() and (run_dir / "g.pt").exists():
        return "score"
    epochs = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("epoch_*.pt")) \
        if (run_dir / "checkpoints").is_dir() else []
    if epochs:
        return f"train (after epoch {epochs[-1]})"
    if (run_dir / "split.json").exists():
        return "train (before epoch 1)"
    if (run_dir / "config.json").exists():  # `clipmem run` saves its settings first, then splits
        return "split"
    return "start"


def compare_scores(a: Path, b: Path) -> tuple[bool, float]:
    """(bit-identical, largest absolute difference) of two scores.parquet files, pair by pair."""
    x = pd.read_parquet(a).sort_values("sample_id").reset_index(drop=True)
    y = pd.read_parquet(b).sort_values("sample_id").reset_index(drop=True)
    if list(x.columns) != list(y.columns) or not x["sample_id"].equals(y["sample_id"]):
        return False, float("inf")
    same, worst = True, 0.0
    for column in x.columns:
        if isinstance(x[column].iloc[0], np.ndarray):  # per-view alignments
            u, v = np.concatenate(x[column].to_list()), np.concatenate(y[column].to_list())
        elif pd.api.types.is_numeric_dtype(x[column].dtype):
            u, v = x[column].to_numpy(), y[column].to_numpy()
        else:
            same &= bool(x[column].equals(y[column]))
            continue
        same &= bool(u.tobytes() == v.tobytes())
        worst = max(worst, float(np.max(np.abs(u.astype(float) - v.astype(float)))) if len(u) else 0.0)
    return same, worst


def weights_digest(run_dir: Path) -> dict:
    return json.loads((run_dir / "train_summary.json").read_text())["weights_sha256"]


def watch_phases(cmd: list[str], run_dir: Path) -> tuple[float, dict[str, tuple[float, float]]]:
    """Run `cmd` to the end, noting when run_dir enters each phase: (seconds, {phase: (start, end)})."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env_for(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    starts = {}
    while proc.poll() is None:
        starts.setdefault(phase_of(run_dir), time.perf_counter() - started)
        time.sleep(0.05)
    duration = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(map(str, cmd))}\n{proc.stderr.read()[-3000:]}")
    order = sorted(starts, key=starts.get)
    ends = [starts[later] for later in order[1:]] + [duration]
    return duration, {phase: (starts[phase], end) for phase, end in zip(order, ends)}


def kill_targets(phases: dict[str, tuple[float, float]]) -> list[str]:
    """The phases to kill in, most telling first: mid-split, mid-training past a checkpoint, mid-scoring,
    then the other epochs."""
    first = ["split", "train (after epoch 1)", "score"]
    return [p for p in first if p in phases] + [p for p in phases if p not in (*first, "start", "finished")]


def probe_training(work: Path, kills: int, epochs: int, rng: random.Random) -> dict:
    data = work / "tiny-data"
    run_to_end(clipmem("synth", "--out", data, "--n", 900, "--seed", 3), env_for())
    args = ["--dataset", "folder", "--data", data, "--sizes", "600,120,120,60", "--model", "clipmem-tiny",
            "--epochs", epochs, "--batch-size", 128, "--device", "cpu", "--seed", 0]
    reference = work / "train-reference"
    duration, phases = watch_phases(clipmem("run", "--out", reference, *args), reference)
    print(f"  uninterrupted tiny run: {duration:.1f} s; phases (start, end s): "
          + ", ".join(f"{p} {a:.1f}-{b:.1f}" for p, (a, b) in phases.items()), flush=True)
    targets = kill_targets(phases)
    rows = []
    for k in range(kills):
        out = work / f"train-kill-{k}"
        target = targets[k % len(targets)]
        start, end = phases[target]
        wait = rng.uniform(0.2, 0.8) * (end - start)  # into the phase, as long as it took uninterrupted
        started = time.perf_counter()
        proc = subprocess.Popen(clipmem("run", "--out", out, *args), cwd=ROOT, env=env_for(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and phase_of(out) != target and time.perf_counter() - started < 10 * duration:
            time.sleep(0.02)
        entered = time.perf_counter()
        # into the phase; on a busier (or idler) machine than the reference's, at the latest when it ends
        while proc.poll() is None and time.perf_counter() - entered < wait and phase_of(out) == target:
            time.sleep(0.02)
        phase = phase_of(out)
        delay = time.perf_counter() - started
        proc.send_signal(signal.SIGKILL)
        killed = proc.wait() == -signal.SIGKILL
        row = {"target": target, "phase": phase, "kill_after_s": round(delay, 2), "killed": killed}
        if not killed:  # it ended before the kill: nothing to resume
            rows.append(row)
            print(f"  training kill {k + 1}: the run ended before the kill ({phase})", flush=True)
            continue
        resumed = subprocess.run(clipmem("run", "--out", out, "--resume"), cwd=ROOT, env=env_for(),
                                 capture_output=True, text=True)
        row["resume_exit"] = resumed.returncode
        if resumed.returncode == 0:
            identical, worst = compare_scores(reference / "scores.parquet", out / "scores.parquet")
            row.update(scores_bit_identical=identical, max_abs_difference=worst,
                       weights_identical=weights_digest(reference) == weights_digest(out))
        else:
            row["resume_error"] = (resumed.stderr or resumed.stdout).strip().splitlines()[-3:]
        rows.append(row)
        print(f"  training kill {k + 1} at {delay:5.1f} s ({phase}): resume exit {resumed.returncode}, "
              f"scores bit-identical: {row.get('scores_bit_identical')}, weights identical: "
              f"{row.get('weights_identical')}{'' if resumed.returncode == 0 else ' ' + str(row['resume_error'])}",
              flush=True)
    return {"epochs": epochs, "uninterrupted_seconds": round(duration, 1),
            "phases": {p: [round(a, 2), round(b, 2)] for p, (a, b) in phases.items()},
            "kills": sum(r["killed"] for r in rows),
            "bit_identical": sum(bool(r.get("scores_bit_identical")) and bool(r.get("weights_identical"))
                                 for r in rows), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingest-kills", type=int, default=10, help="kills per database (at most 100)")
    parser.add_argument("--train-kills", type=int, default=3, help="training kill points (at most 10)")
    parser.add_argument("--pairs", type=int, default=40_000, help="scored pairs of the ingested run")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the tiny training run")
    parser.add_argument("--postgres", help="PostgreSQL URL (a schema of its own is made and dropped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kill_probe.json")
    args = parser.parse_args()
    if not 0 <= args.ingest_kills <= MAX_INGEST_KILLS or not 0 <= args.train_kills <= MAX_TRAIN_KILLS:
        parser.error(f"--ingest-kills is at most {MAX_INGEST_KILLS}, --train-kills at most {MAX_TRAIN_KILLS}")
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "seed": args.seed, "ingest": [], "training": None}
    try:
        if args.ingest_kills:
            from clipmem.backend.synthetic_run import write_synthetic_run

            run_dir = work / "ingest-run"
            if not (run_dir / "COMPLETE").is_file():
                shutil.rmtree(run_dir, ignore_errors=True)
                half = args.pairs // 2
                write_synthetic_run(run_dir, half, args.pairs - half, half, max(1, args.pairs // 20),
                                    images="shared", seed=args.seed)
            kinds = ["sqlite"] + (["postgresql"] if args.postgres else [])
            for kind in kinds:
                db = Database(kind, work, args.postgres)
                try:
                    result["ingest"].append(probe_ingest(db, run_dir, args.ingest_kills, rng))
                finally:
                    db.drop()
        if args.train_kills:
            result["training"] = probe_training(work, args.train_kills, args.epochs, rng)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print()
    for part in result["ingest"]:
        print(f"ingest, {part['database']}: {part['kills']} kills ({part['in_transaction']} inside the write "
              f"transaction; outcomes {part['outcomes']}), {part['half_ingested']} left a half-ingested run, "
              f"{part['rerun_problems']} reruns had problems; one ingest takes {part['ingest_seconds']} s, its "
              f"transaction open from {part['transaction_window_s'][0]} to {part['transaction_window_s'][1]} s")
    if result["training"]:
        t = result["training"]
        print(f"training ({t['epochs']} epochs, {t['uninterrupted_seconds']} s uninterrupted): {t['kills']} kill "
              f"points, {t['bit_identical']} resumed to bit-identical scores and weights")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
