"""Property tests for the parsers in front of HTTP: uwsgi packets, PROXY headers.

Both sit at the very start of a connection, before anything is trusted, so
they are checked on three things: valid input round-trips through the
encoders however it is split; arbitrary bytes only ever give None, a result
or the module's own error (never IndexError, struct.error or UnicodeError),
and quickly; and a verdict never depends on bytes that come after it.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Optional, Union

from hypothesis import given, settings
from hypothesis import strategies as st

from geows.http import HTTPError
from geows.proxy_protocol import (
    V2_SIGNATURE,
    ProxyInfo,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    needed,
    parse,
)
from geows.uwsgi_proto import UwsgiLimits, UwsgiRequest, encode_packet, parse_packet

SMALL_UWSGI = UwsgiLimits(max_vars=4, max_packet=60)

# --- uwsgi ---------------------------------------------------------------------

names = st.text(
    st.characters(min_codepoint=0, max_codepoint=127), min_size=1, max_size=20
)
latin1 = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=40)


@st.composite
def var_dicts(draw: st.DrawFn) -> dict[str, str]:
    env = {"REQUEST_METHOD": draw(st.sampled_from(["GET", "POST", "M\xe9THOD"]))}
    extra = draw(st.dictionaries(names, latin1, max_size=40))
    extra.pop("REQUEST_METHOD", None)
    env.update(extra)
    length = draw(st.one_of(st.none(), st.just(""), st.integers(0, 2**40).map(str)))
    if length is not None:
        env["CONTENT_LENGTH"] = length
    return env


@settings(max_examples=300, deadline=1000)
@given(
    env=var_dicts(),
    m2=st.integers(0, 255),
    body=st.binary(max_size=30),
    split=st.integers(0, 10**6),
)
def test_uwsgi_packets_round_trip_however_they_are_split(
    env: dict[str, str], m2: int, body: bytes, split: int
) -> None:
    wire = encode_packet(env, modifier2=m2)
    request, consumed = parse_packet(wire + body)  # type: ignore[misc]
    assert consumed == len(wire)
    assert request == UwsgiRequest(0, m2, env)
    assert list(request.vars) == list(env)  # wire order kept
    # Incomplete until the last byte, wherever the first piece ends.
    assert parse_packet(wire[: split % len(wire)]) is None
    # Re-encoding what was parsed gives the same bytes back.
    assert encode_packet(request.vars, modifier2=m2) == wire


VAR_PIECES = [
    b"\x00", b"\x01", b"\x02", b"\x03", b"\xff", b"\x00\x00", b"\x01\x00",
    b"\x03\x00", b"\x0e\x00REQUEST_METHOD", b"\x03\x00GET", b"A", b"\xe9",
    b"\x0e\x00CONTENT_LENGTH", b"\x02\x00-1", b"\x01\x007",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with a few bytes changed, dropped or added."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "drop", "insert"]))
        if action == "insert" or pos == len(data):
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        elif action == "set":
            data[pos] = draw(st.integers(0, 255))
        else:
            del data[pos]
    return bytes(data)


@st.composite
def uwsgi_junk(draw: st.DrawFn) -> bytes:
    """Random bytes, a mutated packet, or a header over random var pieces."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return draw(mutated(var_dicts().map(encode_packet)))
    data = b"".join(draw(st.lists(st.sampled_from(VAR_PIECES), max_size=30)))
    size = draw(st.one_of(st.just(len(data)), st.integers(0, 0xFFFF)))
    m1 = draw(st.sampled_from([0, 0, 0, 1, 255]))
    return struct.pack("<BHB", m1, size, draw(st.integers(0, 255))) + data


def wire_names(packet: bytes) -> list[bytes]:
    """The var names of a well-formed packet in wire order, repeats included."""
    names = []
    pos = 4
    while pos < len(packet):
        (size,) = struct.unpack_from("<H", packet, pos)
        names.append(packet[pos + 2 : pos + 2 + size])
        pos += 2 + size
        (size,) = struct.unpack_from("<H", packet, pos)
        pos += 2 + size
    return names


@settings(max_examples=200, deadline=1000)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(["HTTP_A", "HTTP_B", "HTTP_COOKIE"]), latin1),
        max_size=20,
    )
)
def test_repeated_header_vars_are_joined_in_wire_order(
    lines: list[tuple[str, str]],
) -> None:
    request, _ = parse_packet(  # type: ignore[misc]
        encode_packet([("REQUEST_METHOD", "GET"), *lines])
    )
    for name in {n for n, _ in lines}:
        assert request.vars[name] == ",".join(v for n, v in lines if n == name)


def uwsgi_verdict(
    data: bytes, limits: UwsgiLimits
) -> Union[int, tuple[UwsgiRequest, int], None]:
    """parse_packet's result, or the status of the HTTPError it raised."""
    try:
        return parse_packet(data, limits)
    except HTTPError as exc:
        status = int(exc.status)
    assert status in {400, 431, 501}
    return status


@settings(max_examples=500, deadline=1000)
@given(data=uwsgi_junk(), small=st.booleans(), more=st.binary(max_size=20))
def test_arbitrary_bytes_give_a_packet_none_or_an_http_error(
    data: bytes, small: bool, more: bytes
) -> None:
    limits = SMALL_UWSGI if small else UwsgiLimits()
    verdict = uwsgi_verdict(data, limits)
    if verdict is None:
        return
    # Bytes arriving later change no verdict already given.
    assert uwsgi_verdict(data + more, limits) == verdict
    if isinstance(verdict, tuple):
        request, consumed = verdict
        assert 4 <= consumed <= len(data)
        again = encode_packet(request.vars, 0, request.modifier2)
        names = wire_names(data[:consumed])
        if len(names) == len(set(names)):
            assert again == data[:consumed]
        else:  # repeated HTTP_* vars were joined: same request, fewer vars
            assert all(n.startswith(b"HTTP_") for n in names if names.count(n) > 1)
            assert parse_packet(again, limits) == (request, len(again))
        assert len(request.vars) <= limits.max_vars
        for end in range(consumed):
            assert uwsgi_verdict(data[:end], limits) is None


# --- PROXY protocol ---------------------------------------------------------------

ports = st.integers(0, 0xFFFF)


@st.composite
def endpoints(draw: st.DrawFn) -> Optional[tuple[tuple[str, int], tuple[str, int]]]:
    version = draw(st.sampled_from([None, 4, 6]))
    if version is None:
        return None
    src, dst = draw(st.lists(st.ip_addresses(v=version), min_size=2, max_size=2))
    return (str(src), draw(ports)), (str(dst), draw(ports))


tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=60)), max_size=6)
after = st.sampled_from(
    [b"", b"\x16\x03\x01\x00\xa5\x01", b"GET / HTTP/1.1\r\n", b"\r\n"]
)


def expected_info(
    pair: Optional[tuple[tuple[str, int], tuple[str, int]]], version: int
) -> ProxyInfo:
    if pair is None:
        return ProxyInfo(None, None, version, True)
    (src, sport), (dst, dport) = pair
    canon = [str(ipaddress.ip_address(a)) for a in (src, dst)]
    return ProxyInfo((canon[0], sport), (canon[1], dport), version, False)


def check_header(header: bytes, info: ProxyInfo, rest: bytes, split: int) -> None:
    assert parse(header + rest) == (info, len(header))
    cut = split % len(header)
    assert parse(header[:cut]) is None
    assert 0 < needed(header[:cut]) <= len(header) - cut
    assert needed(header + rest) == 0


@settings(max_examples=300, deadline=1000)
@given(pair=endpoints(), rest=after, split=st.integers(0, 10**6))
def test_v1_lines_round_trip_however_they_are_split(
    pair: Optional[tuple[tuple[str, int], tuple[str, int]]], rest: bytes, split: int
) -> None:
    header = encode_v1(*pair) if pair else encode_v1(None, None)
    assert len(header) <= 107
    check_header(header, expected_info(pair, 1), rest, split)


@settings(max_examples=300, deadline=1000)
@given(pair=endpoints(), extra=tlvs, rest=after, split=st.integers(0, 10**6))
def test_v2_headers_round_trip_however_they_are_split(
    pair: Optional[tuple[tuple[str, int], tuple[str, int]]],
    extra: list[tuple[int, bytes]],
    rest: bytes,
    split: int,
) -> None:
    header = encode_v2(*pair, extra) if pair else encode_v2(None, None, extra)
    check_header(header, expected_info(pair, 2), rest, split)


PROXY_PIECES = [
    b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b" ", b"1.2.3.4", b"::1", b"0",
    b"65535", b"65536", b"01", b":", b".", b"\r\n", b"\r", b"\n", b"\x00",
    b"\xff", b"a", b"f" * 40,
]  # fmt: skip


@st.composite
def proxy_junk(draw: st.DrawFn) -> bytes:
    """Random bytes, v1-looking pieces, a v2 signature over random bytes, or
    a mutated valid header of either version."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 3:
        pair = draw(endpoints())
        extra = draw(tlvs)
        v1 = encode_v1(*pair) if pair else encode_v1(None, None)
        v2 = encode_v2(*pair, extra) if pair else encode_v2(None, None, extra)
        return draw(mutated(st.sampled_from([v1, v2])))
    if kind == 1:
        return b"".join(draw(st.lists(st.sampled_from(PROXY_PIECES), max_size=20)))
    ver_cmd = draw(st.sampled_from([0x20, 0x21, 0x21, 0x11, 0x22]))
    fam = draw(st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x41]))
    length = draw(st.integers(0, 1100))
    body = draw(st.binary(max_size=300))
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, length) + body


def proxy_verdict(data: bytes) -> Union[str, tuple[ProxyInfo, int], None]:
    """parse's result, or "error" for a ProxyProtocolError."""
    try:
        return parse(data)
    except ProxyProtocolError as exc:
        reason = exc.reason
    assert reason
    return "error"


@settings(max_examples=500, deadline=1000)
@given(data=proxy_junk(), more=st.binary(max_size=20))
def test_arbitrary_bytes_give_a_header_none_or_a_proxy_protocol_error(
    data: bytes, more: bytes
) -> None:
    verdict = proxy_verdict(data)
    wanted = needed(data)
    assert (wanted == 0) == (verdict is not None)
    if verdict is None:
        # A valid prefix: every shorter prefix is one too.
        assert all(proxy_verdict(data[:end]) is None for end in range(len(data)))
        return
    # Fail fast is final, and a header's meaning ignores what follows it.
    assert proxy_verdict(data + more) == verdict
    if isinstance(verdict, tuple):
        _, consumed = verdict
        assert 0 < consumed <= len(data)
        assert proxy_verdict(data[:consumed]) == verdict
        for end in range(consumed):
            assert proxy_verdict(data[:end]) is None
            assert end + needed(data[:end]) <= consumed
