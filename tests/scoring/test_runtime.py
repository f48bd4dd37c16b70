"""Process-wide settings of the `clipmem` command (scoring.runtime): which commands get them, and when they stand
aside for the user's own."""

from __future__ import annotations

import os
import sys

import pytest

import clipmem.cli
from clipmem.scoring import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_malloc_settings_take_on_glibc_and_stand_aside_for_the_users(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_")]:
        monkeypatch.delenv(key)
    assert runtime.keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own tuning wins
    assert runtime.keep_freed_memory() is False


@pytest.mark.parametrize("argv, applied", [
    (["clipmem", "run", "--out", "x"], True), (["clipmem", "train", "x"], True), (["clipmem", "score", "x"], True),
    (["clipmem", "experiment", "--out", "x"], True), (["clipmem", "experiment-worker", "x", "1"], True),
    (["clipmem", "serve"], False), (["clipmem", "ui"], False), (["clipmem", "ingest", "x"], False), (["clipmem"], False),
])
def test_only_the_commands_that_run_models_keep_freed_memory(monkeypatch, argv, applied):
    calls = []
    monkeypatch.setattr(clipmem.cli, "keep_freed_memory", lambda: calls.append(True))
    monkeypatch.setattr(clipmem.cli, "app", lambda: None)
    monkeypatch.setattr(sys, "argv", argv)
    clipmem.cli.main()
    assert calls == ([True] if applied else [])
