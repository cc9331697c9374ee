"""The base layer: pinning the Debian and Python inputs, and the root filesystem they make.

apt, in a private state directory under the cache (the host's own sources, preferences and
installed packages play no part), answers which exact Debian packages a profile's request
means; pip answers which exact wheels the profile's Python group means, for the image's
interpreter. mmdebstrap then installs exactly the pinned Debian packages (``custom`` variant:
nothing else is added) or only unpacks them (``extract``, for the workload); the builder
checks dpkg's database holds exactly them, makes the venv with the image's own Python and
installs the pinned wheels into it, and seals the tree.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from astara.image import resolve as pins
from astara.image.recipe import DPKG_EXCLUDES, MIRRORS, SUITE, VENV, Profile
from astara.image.tools import (
    CHROOT_WHEELS,
    BuildError,
    chroot_pip,
    download_wheels,
    normalize,
    reproducible_env,
    run,
)

MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
APT_DIRS = (
    "etc/sources.list.d",
    "etc/preferences.d",
    "etc/apt.conf.d",
    "state/lists/partial",
    "cache/archives/partial",
)


def resolve_debian(profile: Profile, apt_dir: Path) -> tuple[pins.DebianPackage, ...]:
    for sub in APT_DIRS:
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "etc/sources.list").write_text(pins.sources_list())
    (apt_dir / "state/status").touch()
    options = pins.apt_options(str(apt_dir))
    run(["apt-get", *options, "-q", "update"])
    request = pins.apt_request(profile.debian_packages, profile.debian_mode == "install")
    return pins.parse_apt_simulation(run(["apt-get", *options, *request]))


def resolve_python(
    python_exe: str, pyproject_text: str, group: str
) -> tuple[pins.PythonPackage, ...]:
    """The group's distributions and pip itself (it installs them inside the image)."""
    wanted = pins.appliance_requirements(pyproject_text, group)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        run(
            [
                python_exe,
                "-m",
                "pip",
                "install",
                "-q",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report),
                "--target",
                str(Path(tmp) / "unused"),
                *pins.pip_target_options(),
                *wanted,
                "pip",
            ]
        )
        return pins.parse_pip_report(report.read_text())


def build_base(
    profile: Profile,
    rootfs: Path,
    debian: Sequence[pins.DebianPackage],
    python: Sequence[pins.PythonPackage],
    python_exe: str,
    progress: Callable[[str], None],
) -> None:
    """Make the base layer's tree at ``rootfs`` (which must not exist)."""
    progress(f"base layer: mmdebstrap {SUITE} ({len(debian)} packages)")
    variant = "custom" if profile.debian_mode == "install" else "extract"
    hooks = ["--hook-dir", MERGED_USR_HOOKS] if variant == "custom" else []
    run(
        [
            "mmdebstrap",
            "--mode=root",
            f"--variant={variant}",
            "--quiet",
            "--include=" + ",".join(p.pin for p in debian),
            *hooks,
            *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
            SUITE,
            str(rootfs),
            *MIRRORS,
        ],
        env=reproducible_env(),
    )
    if variant == "custom":
        check_installed(rootfs, debian)
        # tiny-initramfs's postinst made one for the build host, differently each time; the
        # final layer puts the image's own initramfs there.
        for initrd in (rootfs / "boot").glob("initrd.img-*"):
            initrd.unlink()
    else:
        # unpacked only: the kernel package's postinst never ran depmod
        for modules in (rootfs / "lib/modules").iterdir():
            run(["depmod", "-b", str(rootfs), modules.name])
    if python:
        progress(f"base layer: venv {VENV} with {len(python) - 1} Python distributions")
        install_python(rootfs, python, python_exe)
    progress("base layer: removing logs and caches, clamping timestamps")
    normalize(rootfs)


def check_installed(rootfs: Path, debian: Sequence[pins.DebianPackage]) -> None:
    out = run(
        [
            "dpkg-query",
            f"--admindir={rootfs}/var/lib/dpkg",
            "-W",
            "-f",
            "${db:Status-Abbrev} ${Package} ${Version}\n",
        ]
    )
    installed = {
        pins.DebianPackage(*line.split()[1:3]) for line in out.splitlines() if line.startswith("ii")
    }
    if installed != set(debian):
        extra = sorted(p.pin for p in installed - set(debian))
        missing = sorted(p.pin for p in set(debian) - installed)
        raise BuildError(
            f"the root filesystem does not hold the pinned packages (extra: {extra}, "
            f"missing: {missing}); the archive may have changed during the build: run again"
        )


def install_python(rootfs: Path, python: Sequence[pins.PythonPackage], python_exe: str) -> None:
    wheels = rootfs / CHROOT_WHEELS.lstrip("/")
    wheels.mkdir(parents=True)
    download_wheels(python_exe, python, wheels)
    runtime = [p for p in python if p.name != "pip"]
    (wheels / "runtime.txt").write_text(pins.requirements_file(runtime))
    run(["chroot", str(rootfs), "python3", "-m", "venv", "--without-pip", VENV])
    chroot_pip(rootfs, ["--require-hashes", "-r", f"{CHROOT_WHEELS}/runtime.txt"])
    shutil.rmtree(wheels)
