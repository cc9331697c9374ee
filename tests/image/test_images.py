"""The images astara-image builds, booted under plain QEMU TCG (no Nova, no libvirt).

QEMU runs as Nova's libvirt driver runs it with ``virt_type = qemu``: SeaBIOS, a virtio disk,
virtio NICs, the config drive as an IDE CD-ROM (ISO 9660 labelled config-2), no default
devices. Every tap, namespace and address is this module's (prefix "aim"; IPv6 prefixes are
random ULAs, so nothing collides with anything on the host).

The appliance: mutual TLS with certificates from the test's CA, a configuration document
applied, a signed heartbeat received, a client without a certificate refused, and the time
from QEMU's start to the API answering. The workload: its DHCP lease and the config drive's
user data on the serial console, and an answer to ping.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from astara.cli.image import default_cache_dir
from astara.common.tls import CertificateAuthority, client_context
from astara.image import cachekey
from astara.image.build import ImageBuilder
from astara.image.recipe import APPLIANCE
from astara.image.tools import Progress
from astara.orchestrator.appliance_client import ApplianceClient, Unreachable
from astara.testing.netns import Topology, wait_for
from astara.wire.bootstrap import Bootstrap
from astara.wire.defaults import API_PORT
from astara.wire.document import ApplianceConfig
from astara.wire.heartbeat import Heartbeat, decode

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "aim"
BOOT_TIMEOUT = 240.0
APPLY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Image:
    path: Path
    sidecar: dict[str, object]
    build_seconds: float


def build(profile: str) -> Image:
    """``astara-image build`` as an operator runs it (the default cache: warm after the first)."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "astara.cli.image", "build", "--profile", profile],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.monotonic() - start
    print(done.stderr, file=sys.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    print(f"astara-image build --profile {profile}: {seconds:.1f} s -> {path}", file=sys.stderr)
    return Image(path, json.loads(path.with_suffix(".json").read_text()), seconds)


@pytest.fixture(scope="module")
def appliance_image() -> Image:
    return build("appliance")


@pytest.fixture(scope="module")
def workload_image() -> Image:
    return build("workload")


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def config_drive(directory: Path, user_data: bytes) -> Path:
    """A config drive as Nova makes one: ISO 9660, label config-2, openstack/latest/..."""
    latest = directory / "drive" / "openstack" / "latest"
    latest.mkdir(parents=True)
    (latest / "user_data").write_bytes(user_data)
    (latest / "meta_data.json").write_text(json.dumps({"uuid": "aim-test", "name": "aim"}))
    (latest / "network_data.json").write_text(json.dumps({"links": [], "networks": []}))
    iso = directory / "config-drive.iso"
    run(
        "genisoimage",
        "-quiet",
        "-V",
        "config-2",
        "-J",
        "-r",
        "-o",
        str(iso),
        str(latest.parents[1]),
    )
    return iso


@dataclass
class Vm:
    """One QEMU process (TCG), its serial console in a file."""

    workdir: Path
    image: Path
    iso: Path
    nics: list[tuple[str, str]]  # (tap name, MAC)
    namespace: str | None = None
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    console: Path = field(init=False)

    def __post_init__(self) -> None:
        self.console = self.workdir / "console.log"

    def start(self) -> None:
        overlay = self.workdir / "disk.qcow2"
        run(
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(self.image),
            "-F",
            "qcow2",
            str(overlay),
        )
        argv = [
            "qemu-system-x86_64",
            "-nodefaults",
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "1",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{self.console}",
            "-drive",
            f"file={overlay},if=virtio",
            "-drive",
            f"file={self.iso},media=cdrom,if=ide,readonly=on",
        ]
        for index, (tap, mac) in enumerate(self.nics):
            argv += [
                "-netdev",
                f"tap,id=n{index},ifname={tap},script=no,downscript=no",
                "-device",
                f"virtio-net-pci,netdev=n{index},mac={mac}",
            ]
        if self.namespace:
            argv = ["ip", "netns", "exec", self.namespace, *argv]
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=(self.workdir / "qemu.log").open("wb")
        )

    def text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_console(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.popen is not None and self.popen.poll() is None, self.failure("QEMU exited")
            return re.search(pattern, self.text())

        try:
            match = wait_for(found, timeout, f"{pattern!r} on the serial console")
        except Exception as exc:
            raise AssertionError(self.failure(str(exc))) from None
        assert isinstance(match, re.Match)
        return match

    def failure(self, what: str) -> str:
        return f"{what}; console ends with:\n{self.text()[-4000:]}"

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def random_ula() -> str:
    """A /64 of fd00::/8 nobody else on this machine uses (40 random bits)."""
    r = secrets.token_hex(5)
    return f"fd{r[:2]}:{int(r[2:6], 16):x}:{int(r[6:10], 16):x}:1"  # as the kernel prints it


def eui64(mac: str) -> str:
    """The interface identifier SLAAC derives from a MAC (RFC 4291, appendix A)."""
    octets = [int(part, 16) for part in mac.split(":")]
    octets[0] ^= 0x02
    full = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    return ":".join(f"{full[i] << 8 | full[i + 1]:x}" for i in range(0, 8, 2))


def random_mac() -> str:
    return "fa:16:3e:" + ":".join(secrets.token_hex(1) for _ in range(3))


@pytest.fixture
def taps() -> Iterator[Callable[[str], str]]:
    """Taps in the host namespace, removed afterwards; the factory returns the name."""
    made: list[str] = []

    def make(address: str) -> str:
        name = f"{PREFIX}{secrets.token_hex(3)}"
        run("ip", "tuntap", "add", "dev", name, "mode", "tap")
        made.append(name)
        run("ip", "link", "set", name, "up")
        run("ip", "addr", "add", address, "dev", name, "nodad")
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


@dataclass
class Appliance:
    vm: Vm
    client: ApplianceClient
    address: str
    credentials: dict[str, Path]
    beats: socket.socket
    key: bytes
    instance_id: str
    macs: dict[str, str]
    data_prefix: str


@pytest.fixture
def appliance(
    appliance_image: Image, tmp_path: Path, taps: Callable[[str], str]
) -> Iterator[Appliance]:
    mgmt, data = random_ula(), random_ula()
    host_ip, vm_ip = f"{mgmt}::1", f"{mgmt}::2"
    mgmt_tap = taps(f"{host_ip}/64")
    data_tap = taps(f"{data}::1/64")
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    server = ca.issue("aim-appliance", "server", ips=[vm_ip])
    ca.issue("aim-orchestrator", "client").write(tmp_path / "client.pem", tmp_path / "client.key")
    credentials = {
        "ca": tmp_path / "ca" / "ca.pem",
        "cert": tmp_path / "client.pem",
        "key": tmp_path / "client.key",
    }
    beats = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    beats.bind((host_ip, 0))
    key = secrets.token_bytes(32)
    instance_id = f"aim-{secrets.token_hex(4)}"
    macs = {"mgmt": random_mac(), "data": random_mac()}
    bootstrap = Bootstrap.model_validate(
        {
            "instance_id": instance_id,
            "management": {"mac": macs["mgmt"], "address": f"{vm_ip}/64"},
            "ca_pem": ca.cert_pem.decode(),
            "cert_pem": server.cert_pem.decode(),
            "key_pem": server.key_pem.decode(),
            "heartbeat": {"host": host_ip, "port": beats.getsockname()[1], "key_hex": key.hex()},
        }
    )
    vm = Vm(
        tmp_path,
        appliance_image.path,
        config_drive(tmp_path, bootstrap.to_user_data()),
        [(mgmt_tap, macs["mgmt"]), (data_tap, macs["data"])],
    )
    # The first apply loads the netfilter modules and starts from cold caches: seconds under TCG.
    client = ApplianceClient(vm_ip, API_PORT, timeout=APPLY_TIMEOUT, **credentials)
    vm.start()
    try:
        yield Appliance(vm, client, vm_ip, credentials, beats, key, instance_id, macs, data)
    finally:
        client.close()
        beats.close()
        vm.stop()


def wait_for_api(appliance: Appliance) -> float:
    """Seconds from QEMU's start to the first health answer."""

    def healthy() -> bool:
        try:
            probe.health()
        except Unreachable:
            return False
        return True

    with ApplianceClient(appliance.address, API_PORT, timeout=3, **appliance.credentials) as probe:
        try:
            wait_for(healthy, BOOT_TIMEOUT, "the appliance API")
        except Exception as exc:
            raise AssertionError(appliance.vm.failure(str(exc))) from None
    return time.monotonic() - appliance.vm.started


def next_heartbeat(appliance: Appliance, accept: Callable[[Heartbeat], bool]) -> Heartbeat:
    appliance.beats.settimeout(2.0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            datagram = appliance.beats.recv(2048)
        except TimeoutError:
            continue
        beat = decode(
            datagram,
            lambda instance: appliance.key if instance == appliance.instance_id else None,
            time.time(),
            300.0,
            lambda instance: None,
        )
        if accept(beat):
            return beat
    raise AssertionError(appliance.vm.failure("no matching heartbeat in 60 s"))


def test_appliance_boots_from_its_config_drive_and_serves_mutual_tls(
    appliance: Appliance, record_property: Callable[[str, object], None]
) -> None:
    api_seconds = wait_for_api(appliance)
    # The guest's own clock, from the kernel's start to the API listening (BIOS and GRUB
    # loading the kernel come before it: the rest of the wall time).
    listening = re.search(
        r"\[\s*([\d.]+)\] astara-appliance\[\d+\]: .*Uvicorn running", appliance.vm.text()
    )
    assert listening is not None, appliance.vm.failure("no 'Uvicorn running' line")
    print(
        f"appliance: QEMU start -> API answering {api_seconds:.1f} s; kernel start -> API "
        f"listening {float(listening.group(1)):.1f} s (guest clock)",
        file=sys.stderr,
    )
    record_property("qemu_start_to_api_seconds", round(api_seconds, 1))
    record_property("kernel_to_api_seconds", float(listening.group(1)))
    assert "astara-appliance-firstboot: instance " + appliance.instance_id in appliance.vm.text()

    # Signed heartbeats reach the target the bootstrap named, under this instance's key.
    first = next_heartbeat(appliance, lambda beat: True)
    assert first.instance_id == appliance.instance_id and first.generation is None

    data_ip = f"{appliance.data_prefix}::2"
    config = ApplianceConfig.model_validate(
        {
            "generation": 1,
            "router_id": "aim-router",
            "hostname": "aim-router",
            "interfaces": [{"mac": appliance.macs["mgmt"]}, {"mac": appliance.macs["data"]}],
            "networks": [
                {
                    "id": "aim-mgmt",
                    "kind": "management",
                    "interface_mac": appliance.macs["mgmt"],
                    "addresses": [f"{appliance.address}/64"],
                },
                {
                    "id": "aim-data",
                    "kind": "internal",
                    "interface_mac": appliance.macs["data"],
                    "addresses": [f"{data_ip}/64"],
                    "subnets": [
                        {
                            "id": "aim-data-v6",
                            "cidr": f"{appliance.data_prefix}::/64",
                            "dhcp_enabled": False,
                        }
                    ],
                },
            ],
        }
    )
    started = time.monotonic()
    assert appliance.client.put_config(config).generation == 1
    print(f"appliance: first PUT /v1/config {time.monotonic() - started:.1f} s", file=sys.stderr)

    with _http(appliance.credentials) as http:
        interfaces = http.get(f"{appliance.client.url}/v1/interfaces").json()
    by_mac = {i["mac"]: set(map(ipaddress.ip_interface, i["addresses"])) for i in interfaces}
    assert ipaddress.ip_interface(f"{data_ip}/64") in by_mac[appliance.macs["data"]], interfaces
    mgmt = ipaddress.ip_interface(f"{appliance.address}/64")
    assert mgmt in by_mac[appliance.macs["mgmt"]], interfaces
    # Real packets to the address the document put on the data NIC.
    run("ping", "-6", "-c", "2", "-W", "5", data_ip)

    applied = next_heartbeat(appliance, lambda beat: beat.generation == 1)
    assert applied.instance_id == appliance.instance_id and not applied.drifted

    # The same request without a client certificate is refused in the handshake.
    assert _raw_get(appliance, with_certificate=True).startswith(b"HTTP/1.1 200")
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        _raw_get(appliance, with_certificate=False)
    print(f"without a client certificate: {refused.value!r}", file=sys.stderr)


def _http(credentials: dict[str, Path]):  # type: ignore[no-untyped-def]
    import httpx

    return httpx.Client(
        verify=client_context(credentials["cert"], credentials["key"], credentials["ca"]),
        timeout=5,
    )


def _raw_get(appliance: Appliance, with_certificate: bool) -> bytes:
    context = ssl.create_default_context(cafile=str(appliance.credentials["ca"]))
    if with_certificate:
        context.load_cert_chain(appliance.credentials["cert"], appliance.credentials["key"])
    with (
        socket.create_connection((appliance.address, API_PORT), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=appliance.address) as tls,
    ):
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = tls.recv(4096)
        if not answer:
            raise ConnectionResetError("closed without an answer")
        return answer


def test_workload_takes_a_dhcp_lease_and_runs_its_user_data(
    workload_image: Image, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    marker = f"AIM-USER-DATA-{secrets.token_hex(4)}"
    iso = config_drive(tmp_path, f"#!/bin/sh\necho {marker} $(hostname)\n".encode())
    with Topology(f"{PREFIX}-w") as topology:
        ns = topology.namespace(f"{PREFIX}-w{secrets.token_hex(2)}")
        tap = f"{PREFIX}w{secrets.token_hex(2)}"
        ns.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
        ns.run(["ip", "link", "set", tap, "up"])
        ns.run(["ip", "addr", "add", "192.168.219.1/24", "dev", tap])
        prefix = random_ula()
        ns.run(["ip", "addr", "add", f"{prefix}::1/64", "dev", tap, "nodad"])
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        radvd_conf = topology.workdir / "radvd.conf"
        radvd_conf.write_text(
            f"interface {tap} {{ AdvSendAdvert on; MinRtrAdvInterval 3; MaxRtrAdvInterval 4;\n"
            f"  prefix {prefix}::/64 {{ AdvOnLink on; AdvAutonomous on; }}; }};\n"
        )
        topology.spawn(
            ns,
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                f"--interface={tap}",
                "--bind-interfaces",
                "--except-interface=lo",
                "--dhcp-range=192.168.219.50,192.168.219.60,1h",
                "--dhcp-option=option:router,192.168.219.1",
                "--dhcp-option=option:mtu,1450",
                f"--pid-file={topology.workdir}/dnsmasq.pid",
                f"--dhcp-leasefile={topology.workdir}/dnsmasq.leases",
                "--no-resolv",
                "--no-hosts",
            ],
        )
        topology.spawn(
            ns,
            [
                "radvd",
                "--nodaemon",
                "-C",
                str(radvd_conf),
                "-p",
                f"{topology.workdir}/radvd.pid",
                "-m",
                "stderr",
            ],
        )
        mac = random_mac()
        vm = Vm(tmp_path, workload_image.path, iso, [(tap, mac)], namespace=ns.name)
        vm.start()
        try:
            lease = vm.wait_console(
                r"ASTARA-WORKLOAD: dhcp eth0 ([\d.]+)/(\d+) router (\S+) mtu (\d+)"
            )
            dhcp_seconds = time.monotonic() - vm.started
            assert lease.group(2, 3, 4) == ("24", "192.168.219.1", "1450")
            vm.wait_console(rf"{marker} astara-workload")
            vm.wait_console(r"ASTARA-WORKLOAD: user-data exit 0")
            ns.run(["ping", "-c", "2", "-W", "5", lease.group(1)])
            # IPv6 by SLAAC: the address radvd's prefix and the MAC make (EUI-64) answers.
            slaac = f"{prefix}:{eui64(mac)}"
            wait_for(
                lambda: (
                    ns.run(["ping", "-6", "-c", "1", "-W", "1", slaac], check=False).returncode == 0
                ),
                60,
                f"the workload's SLAAC address {slaac}",
            )
        finally:
            vm.stop()
    print(f"workload: QEMU start -> DHCP lease {dhcp_seconds:.1f} s", file=sys.stderr)
    record_property("qemu_start_to_dhcp_seconds", round(dhcp_seconds, 1))


def test_the_final_layer_is_reproduced_bit_for_bit(appliance_image: Image, tmp_path: Path) -> None:
    """Rebuilding the final layer from the cached base gives the cached image, byte for byte."""
    cache = default_cache_dir()
    builder = ImageBuilder(APPLIANCE, cache, ROOT, progress=Progress())
    debian, python = builder.pin_inputs()
    tools = builder.host_tools()
    base_key = cachekey.digest(builder.base_inputs(debian, python, tools))
    key = cachekey.digest(builder.final_inputs(base_key, tools))
    assert key == appliance_image.sidecar["cache_key"], "the cache moved on since the fixture"
    layer = cache / "layers" / f"appliance-base-{cachekey.short(base_key)}"
    again = tmp_path / "again.qcow2"
    builder.build_final(layer, base_key, key, python, again)
    assert _sha256(again) == _sha256(appliance_image.path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_appliance_with_an_invalid_bootstrap_says_why_and_does_not_start(
    appliance_image: Image, tmp_path: Path
) -> None:
    iso = config_drive(tmp_path, b'{"instance_id": "aim-bad", "key_pem": "SECRET-KEY-MATERIAL"}')
    vm = Vm(tmp_path, appliance_image.path, iso, [])
    vm.start()
    try:
        error = vm.wait_console(r"astara-appliance-firstboot: ERROR: [^\n]*")
        assert "not a valid bootstrap document" in error.group(0)
        assert "management: Field required" in error.group(0)
        # systemd's own word that the appliance unit was not started because of it
        vm.wait_console(r"Dependency failed for")
        assert "SECRET-KEY-MATERIAL" not in vm.text()
        assert "Uvicorn running" not in vm.text()
    finally:
        vm.stop()
