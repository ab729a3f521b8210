"""geows: a gevent WebSocket server for WSGI applications.

The native API is :func:`accept` and :class:`WebSocket`; served apps also get
uWSGI's websocket functions through ``import uwsgi``. The gevent parts load
on first use, so importing the sans-I/O core never imports gevent.
"""

from typing import TYPE_CHECKING, Any

from geows.channels import ChannelError, publish
from geows.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    GeowsError,
    InvalidHandshake,
    PayloadTooBig,
    ProtocolError,
)
from geows.limits import Limits, Timeouts
from geows.origins import OriginPolicy

if TYPE_CHECKING:
    from geows.api import accept
    from geows.connection import WebSocket

__version__ = "0.1.0.dev0"

__all__ = [
    "ChannelError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "GeowsError",
    "InvalidHandshake",
    "Limits",
    "OriginPolicy",
    "PayloadTooBig",
    "ProtocolError",
    "Timeouts",
    "WebSocket",
    "accept",
    "publish",
]


def __getattr__(name: str) -> Any:
    """``accept`` and ``WebSocket`` load the gevent layer on first use (the
    core stays importable without it); kept as globals from then on, so
    ``geows.accept`` costs a dict lookup per handshake, not this call.
    """
    value: Any
    if name == "accept":
        from geows.api import accept

        value = accept
    elif name == "WebSocket":
        from geows.connection import WebSocket

        value = WebSocket
    else:
        raise AttributeError(f"module 'geows' has no attribute {name!r}")
    globals()[name] = value
    return value
