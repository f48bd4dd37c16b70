"""`clipmem ui`: start the dashboard (registered on the `clipmem` command by clipmem/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

APP = Path(__file__).resolve().parent / "app.py"
BACKEND_START_S = 60
TOKEN_VARIABLES = ("CLIPMEM_API_TOKEN", "CLIPMEM_API_WRITE_TOKEN")


def register(app: typer.Typer) -> None:
    @app.command("ui")
    def ui(
        port: int = typer.Option(8501, "--port", help="Port the dashboard listens on."),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on; 0.0.0.0 makes it reachable from other machines."),
        api_url: Optional[str] = typer.Option(
            None, "--api-url",
            help="URL of the clipmem backend (default: $CLIPMEM_API_URL, else http://127.0.0.1:8000)."),
        with_backend: bool = typer.Option(
            False, "--with-backend",
            help="Also start the backend (`clipmem serve`) on 127.0.0.1:--backend-port over CLIPMEM_DATABASE_URL, "
                 "and stop it when the dashboard stops."),
        backend_port: int = typer.Option(8000, "--backend-port", help="Port of the backend --with-backend starts."),
    ) -> None:
        """Open the dashboard in a browser: browse the most memorized pairs, filter by score, compare encoders.

        The dashboard reads everything from the clipmem backend, so start that first:

            clipmem ingest RUN_DIR     # load a finished run into the database

            clipmem serve              # the backend, on http://127.0.0.1:8000

            clipmem ui                 # then open http://127.0.0.1:8501

        or let `clipmem ui --with-backend` start and stop the backend for you. When the backend has tokens
        (CLIPMEM_API_TOKEN, CLIPMEM_API_WRITE_TOKEN), each visitor signs in with one in the browser; the
        dashboard holds none itself. Ctrl+C, SIGTERM or SIGHUP stops the dashboard and the backend it started.
        """
        import os
        import subprocess
        import sys

        from clipmem.frontend.client import DEFAULT_API_URL
        from clipmem.scoring.processes import interrupt_on_stop_signals, stop_processes

        if with_backend and api_url:
            raise typer.BadParameter("give either --api-url or --with-backend, not both", param_hint="--api-url")
        env = dict(os.environ)
        if with_backend:
            env["CLIPMEM_API_URL"] = f"http://127.0.0.1:{backend_port}"
        elif api_url:
            env["CLIPMEM_API_URL"] = api_url
        # the dashboard acts for each visitor with the token that visitor signs in with, never with one of its own
        ui_env = {k: v for k, v in env.items() if k not in TOKEN_VARIABLES}
        command = [sys.executable, "-m", "streamlit", "run", str(APP),
                   "--server.address", host, "--server.port", str(port),
                   "--server.headless", "true", "--browser.gatherUsageStats", "false",
                   "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"]
        children: list[subprocess.Popen] = []
        code = 0
        with interrupt_on_stop_signals():
            try:
                if with_backend:
                    _start_backend(backend_port, env, children)
                backend_url = env.get("CLIPMEM_API_URL", DEFAULT_API_URL)
                typer.echo(f"clipmem dashboard: http://{host}:{port} (backend {backend_url}); Ctrl+C stops it")
                children.append(subprocess.Popen(command, env=ui_env))
                code = children[-1].wait()
            except KeyboardInterrupt:
                code = 0
            finally:
                stop_processes(children)
        raise typer.Exit(code=code)


def _start_backend(port: int, env: dict, children: list) -> None:
    """`clipmem serve` on 127.0.0.1:port, appended to `children` as soon as it starts (so an interrupt while it
    comes up still stops it); returns once it answers /health."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            typer.echo(f"error: port {port} is already in use; stop what runs there or pass --backend-port",
                       err=True)
            raise typer.Exit(code=2)
    process = subprocess.Popen([sys.executable, "-m", "clipmem", "serve",
                                "--host", "127.0.0.1", "--port", str(port)], env=env)
    children.append(process)
    deadline = time.monotonic() + BACKEND_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            typer.echo(f"error: the backend stopped at start (exit code {process.returncode}); see its output "
                       "above", err=True)
            raise typer.Exit(code=2)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    typer.echo(f"error: the backend did not answer on port {port} within {BACKEND_START_S} s", err=True)
    raise typer.Exit(code=2)
