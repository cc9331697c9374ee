"""Starts an appliance so that it reads its own files and none of the host's secrets.

The netns provider runs, inside the instance's network namespace::

    unshare --pid --kill-child --mount-proc -- python -m astara.providers.confine \\
        --hide DIR [--hide DIR ...] --own DIR -- APPLIANCE ARGV...

so this module runs in a mount namespace and a PID namespace of its own, as root, and before
it becomes the appliance (exec; PID 1 of its namespace, seeing no process of the host):

1. every ``--hide`` directory is covered by an empty tmpfs: the orchestrator's state (the CA
   key, the heartbeat master secret, the client key) and the provider's (every appliance's
   files); the appliance's own directory (``--own``: its certificate, key, heartbeat key and
   state) is bound back in its place;
2. ``/dev`` becomes a tmpfs holding null, zero, full, random and urandom (no disk to read raw);
3. ``/sys`` and ``/proc/sys`` become read-only, but for ``/proc/sys/net`` (its namespace's
   own); ``/proc/sysrq-trigger`` reads and writes nothing;
4. the capability bounding set keeps only ``KEEP``: what addresses, routes, nftables and the
   daemons (dnsmasq drops to its own user) need. Without CAP_SYS_ADMIN it cannot undo a mount
   or enter another namespace, without CAP_DAC_READ_SEARCH it cannot open a file by handle
   past the mounts, without CAP_SYS_PTRACE, CAP_SYS_RAWIO or CAP_SYS_MODULE it cannot reach
   another process's files, kernel memory or load code into the kernel.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# linux/capability.h
KEEP = frozenset(
    {
        0,  # CHOWN: dnsmasq's directory goes to its user
        1,  # DAC_OVERRIDE
        3,  # FOWNER
        4,  # FSETID
        5,  # KILL: the appliance stops its daemons
        6,  # SETGID: dnsmasq drops to its user
        7,  # SETUID
        8,  # SETPCAP: dnsmasq drops its own capabilities
        10,  # NET_BIND_SERVICE: DNS, DHCP, the API
        11,  # NET_BROADCAST
        12,  # NET_ADMIN: links, addresses, routes, rules, nftables
        13,  # NET_RAW: DHCP, router advertisements, arping
        14,  # IPC_LOCK
        29,  # AUDIT_WRITE
    }
)
PR_CAPBSET_DROP = 24
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    encode = lambda s: s.encode() if s is not None else None  # noqa: E731
    if _libc.mount(encode(source), target.encode(), encode(fstype), flags, data.encode()) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def confined(hidden: Sequence[Path], own: Path, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` confined (see the module's docstring)."""
    return [
        "unshare", "--pid", "--kill-child", "--mount-proc", "--",
        sys.executable, "-m", __name__,
        *(arg for path in hidden for arg in ("--hide", str(path))),
        "--own", str(own),
        "--", *argv,
    ]  # fmt: skip


def outermost(paths: Sequence[Path]) -> list[Path]:
    """The paths not inside another of them (covering the outer one hides the inner)."""
    resolved = sorted({path.resolve() for path in paths}, key=lambda p: (len(p.parts), p))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return kept


def _hide(hidden: Sequence[Path], own: Path) -> None:
    own_fd = os.open(own, os.O_PATH | os.O_DIRECTORY)
    for path in outermost(hidden):
        _mount("tmpfs", str(path), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0711")
    own.mkdir(parents=True, exist_ok=True)  # in the tmpfs when it was hidden
    _mount(f"/proc/self/fd/{own_fd}", str(own), None, MS_BIND)
    os.close(own_fd)


def _minimal_dev() -> None:
    fds = {name: os.open(f"/dev/{name}", os.O_PATH) for name in DEVICES}
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for name, fd in fds.items():
        Path(f"/dev/{name}").touch()
        _mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, MS_BIND)
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        os.symlink(target, f"/dev/{name}")
    os.symlink("/proc/self/fd/1", "/dev/stdout")
    os.symlink("/proc/self/fd/2", "/dev/stderr")


def _read_only_kernel_knobs() -> None:
    _mount("/proc/sys/net", "/proc/sys/net", None, MS_BIND)
    _mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
    _mount(None, "/proc/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    if Path("/proc/sysrq-trigger").exists():  # a kernel without magic SysRq has none
        _mount("/dev/null", "/proc/sysrq-trigger", None, MS_BIND)
    _mount(None, "/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_capabilities() -> None:
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if cap not in KEEP and _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"dropping capability {cap}: {os.strerror(errno)}")


def confine(hidden: Sequence[Path], own: Path) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    _hide(hidden, own)
    _minimal_dev()
    _read_only_kernel_knobs()
    _drop_capabilities()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m astara.providers.confine")
    parser.add_argument("--hide", type=Path, action="append", default=[])
    parser.add_argument("--own", type=Path, required=True)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    try:
        confine(args.hide, args.own)
    except OSError as exc:
        print(f"astara confine: {exc}", file=sys.stderr)
        return 1
    os.execvp(args.command[0], args.command)  # noqa: S606 (the appliance, by its path)


if __name__ == "__main__":
    sys.exit(main())
