"""What every test bed shares: cached venvs, free ports, INI files, secrets and daemons.

A bed's services run from a virtual environment of their own, built once per requirements
file (keyed by its hash) under a cache directory. Each daemon is a child in a session of its
own whose pid and log live in the bed's state directory, so another process (``down`` from the
CLI) can find and stop it later; a pid is trusted only while its command line still matches.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from astara.common.processes import is_alive

DEFAULT_CACHE_DIR = Path(os.environ.get("ASTARA_CACHE_DIR", "/var/cache/astara"))

Sections = Mapping[str, Mapping[str, str]]


class TestbedError(RuntimeError):
    """A test bed could not be brought up; the message says why and where the log is."""


def say(message: str, tag: str = "testbed") -> None:
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_alive(pid: int) -> bool:
    """True when pid runs and is not a zombie (PID 1 here may not reap orphans)."""
    return is_alive(pid)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def venv_path(requirements: Path, cache_dir: Path, label: str) -> Path:
    """``<cache_dir>/<label>-venv-<hash of requirements>``: a new file, a new venv."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    return cache_dir / f"{label}-venv-{digest}"


def ensure_venv(requirements: Path, cache_dir: Path, label: str) -> Path:
    """The venv for ``requirements`` (see ``venv_path``), built when absent."""
    venv = venv_path(requirements, cache_dir, label)
    stamp = venv / ".astara-complete"
    if stamp.exists():
        return venv
    say(f"building the {label} venv in {venv} (a few minutes the first time)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "-r", str(requirements)],
        check=True,
    )
    stamp.write_text(requirements.read_text())
    say(f"{label} venv ready in {time.monotonic() - started:.0f} s")
    return venv


def write_ini(path: Path, sections: Sections, secret: bool = False) -> None:
    """Write ``sections`` as an INI file; ``secret`` files are readable by root alone."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    for section, options in sections.items():
        if section != "DEFAULT":
            parser.add_section(section)
        for key, value in options.items():
            parser.set(section, key, value)
    path.touch(mode=0o600 if secret else 0o644)
    with path.open("w") as handle:
        parser.write(handle)


def service_provider_lines(providers: Sequence[str]) -> str:
    """``[service_providers]`` of neutron.conf: a multi-valued option configparser cannot write."""
    return "\n[service_providers]\n" + "".join(f"service_provider = {p}\n" for p in providers)


class Secrets:
    """Random secrets of one bed, made on first use and kept in a 0600 JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        try:
            loaded: dict[str, str] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return loaded

    def get(self, key: str) -> str:
        values = self._load()
        if key not in values:
            values[key] = secrets.token_urlsafe(18)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(mode=0o600)
            self.path.write_text(json.dumps(values, indent=1, sort_keys=True))
        return values[key]

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Daemon:
    """One long-running child: started in a session of its own, its pid and log in run_dir."""

    name: str
    argv: tuple[str, ...]
    run_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The running daemon's pid; None when it is gone or the pid now names another process.

        The pid file holds the pid and the process's start time: services rewrite their
        command line (setproctitle), so only the start time tells a reused pid apart.
        """
        try:
            pid_text, started = self.pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if not process_alive(pid) or start_time(pid) != started:
            return None
        return pid

    def start(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                list(self.argv),
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid} {start_time(proc.pid)}")
        return proc.pid

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its session, SIGKILL after ``timeout``; harmless when it is not running."""
        pid = self.pid()
        if pid is not None:
            _signal_session(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while process_alive(pid) and time.monotonic() < deadline:
                reap(pid)
                time.sleep(0.1)
            if process_alive(pid):
                _signal_session(pid, signal.SIGKILL)
                time.sleep(0.2)
            reap(pid)
        self.pid_file.unlink(missing_ok=True)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def processes_below(marker: Path) -> list[int]:
    """Live processes (not this one) whose command line names a path below ``marker``.

    What a bed's daemons spawned (privsep helpers, workers, QEMU) names the bed's files;
    nothing else on the machine does.
    """
    needle = (str(marker).rstrip("/") + "/").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes() and process_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def kill_stragglers(marker: Path) -> list[int]:
    """SIGKILL what ``processes_below(marker)`` finds (left behind by a bed's daemons)."""
    killed = processes_below(marker)
    for pid in killed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return killed


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _signal_session(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def http_answers(url: str) -> bool:
    """Any HTTP answer at all (some APIs answer their root with 300 or 401)."""
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def wait_until(
    ready: Callable[[], bool], timeout: float, what: str, failed: Callable[[], str | None]
) -> float:
    """Poll ``ready`` until true; raise naming ``what`` (and ``failed()``'s reason) on timeout.

    ``failed`` returns a reason to stop early (a daemon that died), or None.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ready():
            return time.monotonic() - started
        reason = failed()
        if reason is not None:
            raise TestbedError(f"{what}: {reason}")
        time.sleep(0.25)
    raise TestbedError(f"{what}: not ready within {timeout:.0f} s")
