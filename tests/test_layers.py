"""The import-linter contracts of pyproject.toml hold on the tree, and each one catches what it protects.

lint-imports reads the package from its working directory, so each case runs it on a copy of the source
with one import added that the contract forbids. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from source_tree import ROOT, copy_source

LAYERS = "Layers import downward only: root -> frontend, backend -> scoring"
NO_TORCH = "The backend and the dashboard never load torch"
HTTP_ONLY = "The dashboard reaches data only through the HTTP API"
ACYCLIC = "No import cycles inside a layer"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    # the console script's own entry point, run by this interpreter: no dependence on where scripts are installed
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                                     "sys.exit(lint_imports_command())", "--no-cache"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in (LAYERS, NO_TORCH, HTTP_ONLY, ACYCLIC):
        assert f"{contract} KEPT" in result.stdout


@pytest.mark.parametrize("module, statement, contract, reported", [
    ("scoring/score.py", "import clipmem.backend.settings", LAYERS,
     "clipmem.scoring.score -> clipmem.backend.settings"),
    ("backend/ingest.py", "import clipmem.frontend.charts", LAYERS,
     "clipmem.backend.ingest -> clipmem.frontend.charts"),
    ("backend/settings.py", "import torch", NO_TORCH, "clipmem.backend.settings -> torch"),
    ("frontend/charts.py", "import sqlalchemy", HTTP_ONLY, "clipmem.frontend.charts -> sqlalchemy"),
    ("scoring/errors.py", "import clipmem.scoring.console", ACYCLIC, "No cycles are allowed in clipmem.scoring."),
], ids=["scoring-imports-backend", "backend-imports-frontend", "backend-imports-torch",
        "frontend-imports-sqlalchemy", "cycle-in-scoring"])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, statement, contract, reported):
    tree = copy_source(tmp_path / "tree")
    with open(tree / module, "a", encoding="utf-8") as file:
        file.write(f"\n{statement}\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    assert reported in result.stdout, result.stdout
