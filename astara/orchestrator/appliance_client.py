"""The orchestrator's side of the appliance API: HTTPS with mutual TLS, errors as exceptions.

The orchestrator presents a client certificate from its CA and trusts only appliance
certificates from that CA, checked against the management address. Each refusal of the
appliance becomes an exception a state machine can act on: retry later (Unreachable), move
the generation on (StaleGeneration), stop pushing a broken document (InvalidConfig), or
count a failure (ApplyFailed).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from cryptography import x509
from pydantic import BaseModel, ValidationError

from astara.common.tls import Issued, client_context
from astara.wire.api import Conflict, Failure, Message, Problems, ServiceHealth
from astara.wire.defaults import API_PORT
from astara.wire.document import REDACTED_READ, ApplianceConfig, Problem, dump_with_secrets

DEFAULT_TIMEOUT = 5.0
DEFAULT_APPLY_TIMEOUT = 60.0


# One context per credential set: loading the CA and the key pair for every request cost more
# CPU than the request itself (each router is probed on every step and every reconcile).
@functools.lru_cache(maxsize=8)
def _loaded(cert: Path, key: Path, ca: Path, file: tuple[int, int]) -> ssl.SSLContext:
    return client_context(cert, key, ca)


def _context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The cached context, loaded again once the certificate file is replaced (a renewal)."""
    found = cert.stat()
    return _loaded(cert, key, ca, (found.st_ino, found.st_mtime_ns))


M = TypeVar("M", bound=BaseModel)


class ApplianceError(Exception):
    """The appliance did not do what was asked."""


class Unreachable(ApplianceError):
    """No answer: connection refused, timed out, or the TLS handshake failed."""


class StaleGeneration(ApplianceError):
    """409: the appliance holds a newer (or a different same-numbered) generation."""

    def __init__(self, conflict: Conflict) -> None:
        super().__init__(conflict.detail)
        self.applied_generation = conflict.applied_generation
        self.requested_generation = conflict.requested_generation


class InvalidConfig(ApplianceError):
    """422: the document was refused, nothing applied; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems))
        self.problems = problems


class ApplyFailed(ApplianceError):
    """500: a step failed and the appliance went back to its previous document."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.step}: {failure.detail}")
        self.step = failure.step
        self.detail = failure.detail


class UnexpectedResponse(ApplianceError):
    """Any other answer, or one whose body is not what the API documents."""

    def __init__(self, status_code: int, body: str) -> None:
        super().__init__(f"HTTP {status_code}: {body[:200]}")
        self.status_code = status_code


def base_url(address: str, port: int) -> str:
    host = ipaddress.ip_address(address)
    return f"https://[{host}]:{port}" if host.version == 6 else f"https://{host}:{port}"


class ApplianceClient:
    """One appliance's API; reuses its connection between calls. Close it (or use ``with``)."""

    def __init__(
        self,
        address: str,
        port: int = API_PORT,
        *,
        ca: Path,
        cert: Path,
        key: Path,
        timeout: float = DEFAULT_TIMEOUT,
        apply_timeout: float = DEFAULT_APPLY_TIMEOUT,
    ) -> None:
        """``timeout``: of a question (health, config); ``apply_timeout``: of a whole apply,
        which waits for hot-plugged NICs and restarts daemons."""
        self.url = base_url(address, port)
        self._apply_timeout = apply_timeout
        self._http = httpx.Client(
            base_url=self.url, verify=_context(cert, key, ca), timeout=timeout
        )

    def __enter__(self) -> ApplianceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> ServiceHealth:
        return _success(ServiceHealth, self._request("GET", "/v1/health"))

    def counters(self) -> dict[str, Any]:
        """``GET /v1/counters`` as the appliance answers it: packets and bytes per rule (by
        chain and comment; a firewall group's rules under its chain, by rule id), per
        interface, and the connection-tracking table's size."""
        response = self._request("GET", "/v1/counters")
        if response.status_code != 200:
            raise UnexpectedResponse(response.status_code, response.text)
        found: dict[str, Any] = response.json()
        return found

    def get_config(self) -> ApplianceConfig | None:
        """The applied document (secrets masked by the appliance), None before the first one."""
        response = self._request("GET", "/v1/config")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            return _success(ApplianceConfig, response)
        try:
            return ApplianceConfig.model_validate_json(response.content, context=REDACTED_READ)
        except ValidationError as exc:
            raise UnexpectedResponse(response.status_code, response.text) from exc

    def put_config(self, config: ApplianceConfig) -> ServiceHealth:
        # The appliance needs the secrets themselves (the metadata proxy's shared secret).
        response = self._request(
            "PUT", "/v1/config", dump_with_secrets(config), timeout=self._apply_timeout
        )
        if response.status_code == 409:
            raise StaleGeneration(_body(Conflict, response))
        if response.status_code == 422:
            raise InvalidConfig(_body(Problems, response).detail)
        if response.status_code == 500:
            raise ApplyFailed(_body(Failure, response))
        return _success(ServiceHealth, response)

    def reapply(self) -> ServiceHealth:
        """Apply the current document again from scratch (drift repair)."""
        response = self._request("POST", "/v1/reapply", timeout=self._apply_timeout)
        if response.status_code == 500:
            raise ApplyFailed(_body(Failure, response))
        return _success(ServiceHealth, response)

    def server_certificate(self) -> x509.Certificate:
        """The certificate the appliance presents now (asked over a health request)."""
        response = self._request("GET", "/v1/health")
        stream = response.extensions["network_stream"]
        der = stream.get_extra_info("ssl_object").getpeercert(True)  # DER
        return x509.load_der_x509_certificate(der)

    def put_credentials(self, issued: Issued) -> None:
        """Replace the appliance's certificate and key; new connections get them at once."""
        content = json.dumps({"cert": issued.cert_pem.decode(), "key": issued.key_pem.decode()})
        _success(Message, self._request("PUT", "/v1/credentials", content=content))

    def _request(
        self,
        method: str,
        path: str,
        content: str | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if content is not None else None
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        try:
            return self._http.request(method, path, content=content, headers=headers, **extra)
        except (httpx.TransportError, OSError) as exc:
            raise Unreachable(f"{self.url}: {exc!r}") from exc


def _body(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise UnexpectedResponse(response.status_code, response.text) from exc


def _success(model: type[M], response: httpx.Response) -> M:
    if response.status_code != 200:
        raise UnexpectedResponse(response.status_code, response.text)
    return _body(model, response)
