"""Server: a gevent StreamServer (composed, not subclassed) serving WSGI + WebSockets.

One greenlet per connection from a bounded pool (the connection cap), the
keepalive registry of its WebSockets, and a graceful stop: stop accepting,
close every WebSocket with 1001, wait up to a grace period, then cut.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from typing import Any, Optional

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

from geows.keepalive import Registry
from geows.wsgi import HTTPConnection, Settings

__all__ = ["Server"]

log = logging.getLogger("geows.server")


class Server:
    """Serves one WSGI app with WebSocket upgrades on one or more listeners."""

    def __init__(
        self,
        settings: Settings,
        listeners: list[Any],
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
        self.servers = [
            StreamServer(
                listener,
                self._handle,
                spawn=self.pool,
                # gevent takes a backlog only for addresses it binds itself;
                # a socket handed over (workers) is already listening.
                backlog=None if hasattr(listener, "accept") else 2048,
            )
            for listener in listeners
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener."""
        return [server.address for server in self.servers]

    def start(self) -> None:
        """Bind (if needed) and start accepting."""
        for server in self.servers:
            server.start()

    def serve_forever(self) -> None:
        """Start and block until :meth:`stop`."""
        self.start()
        for server in self.servers:
            server._stop_event.wait()

    def _handle(self, sock: socket.socket, addr: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small frames go out at once instead of waiting for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = HTTPConnection(self.settings, sock, addr)
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
        gevent.idle()
