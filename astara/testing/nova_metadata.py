"""A test double of Nova's metadata API, for testing the appliance's metadata proxy.

The proxy is the thing under test; this stands in for Nova behind it (the real Nova metadata
API is tested with the Nova bed). It checks the identity headers as Nova's handler does with
``[neutron] service_metadata_proxy = True`` (all three present, or 400; the signature, or 403),
then answers ``meta_data.json`` naming the instance and project it was told about. Every
request it receives is appended, before the answer, as one JSON line to the record file, so
when the proxy's client has its answer the record is complete.

Run: ``python -m astara.testing.nova_metadata --listen ADDR --port N --secret-file F --record F``
(``--port 0``: any free port; the first line on stdout says which).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Paths the tests use to make the double answer big or late.
BYTES_PATH = "/astara-test/bytes/"
SLEEP_PATH = "/astara-test/sleep/"


@dataclass(frozen=True)
class Recorded:
    """One request as the double received it (header names in lower case)."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def records(path: Path) -> list[Recorded]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        entry["headers"] = [(name, value) for name, value in entry["headers"]]
        found.append(Recorded(**entry))
    return found


def signature(secret: str, instance_id: str) -> str:
    """Nova's check, written from its handler (it must not share the proxy side's code)."""
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        headers = [(k.lower(), v) for k, v in self.headers.items()]
        with self.server.record.open("a") as out:
            entry = {"method": self.command, "path": self.path, "headers": headers, "body": body}
            out.write(json.dumps(entry) + "\n")
        status, answer = self._decide()
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Set-Cookie", "nova-double=1")  # a header the proxy must not pass on
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _decide(self) -> tuple[int, Any]:
        instance = self.headers.get_all("X-Instance-ID") or []
        tenant = self.headers.get_all("X-Tenant-ID") or []
        signed = self.headers.get_all("X-Instance-ID-Signature") or []
        if len(instance) != 1 or len(tenant) != 1 or len(signed) != 1:
            return 400, {"error": "one X-Instance-ID, X-Tenant-ID and signature each"}
        if not hmac.compare_digest(signature(self.server.secret, instance[0]), signed[0]):
            return 403, {"error": "Invalid proxy request signature."}
        path = self.path.split("?", 1)[0]
        if path.startswith(BYTES_PATH):
            return 200, b"x" * int(path.removeprefix(BYTES_PATH))
        if path.startswith(SLEEP_PATH):
            time.sleep(float(path.removeprefix(SLEEP_PATH)))
        if path.endswith("/meta_data.json") or path.startswith(SLEEP_PATH):
            return 200, {"uuid": instance[0], "project_id": tenant[0]}
        if path.endswith("/password") and self.command == "POST":
            return 200, {}
        return 404, {"error": f"no metadata at {path}"}

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: str, port: int, secret: str, record: Path) -> None:
        self.address_family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        self.secret = secret
        self.record = record
        super().__init__((listen, port), _Handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--secret-file", type=Path, required=True, help="Nova's shared secret")
    parser.add_argument("--record", type=Path, required=True, help="JSON lines, one a request")
    args = parser.parse_args(argv)
    server = _Server(args.listen, args.port, args.secret_file.read_text().strip(), args.record)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
