"""The web chat page in a real headless browser (Debian's chromium driven by Playwright).

CI installs the browser with ``apt-get install -y chromium``; the test skips only when it is absent.
Set LLAVAKIT_TEST_ARTIFACTS to keep the screenshot.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_serving_support import (
    in_thread_server,
    one_torch_thread,  # noqa: F401 - autouse fixture
    picture,
    tiny_model,
)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")

# Records every text the answer bubble shows, to prove the answer arrived in pieces.
WATCH = """() => {
  window.snapshots = [];
  new MutationObserver(() => {
    const span = document.querySelector('.message.assistant:last-child .content');
    if (span) window.snapshots.push(span.textContent);
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


def expected_answer(conversation):
    return tiny_model().generate(conversation, max_new_tokens=40, temperature=0.0).text


def test_upload_ask_and_watch_the_answer_stream_in(tmp_path):
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "photo.png"
    picture(50, 64, 48).save(photo)
    turn1 = [{"role": "user", "content": [{"type": "image", "image": str(photo)},
                                          {"type": "text", "text": "What is in the picture?"}]}]
    answer1 = expected_answer(turn1)
    turn2 = [*turn1, {"role": "assistant", "content": answer1}, {"role": "user", "content": "Tell me more."}]
    answer2 = expected_answer(turn2)
    artifacts = Path(os.environ.get("LLAVAKIT_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)

    with in_thread_server(api_key="page-key") as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(server.url + "/")
            page.fill("#api-key", "page-key")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "40")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#pending img")
            page.evaluate(WATCH)
            page.fill("#prompt", "What is in the picture?")
            page.click("#send")
            page.wait_for_selector('.message.assistant[data-state="done"]', timeout=60_000)
            bubble = page.locator(".message.assistant").last
            assert bubble.locator(".content").text_content() == answer1
            assert page.locator(".message.user img").count() == 1
            snapshots = [s for s in page.evaluate("window.snapshots") if s]
            assert len(set(snapshots)) > 1 and all(answer1.startswith(s) for s in snapshots)
            assert int(bubble.get_attribute("data-chunks")) > 1

            page.fill("#prompt", "Tell me more.")
            page.keyboard.press("Enter")  # Enter sends too
            page.wait_for_function("document.querySelectorAll('.message.assistant[data-state=\"done\"]').length == 2",
                                   timeout=60_000)
            assert page.locator(".message.assistant .content").nth(1).text_content() == answer2
            page.screenshot(path=str(artifacts / "serving_chat_page.png"), full_page=True)
            assert page.locator("#model").text_content() == "model: tiny-ov"  # read with the API key
        finally:
            browser.close()
    assert (artifacts / "serving_chat_page.png").stat().st_size > 1000

