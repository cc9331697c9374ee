"""What each image is made of: the two profiles, as data.

A profile names the Debian packages it asks for (apt resolves the rest), whether they are
installed (maintainer scripts run, as on any Debian system) or only unpacked, the Python
packages of the image's virtual environment, the kernel modules its initramfs loads, how the
disk is sized and booted, and the Glance properties Nova needs to boot it. The builder reads
nothing else, so everything that shapes an image is visible here, and in the cache key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ProfileName = Literal["appliance", "workload"]

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
ARCHITECTURE = "amd64"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Debian 12's glibc: the newest manylinux tag the image's Python can load.
GLIBC = (2, 36)
PYTHON_VERSION = "3.11"

# Every timestamp in an image is clamped to this (Debian 12's release day): an image's bytes
# must not depend on the day it was built.
SOURCE_DATE_EPOCH = 1686355200

VENV = "/opt/astara"

# Documentation is dropped (the copyright files stay): nobody reads man pages on an appliance.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)

# What the initramfs loads, in both images: the virtio PCI transport, disk and NIC (Nova's
# libvirt driver with hw_disk_bus=virtio and hw_vif_model=virtio), and the IDE CD-ROM, ISO 9660
# and VFAT drivers of the config drive. Their dependencies are added from modules.dep.
INITRAMFS_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "ata_piix",
    "sr_mod",
    "isofs",
    "vfat",
)

SERIAL_CONSOLE = "console=tty0 console=ttyS0,115200"

GLANCE_PROPERTIES = {
    # Debian's cloud kernel has no AHCI driver: on q35 the config drive (a SATA CD-ROM) would
    # be invisible. The i440fx machine puts it on IDE, which ata_piix drives.
    "hw_machine_type": "pc",
    "hw_cdrom_bus": "ide",
    "hw_disk_bus": "virtio",
    "hw_vif_model": "virtio",
    "hw_firmware_type": "bios",
    "os_type": "linux",
    "os_distro": "debian",
    "os_version": "12",
    "img_config_drive": "mandatory",
}


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    summary: str
    # Requested packages; apt adds their dependencies.
    debian_packages: tuple[str, ...]
    # "install": a Debian system (Essential packages, maintainer scripts); "extract": the
    # packages' files only, from which the initramfs takes a kernel, modules and busybox.
    debian_mode: Literal["install", "extract"]
    # The optional-dependency group of pyproject.toml installed into the image's venv, and
    # whether Astara itself goes there too (the final layer).
    python_group: str | None
    with_astara: bool
    # The initramfs /init and whether it hands over to a root filesystem on the disk.
    init_script: str
    switch_root: bool
    # Free space in the root filesystem beyond what its files take.
    headroom_mib: int
    glance_properties: dict[str, str] = field(default_factory=lambda: dict(GLANCE_PROPERTIES))


APPLIANCE = Profile(
    name="appliance",
    summary=(
        "Debian 12 with systemd, the cloud kernel, the appliance's data-plane tools "
        "(nftables, dnsmasq, radvd, bird2, arping) and Astara in /opt/astara; it boots to "
        "astara-appliance-firstboot (credentials and management address from the config drive) "
        "and astara-appliance, and runs nothing else"
    ),
    debian_packages=(
        # merged /usr the way Debian 12 sets it up, without pulling in perl for usrmerge
        "usr-is-merged",
        "systemd",
        "systemd-sysv",
        "linux-image-cloud-amd64",
        # satisfies the kernel's initramfs-tool dependency without initramfs-tools and udev;
        # the image boots with its own initramfs (busybox-static below)
        "tiny-initramfs",
        "busybox-static",
        "python3",
        # the data plane: astara.appliance runs nft (libnftables), dnsmasq, radvd, bird, arping
        "nftables",
        "dnsmasq-base",
        "radvd",
        "bird2",
        "iputils-arping",
    ),
    debian_mode="install",
    python_group="appliance",
    with_astara=True,
    init_script="appliance-init",
    switch_root=True,
    headroom_mib=256,
)

WORKLOAD = Profile(
    name="workload",
    summary=(
        "a tiny test VM: the cloud kernel and busybox in an initramfs; it takes eth0's address "
        "by DHCP (IPv6 by SLAAC), runs the config drive's user_data when it starts with #!, "
        "and prints ASTARA-WORKLOAD markers on the serial console; ping, wget, nc and httpd "
        "are busybox applets"
    ),
    debian_packages=("busybox-static", "linux-image-cloud-amd64", "tiny-initramfs"),
    debian_mode="extract",
    python_group=None,
    with_astara=False,
    init_script="workload-init",
    switch_root=False,
    headroom_mib=4,
    # user data is optional for a workload, so is its config drive
    glance_properties={
        **{k: v for k, v in GLANCE_PROPERTIES.items() if k != "img_config_drive"},
        "os_distro": "busybox",
    },
)

PROFILES: dict[str, Profile] = {p.name: p for p in (APPLIANCE, WORKLOAD)}
