"""Run and watch one long-lived daemon (dnsmasq, radvd) with per-instance pid and log files.

Daemons run in the foreground as our children so we can reap them: PID 1 on an appliance may
not reap orphans, and a zombie still answers ``kill -0``. After an agent restart the daemon is
found again through its pid file; it is adopted only when its command line names that pid
file, so a recycled PID never gets signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from astara.appliance.files import open_private_log
from astara.common.processes import is_alive, process_argv

PR_SET_CHILD_SUBREAPER = 36


def process_children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def become_subreaper() -> None:
    """Adopt our daemons' orphans (radvd's privsep helper outlives it), so we can reap them.

    Called once by the appliance's main, never by a library: a process that adopts orphans
    must reap them, and a test runner that became one by using ``Daemon`` kept every orphan
    of the session (libvirt's QEMUs among them) as a zombie libvirt took for alive."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphan(pid: int, timeout: float) -> None:
    """Wait for an adopted process to exit; a no-op when it is not our child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)


class Daemon:
    """One daemon instance, identified by its pid file."""

    def __init__(self, pid_file: Path, log_file: Path, stop_timeout: float = 3.0) -> None:
        self.pid_file = pid_file
        self.log_file = log_file
        self.stop_timeout = stop_timeout
        self._child: subprocess.Popen[bytes] | None = None
        # What our own child was started with: /proc/PID/cmdline is Python's until exec.
        self._child_argv: tuple[str, ...] = ()

    def pid(self) -> int | None:
        """The PID of the running instance, or None when it is not running."""
        if self._child is not None:
            if self._child.poll() is None and is_alive(self._child.pid):
                return self._child.pid
            self._reap()
        return self._adoptable_pid()

    def argv(self) -> tuple[str, ...] | None:
        """The command line the running instance was started with."""
        pid = self.pid()
        if pid is None:
            return None
        if self._child is not None and self._child.pid == pid:
            return self._child_argv
        return process_argv(pid)

    def ensure(self, argv: Sequence[str]) -> bool:
        """Run ``argv``: start it, or restart when the running command line differs.

        Returns True when a process was (re)started. ``argv`` must mention the pid file.
        """
        if str(self.pid_file) not in " ".join(argv):
            raise ValueError("the command line must name the daemon's pid file")
        if self.argv() == tuple(argv):
            return False
        self.stop()
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_private_log(self.log_file), "ab") as log:
            self._child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._child_argv = tuple(argv)
        # Written now, not when the daemon gets round to it: the drift fingerprint taken right
        # after an apply must already see this daemon. (It runs in the foreground, so the
        # daemon rewrites the same pid.)
        self.pid_file.write_text(f"{self._child.pid}\n")
        return True

    def signal(self, signum: int) -> bool:
        """Send a signal to the running instance; False when none runs."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signum)
        return True

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; reap it and remove the pid file."""
        pid = self.pid()
        helpers = process_children(pid) if pid is not None else []
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, self.stop_timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, self.stop_timeout)
        self._reap()
        for helper in helpers:
            reap_orphan(helper, self.stop_timeout)
        self.pid_file.unlink(missing_ok=True)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._child is not None and self._child.pid == pid:
                if self._child.poll() is not None:
                    return True
            elif not is_alive(pid):
                return True
            time.sleep(0.01)
        return False

    def _reap(self) -> None:
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=self.stop_timeout)
            self._child = None

    def _adoptable_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        argv = process_argv(pid)
        if not is_alive(pid) or argv is None or str(self.pid_file) not in " ".join(argv):
            return None
        return pid
