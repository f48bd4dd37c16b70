"""A missing prerequisite skips locally, with its reason, and fails under CI (tests/prerequisites.py)."""

from __future__ import annotations

import os
import subprocess
import sys
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


# (local and unset is every local run without PostgreSQL: the backend tests' own skip shows it)
@pytest.mark.parametrize("url, ci", [(None, "true"), (UNREACHABLE, "true"), (UNREACHABLE, "")],
                         ids=["unset-ci", "unreachable-ci", "unreachable-local"])
def test_postgresql_half_skips_locally_and_fails_under_ci(url, ci):
    """The real skip site (tests/backend/conftest.py), run in a child pytest: the PostgreSQL case of one test."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "CLIPMEM_TEST_DATABASE_URL")}
    env["CI"] = ci
    if url:
        env["CLIPMEM_TEST_DATABASE_URL"] = url
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", POSTGRES_TEST,
                            "-k", "postgresql"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    reason = "is not set" if url is None else "is unreachable"
    if ci:
        assert child.returncode == 1 and "1 error" in child.stdout and reason in child.stdout, child.stdout
        assert "CI is set" in child.stdout
    else:
        assert child.returncode == 0 and "1 skipped" in child.stdout and reason in child.stdout, child.stdout
