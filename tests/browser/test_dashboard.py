"""The Horizon plugin in a real browser: real Horizon 27 with the plugin, logging in through
Keystone, the panels showing the routers of a running test cloud, a rebuild from the panel.

Headless Chromium from Debian, driven by Selenium and Debian's chromedriver. Screenshots of the
panels are saved under docs/images/ (the README shows them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from astara.testing.browser import chromium
from astara.testing.chaos import eventually, fresh_state
from astara.testing.cloud import CloudInABox
from astara.testing.horizon_bed import HorizonBed
from astara.testing.keystone_access import KeystoneAccess
from astara.testing.neutron_bed import NeutronTestbed, connect
from astara.testing.neutron_objects import tenant_network

pytestmark = [pytest.mark.browser, pytest.mark.keystone]

PREFIX = "abr"
STATE = Path("/var/lib/astara/browser")
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PANEL = "/admin/astara_routers/"
PROJECT_PANEL = "/project/astara_router_status/"


@pytest.fixture(scope="session")
def horizon(keystone: KeystoneAccess) -> Iterator[str]:
    """Horizon with the plugin, up once for the session."""
    bed = HorizonBed(STATE / "horizon", keystone.auth_url)
    bed.down()
    url = bed.up()
    try:
        yield url
    finally:
        bed.down()


@pytest.fixture(scope="module")
def cloud(keystone: KeystoneAccess) -> Iterator[tuple[CloudInABox, list[str]]]:
    """A running test cloud (Keystone-authenticated API in the catalog), two routers in the
    demo project."""
    bed = NeutronTestbed(
        state_dir=STATE / "neutron", database="astara_neutron_browser", astara_plugin=True
    )
    box = CloudInABox(
        state_dir=STATE, bed=bed, prefix=PREFIX, keystone_authtoken=keystone.authtoken()
    )
    fresh_state(box)
    endpoint = box.up()
    keystone.register_api(box.api_url)
    sdk, project = connect(endpoint.url), keystone.project_id("demo-admin")
    routers = []
    for n, name in enumerate(("web", "db")):
        _, subnet = tenant_network(sdk, project, name, f"10.{51 + n}.0.0/24")
        router = sdk.network.create_router(name=name, project_id=project)
        sdk.network.add_interface_to_router(router, subnet=subnet.id)
        routers.append(str(router.id))
    try:
        yield box, routers
    finally:
        box.down()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def log_in(browser: WebDriver, horizon: str, keystone: KeystoneAccess, cloud: str) -> None:
    auth = keystone.auth(cloud)
    browser.get(f"{horizon}/auth/login/")
    browser.find_element(By.ID, "id_username").send_keys(auth["username"])
    browser.find_element(By.ID, "id_password").send_keys(auth["password"])
    browser.find_element(By.ID, "loginBtn").click()
    WebDriverWait(browser, 60).until(expected_conditions.url_contains("/project"))


def row(browser: WebDriver, table: str, router_id: str) -> dict[str, str]:
    """A router's row, by column name."""
    found = browser.find_element(By.CSS_SELECTOR, f"#{table} tr[data-object-id='{router_id}']")
    heads = [
        th.text.strip()
        for th in browser.find_elements(
            By.CSS_SELECTOR, f"#{table} thead tr.table_column_header th"
        )
    ]
    cells = [td.text.strip() for td in found.find_elements(By.TAG_NAME, "td")]
    return dict(zip(heads[-len(cells) :], cells, strict=True))


def panel_row(browser: WebDriver, horizon: str, router_id: str) -> dict[str, str]:
    browser.get(f"{horizon}{PANEL}")
    return row(browser, "astara_routers", router_id)


def row_action(browser: WebDriver, router_id: str, action: str) -> None:
    """Click a row's action: its first one is a button, the others are in its dropdown."""
    button = browser.find_element(By.ID, f"astara_routers__row_{router_id}__action_{action}")
    if not button.is_displayed():
        found = browser.find_element(By.CSS_SELECTOR, f"tr[data-object-id='{router_id}']")
        found.find_element(By.CSS_SELECTOR, ".dropdown-toggle").click()
    button.click()


def state_becomes(browser: WebDriver, horizon: str, router_id: str, state: str) -> None:
    eventually(
        lambda: panel_row(browser, horizon, router_id)["State"] == state,
        60,
        f"router {router_id} {state} in the panel",
    )


def test_the_admin_panel_shows_the_routers_and_rebuilds_one(
    browser: WebDriver,
    horizon: str,
    keystone: KeystoneAccess,
    cloud: tuple[CloudInABox, list[str]],
) -> None:
    _, routers = cloud
    log_in(browser, horizon, keystone, "demo-admin")
    for router_id in routers:
        eventually(
            lambda r=router_id: panel_row(browser, horizon, r)["State"] == "active",
            90,
            f"router {router_id} active in the panel",
        )
    shown = {r: panel_row(browser, horizon, r) for r in routers}
    assert all(s["Health"] == "alive" and s["Instance"] for s in shown.values())
    browser.save_screenshot(str(IMAGES / "dashboard-routers.png"))

    target, old = routers[0], shown[routers[0]]["Instance"]
    row_action(browser, target, "rebuild")
    select = WebDriverWait(browser, 30).until(
        expected_conditions.visibility_of_element_located((By.ID, "id_image"))
    )
    Select(select).select_by_value("__configured__")
    browser.save_screenshot(str(IMAGES / "dashboard-rebuild.png"))
    browser.find_element(By.CSS_SELECTOR, ".modal-footer .btn-primary").click()
    WebDriverWait(browser, 30).until(
        expected_conditions.text_to_be_present_in_element(
            (By.CSS_SELECTOR, ".messages"), f"Rebuilding router {target}"
        )
    )

    def replaced() -> bool:
        now = panel_row(browser, horizon, target)
        return now["State"] == "active" and now["Instance"] not in (old, "", "-")

    # A netns appliance boots in about a second: the panel may show the new instance at once.
    eventually(replaced, 90, "the rebuilt router active on a new instance")
    browser.save_screenshot(str(IMAGES / "dashboard-rebuilt.png"))

    # Its state changes with the operator's actions: unmanaged, then managed (active) again.
    row_action(browser, target, "unmanage")
    state_becomes(browser, horizon, target, "unmanaged")
    assert panel_row(browser, horizon, target)["Managed"] == "False"
    browser.save_screenshot(str(IMAGES / "dashboard-unmanaged.png"))
    row_action(browser, target, "manage")
    state_becomes(browser, horizon, target, "active")
    browser.get(f"{horizon}{PANEL}{target}/")
    for recorded in ("rebuild requested", "router unmanaged", "router managed"):
        assert recorded in browser.page_source
    assert "demo-admin (user " in browser.page_source


def test_a_project_member_sees_its_routers_status_and_no_admin_panel(
    browser: WebDriver,
    horizon: str,
    keystone: KeystoneAccess,
    cloud: tuple[CloudInABox, list[str]],
) -> None:
    _, routers = cloud
    log_in(browser, horizon, keystone, "demo-member")
    browser.get(f"{horizon}{PROJECT_PANEL}")
    for router_id in routers:
        state = eventually(
            lambda r=router_id: row(browser, "astara_router_status", r)["State"],
            30,
            f"router {router_id} in the project panel",
        )
        assert state in ("active", "booting", "configuring")
    browser.save_screenshot(str(IMAGES / "dashboard-project.png"))
    browser.get(f"{horizon}{PANEL}")  # admin only: Horizon turns a member away
    assert "Astara Routers" not in browser.page_source
