"""A copy of the package's source tree, for tests that build or check it somewhere else than the checkout."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what a build of the distribution reads (the Dockerfile copies the same): clipmem/ links to the three layers
SOURCE = ("pyproject.toml", "README.md", "clipmem", "scoring", "backend", "frontend")


def copy_source(dest: Path) -> Path:
    """Copy the source tree into `dest` (symbolic links kept as links, no bytecode) and return `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest
