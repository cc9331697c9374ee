"""A real Horizon 27 with Astara's dashboard plugin, served by Django on a free loopback port.

Horizon runs from its own venv (cached by the hash of ``horizon-requirements.txt``), with this
checkout installed into it without dependencies (the plugin), the plugin's ``enabled`` files
copied into ``openstack_dashboard/local/enabled`` and a ``local_settings.py`` that takes the
Keystone URL and the secret key from the environment Horizon is started with. It logs in
through that Keystone as any user does. State (pid, port, log, secret key) lives in
``state_dir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from astara.testing.neutron_bed import (
    DEFAULT_CACHE_DIR,
    TestbedError,
    ensure_astara_plugin,
    free_port,
    process_alive,
    say,
)

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "horizon-requirements.txt"
ENABLED = HERE.parent / "dashboard" / "enabled"
LOCAL_SETTINGS = """\
# Written by astara.testing.horizon_bed: Horizon for the Astara test bed.
import os

DEBUG = True
ALLOWED_HOSTS = ["*"]
SECRET_KEY = os.environ["ASTARA_HORIZON_SECRET_KEY"]
OPENSTACK_HOST = "127.0.0.1"
OPENSTACK_KEYSTONE_URL = os.environ["ASTARA_HORIZON_KEYSTONE_URL"]
OPENSTACK_KEYSTONE_DEFAULT_ROLE = "member"
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
TIME_ZONE = "UTC"
ASTARA_API_URL = os.environ.get("ASTARA_HORIZON_API_URL") or None
"""


def ensure_venv(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Horizon's venv for the pinned requirements, built when absent (minutes, once)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    venv = cache_dir / f"horizon-venv-{digest}"
    stamp = venv / ".astara-complete"
    if stamp.exists():
        return venv
    say(f"building the Horizon venv in {venv} (several minutes the first time)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(REQUIREMENTS.read_text())
    return venv


def dashboard_dir(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages/openstack_dashboard"))
    if not found:
        raise TestbedError(f"no openstack_dashboard in {venv}: remove it to rebuild it")
    return found[0]


def install_plugin(venv: Path) -> None:
    """The plugin's code, its enabled files and the bed's settings, into Horizon's venv."""
    ensure_astara_plugin(venv)
    local = dashboard_dir(venv) / "local"
    for enabled in ENABLED.glob("_*.py"):
        shutil.copy(enabled, local / "enabled" / enabled.name)
    (local / "local_settings.py").write_text(LOCAL_SETTINGS)


@dataclass
class HorizonBed:
    state_dir: Path
    keystone_url: str  # Keystone's v3 URL, where Horizon logs users in
    # The management API's URL when it is not in Keystone's catalog (ASTARA_API_URL).
    api_url: str | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "horizon.pid"

    @property
    def port_file(self) -> Path:
        return self.state_dir / "horizon.port"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "horizon.log"

    def url(self) -> str:
        return f"http://127.0.0.1:{int(self.port_file.read_text())}"

    def running(self) -> bool:
        try:
            return process_alive(int(self.pid_file.read_text()))
        except (OSError, ValueError):
            return False

    def up(self, timeout: float = 120.0) -> str:
        """Start Horizon (or keep the running one); its URL."""
        if self.running():
            return self.url()
        venv = ensure_venv(self.cache_dir)
        install_plugin(venv)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.state_dir / "secret_key"
        if not key_file.exists():
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_urlsafe(32))
        port = free_port()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "openstack_dashboard.settings",
            "ASTARA_HORIZON_SECRET_KEY": key_file.read_text(),
            "ASTARA_HORIZON_KEYSTONE_URL": self.keystone_url,
            "ASTARA_HORIZON_API_URL": self.api_url or "",
        }
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [
                    str(venv / "bin/python"),
                    "-m",
                    "django",
                    "runserver",
                    "--insecure",  # static files from the apps, as DEBUG serves them
                    "--noreload",
                    f"127.0.0.1:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        self.port_file.write_text(str(port))
        url = self.url()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise TestbedError(f"Horizon exited ({proc.returncode}); see {self.log_file}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/auth/login/", timeout=10).status_code == 200:
                    say(f"Horizon answers at {url}")
                    return url
            time.sleep(0.5)
        raise TestbedError(f"Horizon did not answer within {timeout:.0f} s; see {self.log_file}")

    def down(self) -> None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
