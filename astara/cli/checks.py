"""Timed steps and retried checks, as the demos print them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Check:
    what: str
    ok: bool
    seconds: float
    detail: str


def timed(label: str, action: Callable[[], T]) -> T:
    started = time.monotonic()
    result = action()
    print(f"  {label:<52} {time.monotonic() - started:6.2f} s", flush=True)
    return result


def until(what: str, probe: Callable[[], str | None], timeout: float) -> Check:
    """Retry ``probe`` (which answers a detail, or None / raises when not there yet)."""
    started = time.monotonic()
    detail = "no answer"
    while time.monotonic() - started < timeout:
        try:
            answer = probe()
        except Exception as exc:  # not working yet: keep trying until the timeout
            answer, detail = None, str(exc).splitlines()[0][:80]
        if answer:
            check = Check(what, True, time.monotonic() - started, answer)
            break
        time.sleep(0.5)
    else:
        check = Check(what, False, time.monotonic() - started, detail)
    mark = "ok" if check.ok else "FAILED"
    print(f"  {what:<52} {check.seconds:6.2f} s  {mark}: {check.detail}", flush=True)
    return check
