"""Fuzzing the appliance API from its own OpenAPI schema: no input may cause a 500.

The app runs in-process (ASGI) over a real Engine whose subsystems are harmless: each one
runs the real pure renderer of its part of the data plane (netlink plan, nftables ruleset,
dnsmasq files, radvd.conf, metadata proxy table) and changes nothing. A document that passes
validation but crashes a renderer would make the engine fail the apply, hence a 500: that
is exactly the kind of bug this test hunts. Status comes from the real kernel readers (read
only) of the namespace the test runs in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from astara.appliance import dnsmasq, metadata_policy, netlink, nftables, radvd
from astara.appliance.api import create_app
from astara.appliance.engine import Engine
from astara.appliance.status import KernelStatus
from astara.appliance.subsystem import LinkMap
from astara.wire.document import ApplianceConfig

pytestmark = [pytest.mark.functional, pytest.mark.security]

# The API's pool of request threads in this app (the appliance's --api-threads).
API_THREADS = 4
# Beside them: the test client's event-loop thread and the engine's record-apply timer.
OTHER_THREADS = 2
# Each example must answer within this (a hang fails the example, not the whole run).
EXAMPLE_DEADLINE = timedelta(seconds=10)

Render = Callable[[ApplianceConfig, LinkMap], object]


class RenderingSubsystem:
    """Harmless subsystem: renders the desired state with the real renderer, applies nothing."""

    def __init__(self, name: str, render: Render) -> None:
        self.name = name
        self.render = render

    def apply(
        self, desired: ApplianceConfig | None, previous: ApplianceConfig | None, links: LinkMap
    ) -> None:
        if desired is not None:
            self.render(desired, links)


def renderers(state_dir: Path) -> list[RenderingSubsystem]:
    def links_plan(config: ApplianceConfig, links: LinkMap) -> object:
        return (
            netlink.desired_addresses(config, links),
            netlink.desired_routes(config, links),
            netlink.desired_sysctls(config, links),
        )

    return [
        RenderingSubsystem("addresses", links_plan),
        RenderingSubsystem("firewall", nftables.render_ruleset),
        RenderingSubsystem(
            "dhcp", lambda config, links: dnsmasq.desired_instances(config, links, state_dir)
        ),
        RenderingSubsystem(
            "ra", lambda config, links: radvd.render_conf(radvd.ra_interfaces(config, links))
        ),
        RenderingSubsystem("metadata", lambda config, links: metadata_policy.proxy_table(config)),
    ]


def numbered_links(macs: Iterable[str]) -> LinkMap:
    return {mac: f"eth{index}" for index, mac in enumerate(sorted(macs))}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    state_dir = tmp_path_factory.mktemp("fuzz")
    engine = Engine(renderers(state_dir), state_dir, numbered_links)
    return create_app(engine, KernelStatus(lambda: []), threads=API_THREADS)


@pytest.fixture(scope="module")
def api_schema(app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# Listed here (not discovered at import) because the schema comes from a fixture's app; the
# first test keeps this list equal to the published schema.
OPERATIONS = [
    ("GET", "/v1/health"),
    ("GET", "/v1/interfaces"),
    ("GET", "/v1/counters"),
    ("GET", "/v1/config"),
    ("PUT", "/v1/config"),
    ("POST", "/v1/reapply"),
    ("PUT", "/v1/credentials"),
]


def test_every_published_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    paths = api_schema.raw_schema["paths"]
    published = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert published == set(OPERATIONS)


# Negative data needs something to break: only the PUTs have a body (the GETs take no input).
CASES = [(method, path, GenerationMode.POSITIVE) for method, path in OPERATIONS] + [
    ("PUT", "/v1/config", GenerationMode.NEGATIVE),
    ("PUT", "/v1/credentials", GenerationMode.NEGATIVE),
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_input_causes_a_server_error_a_hang_or_thread_growth(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    baseline = threading.active_count()
    peak = [baseline]

    # derandomize: the same examples on every run, so a CI failure replays here.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=80 if method == "PUT" else 10,
        deadline=EXAMPLE_DEADLINE,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])
        peak[0] = max(peak[0], threading.active_count())

    check()
    assert peak[0] <= baseline + API_THREADS + OTHER_THREADS, (baseline, peak[0])
