"""Locust users that speak WebSocket through :mod:`geows.client`.

Locust ships HTTP users only, so :class:`WebSocketUser` adds a WebSocket
connection per user and reports each operation as a locust request of type
``WS`` (connect, echo round trip, chat delivery): the usual statistics,
percentiles and failure counts then apply. The host is locust's ``--host``,
a ``ws://`` URL; each user class names its path::

    geows serve examples/echo.py --http 127.0.0.1:8000 --disable-logging
    locust -f loadtest/locustfile.py --headless -u 50 -r 50 -t 30s \\
        --host ws://127.0.0.1:8000 EchoUser

    geows serve examples/chat_native.py --http 127.0.0.1:8000 --disable-logging
    locust -f loadtest/locustfile.py --headless -u 50 -r 50 -t 30s \\
        --host ws://127.0.0.1:8000 ChatUser
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Optional

import gevent
from gevent.event import AsyncResult
from locust import User, constant_pacing, task

import geows
from geows.client import ClientWebSocket, connect

#: What a WebSocket operation may fail with: a closed connection, a reply
#: that did not come in time, a refused handshake, a network error.
FAILURES = (geows.ConnectionClosed, geows.InvalidHandshake, TimeoutError, OSError)


class WebSocketUser(User):
    """A locust user holding one WebSocket connection (reconnects when lost).

    Subclasses set ``path`` and write tasks around :attr:`ws`; they time an
    operation with ``start = time.perf_counter()`` and report it with
    :meth:`report`.
    """

    abstract = True
    #: Path (and query) appended to ``--host``.
    path = "/"
    #: Seconds for connecting and for each reply.
    timeout = 10.0

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.ws: Optional[ClientWebSocket] = None

    def on_start(self) -> None:
        """Connect as soon as the user starts, so connects are measured apart."""
        self.connect()

    def on_stop(self) -> None:
        """Close the connection with a closing handshake."""
        self.disconnect()

    def connect(self) -> Optional[ClientWebSocket]:
        """Open the connection (reported as ``connect``); None if it failed."""
        url = (self.host or "").rstrip("/") + self.path
        start = time.perf_counter()
        try:
            self.ws = connect(url, timeout=self.timeout)
        except (*FAILURES, ValueError) as exc:  # ValueError: --host is not ws://
            self.report("connect", start, 0, exc)
            return None
        self.report("connect", start, 0)
        return self.ws

    def disconnect(self) -> None:
        """Close and forget the connection (a new task reconnects)."""
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.close()

    def report(
        self,
        name: str,
        start: float,
        length: int,
        exception: Optional[BaseException] = None,
    ) -> None:
        """Fire a locust request event for an operation begun at ``start``."""
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )


class EchoUser(WebSocketUser):
    """Round trips of a 32-byte text message to an echo endpoint.

    For ``examples/echo.py`` (or ``examples/native_echo.py``) at ``/ws``.
    Each user sends one message at a time, 10 per second at most.
    """

    path = "/ws"
    wait_time = constant_pacing(0.1)

    def on_start(self) -> None:
        """Connect; number this user's messages so a wrong reply is caught."""
        self.seq = itertools.count()
        super().on_start()

    @task
    def echo(self) -> None:
        """Send 32 bytes, wait for the same 32 bytes back."""
        ws = self.ws or self.connect()
        if ws is None:
            return
        message = f"echo {next(self.seq):027d}"  # 32 bytes
        start = time.perf_counter()
        try:
            ws.send(message)
            reply = ws.recv(timeout=self.timeout)
        except FAILURES as exc:
            self.report("echo", start, 0, exc)
            self.disconnect()
            return
        if reply != message:
            self.report("echo", start, len(reply), AssertionError("wrong echo"))
            self.disconnect()  # replies are out of step: start over
            return
        self.report("echo", start, len(reply))


class ChatUser(WebSocketUser):
    """Members of one chat room; measures how fast a message reaches the room.

    For ``examples/chat_native.py`` at ``/chat``, which broadcasts every
    message to every member. A user sends a message once a second and
    times it until the broadcast brings it back to the user itself (a
    ``chat delivery``); meanwhile a reader greenlet receives everyone's
    messages, so the server's work grows with the square of the users.
    """

    path = "/chat"
    wait_time = constant_pacing(1.0)
    _ids = itertools.count()

    def on_start(self) -> None:
        """Connect and start reading the room."""
        self.uid = f"u{next(self._ids)}"
        self.seq = itertools.count()
        self.pending: dict[int, AsyncResult] = {}
        self.received = 0
        self.reader: Optional[gevent.Greenlet] = None
        super().on_start()

    def connect(self) -> Optional[ClientWebSocket]:
        """Connect, then read the room in a greenlet of its own."""
        ws = super().connect()
        if ws is not None:
            self.reader = gevent.spawn(self._read, ws)
        return ws

    def disconnect(self) -> None:
        """Stop reading, close."""
        if self.reader is not None:
            self.reader.kill()  # before close() reads the socket itself
            self.reader = None
        super().disconnect()

    def _read(self, ws: ClientWebSocket) -> None:
        """Receive the room's messages; resolve the ones this user sent."""
        try:
            for message in ws:
                self.received += 1
                sender, _, rest = str(message).partition(" ")
                if sender == self.uid:
                    result = self.pending.pop(int(rest.split(" ", 1)[0]), None)
                    if result is not None:
                        result.set(len(message))
        except FAILURES as exc:
            error: BaseException = exc
        else:
            error = geows.ConnectionClosedOK(1000)
        for result in self.pending.values():
            result.set_exception(error)
        self.pending.clear()

    @task
    def say(self) -> None:
        """Send a line to the room; report when it came back."""
        ws = self.ws or self.connect()
        if ws is None:
            return
        seq = next(self.seq)
        result = self.pending[seq] = AsyncResult()
        start = time.perf_counter()
        try:
            ws.send(f"{self.uid} {seq} hello from {self.uid}")
            length = result.get(timeout=self.timeout)
        except gevent.Timeout:
            self.pending.pop(seq, None)
            self.report("chat delivery", start, 0, TimeoutError("not delivered"))
            return
        except FAILURES as exc:
            self.pending.pop(seq, None)
            self.report("chat delivery", start, 0, exc)
            self.disconnect()
            return
        self.report("chat delivery", start, length)
