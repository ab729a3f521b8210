"""Headless Chromium for tests, driven by Playwright (no browser download).

The system's Chromium: ``CHROMIUM``, else ``chromium`` on PATH, else
/usr/bin/chromium. Without Playwright or Chromium the tests are skipped, and
fail when ``CI`` is set. The flags keep Chromium off the network: this
machine refuses outside connections, many at a time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

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


@contextmanager
def chromium(*extra_args: str, **options: Any) -> Iterator[Any]:
    """A persistent Chromium context with a fresh profile directory;
    ``extra_args`` go on its command line, ``options`` to Playwright.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    executable = chromium_path()
    with (
        tempfile.TemporaryDirectory(prefix="geows-chromium-") as profile,
        sync_playwright() as pw,
    ):
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_ARGS, *extra_args],
            **options,
        )
        try:
            yield context
        finally:
            context.close()
