"""Headless Debian chromium through selenium, for tests that look at pages as a person would.

Uses the system's ``chromium`` and ``chromedriver`` (``apt-get install chromium
chromium-driver``): nothing downloads a browser or a driver (selenium's manager is never
asked, and is told to stay offline).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH_PX = 1280


def browser_or_skip() -> None:
    """Skip without the system browser; in CI (``$CI``), fail: .ci/run installs it."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def chromium(width_px: int = WIDTH_PX, height_px: int = 900) -> Iterator[Any]:
    """A headless chromium of ``width_px`` CSS pixels of viewport, its console log kept."""
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width_px},{height_px}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        # --window-size sets the outer window; make the viewport itself width_px wide.
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        outer = driver.get_window_size()
        driver.set_window_size(
            outer["width"] + width_px - inner[0], outer["height"] + height_px - inner[1]
        )
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def console_errors(driver: Any) -> list[str]:
    """The page's console messages at error level (SEVERE) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def horizontal_overflow_px(driver: Any) -> int:
    """How far the page is wider than the viewport (0 when it fits)."""
    return int(
        driver.execute_script("return document.scrollingElement.scrollWidth - window.innerWidth")
    )
