"""The host side of the OpenStack bed: Open vSwitch, libvirt and the "outside" namespace.

Open vSwitch runs from Debian's package with an ovsdb-server and an ovs-vswitchd of the bed's
own (database and logs in the state directory, sockets in Debian's run directory so every tool
finds them). Its bridges use the userspace datapath (``netdev``): the kernel here has no Open
vSwitch module. libvirtd and virtlogd run in the foreground as children of the bed, unless a
libvirtd already runs (then the bed uses it and leaves it alone). The outside world of the
external network is a namespace holding the external subnet's gateway address, joined to
``br-ex`` by a veth pair.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from astara.testing.bedkit import Daemon, TestbedError, say, wait_until
from astara.testing.netns import Topology, TopologyError
from astara.testing.netns import run as _run

OVS_RUN_DIR = Path("/var/run/openvswitch")
OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
LIBVIRT_SOCKET = Path("/var/run/libvirt/libvirt-sock")
KVM = Path("/dev/kvm")
# Every namespace and veth of the bed starts with this (one OpenStack bed per machine).
PREFIX = "ocb"
OUTSIDE_NS = "ocb-outside"
OUTSIDE_VETH = "ocb-ex"
OUTSIDE_PEER = "ocb-ex-out"


def vsctl(*args: str, timeout: float = 20) -> str:
    done = subprocess.run(
        ["ovs-vsctl", f"--timeout={int(timeout)}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout + 5,
    )
    if done.returncode != 0:
        raise TestbedError(f"ovs-vsctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass(frozen=True)
class OpenVSwitch:
    state_dir: Path

    @property
    def db(self) -> Path:
        return self.state_dir / "conf.db"

    def daemons(self) -> tuple[Daemon, Daemon]:
        sock = OVS_RUN_DIR / "db.sock"
        server = Daemon(
            "ovsdb-server",
            (
                "ovsdb-server",
                str(self.db),
                f"--remote=punix:{sock}",
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                f"--pidfile={OVS_RUN_DIR / 'ovsdb-server.pid'}",
                f"--log-file={self.state_dir / 'ovsdb-server.log'}",
            ),
            self.state_dir,
        )
        switch = Daemon(
            "ovs-vswitchd",
            (
                "ovs-vswitchd",
                f"unix:{sock}",
                f"--pidfile={OVS_RUN_DIR / 'ovs-vswitchd.pid'}",
                f"--log-file={self.state_dir / 'ovs-vswitchd.log'}",
            ),
            self.state_dir,
        )
        return server, switch

    def running(self) -> bool:
        return all(d.pid() is not None for d in self.daemons())

    def up(self) -> None:
        if self.running():
            return
        server, switch = self.daemons()
        if (OVS_RUN_DIR / "db.sock").exists() and server.pid() is None and _ovsdb_answers():
            raise TestbedError(
                f"an Open vSwitch this bed did not start answers on {OVS_RUN_DIR}/db.sock; "
                "stop it (or the other OpenStack bed: astara-testbed down --cloud openstack)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        OVS_RUN_DIR.mkdir(parents=True, exist_ok=True)
        if not self.db.exists():
            _run(["ovsdb-tool", "create", str(self.db), str(OVS_SCHEMA)])
        server.start()
        wait_until(_ovsdb_answers, 20, "ovsdb-server", lambda: _dead(server))
        vsctl("--no-wait", "init")
        # Guests' virtio NICs hand over TCP with partial checksums; without TSO support the
        # userspace datapath's firewall (conntrack) drops them as invalid.
        vsctl("--no-wait", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true")
        switch.start()
        wait_until(_vswitchd_answers, 30, "ovs-vswitchd", lambda: _dead(switch))

    def bridge(self, name: str) -> None:
        vsctl("--may-exist", "add-br", name, "--", "set", "Bridge", name, "datapath_type=netdev")

    def down(self, bridges: Sequence[str] = ()) -> None:
        """Delete the bridges, stop both daemons, forget the database.

        ``bridges``: names to remove from the host even if a killed vswitchd left their
        userspace-datapath devices behind.
        """
        server, switch = self.daemons()
        if not server.pid_file.exists():
            return  # this bed started no Open vSwitch
        if server.pid() is not None and switch.pid() is not None:
            for bridge in vsctl("list-br").split():
                vsctl("--if-exists", "del-br", bridge)
        switch.stop(timeout=5)
        server.stop(timeout=5)
        for name in links(*bridges):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        for leftover in OVS_RUN_DIR.glob("*"):
            leftover.unlink(missing_ok=True)
        self.db.unlink(missing_ok=True)


def _ovsdb_answers() -> bool:
    done = subprocess.run(
        ["ovs-vsctl", "--timeout=2", "--no-wait", "show"], capture_output=True, check=False
    )
    return done.returncode == 0


def _vswitchd_answers() -> bool:
    done = subprocess.run(
        ["ovs-appctl", "-t", "ovs-vswitchd", "version"], capture_output=True, check=False
    )
    return done.returncode == 0


def _dead(daemon: Daemon) -> str | None:
    if daemon.pid() is None:
        return f"{daemon.name} exited; last lines of {daemon.log_file}:\n{daemon.tail()}"
    return None


@dataclass(frozen=True)
class Libvirt:
    """libvirtd (and virtlogd) for QEMU under TCG.

    /dev/kvm here is a PVM KVM that stock guests hang on, readable by root alone: libvirt
    probed QEMU as root with KVM, then found KVM unusable for its QEMU user, discarded its
    capabilities and probed again at every domain start (about 50 s per boot). libvirtd runs
    in a mount namespace of its own where /dev/kvm is a root-only null device, so KVM is
    consistently absent for it; nothing outside that namespace changes.

    libvirtd runs under ``tini -s``: the QEMUs it daemonizes are orphans, and PID 1 here does
    not reap them. An unreaped QEMU is a zombie libvirt takes for alive: every destroy then
    waits for it ("Failed to terminate process ... Device or resource busy"), Nova's calls pile
    up behind it until libvirtd drops Nova's connection, and attaches and deletes fail.
    """

    state_dir: Path

    @property
    def fake_kvm(self) -> Path:
        return self.state_dir / "no-kvm"

    def daemons(self) -> tuple[Daemon, Daemon]:
        libvirtd: tuple[str, ...] = ("libvirtd",)
        if KVM.exists():
            mask = f"mount --bind {self.fake_kvm} {KVM} && exec libvirtd"
            libvirtd = ("unshare", "--mount", "--propagation", "private", "sh", "-c", mask)
        return (
            Daemon("virtlogd", ("virtlogd",), self.state_dir),
            Daemon("libvirtd", ("tini", "-s", "--", *libvirtd), self.state_dir),
        )

    def up(self) -> None:
        virtlogd, libvirtd = self.daemons()
        if libvirtd.pid() is not None or _virsh_answers():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.fake_kvm.exists():
            os.mknod(self.fake_kvm, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        if virtlogd.pid() is None:
            virtlogd.start()
        libvirtd.start()
        wait_until(_virsh_answers, 30, "libvirtd", lambda: _dead(libvirtd))

    def domains(self, under: Path) -> list[str]:
        """Names of the domains whose disks live below ``under`` (the bed's instances)."""
        if not _virsh_answers():
            return []
        names = virsh("list", "--all", "--name").split()
        return [name for name in names if str(under) in virsh("dumpxml", name)]

    def remove_domains(self, under: Path) -> None:
        for name in self.domains(under):
            say(f"removing domain {name}")
            try:
                virsh("destroy", name, check=False)
                virsh("undefine", "--nvram", name, check=False)
            except subprocess.TimeoutExpired:
                # libvirtd busy (Nova deleting guests at the same time): the guest's QEMU is
                # ours to stop, and libvirtd itself is stopped next.
                say(f"virsh timed out on {name}; killing its QEMU")
                subprocess.run(["pkill", "-KILL", "-f", f"guest={name},"], check=False)

    def down(self) -> None:
        for daemon in reversed(self.daemons()):
            daemon.stop()


def virsh(*args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["virsh", "-c", "qemu:///system", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and done.returncode != 0:
        raise TestbedError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _virsh_answers() -> bool:
    if not LIBVIRT_SOCKET.exists():
        return False
    done = subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, check=False, timeout=20
    )
    return done.returncode == 0


def domain_interfaces(name: str) -> list[tuple[str, str]]:
    """(tap device, MAC) of each NIC of a libvirt domain (``virsh domiflist``)."""
    rows = virsh("domiflist", name).splitlines()[2:]
    return [(row.split()[0], row.split()[-1]) for row in rows if row.strip()]


@dataclass(frozen=True)
class Outside:
    """The external network's outside world: a namespace on br-ex holding the gateway."""

    state_dir: Path

    def up(self, bridge: str, gateway: ipaddress.IPv4Interface) -> None:
        topo = self._topology()
        if namespace_exists(OUTSIDE_NS):
            return
        ns = topo.namespace(OUTSIDE_NS)
        _run(["ip", "link", "add", OUTSIDE_VETH, "type", "veth", "peer", OUTSIDE_PEER])
        _run(["ip", "link", "set", OUTSIDE_PEER, "netns", ns.name])
        ns.run(["ip", "addr", "add", str(gateway), "dev", OUTSIDE_PEER])
        ns.run(["ip", "link", "set", OUTSIDE_PEER, "up"])
        _run(["ip", "link", "set", OUTSIDE_VETH, "up"])
        vsctl("--may-exist", "add-port", bridge, OUTSIDE_VETH)

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command in the outside namespace (ping a floating IP from outside)."""
        return subprocess.run(
            ["ip", "netns", "exec", OUTSIDE_NS, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def down(self) -> None:
        try:
            self._topology().sweep()
        except TopologyError as exc:
            say(f"outside namespace: {exc}")
        subprocess.run(["ip", "link", "del", OUTSIDE_VETH], capture_output=True, check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _topology(self) -> Topology:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return Topology(PREFIX, workdir=self.state_dir)


def links(*prefixes: str) -> list[str]:
    """Names of the host's network interfaces that start with one of ``prefixes``."""
    listed = json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")
    return [link["ifname"] for link in listed if link["ifname"].startswith(prefixes)]


def namespace_exists(name: str) -> bool:
    listed = json.loads(_run(["ip", "-j", "netns", "list"]).stdout or "[]")
    return any(entry.get("name") == name for entry in listed)
