"""The C header-to-environ loop (geows._speedups.cgi_headers) against the
pure-Python one it replaces (geows.wsgi._cgi_headers_py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geows.wsgi import _cgi_headers_py

speedups = pytest.importorskip("geows._speedups")

# Names: tokens as the parsers give them (lower case), a few that collide
# once mangled ("_" vs "-"), the framing ones, and non-ASCII text too.
names = st.one_of(
    st.sampled_from(
        ["host", "content-type", "content-length", "x-a", "x_a", "upgrade",
         "sec-websocket-key", "x-forwarded-for", "accept", "a-b-c"]
    ),
    st.text("abcxyz-_019!#'*", min_size=1, max_size=12),
    st.text(min_size=1, max_size=6),
)  # fmt: skip
values = st.text(max_size=20)
header_lists = st.lists(st.tuples(names, values), max_size=12)


def _both(
    headers: list[tuple[str, str]], cache_c: dict[str, str], cache_py: dict[str, str],
    max_keys: int = 512,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    base = {"REQUEST_METHOD": "GET", "HTTP_PRESET": "p"}
    env_c, env_py = dict(base), dict(base)
    speedups.cgi_headers(env_c, headers, cache_c, max_keys)
    _cgi_headers_py(env_py, headers, cache_py, max_keys)
    return env_c, env_py


@settings(max_examples=400, deadline=None)
@given(header_lists, st.integers(min_value=0, max_value=4))
def test_same_environ_and_cache_as_python(
    headers: list[tuple[str, str]], max_keys: int
) -> None:
    cache_c: dict[str, str] = {}
    cache_py: dict[str, str] = {}
    for _ in range(2):  # a cold cache, then a warm one
        env_c, env_py = _both(headers, cache_c, cache_py, max_keys)
        assert env_c == env_py
        assert cache_c == cache_py
        assert len(cache_c) <= max_keys


def test_typical_upgrade_headers() -> None:
    headers = [
        ("host", "h:1"), ("upgrade", "websocket"), ("connection", "Upgrade"),
        ("x-a", "1"), ("x_a", "spoof"), ("X-A".lower(), "2"),
        ("content-type", "text/plain"), ("content-length", "0"),
    ]  # fmt: skip
    env: dict[str, Any] = {}
    speedups.cgi_headers(env, headers, {}, 512)
    assert env == {
        "HTTP_HOST": "h:1",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_X_A": "1,2",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "0",
    }


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError):
        speedups.cgi_headers({}, [("a",)], {}, 1)
    with pytest.raises(TypeError):
        speedups.cgi_headers({}, [("a", b"v")], {}, 1)
    with pytest.raises(TypeError):
        speedups.cgi_headers({}, ("not", "a list"), {}, 1)
