"""One long-lived TCP connection from a namespace, driven line by line (``echo --converse``).

Tells whether an established connection survives a change: ``echo`` answers while it lives;
``closed`` waits for the client to give up once it is cut."""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from astara.testing.netns import Namespace


class Conversation:
    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.greeting = ""  # the server's first line

    def line(self, timeout: float = 3) -> str:
        """The next line the client prints; AssertionError when none comes in time."""
        stdout = self.popen.stdout
        ready, _, _ = select.select([stdout], [], [], timeout) if stdout else ([], [], [])
        if not ready or stdout is None:
            raise AssertionError("no answer on the long-lived connection")
        return stdout.readline().strip()

    def echo(self, text: str, timeout: float = 3) -> str:
        """Send a line; what came back ("" when the connection ended)."""
        stdin = self.popen.stdin
        if stdin is None:
            raise AssertionError("the conversation has no stdin")
        stdin.write(text + "\n")
        stdin.flush()
        return self.line(timeout)


@contextmanager
def conversation(ns: Namespace, host: str, port: int) -> Iterator[Conversation]:
    """A connection from ``ns`` to an ``echo --echo`` server; yields after its greeting."""
    popen = subprocess.Popen(
        ns.argv(
            [sys.executable, "-m", "astara.testing.echo", "--converse", host, "--port", str(port)]
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        talk = Conversation(popen)
        talk.greeting = talk.line(10)
        yield talk
    finally:
        popen.kill()
        popen.wait(5)
