"""Property tests: the C fast path of parse_head agrees with the Python parser.

geows._httpfast.parse_head may leave any head to Python (None), but when it
returns a tuple, the pure-Python parser must accept the same bytes with the
same fields, no body, and the index Request.get would build; and whenever
Python refuses a head or finds it incomplete, C must have returned None.
Checked on (a) arbitrary bytes, (b) generated well-formed heads, which C
must also handle when they are plain and common, with limits drawn around
the head's own sizes, and (c) such heads mutated and truncated, and every
single-byte change of two small heads, exhaustively.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional, Union

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from geows.http import HTTPError, HTTPLimits, Request, _parse_head_py, parse_head
from tests.http_heads import (
    VCHAR,
    FastHead,
    field_values,
    origin_targets,
    ows,
    tokens,
)
from tests.http_heads import fast as fast_head

httpfast = pytest.importorskip("geows._httpfast")


LIMITS = HTTPLimits()
# Tiny limits so that random input reaches the limit checks too.
SMALL_LIMITS = HTTPLimits(
    max_request_line=40, max_header_line=30, max_headers=4, max_head=120
)
MAX_FAST_FIELDS = 64  # MAX_FIELDS in geows/_httpfast.c

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT"]
# Names the C side looks up in its table of known names, plus near misses
# (Host is added on its own, so that most heads have exactly one).
KNOWN_NAMES = [
    "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Origin", "User-Agent",
    "Accept", "Accept-Encoding", "Cookie", "X-Forwarded-For", "Hos", "Hosts",
    "Content-Type", "Content-Lengths", "Transfer-Encodin",
]  # fmt: skip
FRAMING = {"content-length", "transfer-encoding"}

# Fragments that make random heads likely to reach the deeper parsing paths.
HEAD_PIECES = [
    b"GET", b"POST", b" ", b"/", b"?", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b":", b": ", b"\t", b"Host", b"host: h",
    b"Host: h\r\n", b"X: y\r\n", b"Content-Length: 0", b"Transfer-Encoding",
    b"chunked", b"\x00", b"\x7f", b"\xe9", b"a", b"Connection: close\r\n",
]  # fmt: skip
# Bytes that mutations insert or write over, besides any byte at all.
MUTANT_BYTES = [
    b"\r", b"\n", b"\t", b" ", b":", b"\x00", b"\x0b", b"\x7f", b"\x80", b"\xff",
    b"A", b"/", b"(", b"\r\n", b"\r\n\r\n", b"Host: x\r\n",
]  # fmt: skip


# --- the invariant -------------------------------------------------------------


def fast(data: Union[bytes, bytearray], limits: HTTPLimits) -> Optional[FastHead]:
    return fast_head(httpfast, data, limits)


ParseHead = Callable[[bytearray, HTTPLimits], Optional[tuple[Request, int]]]


def outcome(parse: ParseHead, data: bytes, limits: HTTPLimits) -> object:
    """What a parse_head function makes of data: its result or its error."""
    try:
        return parse(bytearray(data), limits)
    except HTTPError as exc:
        return ("HTTPError", exc.status, exc.reason)


def check_agreement(
    data: bytes, limits: HTTPLimits, as_bytearray: bool = False
) -> Optional[FastHead]:
    """Assert the invariant on data; return what C returned."""
    result = fast(bytearray(data) if as_bytearray else data, limits)
    expected = outcome(_parse_head_py, data, limits)
    # Whichever path it takes, the public parse_head answers as Python does.
    assert outcome(parse_head, data, limits) == expected
    if result is None:
        return None  # leaving a head to Python is always allowed
    assert isinstance(expected, tuple)
    assert expected[0] != "HTTPError", expected
    request, consumed = expected
    method, target, version, headers, index, fast_consumed = result
    assert type(method) is str
    assert type(target) is str
    assert type(version) is str
    assert type(headers) is list
    assert all(
        type(pair) is tuple and type(pair[0]) is str and type(pair[1]) is str
        for pair in headers
    )
    assert method == request.method
    assert target == request.target
    assert version == request.version
    assert headers == request.headers
    assert fast_consumed == consumed
    assert request.body_kind == "none"
    assert request.content_length is None
    request.get("host")  # builds the index the pure-Python way
    assert type(index) is dict
    assert index == request._index
    assert list(index) == list(request._index or {})  # same (wire) order
    return result


def tally(result: Optional[FastHead]) -> None:
    """Count, for --hypothesis-show-statistics, how often C handled a head."""
    event("C handled it" if result is not None else "C left it to Python")


# --- (a) arbitrary bytes ---------------------------------------------------------

junk = st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from(HEAD_PIECES), max_size=60).map(b"".join),
    st.lists(st.sampled_from(HEAD_PIECES), max_size=40).map(
        lambda pieces: b"GET / HTTP/1.1\r\n" + b"".join(pieces)
    ),
)


@settings(max_examples=500, deadline=1000)
@given(data=junk, small=st.booleans(), as_bytearray=st.booleans())
def test_on_arbitrary_bytes_c_agrees_or_leaves_it_to_python(
    data: bytes, small: bool, as_bytearray: bool
) -> None:
    tally(check_agreement(data, SMALL_LIMITS if small else LIMITS, as_bytearray))


# --- (b) well-formed heads -------------------------------------------------------

targets = st.one_of(
    st.just("*"),
    origin_targets,
    st.text(VCHAR, min_size=1, max_size=20).map(lambda t: "http://h" + t),
)
CASES: list[Callable[[str], str]] = [
    str.lower, str.upper, str.title, str.swapcase, lambda name: name,
]  # fmt: skip
any_case = st.sampled_from(CASES)
known_names = st.builds(
    lambda name, case: case(name), st.sampled_from(KNOWN_NAMES), any_case
)
names = st.one_of(tokens, known_names)


@st.composite
def well_formed_heads(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A head the Python parser accepts (unless Host is missing or repeated,
    or Transfer-Encoding comes in HTTP/1.0), and whether it is plain and
    common enough that C must handle it."""
    method = draw(st.one_of(st.sampled_from(METHODS), tokens))
    target = draw(targets)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    many = draw(st.integers(0, 100)) == 0  # sometimes more than C takes
    fields = draw(
        st.lists(
            st.tuples(names, field_values),
            min_size=60 if many else 0,
            max_size=70 if many else 12,
        )
    )
    # Hosts: mostly one; hypothesis favours the first choice.
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        at = draw(st.integers(min_value=0, max_value=len(fields)))
        fields.insert(at, (draw(any_case)("Host"), "h:1"))
    if draw(st.integers(0, 9)) == 0:
        framing = draw(st.sampled_from(["Content-Length", "Transfer-Encoding"]))
        fields.append((framing, "0" if framing == "Content-Length" else "chunked"))
    bare_lf = draw(st.integers(0, 9)) == 0  # sometimes one line ends in LF
    eols = ["\r\n"] * (len(fields) + 2)
    if bare_lf:
        eols[draw(st.integers(0, len(eols) - 1))] = "\n"
    wire = f"{method} {target} {version}{eols[0]}"
    for (name, value), eol in zip(fields, eols[1:]):
        wire += f"{name}:{draw(ows)}{value}{draw(ows)}{eol}"
    wire += eols[-1]
    lowered = [name.lower() for name, _ in fields]
    hosts = lowered.count("host")
    common = (
        not bare_lf
        and (hosts == 1 or (hosts == 0 and version == "HTTP/1.0"))
        and not FRAMING & set(lowered)
        and len(fields) <= MAX_FAST_FIELDS
    )
    return wire.encode("latin-1"), common


def sizes(wire: bytes) -> tuple[int, int, int, int]:
    """The limits a head needs: request line, longest field line, fields, head."""
    lines = wire.split(b"\n")[:-2]  # the lines before the blank line
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    longest = max(map(len, lines[1:]), default=0)
    return len(lines[0]), longest, len(lines) - 1, len(wire)


# Per limit: exactly what the head needs, one below or above, or the default
# (None); half the time all four are the defaults, so that most heads fit.
slacks = st.one_of(
    st.just([None] * 4),
    st.lists(st.sampled_from([None, 0, -1, 1]), min_size=4, max_size=4),
)


def limits_around(wire: bytes, slacks: list[Optional[int]]) -> HTTPLimits:
    defaults = (LIMITS.max_request_line, LIMITS.max_header_line,
                LIMITS.max_headers, LIMITS.max_head)  # fmt: skip
    values = [
        default if s is None else max(size + s, 0)
        for size, s, default in zip(sizes(wire), slacks, defaults)
    ]
    return HTTPLimits(*values)


@settings(max_examples=500, deadline=1000)
@given(
    case=well_formed_heads(),
    rest=st.binary(max_size=40),
    slacks=slacks,
    as_bytearray=st.booleans(),
)
def test_on_well_formed_heads_c_agrees_and_handles_the_common_ones(
    case: tuple[bytes, bool],
    rest: bytes,
    slacks: list[Optional[int]],
    as_bytearray: bool,
) -> None:
    wire, common = case
    limits = limits_around(wire, slacks)
    result = check_agreement(wire + rest, limits, as_bytearray)
    tally(result)
    python = outcome(_parse_head_py, wire + rest, limits)
    if common and isinstance(python, tuple) and python[0] != "HTTPError":
        assert result is not None, "a plain common head was left to Python"
        assert result[5] == len(wire)


# --- (c) well-formed heads mutated and truncated -------------------------------

mutations = st.lists(
    st.tuples(
        st.sampled_from(["replace", "insert", "delete"]),
        st.integers(min_value=0, max_value=10**6),  # position, modulo the length
        st.one_of(st.sampled_from(MUTANT_BYTES), st.binary(min_size=1, max_size=1)),
    ),
    min_size=1,
    max_size=3,
)


def mutate(data: bytes, changes: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, position, piece in changes:
        at = position % (len(buf) + 1)
        if kind == "insert":
            buf[at:at] = piece
        elif kind == "replace":
            buf[at : at + len(piece)] = piece
        else:
            del buf[at : at + 1]
    return bytes(buf)


# Mostly heads C handles before the mutation, so that a mutation's effect
# on an otherwise acceptable head is what gets tested.
common_heads = well_formed_heads().filter(lambda case: case[1])


@settings(max_examples=500, deadline=1000)
@given(
    case=common_heads,
    changes=mutations,
    small=st.booleans(),
    as_bytearray=st.booleans(),
)
def test_on_mutated_heads_c_agrees_or_leaves_it_to_python(
    case: tuple[bytes, bool],
    changes: list[tuple[str, int, bytes]],
    small: bool,
    as_bytearray: bool,
) -> None:
    wire, _ = case
    limits = SMALL_LIMITS if small else LIMITS
    tally(check_agreement(mutate(wire, changes), limits, as_bytearray))


@settings(max_examples=300, deadline=1000)
@given(case=well_formed_heads(), cut=st.integers(min_value=0, max_value=10**6))
def test_on_truncated_heads_c_returns_none(case: tuple[bytes, bool], cut: int) -> None:
    wire, _ = case
    data = wire[: cut % len(wire)]  # every proper prefix is incomplete
    assert check_agreement(data, LIMITS) is None


@pytest.mark.parametrize(
    "wire",
    [
        b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-A: 1 \t\r\nx-a:\xe92\r\n\r\n",
        b"PUT * HTTP/1.0\r\nSec-WebSocket-Key:k\r\n\r\n",
    ],
)
def test_every_single_byte_change_of_a_head_agrees(wire: bytes) -> None:
    """Exhaustive: each byte value written over, or inserted at, each
    position, and each byte deleted."""
    assert check_agreement(wire, LIMITS) is not None
    for at in range(len(wire) + 1):
        check_agreement(wire[:at] + wire[at + 1 :], LIMITS)
        for byte in range(256):
            piece = bytes([byte])
            check_agreement(wire[:at] + piece + wire[at + 1 :], LIMITS)
            check_agreement(wire[:at] + piece + wire[at:], LIMITS)
