"""A gevent WebSocket client: one blocking-style object per connection.

For tests, the locust users in ``loadtest/`` and anyone who needs to talk to
a WebSocket server from gevent code::

    from geows.client import connect

    with connect("ws://127.0.0.1:8000/ws") as ws:
        ws.send("hello")
        print(ws.recv(timeout=5))

The protocol work is the sans-I/O core's: :class:`ClientProtocol` is
:class:`~geows.protocol.ServerProtocol` with the masking direction flipped
at its two edges (RFC 6455 5.1/5.3), so fragmentation, UTF-8 checks, size
limits and the closing handshake follow the same rules on both sides. Only
``ws://`` is spoken yet; ``wss://`` would wrap the socket in
:func:`_open_socket`.
"""

from __future__ import annotations

import base64
import os
from collections import deque
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Optional, Union
from urllib.parse import urlsplit

import gevent
from gevent import socket
from gevent.lock import Semaphore

from geows.exceptions import ConnectionClosedOK, InvalidHandshake
from geows.frames import (
    FIN,
    MASK_BIT,
    RSV_MASK,
    BytesLike,
    encode_frame,
    parse_header,
)
from geows.handshake import accept_key, has_token, offered_subprotocols
from geows.limits import Limits
from geows.protocol import Event, Message, ServerProtocol, State

__all__ = ["ClientProtocol", "ClientWebSocket", "connect"]

_RECV_SIZE = 64 * 1024
_MAX_HEAD = 64 * 1024
#: Prepended to every unmasked server frame so the server-side parser, which
#: unmasks, reads the payload unchanged (XOR with zeros).
_ZERO_KEY = b"\x00\x00\x00\x00"
#: How long :meth:`ClientWebSocket.close` waits at most for the server to
#: close TCP once the closing handshake is done (RFC 6455 7.1.1).
_EOF_WAIT = 2.0
_DEFAULT_LIMITS = Limits(max_message_size=2**20 * 16)


def _mask_frames(data: bytes) -> bytes:
    """Mask every frame of ``data`` (whole unmasked frames) with fresh keys.

    Each frame gets its own ``os.urandom(4)`` key, as RFC 6455 5.3 asks of
    clients, so a proxy cannot be fed predictable bytes.
    """
    if not data:
        return b""
    view = memoryview(data)
    out = []
    pos = 0
    while pos < len(data):
        header = parse_header(data, pos)
        assert header is not None, "ServerProtocol produced a partial frame"
        b0, _b1, length, hlen = header
        start = pos + hlen
        out.append(
            encode_frame(
                b0 & 0x0F,
                view[start : start + length],
                fin=bool(b0 & FIN),
                rsv=b0 & RSV_MASK,
                mask=os.urandom(4),
            )
        )
        pos = start + length
    return b"".join(out)


class ClientProtocol(ServerProtocol):
    """The client side of a connection: ServerProtocol with masking flipped.

    Input: every unmasked server frame is re-headed with a zero masking key
    before the server-side parser sees it; a masked one loses its mask bit,
    so the parser fails the connection with 1002 as RFC 6455 5.1 requires.
    Output: every frame the parser or the ``send_*`` methods produce is
    masked with a random key.
    """

    def __init__(self, limits: Limits = _DEFAULT_LIMITS) -> None:
        super().__init__(limits)
        self._in = bytearray()  # bytes of an incomplete frame header
        self._passthrough = 0  # payload bytes of the current frame still to come

    def receive_data(self, data: BytesLike) -> list[Event]:
        """Feed bytes read from the socket; return the events they complete."""
        if self.failure is not None or self.state is State.CLOSED:
            return []
        buf = self._in
        buf += data
        out = bytearray()
        pos = 0
        while pos < len(buf):
            if self._passthrough:
                n = min(self._passthrough, len(buf) - pos)
                out += buf[pos : pos + n]
                pos += n
                self._passthrough -= n
                continue
            header = parse_header(buf, pos)
            if header is None:
                break
            _b0, b1, length, hlen = header
            head = bytearray(buf[pos : pos + hlen])
            head[1] = b1 ^ MASK_BIT
            out += head
            if not b1 & MASK_BIT:
                out += _ZERO_KEY
            pos += hlen
            self._passthrough = length
        del buf[:pos]
        return super().receive_data(out)

    def data_to_send(self) -> bytes:
        """Control frames the protocol queued (pongs, close replies), masked."""
        return _mask_frames(super().data_to_send())

    def send_text(self, data: Union[str, BytesLike]) -> bytes:
        """Frame a masked text message."""
        return _mask_frames(super().send_text(data))

    def send_binary(self, data: BytesLike) -> bytes:
        """Frame a masked binary message."""
        return _mask_frames(super().send_binary(data))

    def send_ping(self, data: bytes = b"") -> bytes:
        """Frame a masked ping."""
        return _mask_frames(super().send_ping(data))

    def send_pong(self, data: bytes = b"") -> bytes:
        """Frame a masked pong."""
        return _mask_frames(super().send_pong(data))

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake with a masked close frame."""
        return _mask_frames(super().send_close(code, reason))


def _open_socket(host: str, port: int, timeout: Optional[float]) -> socket.socket:
    """A connected TCP socket to ``host:port``; the place to add TLS for wss://."""
    sock = socket.create_connection((host, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _status(code: int) -> HTTPStatus:
    """``code`` as an HTTPStatus; 502 for a code the stdlib does not know."""
    try:
        return HTTPStatus(code)
    except ValueError:
        return HTTPStatus.BAD_GATEWAY


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read an HTTP response head; return it and the bytes that followed."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return buf[:end], buf[end + 4 :]
        if len(buf) > _MAX_HEAD:
            raise InvalidHandshake("response head too large", HTTPStatus.BAD_GATEWAY)
        chunk = sock.recv(_RECV_SIZE)
        if not chunk:
            raise InvalidHandshake(
                "connection closed during the handshake", HTTPStatus.BAD_GATEWAY
            )
        buf += chunk


def _check_response(
    head: bytes, key: str, offered: Sequence[str]
) -> tuple[Optional[str], list[tuple[str, str]]]:
    """Validate the server's answer (RFC 6455 4.1); return subprotocol, headers."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise InvalidHandshake(f"bad status line {lines[0]!r}", HTTPStatus.BAD_GATEWAY)
    code = int(parts[1])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    status = _status(code)
    if code != 101:
        raise InvalidHandshake(f"server answered {lines[0]!r}", status, headers)
    fields: dict[str, str] = {}
    for name, value in headers:
        name = name.lower()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    if not has_token(fields.get("upgrade"), "websocket"):
        raise InvalidHandshake("101 without Upgrade: websocket", status, headers)
    if not has_token(fields.get("connection"), "upgrade"):
        raise InvalidHandshake("101 without Connection: upgrade", status, headers)
    if fields.get("sec-websocket-accept") != accept_key(key):
        raise InvalidHandshake("wrong Sec-WebSocket-Accept", status, headers)
    chosen = offered_subprotocols(fields.get("sec-websocket-protocol"))
    if len(chosen) > 1 or (chosen and chosen[0] not in offered):
        raise InvalidHandshake(f"server chose subprotocol {chosen!r}", status, headers)
    return (chosen[0] if chosen else None), headers


def connect(
    url: str,
    *,
    subprotocols: Optional[Sequence[str]] = None,
    headers: Optional[list[tuple[str, str]]] = None,
    timeout: Optional[float] = 10.0,
    max_message_size: Optional[int] = 2**20 * 16,
) -> ClientWebSocket:
    """Open a WebSocket to ``url`` (``ws://host[:port]/path[?query]``).

    ``timeout`` bounds connecting, the handshake, each send and the closing
    handshake; ``max_message_size`` (None for no limit) bounds received
    messages (larger ones close with 1009). Raises
    :class:`~geows.InvalidHandshake` (with the server's ``status``) when the
    server does not switch protocols, ``OSError`` when it cannot be reached.
    """
    parts = urlsplit(url)
    if parts.scheme == "wss":
        raise ValueError("wss:// is not supported yet")
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"not a ws:// URL: {url!r}")
    host = parts.hostname
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header += f":{port}"
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    offered = list(subprotocols or ())
    request = [
        f"GET {target} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if offered:
        request.append("Sec-WebSocket-Protocol: " + ", ".join(offered))
    request += [f"{name}: {value}" for name, value in headers or ()]
    sock = _open_socket(host, port, timeout)
    try:
        sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode("latin-1"))
        head, rest = _read_head(sock)
        subprotocol, response_headers = _check_response(head, key, offered)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)  # from here on, deadlines are gevent Timeouts
    ws = ClientWebSocket(
        sock,
        subprotocol=subprotocol,
        response_headers=response_headers,
        timeout=timeout,
        limits=Limits(max_message_size=max_message_size),
    )
    if rest:
        ws._feed(rest)
    return ws


class ClientWebSocket:
    """A client WebSocket connection; made by :func:`connect`.

    Any greenlet may send; one greenlet at a time may :meth:`recv`. Frames
    are written whole under a lock, so pongs never split a message.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        subprotocol: Optional[str] = None,
        response_headers: Optional[list[tuple[str, str]]] = None,
        timeout: Optional[float] = 10.0,
        limits: Limits = _DEFAULT_LIMITS,
    ) -> None:
        self.subprotocol = subprotocol
        #: Headers of the server's 101 response.
        self.response_headers = response_headers or []
        self._sock = sock
        self._timeout = timeout
        self._proto = ClientProtocol(limits)
        self._messages: deque[Message] = deque()
        self._wlock = Semaphore()
        self._eof = False
        self._tcp_closed = False

    # -- state -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed: sends will fail."""
        return self._proto.state is not State.OPEN or self._tcp_closed

    @property
    def close_code(self) -> Optional[int]:
        """How the connection ended (1006 without a close frame); None while open."""
        if not self.closed:
            return None
        return self._proto.close_code

    @property
    def close_reason(self) -> str:
        """The reason that goes with :attr:`close_code`."""
        return self._proto.close_reason

    # -- sending -----------------------------------------------------------------

    def send(self, data: Union[str, BytesLike]) -> None:
        """Send a text message for ``str``, a binary one for bytes-like."""
        if isinstance(data, str):
            self._send_frame(self._proto.send_text(data))
        else:
            self._send_frame(self._proto.send_binary(data))

    def ping(self, data: bytes = b"") -> None:
        """Send a ping (at most 125 bytes); the pong is consumed by recv."""
        self._send_frame(self._proto.send_ping(data))

    def _send_frame(self, frame: bytes) -> None:
        """Write whole frames; a lost socket becomes ConnectionClosed (1006)."""
        if self._tcp_closed:
            raise self._proto.closed_exception()
        try:
            with self._wlock, gevent.Timeout(self._timeout, TimeoutError):
                self._sock.sendall(frame)
        except TimeoutError:
            self._lost()  # part of a frame may be out: the stream is unusable
            raise
        except OSError as exc:
            self._lost()
            raise self._proto.closed_exception() from exc

    # -- receiving ---------------------------------------------------------------

    def recv(self, timeout: Optional[float] = None) -> Union[str, bytes]:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Pings are answered while waiting. Raises
        :class:`~geows.ConnectionClosed` (with the close code) once the
        connection is closed and every earlier message was returned, and
        ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        messages = self._messages
        with gevent.Timeout(timeout, TimeoutError):
            while not messages:
                if self._proto.state is not State.OPEN or self._tcp_closed:
                    self._finish()
                    raise self._proto.closed_exception()
                self._read_once()
        message = messages.popleft()
        return message.text if message.text is not None else message.data

    def __iter__(self) -> Iterator[Union[str, bytes]]:
        """Messages until a normal close; an abnormal one raises."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedOK:
                return

    def _read_once(self) -> None:
        """One socket read fed to the protocol; EOF and errors end the connection."""
        try:
            data = self._sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise  # a caller's deadline (an OSError too): the connection is fine
        except OSError:
            self._lost()
            return
        if data:
            self._feed(data)
        else:
            self._lost()

    def _feed(self, data: bytes) -> None:
        """Give bytes to the protocol, keep its messages, send its replies."""
        proto = self._proto
        for event in proto.receive_data(data):
            if type(event) is Message:
                self._messages.append(event)
        reply = proto.data_to_send()
        if reply and not self._tcp_closed:
            try:
                with self._wlock, gevent.Timeout(self._timeout, TimeoutError):
                    self._sock.sendall(reply)
            except (OSError, TimeoutError):
                self._lost()

    def _lost(self) -> None:
        """The TCP connection ended (EOF or error)."""
        self._eof = True
        if self._proto.state is not State.CLOSED:
            self._proto.receive_eof()
        self._close_tcp()

    # -- closing -----------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Closing handshake: send a close frame, wait for the server's, close TCP.

        Messages still unread are discarded. Never raises for a connection
        that is already closed or lost.
        """
        if self._tcp_closed:
            return
        frame = self._proto.send_close(code, reason)
        try:
            if frame:
                with self._wlock, gevent.Timeout(self._timeout, TimeoutError):
                    self._sock.sendall(frame)
            with gevent.Timeout(self._timeout, TimeoutError):
                while self._proto.state is not State.CLOSED and not self._eof:
                    self._read_once()
        except (OSError, TimeoutError):
            pass
        self._messages.clear()
        self._finish()

    def _finish(self) -> None:
        """After the closing handshake, let the server close TCP first (7.1.1)."""
        if self._tcp_closed:
            return
        if self._proto.failure is None:
            try:
                with gevent.Timeout(_EOF_WAIT, TimeoutError):
                    while not self._eof:
                        self._read_once()  # input after CLOSED is discarded
            except TimeoutError:
                pass
        self._close_tcp()

    def _close_tcp(self) -> None:
        if not self._tcp_closed:
            self._tcp_closed = True
            try:
                self._sock.close()
            except OSError:
                pass

    def __enter__(self) -> ClientWebSocket:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ClientWebSocket {self._proto.state.name}>"
