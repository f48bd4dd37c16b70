"""Kill rates per module from mutmut's results in mutants/ (run by `make mutation` after `mutmut run`).

killed / all mutants, and killed / checked mutants (those a selected fast test reaches and a run has tried:
neither "no test" nor "unchecked"). Timeouts count as killed, as mutmut counts them. Exit status 0: this only
reports.

`--direct FILE ...` lays the results of tests/mutation_direct.py (JSON: mutant -> killed / survived / timeout)
over mutmut's, for the mutants those files name; `-v` lists the survivors.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check"}


DIRECT = {"killed": 1, "survived": 0, "timeout": 36}


def direct_results(argv: list[str]) -> dict[str, int]:
    """Exit codes from the JSON files named after --direct."""
    if "--direct" not in argv:
        return {}
    out = {}
    for name in argv[argv.index("--direct") + 1:]:
        if name.startswith("-"):
            break
        out.update({key: DIRECT[value] for key, value in json.loads(Path(name).read_text()).items()})
    return out


def main(root: Path = Path("mutants")) -> None:
    direct = direct_results(sys.argv)
    total: Counter = Counter()
    survivors: list[str] = []
    print(f"{'module':<32}{'mutants':>8}{'killed':>8}{'survived':>9}{'no test':>8}{'timeout':>8}{'unchecked':>10}"
          f"{'kill/all':>9}{'kill/checked':>13}")
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        codes = {key: direct.get(key, code) for key, code in codes.items()}
        count = Counter(STATUS.get(code, "suspicious") if code is not None else "not checked"
                        for code in codes.values())
        survivors += [key for key, code in codes.items() if code == 0]
        total += count
        _row(str(meta.relative_to(root))[: -len(".meta")], count, len(codes))
    _row("all", total, sum(total.values()))
    if "-v" in sys.argv:
        print("\nsurvivors:", *survivors, sep="\n  ")


def _row(name: str, count: Counter, n: int) -> None:
    killed = count["killed"] + count["timeout"]
    covered = n - count["no tests"] - count["not checked"]
    print(f"{name:<32}{n:>8}{count['killed']:>8}{count['survived']:>9}{count['no tests']:>8}{count['timeout']:>8}"
          f"{count['not checked']:>10}{killed / max(n, 1):>9.1%}{killed / max(covered, 1):>13.1%}")


if __name__ == "__main__":
    main()
