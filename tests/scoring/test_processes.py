"""Launchers leave no child process behind: scoring.processes, and `clipmem experiment` stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from clipmem.scoring.processes import stop_processes
from tests.processes import wait_for_members, wait_until_empty

CLIPMEM = [sys.executable, "-m", "clipmem"]
SLEEPER = "import time; print('ready', flush=True); time.sleep(120)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(120)")


def started(code: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"  # its signal handling is in place
    return process


def test_stop_processes_terminates_and_kills_what_ignores_sigterm():
    polite, stubborn = started(SLEEPER), started(STUBBORN)
    begun = time.monotonic()
    stop_processes([polite, stubborn], timeout=1.0)
    assert time.monotonic() - begun < 5
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL


def test_sigterm_to_clipmem_experiment_stops_its_training_workers(tiny_data, tmp_path):
    log = tmp_path / "experiment.log"
    command = [*CLIPMEM, "experiment", "--out", str(tmp_path / "exp"), "--dataset", "folder", "--data", str(tiny_data),
               "--sizes", "600,120,120,60", "--grids", "captions", "--seeds", "1", "--model", "clipmem-tiny",
               "--epochs", "200", "--jobs", "1", "--no-ingest"]
    with open(log, "wb") as out:
        # a session of its own: its process group then holds the launcher and the workers it starts
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        members = wait_for_members(launcher.pid, at_least=2, timeout=120)
        assert any("experiment-worker" in m for m in members), (members, log.read_text()[-2000:])
        os.kill(launcher.pid, signal.SIGTERM)  # the launcher alone, as `kill` or `docker stop` would
        launcher.wait(timeout=30)
        assert wait_until_empty(launcher.pid, timeout=15) == [], "training workers outlived `clipmem experiment`"
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait(timeout=10)
