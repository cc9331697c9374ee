"""The hostname subsystem in a UTS namespace of its own, as an appliance VM has one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.functional

APPLY = textwrap.dedent(
    """
    import socket, sys
    from astara.appliance.hostname import HostnameSubsystem
    from astara.wire.document import ApplianceConfig
    HostnameSubsystem().apply(ApplianceConfig.model_validate_json(sys.stdin.read()), None, {})
    print(socket.gethostname())
    """
)


def test_the_appliance_names_its_own_host_and_no_other() -> None:
    before = socket.gethostname()
    document = {
        "generation": 1,
        "router_id": "r1",
        "hostname": "router-th-1",
        "interfaces": [],
        "networks": [],
    }
    done = subprocess.run(
        ["unshare", "--uts", sys.executable, "-c", APPLY],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "router-th-1"
    assert socket.gethostname() == before  # the namespace's name, not this host's
