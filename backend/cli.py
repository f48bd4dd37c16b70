"""`clipmem ingest` and `clipmem serve`, registered on the `clipmem` command by clipmem/cli.py.

Imports of the database and web stack happen inside the commands so `clipmem --help`
stays fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from clipmem.scoring.console import console, err_console
from clipmem.scoring.console import fail as _fail
from clipmem.scoring.errors import ClipmemError

DATABASE_HELP = ("The database is CLIPMEM_DATABASE_URL (default: sqlite:///clipmem.db, a file in the current "
                 "folder; PostgreSQL: postgresql+psycopg://user@host:5432/dbname).")
INGEST_HELP = ("Load a finished run into the database, in one transaction, so `clipmem serve` can show it. "
               + DATABASE_HELP)
SERVE_HELP = ("Start the HTTP API over the ingested runs (interactive docs at http://HOST:PORT/docs). "
              + DATABASE_HELP + " Set CLIPMEM_API_TOKEN to require 'Authorization: Bearer <token>' on every "
              "endpoint but /health, the docs and /openapi.json included.")


def _database_error(exc: Exception, url: str) -> ClipmemError:
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return ClipmemError(f"database {shown}: {reason}")


@contextmanager
def database(url: str, bulk_write: bool = False):
    """An engine on `url` with the schema migrated, disposed afterwards; a database error becomes one
    ClipmemError line naming the database (its password hidden)."""
    from sqlalchemy.exc import SQLAlchemyError

    from clipmem.backend.db import make_engine, migrate

    engine = make_engine(url, bulk_write=bulk_write)
    try:
        migrate(engine)
        yield engine
    except SQLAlchemyError as exc:
        raise _database_error(exc, url) from None
    finally:
        engine.dispose()


@contextmanager
def experiment_ingester():
    """`on_finished` for scoring.experiment.run_experiment: ingest each finished run into
    CLIPMEM_DATABASE_URL under its experiment name, keeping runs the database already has."""
    from sqlalchemy import select

    from clipmem.backend.ingest import ingest as ingest_run
    from clipmem.backend.models import Run
    from clipmem.backend.settings import Settings

    settings = Settings()
    with database(settings.database_url, bulk_write=True) as engine:
        def on_finished(run, name: str) -> None:
            with engine.connect() as conn:
                if conn.execute(select(Run.id).where(Run.name == name)).first() is not None:
                    return
            ingest_run(engine, run.path, name=name, map_method=settings.map_method,
                       stored_thumbnail_px=settings.stored_thumbnail_px)

        yield on_finished


def register(app: typer.Typer) -> None:
    """Add the backend's commands to the `clipmem` CLI."""

    @app.command(help=INGEST_HELP)
    def ingest(
        run_dir: Path = typer.Argument(..., help="A finished run directory (made by `clipmem run` or "
                                                 "`clipmem score`; it has a COMPLETE marker)."),
        name: Optional[str] = typer.Option(None, "--name", help="Name of the run in the database and in URLs "
                                                                "(default: the directory's name)."),
        replace: bool = typer.Option(False, "--replace", help="Replace a run already ingested from this directory "
                                                              "or under this name; its user tags move to the "
                                                              "new run's pairs with the same sample ids."),
        drop_tags: bool = typer.Option(False, "--drop-tags", help="With --replace: go ahead even though the "
                                                                  "replaced run has user tags on pairs the new run "
                                                                  "lacks (those tags are lost)."),
        map_method: Optional[str] = typer.Option(None, "--map", help="2-D map of the embeddings: pca (default, or "
                                                                     "CLIPMEM_MAP_METHOD) or umap (needs "
                                                                     "umap-learn)."),
        experiment: Optional[str] = typer.Option(None, "--experiment", help="Experiment the run belongs to "
                                                 "(default: the name in the run's experiment.json, written by "
                                                 "`clipmem experiment`; runs without one belong to none)."),
    ):
        from clipmem.backend.ingest import ingest as ingest_run
        from clipmem.backend.settings import load_settings

        try:
            settings = load_settings()
            method = map_method or settings.map_method
            if method not in ("pca", "umap"):
                raise ClipmemError(f"--map {method}: choose pca or umap")
            with database(settings.database_url, bulk_write=True) as engine:
                result = ingest_run(engine, run_dir, name=name, replace=replace, map_method=method,
                                    stored_thumbnail_px=settings.stored_thumbnail_px, experiment=experiment,
                                    drop_tags=drop_tags)
        except ClipmemError as exc:
            _fail(exc)
        for warning in result.warnings:
            err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        replaced = f", replacing {', '.join(repr(n) for n in result.replaced)}" if result.replaced else ""
        console.print(f"ingested run '{result.name}'{replaced}: {result.samples} pairs, {result.scored} scored, "
                      f"{result.embedded} embedded, in {result.seconds:.1f} s "
                      f"({result.scored / result.seconds:,.0f} scored pairs/s)")
        if result.replaced:
            dropped = (f"; dropped {result.tags_dropped} on pairs the new run lacks (--drop-tags)"
                       if result.tags_dropped else "")
            console.print(f"user tags: kept {result.tags_kept} of the replaced run on the same sample ids{dropped}")

    @app.command(help=SERVE_HELP)
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
        port: int = typer.Option(8000, "--port", help="Port to listen on."),
    ):
        from clipmem.backend.settings import load_settings

        try:
            settings = load_settings()
            if not 0 < port < 65536:
                raise ClipmemError(f"--port {port}: choose a port between 1 and 65535")
            with database(settings.database_url):
                pass  # migrated once here, so a bad database URL fails before the server starts
        except ClipmemError as exc:
            _fail(exc)
        import uvicorn

        uvicorn.run("clipmem.backend.api.app:create_app", factory=True, host=host, port=port)
