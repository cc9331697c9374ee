"""Running nft scripts and reading nft's JSON: through libnftables in-process, or the nft
command (tests and benchmarks aim it at a namespace)."""

from __future__ import annotations

import ctypes
import json
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from astara.appliance.subsystem import ApplyStepError


@dataclass(frozen=True)
class RuleCounter:
    """Packets and bytes of one rule (or one folded firewall rule inside a set)."""

    chain: str
    comment: str
    packets: int
    bytes: int


class NftRunner(Protocol):
    """Runs nft scripts and lists as nft's JSON."""

    def run(self, script: str) -> None: ...

    def list_json(self, what: str = "ruleset") -> dict[str, Any]:
        """``nft -j list <what>``: the whole ruleset, or one "table <family> <name>"."""
        ...


class NftCli:
    """Runs nft scripts through the nft command, in the current network namespace unless
    ``command`` says otherwise (tests and benchmarks prefix ``ip netns exec NS``)."""

    def __init__(self, command: Sequence[str] = ("nft",)) -> None:
        self.command = list(command)

    def run(self, script: str) -> None:
        done = subprocess.run(
            [*self.command, "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise ApplyStepError("firewall", done.stderr.strip() or f"nft exit {done.returncode}")

    def list_json(self, what: str = "ruleset") -> dict[str, Any]:
        done = subprocess.run(
            [*self.command, "-j", "list", *what.split()],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ApplyStepError("firewall", done.stderr.strip())
        result: dict[str, Any] = json.loads(done.stdout)
        return result


# nft_ctx_output_flags bit of libnftables 1.0.x: print JSON.
NFT_CTX_OUTPUT_JSON = 1 << 4


class LibNftables:
    """libnftables in-process with one long-lived context, in the current namespace.

    The nft command fetches the whole live ruleset (every set element) into its cache before
    each script: about 30 ms with thousands of elements, paid again by each delta. A kept
    context revalidates its cache by generation id, so a floating-IP delta costs a few ms.
    """

    def __init__(self, library: str = "libnftables.so.1") -> None:
        lib = ctypes.CDLL(library)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        # A context is not thread-safe; the API may read counters while the engine applies.
        self._lock = threading.Lock()

    def _command(self, script: str, flags: int) -> str:
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            failed = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            output = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if failed:
            raise ApplyStepError("firewall", error.decode().strip() or "nft failed")
        return str(output.decode())

    def run(self, script: str) -> None:
        self._command(script, 0)

    def list_json(self, what: str = "ruleset") -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._command(f"list {what}", NFT_CTX_OUTPUT_JSON))
        return result

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


def default_runner() -> NftRunner:
    """libnftables when the library is there (it is wherever nft is), else the nft command."""
    try:
        return LibNftables()
    except OSError:
        return NftCli()
