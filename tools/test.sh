#!/usr/bin/env bash
# The whole test suite: set-up, lint, type checks, then unit, functional and e2e tests.
# Extra arguments go to pytest (for example: bash tools/test.sh -m unit).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
bootstrap
cd "$ASTARA_ROOT"

step "Lint and format (ruff)"
"$VENV/bin/ruff" check astara tests bench
"$VENV/bin/ruff" format --check astara tests bench

step "Types (mypy)"
"$VENV/bin/mypy"

step "Tests (pytest)"
"$VENV/bin/python" -m pytest "$@"
