"""Stream: a plain TCP/Unix connection with the blocking API the HTTP loop uses.

``recv``, ``sendall`` and ``settimeout`` behave like a gevent socket's, on the
raw non-blocking socket: the call goes straight to the kernel, and only when
the kernel says it would block does the greenlet wait, on a watcher made for
that wait. A gevent socket makes two watchers and more when it is created
and schedules callbacks when it is closed; at thousands of handshakes a
second that was a quarter of the server's instructions (measured with
``perf stat``, see the commit). TLS listeners use gevent's SSL socket, which
has the same four methods.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from gevent import get_hub
from gevent.hub import Waiter

__all__ = ["Stream"]


class Stream:
    """One accepted connection: the raw socket plus cooperative waits."""

    __slots__ = ("_sock", "_timeout")

    def __init__(self, sock: socket.socket) -> None:
        #: The raw non-blocking socket (the WebSocket layer reads it directly).
        self._sock = sock
        self._timeout: Optional[float] = None

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        """Seconds a later recv/sendall may wait (None: forever)."""
        self._timeout = timeout

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at end of stream; socket.timeout."""
        sock = self._sock
        while True:
            try:
                return sock.recv(size)
            except BlockingIOError:
                self._wait(1)

    def sendall(self, data: Any) -> None:
        """Send every byte, waiting while the kernel's buffer is full."""
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                self._wait(2)
                continue
            view = view[sent:]

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self._sock.setsockopt(level, option, value)

    def close(self) -> None:
        self._sock.close()

    def detach_to_gevent(self) -> Any:
        """A gevent socket that takes over this connection (TLS wraps one)."""
        import gevent.socket

        raw = self._sock
        return gevent.socket.socket(raw.family, raw.type, 0, raw.detach())

    def _wait(self, events: int) -> None:
        """Sleep until the socket is readable (1) or writable (2)."""
        hub = get_hub()
        loop = hub.loop
        waiter = Waiter(hub)
        watcher = loop.io(self._sock.fileno(), events)
        watcher.start(waiter.switch, None)
        timer = None
        if self._timeout is not None:
            timer = loop.timer(self._timeout)
            timer.start(waiter.switch, _TIMED_OUT)
        try:
            if waiter.get() is _TIMED_OUT:
                raise socket.timeout("timed out")
        finally:
            watcher.stop()
            watcher.close()
            if timer is not None:
                timer.stop()
                timer.close()


_TIMED_OUT = object()
