"""The orchestrator's metadata options: Nova's secret is required with the URL, and secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from astara.drivers.metadata import MetadataService
from astara.orchestrator.config import DEFAULT_OPTS
from astara.orchestrator.service import ConfigError, metadata_service, parse_config

pytestmark = pytest.mark.unit


URL, SECRET = "http://nova-metadata:8775", "s3cret"


def service_for(tmp_path: Path, options: dict[str, str]) -> MetadataService | None:
    ini = tmp_path / "orchestrator.ini"
    ini.write_text("[DEFAULT]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return metadata_service(parse_config(["--config-file", str(ini)]))


def test_no_url_no_metadata(tmp_path: Path) -> None:
    assert service_for(tmp_path, {}) is None
    assert service_for(tmp_path, {"metadata_proxy_shared_secret": SECRET}) is None


def test_url_and_secret_make_the_service(tmp_path: Path) -> None:
    found = service_for(
        tmp_path, {"metadata_upstream_url": URL, "metadata_proxy_shared_secret": SECRET}
    )
    assert found == MetadataService(URL, SECRET)


def test_url_without_secret_is_refused_saying_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"metadata_proxy_shared_secret is not: set it to Nova"):
        service_for(tmp_path, {"metadata_upstream_url": URL})


def test_the_secret_option_is_masked_by_oslo() -> None:
    (opt,) = [o for o in DEFAULT_OPTS if o.name == "metadata_proxy_shared_secret"]
    assert opt.secret is True
