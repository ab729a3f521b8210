"""Server: a gevent StreamServer (composed, not subclassed) serving WSGI + WebSockets.

One greenlet per connection from a bounded pool (the connection cap), the
keepalive registry of its WebSockets, and a graceful stop: stop accepting,
close every WebSocket with 1001, wait up to a grace period, then cut.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Optional, Union

import gevent
from gevent import get_hub
from gevent.pool import Pool
from gevent.server import StreamServer

from geows import proxy_protocol
from geows.keepalive import Registry
from geows.listeners import Listener, bind
from geows.uwsgi_conn import UwsgiConnection
from geows.wsgi import HTTPConnection, Settings

__all__ = ["Door", "Server", "read_proxy_header"]

log = logging.getLogger("geows.server")


class Door:
    """One listener's way in: its socket, its settings, what it speaks."""

    def __init__(
        self, listener: Listener, sock: socket.socket, settings: Settings
    ) -> None:
        self.listener = listener
        self.sock = sock
        bound = sock.getsockname()
        if not listener.is_unix:
            listener = listener.with_address((listener.address[0], bound[1]))  # type: ignore[index]
            settings = replace(settings, server_port=str(bound[1]))
        self.bound = listener
        self.settings = replace(settings, url_scheme=listener.scheme)
        self.inet = sock.family in (socket.AF_INET, socket.AF_INET6)

    def prepare(
        self, sock: socket.socket, addr: Any
    ) -> tuple[socket.socket, Any, bytes]:
        """Whatever comes before the first request (PROXY header, TLS
        handshake): the socket to talk on, the client address, bytes read.
        """
        if self.listener.proxy_protocol:
            addr = read_proxy_header(sock, addr, timeout=self.settings.header_timeout)
        return sock, addr, b""

    def connection(self, sock: socket.socket, addr: Any) -> HTTPConnection:
        """The per-client loop for this listener's protocol."""
        if self.listener.protocol == "uwsgi":
            return UwsgiConnection(self.settings, sock, addr)
        return HTTPConnection(self.settings, sock, addr)


def read_proxy_header(sock: Any, peer: Any, *, timeout: float) -> Any:
    """Read the PROXY protocol header (v1 or v2) that starts ``sock``; the
    client's address it names, or ``peer`` when it names none (LOCAL,
    UNKNOWN, a Unix socket: a balancer's health check, say).

    Reads exactly the header, with ``recv`` of the sizes
    :func:`geows.proxy_protocol.needed` gives, so that whatever follows (a
    TLS ClientHello, a request) stays in the socket for the next reader;
    a v1 line costs a few small reads. Raises OSError when the header is
    malformed, missing or incomplete after ``timeout`` seconds: the peer is
    a balancer that speaks the protocol wrong, or not a balancer at all,
    so there is no one to answer, only a connection to close.
    """
    buf = bytearray()
    loop = get_hub().loop
    deadline = loop.now() + timeout
    try:
        while True:
            want = proxy_protocol.needed(buf)
            if not want:
                break
            remaining = deadline - loop.now()
            if remaining <= 0:
                raise OSError(f"no complete PROXY header within {timeout:g}s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(want)
            except socket.timeout:
                continue
            if not data:
                raise OSError("closed before a complete PROXY header")
            buf += data
        parsed = proxy_protocol.parse(buf)
    except proxy_protocol.ProxyProtocolError as exc:
        raise OSError(f"bad PROXY header: {exc.reason}") from exc
    assert parsed is not None  # needed() said it can decide
    info = parsed[0]
    return peer if info.source is None else info.source


class Server:
    """Serves one WSGI app with WebSocket upgrades on one or more listeners."""

    def __init__(
        self,
        settings: Settings,
        listeners: Sequence[Union[Listener, tuple[Listener, socket.socket]]],
        *,
        max_connections: int = 10000,
    ) -> None:
        if settings.registry is None:
            settings = replace(settings, registry=Registry(settings.timeouts))
        assert settings.registry is not None
        self.registry: Registry = settings.registry
        self.settings = settings
        self.pool = Pool(max_connections)
        self.connections: dict[gevent.Greenlet, HTTPConnection] = {}
        self.doors: list[Door] = []
        self.servers: list[StreamServer] = []
        #: Unix socket files bound here, removed when the server stops.
        self._paths: list[str] = []
        for item in listeners:
            if isinstance(item, Listener):
                item = (item, bind(item))
                if isinstance(item[0].address, str):
                    self._paths.append(item[0].address)
            door = Door(item[0], item[1], settings)
            self.doors.append(door)
            self.servers.append(
                # The socket is bound and listening already: gevent takes a
                # backlog only for addresses it binds itself.
                StreamServer(item[1], partial(self._handle, door), spawn=self.pool)
            )

    @property
    def listeners(self) -> list[Listener]:
        """Each listener, with the port it actually bound."""
        return [door.bound for door in self.doors]

    def start(self) -> None:
        """Bind (if needed) and start accepting."""
        for server in self.servers:
            server.start()

    def serve_forever(self) -> None:
        """Start and block until :meth:`stop`."""
        self.start()
        for server in self.servers:
            server._stop_event.wait()

    def _handle(self, door: Door, sock: socket.socket, addr: Any) -> None:
        if door.inet:
            # Small frames go out at once instead of waiting for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = addr
        if door.listener.protocol != "http" or door.listener.proxy_protocol:
            try:
                sock, addr, initial = door.prepare(sock, addr)
            except OSError as exc:
                log.info("connection from %s dropped: %s", addr, exc)
                sock.close()
                return
        else:
            initial = b""
        conn = door.connection(sock, addr)
        if addr is not peer:
            conn.peer = peer  # addr came from a PROXY header
        if initial:
            conn.buf += initial
        current = gevent.getcurrent()
        self.connections[current] = conn
        try:
            conn.run()
        finally:
            del self.connections[current]

    def stop(self, timeout: Optional[float] = 10.0) -> None:
        """Graceful stop: no new connections, close 1001 to every WebSocket,
        wait up to ``timeout`` seconds for connections to end, then kill them.
        """
        for server in self.servers:
            server.close()  # stop accepting; open connections go on
        self.registry.close_all(1001, "going away")
        # Kept-alive HTTP connections waiting for a request end now; those
        # mid-request finish it (and then close: no keep-alive while stopping).
        for greenlet, conn in list(self.connections.items()):
            conn.stopping = True
            if conn.idle:
                greenlet.kill(block=False)
        if not self.pool.join(timeout=timeout):
            log.warning(
                "%d connections still open after %ss; closing them",
                len(self.pool),
                timeout,
            )
            for ws in self.registry:
                ws.abort(1001)
            self.pool.kill(block=True, timeout=1)
        self.registry.stop()
        for server in self.servers:
            server.stop(timeout=0)
        for path in self._paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        gevent.idle()
