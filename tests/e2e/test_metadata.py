"""Instance metadata end to end: real Neutron, the orchestrator, a netns appliance, workloads.

A workload holding a Nova instance's port (``device_owner=compute:nova``) fetches
``/openstack/latest/meta_data.json`` the way cloud-init does; upstream of the appliance's proxy
runs a test double of Nova's metadata API (``astara.testing.nova_metadata``: it checks the
signature with the shared secret and records what it gets). The real Nova metadata API is
exercised with the Nova test bed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from astara.providers.netns import host_management_address
from astara.testing.chaos import eventually, fresh_state
from astara.testing.cloud import CloudInABox, Workload
from astara.testing.neutron_bed import NeutronTestbed, connect
from astara.testing.neutron_objects import tenant_network
from astara.testing.nova_metadata import records

pytestmark = pytest.mark.e2e

PREFIX = "amd"
STATE = Path("/var/lib/astara/e2e-metadata")
SECRET = "e2e-metadata-shared-secret"  # noqa: S105 (a test value)
META_DATA = "/openstack/latest/meta_data.json"

# Runs in a workload: one GET to the metadata address, as cloud-init's url_helper makes it.
FETCH = r"""
import json, sys, urllib.error, urllib.request
request = urllib.request.Request("http://169.254.169.254" + sys.argv[1],
                                 headers=json.loads(sys.argv[2]))
try:
    with urllib.request.urlopen(request, timeout=10) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
"""


@dataclass
class World:
    cloud: CloudInABox
    record: Path
    project: str
    instance_id: str
    instance_vm: Workload
    plain_vm: Workload

    def fetch(self, vm: Workload, headers: dict[str, str] | None = None) -> tuple[int, str]:
        argv = [sys.executable, "-c", FETCH, META_DATA, json.dumps(headers or {})]
        status, _, body = vm.namespace.run(argv, timeout=20).stdout.partition(" ")
        return int(status), body


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    bed = NeutronTestbed(state_dir=STATE / "neutron", database="astara_neutron_metadata")
    cloud = CloudInABox(state_dir=STATE, bed=bed, prefix=PREFIX)
    fresh_state(cloud)
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "nova-secret").write_text(SECRET)
    record = STATE / "nova-metadata.jsonl"
    record.unlink(missing_ok=True)
    # Nova's double listens on the orchestrator host's end of the management link.
    cloud.provider().ensure_fabric()
    listen = str(host_management_address(cloud.provider().management_subnet).ip)
    double = subprocess.Popen(
        [
            *(sys.executable, "-m", "astara.testing.nova_metadata", "--listen", listen),
            *("--secret-file", str(STATE / "nova-secret"), "--record", str(record)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert double.stdout is not None
        cloud.metadata_upstream_url = f"http://[{listen}]:{int(double.stdout.readline())}"
        cloud.metadata_secret = SECRET
        endpoint = cloud.up()
        try:
            yield build_world(cloud, endpoint.url, record)
        finally:
            cloud.down()
    finally:
        double.terminate()
        double.wait(10)


def build_world(cloud: CloudInABox, url: str, record: Path) -> World:
    sdk = connect(url)
    project = uuid.uuid4().hex
    net, sub = tenant_network(sdk, project, "md", "10.61.0.0/24")
    router = sdk.network.create_router(name="md", project_id=project)
    sdk.network.add_interface_to_router(router, subnet=sub.id)
    instance_id = str(uuid.uuid4())
    instance_port = sdk.network.create_port(
        network_id=net.id,
        project_id=project,
        name="vm-md",
        device_owner="compute:nova",
        device_id=instance_id,
    )
    plain_port = sdk.network.create_port(network_id=net.id, project_id=project, name="plain")
    vms = [cloud.workload(net.id, port.mac_address) for port in (instance_port, plain_port)]
    for vm in vms:
        eventually(lambda vm=vm: cloud.dhcp(vm, timeout=3), 90, f"a lease for {vm.mac}")
    return World(cloud, record, project, instance_id, *vms)


def test_a_vm_fetches_its_own_metadata_and_nova_sees_its_port_identity(world: World) -> None:
    forged = {
        "X-Instance-ID": str(uuid.uuid4()),
        "X-Tenant-ID": uuid.uuid4().hex,
        "X-Instance-ID-Signature": "00" * 32,
        "X-Forwarded-For": "10.61.0.250",
        "Forwarded": "for=10.61.0.250",
        "X-Metadata-Provider": "lb-1",
    }

    def fetched() -> tuple[int, str] | None:
        answer = world.fetch(world.instance_vm, forged)
        return answer if answer[0] == 200 else None

    _, body = eventually(fetched, 60, "the instance's metadata")
    assert json.loads(body) == {"uuid": world.instance_id, "project_id": world.project}
    seen = records(world.record)[-1]
    assert seen.path == META_DATA
    assert seen.header("x-instance-id") == [world.instance_id]
    assert seen.header("x-tenant-id") == [world.project]
    expected = hmac.new(SECRET.encode(), world.instance_id.encode(), hashlib.sha256).hexdigest()
    assert seen.header("x-instance-id-signature") == [expected]
    assert world.instance_vm.address is not None
    assert seen.header("x-forwarded-for") == [str(world.instance_vm.address.ip)]
    assert seen.header("forwarded") == seen.header("x-metadata-provider") == []


def test_a_port_that_is_no_nova_instance_gets_404_and_nova_is_not_asked(world: World) -> None:
    eventually(lambda: world.fetch(world.instance_vm)[0] == 200, 60, "the proxy serving")
    before = len(records(world.record))
    status, body = world.fetch(world.plain_vm)
    assert status == 404, body
    assert "no Nova instance has address" in body
    assert len(records(world.record)) == before
