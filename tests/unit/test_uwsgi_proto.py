"""Unit tests for geows.uwsgi_proto: the uwsgi packet nginx's uwsgi_pass sends.

Packets are built here by hand with struct, not with encode_packet, so that
the parser is checked against the format rather than against itself.
"""

from __future__ import annotations

import struct
from http import HTTPStatus

import pytest

from geows.handshake import check_request
from geows.http import HTTPError, Request
from geows.uwsgi_proto import (
    UwsgiLimits,
    UwsgiRequest,
    encode_packet,
    parse_packet,
)


def var(key: bytes, value: bytes) -> bytes:
    return struct.pack("<H", len(key)) + key + struct.pack("<H", len(value)) + value


def packet(data: bytes, modifier1: int = 0, modifier2: int = 0) -> bytes:
    return struct.pack("<BHB", modifier1, len(data), modifier2) + data


def packet_of(*pairs: tuple[str, str]) -> bytes:
    return packet(b"".join(var(k.encode(), v.encode("latin-1")) for k, v in pairs))


# What nginx sends for a browser's WebSocket upgrade with the stock
# uwsgi_params (CONTENT_LENGTH and CONTENT_TYPE empty on a GET).
NGINX_UPGRADE = (
    ("QUERY_STRING", "room=lobby"),
    ("REQUEST_METHOD", "GET"),
    ("CONTENT_TYPE", ""),
    ("CONTENT_LENGTH", ""),
    ("REQUEST_URI", "/chat?room=lobby"),
    ("PATH_INFO", "/chat"),
    ("DOCUMENT_ROOT", "/usr/share/nginx/html"),
    ("SERVER_PROTOCOL", "HTTP/1.1"),
    ("REQUEST_SCHEME", "http"),
    ("REMOTE_ADDR", "203.0.113.9"),
    ("REMOTE_PORT", "52144"),
    ("SERVER_PORT", "80"),
    ("SERVER_NAME", "example.com"),
    ("HTTP_HOST", "example.com"),
    ("HTTP_UPGRADE", "websocket"),
    ("HTTP_CONNECTION", "Upgrade"),
    ("HTTP_SEC_WEBSOCKET_KEY", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("HTTP_SEC_WEBSOCKET_VERSION", "13"),
    ("HTTP_ORIGIN", "http://example.com"),
)
NGINX_PACKET = packet_of(*NGINX_UPGRADE)
LIMITS = UwsgiLimits()


def parsed(data: bytes, limits: UwsgiLimits = LIMITS) -> UwsgiRequest:
    result = parse_packet(data, limits)
    assert result is not None
    return result[0]


def refused(data: bytes, limits: UwsgiLimits = LIMITS) -> HTTPStatus:
    with pytest.raises(HTTPError) as info:
        parse_packet(data, limits)
    return info.value.status


# --- valid packets ----------------------------------------------------------


def test_an_nginx_upgrade_packet_parses_to_its_vars_in_wire_order():
    request, consumed = parse_packet(NGINX_PACKET)  # type: ignore[misc]
    assert consumed == len(NGINX_PACKET)
    assert list(request.vars.items()) == list(NGINX_UPGRADE)
    assert (request.modifier1, request.modifier2) == (0, 0)


def test_the_helpers_read_method_target_version_and_length():
    request = parsed(NGINX_PACKET)
    assert request.method == "GET"
    assert request.target == "/chat?room=lobby"
    assert request.version == "HTTP/1.1"
    assert request.content_length is None  # empty on a GET, as nginx sends it


def test_headers_come_from_http_vars_lower_cased_with_dashes():
    assert parsed(NGINX_PACKET).headers() == [
        ("host", "example.com"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
        ("origin", "http://example.com"),
    ]


def test_content_type_and_length_become_headers_when_not_empty():
    request = parsed(
        packet_of(
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "text/plain"),
            ("CONTENT_LENGTH", "5"),
            ("HTTP_X_FOO", "bar"),
        )
    )
    assert request.content_length == 5
    assert request.headers() == [
        ("content-type", "text/plain"),
        ("content-length", "5"),
        ("x-foo", "bar"),
    ]


def test_http_content_duplicates_are_shadowed_by_the_cgi_variables():
    request = parsed(
        packet_of(
            ("REQUEST_METHOD", "POST"),
            ("HTTP_CONTENT_LENGTH", "999"),
            ("HTTP_CONTENT_TYPE", "x/y"),
            ("CONTENT_LENGTH", "3"),
        )
    )
    assert request.headers() == [("content-length", "3")]


def test_the_body_after_the_packet_is_not_consumed():
    data = packet_of(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "5")) + b"hello"
    request, consumed = parse_packet(data)  # type: ignore[misc]
    assert data[consumed:] == b"hello"
    assert request.content_length == 5


def test_values_are_decoded_as_latin_1():
    data = packet(var(b"REQUEST_METHOD", b"GET") + var(b"PATH_INFO", b"/caf\xc3\xa9"))
    assert parsed(data).vars["PATH_INFO"] == "/caf\xc3\xa9"


def test_an_empty_value_is_allowed():
    assert parsed(packet_of(("REQUEST_METHOD", "GET"), ("X", ""))).vars["X"] == ""


def test_modifier2_is_kept():
    assert parsed(packet(var(b"REQUEST_METHOD", b"GET"), modifier2=7)).modifier2 == 7


def test_parse_accepts_bytearray_and_memoryview():
    assert parsed(bytearray(NGINX_PACKET)).method == "GET"  # type: ignore[arg-type]
    assert parsed(memoryview(NGINX_PACKET)).method == "GET"  # type: ignore[arg-type]


def test_the_target_falls_back_to_path_info_and_query_string():
    request = parsed(
        packet_of(
            ("REQUEST_METHOD", "GET"), ("PATH_INFO", "/a"), ("QUERY_STRING", "b=1")
        )
    )
    assert request.target == "/a?b=1"


def test_the_fallback_target_has_no_question_mark_without_a_query():
    request = parsed(
        packet_of(("REQUEST_METHOD", "GET"), ("PATH_INFO", "/a"), ("QUERY_STRING", ""))
    )
    assert request.target == "/a"


def test_the_fallback_target_re_encodes_the_decoded_path_and_adds_script_name():
    request = parsed(
        packet_of(
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/app"),
            ("PATH_INFO", "/a b%"),
        )
    )
    assert request.target == "/app/a%20b%25"


def test_the_target_is_a_slash_without_any_path():
    assert parsed(packet_of(("REQUEST_METHOD", "GET"))).target == "/"


def test_the_version_defaults_to_http_1_1():
    assert parsed(packet_of(("REQUEST_METHOD", "GET"))).version == "HTTP/1.1"


def test_the_version_is_server_protocol():
    request = parsed(
        packet_of(("REQUEST_METHOD", "GET"), ("SERVER_PROTOCOL", "HTTP/1.0"))
    )
    assert request.version == "HTTP/1.0"


def test_a_zero_content_length_is_zero():
    request = parsed(packet_of(("REQUEST_METHOD", "GET"), ("CONTENT_LENGTH", "0")))
    assert request.content_length == 0


# --- incremental input ------------------------------------------------------


def test_feeding_byte_by_byte_returns_none_until_the_packet_is_complete():
    for i in range(len(NGINX_PACKET)):
        assert parse_packet(NGINX_PACKET[:i]) is None
    assert parsed(NGINX_PACKET).vars == dict(NGINX_UPGRADE)


def test_an_empty_buffer_is_incomplete():
    assert parse_packet(b"") is None


# --- the 4-byte header fails fast -------------------------------------------


def test_a_modifier1_other_than_0_is_501_from_the_first_byte():
    assert refused(b"\x05") == HTTPStatus.NOT_IMPLEMENTED
    assert refused(packet(b"", modifier1=30)) == HTTPStatus.NOT_IMPLEMENTED


def test_a_datasize_over_max_packet_is_431_before_the_vars_arrive():
    limits = UwsgiLimits(max_packet=100)
    assert (
        refused(b"\x00\x65\x00", limits) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    )
    assert parse_packet(b"\x00\x64\x00", limits) is None  # 100 is allowed


def test_the_default_max_packet_is_the_format_ceiling():
    assert UwsgiLimits().max_packet == 65535
    assert parse_packet(b"\x00\xff\xff\x00") is None


# --- malformed vars: 400 -----------------------------------------------------

METHOD = var(b"REQUEST_METHOD", b"GET")


def test_a_key_running_past_the_packet_is_400():
    assert refused(packet(METHOD + b"\x09\x00abc")) == HTTPStatus.BAD_REQUEST


def test_a_value_running_past_the_packet_is_400():
    assert refused(packet(METHOD + b"\x01\x00a\x09\x00abc")) == HTTPStatus.BAD_REQUEST


def test_a_key_without_its_value_size_is_400():
    assert refused(packet(METHOD + b"\x01\x00a")) == HTTPStatus.BAD_REQUEST
    assert refused(packet(METHOD + b"\x01\x00a\x00")) == HTTPStatus.BAD_REQUEST


def test_a_trailing_byte_after_the_last_var_is_400():
    assert refused(packet(METHOD + b"\x00")) == HTTPStatus.BAD_REQUEST


def test_an_empty_key_is_400():
    assert refused(packet(METHOD + var(b"", b"x"))) == HTTPStatus.BAD_REQUEST


def test_a_duplicate_key_is_400():
    assert refused(packet(METHOD + METHOD)) == HTTPStatus.BAD_REQUEST


def test_repeated_header_lines_are_joined_as_nginx_sends_them():
    # nginx 1.22, for "Connection: keep-alive" and "Connection: Upgrade" lines
    request = parsed(
        packet_of(
            ("REQUEST_METHOD", "GET"),
            ("HTTP_CONNECTION", "keep-alive"),
            ("HTTP_UPGRADE", "websocket"),
            ("HTTP_CONNECTION", "Upgrade"),
        )
    )
    assert request.vars["HTTP_CONNECTION"] == "keep-alive,Upgrade"
    assert list(request.vars) == ["REQUEST_METHOD", "HTTP_CONNECTION", "HTTP_UPGRADE"]
    assert request.to_http_request().has_token("connection", "upgrade")


def test_repeated_header_lines_count_towards_max_vars():
    data = packet_of(("REQUEST_METHOD", "GET"), *[("HTTP_X", "1")] * 4)
    limits = UwsgiLimits(max_vars=4)
    assert refused(data, limits) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_a_key_that_is_not_ascii_is_400():
    assert refused(packet(METHOD + var(b"CAF\xc9", b"x"))) == HTTPStatus.BAD_REQUEST


def test_a_packet_without_request_method_is_400():
    assert refused(packet(var(b"PATH_INFO", b"/"))) == HTTPStatus.BAD_REQUEST
    assert refused(packet(b"")) == HTTPStatus.BAD_REQUEST
    assert refused(packet(var(b"REQUEST_METHOD", b""))) == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize("value", ["-1", "+5", " 5", "5 ", "0x10", "\xb2", "1e3"])
def test_a_content_length_that_is_not_decimal_digits_is_400(value):
    data = packet_of(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", value))
    assert refused(data) == HTTPStatus.BAD_REQUEST


def test_a_content_length_over_int64_is_400():
    data = packet_of(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", str(2**63)))
    assert refused(data) == HTTPStatus.BAD_REQUEST


# --- limits: 431 ---------------------------------------------------------------


def test_more_than_max_vars_is_431():
    limits = UwsgiLimits(max_vars=3)
    three = METHOD + var(b"A", b"") + var(b"B", b"")
    assert parsed(packet(three), limits).vars["B"] == ""
    four = three + var(b"C", b"")
    assert refused(packet(four), limits) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_the_default_max_vars_is_100():
    many = METHOD + b"".join(var(b"V%d" % i, b"") for i in range(99))
    assert len(parsed(packet(many)).vars) == 100
    too_many = many + var(b"V99", b"")
    assert refused(packet(too_many)) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_errors_carry_a_reason():
    with pytest.raises(HTTPError) as info:
        parse_packet(packet(METHOD + METHOD))
    assert "duplicate" in info.value.reason


# --- as an HTTP request ---------------------------------------------------------


def test_to_http_request_builds_a_request_the_handshake_accepts():
    request = parsed(NGINX_PACKET).to_http_request()
    assert isinstance(request, Request)
    assert (request.method, request.target, request.version) == (
        "GET",
        "/chat?room=lobby",
        "HTTP/1.1",
    )
    assert request.path == "/chat"
    assert request.query_string == "room=lobby"
    assert request.body_kind == "none"
    key = check_request(
        request.method,
        request.version,
        request.get,
        has_body=request.body_kind != "none",
    )
    assert key == "dGhlIHNhbXBsZSBub25jZQ=="


def test_to_http_request_is_never_kept_alive():
    # Even an HTTP/1.1 request that asks for keep-alive: one per connection.
    data = packet_of(("REQUEST_METHOD", "GET"), ("HTTP_CONNECTION", "keep-alive"))
    assert parsed(data).to_http_request().keep_alive is False


def test_to_http_request_frames_a_body_by_its_content_length():
    data = packet_of(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "5"))
    request = parsed(data).to_http_request()
    assert (request.body_kind, request.content_length) == ("length", 5)


def test_to_http_request_has_no_body_for_a_zero_content_length():
    data = packet_of(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "0"))
    assert parsed(data).to_http_request().body_kind == "none"


# --- encode_packet ---------------------------------------------------------------


def test_encode_packet_writes_the_header_and_vars_by_the_format():
    assert encode_packet({"A": "bc"}, modifier2=3) == b"\x00\x07\x00\x03" + var(
        b"A", b"bc"
    )


def test_encode_packet_accepts_pairs_and_keeps_their_order():
    pairs = [("Z", "1"), ("A", "2")]
    assert encode_packet(pairs) == packet(var(b"Z", b"1") + var(b"A", b"2"))


def test_encode_then_parse_round_trips_an_nginx_request():
    data = encode_packet(NGINX_UPGRADE)
    assert data == NGINX_PACKET
    assert list(parsed(data).vars.items()) == list(NGINX_UPGRADE)


def test_encode_packet_writes_values_as_latin_1():
    assert encode_packet({"K": "\xe9"}).endswith(b"\x01\x00\xe9")


def test_encode_packet_refuses_a_value_over_65535_bytes():
    with pytest.raises(ValueError, match="65535"):
        encode_packet({"K": "x" * 65536})


def test_encode_packet_refuses_vars_over_65535_bytes_in_total():
    with pytest.raises(ValueError, match="65535"):
        encode_packet({"A": "x" * 40000, "B": "x" * 40000})


def test_a_packet_of_exactly_65535_bytes_encodes_and_parses():
    # REQUEST_METHOD=GET takes 2+14+2+3 bytes, A's var 2+1+2 and its value.
    data = encode_packet({"REQUEST_METHOD": "GET", "A": "x" * (65535 - 21 - 5)})
    assert data[1:3] == b"\xff\xff"
    assert len(parsed(data).vars["A"]) == 65509


@pytest.mark.parametrize(
    "pairs",
    [
        [("", "x")],
        [("CAF\xc9", "x")],
        [("A", "1"), ("A", "2")],
        [("A", "\u20ac")],
    ],
)
def test_encode_packet_refuses_what_parse_would_refuse(pairs):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        encode_packet(pairs)


def test_encode_packet_repeats_header_vars_as_nginx_does():
    data = encode_packet([("REQUEST_METHOD", "GET"), ("HTTP_A", "1"), ("HTTP_A", "2")])
    assert data.count(b"HTTP_A") == 2
    assert parsed(data).vars["HTTP_A"] == "1,2"


def test_encode_packet_refuses_a_modifier_outside_a_byte():
    with pytest.raises(ValueError, match="0-255"):
        encode_packet({}, modifier1=256)
