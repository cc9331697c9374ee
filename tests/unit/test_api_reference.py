"""The README's API reference is what the OpenAPI document says now."""

from __future__ import annotations

from pathlib import Path

import pytest

from astara.orchestrator.api.reference import END, START, markdown

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_carries_the_generated_api_reference() -> None:
    text = README.read_text()
    shown = text[text.index(START) : text.index(END) + len(END)]
    assert shown == markdown(), "regenerate: python -m astara.orchestrator.api.reference"
