"""The ``uwsgi`` module seen by apps that ``geows serve`` runs.

Thin functions over the native API (:class:`~geows.WebSocket`): they find
the current request through a per-greenlet context variable, never a
process global, and turn :class:`~geows.ConnectionClosed` into the
``OSError`` uWSGI raises, chained to the real cause.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from geows import sharedarea as _sharedarea
from geows.channels import ChannelError, current_hub
from geows.connection import WebSocket
from geows.exceptions import ConnectionClosed, InvalidHandshake
from geows.wsgi import HTTPConnection, current_connection

__all__ = [
    "SPOOL_OK",
    "connection_fd",
    "opt",
    "request_context",
    "sharedarea_dec64",
    "sharedarea_inc64",
    "sharedarea_read",
    "sharedarea_read64",
    "sharedarea_readbyte",
    "sharedarea_write",
    "sharedarea_write64",
    "sharedarea_writebyte",
    "version",
    "websocket_channel_join",
    "websocket_channel_leave",
    "websocket_channel_publish",
    "websocket_channel_publish_binary",
    "websocket_handshake",
    "websocket_recv",
    "websocket_recv_nb",
    "websocket_send",
    "websocket_send_binary",
    "websocket_send_binary_from_sharedarea",
    "websocket_send_from_sharedarea",
    "worker_id",
]

#: What ``uwsgi.version`` reports: uWSGI's API level we follow, and us.
version = b"2.0.28-geows"
#: Worker processes serving the app (``--processes``), as uWSGI's numproc.
numproc = 1
#: This process's worker number, 1 to numproc (set by ``geows serve``).
_worker_id = 1
#: uWSGI exposes its options here; ``geows serve`` fills it.
opt: dict[str, Any] = {}
SPOOL_OK = -2

Context = HTTPConnection


def worker_id() -> int:
    """This worker's number, 1 to ``numproc``, as uWSGI numbers them."""
    return _worker_id


def _connection(request_context: Optional[Context] = None) -> HTTPConnection:
    if request_context is not None:
        return request_context
    try:
        return current_connection.get()
    except LookupError:
        raise OSError(
            "no current request: call uwsgi functions from the request's "
            "greenlet, or pass request_context=uwsgi.request_context()"
        ) from None


def _websocket(request_context: Optional[Context]) -> WebSocket:
    ws = _connection(request_context).websocket
    if ws is None:
        raise OSError("websocket_handshake() was not called for this request")
    return ws


def request_context() -> Context:
    """A handle to the current connection, for use from another greenlet."""
    return _connection()


def connection_fd(request_context: Optional[Context] = None) -> int:
    """The client socket's file descriptor, for ``gevent.select``.

    After the handshake this hands reading to the app, as in uWSGI: the
    descriptor turns readable when the client sends, and
    ``websocket_recv_nb()`` reads it (see ``WebSocket.app_reads``).
    """
    conn = _connection(request_context)
    if conn.websocket is not None:
        return conn.websocket.app_reads()
    return conn.sock.fileno()


def websocket_handshake(
    key: Optional[Union[str, bytes]] = None,
    origin: Optional[Union[str, bytes]] = None,
    proto: Optional[Union[str, bytes]] = None,
    request_context: Optional[Context] = None,
) -> None:
    """Answer the WebSocket handshake; arguments default to the request's.

    ``proto`` is answered only if the client offered it. Raises ``OSError``
    (from :class:`~geows.InvalidHandshake`) for an invalid upgrade request;
    if the app lets it out, the client gets the right HTTP status.
    """
    conn = _connection(request_context)
    try:
        conn.upgrade(key=_text(key), choose=_text(proto))
    except InvalidHandshake as exc:
        raise OSError(f"unable to complete websocket handshake: {exc.reason}") from exc


def websocket_recv(request_context: Optional[Context] = None) -> bytes:
    """The next message's payload (text or binary), blocking this greenlet.

    Raises ``OSError`` when the connection closes, fails or the peer dies.
    """
    ws = _websocket(request_context)
    try:
        return ws.recv_message().data
    except ConnectionClosed as exc:
        raise _closed(exc) from exc


def websocket_recv_nb(request_context: Optional[Context] = None) -> bytes:
    """A complete message if one arrived, else ``b""``; never blocks."""
    ws = _websocket(request_context)
    try:
        message = ws.recv_nowait()
    except ConnectionClosed as exc:
        raise _closed(exc) from exc
    return b"" if message is None else message.data


def websocket_send(
    message: Union[str, bytes], request_context: Optional[Context] = None
) -> None:
    """Send a text message (str is encoded as UTF-8)."""
    ws = _websocket(request_context)
    try:
        ws.send_text(message)
    except ConnectionClosed as exc:
        raise _closed(exc, "unable to send websocket message") from exc


def websocket_send_binary(
    message: bytes, request_context: Optional[Context] = None
) -> None:
    """Send a binary message."""
    ws = _websocket(request_context)
    try:
        ws.send_binary(message)
    except ConnectionClosed as exc:
        raise _closed(exc, "unable to send websocket message") from exc


def websocket_send_from_sharedarea(
    id: int, pos: int, len: int = 0, request_context: Optional[Context] = None
) -> None:
    """Send ``len`` bytes of shared area ``id`` from ``pos`` (0: to the end)
    as a text message. Bad arguments raise ``ValueError`` (checked first).
    """
    data = _sharedarea.area(id).read(pos, len)
    websocket_send(data, request_context)


def websocket_send_binary_from_sharedarea(
    id: int, pos: int, len: int = 0, request_context: Optional[Context] = None
) -> None:
    """As :func:`websocket_send_from_sharedarea`, as a binary message."""
    data = _sharedarea.area(id).read(pos, len)
    websocket_send_binary(data, request_context)


def websocket_channel_join(
    name: Union[str, bytes], request_context: Optional[Context] = None
) -> None:
    """Join channel ``name``: its messages reach this websocket in the
    background, while ``websocket_recv()`` still returns only the client's.
    """
    try:
        _websocket(request_context).join(_name(name))
    except ConnectionClosed as exc:
        raise _closed(exc) from exc


def websocket_channel_leave(
    name: Union[str, bytes], request_context: Optional[Context] = None
) -> None:
    """Leave channel ``name``."""
    _websocket(request_context).leave(_name(name))


def websocket_channel_publish(
    name: Union[str, bytes], message: Union[str, bytes]
) -> None:
    """Publish a text message on channel ``name`` (from any request or greenlet).

    Raises ``OSError`` (from :class:`~geows.ChannelError`) when the backend
    cannot take it, e.g. Redis is down: a publish never vanishes.
    """
    _publish(name, message, binary=False)


def websocket_channel_publish_binary(name: Union[str, bytes], message: bytes) -> None:
    """Publish a binary message on channel ``name``."""
    _publish(name, message, binary=True)


def _publish(name: Union[str, bytes], message: Union[str, bytes], binary: bool) -> None:
    try:
        current_hub().publish(_name(name), message, binary=binary)
    except ChannelError as exc:
        raise OSError(f"unable to publish on channel {_name(name)!r}: {exc}") from exc


# -- shared areas (see geows.sharedarea: ValueError for bad ids, positions,
# lengths and values) ----------------------------------------------------------


def sharedarea_read(id: int, pos: int, len: int = 0) -> bytes:
    """``len`` bytes of area ``id`` from ``pos``; ``len`` 0: to the end."""
    return _sharedarea.area(id).read(pos, len)


def sharedarea_write(id: int, pos: int, data: Union[str, bytes]) -> None:
    """Write ``data`` (``str`` is encoded as UTF-8) at ``pos`` of area ``id``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    _sharedarea.area(id).write(pos, data)


def sharedarea_readbyte(id: int, pos: int) -> int:
    """The byte at ``pos`` of area ``id``."""
    return _sharedarea.area(id).read_byte(pos)


def sharedarea_writebyte(id: int, pos: int, value: int) -> None:
    """Set the byte at ``pos`` of area ``id`` to ``value`` (0-255)."""
    _sharedarea.area(id).write_byte(pos, value)


def sharedarea_read64(id: int, pos: int) -> int:
    """The signed 64-bit integer (little-endian) at ``pos`` of area ``id``."""
    return _sharedarea.area(id).read64(pos)


def sharedarea_write64(id: int, pos: int, value: int) -> None:
    """Store the signed 64-bit ``value`` at ``pos`` of area ``id``."""
    _sharedarea.area(id).write64(pos, value)


def sharedarea_inc64(id: int, pos: int, amount: int = 1) -> int:
    """Atomically add ``amount``; the new value (uWSGI returns None)."""
    return _sharedarea.area(id).inc64(pos, amount)


def sharedarea_dec64(id: int, pos: int, amount: int = 1) -> int:
    """Atomically subtract ``amount``; the new value (uWSGI returns None)."""
    return _sharedarea.area(id).dec64(pos, amount)


def _closed(exc: ConnectionClosed, doing: str = "websocket closed") -> OSError:
    """uWSGI's exception for a closed websocket; raise it ``from`` the cause."""
    return OSError(f"{doing}: {exc.code} {exc.reason}".rstrip())


def _name(name: Union[str, bytes]) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else name


def _text(value: Optional[Union[str, bytes]]) -> Optional[str]:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value or None
