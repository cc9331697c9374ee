"""Pinning an image's inputs: apt's and pip's answers turned into exact versions.

Both resolvers run before anything is built, and what they answer goes into the cache key:
the same pinned set gives the same layer, and a new Debian security update or a new release
of a Python dependency gives a new key. The builder then installs exactly the pinned set and
checks afterwards that the image holds it, so a key never names a layer it does not describe.
This module is pure: it builds the tools' arguments and reads their output.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from astara.image.recipe import ARCHITECTURE, GLIBC, KEYRING, MIRRORS, PYTHON_VERSION

# "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []"
_INST = re.compile(r"^Inst (?P<name>[a-z0-9][a-z0-9+.-]*) \((?P<version>\S+) ")


class ResolveError(RuntimeError):
    """A resolver's answer cannot be used; the message says what to do."""


@dataclass(frozen=True, order=True)
class DebianPackage:
    name: str
    version: str

    @property
    def pin(self) -> str:
        return f"{self.name}={self.version}"


@dataclass(frozen=True, order=True)
class PythonPackage:
    name: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


def sources_list(mirrors: Sequence[str] = MIRRORS, keyring: str = KEYRING) -> str:
    """apt's sources.list for the image's suites, signed by Debian's archive keyring."""
    lines = []
    for line in mirrors:
        kind, rest = line.split(" ", 1)
        lines.append(f"{kind} [signed-by={keyring}] {rest}")
    return "\n".join(lines) + "\n"


def apt_options(state_dir: str) -> list[str]:
    """apt-get options that keep every file under ``state_dir``: the host's own apt
    configuration, sources and installed packages play no part in the answer."""
    settings = {
        "Dir::Etc": f"{state_dir}/etc",
        "Dir::Etc::SourceList": f"{state_dir}/etc/sources.list",
        "Dir::Etc::SourceParts": f"{state_dir}/etc/sources.list.d",
        "Dir::Etc::Preferences": f"{state_dir}/etc/preferences",
        "Dir::Etc::PreferencesParts": f"{state_dir}/etc/preferences.d",
        "Dir::Etc::Parts": f"{state_dir}/etc/apt.conf.d",
        "Dir::State": f"{state_dir}/state",
        "Dir::State::status": f"{state_dir}/state/status",
        "Dir::Cache": f"{state_dir}/cache",
        "APT::Architecture": ARCHITECTURE,
        "APT::Architectures": ARCHITECTURE,
        "Acquire::Languages": "none",
        # apt counts itself as Essential; the image does not need a package manager.
        "pkgCacheGen::ForceEssential": ",",
        "APT::Install-Recommends": "false",
    }
    return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]


def apt_request(packages: Sequence[str], with_essential: bool) -> list[str]:
    """The ``apt-get install --simulate`` arguments that resolve a profile's packages."""
    return ["install", "--simulate", *(["?essential"] if with_essential else []), *packages]


def parse_apt_simulation(output: str) -> tuple[DebianPackage, ...]:
    """The packages (and versions) an ``apt-get --simulate install`` would install, sorted."""
    found = {
        DebianPackage(m["name"], m["version"])
        for line in output.splitlines()
        if (m := _INST.match(line))
    }
    if not found:
        raise ResolveError("apt resolved no package: is deb.debian.org reachable?")
    return tuple(sorted(found))


def appliance_requirements(pyproject_text: str, group: str) -> tuple[str, ...]:
    """The requirement strings of one optional-dependency group of pyproject.toml."""
    project = tomllib.loads(pyproject_text)["project"]
    try:
        return tuple(project["optional-dependencies"][group])
    except KeyError:
        raise ResolveError(f"pyproject.toml has no optional-dependencies group {group!r}") from None


def platform_tags(glibc: tuple[int, int] = GLIBC) -> list[str]:
    """Every manylinux tag a CPython on this glibc accepts, newest first (pip does not
    expand ``--platform`` to the older compatible tags by itself)."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def pip_target_options() -> list[str]:
    """pip options selecting wheels for the image's interpreter, not the host's."""
    platforms = [arg for tag in platform_tags() for arg in ("--platform", tag)]
    return [
        "--only-binary=:all:",
        *platforms,
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--abi",
        "cp" + PYTHON_VERSION.replace(".", ""),
    ]


def parse_pip_report(report_text: str) -> tuple[PythonPackage, ...]:
    """Name, version and sha256 of each distribution in a ``pip install --report``."""
    report = json.loads(report_text)
    found = []
    for item in report.get("install", []):
        meta = item["metadata"]
        hashes = item.get("download_info", {}).get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise ResolveError(f"pip gave no sha256 for {meta['name']}: cannot pin it")
        found.append(PythonPackage(_canonical(meta["name"]), meta["version"], hashes["sha256"]))
    return tuple(sorted(found))


def requirements_file(packages: Iterable[PythonPackage]) -> str:
    """A hash-pinned requirements file: pip installs exactly these files or fails."""
    return "".join(f"{p.requirement}\n" for p in packages)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
