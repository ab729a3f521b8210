"""The opening handshake (RFC 6455 4.2): validate an upgrade, build the 101.

Works on a header lookup function, so it serves the HTTP parser, a WSGI
environ and the uwsgi protocol alike; refusals are ``InvalidHandshake``
carrying an ``http.HTTPStatus``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from http import HTTPStatus
from typing import Callable, Optional

from geows.exceptions import InvalidHandshake

__all__ = [
    "GUID",
    "accept_key",
    "check_request",
    "has_token",
    "response_headers",
    "select_subprotocol",
]

#: RFC 6455 1.3: the GUID appended to the client's key.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

HeaderGetter = Callable[[str], Optional[str]]


def has_token(value: Optional[str], token: str) -> bool:
    """Whether a comma-separated header ``value`` holds ``token`` (any case)."""
    if not value:
        return False
    token = token.lower()
    value = value.lower()
    if value == token:  # the common case: one token, nothing to split
        return True
    return any(part.strip() == token for part in value.split(","))


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client ``Sec-WebSocket-Key`` (4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def check_request(
    method: str,
    version: str,
    get: HeaderGetter,
    *,
    has_body: bool = False,
) -> str:
    """Validate an upgrade request (RFC 6455 4.2.1); return its key.

    ``get(name)`` returns a header's value (names in lower case) or None.
    Raises ``InvalidHandshake`` with 400, 405 or 426 (with the version we
    speak, 4.4).
    """
    if method != "GET":
        raise InvalidHandshake(
            "WebSocket upgrade needs GET",
            HTTPStatus.METHOD_NOT_ALLOWED,
            [("Allow", "GET")],
        )
    if version != "HTTP/1.1":
        raise InvalidHandshake("WebSocket upgrade needs HTTP/1.1")
    if not get("host"):
        raise InvalidHandshake("missing Host")  # 4.2.1 item 2
    if not has_token(get("upgrade"), "websocket"):
        raise InvalidHandshake(
            "missing Upgrade: websocket",
            HTTPStatus.UPGRADE_REQUIRED,
            [("Upgrade", "websocket"), ("Connection", "Upgrade")],
        )
    if not has_token(get("connection"), "upgrade"):
        raise InvalidHandshake("missing Connection: upgrade")
    ws_version = get("sec-websocket-version")
    if ws_version is None or ws_version.strip() != "13":
        raise InvalidHandshake(
            f"unsupported Sec-WebSocket-Version {ws_version!r}",
            HTTPStatus.UPGRADE_REQUIRED,
            [("Sec-WebSocket-Version", "13")],
        )
    key = get("sec-websocket-key")
    if key is None:
        raise InvalidHandshake("missing Sec-WebSocket-Key")
    key = key.strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise InvalidHandshake("Sec-WebSocket-Key is not base64 of 16 bytes")
    if has_body:
        raise InvalidHandshake("a WebSocket upgrade request has no body")
    return key


def offered_subprotocols(value: Optional[str]) -> list[str]:
    """The subprotocols a client offered, in its order of preference."""
    if not value:
        return []
    return [p.strip() for p in value.split(",") if p.strip()]


def select_subprotocol(
    offered: Sequence[str], supported: Optional[Sequence[str]]
) -> Optional[str]:
    """The first of ``supported`` the client offered, or None (4.2.2)."""
    if not supported:
        return None
    for proto in supported:
        if proto in offered:
            return proto
    return None


def response_headers(
    key: str, subprotocol: Optional[str] = None
) -> list[tuple[str, str]]:
    """Headers of the 101 response."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
    if subprotocol:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    return headers


_101_HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def response_bytes(key: str, subprotocol: Optional[str] = None) -> bytes:
    """The whole 101 response, ready to write (the headers of
    :func:`response_headers`, from a prebuilt head: once per handshake).
    """
    accept = accept_key(key).encode("ascii")
    if subprotocol:
        proto = subprotocol.encode("latin-1")
        return b"%s%s\r\nSec-WebSocket-Protocol: %s\r\n\r\n" % (
            _101_HEAD,
            accept,
            proto,
        )
    return b"%s%s\r\n\r\n" % (_101_HEAD, accept)
