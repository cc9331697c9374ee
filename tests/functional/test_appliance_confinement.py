"""Appliances started by the netns provider cannot read the host's secrets (issue #12, item 6).

The provider starts a probe the way it starts an appliance (its command replaced, everything
else the same); the probe tries to read the orchestrator's CA key, heartbeat master secret and
client key and another appliance's key, and to get past its confinement, then reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astara.common.tls import CertificateAuthority
from astara.orchestrator.health_loop import HeartbeatKeys
from astara.orchestrator.rotation import renew_client_identity
from astara.providers.base import InstanceSpec, PortSpec
from astara.providers.netns import NetnsProvider

pytestmark = [pytest.mark.functional, pytest.mark.security]

PREFIX = "tK"
SUBNET = "fdca:3ba5:a17a:4b::/64"  # not the default: other test beds may hold that one

# Reads each file of READS, then tries what would get it past its confinement; prints one
# JSON line: each attempt's outcome ("ok" or the errno's name) and the PIDs it can see.
PROBE = """
import ctypes, errno, json, os, stat, sys, time
reads, own, hidden = json.loads(sys.argv[1])
found = {}
def attempt(name, action):
    try:
        action()
        found[name] = "ok"
    except OSError as exc:
        found[name] = errno.errorcode.get(exc.errno, str(exc.errno))
for name, path in reads.items():
    attempt(name, lambda path=path: open(path, "rb").read())
if len(sys.argv) > 2:  # confined: also try to get out
    libc = ctypes.CDLL(None, use_errno=True)
    def umount():
        if libc.umount2(hidden.encode(), 2) != 0:  # MNT_DETACH
            raise OSError(ctypes.get_errno(), "umount")
    attempt("umount the hidden state", umount)
    disk, root = os.path.join(own, "disk"), os.stat("/").st_dev
    attempt("mknod the root disk", lambda: os.mknod(disk, 0o600 | stat.S_IFBLK, root))
    core = "/proc/sys/kernel/core_pattern"
    attempt("open core_pattern to write", lambda: open(core, "ab").close())
found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
found["dev"] = sorted(os.listdir("/dev"))
print(json.dumps(found), flush=True)
if len(sys.argv) > 2:
    time.sleep(3600)
"""


def spec(n: int) -> InstanceSpec:
    mac = f"02:4b:00:00:00:0{n}"
    port = PortSpec(port_id=f"m{n}", network_id="n-mgmt", mac=mac, kind="management")
    return InstanceSpec(instance_id=f"conf-{n}", router_id=f"router-{n}", ports=(port,))


@pytest.fixture
def orchestrator_state(tmp_path: Path) -> Path:
    """The orchestrator's state directory, as the service lays it out."""
    state = tmp_path / "orchestrator"
    state.mkdir(mode=0o700)
    ca = CertificateAuthority.load_or_create(state / "ca")
    HeartbeatKeys(state)
    renew_client_identity(ca, state / "orchestrator-client.pem", ca.cert.not_valid_before_utc)
    return state


def secrets_of(state: Path, provider: NetnsProvider, other: str) -> dict[str, str]:
    other_dir = provider.state_dir / provider.names.instance_ns(other)
    return {
        "CA key": str(state / "ca" / "ca.key"),
        "heartbeat master secret": str(state / "heartbeat.secret"),
        "client key": str(state / "orchestrator-client.pem"),
        "another appliance's key": str(other_dir / "appliance.key"),
    }


@pytest.fixture
def provider(tmp_path: Path, orchestrator_state: Path) -> Iterator[NetnsProvider]:
    ca = CertificateAuthority.load_or_create(orchestrator_state / "ca")
    provider = NetnsProvider(
        tmp_path / "netns",
        ca,
        prefix=PREFIX,
        management_subnet=SUBNET,
        private_paths=[orchestrator_state],
        appliance_command=[sys.executable, "-c", PROBE],
    )
    try:
        yield provider
    finally:
        provider.teardown()


def report(provider: NetnsProvider, instance_id: str) -> dict[str, Any]:
    log = provider.state_dir / provider.names.instance_ns(instance_id) / "appliance.log"
    deadline = time.monotonic() + 20
    while not (log.exists() and log.read_text().strip()):
        assert time.monotonic() < deadline, "the probe never reported"
        time.sleep(0.1)
    found: dict[str, Any] = json.loads(log.read_text().splitlines()[-1])
    return found


def test_an_appliance_reads_its_own_key_and_no_secret_of_the_host(
    provider: NetnsProvider, orchestrator_state: Path
) -> None:
    provider.boot(spec(1))
    reads = secrets_of(orchestrator_state, provider, "conf-1")
    own_dir = provider.state_dir / provider.names.instance_ns("conf-2")
    # The probe's first argument; the provider appends the appliance's (--listen ...).
    provider.appliance_command = (
        *provider.appliance_command,
        json.dumps(
            [
                {**reads, "its own key": str(own_dir / "appliance.key")},
                str(own_dir),
                str(orchestrator_state),
            ]
        ),
    )
    provider.boot(spec(2))
    confined = report(provider, "conf-2")

    # The same probe, run by root as the provider itself runs, reads every one of them.
    unconfined = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([reads, str(own_dir), ""])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert {name: json.loads(unconfined.stdout)[name] for name in reads} == dict.fromkeys(
        reads, "ok"
    )

    assert confined["its own key"] == "ok"
    for secret in reads:
        assert confined[secret] == "ENOENT", (secret, confined)
    assert confined["umount the hidden state"] == "EPERM"
    assert confined["mknod the root disk"] == "EPERM"
    assert confined["open core_pattern to write"] == "EROFS"
    assert confined["pids"] == [1]  # no process of the host's, nor another appliance's
    assert confined["dev"] == [
        "fd",
        "full",
        "null",
        "random",
        "stderr",
        "stdin",
        "stdout",
        "urandom",
        "zero",
    ]
    assert os.path.exists(orchestrator_state / "ca" / "ca.key")  # hidden, not touched
