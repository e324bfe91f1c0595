"""End to end: the web playground and dashboard in a real headless Chromium (Selenium), against a
real server on tiny models. Each test checks the browser console for errors; screenshots of
every page go to ``test-artifacts/ui/``."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    ADMIN_KEY,
    GOOD_KEY,
    LIMITED_KEY,
    REPO,
    ServerProcess,
    media_sections,
    running_server,
)
from tests.e2e.sse import iter_events

pytestmark = pytest.mark.e2e

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts" / "ui"
WAIT = 60  # seconds: generous, the CI machine has two cores

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if CHROMIUM is None or not Path(CHROMEDRIVER).is_file():
    pytest.skip(
        "the browser tests need Debian's chromium and chromium-driver "
        "(apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_folder: Path) -> Iterator[ServerProcess]:
    """The scripted echo binding (delays and hostile text on demand) and llama.cpp on tiny GGUFs."""
    with running_server(
        tmp_path_factory.mktemp("ui"),
        models_folder,
        resource_manager={"pools": {"default": {"limit": 1, "queue_size": 16, "queue_timeout": 120}}},
    ) as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def driver(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser, with its console checked after the test: no error from the page's code, no
    policy violation, no failed load (the network lines of a 4xx, such as the 401 of a wrong key
    or the 404 of an API this server lacks, are answers the page expects and handles)."""
    browser.get_log("browser")  # drop what earlier tests left
    yield browser
    errors = [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] in ("SEVERE", "ERROR")
        and not (entry.get("source") == "network" and re.search(r"status of 4\d\d", entry["message"]))
    ]
    assert errors == [], errors


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    """Poll ``condition``; an element replaced between finding and reading it is read again."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(condition)


def pool_card(driver: WebDriver, pool: str) -> dict[str, Any]:
    """What the dashboard shows for ``pool``, read in one go (it is redrawn every second)."""
    card: dict[str, Any] = driver.execute_script(
        """
        const card = document.querySelector(`#dashboard-pools [data-pool="${arguments[0]}"]`);
        if (!card) return null;
        const stat = (name) => card.querySelector(`.stat-${name} dd`).textContent;
        const tables = [...card.querySelectorAll("table tbody")].map((body) =>
          [...body.rows].map((row) => [...row.cells].map((cell) => cell.textContent)));
        return {active: stat("active-slots"), queue: stat("queue"), waiting: tables[0], models: tables[1]};
        """,
        pool,
    )
    return card


def by_id(driver: WebDriver, name: str) -> Any:
    return driver.find_element(By.ID, name)


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(path)), path
    return path


def sign_in(driver: WebDriver, server: ServerProcess, key: str) -> None:
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(server.url + "/")
    field = wait_for(driver, expected_conditions.visibility_of_element_located((By.ID, "api-key")))
    field.send_keys(key, Keys.ENTER)  # the form works from the keyboard
    wait_for(driver, expected_conditions.visibility_of_element_located((By.ID, "tabs")))


def open_tab(driver: WebDriver, name: str) -> None:
    by_id(driver, f"tab-{name}").click()
    wait_for(driver, expected_conditions.visibility_of_element_located((By.ID, f"view-{name}")))


def set_field(driver: WebDriver, name: str, value: str) -> None:
    field = by_id(driver, name)
    field.clear()
    if value:
        field.send_keys(value)


def choose(driver: WebDriver, name: str, value: str) -> None:
    """Pick ``value`` in a select once the page has listed it."""
    wait_for(driver, lambda d: value in [o.get_attribute("value") for o in Select(by_id(d, name)).options])
    Select(by_id(driver, name)).select_by_value(value)


def status_text(driver: WebDriver, name: str) -> str:
    return str(by_id(driver, name).text)


def last_answer(driver: WebDriver) -> Any:
    return driver.find_elements(By.CSS_SELECTOR, "#chat-messages .message.assistant .content")[-1]


def pool_status(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(server.url + "/api/v1/status", headers={"X-API-Key": ADMIN_KEY}, timeout=10)
    assert response.status_code == 200, response.text
    pool: dict[str, Any] = response.json()["pools"][0]
    return pool


def start_chat(driver: WebDriver, binding: str, model: str, prompt: str, **fields: str) -> None:
    by_id(driver, "chat-clear").click()
    choose(driver, "chat-binding", binding)
    choose(driver, "chat-model", model)
    for name in ("chat-temperature", "chat-max-tokens", "chat-seed", "chat-extra", "chat-system"):
        set_field(driver, name, fields.get(name, ""))
    set_field(driver, "chat-input", prompt)
    by_id(driver, "chat-send").click()


def test_sign_in_with_a_wrong_then_a_good_key(driver: WebDriver, server: ServerProcess) -> None:
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(server.url + "/")
    field = wait_for(driver, expected_conditions.visibility_of_element_located((By.ID, "api-key")))
    assert driver.switch_to.active_element == field  # focus starts on the key
    field.send_keys("not-a-valid-key-0000", Keys.ENTER)
    wait_for(driver, lambda d: "not valid" in status_text(d, "signin-message"))
    assert not by_id(driver, "tabs").is_displayed()
    assert driver.execute_script("return sessionStorage.length") == 0  # a wrong key is not kept
    screenshot(driver, "signin-wrong-key")

    field.clear()
    field.send_keys(GOOD_KEY, Keys.ENTER)
    wait_for(driver, expected_conditions.visibility_of_element_located((By.ID, "view-chat")))
    assert not by_id(driver, "tab-dashboard").is_displayed()  # not an admin key
    stored = driver.execute_script("return Object.values(sessionStorage)")
    assert stored == [GOOD_KEY]
    assert GOOD_KEY not in driver.current_url and driver.execute_script("return document.cookie") == ""
    # a reload keeps the session (sessionStorage), with no key typed again
    driver.refresh()
    wait_for(driver, expected_conditions.visibility_of_element_located((By.ID, "view-chat")))


def api_stream_text(server: ServerProcess, body: dict[str, Any]) -> str:
    text = ""
    with httpx.stream(
        "POST", server.url + "/api/v1/generate", json=body, headers={"X-API-Key": GOOD_KEY}, timeout=120
    ) as response:
        assert response.status_code == 200
        for event in iter_events(response):
            assert event["type"] != "error", event
            if event["type"] == "chunk":
                text += event["content"]
    return text


def test_a_chat_streams_in_steps_and_matches_the_api_for_the_same_seed(
    driver: WebDriver, server: ServerProcess
) -> None:
    sign_in(driver, server, GOOD_KEY)
    # record every length the answer goes through while it streams
    driver.execute_script(
        """
        window.__lengths = [];
        const list = document.getElementById("chat-messages");
        new MutationObserver(() => {
          const answers = list.querySelectorAll(".message.assistant .content");
          if (answers.length) window.__lengths.push((answers[answers.length - 1].dataset.raw || "").length);
        }).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
        """
    )
    start_chat(
        driver,
        "llm",
        "slow.gguf",
        "Hello there, tell me a story",
        **{"chat-temperature": "0.9", "chat-max-tokens": "48", "chat-seed": "7"},
    )
    wait_for(driver, lambda d: status_text(d, "chat-status") == "Done.")
    answer = last_answer(driver)
    shown = answer.get_attribute("data-raw")
    lengths = sorted(set(driver.execute_script("return window.__lengths")) - {0})
    assert len(lengths) >= 3, f"the answer arrived in {len(lengths)} steps: {lengths}"

    expected = api_stream_text(
        server,
        {
            "input_data": [{"type": "text", "role": "user_prompt", "data": "Hello there, tell me a story"}],
            "binding_name": "llm",
            "model_name": "slow.gguf",
            "stream": True,
            "parameters": {"temperature": 0.9, "max_tokens": 48, "seed": 7},
        },
    )
    assert expected and shown == expected
    # the Markdown rendering drops markup only: every letter and digit of the answer is on screen
    displayed = driver.execute_script("return arguments[0].textContent", answer)
    assert [ch for ch in displayed if ch.isalnum()] == [ch for ch in expected if ch.isalnum()]
    facts = driver.find_elements(By.CSS_SELECTOR, "#chat-messages .message.assistant .facts")[-1].text
    for part in ("llm / slow.gguf", "queue wait", "first token", "tokens/s", "seed 7"):
        assert part in facts, facts
    screenshot(driver, "chat")

    # the conversation is kept: a second turn sends the first one along
    set_field(driver, "chat-input", "And then?")
    by_id(driver, "chat-send").click()
    answers = "#chat-messages .message.assistant"
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, answers)) == 2)
    wait_for(driver, lambda d: status_text(d, "chat-status") == "Done.")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#chat-messages .message.user")) == 2


def test_stop_cancels_the_stream_and_frees_the_slot(driver: WebDriver, server: ServerProcess) -> None:
    sign_in(driver, server, GOOD_KEY)
    words = " ".join(f"word{index}" for index in range(200))  # 200 x 0.2 s: 40 s if never stopped
    start_chat(driver, "echo", "echo", words, **{"chat-extra": json.dumps({"delay": 0.2})})
    wait_for(driver, lambda d: len((last_answer(d).get_attribute("data-raw") or "").split()) >= 3)
    assert pool_status(server)["active"] == 1
    assert by_id(driver, "chat-stop").is_enabled()
    by_id(driver, "chat-stop").click()
    stopped_at = time.monotonic()
    wait_for(driver, lambda d: status_text(d, "chat-status") == "Stopped.")
    deadline = time.monotonic() + 20
    while pool_status(server)["active"] != 0:
        assert time.monotonic() < deadline, "the slot was not freed after Stop"
        time.sleep(0.2)
    assert time.monotonic() - stopped_at < 20  # long before the 40 s the answer would take
    pool = pool_status(server)
    assert pool["queued"] == 0 and not any(model["in_use"] for model in pool["models"])
    text = last_answer(driver).get_attribute("data-raw")
    time.sleep(1.0)
    assert last_answer(driver).get_attribute("data-raw") == text  # nothing more arrives
    assert len(text.split()) < 200
    assert not by_id(driver, "chat-stop").is_enabled() and by_id(driver, "chat-send").is_enabled()


def test_model_output_is_shown_as_text_never_run_as_html(driver: WebDriver, server: ServerProcess) -> None:
    sign_in(driver, server, GOOD_KEY)
    hostile = "look <img src=x onerror=alert(1)> and <script>window.pwned=1;alert(2)</script> **bold** end"
    start_chat(driver, "echo", "echo", hostile)
    wait_for(driver, lambda d: status_text(d, "chat-status") == "Done.")
    answer = last_answer(driver)
    text = driver.execute_script("return arguments[0].textContent", answer)
    assert "<img src=x onerror=alert(1)>" in text and "<script>window.pwned=1;alert(2)</script>" in text
    assert driver.find_elements(By.CSS_SELECTOR, "#chat-messages img, #chat-messages script") == []
    assert answer.find_elements(By.CSS_SELECTOR, "strong")[0].text == "bold"  # Markdown still works
    with pytest.raises(TimeoutException):
        WebDriverWait(driver, 2).until(expected_conditions.alert_is_present())
    assert driver.execute_script("return window.pwned === undefined")


class Holder:
    """Requests to the echo binding streamed from threads (a long one keeps the one slot)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def hold(self, key: str, words: int) -> None:
        thread = threading.Thread(target=self._run, args=(key, words), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _run(self, key: str, words: int) -> None:
        body = {
            "prompt": " ".join(["busy"] * words),
            "binding_name": "echo",
            "model_name": "echo",
            "stream": True,
            "parameters": {"delay": 0.25},
        }
        with httpx.stream(
            "POST", self.server.url + "/api/v1/generate", json=body, headers={"X-API-Key": key}, timeout=120
        ) as response:
            for _ in response.iter_bytes():
                if self.stop.is_set():
                    return

    def close(self) -> None:
        """Stop every request and wait until the pool is idle again."""
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        deadline = time.monotonic() + WAIT
        while (pool := pool_status(self.server))["active"] or pool["queued"]:
            assert time.monotonic() < deadline, "the pool did not become idle"
            time.sleep(0.1)


@pytest.fixture
def holder(server: ServerProcess) -> Iterator[Holder]:
    holding = Holder(server)
    try:
        yield holding
    finally:
        holding.close()


def wait_until_running(server: ServerProcess) -> None:
    deadline = time.monotonic() + WAIT
    while pool_status(server)["active"] != 1:
        assert time.monotonic() < deadline, "the long request did not start"
        time.sleep(0.1)


def test_a_queued_chat_shows_its_place_and_stop_leaves_the_queue(
    driver: WebDriver, server: ServerProcess, holder: Holder
) -> None:
    sign_in(driver, server, GOOD_KEY)
    holder.hold(LIMITED_KEY, 80)  # 20 s
    wait_until_running(server)
    start_chat(driver, "echo", "echo", "are you there")
    wait_for(driver, lambda d: status_text(d, "chat-status").startswith("Queued: position 1"))
    assert pool_status(server)["queued"] == 1
    by_id(driver, "chat-stop").click()
    wait_for(driver, lambda d: status_text(d, "chat-status") == "Stopped.")
    deadline = time.monotonic() + 20
    while pool_status(server)["queued"] != 0:
        assert time.monotonic() < deadline, "the stopped request stayed in the queue"
        time.sleep(0.2)
    assert pool_status(server)["active"] == 1  # the long one runs on


def test_the_dashboard_shows_a_request_queued_behind_a_long_one(
    driver: WebDriver, server: ServerProcess, holder: Holder
) -> None:
    sign_in(driver, server, ADMIN_KEY)
    assert by_id(driver, "tab-dashboard").is_displayed()
    holder.hold(GOOD_KEY, 80)  # 20 s
    wait_until_running(server)
    holder.hold(LIMITED_KEY, 4)
    try:
        open_tab(driver, "dashboard")
        card = wait_for(driver, lambda d: (c := pool_card(d, "default")) and c["queue"] == "1 / 16" and c)
        assert card["active"] == "1 / 1"
        [(position, key, priority, _)] = card["waiting"]
        assert (position, key, priority) == ("1", "limited", "interactive")
        assert ["echo", "echo", "10 MB", "yes"] in [row[:4] for row in card["models"]]
        device = wait_for(
            driver,
            lambda d: d.execute_script(
                "const card = document.querySelector('#dashboard-pools [data-device=\"cpu\"]');"
                "return card && card.textContent;"
            ),
        )
        assert "Device cpu" in device and "echo" in device and "in_use" in device  # the memory ledger
        keys = by_id(driver, "dashboard-keys").text
        assert "user" in keys and "limited" in keys
        assert by_id(driver, "dashboard-pulls").is_displayed()  # this server has the model-pull API
        job = httpx.post(
            server.url + "/api/v1/jobs",
            json={
                "binding_name": "echo",
                "model_name": "echo",
                "input_data": [{"type": "text", "role": "user_prompt", "data": "a job for later"}],
            },
            headers={"X-API-Key": ADMIN_KEY},
            timeout=10,
        )
        assert job.status_code == 202, job.text
        job_id = job.json()["job_id"]
        wait_for(driver, lambda d: f"{job_id}: ttt queued" in by_id(d, "job-list").text)
        screenshot(driver, "dashboard")
    finally:
        holder.close()
    wait_for(driver, lambda d: pool_card(d, "default")["queue"] == "0 / 16")
    wait_for(driver, lambda d: f"{job_id}: ttt succeeded" in by_id(d, "job-list").text)


def test_the_chat_fits_a_phone_screen(driver: WebDriver, server: ServerProcess) -> None:
    driver.set_window_size(390, 844)
    try:
        sign_in(driver, server, GOOD_KEY)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow} px wider than the phone"
        assert by_id(driver, "chat-send").is_displayed()
        screenshot(driver, "chat-phone")
    finally:
        driver.set_window_size(1280, 900)


@pytest.fixture(scope="module")
def media_server(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path, media_models_folder: Path
) -> Iterator[ServerProcess]:
    sections = media_sections(media_models_folder)
    sections["defaults"]["ttt_binding"] = "echo"
    with running_server(tmp_path_factory.mktemp("ui-media"), models_folder, **sections) as process:
        yield process


def wait_for_result(driver: WebDriver, selector: str) -> Any:
    """The result element once the media request is done (an error fails at once)."""
    wait_for(driver, lambda d: (text := status_text(d, "media-status")) == "Done." or "Error" in text, 180)
    assert status_text(driver, "media-status") == "Done."
    return driver.find_element(By.CSS_SELECTOR, selector)


def test_an_image_appears_with_the_requested_size(driver: WebDriver, media_server: ServerProcess) -> None:
    sign_in(driver, media_server, GOOD_KEY)
    open_tab(driver, "media")
    Select(by_id(driver, "media-type")).select_by_value("tti")
    choose(driver, "media-binding", "images")
    set_field(driver, "media-prompt", "a red cat")
    set_field(driver, "media-width", "64")
    set_field(driver, "media-height", "48")
    set_field(driver, "media-steps", "2")
    set_field(driver, "media-seed", "5")
    by_id(driver, "media-run").click()
    image = wait_for_result(driver, "#media-results img")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth"
    wait_for(driver, lambda d: d.execute_script(loaded, image))
    size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert size == [64, 48]
    assert status_text(driver, "media-status") == "Done."
    download = driver.find_element(By.CSS_SELECTOR, "#media-results a.download")
    assert download.get_attribute("download") == "image-5.png"
    facts = driver.find_element(By.CSS_SELECTOR, "#media-results .facts").text
    assert "seed: 5" in facts and "width: 64" in facts and "height: 48" in facts
    screenshot(driver, "media")


RECORD_REQUESTS = """
window.__bodies = [];
const original = window.fetch;
window.fetch = (url, init) => {
  if (init && typeof init.body === "string") window.__bodies.push(JSON.parse(init.body));
  return original(url, init);
};
"""


def test_an_image_edit_sends_the_painted_mask(
    driver: WebDriver, media_server: ServerProcess, tmp_path: Path
) -> None:
    import base64
    import io

    from PIL import Image

    source = tmp_path / "source.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(source)
    sign_in(driver, media_server, GOOD_KEY)
    driver.execute_script(RECORD_REQUESTS)
    open_tab(driver, "media")
    Select(by_id(driver, "media-type")).select_by_value("i2i")
    choose(driver, "media-binding", "images")
    set_field(driver, "media-prompt", "a hat")
    set_field(driver, "media-steps", "2")
    by_id(driver, "media-image").send_keys(str(source))
    canvas = wait_for(driver, expected_conditions.visibility_of_element_located((By.ID, "media-canvas")))
    wait_for(driver, lambda d: d.execute_script("return arguments[0].width", canvas) == 64)
    by_id(driver, "media-brush").send_keys(Keys.END)  # the widest brush, from the keyboard
    webdriver.ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(
        30, 0
    ).release().perform()
    by_id(driver, "media-run").click()
    image = wait_for_result(driver, "#media-results img")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth"
    wait_for(driver, lambda d: d.execute_script(loaded, image))
    size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert size == [64, 48]  # an edit keeps the input's size
    [body] = [body for body in driver.execute_script("return window.__bodies") if body.get("generation_type")]
    assert [item["role"] for item in body["input_data"]] == ["user_prompt", "input_image", "mask_image"]
    mask = Image.open(io.BytesIO(base64.b64decode(body["input_data"][2]["data"]))).convert("L")
    assert mask.size == (64, 48)
    low, high = mask.getextrema()
    assert (low, high) == (0, 255)  # painted (white) and kept (black) parts
    screenshot(driver, "media-edit")


def test_speech_plays_and_a_file_is_transcribed_like_the_api_does(
    driver: WebDriver, media_server: ServerProcess, tmp_path: Path
) -> None:
    import base64

    import numpy as np

    from lollms_server.utils.media import wav_bytes

    sign_in(driver, media_server, GOOD_KEY)
    open_tab(driver, "media")
    Select(by_id(driver, "media-type")).select_by_value("tts")
    choose(driver, "media-binding", "audio")
    set_field(driver, "media-prompt", "hello world")
    by_id(driver, "media-run").click()
    player = wait_for_result(driver, "#media-results audio")
    assert player.get_attribute("controls") is not None
    # the browser decodes the WAV the server made: it knows its length, so it can play it
    duration = wait_for(driver, lambda d: d.execute_script("return arguments[0].duration", player))
    assert 0 < duration < 60
    download = driver.find_element(By.CSS_SELECTOR, "#media-results a.download")
    assert download.get_attribute("download").endswith(".wav")

    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 0.3
    audio = tmp_path / "tone.wav"
    audio.write_bytes(wav_bytes(tone, 16000))
    Select(by_id(driver, "media-type")).select_by_value("stt")
    choose(driver, "media-binding", "audio")
    by_id(driver, "media-audio").send_keys(str(audio))
    # the model follows the generation type (the speech model cannot transcribe)
    wait_for(driver, lambda d: Select(by_id(d, "media-model")).first_selected_option.text == "tiny-whisper")
    by_id(driver, "media-run").click()
    transcript = wait_for_result(driver, "#media-results .transcript")
    item = {"type": "audio", "role": "input_audio", "data": base64.b64encode(audio.read_bytes()).decode()}
    expected = httpx.post(
        media_server.url + "/api/v1/generate",
        json={"generation_type": "stt", "input_data": [item], "binding_name": "audio"},
        headers={"X-API-Key": GOOD_KEY},
        timeout=180,
    )
    assert expected.status_code == 200, expected.text
    shown = driver.execute_script("return arguments[0].textContent", transcript)
    assert shown == expected.json()["output"][0]["data"]
    screenshot(driver, "media-audio")
