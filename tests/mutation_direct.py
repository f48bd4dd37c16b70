"""Check chosen mutmut mutants by calling plain test functions in one process (used when `mutmut run` is too slow).

mutmut's mutated code picks the active mutant at every call from MUTANT_UNDER_TEST, so one process can try many
mutants in turn without mutmut's per-mutant process and pytest session: it imports the named test functions once,
checks that they pass with no mutant active and fail with mutmut's forced failure, then runs them under each mutant
whose name matches a pattern. Any exception (or the 60-second alarm) kills the mutant. Results go to a JSON file
(name -> killed / survived / timeout) and runs resume from it. Run it from mutants/ after `mutmut run` has made
the mutants (docs/testing.md):

    cd mutants && ../.venv/bin/python ../tests/mutation_direct.py OUT.json "clipmem.scoring.splits.x_plan_*" -- \
        test_mutation_kills:test_a_kfold_plan_deals_the_shuffled_pool_round_robin test_splits:test_bad_sizes

Parametrized tests run once per parameter set; a `tmp_path` argument gets a fresh temporary folder; any other
argument must be a fixture of the test's own module that takes no arguments (test_score_properties' `memorized`):
its function is called afresh for every test run, so each mutant recomputes it.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from _pytest.outcomes import OutcomeException


class Alarm(Exception):
    pass


def _on_alarm(*_):
    raise Alarm()


def cases(fn):
    """The keyword sets of a test: one, or one per parameter set of its pytest.mark.parametrize."""
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize":
            argnames, values = mark.args[0], mark.args[1]
            argnames = [a.strip() for a in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
            for v in values:
                v = getattr(v, "values", v)
                yield dict(zip(argnames, v if len(argnames) > 1 else (v,)))
            return
    yield {}


def fixture_value(fn, name: str):
    """A module fixture of `fn`'s module, computed now from its undecorated function."""
    fixture = getattr(sys.modules[fn.__module__], name, None)
    for unwrap in (lambda f: f._get_wrapped_function(), lambda f: f.__pytest_wrapped__.obj):
        try:
            function = unwrap(fixture)
        except AttributeError:
            continue
        return function()  # outside the try: an error of the mutated code inside the fixture kills the mutant
    raise SystemExit(f"{fn.__name__}: argument {name} is neither tmp_path, a parameter nor a module fixture")


def run_tests(tests) -> None:
    for fn in tests:
        for kwargs in cases(fn):
            for name in inspect.signature(fn).parameters:
                if name == "tmp_path":
                    kwargs["tmp_path"] = Path(tempfile.mkdtemp())
                elif name not in kwargs:
                    kwargs[name] = fixture_value(fn, name)
            fn(**kwargs)


def main(argv: list[str]) -> None:
    cut = argv.index("--")
    out_path, patterns, specs = Path(argv[0]), argv[1:cut], argv[cut + 1:]
    sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests"), os.path.join(os.getcwd(), "tests/scoring")]
    names = sorted(key for meta in Path("clipmem/scoring").glob("*.py.meta")
                   for key in json.loads(meta.read_text())["exit_code_by_key"]
                   if any(fnmatch.fnmatch(key, p) for p in patterns))
    tests = [getattr(importlib.import_module(mod), fn) for mod, fn in (spec.split(":") for spec in specs)]
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    signal.signal(signal.SIGALRM, _on_alarm)
    os.environ["MUTANT_UNDER_TEST"] = ""
    run_tests(tests)  # the clean code passes
    os.environ["MUTANT_UNDER_TEST"] = "fail"
    try:
        run_tests(tests)
    except (Exception, OutcomeException):  # noqa: BLE001 - mutmut's forced failure is seen: the tests run it
        pass
    else:
        raise SystemExit("the tests pass under mutmut's forced failure: they do not reach the mutated code")
    for name in names:
        if name in results:
            continue
        os.environ["MUTANT_UNDER_TEST"] = name
        start = time.time()
        signal.alarm(60)
        try:
            run_tests(tests)
            results[name] = "survived"
        except Alarm:
            results[name] = "timeout"
        except (Exception, OutcomeException):  # noqa: BLE001 - any failure kills the mutant (pytest.raises and
            # pytest.fail raise OutcomeException, a BaseException)
            results[name] = "killed"
        finally:
            signal.alarm(0)
        print(f"{name}: {results[name]} ({time.time() - start:.1f}s)", flush=True)
        out_path.write_text(json.dumps(results, indent=1))
    os.environ["MUTANT_UNDER_TEST"] = ""


if __name__ == "__main__":
    main(sys.argv[1:])
