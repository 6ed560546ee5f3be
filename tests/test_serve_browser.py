"""The one-page web app in a real headless browser (Debian's chromium + chromium-driver, driven by selenium):
choose a photo in the file input, wait for the label and the bars, then see a bad file's message.

Skipped, with the reason printed as a warning, when no browser or driver is installed
(``apt-get install -y chromium chromium-driver`` as root; ``.ci/run`` does it when it can).
"""
from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

from workshop_utils.apps.serve.app import create_app
from workshop_utils.apps.serve.server import BackgroundServer, port_is_open

CHROMIUM_FLAGS = (  # root in a container, no GPU, no network: nothing but the page
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
    "--window-size=1000,1200",
)


class BrowserMissingWarning(UserWarning):
    """The browser test could not run here (no chromium / chromedriver / selenium)."""


def _skip(reason: str) -> None:
    warnings.warn(BrowserMissingWarning(reason), stacklevel=2)  # shown in the summary even without -rs
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", driver)) if not found]
    if missing:
        _skip(f"No headless browser here ({' and '.join(missing)} not found): the web page's browser test is "
              "skipped. Install them with `apt-get install -y chromium chromium-driver` (as root) to run it.")
    try:
        from selenium import webdriver
    except ImportError:
        _skip("selenium is not installed: the web page's browser test is skipped (pip install -r requirements.txt).")
    os.environ.setdefault("SE_AVOID_STATS", "true")  # no usage statistics from Selenium Manager
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver_ = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    driver_.set_page_load_timeout(60)
    try:
        yield driver_
    finally:
        driver_.quit()


@pytest.fixture(scope="module")
def page_server(classifier):  # noqa: F811
    with BackgroundServer(create_app(classifier)) as server:
        yield server
    assert not port_is_open("127.0.0.1", server.port)


def test_page_classifies_an_uploaded_photo(browser, page_server, classifier, photos, expected, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_server.url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "classes:" in d.find_element(By.ID, "model").text)  # the page read /health
    assert "MobilenetV2 · " in browser.find_element(By.ID, "model").text
    assert not browser.find_element(By.ID, "result").is_displayed()

    name = next(iter(photos))
    photo = tmp_path / name
    photo.write_bytes(photos[name])
    browser.find_element(By.ID, "file").send_keys(str(photo))  # what choosing a file in the dialog does
    wait.until(lambda d: any(d.find_element(By.ID, box).is_displayed() for box in ("result", "error")))
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text

    scores = expected[name]
    assert browser.find_element(By.ID, "label").text == classifier.labels[int(np.argmax(scores))]
    assert browser.find_element(By.ID, "probability").text == f"{100 * float(np.max(scores)):.1f} %"
    rows = browser.find_elements(By.CSS_SELECTOR, "#bars .bar-row")
    assert len(rows) == len(classifier.labels)
    assert rows[0].text.startswith(classifier.labels[int(np.argmax(scores))])  # best first, highlighted
    assert "top" in rows[0].get_attribute("class")
    preview = browser.find_element(By.ID, "preview")
    assert preview.is_displayed() and browser.execute_script("return arguments[0].naturalWidth", preview) > 0

    # a file that is not a photo: the server's message is shown instead of a result
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is a shopping list, not a photo")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    message = browser.find_element(By.ID, "error").text
    assert message.startswith("image 'notes.jpg': the bytes (36 bytes, starting b'this is ') are not a decodable")
    assert not browser.find_element(By.ID, "result").is_displayed()
