"""A tiny TCP server for packet tests: answers each connection with its name and the peer's IP
(then, with ``--echo``, echoes lines until the peer closes).

Run inside a namespace: ``python -m astara.testing.echo --name uplink --port 7000``. What the
peer address is tells a test whether SNAT, a floating IP or a port forward did its job; a
long conversation (``--converse`` against an ``--echo`` server) tells whether an established
connection survived a change.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
from collections.abc import Sequence


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        name = self.server.name  # type: ignore[attr-defined]
        self.request.sendall(f"{name} {self.client_address[0]}\n".encode())
        if not self.server.echo:  # type: ignore[attr-defined]
            return  # clients that read to the end of the stream (nc) get the greeting alone
        with self.request.makefile("rwb") as stream:
            for line in stream:
                stream.write(line)
                stream.flush()


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    address_family = socket.AF_INET6


def ask(host: str, port: int, timeout: float = 3.0) -> tuple[str, str]:
    """Connect to an echo server: (its name, the address it saw us coming from)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        name, peer = sock.makefile().readline().split()
    return name, peer.removeprefix("::ffff:")


def converse(host: str, port: int, timeout: float = 3.0) -> int:
    """Client side of a long conversation: print the greeting, then send each line of stdin
    and print its echo; 1 when the connection ends or fails before an echo comes back."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            stream = sock.makefile("rw")
            print(stream.readline().strip(), flush=True)
            for line in sys.stdin:
                stream.write(line)
                stream.flush()
                echoed = stream.readline()
                if not echoed:
                    return 1
                print(echoed.strip(), flush=True)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="echo", help="what to answer as")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ask", metavar="HOST", help="client mode: print what HOST:PORT says")
    parser.add_argument(
        "--echo", action="store_true", help="server: echo lines after the greeting until EOF"
    )
    parser.add_argument(
        "--converse", metavar="HOST", help="client mode: relay stdin lines to HOST:PORT's echo"
    )
    args = parser.parse_args(argv)
    if args.ask:
        print(*ask(args.ask, args.port))
        return 0
    if args.converse:
        return converse(args.converse, args.port)
    with _Server(("::", args.port), _Handler) as server:
        server.name = args.name  # type: ignore[attr-defined]
        server.echo = args.echo  # type: ignore[attr-defined]
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
