"""Sans-I/O parser for HAProxy's PROXY protocol, versions 1 and 2.

A load balancer in TCP mode (HAProxy ``send-proxy``/``send-proxy-v2``, AWS
NLB, nginx ``proxy_protocol on``, stunnel...) prepends one header to the
connection saying who the client really was, since the server's own peer is
the balancer.  Spec: haproxy's doc/proxy-protocol.txt.

* Version 1 is one US-ASCII line of at most 107 bytes with its CRLF
  (section 2.1)::

      PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\\r\\n
      PROXY UNKNOWN\\r\\n

* Version 2 is binary (section 2.2): a 12-byte signature, a version/command
  byte, a family/transport byte, a big-endian u16 length, then that many
  bytes of addresses followed by TLVs (which this module skips).

Whatever follows the header (a TLS ClientHello, an HTTP request) is the
caller's: :func:`parse` reports how many bytes the header took and
:func:`needed` how many more must arrive at least, so that the I/O layer can
read the header exactly (``MSG_PEEK``) and leave the rest in the socket.

Strictness: anything that cannot become a valid header fails at once with
:class:`ProxyProtocolError` (the spec asks receivers to abort as soon as
possible), e.g. a first byte that starts neither signature.  The receiver
must only accept the header from trusted balancers; that is the I/O layer's
configuration, not this module's.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Union

from geows.exceptions import GeowsError

__all__ = [
    "MAX_V1_LINE",
    "MAX_V2_LENGTH",
    "V2_SIGNATURE",
    "ProxyInfo",
    "ProxyProtocolError",
    "encode_v1",
    "encode_v2",
    "needed",
    "parse",
]

#: Longest v1 line with its CRLF: the "worst case" of section 2.1.
MAX_V1_LINE = 107
#: The 12 bytes every v2 header starts with (section 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Largest v2 length field accepted (bytes after the 16-byte header).  The
#: spec designs headers to fit 536 bytes, but that counts no TLVs: an IPv6
#: block (36) with AUTHORITY (SNI, up to 3+255), UNIQUE_ID (3+128) and an SSL
#: TLV with its sub-TLVs can pass it legitimately.  1024 keeps every such
#: header and still refuses at once a length field that is plainly garbage.
MAX_V2_LENGTH = 1024

Address = tuple[str, int]
_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Buffer = Union[bytes, bytearray, memoryview]

_V1_PREFIX = b"PROXY "
_V2_HEADER = 16
_V2_FIXED = struct.Struct("!BBH")  # ver_cmd, fam, len after the signature
_CMD_LOCAL, _CMD_PROXY = 0, 1
# Address family (high nibble of the 14th byte) -> bytes of its address block.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = range(4)
_ADDRESS_SIZE = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_V4_BLOCK = struct.Struct("!4s4sHH")
_V6_BLOCK = struct.Struct("!16s16sHH")
# Shortest complete v1 line for each family token (section 2.1):
# "PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", "PROXY TCP6 :: :: 0 0\r\n",
# "PROXY UNKNOWN\r\n".  Until the token is known, the shortest of them all.
_V1_SHORTEST = {b"TCP4": 32, b"TCP6": 22, b"UNKNOWN": 15}
_SHORTEST = 15
# Bytes an address or port of each family may use; dots are no IPv6 syntax
# in section 2.1 ("sets of 4 hexadecimal digits"), nor "%" scope ids.
_V1_CHARS = {
    b"TCP4": re.compile(rb"[0-9. ]*"),
    b"TCP6": re.compile(rb"[0-9A-Fa-f: ]*"),
}
_PORT_RE = re.compile(rb"0|[1-9][0-9]{0,4}")  # no heading zeroes, sign or space


@dataclass(frozen=True)
class ProxyInfo:
    """What a PROXY header said about the connection it starts."""

    #: The client's (address, port), or None when the header carries no IP
    #: endpoint (v2 LOCAL, v1 UNKNOWN, AF_UNSPEC, AF_UNIX): then keep the
    #: socket's own peer address.  Addresses are in ipaddress' canonical text.
    source: Optional[Address]
    #: The (address, port) the client connected to, or None as for `source`.
    destination: Optional[Address]
    #: 1 or 2.
    version: int
    #: v2 LOCAL or v1 UNKNOWN: the balancer speaks for itself (a health
    #: check, say), and the real peer address is the one to use.
    local: bool


class ProxyProtocolError(GeowsError):
    """Bytes that cannot become a valid PROXY header; drop the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse(buf: Buffer) -> Optional[tuple[ProxyInfo, int]]:
    """Parse the PROXY header at the start of `buf`.

    Returns None while `buf` is a valid but incomplete header, else the info
    and the header's length in bytes; the bytes after it are not looked at.
    Raises ProxyProtocolError as soon as `buf` cannot start a valid header.
    """
    data = bytes(buf[: _V2_HEADER + MAX_V2_LENGTH])
    if not data:
        return None
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    if data[0] == _V1_PREFIX[0]:
        return _parse_v1(data)
    raise ProxyProtocolError("not a PROXY protocol header")


def needed(buf: Buffer) -> int:
    """How many more bytes must arrive, at least, before parse() can decide.

    The contract, for an I/O layer that reads exactly and must not swallow
    what follows the header: when ``needed(buf)`` is n > 0, ``parse(buf)``
    returns None and no valid header is shorter than ``len(buf) + n``, so
    reading n more bytes never reads past the header.  When it is 0,
    ``parse(buf)`` returns the info or raises.  v2 headers announce their
    length, so reading what this says finds them in two steps; a v1 line
    ends with a CRLF that is only seen when it comes, so there this is a
    lower bound (peek up to 107 bytes and consume what parse() reports).
    """
    try:
        if parse(buf) is not None:
            return 0
    except ProxyProtocolError:
        return 0
    n = len(buf)
    if n == 0:
        return _SHORTEST
    if buf[0] == V2_SIGNATURE[0]:
        if n < _V2_HEADER:
            return _V2_HEADER - n
        length: int = struct.unpack_from("!H", buf, 14)[0]
        return _V2_HEADER + length - n
    family, space, _ = bytes(buf[len(_V1_PREFIX) : MAX_V1_LINE]).partition(b" ")
    shortest = _V1_SHORTEST.get(family, _SHORTEST) if space else _SHORTEST
    # A CRLF must still come: two bytes, or one after a final CR.
    return max(shortest - n, 1 if buf[n - 1] == 13 else 2)


# --- version 1 ------------------------------------------------------------


def _parse_v1(data: bytes) -> Optional[tuple[ProxyInfo, int]]:
    """Section 2.1: one line, "PROXY" SP family [SP src SP dst SP sport SP dport]."""
    window = data[:MAX_V1_LINE]
    eol = window.find(b"\r\n")
    line = window if eol < 0 else window[:eol]
    if eol < 0 and line.endswith(b"\r"):
        line = line[:-1]  # its LF may be next
    if b"\r" in line or b"\n" in line:
        # Section 2.1: a lone CR or LF never ends the line.
        raise ProxyProtocolError("bare CR or LF in a PROXY v1 line")
    _check_v1_prefix(line)
    if eol < 0:
        # The CRLF must end within MAX_V1_LINE bytes of the start.
        if len(window) + (1 if window.endswith(b"\r") else 2) > MAX_V1_LINE:
            raise ProxyProtocolError("PROXY v1 line longer than 107 bytes")
        return None
    family, _, rest = line[len(_V1_PREFIX) :].partition(b" ")
    if family == b"UNKNOWN":
        # "The receiver must ignore anything presented before the CRLF."
        return ProxyInfo(None, None, 1, True), eol + 2
    if family not in _V1_CHARS:
        raise ProxyProtocolError("unknown PROXY v1 family")
    fields = rest.split(b" ")
    if len(fields) != 4:
        raise ProxyProtocolError("PROXY v1 line needs 4 fields after the family")
    src, dst, sport, dport = fields
    version = 4 if family == b"TCP4" else 6
    return (
        ProxyInfo(
            (_v1_address(src, version), _v1_port(sport)),
            (_v1_address(dst, version), _v1_port(dport)),
            1,
            False,
        ),
        eol + 2,
    )


def _check_v1_prefix(line: bytes) -> None:
    """Refuse a line (complete or not) that no valid v1 line starts with."""
    head = line[: len(_V1_PREFIX)]
    if head != _V1_PREFIX[: len(head)]:
        raise ProxyProtocolError("not a PROXY protocol header")
    tail = line[len(_V1_PREFIX) :]
    family, space, rest = tail.partition(b" ")
    if not space:
        # The family so far, maybe all of it ("PROXY UNKNOWN" may end there).
        if not any(token.startswith(family) for token in _V1_SHORTEST):
            raise ProxyProtocolError("unknown PROXY v1 family")
        return
    if family == b"UNKNOWN":
        return
    chars = _V1_CHARS.get(family)
    if chars is None:
        raise ProxyProtocolError("unknown PROXY v1 family")
    if not chars.fullmatch(rest) or rest.count(b" ") > 3:
        raise ProxyProtocolError(f"malformed PROXY v1 {family.decode()} line")


def _v1_address(text: bytes, version: int) -> str:
    """A v1 address of the line's family, in canonical text (section 2.1)."""
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise ProxyProtocolError("malformed address in PROXY v1 line") from None
    if address.version != version:
        raise ProxyProtocolError("PROXY v1 address does not match the family")
    return str(address)


def _v1_port(text: bytes) -> int:
    """A decimal port 0-65535 without heading zeroes (section 2.1)."""
    if not _PORT_RE.fullmatch(text) or int(text) > 0xFFFF:
        raise ProxyProtocolError("malformed port in PROXY v1 line")
    return int(text)


# --- version 2 ------------------------------------------------------------


def _parse_v2(data: bytes) -> Optional[tuple[ProxyInfo, int]]:
    """Section 2.2: signature, ver_cmd, fam, length, addresses, TLVs."""
    sig = data[: len(V2_SIGNATURE)]
    if sig != V2_SIGNATURE[: len(sig)]:
        raise ProxyProtocolError("not a PROXY protocol header")
    n = len(data)
    if n > 12:
        ver_cmd = data[12]
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError(f"PROXY protocol version {ver_cmd >> 4}")
        if ver_cmd & 0xF not in (_CMD_LOCAL, _CMD_PROXY):
            raise ProxyProtocolError(f"unknown PROXY v2 command {ver_cmd & 0xF}")
    local = n > 12 and data[12] & 0xF == _CMD_LOCAL
    # LOCAL ignores the family byte altogether (section 2.2).
    if n > 13 and not local:
        fam = data[13]
        if fam >> 4 not in _ADDRESS_SIZE or fam & 0xF > 2:
            raise ProxyProtocolError(f"unknown PROXY v2 family {fam:#04x}")
    if n < _V2_HEADER:
        return None
    _, fam, length = _V2_FIXED.unpack_from(data, 12)
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError(f"PROXY v2 length {length} over {MAX_V2_LENGTH}")
    family = _AF_UNSPEC if local or fam & 0xF == 0 else fam >> 4
    if length < _ADDRESS_SIZE[family]:
        raise ProxyProtocolError("PROXY v2 length shorter than its addresses")
    end = _V2_HEADER + length
    if n < end:
        return None
    if family == _AF_INET:
        s, d, sport, dport = _V4_BLOCK.unpack_from(data, _V2_HEADER)
        src = (str(ipaddress.IPv4Address(s)), sport)
        dst = (str(ipaddress.IPv4Address(d)), dport)
    elif family == _AF_INET6:
        s, d, sport, dport = _V6_BLOCK.unpack_from(data, _V2_HEADER)
        src = (str(ipaddress.IPv6Address(s)), sport)
        dst = (str(ipaddress.IPv6Address(d)), dport)
    else:
        # AF_UNSPEC, LOCAL: no endpoint.  AF_UNIX: paths, not (address, port).
        return ProxyInfo(None, None, 2, local), end
    return ProxyInfo(src, dst, 2, False), end


# --- encoding -------------------------------------------------------------


def _addresses(
    src: Optional[Address], dst: Optional[Address]
) -> Optional[tuple[_IPAddress, _IPAddress]]:
    """Both addresses parsed and of one family, or None for "no endpoint"."""
    if src is None and dst is None:
        return None
    if src is None or dst is None:
        raise ValueError("give both addresses or neither")
    for host, port in (src, dst):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")
        if "%" in host:
            raise ValueError(f"scoped address {host!r}: the header has no scope")
    a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if a.version != b.version:
        raise ValueError("source and destination of different families")
    return a, b


def encode_v1(src: Optional[Address], dst: Optional[Address]) -> bytes:
    """A v1 line for a TCP connection from `src` to `dst`; UNKNOWN for None."""
    pair = _addresses(src, dst)
    if pair is None or src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    a, b = pair
    return f"PROXY TCP{a.version} {a} {b} {src[1]} {dst[1]}\r\n".encode("ascii")


def encode_v2(
    src: Optional[Address],
    dst: Optional[Address],
    tlvs: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """A v2 header: PROXY over TCP from `src` to `dst`, or LOCAL for None.

    `tlvs` are (type, value) pairs appended after the addresses.
    """
    pair = _addresses(src, dst)
    tail = b"".join(struct.pack("!BH", t, len(v)) + v for t, v in tlvs)
    if pair is None or src is None or dst is None:
        ver_cmd, fam, block = 0x20, 0x00, b""
    elif pair[0].version == 4:
        ver_cmd, fam = 0x21, 0x11
        block = _V4_BLOCK.pack(pair[0].packed, pair[1].packed, src[1], dst[1])
    else:
        ver_cmd, fam = 0x21, 0x21
        block = _V6_BLOCK.pack(pair[0].packed, pair[1].packed, src[1], dst[1])
    body = block + tail
    if len(body) > MAX_V2_LENGTH:
        raise ValueError(f"PROXY v2 header body over {MAX_V2_LENGTH} bytes")
    return V2_SIGNATURE + _V2_FIXED.pack(ver_cmd, fam, len(body)) + body
