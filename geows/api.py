"""The native API: upgrade a WSGI request to a :class:`~geows.WebSocket`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from geows.connection import WebSocket

__all__ = ["accept"]


def accept(
    environ: dict[str, Any], subprotocols: Optional[Sequence[str]] = None
) -> WebSocket:
    """Answer the WebSocket handshake of this request and return the socket.

    ``subprotocols`` lists the server's, in its order of preference; the
    first one the client offered is chosen (``ws.subprotocol``). Raises
    :class:`~geows.InvalidHandshake` when the request is not a valid upgrade;
    letting it propagate answers the client with its status (400 or 426).
    """
    conn = environ.get("geows.connection")
    if conn is None:
        raise RuntimeError("geows.accept() needs a request served by geows")
    return conn.upgrade(list(subprotocols) if subprotocols else None)  # type: ignore[no-any-return]
