"""Child processes that stop with the command that started them (`clipmem ui`, `clipmem experiment`).

Python ends a process on SIGTERM or SIGHUP at once, without running `finally` blocks, so a launcher killed
that way (`kill`, `docker stop`, a closed terminal) would leave its children running and holding their ports
or GPUs. Inside `interrupt_on_stop_signals()` those signals raise KeyboardInterrupt, as Ctrl+C does, and the
launcher's `finally` calls `stop_processes` on its children.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT raises KeyboardInterrupt already
STOP_TIMEOUT_S = 10.0


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP raise KeyboardInterrupt. Signal handlers belong to the main thread; called from
    another thread (a test runner's, a web server's) this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl+C or SIGTERM while children are being stopped must not cut the stopping short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_processes(processes: Iterable[subprocess.Popen], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to each process still running, then wait up to `timeout` seconds for all of them together and
    SIGKILL those still running. Returns when every one has exited."""
    processes = list(processes)
    with _signals_ignored():
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
