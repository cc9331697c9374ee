"""OpenStackClient's hooks for the ``astara`` command group (v1 of the management API)."""

from __future__ import annotations

import argparse
from typing import Any

from osc_lib import utils

from astara.client import sdk

API_NAME = "astara"
API_VERSION_OPTION = "os_astara_api_version"
DEFAULT_API_VERSION = "1"
API_VERSIONS = {"1": "astara.client.sdk.Proxy"}


def make_client(instance: Any) -> sdk.Proxy:
    """The management API's proxy on the session OpenStackClient authenticated."""
    return sdk.connect(instance.sdk_connection)


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--os-astara-api-version",
        metavar="<astara-api-version>",
        default=utils.env("OS_ASTARA_API_VERSION", default=DEFAULT_API_VERSION),
        help="Astara management API version (env OS_ASTARA_API_VERSION; default 1)",
    )
    return parser
