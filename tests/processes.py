"""Process groups, for tests that check a launcher leaves no child behind (Linux /proc)."""

from __future__ import annotations

import time
from pathlib import Path


def group_members(pgid: int) -> list[str]:
    """"PID STATE COMMAND LINE" of every process still in the process group `pgid` (zombies too)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it exited meanwhile
        if int(fields[2]) == pgid:
            members.append(f"{stat.parent.name} {fields[0]} {cmdline}")
    return members


def wait_for_members(pgid: int, at_least: int, timeout: float) -> list[str]:
    """Until the group has `at_least` processes; returns them (fewer on time-out)."""
    deadline = time.monotonic() + timeout
    while len(members := group_members(pgid)) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


def wait_until_empty(pgid: int, timeout: float) -> list[str]:
    """Until no process is left in the group; returns those left on time-out."""
    deadline = time.monotonic() + timeout
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return members
