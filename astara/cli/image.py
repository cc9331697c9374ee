"""``astara-image build``: the appliance image Nova boots, and a tiny test-workload image."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from astara.image.build import BuildError, ImageBuilder, Progress
from astara.image.recipe import APPLIANCE, PROFILES, WORKLOAD
from astara.image.resolve import ResolveError

CACHE_ENV = "ASTARA_CACHE_DIR"
DEFAULT_CACHE_ROOT = "/var/cache/astara"

EPILOG = f"""\
profiles:
  appliance  {APPLIANCE.summary}.
  workload   {WORKLOAD.summary}.

Both are qcow2 disks (compressed) with a DOS partition table, one ext4 partition and GRUB for
BIOS boot (SeaBIOS, Nova's default), with a JSON sidecar beside them (profile, cache key, size,
the Glance properties and min_disk Nova needs). They go to the cache directory as
<profile>-<key>.qcow2; --output copies the image there (and the sidecar to PATH.json).

The cache has two layers: the Debian root filesystem with the Python dependencies (keyed by
the pinned Debian and Python versions and the builder), and the final image (keyed by that,
Astara's source and the builder). Same inputs: the cached image, in seconds. A change to
Astara's source rebuilds the final layer only.

Measured on the 2-core development machine: a cold appliance build (empty cache) takes 1.5 to
3 minutes, a rebuild after a change to Astara's source about 33 s, a warm build (nothing
changed) 8 to 11 s (resolving the pins against deb.debian.org and PyPI); the workload builds
cold in about 30 s and warm in about 4 s. Needs root (chroot, mmdebstrap) and Debian's
mmdebstrap, e2fsprogs, fdisk, grub-pc-bin, qemu-utils and cpio (tools/bootstrap.sh installs
them)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT) / "images"


def source_root() -> Path:
    """The checkout this command runs from: Astara's source is an input of the image."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise SystemExit(
            f"astara-image: no pyproject.toml in {root}: run it from a checkout of Astara "
            "(pip install -e .), the image is built from that source"
        )
    return root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astara-image",
        description="Build Astara's bootable VM images (Debian 12, BIOS boot, qcow2), cached.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build",
        help="build an image (or find it in the cache) and print its path",
        description="Build an image, or find it in the cache, and print the qcow2's path.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="appliance",
        help="which image (default: %(default)s)",
    )
    build.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="copy the image to PATH and its sidecar to PATH.json "
        "(default: only print the cached image's path)",
    )
    build.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where layers and images are kept (default: ${CACHE_ENV}/images, "
        f"{CACHE_ENV} defaulting to {DEFAULT_CACHE_ROOT})",
    )
    build.add_argument("--force", action="store_true", help="rebuild both layers even when cached")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print(
            "astara-image: building an image needs root (chroot, mmdebstrap): run it as root",
            file=sys.stderr,
        )
        return 2
    missing = [
        tool
        for tool in (
            "mmdebstrap",
            "mkfs.ext4",
            "debugfs",
            "sfdisk",
            "grub-mkimage",
            "qemu-img",
            "cpio",
        )
        if shutil.which(tool) is None
    ]
    if missing:
        print(
            f"astara-image: missing tools: {', '.join(missing)}; install them with "
            "bash -c 'source tools/bootstrap.sh && bootstrap'",
            file=sys.stderr,
        )
        return 2
    cache_dir = args.cache_dir or default_cache_dir()
    builder = ImageBuilder(PROFILES[args.profile], cache_dir, source_root(), args.force, Progress())
    try:
        image = builder.build()
    except (BuildError, ResolveError) as exc:
        print(f"astara-image: {exc}", file=sys.stderr)
        return 1
    path = image.qcow2
    if args.output is not None:
        shutil.copyfile(image.qcow2, args.output)
        shutil.copyfile(image.sidecar, args.output.with_name(args.output.name + ".json"))
        path = args.output
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
