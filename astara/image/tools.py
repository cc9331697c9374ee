"""The builder's shared edge: running tools, progress lines, and sealing a tree.

``normalize`` is what makes a tree an image's: volatile files emptied, timestamps clamped to
``SOURCE_DATE_EPOCH`` so the bytes do not depend on the day of the build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from astara.image import resolve as pins
from astara.image.recipe import SOURCE_DATE_EPOCH, VENV

# Where wheels wait inside the image being built (its /tmp, emptied before it is sealed).
CHROOT_WHEELS = "/tmp/astara-wheels"  # noqa: S108


class BuildError(RuntimeError):
    """A step failed; the message names it and what the tool said."""


class Progress:
    """One line per step on ``stream``, with the seconds since the build started."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.start = time.monotonic()
        self.stream = stream

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f} s] {message}", file=self.stream, flush=True)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    timeout: float = 1800,
) -> str:
    """Run a tool; its stdout, or BuildError with the end of what it said."""
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        input=input_text,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip())[-3000:]
        raise BuildError(f"{' '.join(argv[:4])}... failed (rc={done.returncode}):\n{said}")
    return done.stdout


def reproducible_env() -> dict[str, str]:
    return {
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
        "E2FSPROGS_FAKE_TIME": str(SOURCE_DATE_EPOCH),
        "PYTHONHASHSEED": "0",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }


def run_bytes(argv: Sequence[str], cwd: Path) -> bytes:
    done = subprocess.run(list(argv), capture_output=True, cwd=cwd, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout


def walk(root: Path) -> Iterator[Path]:
    """Every path under ``root`` (symlinks not followed), in no particular order."""
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            yield Path(directory) / name


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in walk(root))


def clamp_times(root: Path, epoch: int = SOURCE_DATE_EPOCH) -> None:
    """No timestamp newer than ``epoch`` (files from packages keep their older dates)."""
    for path in [root, *walk(root)]:
        stat = path.lstat()
        mtime = min(int(stat.st_mtime), epoch)
        os.utime(path, (mtime, mtime), follow_symlinks=False)


# Files every boot or package operation rewrites: nothing in them belongs to the image.
VOLATILE = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/systemd/catalog/database",
    "etc/machine-id",
    "tmp",
)


def normalize(root: Path) -> None:
    """Empty what is volatile (directories stay), give systemd an unset machine id (each
    instance makes its own at first boot), and clamp timestamps."""
    for relative in VOLATILE:
        path = root / relative
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif path.exists() or path.is_symlink():
            path.unlink()
    if (root / "etc").is_dir() and (root / "usr/lib/systemd").is_dir():
        (root / "etc/machine-id").write_text("")
    clamp_times(root)


def remove_tree(path: Path) -> None:
    """Delete a scratch tree, after unmounting whatever a failed build left mounted in it
    (proc, sysfs...): deleting through a mount would reach into the host's own."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        run(["umount", "--lazy", point])
    shutil.rmtree(path, ignore_errors=True)


def download_wheels(python: str, packages: Sequence[pins.PythonPackage], into: Path) -> None:
    """The pinned wheels for the image's interpreter, checked against their hashes."""
    requirements = into / f".{len(packages)}-requirements.txt"
    requirements.write_text(pins.requirements_file(packages))
    run(
        [
            python,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--require-hashes",
            "-r",
            str(requirements),
            "-d",
            str(into),
            *pins.pip_target_options(),
        ]
    )
    requirements.unlink()


def chroot_pip(rootfs: Path, arguments: Sequence[str]) -> None:
    """pip, run from its wheel by the image's Python in the image (the wheels wait in
    ``CHROOT_WHEELS``): scripts and compiled files are the image's, not the host's. Compiled
    files are unchecked-hash: the image never changes under them, and an import then reads
    no source file (reads are slow under TCG)."""
    wheels = rootfs / CHROOT_WHEELS.lstrip("/")
    pip = next(wheels.glob("pip-*.whl"))
    env = {**reproducible_env(), "PIP_CONFIG_FILE": "/dev/null", "HOME": "/root"}
    run(
        [
            "chroot",
            str(rootfs),
            f"{VENV}/bin/python",
            f"{CHROOT_WHEELS}/{pip.name}/pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--find-links",
            CHROOT_WHEELS,
            "--disable-pip-version-check",
            "--no-cache-dir",
            *arguments,
        ],
        env=env,
    )
    run(
        [
            "chroot",
            str(rootfs),
            f"{VENV}/bin/python",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            f"{VENV}/lib",
        ],
        env=env,
    )
