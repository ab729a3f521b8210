"""Property tests for geows.http: robustness on junk, round trips, chunk splits."""

from __future__ import annotations

from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from geows.http import ChunkedDecoder, HTTPError, HTTPLimits, Request, parse_head
from tests.http_heads import (
    field_values,
    origin_targets,
    ows,
    tokens,
)

LIMITS = HTTPLimits()
# Tiny limits so that random input reaches the limit checks too.
SMALL_LIMITS = HTTPLimits(
    max_request_line=40, max_header_line=30, max_headers=4, max_head=120,
    max_chunk_line=12,
)  # fmt: skip

FRAMING = {"host", "content-length", "transfer-encoding"}

# Fragments that make random heads likely to reach the deeper parsing paths.
HEAD_PIECES = [
    b"GET", b"POST", b" ", b"/", b"?", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b":", b": ", b"\t", b"Host", b"host: h",
    b"Content-Length", b"Transfer-Encoding", b"chunked", b"gzip", b",", b"0",
    b"5", b"-1", b"\x00", b"\x7f", b"\xe9", b"a", b"Connection: close",
]  # fmt: skip
CHUNK_PIECES = [
    b"0", b"5", b"a", b"F", b"10", b";", b"=", b"x", b"\r\n", b"\r", b"\n",
    b"hello", b" ", b"\t", b"T: v", b":", b"\x00", b"-",
]  # fmt: skip

junk = st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from(HEAD_PIECES), max_size=60).map(b"".join),
)
chunk_junk = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(CHUNK_PIECES), max_size=50).map(b"".join),
)


def parse_or_status(data: bytes, limits: HTTPLimits) -> object:
    """parse_head's result, or the status of the HTTPError it raised."""
    try:
        return parse_head(bytearray(data), limits)
    except HTTPError as exc:
        return exc.status


# --- (1) arbitrary input only ever yields None, a request or HTTPError ------


@settings(max_examples=300, deadline=1000)
@given(data=junk, small=st.booleans())
def test_arbitrary_bytes_give_none_a_request_or_http_error(
    data: bytes, small: bool
) -> None:
    limits = SMALL_LIMITS if small else LIMITS
    result = parse_or_status(data, limits)
    if isinstance(result, tuple):
        request, consumed = result
        assert isinstance(request, Request)
        assert 0 < consumed <= len(data)
        # The head alone parses the same, and every shorter prefix is
        # merely incomplete: trailing bytes never change the verdict.
        assert parse_or_status(data[:consumed], limits) == result
        for end in range(consumed):
            assert parse_or_status(data[:end], limits) is None
    else:
        assert result is None or result in {
            400, 414, 431, 501, 505,
        }  # fmt: skip


@settings(max_examples=300, deadline=1000)
@given(data=chunk_junk, cut=st.integers(min_value=0, max_value=300))
def test_arbitrary_chunked_bytes_give_pieces_or_http_error(
    data: bytes, cut: int
) -> None:
    decoder = ChunkedDecoder(SMALL_LIMITS, max_body=64)
    pieces: list[bytes] = []
    status: Optional[int] = None
    try:
        pieces = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
    except HTTPError as exc:
        status = exc.status
    if status is not None:
        assert status in {400, 413, 431}
        return
    assert all(isinstance(piece, bytes) for piece in pieces)
    assert sum(map(len, pieces)) <= 64
    if decoder.done:
        assert data.endswith(decoder.unused)


# --- (2) valid requests round-trip ------------------------------------------

targets = st.one_of(st.just("*"), origin_targets)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, Request]:
    method = draw(tokens)
    target = draw(targets)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    names = tokens.filter(lambda name: name.lower() not in FRAMING)
    headers = draw(st.lists(st.tuples(names, field_values), max_size=12))
    if version == "HTTP/1.1" or draw(st.booleans()):
        at = draw(st.integers(min_value=0, max_value=len(headers)))
        headers.insert(at, (draw(st.sampled_from(["Host", "host", "HOST"])), "h:1"))
    length: Optional[int] = draw(st.none() | st.integers(0, 2**40))
    if length is not None:
        headers.append(("Content-Length", str(length)))
    wire = f"{method} {target} {version}" + draw(st.sampled_from(["\r\n", "\n"]))
    for name, value in headers:
        eol = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
        wire += f"{name}:{draw(ows)}{value}{draw(ows)}{eol}"
    wire += draw(st.sampled_from(["\r\n", "\n"]))
    expected = Request(
        method,
        target,
        version,
        [(name.lower(), value) for name, value in headers],
        "none" if length is None else "length",
        length,
    )
    return wire.encode("latin-1"), expected


@settings(max_examples=250, deadline=1000)
@given(case=requests(), rest=st.binary(max_size=40), split=st.integers(0, 10**6))
def test_valid_requests_round_trip(
    case: tuple[bytes, Request], rest: bytes, split: int
) -> None:
    wire, expected = case
    buf = bytearray(wire + rest)
    assert parse_head(buf, LIMITS) == (expected, len(wire))
    # A head arriving in two pieces is incomplete until its last byte.
    split %= len(wire)
    assert parse_head(buf[:split], LIMITS) is None


# --- (3) chunk splits do not change the decoded body ------------------------


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    body = draw(st.binary(max_size=2000))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    wire = b""
    for start, end in zip([0, *cuts], [*cuts, len(body)]):
        if start == end:
            continue  # a zero-size chunk would end the body
        size = format(end - start, draw(st.sampled_from(["x", "X"])))
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b' ;q="x y"']))
        wire += size.encode() + ext + b"\r\n" + body[start:end] + b"\r\n"
    wire += b"0" + draw(st.sampled_from([b"", b";end"])) + b"\r\n"
    for trailer in draw(st.lists(st.sampled_from([b"T: 1", b"X-Sum:abc"]), max_size=3)):
        wire += trailer + b"\r\n"
    return body, wire + b"\r\n"


@settings(max_examples=250, deadline=1000)
@given(
    case=chunked_bodies(),
    splits=st.lists(st.integers(0, 5000), max_size=10),
    rest=st.binary(max_size=20),
)
def test_chunked_bodies_decode_the_same_however_they_are_split(
    case: tuple[bytes, bytes], splits: list[int], rest: bytes
) -> None:
    body, wire = case
    data = wire + rest
    cuts = sorted({cut % (len(data) + 1) for cut in splits})
    decoder = ChunkedDecoder(LIMITS, max_body=len(body))
    pieces: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        pieces += decoder.feed(data[start:end])
    assert b"".join(pieces) == body
    assert decoder.done
    assert decoder.unused == rest
