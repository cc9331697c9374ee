"""Instance identities for the appliances' metadata proxy, signed the way Nova checks them.

Nova's metadata API, behind a Neutron-style proxy (``[neutron] service_metadata_proxy``),
trusts three headers: ``X-Instance-ID``, ``X-Tenant-ID`` and ``X-Instance-ID-Signature``, the
hex HMAC-SHA256 of the instance id keyed with ``metadata_proxy_shared_secret``; it answers 403
to a wrong signature and 404 when the project is not the instance's. The signature depends on
the instance id alone, so the orchestrator computes it once per port while rendering and the
appliances, which face tenants, never hold the secret.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from pydantic import SecretStr, ValidationError

from astara.wire.document import InstanceIdentity

# Nova names its instances' ports compute:<availability zone>.
NOVA_OWNER_PREFIX = "compute:"


@dataclass(frozen=True)
class MetadataService:
    """Nova's metadata API as the orchestrator is configured to reach and sign for it."""

    upstream_url: str
    shared_secret: str = field(repr=False)

    def fingerprint(self) -> str:
        """Changes when the URL or the secret does (so every router is re-signed), without
        revealing more of the secret than one more signature would."""
        return f"{self.upstream_url} {nova_signature(self.shared_secret, 'astara-fingerprint')}"


def nova_signature(secret: str, instance_id: str) -> str:
    """What Nova expects in X-Instance-ID-Signature for ``instance_id``."""
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


def instance_identity(
    device_owner: str, device_id: str, project_id: str, service: MetadataService | None
) -> InstanceIdentity | None:
    """The identity a port's metadata requests carry; None for ports that are not a Nova
    instance's (the proxy answers those itself, without asking Nova)."""
    if service is None or not device_owner.startswith(NOVA_OWNER_PREFIX):
        return None
    try:
        return InstanceIdentity(
            instance_id=device_id,
            project_id=project_id,
            signature=SecretStr(nova_signature(service.shared_secret, device_id)),
        )
    except ValidationError:
        # Ids Nova never makes (empty, spaces...): no identity, rather than no router.
        return None
