"""The orchestrator speaks to appliances through astara.wire only: loading it must not pull in
the appliance's modules, its server or its netlink library. (FastAPI itself is allowed: the
orchestrator's own management API is built with it.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "module",
    ["astara.orchestrator.service", "astara.providers.netns", "astara.drivers.router"],
)
def test_orchestrator_side_loads_no_appliance_internals(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('uvicorn', 'pyroute2') "
        "or m.startswith('astara.appliance.'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""
