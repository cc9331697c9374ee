"""Serving the management API: waitress in threads of the parent, behind keystonemiddleware.

The pipeline is keystonemiddleware's ``auth_token`` (``[keystone_authtoken]``; it removes
any identity header a client sent, validates the token and puts the identity in its place)
around the application, made a WSGI one by a2wsgi. Auth decisions are delayed to the
application, so that the version and OpenAPI documents stay public. With
``auth_strategy = noauth`` every caller is a system-scoped admin named ``noauth``: for a
standalone orchestrator on a trusted host only, and said so in a warning at start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import waitress
from a2wsgi import ASGIMiddleware
from fastapi import FastAPI
from keystonemiddleware import auth_token
from oslo_config import cfg
from waitress.server import BaseWSGIServer, MultiSocketServer

LOG = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Identity headers (as WSGI environ keys) that only the auth middleware may set.
IDENTITY_PREFIXES = (
    "HTTP_X_IDENTITY_",
    "HTTP_X_USER",
    "HTTP_X_PROJECT",
    "HTTP_X_TENANT",
    "HTTP_X_DOMAIN",
    "HTTP_X_ROLE",
    "HTTP_X_SYSTEM_SCOPE",
    "HTTP_X_SERVICE_",
    "HTTP_X_IS_ADMIN_PROJECT",
)
NOAUTH_IDENTITY = {
    "HTTP_X_IDENTITY_STATUS": "Confirmed",
    "HTTP_X_USER_ID": "noauth",
    "HTTP_X_USER_NAME": "noauth",
    "HTTP_X_ROLES": "admin,member,reader",
    "HTTP_X_SYSTEM_SCOPE": "all",
}


def strip_identity(environ: dict[str, Any]) -> None:
    for key in [k for k in environ if k.startswith(IDENTITY_PREFIXES)]:
        del environ[key]


class NoAuth:
    """``auth_strategy = noauth``: every caller is the system admin ``noauth``."""

    def __init__(self, app: WSGIApp) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        strip_identity(environ)
        environ.update(NOAUTH_IDENTITY)
        return self._app(environ, start_response)


def without_unset_headers(app: WSGIApp) -> WSGIApp:
    """keystonemiddleware leaves the identity headers it did not fill as None, which a2wsgi
    cannot turn into ASGI headers: drop them (absent is what None means)."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        for key in [k for k, v in environ.items() if k.startswith("HTTP_") and v is None]:
            del environ[key]
        return app(environ, start_response)

    return wrapped


def keystone_pipeline(app: WSGIApp, conf: cfg.ConfigOpts) -> WSGIApp:
    settings = {"oslo_config_config": conf, "delay_auth_decision": "true"}
    return auth_token.AuthProtocol(without_unset_headers(app), settings)


def www_authenticate(conf: cfg.ConfigOpts) -> str | None:
    """Where a 401 sends the client for a token (keystonemiddleware's own format)."""
    if conf.api.auth_strategy != "keystone":
        return None
    uri = conf.keystone_authtoken.www_authenticate_uri
    return f"Keystone uri='{uri}'" if uri else None


def pipeline(app: FastAPI, conf: cfg.ConfigOpts) -> WSGIApp:
    wsgi: WSGIApp = ASGIMiddleware(app)  # type: ignore[arg-type,assignment]
    if conf.api.auth_strategy == "noauth":
        LOG.warning(
            "management API: auth_strategy = noauth: every caller is an admin; use it only "
            "on a host where every local user is an operator"
        )
        return NoAuth(wsgi)
    return keystone_pipeline(wsgi, conf)


class ApiServer:
    """The management API on ``[api] bind_host``:``port``, in threads of its own."""

    def __init__(self, app: WSGIApp, conf: cfg.ConfigOpts) -> None:
        api = conf.api
        self._server: BaseWSGIServer | MultiSocketServer = waitress.create_server(
            app,
            host=api.bind_host,
            port=api.port,
            threads=api.threads,
            max_request_body_size=api.max_body_size,
            connection_limit=api.connection_limit,
            ident="astara",
        )
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def start(self) -> None:
        self._thread.start()
        LOG.info("management API listening on port %s", self.port)

    def stop(self) -> None:
        self._server.close()
        self._thread.join(5)
