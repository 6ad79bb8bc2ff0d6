"""The web console in a real browser: Debian's Chromium, headless, driven by Selenium through the system
chromedriver, against a hub worker on the real broker and database with a simulated fleet attesting.

An operator signs in, finds the quarantined devices, opens the one held for an operator, reads its
reason, releases it with a reason of their own, and watches it become trusted (the device obeys the
signed release, attests again, the verdict lands, and server-sent events update the page without a
reload). With CONSOLE_SCREENSHOTS=DIR the main pages are saved there (docs/ holds the committed ones).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from device_sim.fleet import Fleet
from hub.appraisal.operations import set_quarantine
from hub.broker.process import MosquittoProcess, free_port
from hub.server.api.tokens import create_token
from hub.server.localhub import LocalHub
from tests.e2e import make_env

pytestmark = [pytest.mark.broker, pytest.mark.browser]

HELD_REASON = "RMA 0815: enclosure opened in the field"


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert browser and driver, "Chromium and its driver are missing: run scripts/setup.sh (Debian: chromium, " \
                               "chromium-driver)"
    return browser, driver


@pytest.fixture
def chrome() -> Iterator[webdriver.Chrome]:
    browser, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: webdriver.Chrome, name: str, width: int = 1280) -> None:
    folder = os.environ.get("CONSOLE_SCREENSHOTS")
    if not folder:
        return
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(int(height) + 40, 600), 2000))
    Path(folder).mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(Path(folder) / f"console-{name}.png"))
    driver.set_window_size(1280, 900)


def test_operator_releases_a_held_device_and_watches_it_become_trusted(
        broker: MosquittoProcess, tmp_path: Path, chrome: webdriver.Chrome) -> None:
    port = free_port()
    env = make_env(broker, tmp_path, 6, "honest:4,tampered:1,rollback:1", metrics_port=port,
                   anomaly_interval_s=0.0)
    held = next(d for d in env.devices if d.profile.value == "honest")
    store = env.store()
    token, _ = create_token(store, "alice", "operate", ttl_s=3600)
    base = f"http://127.0.0.1:{port}"
    wait = WebDriverWait(chrome, 20)
    with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem,
                                       interval=1.0) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        fleet.flush(5)
        set_quarantine(store, env.keys, held.device_id, True, HELD_REASON, 3600, actor="token:bob")
        fleet.start_publishing()
        try:
            chrome.get(base + "/console/")
            wait.until(ec.url_contains("/console/login"))
            chrome.find_element(By.ID, "token").send_keys(token)
            chrome.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
            wait.until(ec.presence_of_element_located((By.ID, "by-status")))
            assert "alice (operate)" in chrome.find_element(By.CSS_SELECTOR, "nav .who").text
            wait.until(lambda d: int(d.find_element(By.CSS_SELECTOR, "[data-count=quarantined]").text) >= 2
                       if d.find_elements(By.CSS_SELECTOR, "[data-count=quarantined]") else d.refresh())
            _shot(chrome, "overview")

            chrome.get(base + "/console/devices")
            Select(chrome.find_element(By.NAME, "status")).select_by_visible_text("quarantined")
            chrome.find_element(By.CSS_SELECTOR, "form.filters button").click()
            wait.until(ec.url_contains("status=quarantined"))
            rows = chrome.find_elements(By.CSS_SELECTOR, "#device-table tbody tr[data-device]")
            listed = {r.get_attribute("data-device") for r in rows}
            assert held.device_id in listed and len(listed) >= 2  # the held one and the firmware failures
            _shot(chrome, "devices")

            chrome.find_element(By.LINK_TEXT, held.device_id).click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "quarantined"))
            assert chrome.find_element(By.ID, "reason").text == HELD_REASON
            assert "Signature verified with the hub key" in chrome.find_element(By.ID, "result-check").text
            _shot(chrome, "device-quarantined")
            chrome.find_element(By.ID, "action-reason").send_keys("enclosure checked, seal replaced")
            chrome.find_element(By.ID, "action-button").click()
            wait.until(ec.url_contains("done=release"))
            # The device obeys the signed release, attests at its next round, and the verdict arrives by SSE.
            WebDriverWait(chrome, 30).until(ec.text_to_be_present_in_element((By.ID, "status"), "trusted"))
            assert chrome.find_element(By.ID, "live").text  # the live region announced it
            chrome.refresh()
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "trusted"))
            _shot(chrome, "device-trusted")
            chrome.set_window_size(390, 844)  # a phone
            _shot(chrome, "device-phone", width=390)
        finally:
            fleet.stop_publishing()
    assert env.device_status(held.device_id) == "trusted"
    with store.reading() as conn:
        rows = store.audit_rows(conn)
    release = [r for r in rows if r["action"] == "release" and r["device_id"] == held.device_id]
    assert [r["actor"] for r in release] == ["token:alice"]
    assert "seal replaced" in str(release[0]["detail"])
    store.close()
