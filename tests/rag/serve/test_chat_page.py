"""The chat page in headless Chromium (Debian's chromium + chromium-driver), driven by selenium."""

import shutil
import tempfile

import pytest

from tests.rag.serve.conftest import API_KEY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver "
                                       "(apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    selenium = pytest.importorskip("selenium", reason="needs selenium (pip install selenium; the dev extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="wandao-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
    del selenium


def _ask(driver, question):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    n = len(driver.find_elements(By.CSS_SELECTOR, "#log .turn"))
    box = driver.find_element(By.ID, "q")
    box.send_keys(question)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log .turn")) > n and
                                    d.find_elements(By.CSS_SELECTOR, "#log .turn")[-1].get_attribute("data-done"))
    return driver.find_elements(By.CSS_SELECTOR, "#log .turn")[-1]


def test_chat_page_streams_cites_and_shows_moderation(browser, live):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text == "tiny")
    browser.find_element(By.ID, "key").send_keys(API_KEY)

    turn = _ask(browser, "Who won Super Bowl 50?")
    assert turn.find_element(By.CSS_SELECTOR, ".answer").text == "The Denver Broncos won Super Bowl 50 [1]."
    assert turn.get_attribute("data-finish") == "stop"
    links = turn.find_elements(By.CSS_SELECTOR, ".citations a.citation")
    assert [a.get_attribute("data-id") for a in links][0] == "sb50"
    links[0].click()  # the passage opens
    passage = browser.find_element(By.ID, "passage")
    assert passage.is_displayed() and "Denver Broncos" in browser.find_element(By.ID, "passage-text").text

    browser.get(live.url + "/")  # a new conversation (the page sends the history with each question)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text == "tiny")
    browser.find_element(By.ID, "key").send_keys(API_KEY)
    turn = _ask(browser, "Who wrote the song Clocks?")  # the answer names a blocked band
    answer = turn.find_element(By.CSS_SELECTOR, ".answer").text
    assert "coldplay" not in answer.lower() and "stopped by the content policy" in answer
    mods = turn.find_elements(By.CSS_SELECTOR, ".moderation")
    assert len(mods) == 1 and "stop (output, blocklist, copyright)" in mods[0].text
    assert turn.get_attribute("data-finish") == "content_filter"
