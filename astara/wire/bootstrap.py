"""What an appliance needs before it can speak to anyone: the first-boot document.

An image-based provider (Nova) writes it as the server's user data, which Nova puts on the
**config drive** (an ISO 9660 volume labelled ``config-2``, ``openstack/latest/user_data``);
the image's first-boot unit reads it from there, never from a network: it holds the
instance's private key. It names the management NIC by MAC and gives it its address, so the
API can listen before any configuration document arrives, and it carries the mutual-TLS
credentials and the heartbeat key of this one instance (nothing that would let an appliance
speak for another).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, IPvAnyAddress, IPvAnyInterface

from astara.wire.defaults import API_PORT
from astara.wire.document import (
    Identifier,
    MacAddress,
    Port,
    Secret,
    Strict,
    dump_with_secrets,
)
from astara.wire.heartbeat import DEFAULT_DRIFT_CHECK_INTERVAL, DEFAULT_INTERVAL

CONFIG_DRIVE_LABEL = "config-2"
USER_DATA_PATH = "openstack/latest/user_data"
MAX_BOOTSTRAP_BYTES = 65535  # Nova's limit for user data (base64-decoded it is smaller still)

Pem = str


class ManagementLink(Strict):
    """The NIC the orchestrator reaches the appliance on, and its address there."""

    mac: MacAddress
    address: IPvAnyInterface
    # Routes the management plane needs beyond its own subnet (none when the orchestrator
    # sits on the same network).
    gateway: IPvAnyAddress | None = None


class HeartbeatTarget(Strict):
    host: IPvAnyAddress
    port: Port
    key_hex: Secret = Field(description="this instance's HMAC key, hex")
    interval: float = Field(DEFAULT_INTERVAL, gt=0, le=60)
    drift_check_interval: float = Field(DEFAULT_DRIFT_CHECK_INTERVAL, gt=0, le=3600)


class Bootstrap(Strict):
    """The first-boot document (JSON) of one appliance instance."""

    version: Literal[1] = 1
    instance_id: Identifier
    management: ManagementLink
    api_port: Port = API_PORT
    ca_pem: Pem = Field(min_length=1, max_length=16384)
    cert_pem: Pem = Field(min_length=1, max_length=16384)
    key_pem: Secret
    heartbeat: HeartbeatTarget | None = None

    def to_user_data(self) -> bytes:
        """The JSON text, secrets included, checked against Nova's user-data limit."""
        data = dump_with_secrets(self).encode()
        if len(data) > MAX_BOOTSTRAP_BYTES:
            raise ValueError(f"bootstrap document of {len(data)} bytes exceeds Nova's limit")
        return data
