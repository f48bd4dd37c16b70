"""The terminal output every layer's commands share: one console, and one way to fail on a ClipmemError."""

from __future__ import annotations

import typer
from rich.console import Console

from clipmem.scoring.errors import ClipmemError

console = Console()
err_console = Console(stderr=True)


def fail(exc: ClipmemError) -> None:
    """Print the error as one line and exit with status 2 (a problem with the input, not a crash)."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
