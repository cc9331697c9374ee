"""The management API's reference for the README, generated from its OpenAPI document.

``python -m astara.orchestrator.api.reference`` prints it; a unit test checks that the README
carries what it prints.
"""

from __future__ import annotations

from typing import Any, cast

from oslo_policy import policy

from astara.orchestrator.api.app import create_app
from astara.orchestrator.api.policies import RULES
from astara.orchestrator.control import Control

START = "<!-- api-reference:start (generated: python -m astara.orchestrator.api.reference) -->"
END = "<!-- api-reference:end -->"


def openapi_document() -> dict[str, Any]:
    # Building the document calls neither the control surface nor the policy.
    app = create_app(cast(Control, None), cast(policy.Enforcer, None))
    return app.openapi()


def _rules() -> dict[tuple[str, str], str]:
    return {(op["method"], op["path"]): rule.name for rule in RULES for op in rule.operations}


def _parameters(operation: dict[str, Any]) -> str:
    names = [f"`{p['name']}`" for p in operation.get("parameters", []) if p.get("in") == "query"]
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    ref = body.get("schema", {}).get("$ref") or next(
        (s.get("$ref") for s in body.get("schema", {}).get("anyOf", []) if "$ref" in s), None
    )
    if ref:
        names.append(f"body `{ref.rsplit('/', 1)[1]}`")
    return ", ".join(names) or "-"


def markdown() -> str:
    document = openapi_document()
    rules = _rules()
    lines = [
        START,
        "",
        "| method and path | what | query / body | success | policy |",
        "|---|---|---|---|---|",
    ]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            text = operation.get("description") or operation.get("summary") or ""
            what = " ".join(text.split("\n\n")[0].split())
            success = next(code for code in operation["responses"] if code.startswith("2"))
            rule = rules.get((method.upper(), path))
            lines.append(
                f"| `{method.upper()} {path}` | {what} | {_parameters(operation)} | {success} "
                f"| {f'`{rule}`' if rule else 'public'} |"
            )
    lines += ["", END]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
