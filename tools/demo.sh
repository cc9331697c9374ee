#!/usr/bin/env bash
# The main job: the local cloud-in-a-box demo on the embedded default (set-up included).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
bootstrap
step "Demo"
exec "$VENV/bin/python" -m astara.cli.demo "$@"
