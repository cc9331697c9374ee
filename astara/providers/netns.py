"""The embedded instance provider: each appliance in a Linux network namespace of its own.

Layout, every name starting with the provider's prefix (default ``ast``):

* ``<prefix>-fabric``: a namespace holding the L2 fabric, one Linux bridge per Neutron network
  (``<prefix>b<hash>``) and the management bridge (``<prefix>-mgmtbr``).
* ``<prefix>-<hash>``: one namespace per instance; each port is a veth pair whose instance end
  carries the Neutron port's MAC and MTU and whose fabric end is enslaved to its bridge.
* ``<prefix>-mgmt``: a veth in the orchestrator's namespace, its peer on the management bridge.
  It touches nothing but our own namespaces and carries the management subnet, an IPv6 ULA
  (default ``fdca:3ba5:a17a:acda::/64``, upstream Astara's): the orchestrator holds ``::1`` and
  each instance the lowest free address from ``::2`` up. IPv6 gives room for any number of
  instances; addresses are added without DAD so the API is reachable at once.
* ``<prefix>-uplink``: a namespace playing the outside world, wired to an external network's
  bridge by ``ensure_uplink`` and holding that network's gateway address.

The appliance runs inside its namespace (``ip netns exec``), with its certificate, key, log
and pid file under ``state_dir/<instance namespace>/`` (and its heartbeat key there, when the
provider is given a heartbeat target), confined to that directory: it sees neither the
orchestrator's secrets nor another appliance's files (``astara.providers.confine``). A JSON
record per instance, written atomically before anything is created and removed last, lets a
new provider object re-adopt what exists after a restart.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oslo_config import cfg
from pydantic import BaseModel, ConfigDict

from astara.common.processes import first_child, is_alive, process_argv
from astara.common.tls import CertificateAuthority
from astara.providers.base import (
    Instance,
    InstanceSpec,
    InstanceState,
    PortSpec,
    Provider,
    ProviderContext,
    ProviderError,
)
from astara.providers.confine import confined
from astara.wire.defaults import API_PORT
from astara.wire.heartbeat import DEFAULT_INTERVAL

DEFAULT_PREFIX = "ast"
DEFAULT_MANAGEMENT_SUBNET = "fdca:3ba5:a17a:acda::/64"
IFNAMSIZ = 15
NETNS_DIR = Path("/run/netns")
RECORD_FILE = "instance.json"
PID_FILE = "appliance.pid"
LOCK_FILE = ".provider.lock"
LOG_FILE = "appliance.log"
HEARTBEAT_KEY_FILE = "heartbeat.key"
PROC = Path("/proc")
STOP_TIMEOUT = 3.0
CONFINE_TIMEOUT = 2.0  # for the confining process to fork the appliance
PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,5}")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def short_hash(key: str, length: int = 8) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Names:
    """Every namespace and link name the provider uses, derived from ids (pure)."""

    prefix: str

    def __post_init__(self) -> None:
        # 6 characters leave 8 hex digits of hash in a 15-character interface name.
        if not PREFIX_RE.fullmatch(self.prefix):
            raise ValueError("prefix must be 1-6 letters or digits, starting with a letter")

    def _link(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}{short_hash(key, IFNAMSIZ)}"[:IFNAMSIZ]

    @property
    def fabric_ns(self) -> str:
        return f"{self.prefix}-fabric"

    @property
    def uplink_ns(self) -> str:
        return f"{self.prefix}-uplink"

    @property
    def management_bridge(self) -> str:
        return f"{self.prefix}-mgmtbr"

    @property
    def host_management_link(self) -> str:
        return f"{self.prefix}-mgmt"

    @property
    def fabric_management_link(self) -> str:
        return f"{self.prefix}-mgmtf"

    def instance_ns(self, instance_id: str) -> str:
        return f"{self.prefix}-{short_hash(instance_id)}"

    def network_bridge(self, network_id: str) -> str:
        return self._link("b", network_id)

    def port_fabric_link(self, port_id: str) -> str:
        return self._link("f", port_id)

    def port_instance_link(self, port_id: str) -> str:
        return self._link("i", port_id)

    def uplink_fabric_link(self, network_id: str) -> str:
        return self._link("u", network_id)

    def uplink_link(self, network_id: str) -> str:
        return self._link("x", network_id)

    def bridge_for(self, port: PortSpec) -> str:
        if port.kind == "management":
            return self.management_bridge
        return self.network_bridge(port.network_id)


def host_management_address(subnet: IpNetwork) -> IpInterface:
    """The orchestrator's own address on the management link: the subnet's first host."""
    return ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


def allocate_management_address(subnet: IpNetwork, used: Iterable[IpAddress]) -> IpInterface:
    """The lowest address of ``subnet`` that neither the orchestrator nor an instance holds."""
    taken = {int(ip) for ip in used} | {int(host_management_address(subnet).ip)}
    first = int(subnet.network_address) + 1
    # IPv4 keeps the broadcast address free; IPv6 has none.
    last = int(subnet.broadcast_address) - (1 if subnet.version == 4 else 0)
    candidate = first
    while candidate in taken:
        candidate += 1
    if candidate > last:
        raise ProviderError(f"management subnet {subnet} has no free address")
    return ipaddress.ip_interface(f"{ipaddress.ip_address(candidate)}/{subnet.prefixlen}")


def format_target(host: str, port: int) -> str:
    """``HOST:PORT`` as astara-appliance's --heartbeat takes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pids_naming(marker: str, proc: Path = PROC) -> list[int]:
    """Live processes whose command line contains ``marker``: how an instance's processes
    are found once its namespace is gone (they may still run in the unnamed namespace)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        argv = process_argv(pid)
        if argv is not None and marker in " ".join(argv) and is_alive(pid):
            found.append(pid)
    return found


class InstanceRecord(BaseModel):
    """What the provider remembers of an instance, in ``state_dir/<namespace>/instance.json``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    router_id: str
    namespace: str
    management_address: str
    ports: list[PortSpec]

    def port(self, port_id: str) -> PortSpec | None:
        return next((port for port in self.ports if port.port_id == port_id), None)


def _traversable_dir(path: Path) -> None:
    """Others may pass through, not list: dnsmasq drops to an unprivileged user and must
    reach its files below; the keys in here stay 0600."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o711)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one rename; root only (records name ports, MACs and addresses)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Ip:
    """The ``ip`` command, optionally inside a namespace (``ip -n``)."""

    def run(self, *args: str, ns: str | None = None) -> str:
        argv = ["ip", *(["-n", ns] if ns else []), *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ProviderError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def links(self, ns: str | None = None, *filters: str) -> list[dict[str, Any]]:
        if ns is not None and not (NETNS_DIR / ns).exists():
            return []  # a namespace deleted behind our back took its links with it
        out = self.run("-j", "link", "show", *filters, ns=ns)
        return json.loads(out) if out.strip() else []

    def link_exists(self, name: str, ns: str | None = None) -> bool:
        return any(link["ifname"] == name for link in self.links(ns))

    def delete_link(self, name: str, ns: str | None = None) -> None:
        if not self.link_exists(name, ns):
            return
        try:
            self.run("link", "del", name, ns=ns)
        except ProviderError:
            # A veth goes by itself when its peer's namespace dies: that may happen between
            # the check and the delete.
            if self.link_exists(name, ns):
                raise

    def ensure_ns(self, name: str) -> None:
        if not (NETNS_DIR / name).exists():
            self.run("netns", "add", name)
            self.run("link", "set", "lo", "up", ns=name)

    def delete_ns(self, name: str) -> None:
        if (NETNS_DIR / name).exists():
            self.run("netns", "del", name)

    def ns_pids(self, name: str) -> list[int]:
        if not (NETNS_DIR / name).exists():
            return []
        return [int(pid) for pid in self.run("netns", "pids", name).split()]

    def sysctl(self, ns: str, key: str, value: str) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ProviderError(f"sysctl {key}={value} in {ns}: {done.stderr.strip()}")


class ApplianceProcesses:
    """Starts appliances in their namespace and stops everything running there.

    Our children are kept so they can be reaped: PID 1 on these hosts does not reap orphans.
    """

    def __init__(self, ip: Ip) -> None:
        self.ip = ip
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._child_ns: dict[int, str] = {}

    def start(self, ns: str, argv: Sequence[str], pid_file: Path, log_file: Path) -> int:
        # The appliance logs tenants' addresses and names: root only, whatever the umask.
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(log_fd, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            child = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[child.pid] = child
        self._child_ns[child.pid] = ns
        write_atomically(pid_file, f"{child.pid}\n")
        return child.pid

    def running(self, pid_file: Path, marker: str) -> int | None:
        """The live process of ``pid_file``; one we did not start must name ``marker``."""
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        child = self._children.get(pid)
        if child is not None:
            # Until it has exec'd, our child's command line is still ours: trust poll().
            if child.poll() is None:
                return pid
            self._forget(pid)
            return None
        argv = process_argv(pid)
        if not is_alive(pid) or argv is None or marker not in " ".join(argv):
            return None
        return pid

    def stop_namespace(self, ns: str, marker: str | None = None) -> None:
        """SIGTERM every process in ``ns`` (and every one naming ``marker``), SIGKILL the
        ones still there, reap our own."""
        # A child just started may not have entered the namespace yet: it is not listed there.
        ours = [pid for pid, where in self._child_ns.items() if where == ns]
        named = pids_naming(marker) if marker is not None else []
        pids = sorted(set(self.ip.ns_pids(ns)) | set(ours) | set(named))
        # SIGCONT after SIGTERM: a frozen (SIGSTOPped) process then exits cleanly at once.
        for signals in ((signal.SIGTERM, signal.SIGCONT), (signal.SIGKILL,)):
            for pid in pids:
                for signum in signals:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
            pids = self._wait_gone(pids)
            if not pids:
                break
        if pids:
            raise ProviderError(f"processes {pids} in {ns} survived SIGKILL")

    def _forget(self, pid: int) -> None:
        # Reaped: the PID may be recycled, so it must never be signalled again.
        del self._children[pid]
        del self._child_ns[pid]

    def _wait_gone(self, pids: list[int]) -> list[int]:
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            alive = [pid for pid in pids if not self._gone(pid)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.02)

    def _gone(self, pid: int) -> bool:
        """Exited and, when it is a child of ours, reaped.

        A multi-threaded process whose main thread has exited already shows 'Z' while its
        other threads run: only a successful wait says a child is really gone.
        """
        child = self._children.get(pid)
        if child is not None:
            if child.poll() is None:
                return False
            self._forget(pid)
            return True
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Not our child (another process started it): its parent reaps it.
            return not is_alive(pid)
        return reaped == pid


@dataclass(frozen=True)
class Uplink:
    namespace: str
    ifname: str


class NetnsProvider(Provider):
    """Appliances in network namespaces, wired by veth pairs to per-network bridges."""

    name = "netns"

    def __init__(
        self,
        state_dir: Path | str,
        ca: CertificateAuthority,
        prefix: str = DEFAULT_PREFIX,
        management_subnet: str = DEFAULT_MANAGEMENT_SUBNET,
        appliance_command: Sequence[str] | None = None,
        api_port: int = API_PORT,
        heartbeat_target: tuple[str, int] | None = None,
        heartbeat_key: Callable[[str], bytes] | None = None,
        heartbeat_interval: float = DEFAULT_INTERVAL,
        private_paths: Sequence[Path | str] = (),
    ) -> None:
        """``heartbeat_target`` (host, port) and ``heartbeat_key`` (instance id -> HMAC key)
        together make every appliance booted from now on send heartbeats there, every
        ``heartbeat_interval`` seconds. ``private_paths``: directories no appliance may see
        (the orchestrator's state: its CA, secrets and keys); the provider's own state
        directory is always one (see ``astara.providers.confine``)."""
        self.state_dir = Path(state_dir)
        self.ca = ca
        self.names = Names(prefix)
        self.management_subnet: IpNetwork = ipaddress.ip_network(management_subnet)
        self.appliance_command = tuple(
            appliance_command
            if appliance_command is not None
            else (str(Path(sys.executable).with_name("astara-appliance")),)
        )
        self.api_port = api_port
        self.heartbeat_target = heartbeat_target
        self.heartbeat_key = heartbeat_key
        self.heartbeat_interval = heartbeat_interval
        self.private_paths = (self.state_dir, *map(Path, private_paths))
        self.ip = Ip()
        self.processes = ApplianceProcesses(self.ip)

    @classmethod
    def from_config(cls, conf: cfg.ConfigOpts, context: ProviderContext) -> NetnsProvider:
        group = conf.provider
        return cls(
            state_dir=Path(group.state_path),
            ca=context.ca,
            prefix=group.prefix,
            management_subnet=group.management_subnet,
            api_port=context.api_port,
            heartbeat_target=context.heartbeat_target,
            heartbeat_key=context.heartbeat_key,
            heartbeat_interval=context.heartbeat_interval,
            private_paths=[conf.state_path],  # the orchestrator's CA, secrets and client key
        )

    # -- the Provider interface ---------------------------------------------------------

    def boot(self, spec: InstanceSpec) -> Instance:
        management = spec.management_port()
        with self._locked():
            return self._boot(spec, management)

    def _boot(self, spec: InstanceSpec, management: PortSpec) -> Instance:
        record = self._load(spec.instance_id)
        if record is None:
            record = InstanceRecord(
                id=spec.instance_id,
                router_id=spec.router_id,
                namespace=self.names.instance_ns(spec.instance_id),
                management_address=str(self._allocate()),
                ports=list(spec.ports),
            )
            self._save(record)
        self._ensure_fabric()
        self.ip.ensure_ns(record.namespace)
        for port in record.ports:
            self._wire(record, port)
        self.ip.run(
            "addr",
            "replace",
            record.management_address,
            "dev",
            self.names.port_instance_link(management.port_id),
            "nodad",
            ns=record.namespace,
        )
        self._ensure_appliance(record)
        return self._observe(record)

    def plug(self, instance: Instance, port: PortSpec) -> Instance:
        with self._locked():
            record = self._require(instance.id)
            if record.port(port.port_id) is None:
                record.ports.append(port)
                self._save(record)
            self._wire(record, port)
            return self._observe(record)

    def unplug(self, instance: Instance, port_id: str) -> Instance:
        with self._locked():
            record = self._require(instance.id)
            port = record.port(port_id)
            if port is not None:
                self._unwire(port)
                record.ports.remove(port)
                self._save(record)
            return self._observe(record)

    def delete(self, instance_id: str) -> None:
        with self._locked():
            record = self._load(instance_id)
            namespace = record.namespace if record else self.names.instance_ns(instance_id)
            # Found by their paths too: a namespace deleted behind our back lists nobody.
            self.processes.stop_namespace(namespace, f"{self.state_dir / namespace}/")
            for port in record.ports if record else []:
                self._unwire(port)
            self.ip.delete_ns(namespace)
            # The record goes last: until then a crash leaves something to find and delete.
            shutil.rmtree(self.state_dir / namespace, ignore_errors=True)

    def list(self) -> builtins.list[Instance]:
        return [self._observe(record) for record in self._records()]

    def get(self, instance_id: str) -> Instance | None:
        record = self._load(instance_id)
        return self._observe(record) if record else None

    # -- the fabric and the outside world ------------------------------------------------

    def ensure_fabric(self) -> None:
        """The fabric namespace, the management bridge and the orchestrator's management link."""
        with self._locked():
            self._ensure_fabric()

    def _ensure_fabric(self) -> None:
        fabric = self.names.fabric_ns
        self.ip.ensure_ns(fabric)
        # Bridges only switch frames: no addresses, no router solicitations of their own.
        self.ip.sysctl(fabric, "net.ipv6.conf.default.disable_ipv6", "1")
        self.ip.sysctl(fabric, "net.ipv6.conf.all.disable_ipv6", "1")
        self._ensure_bridge(self.names.management_bridge)
        host, peer = self.names.host_management_link, self.names.fabric_management_link
        if not self.ip.link_exists(host):
            self.ip.run("link", "add", host, "type", "veth", "peer", "name", peer, "netns", fabric)
        self.ip.run("link", "set", peer, "master", self.names.management_bridge, "up", ns=fabric)
        address = host_management_address(self.management_subnet)
        self.ip.run("addr", "replace", str(address), "dev", host, "nodad")
        self.ip.run("link", "set", host, "up")

    def ensure_uplink(self, network_id: str, gateway_cidr: str) -> Uplink:
        """Wire external network ``network_id`` to the uplink namespace, holding its gateway."""
        with self._locked():
            return self._ensure_uplink(network_id, gateway_cidr)

    def _ensure_uplink(self, network_id: str, gateway_cidr: str) -> Uplink:
        self._ensure_fabric()
        uplink_ns = self.names.uplink_ns
        self.ip.ensure_ns(uplink_ns)
        bridge = self._ensure_bridge(self.names.network_bridge(network_id))
        fabric_end = self.names.uplink_fabric_link(network_id)
        outside_end = self.names.uplink_link(network_id)
        if not self.ip.link_exists(fabric_end, self.names.fabric_ns):
            self.ip.run(
                "link", "add", fabric_end, "type", "veth", "peer", "name", outside_end,
                "netns", uplink_ns, ns=self.names.fabric_ns,
            )  # fmt: skip
        self.ip.run("link", "set", fabric_end, "master", bridge, "up", ns=self.names.fabric_ns)
        self.ip.run("addr", "replace", gateway_cidr, "dev", outside_end, "nodad", ns=uplink_ns)
        self.ip.run("link", "set", outside_end, "up", ns=uplink_ns)
        return Uplink(uplink_ns, outside_end)

    def teardown(self) -> None:
        """Delete every instance, the uplink, the fabric and the management link."""
        for record in self._records():
            self.delete(record.id)
        with self._locked():
            for ns in (self.names.uplink_ns, self.names.fabric_ns):
                self.processes.stop_namespace(ns)
                self.ip.delete_ns(ns)
            self.ip.delete_link(self.names.host_management_link)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time across threads and processes sharing ``state_dir``.

        Address allocation reads every record, and bridges are shared between instances.
        """
        _traversable_dir(self.state_dir)
        with (self.state_dir / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # -- wiring ----------------------------------------------------------------------------

    def _ensure_bridge(self, name: str) -> str:
        fabric = self.names.fabric_ns
        if not self.ip.link_exists(name, fabric):
            self.ip.run(
                "link", "add", name, "type", "bridge", "forward_delay", "0",
                "mcast_snooping", "0", ns=fabric,
            )  # fmt: skip
        self.ip.run("link", "set", name, "up", ns=fabric)
        return name

    def ensure_network_bridge(self, network_id: str) -> str:
        """The bridge of a network (created if needed), e.g. to plug a workload on it."""
        with self._locked():
            self._ensure_fabric()
            return self._ensure_bridge(self.names.network_bridge(network_id))

    def _wire(self, record: InstanceRecord, port: PortSpec) -> None:
        fabric = self.names.fabric_ns
        bridge = self._ensure_bridge(self.names.bridge_for(port))
        fabric_end = self.names.port_fabric_link(port.port_id)
        inside_end = self.names.port_instance_link(port.port_id)
        mtu = str(port.mtu)
        if not self.ip.link_exists(fabric_end, fabric):
            self.ip.run(
                "link", "add", fabric_end, "mtu", mtu, "type", "veth",
                "peer", "name", inside_end, "netns", record.namespace,
                "address", port.mac, "mtu", mtu, ns=fabric,
            )  # fmt: skip
        self.ip.run("link", "set", fabric_end, "master", bridge, "mtu", mtu, "up", ns=fabric)
        self.ip.run("link", "set", inside_end, "up", ns=record.namespace)

    def _unwire(self, port: PortSpec) -> None:
        # Deleting one end of a veth deletes its peer inside the instance too.
        self.ip.delete_link(self.names.port_fabric_link(port.port_id), self.names.fabric_ns)
        bridge = self.names.bridge_for(port)
        if bridge != self.names.management_bridge and self._bridge_unused(bridge):
            self.ip.delete_link(bridge, self.names.fabric_ns)

    def _bridge_unused(self, bridge: str) -> bool:
        fabric = self.names.fabric_ns
        if not self.ip.link_exists(bridge, fabric):
            return False
        return not self.ip.links(fabric, "master", bridge)

    # -- the appliance process --------------------------------------------------------------

    def _instance_dir(self, record: InstanceRecord) -> Path:
        return self.state_dir / record.namespace

    def _ensure_appliance(self, record: InstanceRecord) -> None:
        directory = self._instance_dir(record)
        pid_file = directory / PID_FILE
        if self.processes.running(pid_file, str(directory)) is not None:
            return
        management_ip = ipaddress.ip_interface(record.management_address).ip
        cert, key, ca = (
            directory / "appliance.pem",
            directory / "appliance.key",
            directory / "ca.pem",
        )
        self.ca.issue(f"appliance-{record.id}", "server", ips=[management_ip]).write(cert, key)
        ca.write_bytes(self.ca.cert_pem)
        argv = [
            *self.appliance_command,
            "--listen", str(management_ip),
            "--port", str(self.api_port),
            "--cert", str(cert),
            "--key", str(key),
            "--ca", str(ca),
            "--state-dir", str(directory / "appliance"),
            *self._heartbeat_arguments(record, directory),
        ]  # fmt: skip
        started = self.processes.start(
            record.namespace,
            confined(self.private_paths, directory, argv),
            pid_file,
            directory / LOG_FILE,
        )
        # The appliance is the confining process's one child (PID 1 of its own namespace): the
        # PID file names it, so that a signal sent by its PID reaches the appliance itself.
        appliance = first_child(started, CONFINE_TIMEOUT)
        if appliance is not None:
            write_atomically(pid_file, f"{appliance}\n")

    def _heartbeat_arguments(self, record: InstanceRecord, directory: Path) -> builtins.list[str]:
        if self.heartbeat_target is None or self.heartbeat_key is None:
            return []
        key_file = directory / HEARTBEAT_KEY_FILE
        # Hex text: the appliance decodes it, so any key bytes survive the trip unchanged.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.heartbeat_key(record.id).hex() + "\n")
        return [
            "--instance-id", record.id,
            "--heartbeat", format_target(*self.heartbeat_target),
            "--heartbeat-key-file", str(key_file),
            "--heartbeat-interval", str(self.heartbeat_interval),
        ]  # fmt: skip

    # -- records ------------------------------------------------------------------------------

    def _records(self) -> builtins.list[InstanceRecord]:
        found = []
        for path in sorted(self.state_dir.glob(f"{self.names.prefix}-*/{RECORD_FILE}")):
            found.append(InstanceRecord.model_validate_json(path.read_text()))
        return found

    def _load(self, instance_id: str) -> InstanceRecord | None:
        path = self.state_dir / self.names.instance_ns(instance_id) / RECORD_FILE
        if not path.exists():
            return None
        return InstanceRecord.model_validate_json(path.read_text())

    def _require(self, instance_id: str) -> InstanceRecord:
        record = self._load(instance_id)
        if record is None:
            raise ProviderError(f"instance {instance_id} does not exist")
        return record

    def _save(self, record: InstanceRecord) -> None:
        directory = self._instance_dir(record)
        _traversable_dir(directory)
        write_atomically(directory / RECORD_FILE, record.model_dump_json(indent=1))

    def _allocate(self) -> IpInterface:
        used = [ipaddress.ip_interface(r.management_address).ip for r in self._records()]
        return allocate_management_address(self.management_subnet, used)

    def _observe(self, record: InstanceRecord) -> Instance:
        state: InstanceState = "missing"
        if (NETNS_DIR / record.namespace).exists():
            directory = self._instance_dir(record)
            running = self.processes.running(directory / PID_FILE, str(directory))
            state = "running" if running is not None else "stopped"
        return Instance(
            id=record.id,
            router_id=record.router_id,
            provider=self.name,
            management_address=str(ipaddress.ip_interface(record.management_address).ip),
            state=state,
            ports=tuple(record.ports),
        )
