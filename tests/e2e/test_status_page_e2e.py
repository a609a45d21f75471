"""The controller's status page of a running installation, loaded in headless Chromium: it shows
every region, and a drain made during the test (with ``gtm drain``) appears once the page has
reloaded itself (``<meta http-equiv="refresh">``: the test never reloads it)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from gtm.api.status_page import REFRESH_S
from gtm.testing.cluster import REGIONS, Cluster
from gtm.testing.redis import RedisProcess
from tests.support.browser import browser, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the fixture, imported for this module's tests

REASON = "e2e <drain> & check"


@pytest.fixture
def redis_proc():
    with RedisProcess() as r:
        yield r


async def test_status_page_shows_regions_and_a_drain_after_it_reloads(redis_proc: RedisProcess,
                                                                      browser: WebDriver) -> None:
    async with Cluster(redis_proc.url, api=True) as c:
        assert c.policy_path is not None and c.regions_dir is not None
        browser.get(f"http://127.0.0.1:{c.api_port}/")
        assert browser.title.startswith("gtm status")
        for name, *_ in REGIONS:
            row = wait_for(browser, lambda d, n=name: _text(d, f"//td[@id='region-{n}']/.."))
            assert row.startswith(name) and " healthy " in f" {row} ", row
        assert wait_for(browser, lambda d: _text(d, "//*[@id='overrides']")).startswith("none")
        assert "planning (inputs fresh)" in wait_for(browser, lambda d: _text(d, "//*[@id='summary']"))
        first_load = browser.execute_script("return performance.timeOrigin")

        done = subprocess.run(
            [sys.executable, "-m", "gtm.cli.main", "drain", "us-west-2", "--reason", REASON, "--actor", "e2e",
             "--redis", c.redis_url, "--ns", c.namespace, "--policies", str(c.policy_path),
             "--regions", str(c.regions_dir)], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        t0 = time.monotonic()
        table = wait_for(browser, lambda d: _text(d, "//table[@id='overrides']"), timeout=3 * REFRESH_S)
        took = time.monotonic() - t0
        assert browser.execute_script("return performance.timeOrigin") != first_load, "the page reloaded itself"
        assert "us-west-2" in table and "drain" in table and REASON in table and "e2e" in table, table
        row = wait_for(browser, lambda d: _text(d, "//td[@id='region-us-west-2']/.."))
        assert f"drain (e2e: {REASON})" in row, row
        assert took <= 2 * REFRESH_S + 1, f"the drain appeared {took:.1f}s after it was made"


def _text(driver: WebDriver, xpath: str) -> str | None:
    """The text of the element at ``xpath``; None while it is absent or the page is reloading
    (the page reloads itself every ``REFRESH_S`` seconds, so an element may go stale)."""
    try:
        found = driver.find_elements(By.XPATH, xpath)
        return found[0].text if found else None
    except StaleElementReferenceException:
        return None
