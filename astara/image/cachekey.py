"""Cache keys: a hash of every input of a layer, so the same inputs find the same layer.

An image is built in two layers. The **base** layer (the Debian root filesystem and the
virtual environment with the Python dependencies) is keyed by the profile, the packages asked
for, the exact Debian and Python versions the resolvers pinned, the builder's code that makes
that layer, and the versions of the host tools that write it. The **final** layer (Astara
itself, the boot files and the disk) is keyed by the base key, Astara's source, the rest of
the builder and its host tools. A commit that changes Astara's source therefore rebuilds only
the final layer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

KEY_LENGTH = 16  # hex digits shown in file names; the full digest is in the sidecar


def digest(inputs: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``inputs`` (keys sorted, no whitespace)."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def tree_digest(root: Path, paths: Iterable[Path]) -> str:
    """sha256 over the relative names and contents of ``paths`` (files under ``root``), in
    sorted order: where the checkout lives and the files' dates do not count."""
    outer = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        outer.update(path.relative_to(root).as_posix().encode() + b"\0")
        outer.update(hashlib.sha256(path.read_bytes()).digest())
    return outer.hexdigest()


def source_files(root: Path, package: str = "astara") -> list[Path]:
    """The files that make Astara's wheel: its package's sources and data, and pyproject.toml.
    Caches and compiled files are left out: they change without the source changing."""
    files = [root / "pyproject.toml"]
    for path in (root / package).rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append(path)
    return files


def short(key: str) -> str:
    return key[:KEY_LENGTH]


def _plain(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    raise TypeError(f"cannot hash {type(value).__name__}")
