"""The pure parts of astara-image: pins, cache keys, the disk and boot plan."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from astara.image import cachekey, layout
from astara.image import resolve as pins
from astara.image.build import ImageBuilder
from astara.image.recipe import APPLIANCE, INITRAMFS_MODULES, WORKLOAD

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

APT_OUTPUT = """\
NOTE: This is only a simulation!
Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []
Inst python3.11-minimal (3.11.2-6+deb12u6 Debian-Security:12/oldstable-security [amd64])
Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])
Inst libstdc++6 (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])
"""


def _report(*items: tuple[str, str, str | None]) -> str:
    return json.dumps(
        {
            "install": [
                {
                    "metadata": {"name": name, "version": version},
                    "download_info": {
                        "url": f"https://files.example/{name}.whl",
                        "archive_info": {"hashes": {"sha256": sha} if sha else {}},
                    },
                }
                for name, version, sha in items
            ]
        }
    )


def test_apt_simulation_gives_every_installed_package_pinned_and_sorted() -> None:
    found = pins.parse_apt_simulation(APT_OUTPUT)
    assert [p.pin for p in found] == [
        "libc6=2.36-9+deb12u14",
        "libstdc++6=12.2.0-14+deb12u1",
        "python3.11-minimal=3.11.2-6+deb12u6",
    ]


def test_apt_simulation_without_packages_is_an_error_saying_what_to_check() -> None:
    with pytest.raises(pins.ResolveError, match=r"deb\.debian\.org"):
        pins.parse_apt_simulation("E: Unable to locate package nftables\n")


def test_pip_report_pins_names_versions_and_hashes() -> None:
    found = pins.parse_pip_report(_report(("Typing_Extensions", "4.16.0", "ab" * 32)))
    assert found == (pins.PythonPackage("typing-extensions", "4.16.0", "ab" * 32),)
    assert pins.requirements_file(found) == (
        f"typing-extensions==4.16.0 --hash=sha256:{'ab' * 32}\n"
    )


def test_a_distribution_without_a_hash_cannot_be_pinned() -> None:
    with pytest.raises(pins.ResolveError, match="no sha256 for fastapi"):
        pins.parse_pip_report(_report(("fastapi", "0.165.0", None)))


def test_platform_tags_cover_every_manylinux_up_to_the_images_glibc() -> None:
    tags = pins.platform_tags((2, 36))
    assert tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags


def test_apt_resolution_ignores_the_hosts_apt_configuration() -> None:
    options = pins.apt_options("/cache/apt")
    values = dict(o.split("=", 1) for o in options if o != "-o")
    assert values["Dir::Etc::SourceList"] == "/cache/apt/etc/sources.list"
    assert values["Dir::State::status"] == "/cache/apt/state/status"
    assert values["pkgCacheGen::ForceEssential"] == ","
    assert "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg" in pins.sources_list()


def test_only_a_debian_system_asks_for_the_essential_set() -> None:
    assert "?essential" in pins.apt_request(APPLIANCE.debian_packages, with_essential=True)
    assert "?essential" not in pins.apt_request(WORKLOAD.debian_packages, with_essential=False)


# --- the appliance's Python dependencies are exactly what it imports -------------------------

DISTRIBUTION_OF = {"pydantic_core": "pydantic"}


def _module_file(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _runtime_imports(*entry_points: str) -> set[str]:
    """Third-party distributions reachable from the entry points through Astara's modules."""
    found: set[str] = set()
    todo, seen = list(entry_points), set()
    while todo:
        module = todo.pop()
        if module in seen or not _module_file(module).exists():
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(_module_file(module).read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "astara":
                    todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add(DISTRIBUTION_OF.get(top, top))
    return found


def test_the_appliance_group_lists_exactly_what_the_appliance_imports() -> None:
    group = pins.appliance_requirements((ROOT / "pyproject.toml").read_text(), "appliance")
    declared = {req.split(">")[0].split("<")[0].split("=")[0].strip().lower() for req in group}
    assert declared == _runtime_imports("astara.appliance.service", "astara.appliance.firstboot")


def test_a_missing_group_is_named() -> None:
    with pytest.raises(pins.ResolveError, match="'nope'"):
        pins.appliance_requirements((ROOT / "pyproject.toml").read_text(), "nope")


# --- cache keys -------------------------------------------------------------------------------

BASE = {
    "profile": "appliance",
    "debian": ["libc6=2.36-9+deb12u14", "nftables=1.0.6-2+deb12u2"],
    "python": ["pydantic==2.14.4 --hash=sha256:aa"],
    "builder": "b" * 64,
    "tools": {"e2fsprogs": "1.47.0-2"},
}


def test_same_inputs_give_the_same_key_whatever_their_order() -> None:
    assert cachekey.digest(BASE) == cachekey.digest(dict(reversed(list(BASE.items()))))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("profile", "workload"),
        ("debian", ["libc6=2.36-9+deb12u15", "nftables=1.0.6-2+deb12u2"]),
        ("python", ["pydantic==2.14.5 --hash=sha256:aa"]),
        ("builder", "c" * 64),
        ("tools", {"e2fsprogs": "1.47.0-3"}),
    ],
)
def test_any_changed_input_changes_the_key(field: str, value: object) -> None:
    assert cachekey.digest({**BASE, field: value}) != cachekey.digest(BASE)


def _checkout(root: Path, module_text: str) -> Path:
    (root / "astara" / "appliance").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'astara'\n")
    (root / "README.md").write_text("readme\n")
    (root / "astara" / "appliance" / "api.py").write_text(module_text)
    return root


def test_a_source_change_changes_the_final_key_only(tmp_path: Path) -> None:
    one = ImageBuilder(APPLIANCE, tmp_path / "cache", _checkout(tmp_path / "a", "x = 1\n"))
    two = ImageBuilder(APPLIANCE, tmp_path / "cache", _checkout(tmp_path / "b", "x = 2\n"))
    debian = (pins.DebianPackage("libc6", "2.36-9+deb12u14"),)
    tools = {"e2fsprogs": "1.47.0-2"}
    assert cachekey.digest(one.base_inputs(debian, (), tools)) == cachekey.digest(
        two.base_inputs(debian, (), tools)
    )
    assert one.final_inputs("k", tools) != two.final_inputs("k", tools)


def test_where_the_checkout_lives_and_file_dates_do_not_change_the_key(tmp_path: Path) -> None:
    a = _checkout(tmp_path / "a", "x = 1\n")
    b = _checkout(tmp_path / "elsewhere" / "b", "x = 1\n")
    (b / "astara" / "appliance" / "api.py").touch()
    (b / "astara" / "appliance" / "__pycache__").mkdir()
    (b / "astara" / "appliance" / "__pycache__" / "api.cpython-311.pyc").write_bytes(b"junk")
    assert cachekey.tree_digest(a, cachekey.source_files(a)) == cachekey.tree_digest(
        b, cachekey.source_files(b)
    )


def test_the_workload_key_does_not_follow_astaras_source(tmp_path: Path) -> None:
    one = ImageBuilder(WORKLOAD, tmp_path / "cache", _checkout(tmp_path / "a", "x = 1\n"))
    two = ImageBuilder(WORKLOAD, tmp_path / "cache", _checkout(tmp_path / "b", "x = 2\n"))
    assert one.final_inputs("k", {}) == two.final_inputs("k", {})


# --- disk and boot plan -----------------------------------------------------------------------


def test_the_disk_is_sized_for_the_files_and_named_by_the_key() -> None:
    plan = layout.plan_disk(300 * layout.MIB, 256, "key-1")
    assert plan.fs_bytes % layout.MIB == 0
    assert plan.fs_bytes >= 300 * layout.MIB * layout.FS_OVERHEAD + 256 * layout.MIB
    assert plan.disk_bytes == plan.fs_bytes + layout.PARTITION_START
    assert plan.min_disk_gib == 1
    assert plan == layout.plan_disk(300 * layout.MIB, 256, "key-1")
    other = layout.plan_disk(300 * layout.MIB, 256, "key-2")
    assert (other.fs_uuid, other.hash_seed, other.disk_id) != (
        plan.fs_uuid,
        plan.hash_seed,
        plan.disk_id,
    )
    assert layout.plan_disk(0, 0, "k").fs_bytes == layout.FS_MIN_MIB * layout.MIB


def test_sfdisk_script_puts_one_bootable_linux_partition_at_one_mib() -> None:
    plan = layout.plan_disk(10 * layout.MIB, 4, "k")
    script = plan.sfdisk_script()
    assert f"label-id: {plan.disk_id}" in script
    assert f"start=2048, size={plan.fs_bytes // 512}, type=83, bootable" in script


def test_mkfs_fixes_uuid_hash_seed_and_size() -> None:
    plan = layout.plan_disk(10 * layout.MIB, 4, "k")
    argv = layout.mkfs_arguments(plan, "/src", "/out.ext4", "astara-appliance")
    assert argv[argv.index("-U") + 1] == plan.fs_uuid
    assert f"hash_seed={plan.hash_seed}" in argv[argv.index("-E") + 1]
    assert argv[-1] == f"{plan.fs_bytes // 1024}k"
    assert argv[argv.index("-d") + 1] == "/src"


def test_the_appliance_boots_its_root_by_uuid_and_the_workload_from_its_initramfs() -> None:
    assert layout.kernel_command_line("u-1", "console=ttyS0").startswith("root=UUID=u-1 rw ")
    assert "root=" not in layout.kernel_command_line(None, "console=ttyS0")
    script = layout.grub_boot_script("/boot/vmlinuz-6", "/boot/initrd.img-6", "root=UUID=u rw")
    assert script.splitlines() == [
        "set root=(hd0,msdos1)",
        "linux /boot/vmlinuz-6 root=UUID=u rw",
        "initrd /boot/initrd.img-6",
        "boot",
    ]


VIRTIO = "kernel/drivers/virtio"
MODULES_DEP = f"""\
kernel/drivers/block/virtio_blk.ko: {VIRTIO}/virtio_ring.ko {VIRTIO}/virtio.ko
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/cdrom/cdrom.ko:
kernel/drivers/scsi/scsi_mod.ko:
"""


def test_modules_load_after_their_dependencies_once_each() -> None:
    order = layout.module_closure(
        MODULES_DEP, "kernel/fs/ext4/ext4.ko\n", ["virtio_blk", "sr_mod", "ext4", "virtio_blk"]
    )
    assert order == [
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/scsi/scsi_mod.ko",
        "kernel/drivers/cdrom/cdrom.ko",
        "kernel/drivers/scsi/sr_mod.ko",
    ]


def test_an_unknown_module_is_an_error_naming_it() -> None:
    with pytest.raises(layout.LayoutError, match="virtio_gpu"):
        layout.module_closure(MODULES_DEP, "", ["virtio_gpu"])


def test_the_recipe_loads_the_config_drive_and_virtio_drivers() -> None:
    assert {"virtio_blk", "virtio_net", "sr_mod", "isofs"} <= set(INITRAMFS_MODULES)


def test_debugfs_fixes_both_times_of_every_path_and_refuses_unnameable_ones() -> None:
    script = layout.timestamp_fixes(["/", "/usr/bin/a b"], 1686355200)
    assert script.splitlines() == [
        'sif "/" atime @1686355200',
        'sif "/" ctime @1686355200',
        'sif "/usr/bin/a b" atime @1686355200',
        'sif "/usr/bin/a b" ctime @1686355200',
    ]
    with pytest.raises(layout.LayoutError):
        layout.timestamp_fixes(['/bad"name'], 0)


def test_the_sidecar_says_what_glance_needs() -> None:
    plan = layout.plan_disk(300 * layout.MIB, 256, "k")
    details = layout.sidecar(
        "appliance", "k" * 64, "b" * 64, 1234, plan, APPLIANCE.glance_properties, {}
    )
    glance = details["glance"]
    assert isinstance(glance, dict)
    assert glance["disk_format"] == "qcow2" and glance["min_disk"] == 1
    properties = glance["properties"]
    assert properties["hw_disk_bus"] == "virtio" and properties["hw_vif_model"] == "virtio"
    assert properties["img_config_drive"] == "mandatory"
    assert (properties["hw_machine_type"], properties["hw_cdrom_bus"]) == ("pc", "ide")
    assert "img_config_drive" not in WORKLOAD.glance_properties
