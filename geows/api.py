"""The native API: upgrade a WSGI request to a :class:`~geows.WebSocket`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

from geows.connection import WebSocket
from geows.origins import OriginPolicy

__all__ = ["accept"]


def accept(
    environ: dict[str, Any],
    subprotocols: Optional[Sequence[str]] = None,
    origins: Union[OriginPolicy, Sequence[str], None] = None,
) -> WebSocket:
    """Answer the WebSocket handshake of this request and return the socket.

    ``subprotocols`` lists the server's, in its order of preference; the
    first one the client offered is chosen (``ws.subprotocol``).
    ``origins``, when given, replaces ``--websockets-allowed-origins`` for
    this upgrade: a list of origins and patterns (``https://*.example.com``;
    ``--websockets-allow-missing-origin`` still applies, and an empty list
    allows any origin) or an :class:`~geows.origins.OriginPolicy`, which is
    parsed once. Raises :class:`~geows.InvalidHandshake` when the request is
    not a valid upgrade or its ``Origin`` is not allowed; letting it
    propagate answers the client with its status (400, 426, 403).
    """
    conn = environ.get("geows.connection")
    if conn is None:
        raise RuntimeError("geows.accept() needs a request served by geows")
    return conn.upgrade(  # type: ignore[no-any-return]
        list(subprotocols) if subprotocols else None, origins=origins
    )
