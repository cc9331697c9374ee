"""An astara-orchestrator process for tests and demos: INI file in, process group out.

The pid file lets a later command (``astara-demo down``, another test session) find the
orchestrator an earlier one started; ``kill`` with SIGKILL is a crash (no clean-up at all).
"""

from __future__ import annotations

import configparser
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from astara.common.processes import is_alive

ORCHESTRATOR = Path(sys.executable).with_name("astara-orchestrator")


def write_ini(path: Path, sections: Mapping[str, Mapping[str, str]]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    for section, options in sections.items():
        if section != "DEFAULT":
            parser.add_section(section)
        for key, value in options.items():
            parser.set(section, key, value)
    with path.open("w") as handle:
        parser.write(handle)


@dataclass
class OrchestratorProcess:
    state_dir: Path
    environment: Mapping[str, str] = field(default_factory=dict)

    @property
    def config_file(self) -> Path:
        return self.state_dir / "orchestrator.ini"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "orchestrator.pid"

    @property
    def log(self) -> Path:
        return self.state_dir / "orchestrator.log"

    def pid(self) -> int | None:
        """The running orchestrator's pid (also one started by an earlier command)."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if is_alive(pid) else None

    def start(self) -> int:
        running = self.pid()
        if running is not None:
            return running
        with (self.state_dir / "orchestrator.stderr").open("ab") as stderr:
            proc = subprocess.Popen(
                [str(ORCHESTRATOR), "--config-file", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                env={**os.environ, **self.environment},
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the orchestrator and its worker processes (SIGKILL: a crash, no clean-up)."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + 20
        while _group_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            time.sleep(0.5)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of the group is left."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and is_alive(int(entry)):
            return True
    return False
