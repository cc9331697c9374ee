"""Files and directories holding tenant data: private by default.

The daemons' files name tenants' MACs, addresses and hosts. Each is written atomically with
the least access that works: root only, or owned by the one unprivileged account a daemon
runs as when it re-reads the file after dropping root (dnsmasq on SIGHUP). Modes are set
explicitly, never left to the umask.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
# Others may pass through to a daemon's own directory below, never list or read.
TRAVERSABLE_DIR = 0o711


def account_uid(user: str) -> int:
    """The uid of a daemon's account; LookupError naming it when it does not exist."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise LookupError(f"user {user!r} does not exist: create it or choose another") from None


def ensure_dir(path: Path, mode: int, uid: int | None = None) -> None:
    """``path`` exists with exactly ``mode``, owned by ``uid`` (root's group) when given."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if uid is not None and path.stat().st_uid != uid:
        os.chown(path, uid, 0)
    os.chmod(path, mode)


def write_private(path: Path, text: str, uid: int | None = None) -> bool:
    """Replace a file's content in one rename, 0600 and owned by ``uid`` (else the caller);
    False (and no write) when the content and owner are already so."""
    try:
        same = path.read_text() == text
        if same and (uid is None or path.stat().st_uid == uid):
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), PRIVATE_FILE)  # a leftover tmp file may have another mode
        if uid is not None:
            os.fchown(handle.fileno(), uid, 0)
        handle.write(text)
    os.replace(tmp, path)
    return True


def make_private(path: Path) -> None:
    """Create ``path`` empty when absent; either way leave it 0600. For files a daemon opens
    as root but creates with its own umask (dnsmasq's leases: 0644)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE))
    os.chmod(path, PRIVATE_FILE)


def open_private_log(path: Path) -> int:
    """A file descriptor appending to ``path``, created 0600 when absent."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
