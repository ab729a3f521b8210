"""The one exception tree of geows.

::

    GeowsError
    ├── ProtocolError            the peer broke RFC 6455; carries the close code
    │   └── PayloadTooBig        a message over the size limit (1009)
    ├── InvalidHandshake         an upgrade request we refuse; carries the HTTP status
    └── ConnectionClosed         the connection is closed; carries code and reason
        ├── ConnectionClosedOK       closed with 1000, 1001, or a close without code
        └── ConnectionClosedError    anything else: failure, abnormal loss (1006)

The sans-I/O core never raises these at the peer's input: it records a
``ProtocolError`` and fails the connection; the I/O layer decides what the
application sees. ``OSError`` is raised only by the uWSGI adapter, as uWSGI
does, chained to one of these.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Optional

__all__ = [
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "GeowsError",
    "InvalidHandshake",
    "PayloadTooBig",
    "ProtocolError",
]


class GeowsError(Exception):
    """Root of every exception geows raises on purpose."""


class ProtocolError(GeowsError):
    """The peer violated RFC 6455; ``code`` is the close code to fail with."""

    def __init__(self, reason: str, code: int = 1002) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class PayloadTooBig(ProtocolError):
    """A message is larger than ``Limits.max_message_size`` (close 1009)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 1009)


class InvalidHandshake(GeowsError):
    """An upgrade request that cannot be accepted; ``status`` is the answer."""

    def __init__(
        self,
        reason: str,
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
        headers: Optional[list[tuple[str, str]]] = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers or []


class ConnectionClosed(GeowsError):
    """The WebSocket is closed; ``code``/``reason`` say how (RFC 6455 7.1.5).

    The peer's close frame (1005 when it had no code); ours when geows
    failed the connection (1002, 1007, 1009); 1006 when no close frame came,
    e.g. a peer lost or found dead by keepalive (``__cause__`` says which).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class ConnectionClosedOK(ConnectionClosed):
    """Closed normally (1000 or 1001, or a close frame without a code)."""


class ConnectionClosedError(ConnectionClosed):
    """Closed by a failure: a protocol error, a dead peer, a lost socket."""


def closed_exception(code: int, reason: str = "") -> ConnectionClosed:
    """The right ``ConnectionClosed`` subclass for a close code."""
    if code in (1000, 1001, 1005):
        return ConnectionClosedOK(code, reason)
    return ConnectionClosedError(code, reason)
