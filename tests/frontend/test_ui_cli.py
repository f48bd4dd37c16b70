"""`clipmem ui`: the command `make demo` ends with, and how it stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from urllib.parse import urlparse

import httpx
import pytest

from tests.frontend.conftest import TINY
from tests.frontend.stack import CLIPMEM, ROOT, free_port, wait_until_up
from tests.processes import group_members, wait_until_empty


def answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_ui_with_backend_starts_both_and_ctrl_c_stops_both(database_url, stack_dir):
    ui_port, api_port = free_port(), free_port()
    log = stack_dir / "ui-with-backend.log"
    env = {**os.environ, "CLIPMEM_DATABASE_URL": database_url}
    with open(log, "wb") as out:
        process = subprocess.Popen([*CLIPMEM, "ui", "--with-backend", "--port", str(ui_port),
                                    "--backend-port", str(api_port)], env=env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{ui_port}/_stcore/health", process, timeout=90, log=log)
        runs = httpx.get(f"http://127.0.0.1:{api_port}/runs", timeout=10).json()
        assert TINY in {r["name"] for r in runs}
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl+C in the terminal sends
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not answers(ui_port) and not answers(api_port)
    assert f"http://127.0.0.1:{ui_port}" in log.read_text()


def test_ui_with_backend_refuses_a_busy_port(api_url):
    busy = urlparse(api_url).port
    result = subprocess.run([*CLIPMEM, "ui", "--with-backend", "--backend-port", str(busy)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"port {busy} is already in use" in result.stderr


@pytest.mark.parametrize("with_backend, stop_signal", [(True, signal.SIGTERM), (False, signal.SIGHUP)],
                         ids=["with-backend-SIGTERM", "alone-SIGHUP"])
def test_a_signal_to_the_launcher_stops_every_child(tmp_path, with_backend, stop_signal):
    """`kill`, `docker stop` or a closed terminal signal `clipmem ui` alone (not its process group): the
    dashboard and the backend it started must stop with it and free their ports."""
    ui_port, api_port = free_port(), free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "CLIPMEM_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
           "CLIPMEM_API_URL": f"http://127.0.0.1:{api_port}"}
    args = ["--with-backend", "--backend-port", str(api_port)] if with_backend else []
    with open(log, "wb") as out:
        # a session of its own: its process group then holds the launcher and everything it starts
        process = subprocess.Popen([*CLIPMEM, "ui", "--port", str(ui_port), *args], env=env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{ui_port}/_stcore/health", process, timeout=90, log=log)
        assert len(group_members(process.pid)) >= (3 if with_backend else 2)  # launcher, streamlit (, serve)
        os.kill(process.pid, stop_signal)
        assert process.wait(timeout=30) == 0
        assert wait_until_empty(process.pid, timeout=5) == [], "children outlived the launcher"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    assert not answers(ui_port) and not answers(api_port)
