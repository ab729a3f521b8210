"""Server: a gevent StreamServer (composed, not subclassed) serving WSGI + WebSockets.

One greenlet per connection from a bounded pool (the connection cap), the
keepalive registry of its WebSockets, and a graceful stop: stop accepting,
close every WebSocket with 1001, wait up to a grace period, then cut.
"""

from __future__ import annotations

import _socket
import logging
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Optional, Union

import gevent
from gevent import get_hub
from gevent.event import Event
from greenlet import GreenletExit, getcurrent, greenlet  # type: ignore[import-untyped]

from geows import proxy_protocol, tls
from geows.keepalive import Registry
from geows.listeners import Listener, bind
from geows.stream import Stream
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
        #: The TLS listener's context: built once here, used by every connection.
        self.context: Optional[ssl.SSLContext] = None
        if listener.protocol == "https":
            self.context = tls.server_context(listener)
            settings = replace(
                settings,
                extra_environ={**settings.extra_environ, "HTTPS": "on"},
                transport=tls.TLSTransport,
            )
        self.settings = replace(settings, url_scheme=listener.scheme)
        self.inet = sock.family in (socket.AF_INET, socket.AF_INET6)
        if self.inet:
            # Small frames go out at once instead of waiting for an ACK.
            # Set on the listener, Linux gives it to every accepted socket:
            # one system call saved per connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def prepare(
        self, sock: socket.socket, addr: Any
    ) -> tuple[socket.socket, Any, bytes]:
        """Whatever comes before the first request, in the order it arrives:
        the socket to talk on, the client address, bytes read past it all.

        Raises OSError when the connection is to be dropped.
        """
        initial = b""
        # 1. A PROXY protocol header (``listener.proxy_protocol``) comes
        #    first, in clear, even on TLS listeners: it may replace ``addr``.
        #    On a TLS listener nothing past the header may be consumed: those
        #    bytes are the ClientHello, and TLS reads them from the socket.
        if self.listener.proxy_protocol:
            addr = read_proxy_header(sock, addr, timeout=self.settings.header_timeout)
        # 2. The TLS handshake.
        if self.context is not None:
            if isinstance(sock, Stream):
                sock = sock.detach_to_gevent()
            sock = tls.accept(sock, self.context, self.settings.tls_handshake_timeout)
        return sock, addr, initial

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
    """Serves one WSGI app with WebSocket upgrades on one or more listeners.

    Accepting is a watcher callback on each listening socket that takes
    every waiting connection and switches into a new greenlet for each, a
    plain ``greenlet`` whose parent is the hub: gevent's StreamServer, Pool
    and socket wrapper cost more than the whole rest of a WebSocket
    handshake (``perf stat``: about 110k instructions of 430k), and this
    loop keeps what they gave us: the connection cap (accepting pauses at
    ``max_connections``) and a graceful stop.
    """

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
        self.max_connections = max_connections
        self.connections: dict[greenlet, Optional[HTTPConnection]] = {}
        self.doors: list[Door] = []
        self._watchers: list[Any] = []
        self._accepting = False
        self._closed = False
        self._stopped = Event()
        self._drained = Event()
        self._drained.set()
        #: Unix socket files bound here, removed when the server stops.
        self._paths: list[str] = []
        for item in listeners:
            if isinstance(item, Listener):
                item = (item, bind(item))
                if isinstance(item[0].address, str):
                    self._paths.append(item[0].address)
            self.doors.append(Door(item[0], item[1], settings))

    @property
    def listeners(self) -> list[Listener]:
        """Each listener, with the port it actually bound."""
        return [door.bound for door in self.doors]

    def start(self) -> None:
        """Start accepting on every listener."""
        if self._watchers or self._closed:
            return
        hub = get_hub()
        self._hub = hub
        _keep_stack_chunks()
        for door in self.doors:
            door.sock.setblocking(False)
            watcher = hub.loop.io(door.sock.fileno(), 1)
            self._watchers.append((watcher, door))
        self._resume()

    def serve_forever(self) -> None:
        """Start and block until :meth:`stop`."""
        self.start()
        self._stopped.wait()

    # -- accepting -------------------------------------------------------------

    def _resume(self) -> None:
        if not self._accepting and not self._closed:
            self._accepting = True
            for watcher, door in self._watchers:
                watcher.start(self._on_acceptable, door)

    def _pause(self) -> None:
        if self._accepting:
            self._accepting = False
            for watcher, _ in self._watchers:
                watcher.stop()

    def _on_acceptable(self, door: Door) -> None:
        """Accept what is waiting (in the hub), a greenlet per connection."""
        listening = door.sock
        family = listening.family
        connections = self.connections
        hub = self._hub
        for _ in range(_ACCEPT_BATCH):
            if len(connections) >= self.max_connections:
                self._pause()  # resumed as a connection ends
                return
            try:
                fd, addr = listening._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the backlog keeps the client waiting.
                log.error("accept on %s failed: %s", door.bound.spec, exc)
                return
            sock = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
            child = greenlet(self._handle, parent=hub)
            connections[child] = None
            self._drained.clear()
            child.switch(door, sock, addr)

    def _handle(self, door: Door, raw: socket.socket, addr: Any) -> None:
        current = getcurrent()
        try:
            raw.setblocking(False)
            if door.inet and not _NODELAY_INHERITED:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: Any = Stream(raw)
            initial = b""
            peer = addr
            if door.listener.protocol != "http" or door.listener.proxy_protocol:
                try:
                    sock, addr, initial = door.prepare(sock, addr)
                except OSError as exc:
                    log.info("connection from %s dropped: %s", addr, exc)
                    raw.close()
                    return
            conn = door.connection(sock, addr)
            if addr is not peer:
                conn.peer = peer  # addr came from a PROXY header
            if initial:
                conn.buf += initial
            self.connections[current] = conn
            conn.run()
        except GreenletExit:
            raw.close()
        except BaseException:
            log.exception("error serving %s", addr)
            raw.close()
        finally:
            del self.connections[current]
            if not self.connections:
                self._drained.set()
            if not self._accepting:
                self._resume()

    # -- stopping ---------------------------------------------------------------

    def stop(self, timeout: Optional[float] = 10.0) -> None:
        """Graceful stop: no new connections, close 1001 to every WebSocket,
        wait up to ``timeout`` seconds for connections to end, then kill them.
        """
        self._pause()
        self._closed = True
        for door in self.doors:
            door.sock.close()  # new clients are refused, open ones go on
        self.registry.close_all(1001, "going away")
        # Kept-alive HTTP connections waiting for a request end now; those
        # mid-request finish it (and then close: no keep-alive while stopping).
        for child, conn in list(self.connections.items()):
            if conn is not None:
                conn.stopping = True
                if conn.idle:
                    _kill(child)
        if not self._drained.wait(timeout=timeout):
            log.warning(
                "%d connections still open after %ss; closing them",
                len(self.connections),
                timeout,
            )
            for ws in self.registry:
                ws.abort(1001)
            for child in list(self.connections):
                _kill(child)
            self._drained.wait(timeout=1)
        self.registry.stop()
        for watcher, _ in self._watchers:
            watcher.close()
        self._watchers = []
        for path in self._paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._stopped.set()
        gevent.idle()


#: Whether accepted sockets inherit TCP_NODELAY from the listener (Linux).
_NODELAY_INHERITED = sys.platform.startswith("linux")

#: Connections taken per wake-up of a listener, so one busy listener cannot
#: keep the hub from everything else for long.
_ACCEPT_BATCH = 64


#: Freed interpreter stack chunks (16 KiB each) kept for the next greenlets.
_STACK_CHUNKS_KEPT = 64


def _keep_stack_chunks() -> None:
    """Reuse the 16 KiB frame stack each connection's greenlet gets on
    Python 3.11+ instead of an mmap, a page fault and a munmap per
    connection (most of a greenlet's start-up cost; see geows/_speedups.c).
    Process-wide and idempotent; nothing happens without the C speedup.
    """
    try:
        from geows._speedups import (  # type: ignore[attr-defined,import-not-found,unused-ignore]
            install_chunk_cache,
        )
    except ImportError:
        return
    install_chunk_cache(_STACK_CHUNKS_KEPT)


def _kill(child: greenlet) -> None:
    """End a connection's greenlet from the hub (never from itself)."""
    if not child.dead:
        get_hub().loop.run_callback(_throw, child)


def _throw(child: greenlet) -> None:
    if not child.dead:
        child.throw(GreenletExit)
