"""Headless Chromium for tests that open a page (the drill report, the controller's status
page): Debian's ``chromium`` and ``chromium-driver`` driven through selenium.

Use the ``browser`` fixture (import it into the test module: ``from tests.support.browser
import browser``): a selenium ``WebDriver`` on a fresh profile, without network chatter
(background networking, component updates, sync and QUIC off), 1400x1000, quit afterwards.
A machine without the two packages skips the test, or fails it under ``make test`` / CI
(``tests.factories.skip_or_fail``; ``scripts/ensure-chromium.sh`` installs them).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.factories import skip_or_fail

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
)
"""Flags for every test browser (``--no-sandbox``: the tests may run as root)."""

PAGE_TIMEOUT_S = 20.0
"""How long a page may take to load, and the default wait of ``wait_for``, seconds."""


def find_chromium() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` paths, or None when either is missing."""
    chromium = shutil.which("chromium") or _existing("/usr/bin/chromium")
    driver = shutil.which("chromedriver") or _existing("/usr/bin/chromedriver")
    return (chromium, driver) if chromium and driver else None


def _existing(path: str) -> str | None:
    return path if Path(path).exists() else None


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """A headless Chromium ``selenium.webdriver.Chrome`` on a fresh ``--user-data-dir``; its
    chromedriver log is ``chromedriver.log`` beside the profile (shown when start-up fails)."""
    found = find_chromium()
    if found is None:
        skip_or_fail("headless Chromium is missing: apt-get install chromium chromium-driver")
        return
    chromium, driver_path = found
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    home = tmp_path_factory.mktemp("chromium")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={home / 'profile'}"):
        opts.add_argument(arg)
    log = home / "chromedriver.log"
    try:
        # An explicit driver path: selenium does not run Selenium Manager (no download, no network).
        driver = webdriver.Chrome(service=Service(driver_path, log_output=str(log)), options=opts)
    except WebDriverException as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"headless Chromium did not start: {exc.msg}\nchromedriver log:\n{tail}")
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(home / "profile", ignore_errors=True)


def wait_for(driver: WebDriver, predicate: Callable[[WebDriver], Any], timeout: float = PAGE_TIMEOUT_S) -> Any:
    """Wait until ``predicate(driver)`` is truthy and return its value (selenium's
    ``WebDriverWait``; raises ``TimeoutException`` after ``timeout`` seconds)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(predicate)
