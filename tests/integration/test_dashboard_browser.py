"""The dashboard in a real browser: headless Chromium on the page of a short live swarm.

The swarm is tests/integration/audit_swarm.py (coordinator, relay, verifier, two honest workers,
one cheater, versions published through a shardcast origin with signed eval reports), read first
in the public view and then with the operator token (`coordinator.privacy`). Chromium
and chromedriver are the Debian packages `chromium` and `chromium-driver`, installed here when
missing (apt-get, as root); where that is impossible the test is skipped with the reason.
Screenshots are saved under the test's tmp folder, or under $SWARMRL_SCREENSHOTS when set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.audit_swarm import run_until_archived, start_live_swarm
from tests.waiting import wait_until

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,2200"]


def chromium_paths() -> tuple[str, str]:
    """(chromium, chromedriver), installing the Debian packages if they are missing."""
    def find():
        return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")

    browser, driver = find()
    if not (browser and driver):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("headless Chromium is not installed and cannot be installed here (needs root and apt-get): "
                        "apt-get install chromium chromium-driver")
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(cmd, capture_output=True, timeout=1200, env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=600, env=env)
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
            if done.returncode != 0:
                pytest.skip(f"cannot install chromium and chromium-driver with apt-get: {done.stderr[-500:]}")
        browser, driver = find()
        if not (browser and driver):
            pytest.skip("apt-get installed chromium but no chromium/chromedriver executable is on PATH")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install 'swarmrl[dev]'")
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(tmp_path / "chromedriver.log")),
                              options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("SWARMRL_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    assert path.stat().st_size > 10_000
    print(f"screenshot: {path}")
    return path


def count(driver, css: str) -> int:
    return len(driver.find_elements("css selector", css))


def test_dashboard_of_a_live_swarm_in_headless_chromium(browser, tmp_path):
    swarm = start_live_swarm(tmp_path / "swarm", honest=2, cheaters=1)
    try:
        run_until_archived(swarm, versions=3, per_version=2)
        driver = browser
        driver.get(swarm.url + "/dashboard/")
        ready = lambda: (count(driver, "#workers tbody tr[data-worker]") == 3 and  # noqa: E731
                         count(driver, "#versions tbody tr[data-version]") == 3 and
                         count(driver, "#rejections a.audit-link") >= 1)
        wait_until(ready, 60, "workers, versions and a rejection on the page", every=0.5)
        # workers: the cheater is banned, the honest ones active, with their verdict counts
        statuses = sorted(e.text for e in driver.find_elements("css selector", "#workers tbody td .badge"))
        assert statuses == ["active", "active", "banned"]
        # versions: v2 newest first, broadcast to the one relay, checkpoint archived
        first = driver.find_element("css selector", "#versions tbody tr[data-version]")
        assert first.get_attribute("data-version") == "2" and "1/1" in first.text and "yes" in first.text
        assert driver.find_element("css selector", "#relays tbody tr[data-relay]").text.count("yes") == 1
        # the curve: reward and held-out accuracy by version, as lines with a point per version
        for series in ("mean_reward", "greedy_accuracy"):
            assert count(driver, f"#curve circle[data-series={series}]") == 3, series
            assert count(driver, f"#curve path[data-series={series}]") == 1, series
        assert "held-out accuracy" in driver.find_element("css selector", "#curve .legend").text
        # it refreshes live: a new version shows up without reloading
        seen = int(driver.find_element("css selector", "body").get_attribute("data-refreshed"))
        swarm.publish(3)
        wait_until(lambda: count(driver, "#versions tbody tr[data-version]") == 4, 60, "v3 on the page")
        assert int(driver.find_element("css selector", "body").get_attribute("data-refreshed")) > seen
        wait_until(lambda: count(driver, "#curve circle[data-series=greedy_accuracy]") == 4, 30, "v3 on the curve")
        shot(driver, tmp_path, "dashboard.png")

        # follow the rejection to its audit view: the public view names the failed check, no numbers
        assert driver.find_element("css selector", "#mode [data-mode]").get_attribute("data-mode") == "public"
        link = driver.find_element("css selector", "#rejections a.audit-link")
        sid = link.get_attribute("href").rsplit("=", 1)[1]
        link.click()
        loaded = lambda: driver.find_element("css selector", "body").get_attribute("data-loaded") == "1"  # noqa: E731
        wait_until(loaded, 30, "the rollout's audit view")
        assert driver.find_element("css selector", "#rollout-id").text == sid
        assert driver.find_element("css selector", "#rollout-status").text == "rejected"
        assert re.fullmatch(r"\d+[+-]\d+=", driver.find_element("css selector", "#prompt").text)
        assert count(driver, "#completions tbody tr") == 4
        proof = driver.find_element("css selector", "#checks tr[data-check=proof]")
        assert "failed" in proof.text and "exponents differ" not in proof.text and "operator view only" in proof.text
        assert "operator view only" in driver.find_element("css selector", "#summary").text  # full check drawn
        shot(driver, tmp_path, "rollout-public.png")
        # the operator's token (in the fragment: never sent to the server) unlocks every number
        driver.get(f"{swarm.url}/dashboard/rollout.html?id={sid}#token={swarm.plan.operator_token}")
        mode = lambda: driver.find_element("css selector", "#mode [data-mode]").get_attribute("data-mode")  # noqa: E731
        wait_until(lambda: mode() == "operator" and loaded(), 30, "the rollout's operator view")
        proof = driver.find_element("css selector", "#checks tr[data-check=proof]")
        assert "failed" in proof.text and "exponents differ" in proof.text and "failed_chunks" in proof.text
        assert "swarmrl audit reverify " + sid in driver.find_element("css selector", "#commands").text
        assert "#token" not in driver.current_url
        shot(driver, tmp_path, "rollout.png")
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == [], errors
    finally:
        swarm.stop()
