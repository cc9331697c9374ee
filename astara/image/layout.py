"""The disk and the boot path, planned from the inputs alone.

The disk is a DOS partition table with one bootable ext4 partition starting at 1 MiB. GRUB's
boot sector sits in the first 440 bytes and its core image (with the disk, partition-table,
ext4 and Linux loaders and a fixed boot script: no menu, no timeout, no grub.cfg) in the gap
before the partition. SeaBIOS (Nova's default firmware) boots it. Everything identifying the
disk (the partition table's id, the filesystem UUID and its directory hash seed) is derived
from the cache key, so the same inputs give the same bytes.

The initramfs is busybox-static, the kernel modules of ``INITRAMFS_MODULES`` with their
dependencies in load order, and an ``/init`` script.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SECTOR = 512
MIB = 1024 * 1024
GIB = 1024 * MIB
PARTITION_START = 1 * MIB
# The part of the first sector GRUB's boot code may take: the partition table follows it.
BOOT_CODE_BYTES = 440
# ext4's own bookkeeping (inode tables, journal, reserved blocks) on top of the files.
FS_OVERHEAD = 1.15
FS_MIN_MIB = 32
BLOCK_SIZE = 4096

_UUID_NAMESPACE = uuid.UUID("6b1f6f0e-3f0e-4c55-9d3a-6d7c3e0b8a11")


class LayoutError(ValueError):
    pass


@dataclass(frozen=True)
class DiskLayout:
    fs_bytes: int
    fs_uuid: str
    hash_seed: str
    disk_id: str  # the DOS disk signature, 0x + 8 hex digits

    @property
    def partition_start(self) -> int:
        return PARTITION_START

    @property
    def disk_bytes(self) -> int:
        return PARTITION_START + self.fs_bytes

    @property
    def min_disk_gib(self) -> int:
        """Glance's ``min_disk``: the flavor's root disk must be at least this large."""
        return math.ceil(self.disk_bytes / GIB)

    def sfdisk_script(self) -> str:
        return (
            "label: dos\n"
            f"label-id: {self.disk_id}\n"
            "unit: sectors\n"
            f"start={PARTITION_START // SECTOR}, size={self.fs_bytes // SECTOR}, "
            "type=83, bootable\n"
        )


def plan_disk(content_bytes: int, headroom_mib: int, key: str) -> DiskLayout:
    """A disk for ``content_bytes`` of files plus ``headroom_mib`` free, identified by ``key``."""
    if content_bytes < 0 or headroom_mib < 0:
        raise LayoutError("sizes must not be negative")
    needed = content_bytes * FS_OVERHEAD + headroom_mib * MIB
    fs_mib = max(FS_MIN_MIB, math.ceil(needed / MIB))
    return DiskLayout(
        fs_bytes=fs_mib * MIB,
        fs_uuid=str(uuid.uuid5(_UUID_NAMESPACE, f"fs:{key}")),
        hash_seed=str(uuid.uuid5(_UUID_NAMESPACE, f"hash:{key}")),
        disk_id="0x" + uuid.uuid5(_UUID_NAMESPACE, f"disk:{key}").hex[:8],
    )


def mkfs_arguments(layout: DiskLayout, source: str, target: str, label: str) -> list[str]:
    """mkfs.ext4 populating the filesystem from ``source`` (sorted by mke2fs itself)."""
    return [
        "mkfs.ext4",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        str(BLOCK_SIZE),
        "-L",
        label,
        "-U",
        layout.fs_uuid,
        # fixed hash seed (directory indexes) and everything written now, not by the kernel
        # at first mount, so the image's bytes do not depend on when it was made
        "-E",
        f"hash_seed={layout.hash_seed},lazy_itable_init=0,lazy_journal_init=0",
        "-d",
        source,
        target,
        f"{layout.fs_bytes // 1024}k",
    ]


def kernel_command_line(fs_uuid: str | None, console: str) -> str:
    """``root=`` names the filesystem by UUID: the disk's name depends on the bus Nova picks."""
    root = f"root=UUID={fs_uuid} rw " if fs_uuid else ""
    return f"{root}{console} net.ifnames=0"


def grub_boot_script(kernel: str, initrd: str, cmdline: str) -> str:
    """GRUB's embedded script: straight to Linux, no menu and no timeout."""
    return f"set root=(hd0,msdos1)\nlinux {kernel} {cmdline}\ninitrd {initrd}\nboot\n"


# GRUB modules: the BIOS disk, the partition table, ext4, the Linux loader and `boot`.
GRUB_MODULES = ("biosdisk", "part_msdos", "ext2", "linux", "boot")


def module_closure(modules_dep: str, modules_builtin: str, wanted: Sequence[str]) -> list[str]:
    """The ``.ko`` paths (relative to the modules directory) that load ``wanted``, each after
    its dependencies, from the texts of ``modules.dep`` and ``modules.builtin``. A module the
    kernel has built in needs no file; one that is neither is an error."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    builtin = {_module_name(line.strip()) for line in modules_builtin.splitlines() if line.strip()}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        by_name[_module_name(path)] = path

    ordered: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dependency in reversed(deps.get(path, [])):
            visit(dependency)
        ordered.append(path)

    for name in wanted:
        name = name.replace("-", "_")
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise LayoutError(f"kernel module {name} is neither in modules.dep nor built in")
    return ordered


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def timestamp_fixes(paths: Iterable[str], epoch: int) -> str:
    """debugfs commands setting each inode's access and change times to ``epoch``. mke2fs
    copies them from the staging tree, where the kernel stamped them while we built it."""
    lines = []
    for path in paths:
        if '"' in path or "\n" in path:
            raise LayoutError(f"cannot name {path!r} to debugfs")
        for field in ("atime", "ctime"):
            lines.append(f'sif "{path}" {field} @{epoch}')
    return "\n".join(lines) + "\n"


def sidecar(
    profile: str,
    key: str,
    base_key: str,
    size: int,
    layout: DiskLayout,
    glance_properties: Mapping[str, str],
    contents: Mapping[str, object],
) -> dict[str, object]:
    """The JSON that travels with the qcow2: what it is, and how Glance must describe it."""
    return {
        "profile": profile,
        "cache_key": key,
        "base_key": base_key,
        "qcow2_bytes": size,
        "virtual_bytes": layout.disk_bytes,
        "filesystem_uuid": layout.fs_uuid,
        "glance": {
            "disk_format": "qcow2",
            "container_format": "bare",
            "min_disk": layout.min_disk_gib,
            "properties": dict(glance_properties),
        },
        "contents": dict(contents),
    }
