"""Unit tests for geows.proxy_protocol, by section of haproxy's proxy-protocol.txt.

Version 2 headers are built here by hand with struct, so that the parser is
checked against the spec rather than against encode_v2.
"""

from __future__ import annotations

import struct

import pytest

from geows.proxy_protocol import (
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    ProxyInfo,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    needed,
    parse,
)

# What may follow a header: the caller's, never the parser's.
CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"

V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:DB8::1 2001:db8:0:0:0:0:0:2 1 65535\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
# Section 2.1's worst case, 107 bytes with the CRLF.
V1_LONGEST = (
    b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
)


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, size) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


IPV4_BLOCK = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1234, 80)
IPV6_BLOCK = (
    bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("20010db8000000000000000000000002")
    + struct.pack("!HH", 4321, 443)
)
UNIX_BLOCK = b"/run/a.sock".ljust(108, b"\x00") + b"/run/b.sock".ljust(108, b"\x00")
TLVS = tlv(0x01, b"http/1.1") + tlv(0x02, b"example.com") + tlv(0x04, b"\x00" * 5)

V2_TCP4 = v2(0x21, 0x11, IPV4_BLOCK + TLVS)
V2_TCP6 = v2(0x21, 0x21, IPV6_BLOCK)
V2_UNIX = v2(0x21, 0x31, UNIX_BLOCK + TLVS)
V2_LOCAL = v2(0x20, 0x00, b"")

ALL_VALID = [
    V1_TCP4,
    V1_TCP6,
    V1_UNKNOWN,
    V1_LONGEST,
    V2_TCP4,
    V2_TCP6,
    V2_UNIX,
    V2_LOCAL,
]


def parsed(data: bytes) -> tuple[ProxyInfo, int]:
    result = parse(data)
    assert result is not None
    return result


def refused(data: bytes) -> str:
    with pytest.raises(ProxyProtocolError) as info:
        parse(data)
    return info.value.reason


# --- 2.1 version 1 ---------------------------------------------------------------


def test_a_v1_tcp4_line_gives_source_and_destination():
    info, consumed = parsed(V1_TCP4)
    assert info == ProxyInfo(
        ("192.168.0.1", 56324), ("192.168.0.11", 443), version=1, local=False
    )
    assert consumed == len(V1_TCP4)


def test_a_v1_tcp6_line_gives_canonical_addresses():
    info, _ = parsed(V1_TCP6)
    assert info.source == ("2001:db8::1", 1)
    assert info.destination == ("2001:db8::2", 65535)


def test_a_v1_unknown_line_is_local_without_addresses():
    assert parsed(V1_UNKNOWN) == (ProxyInfo(None, None, 1, True), 15)


def test_a_v1_unknown_line_ignores_anything_before_its_crlf():
    info, consumed = parsed(V1_LONGEST)
    assert info == ProxyInfo(None, None, 1, True)
    assert consumed == 107


def test_ports_0_and_65535_are_valid():
    info, _ = parsed(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n")
    assert info.source == ("0.0.0.0", 0)
    assert info.destination == ("255.255.255.255", 65535)


@pytest.mark.parametrize("after", [CLIENT_HELLO, HTTP_REQUEST, b"\r\n", b""])
@pytest.mark.parametrize("header", ALL_VALID)
def test_the_bytes_after_the_header_are_left_to_the_caller(header, after):
    info, consumed = parsed(header + after)
    assert consumed == len(header)
    assert parsed(header) == (info, consumed)


@pytest.mark.parametrize("header", ALL_VALID)
def test_every_split_of_a_header_is_incomplete_until_its_last_byte(header):
    for i in range(len(header)):
        assert parse(header[:i]) is None, i
    assert parse(header) is not None


def test_parse_accepts_bytearray_and_memoryview():
    assert parsed(bytearray(V2_TCP4))[1] == len(V2_TCP4)  # type: ignore[arg-type]
    assert parsed(memoryview(V1_TCP4))[1] == len(V1_TCP4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # no header at all
        b"\x16\x03\x01",  # TLS straight away
        b"PROXX",
        b"proxy TCP4",
        b"PROXY  TCP4",
        b"PROXY TCP5",
        b"PROXY UDP4",
        b"PROXY UNKNOWNX",
        b"PROXY TCP4 1.2.3.a",  # a letter cannot be in a TCP4 line
        b"PROXY TCP6 ::1%eth0",  # no scope ids
        b"PROXY TCP6 ::ffff:1.2.3.4",  # no dotted quads in TCP6
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3",  # a fifth field
        b"PROXY TCP4 1.2.3.4\n",  # bare LF
        b"PROXY TCP4 1.2.3.4\rx",  # bare CR
        b"PROXY UNKNOWN\n",
    ],
)
def test_v1_input_that_cannot_become_a_header_fails_before_its_crlf(data):
    refused(data)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4\r\n",
        b"PROXY TCP4 \r\n",
        b"PROXY UNKNOW\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # three fields
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # trailing space
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # heading zero in an address
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",  # heading zero in a port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 999999\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",  # IPv6 in a TCP4 line
        b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",  # IPv4 in a TCP6 line
        b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",  # more than 128 bits
        b"PROXY TCP6 12345:: ::1 1 2\r\n",
    ],
)
def test_a_malformed_complete_v1_line_is_refused(line):
    refused(line)


@pytest.mark.parametrize("sign", [b"+", b"-"])
def test_a_signed_port_is_refused(sign):
    refused(b"PROXY TCP4 1.2.3.4 5.6.7.8 " + sign + b"1 2\r\n")


def test_a_v1_line_without_crlf_in_107_bytes_is_refused_as_soon_as_it_cannot_fit():
    def line(length: int) -> bytes:
        return b"PROXY UNKNOWN " + b"x" * (length - 14)

    assert parse(line(105)) is None  # its CRLF still fits in 107
    assert parse(line(105) + b"\r") is None  # and so does its LF
    for too_long in (line(106), line(106) + b"\r", line(200) + b"\r\n"):
        with pytest.raises(ProxyProtocolError, match="107"):
            parse(too_long)


# --- 2.2 version 2 -------------------------------------------------------------


def test_a_v2_proxy_tcp4_header_skips_its_tlvs():
    info, consumed = parsed(V2_TCP4 + CLIENT_HELLO)
    assert info == ProxyInfo(("10.0.0.1", 1234), ("10.0.0.2", 80), 2, False)
    assert consumed == 16 + 12 + len(TLVS)


def test_a_v2_proxy_tcp6_header_gives_canonical_addresses():
    info, consumed = parsed(V2_TCP6)
    assert info == ProxyInfo(("2001:db8::1", 4321), ("2001:db8::2", 443), 2, False)
    assert consumed == 16 + 36


def test_a_v2_udp_header_still_gives_the_addresses():
    info, _ = parsed(v2(0x21, 0x12, IPV4_BLOCK))
    assert info.source == ("10.0.0.1", 1234)


def test_a_v2_unix_header_has_no_ip_endpoint_and_is_not_local():
    info, consumed = parsed(V2_UNIX)
    assert info == ProxyInfo(None, None, 2, False)
    assert consumed == 16 + 216 + len(TLVS)


def test_a_v2_local_header_is_local_without_addresses():
    assert parsed(V2_LOCAL) == (ProxyInfo(None, None, 2, True), 16)


def test_a_v2_local_header_skips_whatever_block_it_carries():
    # Receivers "must not assume zero is presented for LOCAL connections".
    header = v2(0x20, 0x11, IPV4_BLOCK + TLVS)
    assert parsed(header) == (ProxyInfo(None, None, 2, True), len(header))


def test_a_v2_local_header_ignores_its_family_byte():
    assert parsed(v2(0x20, 0xFF, b""))[0].local


@pytest.mark.parametrize("fam", [0x00, 0x01, 0x10, 0x20])
def test_a_v2_proxy_header_with_an_unspec_family_or_transport_has_no_endpoint(fam):
    info, _ = parsed(v2(0x21, fam, IPV4_BLOCK))
    assert info == ProxyInfo(None, None, 2, False)


def test_a_v2_header_of_the_largest_accepted_length_parses():
    header = v2(0x21, 0x11, IPV4_BLOCK + tlv(0x04, b"\x00" * (MAX_V2_LENGTH - 15)))
    assert parsed(header)[1] == 16 + MAX_V2_LENGTH


@pytest.mark.parametrize("position", range(12))
def test_a_wrong_signature_byte_is_refused_at_once(position):
    bad = bytearray(V2_SIGNATURE[: position + 1])
    bad[position] ^= 0x40
    if position == 0:
        bad[0] = 0x0C  # neither "\r" nor "P"
    refused(bytes(bad))


@pytest.mark.parametrize("ver_cmd", [0x11, 0x31, 0x01, 0xF1])
def test_a_v2_version_other_than_2_is_refused_from_the_13th_byte(ver_cmd):
    assert "version" in refused(V2_SIGNATURE + bytes([ver_cmd]))


@pytest.mark.parametrize("ver_cmd", [0x22, 0x2F])
def test_an_unknown_v2_command_is_refused(ver_cmd):
    assert "command" in refused(V2_SIGNATURE + bytes([ver_cmd]))


@pytest.mark.parametrize("fam", [0x41, 0xF1, 0x13, 0x1F])
def test_an_unknown_v2_family_or_transport_is_refused_from_the_14th_byte(fam):
    assert "family" in refused(V2_SIGNATURE + bytes([0x21, fam]))


def test_a_v2_length_over_the_cap_is_refused_before_the_body_arrives():
    assert "length" in refused(v2(0x21, 0x11, b"", length=MAX_V2_LENGTH + 1))
    assert "length" in refused(v2(0x21, 0x11, b"", length=0xFFFF))


@pytest.mark.parametrize(
    ("fam", "size"), [(0x11, 12), (0x12, 12), (0x21, 36), (0x22, 36), (0x31, 216)]
)
def test_a_v2_length_shorter_than_its_addresses_is_refused_at_once(fam, size):
    assert "shorter" in refused(v2(0x21, fam, b"", length=size - 1))
    assert parse(v2(0x21, fam, b"", length=size)) is None  # waits for them


# --- needed() ----------------------------------------------------------------------


def test_needed_on_nothing_is_the_shortest_header():
    assert needed(b"") == len(V1_UNKNOWN) == 15


def test_needed_reads_a_v2_header_in_two_exact_steps():
    buf = b""
    buf += V2_TCP4[: needed(buf)]
    assert needed(buf) == 1  # 15 bytes: one more for the length field
    buf += V2_TCP4[len(buf) : len(buf) + needed(buf)]
    assert len(buf) == 16
    assert needed(buf) == len(V2_TCP4) - 16
    buf += V2_TCP4[len(buf) : len(buf) + needed(buf)]
    assert buf == V2_TCP4
    assert needed(buf) == 0


@pytest.mark.parametrize("header", ALL_VALID)
def test_needed_never_reaches_past_the_header(header):
    for i in range(len(header)):
        more = needed(header[:i])
        assert more > 0, i
        assert i + more <= len(header), i
    assert needed(header) == 0
    assert needed(header + CLIENT_HELLO) == 0


@pytest.mark.parametrize("header", ALL_VALID)
def test_reading_what_needed_says_reaches_the_header_exactly(header):
    buf = b""
    while needed(buf):
        buf += header[len(buf) : len(buf) + needed(buf)]
    assert buf == header


def test_needed_knows_the_shortest_line_of_each_v1_family():
    assert needed(b"PROXY TCP4 ") == 32 - 11
    assert needed(b"PROXY TCP6 ") == 22 - 11
    assert needed(b"PROXY UNKNOWN") == 2


def test_needed_asks_for_one_byte_after_a_final_cr():
    assert needed(V1_TCP4[:-1]) == 1


def test_needed_is_0_when_parse_would_refuse():
    assert needed(b"GET / HTTP/1.1") == 0
    assert needed(V2_SIGNATURE + b"\x11") == 0


# --- encoding --------------------------------------------------------------------


def test_encode_v1_writes_the_spec_example():
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == V1_TCP4


def test_encode_v1_writes_tcp6_and_unknown():
    assert encode_v1(("::1", 1), ("::2", 2)) == b"PROXY TCP6 ::1 ::2 1 2\r\n"
    assert encode_v1(None, None) == V1_UNKNOWN


def test_encode_v2_writes_the_hand_built_headers():
    assert encode_v2(("10.0.0.1", 1234), ("10.0.0.2", 80)) == v2(0x21, 0x11, IPV4_BLOCK)
    assert encode_v2(("2001:db8::1", 4321), ("2001:db8::2", 443)) == V2_TCP6
    assert encode_v2(None, None) == V2_LOCAL


def test_encode_v2_appends_tlvs():
    tlvs = [(0x01, b"http/1.1"), (0x02, b"example.com"), (0x04, b"\x00" * 5)]
    assert encode_v2(("10.0.0.1", 1234), ("10.0.0.2", 80), tlvs) == V2_TCP4


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
def test_encoders_refuse_mixed_families_bad_ports_and_half_endpoints(encode):
    with pytest.raises(ValueError, match="famil"):
        encode(("1.2.3.4", 1), ("::1", 2))
    with pytest.raises(ValueError, match="port"):
        encode(("1.2.3.4", 65536), ("1.2.3.4", 2))
    with pytest.raises(ValueError, match="both"):
        encode(("1.2.3.4", 1), None)
    with pytest.raises(ValueError):  # noqa: PT011 - ipaddress' own message
        encode(("localhost", 1), ("1.2.3.4", 2))
    with pytest.raises(ValueError, match="scope"):
        encode(("fe80::1%eth0", 1), ("fe80::2", 2))


def test_encode_v2_refuses_a_body_over_the_cap():
    with pytest.raises(ValueError, match="over"):
        encode_v2(("1.2.3.4", 1), ("1.2.3.4", 2), [(0x04, b"\x00" * MAX_V2_LENGTH)])


def test_the_error_is_part_of_the_geows_tree():
    from geows.exceptions import GeowsError

    assert issubclass(ProxyProtocolError, GeowsError)
