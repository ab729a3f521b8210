"""The chat example (examples/chat/) in a real browser: headless Chromium.

Playwright drives the system's Chromium (see tests/browser.py).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import chromium
from tests.integration.support import assert_no_traceback, serve
from tests.servers import EXAMPLES, ServerProcess

pytestmark = pytest.mark.timeout(60)

SCREENSHOT = "/tmp/chat.png"
WAIT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A persistent Chromium context with a fresh profile directory."""
    with chromium(viewport={"width": 800, "height": 600}) as context:
        yield context


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
