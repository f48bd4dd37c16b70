"""`clipmem`: measure which image-caption pairs a CLIP model memorized.

A run directory holds one experiment: its config, split plan, the two reference
models f and g, and the scores. `clipmem run --out RUN_DIR` does every step on the
built-in synthetic data; the other commands run one step each.
"""

from __future__ import annotations

import sys

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


# the commands that run the models keep freed memory for their next batch (scoring.runtime.keep_freed_memory);
# the API server and the dashboard keep glibc's defaults, which hand memory back between requests
MODEL_COMMANDS = ("run", "train", "score", "experiment", "experiment-worker")


def main() -> None:
    prefer_passive_openmp()
    if sys.argv[1:2] and sys.argv[1] in MODEL_COMMANDS:
        keep_freed_memory()
    app()
