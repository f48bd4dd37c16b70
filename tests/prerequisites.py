"""What a test needs from the machine (Chromium, PostgreSQL, a figure exporter), and what happens without it.

Locally a missing prerequisite skips the tests that need it, with the reason (pytest -ra lists them). Under CI
(the CI variable set, as CI runs `.ci/run` with CI=true) the same absence fails the run: CI must not pass
green while the browser, PostgreSQL or figure-export tests silently did not run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """pytest.skip(reason) locally; pytest.fail under CI, naming the reason."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing prerequisite fails the run instead of skipping it)",
                    pytrace=False)
    pytest.skip(reason)
