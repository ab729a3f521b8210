"""Unit tests for geows._httpfast, the C fast path of geows.http.parse_head.

It handles the common, plainly well-formed head and returns None for
everything else, so that the pure-Python parser decides.  The property
tests (tests/property/test_http_fast.py) check that the two agree; these
pin down what the fast path handles and what it leaves to Python.
"""

from __future__ import annotations

from typing import Optional, Union

import pytest

from geows.http import HTTPLimits, parse_head
from tests.http_heads import FastHead
from tests.http_heads import fast as fast_head

httpfast = pytest.importorskip("geows._httpfast")

LIMITS = HTTPLimits()

WS_UPGRADE_HEAD = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: example.com:8000\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0\r\n"
    b"\r\n"
)


def fast(
    data: Union[bytes, bytearray], limits: HTTPLimits = LIMITS
) -> Optional[FastHead]:
    return fast_head(httpfast, data, limits)


def head(*lines: str, request_line: str = "GET / HTTP/1.1") -> bytes:
    """A CRLF head with a Host header and the given extra header lines."""
    return "".join(
        f"{line}\r\n" for line in (request_line, "Host: h", *lines, "")
    ).encode("latin-1")


# --- what the fast path handles -----------------------------------------------


def test_the_typical_websocket_upgrade_head_is_handled() -> None:
    headers = [
        ("host", "example.com:8000"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"),
    ]
    assert fast(WS_UPGRADE_HEAD) == (
        "GET",
        "/chat",
        "HTTP/1.1",
        headers,
        dict(headers),
        len(WS_UPGRADE_HEAD),
    )


def test_bytes_and_bytearray_give_the_same_result() -> None:
    assert fast(bytearray(WS_UPGRADE_HEAD)) == fast(WS_UPGRADE_HEAD) is not None


def test_parse_head_hands_over_the_index_so_get_needs_no_pass() -> None:
    result = parse_head(WS_UPGRADE_HEAD, LIMITS)
    assert result is not None
    request = result[0]
    assert request._index is not None
    assert request.get("Sec-WebSocket-Version") == "13"
    assert request.body_kind == "none"
    assert request.content_length is None


def test_bytes_after_the_head_are_not_consumed() -> None:
    result = fast(WS_UPGRADE_HEAD + b"GET / HTTP/1.1\r\n")
    assert result is not None
    assert result[5] == len(WS_UPGRADE_HEAD)


def test_names_are_lower_cased_and_values_stripped_of_ows() -> None:
    result = fast(head("X-MiXeD:  \t a  b \t ", "Empty:", "Tight:v", "HOST2: x"))
    assert result is not None
    assert result[3][1:] == [
        ("x-mixed", "a  b"),
        ("empty", ""),
        ("tight", "v"),
        ("host2", "x"),
    ]


def test_repeated_fields_are_kept_in_order_and_joined_in_the_index() -> None:
    result = fast(head("Accept: a", "X: 1", "accept: b", "ACCEPT: c"))
    assert result is not None
    assert result[3][1:] == [
        ("accept", "a"),
        ("x", "1"),
        ("accept", "b"),
        ("accept", "c"),
    ]
    assert result[4] == {"host": "h", "accept": "a, b, c", "x": "1"}


def test_obs_text_in_the_target_and_values_is_decoded_as_latin_1() -> None:
    result = fast(head("X: caf\xe9 \xff", request_line="GET /\xe9 HTTP/1.1"))
    assert result is not None
    assert result[1] == "/\xe9"
    assert result[3][1] == ("x", "caf\xe9 \xff")


def test_http_1_0_needs_no_host() -> None:
    result = fast(b"POST /form HTTP/1.0\r\nX: y\r\n\r\n")
    assert result is not None
    assert result[:3] == ("POST", "/form", "HTTP/1.0")


def test_a_head_exactly_at_every_limit_is_handled() -> None:
    data = head("X: 123", request_line="GET /abc HTTP/1.1")
    limits = HTTPLimits(
        max_request_line=len("GET /abc HTTP/1.1"),
        max_header_line=len("Host: h"),
        max_headers=2,
        max_head=len(data),
    )
    assert fast(data, limits) is not None


def test_a_head_of_64_fields_is_handled() -> None:
    result = fast(head(*(f"X-{i}: {i}" for i in range(63))))
    assert result is not None
    assert len(result[3]) == 64


def test_limits_too_large_for_a_c_integer_are_clamped() -> None:
    huge = 10**30
    assert httpfast.parse_head(WS_UPGRADE_HEAD, huge, huge, huge, huge) is not None


# --- what it leaves to the pure-Python parser ---------------------------------

TOO_MANY = head(*(f"X-{i}: {i}" for i in range(64)))  # 65 fields with Host


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(WS_UPGRADE_HEAD[:-1], id="incomplete"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\r\n" + WS_UPGRADE_HEAD, id="leading-empty-line"),
        pytest.param(b"GET / HTTP/1.1\nHost: h\r\n\r\n", id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\n\n", id="bare-lf-blank-line"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", id="bare-cr"),
        pytest.param(head("X: a\x00b"), id="nul-in-value"),
        pytest.param(head("X: a\x7fb"), id="del-in-value"),
        pytest.param(head(request_line="GET /a\x01 HTTP/1.1"), id="ctl-in-target"),
        pytest.param(head(request_line="GET /a\tb HTTP/1.1"), id="tab-in-target"),
        pytest.param(head(request_line="GET  / HTTP/1.1"), id="double-space"),
        pytest.param(head(request_line="GET / HTTP/1.1 "), id="trailing-space"),
        pytest.param(head(request_line="GET /"), id="no-version"),
        pytest.param(head(request_line="GET / HTTP/2.0"), id="http-2.0"),
        pytest.param(head(request_line="GET / http/1.1"), id="lower-case-version"),
        pytest.param(head(request_line="G(T / HTTP/1.1"), id="non-token-method"),
        pytest.param(head(request_line="G\xc9T / HTTP/1.1"), id="obs-text-method"),
        pytest.param(head("X: a", " folded"), id="obs-fold"),
        pytest.param(head("X : a"), id="space-before-colon"),
        pytest.param(head("No colon"), id="no-colon"),
        pytest.param(head(": v"), id="empty-name"),
        pytest.param(head("Caf\xe9: v"), id="obs-text-name"),
        pytest.param(b"GET / HTTP/1.1\r\nX: y\r\n\r\n", id="http-1.1-no-host"),
        pytest.param(head("Host: h2"), id="two-hosts"),
        pytest.param(
            b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", id="two-hosts-1.0"
        ),
        pytest.param(head("Content-Length: 0"), id="content-length"),
        pytest.param(head("content-LENGTH: 5"), id="content-length-any-case"),
        pytest.param(head("Transfer-Encoding: chunked"), id="transfer-encoding"),
        pytest.param(TOO_MANY, id="more-than-64-fields"),
    ],
)
def test_anything_but_a_plain_common_head_is_left_to_python(data: bytes) -> None:
    assert fast(data) is None


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(
            HTTPLimits(max_request_line=len("GET / HTTP/1.1") - 1), id="request-line"
        ),
        pytest.param(HTTPLimits(max_header_line=len("Host: h") - 1), id="header-line"),
        pytest.param(HTTPLimits(max_headers=1), id="headers"),
        pytest.param(HTTPLimits(max_head=len(head("X: 1")) - 1), id="head"),
        pytest.param(HTTPLimits(max_headers=-1), id="negative"),
    ],
)
def test_a_head_over_a_limit_is_left_to_python(limits: HTTPLimits) -> None:
    data = head("X: 1")
    assert fast(data) is not None
    assert fast(data, limits) is None
