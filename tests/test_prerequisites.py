"""A missing prerequisite skips locally, with its reason, and fails under CI (tests/prerequisites.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prerequisites import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_under_ci_a_missing_prerequisite_fails_naming_it(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no chromium here .*CI is set"):
        skip_or_fail("no chromium here")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_locally_a_missing_prerequisite_skips_with_its_reason(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception) as skipped:
        skip_or_fail("no chromium here")
    assert str(skipped.value) == "no chromium here"


POSTGRES_TEST = "tests/backend/test_experiments.py::test_experiment_override_needs_experiment_json"


UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"


CASES = {"unset-ci": (None, "true"), "unreachable-ci": (UNREACHABLE, "true"), "unreachable-local": (UNREACHABLE, "")}


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """The real skip site (tests/backend/conftest.py), run in a child pytest per case: the PostgreSQL case of one
    test. The three start at once: each spends its seconds importing on one core, so two cores finish them in about
    half the time of one after another. Output goes to files, so no child waits on a full pipe.
    {case: (exit code, stdout)}."""
    logs = tmp_path_factory.mktemp("children")
    started = {}
    for case, (url, ci) in CASES.items():
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "CLIPMEM_TEST_DATABASE_URL")}
        env["CI"] = ci
        if url:
            env["CLIPMEM_TEST_DATABASE_URL"] = url
        with open(logs / f"{case}.out", "w") as out, open(logs / f"{case}.err", "w") as err:
            started[case] = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
                                              POSTGRES_TEST, "-k", "postgresql"], cwd=ROOT, env=env, stdout=out,
                                             stderr=err)
    deadline = time.monotonic() + 300 * len(started)  # the 300 s each had when they ran one after another
    try:
        return {case: (child.wait(timeout=max(1.0, deadline - time.monotonic())), (logs / f"{case}.out").read_text())
                for case, child in started.items()}
    finally:
        for child in started.values():
            if child.poll() is None:
                child.kill()
                child.wait()


# (local and unset is every local run without PostgreSQL: the backend tests' own skip shows it)
@pytest.mark.parametrize("case", list(CASES))
def test_postgresql_half_skips_locally_and_fails_under_ci(children, case):
    url, ci = CASES[case]
    returncode, stdout = children[case]
    reason = "is not set" if url is None else "is unreachable"
    if ci:
        assert returncode == 1 and "1 error" in stdout and reason in stdout, stdout
        assert "CI is set" in stdout
    else:
        assert returncode == 0 and "1 skipped" in stdout and reason in stdout, stdout
