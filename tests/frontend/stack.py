"""The running stack for browser tests and the dashboard benchmark: backend and dashboard as subprocesses
on free ports, and Debian's Chromium driven by Playwright.

Both servers are started through the `clipmem` CLI (`clipmem ingest`, `clipmem serve`, `clipmem ui`), so
these tests exercise the commands a user types.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[2]
CLIPMEM = [sys.executable, "-m", "clipmem"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode} before answering:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, and its children."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def ingest(run_dir: Path, database_url: str, name: str, log: Path) -> None:
    env = {**os.environ, "CLIPMEM_DATABASE_URL": database_url}
    with open(log, "ab") as out:
        subprocess.run([*CLIPMEM, "ingest", str(run_dir), "--name", name], env=env, cwd=ROOT, check=True,
                       stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def backend(database_url: str, workdir: Path, token: str | None = None,
            write_token: str | None = None) -> Iterator[str]:
    """`clipmem serve` on a free port, with the read and write tokens given (none by default); yields its URL."""
    port = free_port()
    log = workdir / "clipmem.backend.log"
    env = {**os.environ, "CLIPMEM_DATABASE_URL": database_url, "CLIPMEM_API_TOKEN": token or "",
           "CLIPMEM_API_WRITE_TOKEN": write_token or ""}
    with open(log, "ab") as out:
        proc = subprocess.Popen([*CLIPMEM, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, timeout=60, log=log)
        yield url
    finally:
        stop(proc)


@contextmanager
def dashboard(api_url: str, workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`clipmem ui` on a free port, talking to `api_url`; yields its URL."""
    port = free_port()
    log = workdir / "dashboard.log"
    env = {**os.environ, "CLIPMEM_API_URL": api_url, **(extra_env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen([*CLIPMEM, "ui", "--port", str(port)], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/_stcore/health", proc, timeout=60, log=log)
        yield url
    finally:
        stop(proc)


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium browser (Playwright); the caller checks CHROMIUM exists first."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# what the dashboard renders, as the browser sees it
GRID_IMAGE = '[data-testid="stMain"] [data-testid="stImage"] img'
ERROR_SELECTORS = ('[data-testid="stException"]', '[data-testid="stAlertContentError"]')


APP_BUSY = """() => {
    if (!document.querySelector('[data-testid="stMain"]')) return true;
    if (document.querySelector('[data-testid="stStatusWidget"]')) return true;
    if (document.querySelector('[data-stale="true"]')) return true;
    return Array.from(document.querySelectorAll('[data-testid]'))
        .some(e => e.getAttribute('data-testid').includes('Skeleton'));
}"""


def wait_for_app(page, timeout_s: float = 120, quiet_s: float = 1.0) -> None:
    """Until the script run is over and every element is drawn: nothing running, stale or still a skeleton,
    for `quiet_s` in a row. The Encoders page (seven charts and two 5,000-point maps) took 62 s to settle on
    this 2-core machine at a load of 14; 120 s leaves room for a full suite beside other work."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if page.evaluate(APP_BUSY):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{page.url} was still busy after {timeout_s:.0f} s")


def error_messages(page) -> list[str]:
    """Texts of every exception box and error alert on the page."""
    return [e.inner_text() for selector in ERROR_SELECTORS for e in page.query_selector_all(selector)]
