"""What /proc says about a process: its state letter, its command line, whether it lives,
its children."""

from __future__ import annotations

import time
from pathlib import Path


def process_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat (``R``, ``S``, ``Z``...), None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return stat[stat.rindex(")") + 2]


def process_argv(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return tuple(part.decode() for part in raw.split(b"\0")[:-1])


def is_alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def first_child(pid: int, timeout: float, poll: float = 0.01) -> int | None:
    """The first child ``pid`` has forked, waiting up to ``timeout`` seconds for one; None when
    none came (or ``pid`` is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            return None
        if children:
            return int(children[0])
        if time.monotonic() > deadline:
            return None
        time.sleep(poll)
