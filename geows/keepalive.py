"""Registry: the open WebSockets of a server, and the one keepalive sweeper.

One greenlet for all connections instead of one per connection: an idle
connection then costs no stack of its own (see ``loadtest/`` scenario e).
The sweeper wakes a few times per tolerance window, so a dead peer is found
at most a quarter of the tolerance late.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import gevent
from gevent import get_hub

from geows.limits import Timeouts

if TYPE_CHECKING:
    from geows.connection import WebSocket

__all__ = ["Registry"]

log = logging.getLogger("geows.keepalive")


class Registry:
    """The live WebSockets of one server; pings them and closes them all."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._sockets: set[WebSocket] = set()
        self._sweeper: Optional[gevent.Greenlet] = None
        # Fine enough for the shortest deadline it watches: pong tolerance,
        # or the slow-member timeout, which applies even without pings.
        deadlines = [timeouts.slow_member_timeout]
        if timeouts.ping_interval is not None:
            deadlines += [timeouts.ping_interval, timeouts.pong_tolerance]
        self.tick: Optional[float] = min(1.0, max(0.01, min(deadlines) / 4))

    def __len__(self) -> int:
        return len(self._sockets)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._sockets))

    def add(self, ws: WebSocket) -> None:
        """Track ``ws``; starts the sweeper with the first connection."""
        self._sockets.add(ws)
        if self._sweeper is None and self.tick is not None:
            self._sweeper = gevent.spawn(self._sweep)

    def discard(self, ws: WebSocket) -> None:
        """Stop tracking ``ws`` (it finished)."""
        self._sockets.discard(ws)

    def _sweep(self) -> None:
        loop = get_hub().loop
        tick = self.tick
        assert tick is not None
        while self._sockets:
            gevent.sleep(tick)
            now = loop.now()
            for ws in list(self._sockets):
                try:
                    ws.keepalive(now)
                except Exception:  # one bad connection must not stop the rest
                    log.exception("keepalive failed for %r", ws)
        self._sweeper = None

    def close_all(self, code: int = 1001, reason: str = "going away") -> None:
        """Start the closing handshake on every connection (server shutdown)."""
        for ws in list(self._sockets):
            gevent.spawn(_close_quietly, ws, code, reason)

    def stop(self) -> None:
        """Kill the sweeper."""
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None


def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    try:
        ws.close(code, reason)
    except Exception:
        log.debug("close of %r failed", ws, exc_info=True)
