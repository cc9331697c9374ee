"""``astara-image``: the bootable images Nova boots appliances (and tests' workloads) from.

How an image is made, and why this way: Debian's own **mmdebstrap** installs an exact,
pre-resolved package list into a directory (``--variant=custom``: nothing is added behind our
back, so the list in the cache key is the list in the image), and the builder assembles the rest
itself with Debian's tools: ``mkfs.ext4 -d`` (no loop mount, no root filesystem ever mounted on
the host), ``sfdisk``, GRUB's BIOS boot sector and a core image made by ``grub-mkimage`` written
into the MBR gap (SeaBIOS boots it, as Nova's libvirt driver does by default), a busybox
initramfs, and ``qemu-img convert -c``. mkosi 14 (Debian 12's) runs its steps through
systemd-nspawn and decides the partitioning, package selection and timestamps itself;
diskimage-builder is a tree of shell elements, a chroot per phase and minutes
of work per build, with neither an exact package list nor a layered cache. Owning the assembly
is what gives the two properties the project needs: a layered cache (a change to Astara's source
rebuilds only the final layer, in about half a minute) and byte-for-byte reproducible images.

Pure modules: ``recipe`` (the profiles), ``resolve`` (pins from apt's and pip's answers),
``cachekey``, ``layout`` (disk, boot loader, initramfs module order, sidecar). Modules that run
tools: ``tools``, ``base`` (the Debian and Python layer), ``build`` (the final layer, the disk).
"""
