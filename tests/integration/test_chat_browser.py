"""The chat example (examples/chat/) in a real browser: headless Chromium.

Playwright drives the system's Chromium (``CHROMIUM``, else ``chromium`` on
PATH, else /usr/bin/chromium); no browser is downloaded. Without Playwright
or Chromium the tests are skipped, and fail when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.support import assert_no_traceback, serve
from tests.servers import EXAMPLES, ServerProcess

pytestmark = pytest.mark.timeout(60)

SCREENSHOT = "/tmp/chat.png"
WAIT_MS = 10_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (required when CI is set)")
    pytest.skip(what)


def chromium_path() -> str:
    candidates = [os.environ.get("CHROMIUM"), shutil.which("chromium")]
    candidates.append("/usr/bin/chromium")
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    _missing("no Chromium executable (set CHROMIUM, or install chromium)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A persistent Chromium context with a fresh profile directory."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    executable = chromium_path()
    with (
        tempfile.TemporaryDirectory(prefix="chat-") as profile,
        sync_playwright() as pw,
    ):
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 800, "height": 600},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def chat_server() -> Iterator[ServerProcess]:
    yield from serve(str(EXAMPLES / "chat" / "app.py"))


def open_chat(browser: Any, server: ServerProcess, room: str, name: str) -> Any:
    page = browser.new_page()
    page.goto(f"{server.http_url}/?room={room}&name={name}")
    page.wait_for_function(
        "document.getElementById('state').textContent === 'connected'",
        timeout=WAIT_MS,
    )
    assert page.locator("#room").inner_text() == room
    assert page.locator("#name").input_value() == name
    return page


def say(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def wait_for_message(page: Any, text: str) -> None:
    page.locator(".message", has_text=text).first.wait_for(timeout=WAIT_MS)


def messages(page: Any) -> list[str]:
    return list(page.locator(".message").all_inner_texts())


def test_two_browsers_chat_in_one_room(
    browser: Any, chat_server: ServerProcess
) -> None:
    from playwright.sync_api import expect

    alice = open_chat(browser, chat_server, "t", "alice")
    bob = open_chat(browser, chat_server, "t", "bob")
    elsewhere = open_chat(browser, chat_server, "other", "carol")
    try:
        say(alice, "hello bob")
        wait_for_message(bob, "alice: hello bob")
        expect(alice.locator("#text")).to_have_value("")  # the form was reset

        say(bob, "hi alice")
        wait_for_message(alice, "bob: hi alice")

        request = urllib.request.Request(
            f"{chat_server.http_url}/say?room=t", data=b"tea at five", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204
        for page in (alice, bob):
            wait_for_message(page, "[announcement] tea at five")

        expected = ["alice: hello bob", "bob: hi alice", "[announcement] tea at five"]
        assert messages(alice) == expected  # a member gets its own message too
        assert messages(bob) == expected

        say(elsewhere, "anyone?")
        wait_for_message(elsewhere, "carol: anyone?")
        assert messages(elsewhere) == ["carol: anyone?"]  # rooms are separate
        assert messages(alice) == expected

        alice.screenshot(path=SCREENSHOT)
    finally:
        for page in (alice, bob, elsewhere):
            page.close()
    assert_no_traceback(chat_server)


def test_closing_a_page_leaves_the_room(
    browser: Any, chat_server: ServerProcess
) -> None:
    alice = open_chat(browser, chat_server, "leaving", "alice")
    bob = open_chat(browser, chat_server, "leaving", "bob")
    try:
        bob.close()
        say(alice, "still there?")
        wait_for_message(alice, "alice: still there?")
        assert messages(alice) == ["alice: still there?"]
    finally:
        alice.close()
    assert_no_traceback(chat_server)
