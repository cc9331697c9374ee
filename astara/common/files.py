"""Files that hold secrets: written private and in one step.

A secret file is either absent, the old content or the new one, never a partial write that a
crash left behind (an empty heartbeat secret would make every appliance's key computable).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private_atomic(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path``, 0600, in one step.

    A temporary file in the same directory (mode 0600 from its creation) is written and synced,
    then renamed over ``path`` or, with ``replace`` off, linked to it only if ``path`` does not
    exist yet: of two processes creating the same secret at once, both end up reading the one
    that won. Returns False, writing nothing, when ``replace`` is off and ``path`` exists.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _sync_dir(path.parent)
    return True


def _sync_dir(path: Path) -> None:
    """Make a rename in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
