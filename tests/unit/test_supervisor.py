"""The appliance's daemon supervisor, as far as it touches the process that uses it."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from astara.appliance.supervisor import Daemon

pytestmark = pytest.mark.unit

PR_GET_CHILD_SUBREAPER = 37


def adopts_orphans() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(0)
    assert libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0
    return bool(flag.value)


def test_starting_a_daemon_does_not_make_the_caller_adopt_every_orphan(tmp_path: Path) -> None:
    """Only the appliance's main becomes a subreaper: a test runner that did, by using Daemon,
    kept the session's orphans (libvirt's QEMUs) as zombies libvirt took for alive."""
    daemon = Daemon(tmp_path / "sleeper.pid", tmp_path / "sleeper.log")
    assert not adopts_orphans()
    try:
        assert daemon.ensure(["sh", "-c", "sleep 30", str(daemon.pid_file)])
        assert daemon.pid() is not None
        assert not adopts_orphans()
    finally:
        daemon.stop()
    assert daemon.pid() is None
