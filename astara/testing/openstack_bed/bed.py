"""A real OpenStack cloud on this machine: Keystone, Glance, Placement, Nova and Neutron.

Nova 34 runs the libvirt driver with QEMU (TCG); Neutron 29 runs ML2 with the Open vSwitch
mechanism driver, its RPC server and neutron-openvswitch-agent (userspace datapath, OVS
firewall), with Astara's Neutron plugin loaded as the default L3 provider. There is no L3,
DHCP or metadata agent: Astara is those. Every API authenticates with Keystone.

All services run from one venv (cached by the hash of ``openstack-requirements.txt``), each
on its own MariaDB database and user and RabbitMQ vhost, with every file (configuration,
logs, pids, secrets 0600, ``clouds.yaml``, images, instances) under the state directory.
``up`` returns at once when the bed already runs; otherwise it starts afresh (new databases).
``down`` removes every process, domain, bridge, namespace, database and vhost the bed made.

Libvirt and Open vSwitch are machine-wide (domain names, the ``br-*`` bridges), so one
OpenStack bed runs per machine; ``up`` says so when another state directory holds it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import openstack

from astara.testing import bedkit, mariadb
from astara.testing.bedkit import DEFAULT_CACHE_DIR, Daemon, Secrets, TestbedError
from astara.testing.neutron_bed import WSGI_RUNNER, ensure_astara_plugin
from astara.testing.openstack_bed import config, host, keystone, operator
from astara.testing.openstack_bed.config import Layout, Ports

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE.parent / "openstack-requirements.txt"
DEFAULT_STATE_DIR = Path(os.environ.get("ASTARA_CLOUD_BED_DIR", "/var/lib/astara/cloudbed"))
# Which state directory holds this machine's OpenStack bed (libvirt and OVS are shared).
CLAIM = Path("/run/astara-openstack-bed")
DEBIAN_TOOLS = {
    "libvirtd": "libvirt-daemon-system",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "genisoimage": "genisoimage",
    "tini": "tini",
    "ovs-vswitchd": "openvswitch-switch",
}
# WSGI applications: daemon name -> (module, layout port name, environment of its config).
WSGI_APPS = {
    "keystone": ("keystone.wsgi.api", "keystone"),
    "glance": ("glance.wsgi.api", "glance"),
    "placement": ("placement.wsgi.api", "placement"),
    "nova-api": ("nova.wsgi.osapi_compute", "nova"),
    "nova-metadata": ("nova.wsgi.metadata", "metadata"),
    "neutron-api": ("neutron.wsgi.api", "neutron"),
}


@dataclass(frozen=True)
class BedInfo:
    """What a client of the bed needs (no secret: those are in ``secrets.json``)."""

    state_dir: str
    clouds_yaml: str
    auth_url: str
    host: str
    urls: dict[str, str]
    # Nova's metadata API listens on every address at this port; appliances reach it on the
    # orchestrator host's management address.
    metadata_port: int
    management: dict[str, str | None]
    external: dict[str, str | None]
    flavors: dict[str, str]
    server_group: str


@dataclass
class OpenStackBed:
    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    # Prefix of databases, their users, the RabbitMQ user and vhosts.
    name: str = "cloudbed"
    started: float = field(default_factory=time.monotonic)

    # -- paths -----------------------------------------------------------------------------
    @property
    def info_file(self) -> Path:
        return self.state_dir / "bed.json"

    @property
    def clouds_yaml(self) -> Path:
        return self.state_dir / "clouds.yaml"

    @property
    def secrets(self) -> Secrets:
        return Secrets(self.state_dir / "secrets.json")

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def venv(self) -> Path:
        return bedkit.venv_path(REQUIREMENTS, self.cache_dir, "openstack")

    def say(self, message: str) -> None:
        bedkit.say(f"{time.monotonic() - self.started:6.1f}s {message}", "cloudbed")

    # -- status ----------------------------------------------------------------------------
    def info(self) -> BedInfo | None:
        try:
            return BedInfo(**json.loads(self.info_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def status(self) -> dict[str, int | None]:
        """Every daemon of the bed and its pid (None: not running)."""
        layout = self._saved_layout()
        daemons = self._host_daemons()
        if layout is not None:
            daemons += self._daemons(layout)
        return {d.name: d.pid() for d in daemons}

    def running(self) -> bool:
        info = self.info()
        pids = self.status()
        has_layout = self._saved_layout() is not None
        return info is not None and has_layout and all(pids.values()) and self._token_ok()

    def connect(self, cloud: str = "astara-admin") -> openstack.connection.Connection:
        layout = self._saved_layout()
        if layout is None:
            raise TestbedError(f"no OpenStack bed in {self.state_dir}: bring it up first")
        return keystone.connect(layout, cloud)

    def metadata_secret(self) -> str:
        """Nova's ``metadata_proxy_shared_secret`` (appliances sign instance ids with it)."""
        return self.secrets.get("metadata")

    def transport_url(self, service: str = "neutron") -> str:
        """RabbitMQ URL (with its password) of a service's vhost: Neutron's carries the
        notifications and Astara's plugin events the orchestrator listens to."""
        layout = self._saved_layout()
        if layout is None:
            raise TestbedError(f"no OpenStack bed in {self.state_dir}: bring it up first")
        return layout.transport_url(service)

    # -- up --------------------------------------------------------------------------------
    def up(self) -> BedInfo:
        self.started = time.monotonic()
        info = self.info()
        if info is not None and self.running():
            self.say(f"already running ({self.state_dir})")
            return info
        _check_tools()
        self._claim()
        self.down()
        self._claim()
        try:
            return self._up()
        except BaseException:
            self.say(f"bring-up failed; taking the bed down (logs stay in {self.logs})")
            self.down()
            raise

    def _up(self) -> BedInfo:
        bedkit.ensure_venv(REQUIREMENTS, self.cache_dir, "openstack")
        ensure_astara_plugin(self.venv)
        layout = self._new_layout()
        self._write_files(layout)
        self.say(f"configuration written to {self.state_dir / 'etc'}")
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            jobs = [
                pool.submit(self._host_up),
                pool.submit(self._rabbit_up, layout),
                pool.submit(self._keystone_up, layout),
                *[pool.submit(job) for job in self._migrations(layout)],
            ]
            _all_done(jobs)
        self.say("databases migrated, Keystone provisioned, OVS and libvirt up")
        daemons = {d.name: d for d in self._daemons(layout)}
        for name in ("placement", "glance", "neutron-api", "neutron-rpc-server", "nova-api"):
            daemons[name].start()
        for name in ("nova-conductor", "nova-scheduler", "nova-metadata"):
            daemons[name].start()
        daemons["neutron-openvswitch-agent"].start()
        self._wait_http(layout, daemons, "placement")
        daemons["nova-compute"].start()
        for name in ("glance", "neutron-api", "nova-api", "nova-metadata"):
            self._wait_http(layout, daemons, name)
        self._discover_compute(layout, daemons["nova-compute"])
        self._wait_agent(layout, daemons["neutron-openvswitch-agent"])
        info = self._operator_setup(layout)
        self.info_file.write_text(json.dumps(asdict(info), indent=1))
        self.say(f"up: clouds.yaml in {self.clouds_yaml}")
        return info

    def _claim(self) -> None:
        try:
            holder = Path(CLAIM.read_text().strip())
        except OSError:
            holder = self.state_dir
        if holder != self.state_dir and any(OpenStackBed(state_dir=holder).status().values()):
            raise TestbedError(
                f"another OpenStack bed runs on this machine (state in {holder}); "
                f"take it down first: ASTARA_CLOUD_BED_DIR={holder} "
                "astara-testbed down --cloud openstack"
            )
        CLAIM.write_text(str(self.state_dir))

    def _new_layout(self) -> Layout:
        for key in ("rabbit", "metadata", *(f"db-{s}" for s in config.DATABASES)):
            self.secrets.get(key)
        users = ("admin", *config.SERVICE_USERS, *config.DEMO_USERS)
        for user in users:
            self.secrets.get(f"user-{user}")
        ports = Ports(*(bedkit.free_port() for _ in range(len(Ports.__dataclass_fields__))))
        layout = self._layout(ports)
        (self.state_dir / "ports.json").write_text(json.dumps(asdict(ports)))
        return layout

    def _layout(self, ports: Ports) -> Layout:
        return Layout(
            name=self.name,
            state_dir=self.state_dir,
            venv=self.venv,
            host=socket.gethostname(),
            ports=ports,
            metadata_host="::",
            secrets=json.loads(self.secrets.path.read_text()),
        )

    def _saved_layout(self) -> Layout | None:
        try:
            ports = Ports(**json.loads((self.state_dir / "ports.json").read_text()))
            return self._layout(ports)
        except (OSError, ValueError, TypeError):
            return None

    def _write_files(self, layout: Layout) -> None:
        for path, sections in config.all_files(layout).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            bedkit.write_ini(path, sections, secret=True)
        with (layout.etc("neutron") / "neutron.conf").open("a") as handle:
            handle.write(bedkit.service_provider_lines([config.ASTARA_L3_PROVIDER]))
        shutil.copy(layout.venv / "etc/nova/api-paste.ini", layout.etc("nova") / "api-paste.ini")
        shutil.copy(
            layout.venv / "etc/glance/glance-api-paste.ini",
            layout.etc("glance") / "glance-api-paste.ini",
        )
        cell0 = {"database": {"connection": layout.db_url("nova", "nova_cell0")}}
        bedkit.write_ini(layout.etc("nova") / "cell0.conf", cell0, secret=True)
        for service in ("keystone", "glance", "nova/instances", "neutron"):
            (self.state_dir / service).mkdir(parents=True, exist_ok=True)
        # qemu runs as libvirt-qemu: it must reach the instance files below the state dir.
        for path in (self.state_dir, self.state_dir / "nova"):
            path.chmod(0o711)
        keystone.write_clouds_yaml(layout, self.clouds_yaml)

    def _host_up(self) -> None:
        ovs = host.OpenVSwitch(self.state_dir / "ovs")
        ovs.up()
        ovs.bridge(config.EXTERNAL_BRIDGE)
        host.Libvirt(self.logs).up()

    def _rabbit_up(self, layout: Layout) -> None:
        user, password = layout.rabbit_user, layout.secrets["rabbit"]
        if not _rabbitmqctl("add_user", user, password, check=False):
            _rabbitmqctl("change_password", user, password)
        for service in config.VHOSTS:
            vhost = layout.vhost(service)
            _rabbitmqctl("add_vhost", vhost, check=False)
            _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def _keystone_up(self, layout: Layout) -> None:
        conf = str(layout.etc("keystone") / "keystone.conf")
        manage = (str(self.venv / "bin/keystone-manage"), "--config-file", conf)
        self._create_databases(layout, "keystone")
        self._run("keystone-db", (*manage, "db_sync"))
        for command in ("fernet_setup", "credential_setup"):
            owner = ("--keystone-user", "root", "--keystone-group", "root")
            self._run("keystone-db", (*manage, command, *owner))
        url = layout.auth_url
        self._run(
            "keystone-db",
            (
                *manage,
                "bootstrap",
                "--bootstrap-password",
                layout.password("admin"),
                "--bootstrap-region-id",
                config.REGION,
                *(f"--bootstrap-{kind}-url={url}" for kind in ("admin", "internal", "public")),
            ),
        )
        daemon = next(d for d in self._daemons(layout) if d.name == "keystone")
        daemon.start()
        self._wait_http(layout, {"keystone": daemon}, "keystone")
        keystone.provision(layout)
        self.say("Keystone provisioned")

    def _migrations(self, layout: Layout) -> list[Callable[[], None]]:
        bin_ = self.venv / "bin"
        etc = layout.etc

        def glance() -> None:
            self._create_databases(layout, "glance")
            conf = str(etc("glance") / "glance-api.conf")
            self._run("glance-db", (str(bin_ / "glance-manage"), "--config-file", conf, "db_sync"))

        def placement() -> None:
            self._create_databases(layout, "placement")
            conf = str(etc("placement") / "placement.conf")
            self._run(
                "placement-db",
                (str(bin_ / "placement-manage"), "--config-file", conf, "db", "sync"),
            )

        def neutron() -> None:
            self._create_databases(layout, "neutron")
            self._run(
                "neutron-db",
                (
                    str(bin_ / "neutron-db-manage"),
                    *_config_files(etc("neutron"), "neutron.conf", "ml2_conf.ini"),
                    "upgrade",
                    "heads",
                ),
            )

        manage = (str(bin_ / "nova-manage"), "--config-file", str(etc("nova") / "nova.conf"))

        def nova_api() -> None:
            self._create_databases(layout, "nova")
            self._run("nova-db", (*manage, "api_db", "sync"))
            cell0 = layout.db_url("nova", "nova_cell0")
            self._run("nova-db", (*manage, "cell_v2", "map_cell0", "--database_connection", cell0))
            self._run("nova-db", (*manage, "cell_v2", "create_cell", "--name", "cell1"))
            # Each cell database migrates on its own, in parallel with the API database.
            cell0_conf = ("--config-file", str(etc("nova") / "cell0.conf"))
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                _all_done(
                    [
                        pool.submit(self._run, "nova-db", (*manage, "db", "sync", "--local_cell")),
                        pool.submit(
                            self._run,
                            "nova-cell0-db",
                            (*manage, *cell0_conf, "db", "sync", "--local_cell"),
                        ),
                    ]
                )

        return [glance, placement, neutron, nova_api]

    def _create_databases(self, layout: Layout, service: str) -> None:
        for database in config.DATABASES[service]:
            mariadb.create_database(
                layout.database(database),
                layout.db_user(service),
                layout.secrets[f"db-{service}"],
            )

    def _run(self, log: str, argv: tuple[str, ...]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{log}.log").open("ab") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise TestbedError(
                f"{Path(argv[0]).name} {' '.join(argv[3:6])} failed (rc {done.returncode}); "
                f"see {self.logs / (log + '.log')}"
            )

    # -- daemons ---------------------------------------------------------------------------
    def _host_daemons(self) -> list[Daemon]:
        return [
            *host.OpenVSwitch(self.state_dir / "ovs").daemons(),
            *host.Libvirt(self.logs).daemons(),
        ]

    def _daemons(self, layout: Layout) -> list[Daemon]:
        python, bin_ = str(self.venv / "bin/python"), self.venv / "bin"
        envs = {
            "keystone": {"OS_KEYSTONE_CONFIG_DIR": str(layout.etc("keystone"))},
            "glance": {"OS_GLANCE_CONFIG_DIR": str(layout.etc("glance"))},
            "placement": {"OS_PLACEMENT_CONFIG_DIR": str(layout.etc("placement"))},
            "nova": {
                "OS_NOVA_CONFIG_DIR": str(layout.etc("nova")),
                "OS_NOVA_CONFIG_FILES": "api-paste.ini;nova.conf",
            },
            "neutron": {
                "OS_NEUTRON_CONFIG_DIR": str(layout.etc("neutron")),
                "OS_NEUTRON_CONFIG_FILES": "neutron.conf;ml2_conf.ini",
            },
        }
        daemons = []
        for name, (module, port_name) in WSGI_APPS.items():
            bind_host = "[::]" if name == "nova-metadata" else "127.0.0.1"
            env = {
                **envs[name.split("-")[0]],
                "ASTARA_WSGI_APP": module,
                "ASTARA_WSGI_BIND": f"{bind_host}:{getattr(layout.ports, port_name)}",
                "ASTARA_WSGI_THREADS": "4",
            }
            daemons.append(Daemon(name, (python, str(WSGI_RUNNER), name), self.logs, env))
        nova_conf = ("--config-file", str(layout.etc("nova") / "nova.conf"))
        for name in ("nova-conductor", "nova-scheduler", "nova-compute"):
            daemons.append(Daemon(name, (str(bin_ / name), *nova_conf), self.logs))
        neutron = layout.etc("neutron")
        rpc = _config_files(neutron, "neutron.conf", "ml2_conf.ini")
        agent = _config_files(neutron, "neutron.conf", "ovs_agent.ini")
        daemons += [
            Daemon("neutron-rpc-server", (str(bin_ / "neutron-rpc-server"), *rpc), self.logs),
            Daemon(
                "neutron-openvswitch-agent",
                (str(bin_ / "neutron-openvswitch-agent"), *agent),
                self.logs,
            ),
        ]
        return daemons

    def _wait_http(self, layout: Layout, daemons: dict[str, Daemon], name: str) -> None:
        _, port_name = WSGI_APPS[name]
        url = layout.url(port_name)
        if name == "nova-metadata":
            url = f"http://[::1]:{layout.ports.metadata}"
        daemon = daemons[name]
        took = bedkit.wait_until(
            lambda: bedkit.http_answers(url),
            120,
            f"{name} at {url}",
            lambda: host._dead(daemon),
        )
        self.say(f"{name} answers at {url} ({took:.1f} s)")

    def _discover_compute(self, layout: Layout, compute: Daemon) -> None:
        conn = keystone.connect(layout)

        def registered() -> bool:
            # The bed's only compute node (named after libvirt's host name, maybe "vm.").
            found = conn.placement.get("/resource_providers", microversion="1.14").json()
            return bool(found["resource_providers"])

        took = bedkit.wait_until(
            registered, 180, "nova-compute in Placement", lambda: host._dead(compute)
        )
        self.say(f"nova-compute registered in Placement ({took:.1f} s)")
        manage = (str(self.venv / "bin/nova-manage"), "--config-file")
        self._run(
            "nova-db",
            (*manage, str(layout.etc("nova") / "nova.conf"), "cell_v2", "discover_hosts"),
        )

    def _wait_agent(self, layout: Layout, agent: Daemon) -> None:
        conn = keystone.connect(layout)

        def alive() -> bool:
            return any(
                a.is_alive and a.binary == "neutron-openvswitch-agent" and a.host == layout.host
                for a in conn.network.agents()
            )

        took = bedkit.wait_until(alive, 120, "neutron-openvswitch-agent", lambda: host._dead(agent))
        self.say(f"neutron-openvswitch-agent alive ({took:.1f} s)")

    def _operator_setup(self, layout: Layout) -> BedInfo:
        admin = keystone.connect(layout)
        service = keystone.connect(layout, "astara-service")
        project = keystone.service_project(admin)
        management = operator.ensure_management_network(admin, project.id)
        external = operator.ensure_external_network(admin)
        prefix = ipaddress.ip_network(external.cidr).prefixlen
        gateway = ipaddress.IPv4Interface(f"{external.gateway}/{prefix}")
        host.Outside(self.state_dir / "outside").up(config.EXTERNAL_BRIDGE, gateway)
        flavors = operator.ensure_flavors(admin)
        group = operator.ensure_server_group(service)
        operator.size_quotas(admin, project.id)
        self.say("operator set-up: management and external networks, flavors, server group, quotas")
        return BedInfo(
            state_dir=str(self.state_dir),
            clouds_yaml=str(self.clouds_yaml),
            auth_url=layout.auth_url,
            host=layout.host,
            urls={name: layout.url(port) for name, (_, port) in WSGI_APPS.items()},
            metadata_port=layout.ports.metadata,
            management=asdict(management),
            external=asdict(external),
            flavors=flavors,
            server_group=group,
        )

    def _token_ok(self) -> bool:
        layout = self._saved_layout()
        if layout is None:
            return False
        try:
            keystone.connect(layout).authorize()
        except (openstack.exceptions.SDKException, httpx.HTTPError):
            return False
        return True

    # -- down ------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove every domain, process, bridge, namespace, database and vhost of the bed."""
        layout = self._saved_layout()
        libvirt = host.Libvirt(self.logs)
        with contextlib.suppress(TestbedError):
            libvirt.remove_domains(self.state_dir / "nova")
        if layout is not None:
            running = [d for d in self._daemons(layout) if d.pid() is not None]
            if running:
                self.say(f"stopping {', '.join(d.name for d in running)}")
            # All at once: eventlet services ignore SIGTERM and each waits out its grace time.
            with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
                _all_done([pool.submit(d.stop, 5) for d in running])
        libvirt.down()
        host.Outside(self.state_dir / "outside").down()
        host.OpenVSwitch(self.state_dir / "ovs").down(config.BRIDGES)
        bedkit.kill_stragglers(self.state_dir)
        if layout is not None:
            self._drop_databases(layout)
        for path in ("nova", "glance", "keystone", "neutron", "bed.json", "ports.json"):
            target = self.state_dir / path
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if Path(CLAIM.read_text().strip()) == self.state_dir:
                CLAIM.unlink()

    def leftovers(self) -> list[str]:
        """What of the bed still exists: empty after a complete ``down``."""
        found = [f"daemon {name} (pid {pid})" for name, pid in self.status().items() if pid]
        found += [f"process {pid}" for pid in bedkit.processes_below(self.state_dir)]
        if (host.OVS_RUN_DIR / "db.sock").exists():
            found.append(f"ovsdb socket {host.OVS_RUN_DIR / 'db.sock'}")
        found += [f"link {name}" for name in host.links(host.PREFIX, *config.BRIDGES)]
        if host.namespace_exists(host.OUTSIDE_NS):
            found.append(f"namespace {host.OUTSIDE_NS}")
        found += [f"database {name}" for name in mariadb.databases(f"{self.name}_")]
        vhosts = _rabbitmqctl_output("list_vhosts", "name").split()
        found += [f"vhost {v}" for v in vhosts if v.startswith(f"{self.name}-")]
        return found

    def _drop_databases(self, layout: Layout) -> None:
        for service, databases in config.DATABASES.items():
            for database in databases:
                mariadb.drop_database(layout.database(database), layout.db_user(service))
        for service in config.VHOSTS:
            _rabbitmqctl("delete_vhost", layout.vhost(service), check=False)
        _rabbitmqctl("delete_user", layout.rabbit_user, check=False)


def _rabbitmqctl_output(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    return done.stdout


def _rabbitmqctl(*args: str, check: bool = True) -> bool:
    """Run rabbitmqctl; False (or, with ``check``, an error) when it fails."""
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise TestbedError(f"rabbitmqctl {args[0]}: {done.stderr.strip()}")
    return done.returncode == 0


def _config_files(directory: Path, *names: str) -> tuple[str, ...]:
    return tuple(arg for name in names for arg in ("--config-file", str(directory / name)))


def _all_done(jobs: list[concurrent.futures.Future[None]]) -> None:
    """Wait for every job; raise the first failure (after all have finished)."""
    concurrent.futures.wait(jobs)
    for job in jobs:
        job.result()


def _check_tools() -> None:
    missing = sorted({pkg for tool, pkg in DEBIAN_TOOLS.items() if not shutil.which(tool)})
    if missing:
        raise TestbedError(
            f"missing Debian packages: {' '.join(missing)}; run tools/bootstrap.sh as root "
            f"(or apt-get install {' '.join(missing)})"
        )
