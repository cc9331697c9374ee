"""The committed orchestrator.ini.sample documents every option, as the code defines it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from oslo_config import cfg

from astara.orchestrator.config import list_opts, register_opts

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc/astara/orchestrator.ini.sample"


def test_sample_lists_every_option_with_its_help_and_default() -> None:
    sample = SAMPLE.read_text()
    sections = {name: body for name, body in _sections(sample)}
    for group, opts in list_opts():
        body = sections[group]
        for opt in opts:
            assert opt.help, f"[{group}] {opt.name} has no help text"
            shown = opt.sample_default if opt.sample_default is not None else opt.default
            # An empty default ends the line at "=" (the generator strips the space).
            line = f"#{opt.dest} = {'<None>' if shown is None else _ini(shown)}".rstrip()
            assert line in body, f"[{group}] {opt.name}: '{line}' missing: regenerate the sample"


def test_generator_reproduces_the_astara_part_of_the_sample(tmp_path: Path) -> None:
    out = tmp_path / "astara.ini"
    subprocess.run(
        [
            str(Path(sys.executable).with_name("oslo-config-generator")),
            "--namespace",
            "astara.orchestrator",
            "--output-file",
            str(out),
            "--wrap-width",
            "79",
        ],
        check=True,
        capture_output=True,
    )
    committed = dict(_sections(SAMPLE.read_text()))
    for group, body in _sections(out.read_text()):
        assert body.strip() in committed[group], f"[{group}] differs: regenerate the sample"


def test_options_parse_from_an_ini_file(tmp_path: Path) -> None:
    ini = tmp_path / "o.ini"
    ini.write_text("[workers]\nprocesses = 3\n[provider]\nprefix = abc\n")
    conf = cfg.ConfigOpts()
    register_opts(conf)
    conf(["--config-file", str(ini)], project="astara")
    assert conf.workers.processes == 3
    assert conf.workers.threads == 4
    assert conf.provider.prefix == "abc"


def _sections(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for chunk in (
        text.split("\n[")[1:] if not text.startswith("[") else ("\n" + text).split("\n[")[1:]
    ):
        name, _, body = chunk.partition("]\n")
        found.append((name, body))
    return found


def _ini(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
