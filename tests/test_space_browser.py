"""The Space in a real headless Chromium (Debian's chromium, driven by Debian's chromedriver through selenium), used
as a person would: upload, ask, follow up, run a long recording, download the Raven table, hit the upload cap.

Each test leaves a screenshot of the page in tests/artifacts/space/ (or $NATURELM_TEST_ARTIFACTS).
"""

import csv
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from audio_fixture import chat_recording, num_windows, several_windows_recording, space_accepts, window_starts

pytest.importorskip("selenium", reason="needs the `space` extra: pip install -e '.[space]'")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from naturelm.infer import RAVEN_COLUMNS  # noqa: E402

SPECIES = "What is the common name for the focal species in the audio? Answer:"
MODEL_TIMEOUT = 180  # a job on 2 busy cores, the first one loading the model


def _browser_binaries() -> tuple[str, str]:
    chromium = os.environ.get("NATURELM_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("NATURELM_CHROMEDRIVER") or shutil.which("chromedriver")
    if not (chromium and driver):
        message = ("The browser tests need Debian's chromium and chromedriver: apt-get install chromium "
                   "chromium-driver (.ci/run installs them).")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("NATURELM_TEST_ARTIFACTS", Path(__file__).parent / "artifacts")) / "space"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def downloads(tmp_path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def page(space_server, downloads, artifacts, tmp_path, request):
    """A fresh headless Chromium on the Space's page; its screenshot is saved when the test ends, pass or fail."""
    chromium, driver_path = _browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        browser.get(space_server.url)
        _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#chat-audio input[type=file]"), 60,
              "the page to load")
        yield browser
    finally:
        screenshot = artifacts / f"{request.node.name}.png"
        browser.set_window_size(1400, max(1000, browser.execute_script("return document.body.scrollHeight")))
        browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")
        browser.quit()


def _wait(browser, condition, timeout: float, what: str):
    def safe(b):
        try:
            return condition(b)
        except StaleElementReferenceException:  # the element was re-rendered between finding and reading it
            return False

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.2).until(safe)
    except TimeoutException:
        raise AssertionError(f"Gave up after {timeout} s waiting for {what}.") from None


def _open_tab(browser, name: str) -> None:
    tab = next(t for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == name)
    tab.click()
    _wait(browser, lambda b: tab.get_attribute("aria-selected") == "true", 10, f"the {name} tab")


def _upload(browser, elem_id: str, path: Path) -> None:
    browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(str(path))


def _messages(browser, role: str) -> list[str]:
    return [m.text.strip() for m in browser.find_elements(By.CSS_SELECTOR, f"#chatbot [data-testid={role}]")]


def _set_slider(browser, elem_id: str, value: float) -> None:
    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


@pytest.fixture(scope="module")
def accepted(space_server, audio_recordings):
    """The shared recordings this Space takes (under its upload and length caps)."""
    recordings = space_accepts(audio_recordings, space_server.settings)
    assert recordings, "no shared recording fits under the test Space's caps"
    return recordings


def test_upload_a_clip_ask_and_follow_up(page, accepted):
    frog = chat_recording(accepted).path
    _upload(page, "chat-audio", frog)
    _wait(page, lambda b: frog.name in b.find_element(By.ID, "chat-info").text, 60, "the recording's description")
    assert "first 10 s" in page.find_element(By.ID, "chat-info").text  # over 10 s: the chat says what it hears

    preset = next(b for b in page.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == "Species")
    preset.click()
    question = page.find_element(By.CSS_SELECTOR, "#chat-question textarea")
    _wait(page, lambda b: question.get_attribute("value") == SPECIES, 10, "the preset to fill the question")
    page.find_element(By.ID, "chat-ask").click()
    _wait(page, lambda b: len(_messages(b, "bot")) == 1 and _messages(b, "bot")[0], MODEL_TIMEOUT, "an answer")

    question.send_keys("Is it calling at night?", Keys.ENTER)  # Enter submits, like Ask
    _wait(page, lambda b: len(_messages(b, "bot")) == 2 and _messages(b, "bot")[1], MODEL_TIMEOUT,
          "the answer to the follow-up")
    assert _messages(page, "user") == [SPECIES, "Is it calling at night?"]
    assert question.get_attribute("value") == ""


def test_long_recording_timeline_table_and_raven_download(page, accepted, space_server, downloads):
    chosen = several_windows_recording(accepted, 10, 5, int(space_server.settings["NATURELM_MAX_WINDOWS"]))
    recording = chosen.path  # several 10-s windows every 5 s, the last one partial
    starts = window_starts(chosen.decoded_seconds, 10, 5)
    _open_tab(page, "Long recording")
    _upload(page, "long-audio", recording)
    _wait(page, lambda b: b.find_elements(By.CSS_SELECTOR, "#long-audio [data-testid^=waveform]"), 60,
          "the uploaded recording")
    _set_slider(page, "long-hop", 5)
    page.find_element(By.ID, "long-run").click()

    _wait(page, lambda b: b.execute_script(
        "const i = document.querySelector('#timeline img'); return i && i.complete && i.naturalWidth > 800;"),
        MODEL_TIMEOUT, "the spectrogram with the timeline")
    summary = page.find_element(By.ID, "long-summary").text
    assert (f"{recording.name}: {num_windows(chosen.decoded_seconds, 10, 5)} windows of 10 s every 5 s over "
            f"{chosen.decoded_seconds:.1f} s") in summary
    shown = [c.text for c in page.find_elements(By.CSS_SELECTOR, "#long-table [data-testid$='-0']")
             if c.get_attribute("data-testid").startswith("cell-")]
    assert shown == [f"{start:g}" for start in starts]

    raven = page.find_element(By.ID, "raven-download")
    _wait(page, lambda b: raven.is_enabled(), 30, "the Raven download to become clickable")
    raven.click()
    target = downloads / f"{recording.stem}.selections.txt"
    _wait(page, lambda b: target.exists() and not list(downloads.glob("*.crdownload")), 60, "the Raven download")
    rows = list(csv.reader(target.read_text().splitlines(), delimiter="\t"))
    assert rows[0] == RAVEN_COLUMNS
    assert [(r[0], r[3], r[7]) for r in rows[1:]] == [
        (str(i + 1), f"{start}", recording.name) for i, start in enumerate(starts)]
    answers = [c.text for c in page.find_elements(By.CSS_SELECTOR, "#long-table [data-testid$='-2']")
               if c.get_attribute("data-testid").startswith("cell-")]
    # The same answers as the table shows (compared without whitespace, which the browser renders its own way).
    answer = RAVEN_COLUMNS.index("answer")
    assert ["".join(r[answer].split()) for r in rows[1:]] == ["".join(a.split()) for a in answers]


def test_oversize_upload_shows_the_limit(page, tmp_path):
    big = tmp_path / "two_megabytes.wav"  # the test Space takes files up to 1 MB
    soundfile.write(big, np.random.default_rng(0).uniform(-0.1, 0.1, 2**20).astype(np.float32), 16000,
                    subtype="PCM_16")
    assert "up to 1 MB and 60 s" in page.find_element(By.ID, "chat-audio").text
    _upload(page, "chat-audio", big)
    toast = _wait(page, lambda b: [t.text for t in b.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]")
                                   if "maximum allowed size" in t.text], 30, "the upload-limit message")
    assert "two_megabytes.wav" in toast[0] and "1.0 Mb" in toast[0]
    time.sleep(0.5)  # let the toast finish sliding in for the screenshot
    assert page.find_element(By.ID, "chat-info").text == ""  # nothing was uploaded


def test_classify_with_my_labels_draws_the_bars(page, accepted):
    _open_tab(page, "Classify with my labels")
    _upload(page, "classify-audio", min(accepted, key=lambda r: r.header_seconds).path)
    _wait(page, lambda b: b.find_elements(By.CSS_SELECTOR, "#classify-audio [data-testid^=waveform]"), 60,
          "the uploaded recording")
    page.find_element(By.CSS_SELECTOR, "#classify-labels textarea").send_keys(
        "American Robin\nGreen Treefrog\nGray Wolf\nNone")
    page.find_element(By.ID, "classify-run").click()
    _wait(page, lambda b: "Most likely" in b.find_element(By.ID, "classify-summary").text, MODEL_TIMEOUT,
          "the scores")
    _wait(page, lambda b: b.find_elements(By.CSS_SELECTOR, "#label-bars canvas, #label-bars svg"), 30, "the bars")
    best = page.find_element(By.ID, "classify-summary").text.split("Most likely: ")[1].split(" (")[0]
    assert best in {"American Robin", "Green Treefrog", "Gray Wolf", "None"}
