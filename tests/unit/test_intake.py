"""Reading documents against the applied one: only changed sections are validated."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from astara.appliance.intake import DocumentReader
from astara.wire.document import dump_with_secrets
from tests.unit.test_engine import document

pytestmark = pytest.mark.unit

RULES = [{"id": f"r{n}", "action": "deny", "source_cidr": f"10.9.{n}.0/24"} for n in range(3)]


def raw(generation: int, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = json.loads(
        dump_with_secrets(document(generation, firewall={"rules": RULES}))
    )
    base.update(copy.deepcopy(changes))
    return base


def test_unchanged_sections_are_the_applied_documents_own_and_changed_ones_are_read() -> None:
    reader = DocumentReader()
    applied = reader.read(raw(1), None)
    fip = {"floating_ip": "172.24.4.9", "fixed_ip": "10.0.0.5"}
    second = reader.read(raw(2, floating_ips=[fip]), applied)
    assert second.firewall is applied.firewall
    assert second.networks[1] is applied.networks[1]
    assert second.generation == 2
    assert [str(f.floating_ip) for f in second.floating_ips] == ["172.24.4.9"]
    # The result is the document a whole validation gives.
    assert second == document(2, firewall={"rules": RULES}, floating_ips=[fip])


def test_a_changed_section_is_validated_even_when_the_rest_is_reused() -> None:
    reader = DocumentReader()
    applied = reader.read(raw(1), None)
    bad = raw(2, firewall={"rules": [{**RULES[0], "source_cidr": "10.9.0.0/99"}]})
    with pytest.raises(ValidationError) as caught:
        reader.read(bad, applied)
    assert [e["loc"] for e in caught.value.errors()] == [("firewall", "rules", 0, "source_cidr")]


def test_a_document_it_did_not_return_shares_nothing() -> None:
    # The document restored from disk at start: the first PUT after it is validated whole.
    reader = DocumentReader()
    earlier = reader.read(raw(1), None)
    restored = document(1, firewall={"rules": RULES})
    second = reader.read(raw(2), restored)
    assert second.firewall == restored.firewall
    assert second.firewall is not restored.firewall
    assert second.firewall is not earlier.firewall


def test_the_applied_document_is_matched_after_a_newer_one_that_failed() -> None:
    reader = DocumentReader()
    applied = reader.read(raw(1), None)
    reader.read(raw(2, snat_enabled=False), applied)  # refused by the engine, say
    third = reader.read(raw(3), applied)
    assert third.firewall is applied.firewall
