"""`clipmem ingest` and `clipmem serve`: one-line errors with exit code 2, and a real server answering."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from clipmem.backend.models import Run
from clipmem.backend.store import delete_run
from clipmem.backend.synthetic_run import write_synthetic_run
from clipmem.cli import app

runner = CliRunner()


def test_ingest_command(db, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPMEM_DATABASE_URL", db.url)
    run = write_synthetic_run(tmp_path / "cli-run", 20, 20, 10, 5, seed=61)
    first = runner.invoke(app, ["ingest", str(run)])
    assert first.exit_code == 0, first.output
    assert "ingested run 'cli-run': 55 pairs, 40 scored, 45 embedded" in first.output
    again = runner.invoke(app, ["ingest", str(run)])
    assert again.exit_code == 2
    assert again.output.strip().startswith("error:") and "pass --replace" in again.output
    replaced = runner.invoke(app, ["ingest", str(run), "--replace", "--name", "cli-renamed"])
    assert replaced.exit_code == 0 and "replacing 'cli-run'" in replaced.output
    with db.engine.begin() as conn:
        names = conn.execute(select(Run.name)).scalars().all()
        assert "cli-renamed" in names and "cli-run" not in names
        delete_run(conn, conn.execute(select(Run.id).where(Run.name == "cli-renamed")).scalar_one())


@pytest.mark.parametrize("args,env,message", [
    (["ingest", "/nonexistent/run"], {}, "run directory /nonexistent/run does not exist"),
    (["ingest", "RUN", "--map", "tsne"], {}, "--map tsne: choose pca or umap"),
    (["ingest", "RUN"], {"CLIPMEM_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none"}, "database "),
    (["ingest", "RUN"], {"CLIPMEM_DATABASE_URL": "mysql://x/y"}, "only sqlite and postgresql are supported"),
    (["serve", "--port", "70000"], {}, "--port 70000"),
])
def test_errors_are_one_line(tmp_path, monkeypatch, args, env, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIPMEM_DATABASE_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = write_synthetic_run(tmp_path / "run", 5, 5, 5, 2, seed=62)
    result = runner.invoke(app, [str(run) if a == "RUN" else a for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("error:") and message in " ".join(lines)


def test_serve_defaults_to_localhost_8000(tmp_path, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setenv("CLIPMEM_DATABASE_URL", f"sqlite:///{tmp_path / 'served.db'}")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    (target,), options = calls[0]
    assert target == "clipmem.backend.api.app:create_app" and options == {"factory": True, "host": "127.0.0.1",
                                                                   "port": 8000}


def test_help_is_quick_to_reach_and_explains():
    result = runner.invoke(app, ["ingest", "--help"])
    assert result.exit_code == 0 and "CLIPMEM_DATABASE_URL" in result.output and "--replace" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_answers(tmp_path):
    run = write_synthetic_run(tmp_path / "served", 10, 10, 5, 2, seed=63)
    env = {**os.environ, "CLIPMEM_DATABASE_URL": f"sqlite:///{tmp_path / 'served.db'}", "CLIPMEM_API_TOKEN": "t0k"}
    clipmem = [sys.executable, "-m", "clipmem"]
    subprocess.run([*clipmem, "ingest", str(run)], env=env, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([*clipmem, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(150):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.get(f"{base}/runs").status_code == 401
        runs = httpx.get(f"{base}/runs", headers={"Authorization": "Bearer t0k"}).json()
        assert [r["name"] for r in runs] == ["served"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_backend_never_imports_torch():
    code = ("import sys; from clipmem.cli import app; import clipmem.backend.api.app, clipmem.backend.ingest; "
            "from clipmem.backend.api.app import create_app; from clipmem.backend.settings import Settings; "
            "create_app(Settings(database_url='sqlite://')); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
