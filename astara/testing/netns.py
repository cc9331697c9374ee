"""Network-namespace topologies for functional tests, benchmarks and the demo.

A ``Topology`` owns everything it creates (namespaces, veth pairs, processes, the
``/etc/netns/<ns>`` directories) and removes it all on ``close()``, also after a failure, so
nothing leaks between runs. Every name must start with the topology's prefix; ``sweep``
removes what an earlier crashed run with the same prefix left behind.

Pitfalls handled here (measured, see linux-measurements.md): ``ip netns exec`` only shields
the host's /etc/resolv.conf when ``/etc/netns/<ns>/resolv.conf`` exists, so it is created
with each namespace; PID 1 does not reap orphans, so a process counts as gone when it is
absent or a zombie.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

NETNS_ETC = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 15

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# udhcpc calls this with the lease in its environment; it configures the interface with
# iproute2, writes DNS servers to $RESOLV_CONF (never the host's file) and the whole lease
# (udhcpc's variables: ip, router, ntpsrv...) to $LEASE.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig)
    ip link set dev "$interface" up
    ip -4 addr flush dev "$interface" scope global ;;
  bound|renew)
    env > "$LEASE"
    ip -4 addr flush dev "$interface" scope global
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && { set -- $router; ip route replace default via "$1" dev "$interface"; }
    [ -n "$dns" ] && { for s in $dns; do echo "nameserver $s"; done; } > "$RESOLV_CONF"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu" ;;
esac
exit 0
"""


# ISC dhclient calls this for DHCPv6 (reason BOUND6, INFORM6...): it sets a stateful lease's
# address and writes what the server gave (dhclient's variable names) to OUT (dhclient gives
# its script an environment of its own, so the path is written into each copy).
DHCLIENT6_SCRIPT = """#!/bin/sh
case "$reason" in
  BOUND6|RENEW6|REBIND6|INFORM6)
    [ -n "$new_ip6_address" ] && ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" \\
        dev "$interface" nodad
    { echo "ip6_address=$new_ip6_address"
      echo "dhcp6_name_servers=$new_dhcp6_name_servers"
      echo "dhcp6_domain_search=$new_dhcp6_domain_search"; } > "OUT" ;;
esac
exit 0
"""


class TopologyError(RuntimeError):
    pass


def _variables(path: Path) -> dict[str, str]:
    """``name=value`` lines a DHCP client's script wrote; empty when it wrote none."""
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split("=", 1) for line in lines if "=" in line)


def run(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise TopologyError(f"{' '.join(argv)}: rc={done.returncode} {done.stderr.strip()}")
    return done


def process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (absent, or a zombie nobody reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Move this thread into ``ns`` and back; threads and processes it starts stay there."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns}") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> object:
    """Poll ``condition`` until it returns something truthy; raise naming ``what`` if never."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TopologyError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Namespace:
    """A network namespace, and how to run things in it."""

    name: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise TopologyError(
                f"[{self.name}] {' '.join(argv)}: rc={done.returncode} "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def router_advertisement(self, ifname: str, wait_ms: int = 2000) -> str:
        """rdisc6's report of one router advertisement on ``ifname`` (it solicits one), or ""
        when none came in ``wait_ms``."""
        done = self.run(["rdisc6", "-1", "-w", str(wait_ms), ifname], check=False)
        return done.stdout if "Hop limit" in done.stdout else ""

    def addresses(
        self, ifname: str, version: int = 4
    ) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        out = self.run(
            ["ip", f"-{version}", "-o", "addr", "show", "dev", ifname, "scope", "global"]
        )
        found = []
        for line in out.stdout.splitlines():
            words = line.split()
            if "tentative" not in words:
                found.append(ipaddress.ip_interface(words[3]))
        return found


@dataclass
class Process:
    """A process started in a namespace; its output goes to ``log``."""

    namespace: str
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Topology:
    """Namespaces, veth pairs and processes that are all removed on ``close()``."""

    prefix: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="astara-netns-")))
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Daemons that drop root (dnsmasq runs as nobody) read their files below this.
        self.workdir.chmod(0o755)

    def __enter__(self) -> Topology:
        self.sweep()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_name(self, name: str) -> None:
        if not name.startswith(self.prefix) or len(name) > IFNAMSIZ:
            raise TopologyError(f"{name!r}: names must start with {self.prefix!r}, max 15 chars")

    def namespace(self, name: str) -> Namespace:
        self._check_name(name)
        # Created before the namespace, so even a crash in between leaves no DHCP client a
        # path to the host's resolv.conf.
        etc = NETNS_ETC / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").touch()
        run(["ip", "netns", "add", name])
        ns = Namespace(name)
        self.namespaces[name] = ns
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def veth(
        self,
        left: Namespace,
        left_name: str,
        right: Namespace,
        right_name: str,
        left_mac: str | None = None,
        right_mac: str | None = None,
    ) -> None:
        """A veth pair created directly inside the two namespaces, both ends up."""
        self._check_name(left_name)
        self._check_name(right_name)
        argv = ["ip", "link", "add", left_name, "netns", left.name]
        argv += ["address", left_mac] if left_mac else []
        argv += ["type", "veth", "peer", "name", right_name, "netns", right.name]
        argv += ["address", right_mac] if right_mac else []
        run(argv)
        left.run(["ip", "link", "set", left_name, "up"])
        right.run(["ip", "link", "set", right_name, "up"])

    def spawn(
        self, ns: Namespace, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Process:
        """Start a long-running process in ``ns``; it is stopped by PID on close()."""
        log = self.workdir / f"{ns.name}-{len(self.processes)}-{Path(argv[0]).name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                ns.argv(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        process = Process(ns.name, tuple(argv), popen, log)
        self.processes.append(process)
        return process

    def dhcp(
        self, ns: Namespace, ifname: str, timeout: int = 5, request: Sequence[str] = ()
    ) -> ipaddress.IPv4Interface:
        """Get an IPv4 lease for ``ifname`` with udhcpc (one shot); return the address.
        ``request`` names more options to ask for (udhcpc's names or numbers); ``lease()``
        tells what came."""
        script = self.workdir / "udhcpc.sh"
        if not script.exists():
            script.write_text(UDHCPC_SCRIPT)
            script.chmod(0o755)
        self._lease_file(ns).unlink(missing_ok=True)
        ns.run(
            [
                # Only the lease reaches the script's environment (and $LEASE), not ours.
                "env",
                "-i",
                f"PATH={SYSTEM_PATH}",
                f"RESOLV_CONF={self.workdir / (ns.name + '.resolv')}",
                f"LEASE={self._lease_file(ns)}",
                "udhcpc",
                "-i",
                ifname,
                "-s",
                str(script),
                "-f",
                "-q",
                "-n",
                "-t",
                str(timeout),
                "-T",
                "1",
                # As a VM's client does: ask for the interface MTU (option 26) and apply it.
                "-O",
                "mtu",
                *(arg for option in request for arg in ("-O", option)),
            ],
            timeout=timeout * 2 + 5,
        )
        found = ns.addresses(ifname, 4)
        if not found:
            raise TopologyError(f"[{ns.name}] udhcpc set no address on {ifname}")
        return ipaddress.IPv4Interface(str(found[0]))

    def lease(self, ns: Namespace) -> dict[str, str]:
        """What the last IPv4 lease in ``ns`` gave, by udhcpc's names (ip, router, ntpsrv...);
        empty before the first."""
        return _variables(self._lease_file(ns))

    def _lease_file(self, ns: Namespace) -> Path:
        return self.workdir / f"{ns.name}.lease"

    def dhcp6(
        self, ns: Namespace, ifname: str, stateless: bool = False, timeout: int = 10
    ) -> dict[str, str]:
        """DHCPv6 with ISC dhclient, once: a stateful exchange sets the leased address on
        ``ifname``; a stateless one (information request) only asks for options. Returns what
        the server gave, by dhclient's names (ip6_address, dhcp6_name_servers...)."""
        files = {
            k: self.workdir / f"{ns.name}-{ifname}.{k}" for k in ("lease6", "pid6", "out6", "sh")
        }
        files["sh"].write_text(DHCLIENT6_SCRIPT.replace('"OUT"', f'"{files["out6"]}"'))
        files["sh"].chmod(0o755)
        files["out6"].unlink(missing_ok=True)
        # The client speaks from its link-local address: wait for it to leave DAD.
        wait_for(
            lambda: (
                ns.run(["ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link"])
                .stdout.strip()
                .count("tentative")
                == 0
            ),
            timeout,
            f"a link-local address on {ns.name} {ifname}",
        )
        argv = ["dhclient", "-6", "-1", "-v", *(["-S"] if stateless else [])]
        argv += ["-sf", str(files["sh"]), "-lf", str(files["lease6"]), "-pf", str(files["pid6"])]
        try:
            ns.run([*argv, ifname], timeout=timeout * 2 + 5)
        finally:
            # dhclient stays behind to renew; nothing here wants it to.
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(files["pid6"].read_text()), signal.SIGTERM)
        if not files["out6"].exists():
            raise TopologyError(f"[{ns.name}] dhclient -6 got no answer on {ifname}")
        return _variables(files["out6"])

    def close(self) -> None:
        """Stop our processes, then every process left in our namespaces, then delete them."""
        for process in reversed(self.processes):
            with contextlib.suppress(OSError):
                process.stop()
        self.processes.clear()
        for name in list(self.namespaces):
            self._remove_namespace(name)
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def sweep(self) -> None:
        """Remove namespaces with our prefix that a crashed earlier run left behind."""
        listed = run(["ip", "netns", "list"]).stdout.split("\n")
        for line in listed:
            name = line.split(" ", 1)[0]
            if name.startswith(self.prefix):
                self._remove_namespace(name)

    def _remove_namespace(self, name: str) -> None:
        # Daemons started inside (dnsmasq, radvd...) die with their namespace's processes.
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in map(int, pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in map(int, pids):
            with contextlib.suppress(TopologyError):
                wait_for(functools.partial(process_gone, pid), 5, f"pid {pid} to exit")
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
