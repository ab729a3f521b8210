"""Fixtures for the gevent I/O layer: a WebSocket on one end of a socket pair.

No HTTP and no server: :func:`connect` builds a :class:`geows.connection.WebSocket`
directly on the "server" end of a ``gevent.socket.socketpair()`` and hands the
other end to a :class:`Peer`, which plays the client with raw, masked frames
and parses what the server writes. Everything runs in this process under
gevent; nothing is monkey patched.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import gevent
import gevent.socket
import pytest
from gevent import get_hub

from geows.connection import WebSocket
from geows.frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    encode_frame,
    parse_header,
    serialize_close,
)
from geows.keepalive import Registry
from geows.limits import Limits, Timeouts

#: The masking key every client frame of these tests uses.
MASK = b"\x01\x02\x03\x04"
#: How long a Peer waits for something that must come, unless told otherwise.
#: Generous: outcomes are asserted, never durations.
WAIT = 5.0
#: Keepalive off: tests that are not about keepalive must not race it.
QUIET = Timeouts(ping_interval=None, pong_tolerance=0.2, close_timeout=0.3)
DEFAULT_LIMITS = Limits()

Frame = tuple[int, bytes]


class Peer:
    """The client end of a socket pair, speaking raw RFC 6455 frames.

    It only reads when asked to: a test that never calls a ``read_*`` method
    has a peer that stopped reading.
    """

    def __init__(self, sock: gevent.socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    # -- writing ---------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are, framed or not."""
        self.sock.sendall(data)

    def send_frame(
        self,
        opcode: int,
        payload: Union[str, bytes] = b"",
        fin: bool = True,
        mask: Optional[bytes] = MASK,
    ) -> None:
        """One frame, masked like a proper client's unless ``mask=None``."""
        self.sock.sendall(frame(opcode, payload, fin=fin, mask=mask))

    def send_close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        """A close frame (an empty one for ``code=None``)."""
        self.send_frame(OP_CLOSE, serialize_close(code, reason))

    # -- reading ---------------------------------------------------------------

    def read_frame_ex(self, timeout: float = WAIT) -> Optional[tuple[bool, int, bytes]]:
        """The next frame as ``(fin, opcode, payload)``; None at EOF.

        Raises ``gevent.Timeout`` if nothing complete comes in ``timeout``.
        Bytes of an incomplete frame before EOF stay in :attr:`buf`.
        """
        with gevent.Timeout(timeout):
            while True:
                parsed = self._parse()
                if parsed is not None:
                    return parsed
                if self.eof:
                    return None
                data = self.sock.recv(65536)
                if not data:
                    self.eof = True
                else:
                    self.buf += data

    def read_frame(self, timeout: float = WAIT) -> Optional[Frame]:
        """The next frame as ``(opcode, payload)``; None at EOF."""
        got = self.read_frame_ex(timeout)
        if got is None:
            return None
        return got[1], got[2]

    def read_message(self, timeout: float = WAIT) -> Optional[Frame]:
        """The next data or close frame; pings are answered, pongs skipped."""
        with gevent.Timeout(timeout):
            while True:
                got = self.read_frame(timeout=timeout)
                if got is None:
                    return None
                opcode, payload = got
                if opcode == OP_PING:
                    self.send_frame(OP_PONG, payload)
                elif opcode != OP_PONG:
                    return got

    def read_until_eof(self, timeout: float = WAIT) -> list[Frame]:
        """Every frame until the server's EOF, in order."""
        frames: list[Frame] = []
        with gevent.Timeout(timeout):
            while True:
                got = self.read_frame(timeout=timeout)
                if got is None:
                    return frames
                frames.append(got)

    def _parse(self) -> Optional[tuple[bool, int, bytes]]:
        header = parse_header(self.buf, 0)
        if header is None:
            return None
        b0, b1, length, hlen = header
        assert not b1 & 0x80, "the server masked a frame"
        assert not b0 & 0x70, "the server set reserved bits"
        if len(self.buf) < hlen + length:
            return None
        payload = bytes(self.buf[hlen : hlen + length])
        del self.buf[: hlen + length]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    # -- socket ------------------------------------------------------------------

    def shrink_rcvbuf(self, size: int) -> None:
        """A small receive buffer, so that the server's sends stall sooner."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def close(self) -> None:
        self.sock.close()


class FarEnd:
    """The far end of an HTTP-level connection under test: what a client or
    a front server holds (its socket, the connection and its greenlet)."""

    def __init__(self, sock: Any, conn: Any, job: gevent.Greenlet) -> None:
        self.sock = sock
        self.conn = conn
        self.job = job
        self.peer = Peer(sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_head(self, timeout: float = WAIT) -> bytes:
        """The next response head (without its blank line); what follows
        it (a body, frames) stays in ``peer.buf``."""
        buf = self.peer.buf
        with gevent.Timeout(timeout):
            while b"\r\n\r\n" not in buf:
                data = self.sock.recv(65536)
                assert data, f"EOF after {bytes(buf)!r}"
                buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        buf[:] = rest
        return head


def frame(
    opcode: int,
    payload: Union[str, bytes] = b"",
    fin: bool = True,
    mask: Optional[bytes] = MASK,
) -> bytes:
    """A client frame, masked unless ``mask=None``."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return encode_frame(opcode, payload, fin=fin, mask=mask)


@dataclass
class Conn:
    """One WebSocket under test and everything around it."""

    ws: WebSocket
    peer: Peer
    registry: Registry
    #: Every call of ``on_finish``, with the WebSocket it was given.
    finished: list[WebSocket] = field(default_factory=list)


@pytest.fixture
def connect() -> Any:
    """Factory: ``connect(limits=..., timeouts=..., ...) -> Conn``.

    ``server_sndbuf`` / ``peer_rcvbuf`` shrink the socket buffers (bytes).
    Every WebSocket is aborted, every registry stopped and every peer closed
    at teardown.
    """
    made: list[Conn] = []

    def make(
        limits: Limits = DEFAULT_LIMITS,
        timeouts: Timeouts = QUIET,
        *,
        initial: bytes = b"",
        server_sndbuf: Optional[int] = None,
        peer_rcvbuf: Optional[int] = None,
        on_finish: Optional[Callable[[WebSocket], None]] = None,
    ) -> Conn:
        server_sock, client_sock = gevent.socket.socketpair()
        if server_sndbuf is not None:
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server_sndbuf)
        peer = Peer(client_sock)
        if peer_rcvbuf is not None:
            peer.shrink_rcvbuf(peer_rcvbuf)
        registry = Registry(timeouts)
        finished: list[WebSocket] = []

        def record_finish(ws: WebSocket) -> None:
            finished.append(ws)
            if on_finish is not None:
                on_finish(ws)

        ws = WebSocket(
            server_sock,
            environ={"REMOTE_ADDR": "test"},
            limits=limits,
            timeouts=timeouts,
            registry=registry,
            initial=initial,
            on_finish=record_finish,
        )
        conn = Conn(ws, peer, registry, finished)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.ws.abort()
        conn.registry.stop()
        conn.peer.close()


@pytest.fixture(autouse=True)
def no_hub_errors(caplog: pytest.LogCaptureFixture) -> Any:
    """Fail a test whose hub callbacks raised or whose geows code logged errors.

    An exception in a watcher callback does not reach the test: the hub
    prints it and carries on. Greenlets that die of an exception are the
    tests' business (they check ``.exception``), so only other contexts count.
    """
    hub = get_hub()
    errors: list[tuple[Any, Any]] = []
    original = hub.print_exception

    def record(context: Any, t: Any, v: Any, tb: Any) -> None:
        if not isinstance(context, gevent.Greenlet):
            errors.append((context, v))
        original(context, t, v, tb)

    hub.print_exception = record
    caplog.set_level(logging.INFO, logger="geows")
    try:
        yield
    finally:
        del hub.print_exception
    assert errors == [], f"exceptions in hub callbacks: {errors}"
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged == [], f"geows logged errors: {[r.getMessage() for r in logged]}"
