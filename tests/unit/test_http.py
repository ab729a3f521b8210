"""Unit tests for geows.http: request heads, chunked bodies, response helpers."""

from __future__ import annotations

from http import HTTPStatus
from typing import Optional

import pytest

import geows.http
from geows.http import (
    ChunkedDecoder,
    HTTPError,
    HTTPLimits,
    Request,
    error_response,
    parse_head,
    status_line,
)

LIMITS = HTTPLimits()


@pytest.fixture(autouse=True, params=["c-fast-path", "pure-python"])
def head_parser(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test runs twice: parse_head with the C fast path (geows._httpfast)
    first, then with the pure-Python parser alone."""
    if request.param == "pure-python":
        monkeypatch.setattr(geows.http, "_fast_parse_head", None)
    elif geows.http._fast_parse_head is None:
        pytest.skip("the C fast path geows._httpfast is not built")


WS_HEAD = (
    b"GET /chat?room=lobby HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def parse(data: bytes, limits: HTTPLimits = LIMITS) -> Optional[tuple[Request, int]]:
    return parse_head(bytearray(data), limits)


def parsed(data: bytes, limits: HTTPLimits = LIMITS) -> Request:
    result = parse(data, limits)
    assert result is not None
    return result[0]


def refused(data: bytes, limits: HTTPLimits = LIMITS) -> HTTPStatus:
    with pytest.raises(HTTPError) as info:
        parse(data, limits)
    return info.value.status


def head(*lines: str, request_line: str = "GET / HTTP/1.1") -> bytes:
    """A CRLF head with a Host header and the given extra header lines."""
    return "".join(
        f"{line}\r\n" for line in (request_line, "Host: h", *lines, "")
    ).encode("latin-1")


def feed_byte_by_byte(data: bytes, limits: HTTPLimits = LIMITS) -> tuple[Request, int]:
    """Feed data one byte at a time, as a slow client would."""
    buf = bytearray()
    for byte in data:
        buf.append(byte)
        result = parse_head(buf, limits)
        if result is not None:
            return result
    raise AssertionError("head never completed")


def decode_all(data: bytes, max_body: Optional[int] = None) -> tuple[bytes, bytes]:
    decoder = ChunkedDecoder(LIMITS, max_body)
    body = b"".join(decoder.feed(data))
    assert decoder.done
    return body, decoder.unused


def decode_refused(data: bytes, max_body: Optional[int] = None) -> HTTPStatus:
    decoder = ChunkedDecoder(LIMITS, max_body)
    with pytest.raises(HTTPError) as info:
        decoder.feed(data)
    return info.value.status


# --- parsing a well-formed head ---------------------------------------------


def test_websocket_upgrade_head_parses_into_its_fields() -> None:
    result = parse(WS_HEAD)
    assert result is not None
    request, consumed = result
    assert consumed == len(WS_HEAD)
    assert request.method == "GET"
    assert request.target == "/chat?room=lobby"
    assert request.version == "HTTP/1.1"
    assert request.headers == [
        ("host", "example.com"),
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]
    assert request.body_kind == "none"
    assert request.content_length is None


def test_parse_head_accepts_bytes_as_well_as_bytearray() -> None:
    assert parse_head(WS_HEAD, LIMITS) == parse(WS_HEAD)


def test_header_names_are_lower_cased_and_values_stripped_of_ows() -> None:
    request = parsed(head("X-MiXeD:  \t a  b \t ", "Empty:", "Tight:v"))
    assert request.headers[1:] == [("x-mixed", "a  b"), ("empty", ""), ("tight", "v")]


def test_header_order_and_repeated_fields_are_preserved() -> None:
    request = parsed(head("A: 1", "B: 2", "A: 3"))
    assert request.headers[1:] == [("a", "1"), ("b", "2"), ("a", "3")]


def test_obs_text_in_a_value_is_decoded_as_latin_1() -> None:
    request = parsed(b"GET / HTTP/1.1\r\nHost: h\r\nX: caf\xe9\xff\r\n\r\n")
    assert request.get("x") == "caf\xe9\xff"


def test_htab_inside_a_value_is_allowed() -> None:
    assert parsed(head("X: a\tb")).get("x") == "a\tb"


def test_custom_token_methods_are_accepted() -> None:
    assert parsed(head(request_line="M-SEARCH * HTTP/1.1")).method == "M-SEARCH"


def test_http_1_0_request_needs_no_host() -> None:
    request = parsed(b"GET / HTTP/1.0\r\n\r\n")
    assert request.version == "HTTP/1.0"
    assert request.headers == []


def test_absolute_form_target_is_kept_raw() -> None:
    target = "http://example.com:8080/a%20b?x=1"
    assert parsed(head(request_line=f"GET {target} HTTP/1.1")).target == target


# --- the Request helpers ----------------------------------------------------


def test_get_returns_the_value_of_a_single_field() -> None:
    assert parsed(WS_HEAD).get("upgrade") == "websocket"


def test_get_lower_cases_the_name_it_is_given() -> None:
    assert parsed(WS_HEAD).get("Sec-WebSocket-Version") == "13"


def test_get_joins_repeated_fields_with_a_comma() -> None:
    assert parsed(head("Accept: a", "X: 1", "Accept: b")).get("accept") == "a, b"


def test_get_returns_the_default_when_the_field_is_absent() -> None:
    request = parsed(WS_HEAD)
    assert request.get("origin") is None
    assert request.get("origin", "none") == "none"


def test_has_token_finds_a_token_case_insensitively_in_a_list() -> None:
    request = parsed(WS_HEAD)
    assert request.has_token("connection", "upgrade")
    assert request.has_token("Connection", "KEEP-ALIVE")


def test_has_token_searches_every_repeated_field() -> None:
    assert parsed(head("Connection: close", "Connection: Upgrade")).has_token(
        "connection", "upgrade"
    )


def test_has_token_does_not_match_a_substring() -> None:
    request = parsed(head("Connection: upgrade-later, keep-alive"))
    assert not request.has_token("connection", "upgrade")
    assert not request.has_token("upgrade", "websocket")


def test_http_1_1_keeps_alive_by_default() -> None:
    assert parsed(head()).keep_alive


def test_http_1_1_with_connection_close_does_not_keep_alive() -> None:
    assert not parsed(head("Connection: Upgrade, Close")).keep_alive


def test_http_1_0_does_not_keep_alive_by_default() -> None:
    assert not parsed(b"GET / HTTP/1.0\r\n\r\n").keep_alive


def test_http_1_0_keeps_alive_with_a_keep_alive_token() -> None:
    assert parsed(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive


def test_close_wins_over_keep_alive() -> None:
    data = b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
    assert not parsed(data).keep_alive


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/a/b?x=1&y=2", "/a/b", "x=1&y=2"),
        ("/a?b?c", "/a", "b?c"),
        ("/plain", "/plain", ""),
        ("/empty?", "/empty", ""),
        ("*", "*", ""),
    ],
)
def test_path_and_query_string_split_the_target_at_the_first_question_mark(
    target: str, path: str, query: str
) -> None:
    request = Request("GET", target, "HTTP/1.1", [])
    assert (request.path, request.query_string) == (path, query)


# --- leading empty lines ----------------------------------------------------


def test_leading_empty_lines_are_skipped_and_counted_as_consumed() -> None:
    result = parse(b"\r\n\n\r\n" + WS_HEAD)
    assert result is not None
    assert result[1] == 5 + len(WS_HEAD)
    assert result[0].method == "GET"


def test_a_buffer_of_only_empty_lines_is_incomplete() -> None:
    assert parse(b"\r\n\r\n") is None
    assert parse(b"\r\n\r") is None
    assert parse(b"\n") is None


def test_too_many_leading_empty_lines_is_400() -> None:
    assert refused(b"\r\n" * 20 + WS_HEAD) == HTTPStatus.BAD_REQUEST


# --- incomplete heads and limits --------------------------------------------


def test_every_proper_prefix_of_a_head_is_incomplete() -> None:
    for end in range(len(WS_HEAD)):
        assert parse(WS_HEAD[:end]) is None, end


def test_an_unterminated_request_line_over_the_limit_is_414() -> None:
    limits = HTTPLimits(max_request_line=20)
    assert refused(b"GET /" + b"a" * 30, limits) == HTTPStatus.REQUEST_URI_TOO_LONG


def test_an_unterminated_request_line_at_the_limit_is_incomplete() -> None:
    limits = HTTPLimits(max_request_line=20)
    line = b"GET /" + b"a" * 6 + b" HTTP/1.1"
    assert len(line) == 20
    assert parse(line, limits) is None
    assert parse(line + b"\r", limits) is None


def test_a_complete_request_line_at_the_limit_is_accepted() -> None:
    limits = HTTPLimits(max_request_line=20)
    assert parsed(b"GET /" + b"a" * 6 + b" HTTP/1.1\r\nHost: h\r\n\r\n", limits)


def test_request_line_too_long_is_414() -> None:
    limits = HTTPLimits(max_request_line=20)
    data = b"GET /" + b"a" * 7 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert refused(data, limits) == HTTPStatus.REQUEST_URI_TOO_LONG
    assert refused(data[:25], limits) == HTTPStatus.REQUEST_URI_TOO_LONG


def test_a_bare_lf_request_line_over_the_limit_in_an_incomplete_head_is_414() -> None:
    limits = HTTPLimits(max_request_line=20)
    data = b"GET /" + b"a" * 7 + b" HTTP/1.1\nHost: h\n"
    assert refused(data, limits) == HTTPStatus.REQUEST_URI_TOO_LONG


def test_an_unterminated_head_over_max_head_is_431() -> None:
    limits = HTTPLimits(max_head=100)
    data = b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 20
    assert refused(data, limits) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_a_complete_head_over_max_head_is_431() -> None:
    limits = HTTPLimits(max_head=100)
    data = head(*["X: 1"] * 20)
    assert refused(data, limits) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_a_head_of_exactly_max_head_bytes_is_accepted() -> None:
    data = head("X: 1")
    assert parsed(data, HTTPLimits(max_head=len(data)))
    status = refused(data, HTTPLimits(max_head=len(data) - 1))
    assert status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_a_completed_header_line_over_the_limit_in_an_incomplete_head_is_431() -> None:
    limits = HTTPLimits(max_header_line=10)
    data = b"GET / HTTP/1.1\r\nX: 0123456789\r\nY"
    assert refused(data, limits) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_an_unfinished_long_header_line_is_not_judged_yet() -> None:
    limits = HTTPLimits(max_header_line=10)
    assert parse(b"GET / HTTP/1.1\r\nX: 0123456789", limits) is None


def test_header_line_too_long_is_431() -> None:
    limits = HTTPLimits(max_header_line=10)
    status = refused(head("X: 01234567"), limits)
    assert status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_a_header_line_at_the_limit_is_accepted() -> None:
    assert parsed(head("X: 0123456"), HTTPLimits(max_header_line=10)).get("x")


def test_too_many_headers_is_431() -> None:
    limits = HTTPLimits(max_headers=5)
    assert parsed(head(*["X: 1"] * 4), limits)
    status = refused(head(*["X: 1"] * 5), limits)
    assert status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_too_many_headers_in_an_incomplete_head_is_431() -> None:
    limits = HTTPLimits(max_headers=5)
    data = b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 6
    assert refused(data, limits) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


# --- incremental feeding and pipelining -------------------------------------

VALID_HEADS = [
    WS_HEAD,
    head("Content-Length: 5", request_line="POST /upload HTTP/1.1"),
    head("Transfer-Encoding: chunked", request_line="PUT /x HTTP/1.1"),
    b"GET / HTTP/1.1\nHost: h\nX: 1\n\n",
    b"GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\n",
    b"\r\n\r\nGET / HTTP/1.0\r\n\r\n",
]


@pytest.mark.parametrize("data", VALID_HEADS)
def test_feeding_byte_by_byte_gives_the_same_result_as_all_at_once(
    data: bytes,
) -> None:
    assert feed_byte_by_byte(data) == parse(data)


SHORT_REQUEST_LINE = HTTPLimits(max_request_line=20)


@pytest.mark.parametrize(
    ("data", "limits"),
    [
        (head("Bad Name: x"), LIMITS),
        (head(request_line="GET / HTTP/2.0"), LIMITS),
        (head("X: 0123456789"), HTTPLimits(max_header_line=10)),
        (
            head(request_line="GET /0123456789 HTTP/1.1"),
            HTTPLimits(max_request_line=20),
        ),
        (head(*["X: 1"] * 10), HTTPLimits(max_headers=5)),
        (head(*["X: 1"] * 10), HTTPLimits(max_head=50)),
    ],
)
def test_feeding_byte_by_byte_refuses_with_the_same_status_as_all_at_once(
    data: bytes, limits: HTTPLimits
) -> None:
    expected = refused(data, limits)
    with pytest.raises(HTTPError) as info:
        feed_byte_by_byte(data, limits)
    assert info.value.status == expected


def test_pipelined_requests_are_parsed_one_after_another() -> None:
    second = head(request_line="GET /second HTTP/1.1")
    buf = bytearray(WS_HEAD + second + b"GET /thi")
    first = parse_head(buf, LIMITS)
    assert first is not None
    assert first[1] == len(WS_HEAD)
    del buf[: first[1]]
    next_ = parse_head(buf, LIMITS)
    assert next_ is not None
    assert next_[0].target == "/second"
    del buf[: next_[1]]
    assert buf == b"GET /thi"
    assert parse_head(buf, LIMITS) is None


def test_body_bytes_after_the_head_are_not_consumed() -> None:
    data = head("Content-Length: 4", request_line="POST / HTTP/1.1")
    result = parse(data + b"\r\n\r\nbody")
    assert result is not None
    assert result[1] == len(data)


# --- line endings -----------------------------------------------------------


def test_bare_lf_line_endings_are_accepted() -> None:
    request = parsed(b"GET / HTTP/1.1\nHost: h\nX-A:  1 \n\n")
    assert request.headers == [("host", "h"), ("x-a", "1")]


def test_a_bare_lf_blank_line_ends_the_head_before_a_later_crlfcrlf() -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\n\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    result = parse(data)
    assert result is not None
    assert result[1] == data.index(b"\n\n") + 2
    assert result[0].target == "/"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\r\n\r\n",
        b"GET / HTTP/1.1\rHost: h\r\n\r\n",
        b"GET /\r HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\r\n\r\n",
    ],
)
def test_a_bare_cr_is_400(data: bytes) -> None:
    assert refused(data) == HTTPStatus.BAD_REQUEST


# --- the request line -------------------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [
        "GET /",
        "GET",
        "GET  / HTTP/1.1",
        "GET / HTTP/1.1 ",
        " GET / HTTP/1.1",
        "GET /a b HTTP/1.1",
        "GET\t/ HTTP/1.1",
        "GET /\ta HTTP/1.1",
        "GE(T / HTTP/1.1",
        "G\xc9T / HTTP/1.1",
        "GET / http/1.1",
        "GET / HTTP/1",
        "GET / HTTP/1.1.1",
        "GET / HTTP/10.0",
        "GET / HTTPS/1.1",
    ],
)
def test_a_malformed_request_line_is_400(request_line: str) -> None:
    assert refused(head(request_line=request_line)) == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize("control", [b"\x00", b"\x01", b"\x1f", b"\x7f", b"\x0b"])
def test_a_control_character_in_the_target_is_400(control: bytes) -> None:
    data = b"GET /a" + control + b"b HTTP/1.1\r\nHost: h\r\n\r\n"
    assert refused(data) == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/3.0"])
def test_an_unsupported_http_version_is_505(version: str) -> None:
    status = refused(head(request_line=f"GET / {version}"))
    assert status == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED


# --- header lines -----------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "No colon here",
        ": empty name",
        "Name : space before colon",
        "Name\t: tab before colon",
        "Bad(name): x",
        "Bad name: x",
        "Caf\xe9: x",
    ],
)
def test_a_malformed_header_line_is_400(line: str) -> None:
    assert refused(head(line)) == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize("fold", [" continued", "\tcontinued"])
def test_obs_fold_is_400(fold: str) -> None:
    assert refused(head("X: first", fold)) == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize(
    "control", [b"\x00", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x7f"]
)
def test_a_control_character_in_a_value_is_400(control: bytes) -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX: a" + control + b"b\r\n\r\n"
    assert refused(data) == HTTPStatus.BAD_REQUEST


def test_http_error_carries_status_and_reason() -> None:
    with pytest.raises(HTTPError) as info:
        parse(head("No colon"))
    assert info.value.status is HTTPStatus.BAD_REQUEST
    assert "colon" in info.value.reason
    assert str(info.value).startswith("400 Bad Request")


# --- body framing -----------------------------------------------------------


def post(*lines: str, version: str = "HTTP/1.1") -> bytes:
    return head(*lines, request_line=f"POST /submit {version}")


def test_no_framing_headers_means_no_body() -> None:
    request = parsed(post())
    assert (request.body_kind, request.content_length) == ("none", None)


def test_content_length_means_a_body_of_that_length() -> None:
    request = parsed(post("Content-Length: 42"))
    assert (request.body_kind, request.content_length) == ("length", 42)


def test_content_length_with_leading_zeros_is_its_decimal_value() -> None:
    assert parsed(post("Content-Length: 007")).content_length == 7


@pytest.mark.parametrize(
    "lines",
    [
        ("Content-Length: 5", "Content-Length: 5"),
        ("Content-Length: 5, 5",),
        ("Content-Length: 5 , 05",),
    ],
)
def test_repeated_identical_content_lengths_are_accepted(lines: tuple[str]) -> None:
    assert parsed(post(*lines)).content_length == 5


@pytest.mark.parametrize(
    "lines",
    [
        ("Content-Length: 5", "Content-Length: 6"),
        ("Content-Length: 5, 6",),
        ("Content-Length: 5,",),
        ("Content-Length:",),
        ("Content-Length: -1",),
        ("Content-Length: +5",),
        ("Content-Length: 0x10",),
        ("Content-Length: 1e3",),
        ("Content-Length: 5 5",),
        ("Content-Length: 9223372036854775808",),
        ("Content-Length: " + "9" * 5000,),
    ],
)
def test_bad_or_conflicting_content_length_is_400(lines: tuple[str]) -> None:
    assert refused(post(*lines)) == HTTPStatus.BAD_REQUEST


def test_non_ascii_digits_in_content_length_are_400() -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \xb2\r\n\r\n"
    assert refused(data) == HTTPStatus.BAD_REQUEST


def test_the_largest_content_length_is_accepted() -> None:
    assert parsed(post("Content-Length: 9223372036854775807")).content_length == (
        2**63 - 1
    )


@pytest.mark.parametrize(
    "lines",
    [
        ("Transfer-Encoding: chunked",),
        ("Transfer-Encoding: Chunked",),
        ("Transfer-Encoding: , chunked",),
        ("Transfer-Encoding: ,", "Transfer-Encoding: chunked"),
    ],
)
def test_transfer_encoding_chunked_means_a_chunked_body(lines: tuple[str]) -> None:
    request = parsed(post(*lines))
    assert (request.body_kind, request.content_length) == ("chunked", None)


def test_transfer_encoding_with_content_length_is_400() -> None:
    data = post("Content-Length: 5", "Transfer-Encoding: chunked")
    assert refused(data) == HTTPStatus.BAD_REQUEST


def test_transfer_encoding_in_http_1_0_is_400() -> None:
    data = post("Transfer-Encoding: chunked", version="HTTP/1.0")
    assert refused(data) == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize(
    "value",
    ["gzip", "chunked, gzip", "chunked, chunked", "", " , ", "chun ked", '"chunked"'],
)
def test_transfer_encoding_not_ending_in_one_chunked_is_400(value: str) -> None:
    assert refused(post(f"Transfer-Encoding: {value}")) == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize("value", ["foo", "foo, chunked", "chunked, foo", "identity"])
def test_an_unknown_transfer_coding_is_501(value: str) -> None:
    assert refused(post(f"Transfer-Encoding: {value}")) == HTTPStatus.NOT_IMPLEMENTED


def test_a_known_coding_under_chunked_is_501_since_it_is_not_implemented() -> None:
    status = refused(post("Transfer-Encoding: gzip", "Transfer-Encoding: chunked"))
    assert status == HTTPStatus.NOT_IMPLEMENTED


# --- the Host header ----------------------------------------------------------


def test_http_1_1_without_host_is_400() -> None:
    assert refused(b"GET / HTTP/1.1\r\nX: 1\r\n\r\n") == HTTPStatus.BAD_REQUEST


def test_two_host_headers_are_400() -> None:
    assert refused(head("Host: other")) == HTTPStatus.BAD_REQUEST


def test_two_host_headers_are_400_in_http_1_0_too() -> None:
    data = b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n"
    assert refused(data) == HTTPStatus.BAD_REQUEST


def test_an_empty_host_is_accepted() -> None:
    assert parsed(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").get("host") == ""


# --- chunked bodies -----------------------------------------------------------

CHUNKED = b"5\r\nhello\r\n7;name=value\r\n, world\r\n0\r\n\r\n"


def test_a_chunked_body_is_decoded() -> None:
    assert decode_all(CHUNKED) == (b"hello, world", b"")


def test_chunk_extensions_are_ignored() -> None:
    data = b'3 ;a=1;b="x;y" \t;c\r\nabc\r\n0;last\r\n\r\n'
    assert decode_all(data) == (b"abc", b"")


def test_chunk_sizes_are_hexadecimal_in_either_case() -> None:
    data = b"a\r\n" + b"x" * 10 + b"\r\n1F\r\n" + b"y" * 31 + b"\r\n0\r\n\r\n"
    assert decode_all(data) == (b"x" * 10 + b"y" * 31, b"")


def test_trailers_are_read_and_ignored() -> None:
    data = b"3\r\nabc\r\n0\r\nX-Checksum: 1234\r\nX-Other:\tv\r\n\r\n"
    assert decode_all(data) == (b"abc", b"")


def test_bytes_after_the_body_are_left_unused() -> None:
    data = CHUNKED + b"GET /next HTTP/1.1\r\n"
    assert decode_all(data) == (b"hello, world", b"GET /next HTTP/1.1\r\n")


def test_bytes_fed_after_the_end_go_to_unused() -> None:
    decoder = ChunkedDecoder(LIMITS)
    decoder.feed(CHUNKED + b"GE")
    assert decoder.done
    assert decoder.feed(b"T /") == []
    assert decoder.unused == b"GET /"


def test_the_decoder_is_not_done_before_the_last_chunk() -> None:
    decoder = ChunkedDecoder(LIMITS)
    assert decoder.feed(CHUNKED[:-2]) == [b"hello", b", world"]
    assert not decoder.done
    assert decoder.feed(b"") == []
    assert decoder.feed(CHUNKED[-2:]) == []
    assert decoder.done


@pytest.mark.parametrize("split", range(len(CHUNKED) + 1))
def test_a_chunked_body_split_at_any_byte_decodes_the_same(split: int) -> None:
    decoder = ChunkedDecoder(LIMITS)
    pieces = decoder.feed(CHUNKED[:split]) + decoder.feed(CHUNKED[split:] + b"NEXT")
    assert b"".join(pieces) == b"hello, world"
    assert decoder.done
    assert decoder.unused == b"NEXT"


def test_a_chunked_body_fed_byte_by_byte_decodes_the_same() -> None:
    data = b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\nrest"
    decoder = ChunkedDecoder(LIMITS)
    pieces = []
    for i in range(len(data)):
        pieces += decoder.feed(data[i : i + 1])
    assert b"".join(pieces) == b"abc"
    assert decoder.unused == b"rest"


def test_large_chunk_data_is_passed_through_in_pieces() -> None:
    decoder = ChunkedDecoder(LIMITS)
    assert decoder.feed(b"10000\r\n") == []
    data = bytes(range(256)) * 256
    out = []
    for i in range(0, len(data), 1000):
        out += decoder.feed(data[i : i + 1000])
    out += decoder.feed(b"\r\n0\r\n\r\n")
    assert b"".join(out) == data
    assert decoder.done


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n",
        b"g\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-1\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5_0\r\n",
        b"1" * 17 + b"\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\r\nhello\r\n0\r\n\r\n",
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5;a\x00\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r\r\n0\r\n\r\n",
        b"5\r\nhelloo",
        b"0\r\nno colon\r\n\r\n",
        b"0\r\n folded: x\r\n\r\n",
        b"0\r\nX: 1\n\r\n",
        b"0\r\n\n",
        b"0\r\nX: a\x00b\r\n\r\n",
    ],
)
def test_malformed_chunked_framing_is_400(data: bytes) -> None:
    assert decode_refused(data) == HTTPStatus.BAD_REQUEST


def test_an_overlong_chunk_size_line_is_400_even_before_its_end() -> None:
    limit = LIMITS.max_chunk_line
    long_ext = b"5;" + b"x" * (limit - 2)
    assert decode_all(long_ext + b"\r\nhello\r\n0\r\n\r\n") == (b"hello", b"")
    assert decode_refused(long_ext + b"x\r\nhello\r\n") == HTTPStatus.BAD_REQUEST
    assert decode_refused(long_ext + b"xxx") == HTTPStatus.BAD_REQUEST


def test_trailers_over_max_head_are_431() -> None:
    decoder = ChunkedDecoder(HTTPLimits(max_head=64))
    decoder.feed(b"0\r\n" + b"X: 123456789\r\n" * 4)
    with pytest.raises(HTTPError) as info:
        decoder.feed(b"X: 123456789\r\n")
    assert info.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_unterminated_trailers_over_max_head_are_431() -> None:
    decoder = ChunkedDecoder(HTTPLimits(max_head=64))
    with pytest.raises(HTTPError) as info:
        decoder.feed(b"0\r\nX: " + b"y" * 100)
    assert info.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_a_body_at_max_body_is_accepted() -> None:
    assert decode_all(CHUNKED, max_body=12) == (b"hello, world", b"")


def test_a_body_over_max_body_is_413_as_soon_as_the_chunk_is_announced() -> None:
    decoder = ChunkedDecoder(LIMITS, max_body=12)
    assert decoder.feed(b"5\r\nhello\r\n") == [b"hello"]
    with pytest.raises(HTTPError) as info:
        decoder.feed(b"8\r\n")
    assert info.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


# --- status lines and error responses -----------------------------------------


def test_status_line_uses_the_http_status_phrase() -> None:
    assert status_line(HTTPStatus.NOT_FOUND) == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(101) == b"HTTP/1.1 101 Switching Protocols\r\n"


@pytest.mark.parametrize("status", list(HTTPStatus))
def test_status_line_matches_http_status_for_every_code(status: HTTPStatus) -> None:
    expected = f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
    assert status_line(status) == expected
    assert status_line(status.value) == expected


def test_status_line_honours_the_version() -> None:
    assert status_line(200, "HTTP/1.0") == b"HTTP/1.0 200 OK\r\n"


def test_status_line_is_cached() -> None:
    assert status_line(HTTPStatus.OK) is status_line(200)


def test_status_line_of_an_unregistered_code_has_an_empty_phrase() -> None:
    assert status_line(299) == b"HTTP/1.1 299 \r\n"


@pytest.mark.parametrize(("status", "version"), [(42, "HTTP/1.1"), (200, "HTTP/x")])
def test_status_line_rejects_invalid_codes_and_versions(
    status: int, version: str
) -> None:
    with pytest.raises(ValueError, match="invalid"):
        status_line(status, version)


def split_response(response: bytes) -> tuple[list[bytes], bytes]:
    head_, _, body = response.partition(b"\r\n\r\n")
    return head_.split(b"\r\n"), body


def test_error_response_is_a_complete_closing_text_response() -> None:
    lines, body = split_response(error_response(HTTPStatus.BAD_REQUEST))
    assert lines == [
        b"HTTP/1.1 400 Bad Request",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: 12",
        b"Connection: close",
    ]
    assert body == b"Bad Request\n"


def test_error_response_appends_extra_headers() -> None:
    response = error_response(
        HTTPStatus.UPGRADE_REQUIRED, [("Sec-WebSocket-Version", "13")]
    )
    lines, _ = split_response(response)
    assert lines[0] == b"HTTP/1.1 426 Upgrade Required"
    assert lines[-1] == b"Sec-WebSocket-Version: 13"


def test_error_response_encodes_a_custom_body_as_utf_8() -> None:
    lines, body = split_response(error_response(HTTPStatus.FORBIDDEN, body="nön\n"))
    assert body == "nön\n".encode()
    assert b"Content-Length: 5" in lines


@pytest.mark.parametrize(
    ("name", "value"),
    [("X", "a\r\nInjected: 1"), ("X", "a\nb"), ("Bad Name", "v"), ("X", "a\x00")],
)
def test_error_response_refuses_header_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="invalid header"):
        error_response(HTTPStatus.BAD_REQUEST, [(name, value)])


def test_get_joins_repeated_fields_and_forget_headers_drops_them() -> None:
    parsed = parse_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n", HTTPLimits()
    )
    assert parsed is not None
    request = parsed[0]
    assert request.get("X-A") == "1, 2"
    assert request.get("missing", "d") == "d"
    request.forget_headers()
    assert request.get("x-a") is None
    assert request.headers == []
