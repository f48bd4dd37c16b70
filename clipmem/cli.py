"""`clipmem`: measure which image-caption pairs a CLIP model memorized.

A run directory holds one experiment: its config, split plan, the two reference
models f and g, and the scores. `clipmem run --out RUN_DIR` does every step on the
built-in synthetic data; the other commands run one step each.
"""

from __future__ import annotations

import typer

from clipmem.backend import cli as backend_cli
from clipmem.frontend import cli as frontend_cli
from clipmem.scoring import cli as scoring_cli
from clipmem.scoring.runtime import keep_freed_memory, prefer_passive_openmp

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(scoring_cli.app)
for register in (backend_cli.register, frontend_cli.register):
    commands = typer.Typer()
    register(commands)
    app.add_typer(commands)
# `clipmem experiment --ingest` stores each finished run; the scoring layer may not import the backend,
# so the backend's ingester is handed to it here.
scoring_cli.use_experiment_ingester(backend_cli.experiment_ingester)


def main() -> None:
    prefer_passive_openmp()
    keep_freed_memory()
    app()
