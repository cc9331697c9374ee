"""A real neutron-server for tests, benchmarks and the demo.

Neutron 29.0.0 from PyPI runs in a virtual environment of its own (cached under
``cache_dir``, rebuilt when ``neutron-requirements.txt`` changes), on its own MariaDB database,
with notifications (messagingv2) to RabbitMQ, noauth, ML2 without mechanism drivers and the
router service plugin, served on a free loopback port.

With ``astara_plugin`` the bed installs this checkout into the Neutron venv (again only when the
checkout's path or its Neutron-side sources change) and loads Astara's L3 provider (the default
provider, or only through a router flavor) and its status service plugin. With
``trusted_headers`` the API takes the caller's identity from ``X-User-Id``, ``X-Project-Id`` and
``X-Roles`` request headers (Neutron's keystonecontext filter without Keystone's authtoken): a
test identity for policy checks, never an authentication scheme.
"""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import keystoneauth1.noauth
import keystoneauth1.session
import openstack

from astara.testing import bedkit
from astara.testing.bedkit import (
    DEFAULT_CACHE_DIR,
    Daemon,
    TestbedError,
    free_port,
    process_alive,
    say,
    service_provider_lines,
    write_ini,
)
from astara.testing.mariadb import create_database

__all__ = ["DEFAULT_CACHE_DIR", "TestbedError", "process_alive"]

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "neutron-requirements.txt"
WSGI_RUNNER = HERE / "wsgi_serve.py"
CHECKOUT = HERE.parent.parent
ASTARA_L3_PROVIDER = "L3_ROUTER_NAT:astara:astara.neutron.l3_driver.AstaraL3Driver"
ASTARA_FWAAS_PROVIDER = (
    "FIREWALL_V2:astara:astara.neutron.fwaas_driver.AstaraFirewallDriver:default"
)
SINGLE_NODE_PROVIDER = (
    "L3_ROUTER_NAT:single_node:"
    "neutron.services.l3_router.service_providers.single_node.SingleNodeDriver"
)

DEFAULT_STATE_DIR = Path(os.environ.get("ASTARA_TESTBED_DIR", "/var/lib/astara/testbed"))
RABBIT_URL = "rabbit://guest:guest@127.0.0.1:5672/"

ExtraConfig = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Endpoint:
    url: str
    pid: int
    log: Path


def ensure_venv(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return the Neutron venv for the pinned requirements, building it when absent."""
    return bedkit.ensure_venv(REQUIREMENTS, cache_dir, "neutron")


def plugin_digest(checkout: Path = CHECKOUT) -> str:
    """Changes with the checkout's path, its packaging and its Neutron-side sources."""
    digest = hashlib.sha256(str(checkout.resolve()).encode())
    sources = [checkout / "pyproject.toml", *sorted((checkout / "astara/neutron").rglob("*.py"))]
    for path in sources:
        digest.update(str(path.relative_to(checkout)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_astara_plugin(venv: Path, checkout: Path = CHECKOUT) -> None:
    """Install this checkout into the Neutron venv (no dependencies) unless already there."""
    stamp = venv / ".astara-plugin"
    wanted = plugin_digest(checkout)
    with (venv / ".astara-plugin.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted:
            return
        say(f"installing Astara's Neutron plugin from {checkout} into {venv}")
        # Built from a copy so the build leaves nothing in the checkout.
        with tempfile.TemporaryDirectory(prefix="astara-plugin-") as tmp:
            source = Path(tmp) / "astara"
            shutil.copytree(
                checkout / "astara",
                source / "astara",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            for name in ("pyproject.toml", "README.md"):
                shutil.copy(checkout / name, source / name)
            subprocess.run(
                [
                    str(venv / "bin/pip"),
                    "install",
                    "-q",
                    "--no-deps",
                    "--force-reinstall",
                    str(source),
                ],
                check=True,
            )
        stamp.write_text(wanted)


@dataclass
class NeutronTestbed:
    """One neutron-server; its files (config, log, pid, port) live in ``state_dir``."""

    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    database: str = "astara_neutron"
    # Each bed its own database user: beds reset their user's password when they come up.
    db_user: str = ""
    extra_config: ExtraConfig = field(default_factory=dict)
    astara_plugin: bool = False
    # False: Astara routers only through a flavor; single_node stays the default provider.
    astara_default: bool = True
    trusted_headers: bool = False

    @property
    def user(self) -> str:
        return self.db_user or self.database

    @property
    def port_file(self) -> Path:
        return self.state_dir / "neutron.port"

    @property
    def log_file(self) -> Path:
        return self.daemon().log_file

    def daemon(self, port: int = 0) -> Daemon:
        venv = bedkit.venv_path(REQUIREMENTS, self.cache_dir, "neutron")
        env = {
            "OS_NEUTRON_CONFIG_DIR": str(self.state_dir),
            "OS_NEUTRON_CONFIG_FILES": "neutron.conf;ml2_conf.ini",
            "ASTARA_WSGI_APP": "neutron.wsgi.api",
            "ASTARA_WSGI_BIND": f"127.0.0.1:{port}",
        }
        return Daemon("neutron", (str(venv / "bin/python"), str(WSGI_RUNNER)), self.state_dir, env)

    def status(self) -> Endpoint | None:
        """The running server's endpoint, or None when it is not running."""
        pid = self.daemon().pid()
        try:
            port = int(self.port_file.read_text())
        except (OSError, ValueError):
            return None
        if pid is None:
            return None
        return Endpoint(f"http://127.0.0.1:{port}", pid, self.log_file)

    def up(self, timeout: float = 90.0) -> Endpoint:
        running = self.status()
        if running is not None and _api_ready(running.url):
            say(f"already running at {running.url} (pid {running.pid})")
            return running
        self.down()
        venv = ensure_venv(self.cache_dir)
        if self.astara_plugin:
            ensure_astara_plugin(venv)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        password = self._password()
        say(f"creating database {self.database} on MariaDB")
        database_url = create_database(self.database, self.user, password)
        self._write_config(venv, database_url)
        say("migrating the database (neutron-db-manage upgrade heads)")
        migrate = subprocess.run(
            [
                str(venv / "bin/neutron-db-manage"),
                "--config-file",
                str(self.state_dir / "neutron.conf"),
                "--config-file",
                str(self.state_dir / "ml2_conf.ini"),
                "upgrade",
                "heads",
            ],
            capture_output=True,
            text=True,
        )
        if migrate.returncode != 0:
            raise TestbedError("neutron-db-manage failed:\n" + migrate.stderr[-4000:])
        return self._start(timeout)

    def down(self) -> None:
        running = self.status()
        if running is not None:
            say(f"stopping neutron-server (pid {running.pid})")
        self.daemon().stop()

    def _password(self) -> str:
        path = self.state_dir / "db-password"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(18))
        return path.read_text().strip()

    def _write_config(self, venv: Path, database_url: str) -> None:
        neutron: dict[str, dict[str, str]] = {
            "DEFAULT": {
                "core_plugin": "ml2",
                "service_plugins": "router",
                "auth_strategy": "noauth",
                "api_paste_config": str(venv / "etc/neutron/api-paste.ini"),
                "transport_url": RABBIT_URL,
                "notify_nova_on_port_status_changes": "false",
                "notify_nova_on_port_data_changes": "false",
                "api_workers": "1",
                "rpc_workers": "0",
                "debug": "false",
                "state_path": str(self.state_dir / "state"),
                # Neutron keeps ports' dns_name only when its own domain is not the default.
                "dns_domain": "astara.test.",
            },
            "database": {
                "connection": database_url,
            },
            "oslo_messaging_notifications": {"driver": "messagingv2"},
            "oslo_concurrency": {"lock_path": str(self.state_dir / "locks")},
        }
        if self.astara_plugin:
            # port_forwarding: its callbacks are among those the plugin forwards; bgp:
            # neutron-dynamic-routing's API (speakers and peers the appliances announce to);
            # firewall_v2: neutron-fwaas's API, served by Astara's FWaaS driver.
            neutron["DEFAULT"]["service_plugins"] = (
                "router,flavors,port_forwarding,bgp,firewall_v2,astara"
            )
        if self.trusted_headers:
            neutron["DEFAULT"]["api_paste_config"] = str(self._write_trusted_paste(venv))
        for section, options in self.extra_config.items():
            neutron.setdefault(section, {}).update(options)
        ml2 = {
            "ml2": {
                "type_drivers": "flat,vlan,vxlan,local",
                "tenant_network_types": "vxlan",
                "mechanism_drivers": "",
                # dns: Neutron's DNS integration (ports' dns_name, networks' dns_domain).
                "extension_drivers": "port_security,dns",
            },
            "ml2_type_flat": {"flat_networks": "*"},
            "ml2_type_vlan": {"network_vlan_ranges": "public,physnet1:100:199"},
            "ml2_type_vxlan": {"vni_ranges": "1000:1999"},
        }
        write_ini(self.state_dir / "neutron.conf", neutron, secret=True)
        if self.astara_plugin:
            self._append_service_providers()
        write_ini(self.state_dir / "ml2_conf.ini", ml2)

    def _append_service_providers(self) -> None:
        # service_provider is a multi-valued option: one line each, which configparser
        # cannot write.
        if self.astara_default:
            providers = [ASTARA_L3_PROVIDER + ":default"]
        else:
            providers = [SINGLE_NODE_PROVIDER + ":default", ASTARA_L3_PROVIDER]
        with (self.state_dir / "neutron.conf").open("a") as handle:
            handle.write(service_provider_lines([*providers, ASTARA_FWAAS_PROVIDER]))

    def _write_trusted_paste(self, venv: Path) -> Path:
        """Neutron's paste file with keystonecontext in place of noauth's fake admin."""
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(venv / "etc/neutron/api-paste.ini")
        keystone = parser.get("composite:neutronapi_v2_0", "keystone").split()
        parser.set(
            "composite:neutronapi_v2_0",
            "noauth",
            " ".join(name for name in keystone if name != "authtoken"),
        )
        path = self.state_dir / "api-paste.ini"
        with path.open("w") as handle:
            parser.write(handle)
        return path

    def _start(self, timeout: float) -> Endpoint:
        port = free_port()
        daemon = self.daemon(port)
        say(f"starting neutron-server on 127.0.0.1:{port} (log: {self.log_file})")
        started = time.monotonic()
        pid = daemon.start()
        self.port_file.write_text(str(port))
        url = f"http://127.0.0.1:{port}"
        deadline = started + timeout
        while time.monotonic() < deadline:
            if daemon.pid() is None:
                break
            if _api_ready(url):
                say(f"neutron-server ready at {url} in {time.monotonic() - started:.1f} s")
                return Endpoint(url, pid, self.log_file)
            time.sleep(0.5)
        tail = daemon.tail()
        self.down()
        raise TestbedError(
            f"neutron-server did not become ready within {timeout:.0f} s; "
            f"last lines of {self.log_file}:\n" + tail
        )


def _api_ready(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def connect(url: str, headers: Mapping[str, str] | None = None) -> openstack.connection.Connection:
    """An openstacksdk connection to a noauth Neutron (the caller acts as admin).

    headers: sent with every request, e.g. ``trusted_identity(...)`` for a trusted-headers bed.
    """
    if headers is None:
        return openstack.connection.Connection(
            auth_type="none", auth={"endpoint": url}, network_endpoint_override=url
        )
    session = keystoneauth1.session.Session(
        auth=keystoneauth1.noauth.NoAuth(endpoint=url), additional_headers=dict(headers)
    )
    return openstack.connection.Connection(session=session, network_endpoint_override=url)


def trusted_identity(user_id: str, project_id: str, roles: str) -> dict[str, str]:
    """Request headers naming the caller of a ``trusted_headers`` bed."""
    return {"X-User-Id": user_id, "X-Project-Id": project_id, "X-Roles": roles}
