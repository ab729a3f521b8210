"""RFC 6455 frames: opcodes, close codes, header parsing, serialization, masking.

Pure functions over bytes; the state that ties frames into messages lives in
:mod:`geows.protocol`.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Optional, Union

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "CloseCode",
    "apply_mask",
    "encode_frame",
    "frame_header",
    "is_valid_close_code",
    "parse_close",
    "serialize_close",
]

# RFC 6455 5.2: opcodes.
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
DATA_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY))
CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

FIN = 0x80
RSV_MASK = 0x70
RSV1 = 0x40
MASK_BIT = 0x80
#: RFC 6455 5.5: control frames carry at most 125 bytes.
MAX_CONTROL_PAYLOAD = 125

BytesLike = Union[bytes, bytearray, memoryview]


class CloseCode(IntEnum):
    """Close codes of RFC 6455 7.4.1 and the IANA registry."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never sent: "the close frame had no code"
    ABNORMAL = 1006  # never sent: "there was no close frame"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


#: Codes a peer may put in a close frame (RFC 6455 7.4.1 plus IANA's
#: 1012-1014); 3000-4999 are for libraries and applications (7.4.2).
_SENDABLE = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire."""
    return code in _SENDABLE or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """Decode a close payload to ``(code, reason)``; 1005 when it is empty.

    Raises ``ValueError`` for a 1-byte payload or a code that may not be sent
    (RFC 6455 5.5.1, 7.4) and ``UnicodeDecodeError`` for a bad reason (1007).
    """
    n = len(payload)
    if n == 0:
        return 1005, ""
    if n == 1:
        raise ValueError("close frame with a 1-byte payload")
    code = (payload[0] << 8) | payload[1]
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}")
    return code, payload[2:].decode("utf-8")


def serialize_close(code: Optional[int], reason: str = "") -> bytes:
    """The payload of a close frame; an empty one when ``code`` is None or 1005."""
    if code is None or code == 1005:
        return b""
    data = struct.pack("!H", code) + reason.encode("utf-8")
    if len(data) > MAX_CONTROL_PAYLOAD:
        # Cut the reason on a character boundary so the frame stays valid.
        data = data[:MAX_CONTROL_PAYLOAD]
        while True:
            try:
                data[2:].decode("utf-8")
                break
            except UnicodeDecodeError:
                data = data[:-1]
    return data


def _apply_mask_py(data: BytesLike, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` (RFC 6455 5.3), as one big integer.

    One int XOR beats a Python loop over bytes by two orders of magnitude.
    """
    n = len(data)
    if n == 0:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


apply_mask = _apply_mask_py
try:  # Optional C speedup with the same signature; the fallback is complete.
    from geows._speedups import apply_mask  # type: ignore[no-redef,import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the build
    pass

_H2 = struct.Struct("!BB")
_H4 = struct.Struct("!BBH")
_H10 = struct.Struct("!BBQ")


def frame_header(opcode: int, length: int, fin: bool = True, rsv: int = 0) -> bytes:
    """The header of an unmasked frame (server to client, RFC 6455 5.2)."""
    b0 = (FIN if fin else 0) | rsv | opcode
    if length < 126:
        return _H2.pack(b0, length)
    if length < 0x10000:
        return _H4.pack(b0, 126, length)
    return _H10.pack(b0, 127, length)


def encode_frame(
    opcode: int,
    payload: BytesLike,
    fin: bool = True,
    rsv: int = 0,
    mask: Optional[bytes] = None,
) -> bytes:
    """A whole frame; masked with ``mask`` when given (client to server)."""
    length = len(payload)
    if mask is None:
        return frame_header(opcode, length, fin, rsv) + payload
    header = bytearray(frame_header(opcode, length, fin, rsv))
    header[1] |= MASK_BIT
    return bytes(header) + mask + apply_mask(payload, mask)


def parse_header(buf: BytesLike, pos: int) -> Optional[tuple[int, int, int, int]]:
    """Decode the frame header at ``buf[pos:]``.

    Returns ``(b0, b1, payload_length, header_length)`` -- the header length
    counts the masking key when the mask bit is set -- or None when the
    header is not complete yet. A 64-bit length with the top bit set is
    returned as is; the caller rejects it (RFC 6455 5.2).
    """
    avail = len(buf) - pos
    if avail < 2:
        return None
    b0 = buf[pos]
    b1 = buf[pos + 1]
    length = b1 & 0x7F
    hlen = 2
    if length == 126:
        if avail < 4:
            return None
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        hlen = 4
    elif length == 127:
        if avail < 10:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        hlen = 10
    if b1 & MASK_BIT:
        hlen += 4
    return b0, b1, length, hlen
