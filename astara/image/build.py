"""``ImageBuilder``: the two cached layers, and the final layer and disk themselves.

Steps, each printed with the time since the start:

1. pin the inputs (``base.resolve_debian``, ``base.resolve_python``) and compute the base key;
2. base layer, when its key is not cached: ``base.build_base``;
3. final layer, when its key is not cached: Astara's wheel into the venv (built from a copy of
   exactly the files the key hashed), the systemd units and presets, the initramfs, the ext4
   filesystem (mke2fs -d, then debugfs fixes the inode times the staging tree could not hold),
   the partition table and GRUB, then ``qemu-img convert -c`` and the JSON sidecar.

The decisions are in ``recipe``, ``resolve``, ``cachekey`` and ``layout``; this module and
``base`` run the tools. A build holds a lock on the cache directory, so two builds never write
the same layer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from astara.image import base, cachekey, layout
from astara.image import resolve as pins
from astara.image.recipe import (
    DPKG_EXCLUDES,
    INITRAMFS_MODULES,
    MIRRORS,
    SERIAL_CONSOLE,
    SOURCE_DATE_EPOCH,
    SUITE,
    VENV,
    Profile,
)
from astara.image.tools import (
    CHROOT_WHEELS,
    BuildError,
    Progress,
    chroot_pip,
    clamp_times,
    download_wheels,
    normalize,
    remove_tree,
    reproducible_env,
    run,
    run_bytes,
    tree_bytes,
    walk,
)

# The builder's own modules whose code shapes the base layer; the rest shapes the final one.
BASE_BUILDER_FILES = ("recipe.py", "resolve.py", "cachekey.py", "tools.py", "base.py")
# Host packages whose tools write the image's bytes: their versions are inputs too.
HOST_TOOLS = (
    "mmdebstrap",
    "apt",
    "dpkg",
    "e2fsprogs",
    "fdisk",
    "grub-pc-bin",
    "qemu-utils",
    "cpio",
    "gzip",
    "kmod",
)
GRUB_DIR = Path("/usr/lib/grub/i386-pc")
IMAGE_FILES = "astara.image.files"
# Units of a general-purpose system the appliance has no use for; each costs boot time.
MASKED_UNITS = (
    # its prompts would wait on the console forever at each instance's first boot
    "systemd-firstboot.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "systemd-pstore.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
)


@dataclass(frozen=True)
class BuiltImage:
    qcow2: Path
    sidecar: Path
    key: str
    cached: bool


def image_file(name: str) -> str:
    return (resources.files(IMAGE_FILES) / name).read_text()


class ImageBuilder:
    def __init__(
        self,
        profile: Profile,
        cache_dir: Path,
        source_root: Path,
        force: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.profile = profile
        self.cache_dir = cache_dir
        self.source_root = source_root
        self.force = force
        self.progress = progress or Progress()
        self.python = sys.executable

    # --- the whole build ------------------------------------------------------------------

    def build(self) -> BuiltImage:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            debian, python = self.pin_inputs()
            tools = self.host_tools()
            base_key = cachekey.digest(self.base_inputs(debian, python, tools))
            layer = (
                self.cache_dir / "layers" / f"{self.profile.name}-base-{cachekey.short(base_key)}"
            )
            if layer.is_dir() and not self.force:
                self.progress(f"base layer cached: {layer}")
            else:
                self.build_base(layer, debian, python)
            key = cachekey.digest(self.final_inputs(base_key, tools))
            qcow2 = self.cache_dir / f"{self.profile.name}-{cachekey.short(key)}.qcow2"
            sidecar = qcow2.with_suffix(".json")
            if qcow2.is_file() and sidecar.is_file() and not self.force:
                self.progress(f"image cached: {qcow2}")
                return BuiltImage(qcow2, sidecar, key, cached=True)
            self.build_final(layer, base_key, key, python, qcow2)
            self.progress(f"image ready: {qcow2} ({qcow2.stat().st_size // 1024 // 1024} MiB)")
            return BuiltImage(qcow2, sidecar, key, cached=False)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.cache_dir / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.progress(f"waiting for another build using {self.cache_dir}")
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # --- inputs ---------------------------------------------------------------------------

    def pin_inputs(
        self,
    ) -> tuple[tuple[pins.DebianPackage, ...], tuple[pins.PythonPackage, ...]]:
        self.progress(f"resolving Debian packages ({', '.join(self.profile.debian_packages)})")
        debian = base.resolve_debian(self.profile, self.cache_dir / "apt")
        self.progress(f"  {len(debian)} Debian packages pinned")
        python: tuple[pins.PythonPackage, ...] = ()
        if self.profile.python_group:
            self.progress(f"resolving Python packages (group {self.profile.python_group!r})")
            python = base.resolve_python(
                self.python,
                (self.source_root / "pyproject.toml").read_text(),
                self.profile.python_group,
            )
            self.progress(f"  {len(python)} Python distributions pinned")
        return debian, python

    def build_base(
        self,
        target: Path,
        debian: Sequence[pins.DebianPackage],
        python: Sequence[pins.PythonPackage],
    ) -> None:
        with self._scratch(target.parent) as tmp:
            rootfs = tmp / "rootfs"
            base.build_base(self.profile, rootfs, debian, python, self.python, self.progress)
            if target.exists():
                shutil.rmtree(target)
            rootfs.rename(target)
        self.progress(f"base layer ready: {target}")

    def host_tools(self) -> dict[str, str]:
        out = run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *HOST_TOOLS])
        return dict(line.split(" ", 1) for line in out.splitlines())

    def builder_digest(self, names: Sequence[str] | None) -> str:
        here = Path(__file__).parent
        files = (
            [here / n for n in names]
            if names
            else [p for p in here.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        return cachekey.tree_digest(here, files)

    def base_inputs(
        self,
        debian: Sequence[pins.DebianPackage],
        python: Sequence[pins.PythonPackage],
        tools: Mapping[str, str],
    ) -> dict[str, object]:
        return {
            "layer": "base",
            "profile": self.profile.name,
            "suite": SUITE,
            "mirrors": list(MIRRORS),
            "requested": list(self.profile.debian_packages),
            "mode": self.profile.debian_mode,
            "excludes": list(DPKG_EXCLUDES),
            "debian": [p.pin for p in debian],
            "python": [p.requirement for p in python],
            "builder": self.builder_digest(BASE_BUILDER_FILES),
            "tools": dict(tools),
            "epoch": SOURCE_DATE_EPOCH,
        }

    def final_inputs(self, base_key: str, tools: Mapping[str, str]) -> dict[str, object]:
        astara = (
            cachekey.tree_digest(self.source_root, cachekey.source_files(self.source_root))
            if self.profile.with_astara
            else None
        )
        return {
            "layer": "final",
            "base": base_key,
            "astara": astara,
            "builder": self.builder_digest(None),
            "modules": list(INITRAMFS_MODULES),
            "tools": dict(tools),
        }

    # --- final layer ----------------------------------------------------------------------

    def build_final(
        self,
        layer: Path,
        base_key: str,
        key: str,
        python: Sequence[pins.PythonPackage],
        qcow2: Path,
    ) -> None:
        with self._scratch(self.cache_dir) as tmp:
            staging = tmp / "root"
            if self.profile.debian_mode == "install":
                self.progress("final layer: copying the base layer")
                run(["cp", "-a", str(layer), str(staging)])
                kernel_tree = staging
            else:
                staging.mkdir()
                (staging / "boot").mkdir()
                kernel_tree = layer
            contents: dict[str, object] = {}
            if self.profile.with_astara:
                contents["astara"] = self.install_astara(staging, tmp, python)
                self.configure_systemd(staging)
            kver, kernel, initrd = self.make_initramfs(kernel_tree, staging, tmp)
            contents["kernel"] = kver
            normalize(staging)
            self.assemble(staging, tmp, key, base_key, kernel, initrd, qcow2, contents)

    def install_astara(self, staging: Path, tmp: Path, python: Sequence[pins.PythonPackage]) -> str:
        self.progress("final layer: building Astara's wheel")
        source = tmp / "source"
        source.mkdir()
        for path in cachekey.source_files(self.source_root):
            dest = source / path.relative_to(self.source_root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        wheels = staging / CHROOT_WHEELS.lstrip("/")
        wheels.mkdir(parents=True)
        run(
            [self.python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
            env=reproducible_env(),
        )
        wheel = next(wheels.glob("astara-*.whl"))
        download_wheels(self.python, [p for p in python if p.name == "pip"], wheels)
        self.progress(f"final layer: installing {wheel.name} into {VENV}")
        chroot_pip(staging, ["astara"])
        shutil.rmtree(wheels)
        return wheel.name

    def configure_systemd(self, staging: Path) -> None:
        self.progress("final layer: systemd units (first boot, appliance), presets")
        units = staging / "etc/systemd/system"
        for name in (
            "astara.target",
            "astara-appliance-firstboot.service",
            "astara-appliance.service",
        ):
            (units / name).write_text(image_file(name))
        presets = staging / "etc/systemd/system-preset"
        presets.mkdir(parents=True, exist_ok=True)
        (presets / "00-astara.preset").write_text(image_file("astara.preset"))
        (staging / "etc/hostname").write_text("astara-appliance\n")
        chroot = ["chroot", str(staging), "systemctl"]
        run([*chroot, "preset-all"])
        run([*chroot, "set-default", "astara.target"])
        run([*chroot, "mask", *MASKED_UNITS])
        # Each generator is a process at every boot (seconds under TCG) and none has work
        # here: no fstab, no getty, no SysV scripts, no encrypted or GPT-discovered disks.
        masked = staging / "etc/systemd/system-generators"
        masked.mkdir(parents=True, exist_ok=True)
        for generator in sorted((staging / "usr/lib/systemd/system-generators").iterdir()):
            (masked / generator.name).symlink_to("/dev/null")

    def make_initramfs(self, tree: Path, staging: Path, tmp: Path) -> tuple[str, str, str]:
        modules_root = tree / "usr/lib/modules"
        if not modules_root.is_dir():
            modules_root = tree / "lib/modules"
        (kver,) = [p.name for p in modules_root.iterdir()]
        self.progress(f"initramfs: busybox, {len(INITRAMFS_MODULES)} modules of {kver}, /init")
        modules = modules_root / kver
        ordered = layout.module_closure(
            (modules / "modules.dep").read_text(),
            (modules / "modules.builtin").read_text(),
            INITRAMFS_MODULES,
        )
        ramfs = tmp / "initramfs"
        for sub in (
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "etc",
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "mnt",
            "root",
            "lib/modules",
        ):
            (ramfs / sub).mkdir(parents=True, exist_ok=True)
        busybox = next(p for p in (tree / "bin/busybox", tree / "usr/bin/busybox") if p.exists())
        shutil.copy2(busybox, ramfs / "bin/busybox")
        for applet in run([str(busybox), "--list-full"]).split():
            link = ramfs / applet
            if not link.exists() and not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        for relative in ordered:
            dest = ramfs / "lib/modules" / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(modules / relative, dest)
        (ramfs / "etc/initramfs-modules").write_text("".join(f"{m}\n" for m in ordered))
        if self.profile.switch_root:
            _write_executable(ramfs / "init", image_file(self.profile.init_script))
        else:
            (ramfs / "init").symlink_to("/bin/busybox")
            _write_executable(ramfs / "etc/rc", image_file(self.profile.init_script))
            _write_executable(ramfs / "etc/udhcpc.script", image_file("workload-udhcpc"))
            (ramfs / "etc/inittab").write_text(image_file("workload-inittab"))
        clamp_times(ramfs)
        cpio = run_bytes(
            [
                "sh",
                "-c",
                "find . -print0 | LC_ALL=C sort -z | "
                "cpio --quiet --null --reproducible -o -H newc -R 0:0 | gzip -n -9",
            ],
            cwd=ramfs,
        )
        kernel_src = tree / "boot" / f"vmlinuz-{kver}"
        kernel = f"/boot/vmlinuz-{kver}"
        initrd = f"/boot/initrd.img-{kver}"
        if not (staging / kernel.lstrip("/")).exists():
            shutil.copy2(kernel_src, staging / kernel.lstrip("/"))
        target = staging / initrd.lstrip("/")
        target.write_bytes(cpio)
        os.chmod(target, 0o644)
        return kver, kernel, initrd

    def assemble(
        self,
        staging: Path,
        tmp: Path,
        key: str,
        base_key: str,
        kernel: str,
        initrd: str,
        qcow2: Path,
        contents: Mapping[str, object],
    ) -> None:
        content_bytes = tree_bytes(staging)
        plan = layout.plan_disk(content_bytes, self.profile.headroom_mib, key)
        self.progress(
            f"disk: ext4 of {plan.fs_bytes // layout.MIB} MiB for "
            f"{content_bytes // layout.MIB} MiB of files"
        )
        fs = tmp / "rootfs.ext4"
        run(
            layout.mkfs_arguments(plan, str(staging), str(fs), f"astara-{self.profile.name}"),
            env=reproducible_env(),
        )
        paths = ["/", *sorted("/" + p.relative_to(staging).as_posix() for p in walk(staging))]
        script = tmp / "times.debugfs"
        script.write_text(layout.timestamp_fixes(paths, SOURCE_DATE_EPOCH))
        run(["debugfs", "-w", "-f", str(script), str(fs)], env=reproducible_env())
        run(["e2fsck", "-fn", str(fs)])

        self.progress("disk: partition table, GRUB (BIOS)")
        disk = tmp / "disk.raw"
        with disk.open("wb") as handle:
            handle.truncate(plan.disk_bytes)
        run(
            ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
            input_text=plan.sfdisk_script(),
        )
        cmdline = layout.kernel_command_line(
            plan.fs_uuid if self.profile.switch_root else None, SERIAL_CONSOLE
        )
        boot_script = tmp / "boot.cfg"
        boot_script.write_text(layout.grub_boot_script(kernel, initrd, cmdline))
        core = tmp / "core.img"
        run(
            [
                "grub-mkimage",
                "-O",
                "i386-pc",
                "-o",
                str(core),
                "-c",
                str(boot_script),
                "-p",
                "(hd0,msdos1)/boot/grub",
                *layout.GRUB_MODULES,
            ],
            env=reproducible_env(),
        )
        core_bytes = core.read_bytes()
        if len(core_bytes) > plan.partition_start - layout.SECTOR:
            raise BuildError(
                f"GRUB's core image ({len(core_bytes)} bytes) does not fit before the partition"
            )
        boot_code = (GRUB_DIR / "boot.img").read_bytes()[: layout.BOOT_CODE_BYTES]
        with disk.open("r+b") as handle:
            handle.write(boot_code)
            handle.seek(layout.SECTOR)
            handle.write(core_bytes)
            handle.seek(plan.partition_start)
            with fs.open("rb") as source:
                shutil.copyfileobj(source, handle, 4 * layout.MIB)

        self.progress("disk: qemu-img convert -c (compressed qcow2)")
        partial = qcow2.with_name(f".{qcow2.name}.partial")
        run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(disk), str(partial)])
        size = partial.stat().st_size
        details = layout.sidecar(
            self.profile.name,
            key,
            base_key,
            size,
            plan,
            self.profile.glance_properties,
            {**contents, "summary": self.profile.summary, "kernel_command_line": cmdline},
        )
        qcow2.with_suffix(".json").write_text(json.dumps(details, indent=2, sort_keys=True) + "\n")
        partial.rename(qcow2)

    @contextlib.contextmanager
    def _scratch(self, parent: Path) -> Iterator[Path]:
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=".build-", dir=parent))
        try:
            yield path
        finally:
            remove_tree(path)


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o755)  # noqa: S103 (scripts the image runs)
