"""The provider's upkeep thread: it hands the provider every instance a router owns, and a
failed round does not end the rounds after it."""

from __future__ import annotations

import threading
from collections.abc import Collection

import pytest

from astara.orchestrator.housekeeping import Housekeeping
from astara.providers.noop import NoopProvider

pytestmark = pytest.mark.unit


class Upkeep(NoopProvider):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[set[str]] = []
        self.third = threading.Event()

    def maintain(self, known_instances: Collection[str] = ()) -> None:
        self.seen.append(set(known_instances))
        if len(self.seen) == 1:
            raise RuntimeError("Nova is down")
        if len(self.seen) == 3:
            self.third.set()


def test_every_round_gets_the_known_instances_and_survives_a_failure() -> None:
    provider = Upkeep()
    housekeeping = Housekeeping(provider, lambda: {"i1", "i2"}, interval=0.01)
    housekeeping.start()
    try:
        assert provider.third.wait(5), "rounds go on after a failed one"
    finally:
        housekeeping.stop()
    assert provider.seen[:3] == [{"i1", "i2"}] * 3
