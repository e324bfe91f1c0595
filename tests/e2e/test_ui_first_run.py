"""End to end in a real headless Chromium: the chat of a server whose default text binding has no
model shows what to do instead of a chat that errors, and its pull button (admin keys) pulls the
default model from the local fake hub, after which the chat answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY, GOOD_KEY, ServerProcess, base_config, start_lollms
from tests.e2e import test_ui as ui
from tests.e2e.test_ui import by_id, screenshot, sign_in, wait_for
from tests.fixtures.fake_hub import FakeHub

pytestmark = pytest.mark.e2e

from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

browser = ui.browser  # the browser fixtures of the UI tests
driver = ui.driver
DEFAULT_REPO = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
DEFAULT_FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    from tests.tiny_models import build_tiny_gguf

    data = build_tiny_gguf(tmp_path_factory.mktemp("ui-gguf") / "tiny.gguf").read_bytes()
    with FakeHub.running() as running:
        running.state.add(DEFAULT_REPO, {DEFAULT_FILE: data})
        running.state.delay = 0.05  # a pull of a few seconds: its progress shows
        yield running


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[ServerProcess]:
    """A fresh install: the default text binding has no model, none is installed, nothing pulls
    it on its own (pull_default_on_start off)."""
    folder = tmp_path_factory.mktemp("ui-first-run")
    config = base_config(
        folder,
        folder / "models",
        models={"hub_endpoint": hub.url},
        bindings={"local_llm": {"type": "llamacpp_binding", "n_threads": 1, "n_ctx": 512, "parallel": 1}},
    )
    config["defaults"] = {"ttt_binding": "local_llm"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "0")  # the server talks to the fake hub
        server = start_lollms(config, folder, folder / "server.log")
    try:
        yield server
    finally:
        server.stop()


def notice(driver: WebDriver) -> str:
    shown = by_id(driver, "no-model").is_displayed()
    return str(by_id(driver, "no-model-message").text) if shown else ""


def test_a_user_key_sees_what_to_do_and_no_pull_button(
    driver: WebDriver, empty_server: ServerProcess
) -> None:
    sign_in(driver, empty_server, GOOD_KEY)
    message = wait_for(driver, notice)
    assert "no text model yet" in message and "administrator" in message
    assert not by_id(driver, "no-model-pull").is_displayed()
    assert not by_id(driver, "chat-send").is_enabled()


def test_the_notice_says_how_and_its_button_pulls_the_default_model(
    driver: WebDriver, empty_server: ServerProcess, hub: FakeHub
) -> None:
    sign_in(driver, empty_server, ADMIN_KEY)
    folder = Path(empty_server.log_path).parent / "models" / "llamacpp_binding"
    message = wait_for(driver, notice)
    assert f"--model {DEFAULT_REPO}:Q4_K_M" in message and f"copy a .gguf file into {folder}/" in message
    assert not by_id(driver, "chat-send").is_enabled()  # no chat that would only error
    button = by_id(driver, "no-model-pull")
    assert button.is_displayed() and DEFAULT_REPO in button.text
    screenshot(driver, "chat-no-model")
    button.click()
    wait_for(driver, lambda d: "Downloading the default model" in notice(d) or not notice(d))
    wait_for(driver, lambda d: not by_id(d, "no-model").is_displayed())
    assert hub.state.downloads(DEFAULT_FILE)
    assert (folder / DEFAULT_REPO / DEFAULT_FILE).is_file()
    by_id(driver, "chat-max-tokens").send_keys("4")
    by_id(driver, "chat-input").send_keys("Hello")
    by_id(driver, "chat-send").click()
    done = "#chat-messages .message.assistant:not(.streaming) .content"
    answer = wait_for(driver, lambda d: d.find_elements("css selector", done))[-1]
    wait_for(driver, lambda d: by_id(d, "chat-send").is_enabled())
    assert answer.get_attribute("data-raw"), by_id(driver, "chat-status").text  # text came back
    screenshot(driver, "chat-after-pull")
