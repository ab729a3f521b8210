"""WebSocket: one upgraded connection on gevent, over the sans-I/O protocol.

How the I/O runs, and why:

* Reading is a libev read watcher whose callback (in the hub) reads what the
  socket has, feeds :class:`~geows.protocol.ServerProtocol` and queues
  complete messages. An idle connection therefore costs no greenlet besides
  the application's own, and pings are answered at once whatever the
  application is doing. At most ``Limits.max_queued_messages`` wait for the
  application; then reading pauses and TCP pushes back on the peer.
* Writing tries a non-blocking ``send`` at once; what the socket does not
  take waits in an ordered list of chunks flushed by a write watcher, with
  several frames going out in one ``sendmsg`` call. Frames are appended
  whole, never interleaved, whichever greenlet sends. A sender waits only
  when more than ``Limits.write_buffer_high`` bytes are pending.
* Keepalive (pings, pong deadline, stalled sends) is one sweeper greenlet for
  all connections: see :class:`~geows.keepalive.Registry`.
"""

from __future__ import annotations

import logging
import socket
import weakref
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from gevent import Timeout, get_hub
from gevent.hub import Waiter

from geows.channels import Hub, current_hub
from geows.exceptions import ConnectionClosed, ConnectionClosedOK
from geows.frames import OP_PING, OP_PONG, BytesLike, frame_header
from geows.limits import Limits, Timeouts
from geows.protocol import Close, Message, ServerProtocol, State

if TYPE_CHECKING:
    from geows.tls import TLSTransport

__all__ = ["WebSocket"]

log = logging.getLogger("geows.connection")

#: Keepalive sends a ping and a gratuitous pong together (RFC 6455 5.5.3:
#: an unsolicited pong is a unidirectional heartbeat).
KEEPALIVE_FRAMES = frame_header(OP_PING, 0) + frame_header(OP_PONG, 0)
_RECV_SIZE = 256 * 1024
_SENDMSG_MAX = 64  # chunks per sendmsg call, well under IOV_MAX
_DEFAULT_LIMITS = Limits()
_DEFAULT_TIMEOUTS = Timeouts()


class WebSocket:
    """A server-side WebSocket connection.

    Created by :func:`geows.accept` (or the uWSGI adapter) once the 101 is
    written. Any greenlet may :meth:`send`; one greenlet at a time may
    :meth:`recv`.
    """

    # Slots: thousands of idle connections each save a dict (see loadtest e).
    __slots__ = (
        "__weakref__",
        "_after_flush",
        "_app_reads",
        "_channels",
        "_chunks",
        "_discard",
        "_drain_waiters",
        "_failing",
        "_fd",
        "_fd_shared",
        "_finished",
        "_flush_scheduled",
        "_high",
        "_hub",
        "_loop",
        "_max_queued",
        "_on_finish",
        "_over_since",
        "_paused",
        "_pending",
        "_proto",
        "_queue",
        "_raw",
        "_registry",
        "_rwatch",
        "_scratch",
        "_sock",
        "_timer",
        "_waiter",
        "_wwatch",
        "environ",
        "error",
        "last_progress",
        "last_recv",
        "limits",
        "messages_in",
        "messages_out",
        "next_ping",
        "opened_at",
        "ping_sent_at",
        "subprotocol",
        "timeouts",
    )

    def __init__(
        self,
        sock: socket.socket,
        environ: dict[str, Any],
        *,
        subprotocol: Optional[str] = None,
        limits: Limits = _DEFAULT_LIMITS,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        registry: Optional[Any] = None,
        hub: Optional[Hub] = None,
        initial: bytes = b"",
        on_finish: Optional[Callable[[WebSocket], None]] = None,
        transport: Optional[TLSTransport] = None,
    ) -> None:
        self.environ = environ
        self.subprotocol = subprotocol
        self.limits = limits
        self.timeouts = timeouts
        self._sock = sock
        self._fd = sock.fileno()
        # A protocol error is enacted by _fail_now, so that an app waiting in
        # recv can answer the messages before the bad frame first.
        self._proto = ServerProtocol(limits, defer_failure=True)
        gevent_hub = get_hub()
        self._loop = loop = gevent_hub.loop
        self._raw: Union[socket.socket, TLSTransport]
        if transport is None:
            # gevent sockets keep the raw non-blocking socket in ``_sock``;
            # the watchers below do the waiting, so the raw one is what we call.
            self._raw = getattr(sock, "_sock", sock)
            self._rwatch = loop.io(self._fd, 1)
        else:
            # TLS: the same calls through the SSL object (geows.tls), and a
            # read watcher that also fires for bytes decrypted but unread.
            # Chosen once here: the plain path pays nothing per read or write.
            self._raw = transport
            self._rwatch = transport.read_watcher(loop)
        self._scratch = _scratch_buffer(gevent_hub)
        self._wwatch: Any = None
        self._timer: Any = None
        # Few messages wait at once (max_queued_messages): a list is smaller
        # than a deque per idle connection and pop(0) is cheap at that size.
        self._queue: list[Message] = []
        self._discard = False
        self._hub = hub
        self._channels: Optional[set[str]] = None
        self._flush_scheduled = False
        self._over_since: Optional[float] = None
        self._failing = False
        self._app_reads = False
        self._fd_shared = False
        self._max_queued = limits.max_queued_messages
        self._paused = False
        self._waiter: Optional[Waiter] = None
        self._chunks: Optional[deque[memoryview]] = None  # made when a send blocks
        self._pending = 0
        self._drain_waiters: list[Waiter] = []
        self._high = limits.write_buffer_high
        self._finished = False
        self._after_flush: Optional[Callable[[], None]] = None
        self._registry = registry
        self._on_finish = on_finish
        now = loop.now()
        self.opened_at = now
        self.last_recv = now
        self.last_progress = now
        self.ping_sent_at: Optional[float] = None
        self.next_ping = now + (timeouts.ping_interval or 0.0)
        self.messages_in = 0
        self.messages_out = 0
        self.error: Optional[BaseException] = None
        if registry is not None:
            registry.add(self)
        if initial:
            self._on_data(initial)
        if not self._finished and not self._paused:
            self._rwatch.start(self._on_readable)

    # -- public API ------------------------------------------------------------

    @property
    def remote_addr(self) -> Optional[str]:
        """The client's address as the WSGI environ has it."""
        return self.environ.get("REMOTE_ADDR")

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed: sends will fail."""
        return self._proto.state is not State.OPEN or self._finished

    @property
    def close_code(self) -> Optional[int]:
        """How the connection ended, once it is closing or closed."""
        if self._proto.state is State.OPEN and not self._finished:
            return None
        return self._proto.close_code

    @property
    def close_reason(self) -> str:
        """The reason that goes with :attr:`close_code`."""
        return self._proto.close_reason

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._fd

    def app_reads(self) -> int:
        """Hand reading to the application; returns the socket's descriptor.

        For uWSGI's pattern ``select([connection_fd(), other], ...)`` then
        ``websocket_recv_nb()``: the descriptor must turn readable when the
        peer sends, so the background reader stops and :meth:`recv_nowait`
        reads the socket itself. As in uWSGI, pings and pongs are then seen
        when the app reads; blocking :meth:`recv` still works. Closing hands
        reading back to the background.
        """
        if not self._app_reads and not self._finished:
            self._app_reads = self._fd_shared = True
            if self._waiter is None:  # a waiting recv stops it when it wakes
                self._rwatch.stop()
        return self._fd

    def recv(self, timeout: Optional[float] = None) -> Union[str, bytes]:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises :class:`~geows.ConnectionClosed` once the connection is closed
        and every message received before has been returned, and
        ``gevent.Timeout`` when ``timeout`` seconds pass first.
        """
        message = self.recv_message(timeout)
        return message.text if message.text is not None else message.data

    def recv_message(self, timeout: Optional[float] = None) -> Message:
        """The next :class:`~geows.protocol.Message` (payload and text)."""
        queue = self._queue
        if not queue:
            # One deadline for the whole wait: wake-ups that bring no
            # message (a ping, a frame dropped while closing) do not reset it.
            timer = None if timeout is None else Timeout.start_new(timeout)
            try:
                self._wait_message()
            finally:
                if timer is not None:
                    timer.cancel()
        message = queue.pop(0)
        if self._paused and len(queue) <= self._max_queued // 2:
            self._resume()
        return message

    def _wait_message(self) -> None:
        queue = self._queue
        while not queue:
            if self._finished or self._proto.state is State.CLOSED:
                raise self._closed_exception()
            if self._proto.failure is not None:
                self._fail_now()  # the app has had every message before it
                raise self._closed_exception()
            if self._waiter is not None:
                raise RuntimeError("another greenlet is already in recv()")
            waiter = self._waiter = Waiter()
            if self._app_reads and not self._paused:
                # The app reads: read only while it waits here.
                self._rwatch.start(self._on_readable)
            try:
                waiter.get()
            finally:
                self._waiter = None
                # Re-checked: closing may have handed reading back meanwhile.
                if self._app_reads:
                    self._rwatch.stop()

    def recv_nowait(self) -> Optional[Message]:
        """A complete message if one is queued, else None; never blocks.

        Raises :class:`~geows.ConnectionClosed` when closed and drained.
        """
        queue = self._queue
        if (
            not queue
            and self._app_reads
            and self._waiter is None
            and not self._finished
        ):
            self._on_readable()  # non-blocking: what the socket has now
        if queue:
            message = queue.pop(0)
            if self._paused and len(queue) <= self._max_queued // 2:
                self._resume()
            return message
        if self._proto.failure is not None:
            self._fail_now()
        if self._finished or self._proto.state is not State.OPEN:
            raise self._closed_exception()
        return None

    def __iter__(self) -> Iterator[Union[str, bytes]]:
        """Messages until a normal close; an abnormal one raises."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedOK:
                return

    def send(self, data: Union[str, BytesLike]) -> None:
        """Send a text message for ``str``, a binary one for bytes-like."""
        if isinstance(data, str):
            self.send_frame(self._proto.send_text(data))
        else:
            self.send_frame(self._proto.send_binary(data))

    def send_text(self, data: Union[str, BytesLike]) -> None:
        """Send a text message; bytes must be UTF-8 (sent as they are)."""
        self.send_frame(self._proto.send_text(data))

    def send_binary(self, data: BytesLike) -> None:
        """Send a binary message."""
        self.send_frame(self._proto.send_binary(data))

    def ping(self, data: bytes = b"") -> None:
        """Send a ping; the peer's pong counts as a sign of life."""
        self.send_frame(self._proto.send_ping(data))

    def send_frame(self, frame: BytesLike) -> None:
        """Write an already framed message (the same bytes may go to many).

        Waits while more than ``Limits.write_buffer_high`` bytes are pending;
        raises :class:`~geows.ConnectionClosed` if the connection is closed.
        """
        if self._pending > self._high:
            self._wait_drain()
        if self._finished or self._proto.state is not State.OPEN:
            raise self._closed_exception()
        self.messages_out += 1
        self._write(frame)

    # -- channels --------------------------------------------------------------

    def join(self, name: str) -> None:
        """Join channel ``name``: its messages are sent to this socket in the
        background, whatever the app is doing. Left on close.
        """
        if self._finished:
            raise self._closed_exception()
        hub = self._hub if self._hub is not None else current_hub()
        self._hub = hub
        if self._channels is None:
            self._channels = set()
        self._channels.add(name)
        hub.join(name, self)

    def leave(self, name: str) -> None:
        """Leave channel ``name``."""
        if self._channels and name in self._channels:
            self._channels.discard(name)
            assert self._hub is not None
            self._hub.leave(name, self)

    def deliver(self, frame: BytesLike) -> None:
        """Queue an already framed channel message; never waits.

        Frames queued in one turn of the loop go out in one ``sendmsg``. A
        member that falls too far behind is closed with 1008 (see
        ``Limits.max_channel_backlog``); a closed one is skipped.
        """
        if self._finished or self._proto.state is not State.OPEN:
            return
        self.messages_out += 1
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = deque()
        chunks.append(memoryview(frame))
        self._pending += len(frame)
        backlog = self.limits.max_channel_backlog
        if self._pending > backlog:
            if not (self._wwatch and self._wwatch.active):
                # Not blocked, just not flushed yet (a publisher bursting
                # without yielding): send now before judging the member.
                self._on_writable()
            if self._pending > 4 * backlog:
                self._too_slow()
                return
            if self._over_since is None:
                self._over_since = self._loop.now()
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Flush queued frames at the end of this loop turn, in one sendmsg
        (unless the writer already waits for the socket to take more)."""
        if not self._flush_scheduled and not (self._wwatch and self._wwatch.active):
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._chunks and not self._finished:
            self._on_writable()

    def _too_slow(self) -> None:
        """Close a member that cannot keep up: keep the frame being sent, drop
        the rest, and tell the peer why (1008) before closing.
        """
        log.warning(
            "websocket %s closed: %d bytes of channel messages unread",
            self.remote_addr,
            self._pending,
        )
        chunks = self._chunks
        if chunks:
            head = chunks.popleft()
            chunks.clear()
            chunks.append(head)
            self._pending = len(head)
        frame = self._proto.send_close(1008, "too slow to read channel messages")
        self.error = ConnectionError("too slow to read channel messages")
        self._write(frame)
        # Half-close and drain, as for failures: closing with unread input
        # would reset the connection and could destroy the 1008 in flight.
        self._queue_after_flush(self._shutdown_and_drain)
        self._schedule_flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close: send a close frame, wait for the peer's (up to
        ``Timeouts.close_timeout``), then close the TCP connection.
        """
        if self._proto.failure is not None:
            self._fail_now()  # with the failure's code; no close will come
            self.wait_closed()
            return
        frame = self._proto.send_close(code, reason)
        if frame and not self._finished:
            # The app is done reading: drop what comes before the peer's close
            # and read on until it arrives (RFC 6455 7.1.2).
            self._queue.clear()
            self._discard = True
            self._app_reads = False
            self._paused = True
            self._resume()
            self._write(frame)
            self._start_timer(self.timeouts.close_timeout, self._finish)
        self.wait_closed()

    def wait_closed(self, timeout: Optional[float] = None) -> None:
        """Block until the TCP connection is closed."""
        timer = None if timeout is None else Timeout.start_new(timeout)
        try:
            while not self._finished:
                self._wait_event()
        finally:
            if timer is not None:
                timer.cancel()

    def abort(self, code: int = 1011) -> None:
        """Fail now: a close frame if the socket takes it at once, then TCP close."""
        if self._finished:
            return
        if self._proto.state is State.OPEN:
            frame = self._proto.send_close(code, "")
            if not self._chunks:
                try:
                    self._raw.send(frame)
                except OSError:
                    pass
        self._finish()

    # -- read side (hub callbacks) ---------------------------------------------

    def _on_readable(self) -> None:
        scratch = self._scratch
        try:
            n = self._raw.recv_into(scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.error = exc
            self._finish()
            return
        if n:
            self._on_data(scratch[:n])
        else:
            self._on_eof()

    def _on_data(self, data: BytesLike) -> None:
        proto = self._proto
        self.last_recv = self._loop.now()
        events = proto.receive_data(data)
        if proto.output:
            self._write(proto.data_to_send())
        queue = self._queue
        for event in events:
            if type(event) is Message:
                self.messages_in += 1
                if not self._discard:
                    queue.append(event)
            elif type(event) is Close:
                self._closing_handshake_done()
        if self._finished:
            pass
        elif proto.failure is not None:
            waiter = self._waiter
            if queue and waiter is not None:
                # The app waits in recv: it takes the messages that came
                # before the bad frame and answers them, until it blocks
                # again, before our close goes out (RFC 6455 7.1.7 stops
                # processing only after the bad frame; Autobahn 3.2, 4.1.3,
                # 5.15 expect the answers).
                waiter.switch(None)
            self._fail_now()
        elif len(queue) >= self._max_queued and not self._paused:
            self._paused = True
            self._rwatch.stop()
        waiter = self._waiter
        if waiter is not None and (queue or proto.state is not State.OPEN):
            waiter.switch(None)

    def _on_eof(self) -> None:
        self._proto.receive_eof()
        self._finish()

    def _resume(self) -> None:
        if self._paused and not self._finished:
            self._paused = False
            if not self._app_reads:
                self._rwatch.start(self._on_readable)

    def _closing_handshake_done(self) -> None:
        """A close frame arrived: the server closes TCP first (RFC 6455 7.1.1)."""
        self._queue_after_flush(self._finish)

    def _fail_now(self) -> None:
        """Send the close frame of the protocol's failure, then close TCP."""
        if self._finished or self._failing:
            return
        self._failing = True
        proto = self._proto
        if proto.state is State.OPEN:  # else our close frame is already out
            proto.fail_connection()
            self._write(proto.data_to_send())
        self._failed()

    def _failed(self) -> None:
        """We failed the connection: flush the close frame, then close TCP."""
        self._queue_after_flush(self._shutdown_and_drain)

    def _shutdown_and_drain(self) -> None:
        self._app_reads = False
        self._paused = True
        # Closing with unread input would send RST and could destroy our
        # close frame in flight; half-close and let the peer finish instead.
        try:
            self._raw.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish()
            return
        self._resume()
        self._start_timer(self.timeouts.close_timeout, self._finish)

    def _queue_after_flush(self, action: Callable[[], None]) -> None:
        if self._chunks:
            self._after_flush = action
            self._start_timer(self.timeouts.close_timeout, self._finish)
        else:
            action()

    def _start_timer(self, seconds: float, callback: Callable[[], None]) -> None:
        if self._timer is None and not self._finished:
            self._timer = self._loop.timer(seconds)
            self._timer.start(callback)

    # -- write side --------------------------------------------------------------

    def _write(self, data: BytesLike) -> None:
        """Write whole frames in order; never blocks."""
        if self._finished:
            return
        if not self._chunks:
            try:
                sent = self._raw.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.error = exc
                self._finish()
                return
            if sent == len(data):
                return
            self.last_progress = self._loop.now()
            view = memoryview(data)[sent:]
            if self._chunks is None:
                self._chunks = deque()
            self._chunks.append(view)
            self._pending = len(view)
            if self._wwatch is None:
                self._wwatch = self._loop.io(self._fd, 2)
            self._wwatch.start(self._on_writable)
        else:
            self._chunks.append(memoryview(data))
            self._pending += len(data)

    def _on_writable(self) -> None:
        chunks = self._chunks
        assert chunks is not None
        try:
            if len(chunks) == 1:
                sent = self._raw.send(chunks[0])
            else:
                sent = self._raw.sendmsg(list(_first(chunks, _SENDMSG_MAX)))
        except (BlockingIOError, InterruptedError):
            self._arm_writer()
            return
        except OSError as exc:
            self.error = exc
            self._finish()
            return
        self.last_progress = self._loop.now()
        self._pending -= sent
        while sent:
            head = chunks[0]
            if sent >= len(head):
                sent -= len(head)
                chunks.popleft()
            else:
                chunks[0] = head[sent:]
                sent = 0
        if (
            self._over_since is not None
            and self._pending <= self.limits.max_channel_backlog
        ):
            self._over_since = None
        if not chunks:
            if self._wwatch is not None:
                self._wwatch.stop()
            action, self._after_flush = self._after_flush, None
            if action is not None:
                action()
        else:
            self._arm_writer()
        if self._drain_waiters and self._pending <= self._high // 2:
            self._wake_drainers()

    def _arm_writer(self) -> None:
        """Flush the rest when the socket can take it."""
        watcher = self._wwatch
        if watcher is None:
            watcher = self._wwatch = self._loop.io(self._fd, 2)
        if not watcher.active:
            watcher.start(self._on_writable)

    def _wait_drain(self) -> None:
        while self._pending > self._high and not self._finished:
            self._wait_event()

    def _wait_event(self) -> None:
        """Sleep until the write buffer drains or the connection finishes."""
        waiter = Waiter()
        self._drain_waiters.append(waiter)
        try:
            waiter.get()
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def _wake_drainers(self) -> None:
        # Deferred: we may be in the hub, in a sweeper greenlet or in the app.
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            self._loop.run_callback(waiter.switch, None)

    # -- keepalive (called by the registry's sweeper) ----------------------------

    def keepalive(self, now: float) -> None:
        """Ping on schedule; fail a peer that stopped answering or reading."""
        timeouts = self.timeouts
        if self._finished:
            return
        over = self._over_since
        if over is not None and now - over > timeouts.slow_member_timeout:
            if self._proto.state is State.OPEN:
                self._too_slow()
            return
        interval = timeouts.ping_interval
        if interval is None:
            return
        stall = interval + timeouts.pong_tolerance
        if self._chunks and now - self.last_progress > stall:
            self._dead("send stalled")
            return
        sent_at = self.ping_sent_at
        if sent_at is not None:
            if self.last_recv >= sent_at:
                self.ping_sent_at = None
            elif now - sent_at > timeouts.pong_tolerance and not self._paused:
                if self._input_waiting():
                    # Its answer is in the socket, not read yet (the app
                    # reads itself, or this tick ran before the read
                    # callback): alive.
                    self.last_recv = now
                    self.ping_sent_at = None
                else:
                    self._dead("no pong")
                    return
        if now >= self.next_ping and self._proto.state is State.OPEN:
            self.next_ping = now + interval
            # Only a ping actually written starts the pong deadline: a peer
            # that reads a backlog slowly is not dead for one it never got.
            if self._pending <= self._high:
                if self.ping_sent_at is None:
                    self.ping_sent_at = now
                self._write(KEEPALIVE_FRAMES)

    def _input_waiting(self) -> bool:
        """Whether the peer sent bytes we have not read (a peek, no read)."""
        try:
            return bool(self._raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:
            return False

    def _dead(self, why: str) -> None:
        log.info("websocket %s dead: %s", self.remote_addr, why)
        self.error = ConnectionError(why)
        self.abort(1011)

    # -- the end -------------------------------------------------------------------

    def _finish(self) -> None:
        """Close the TCP connection and wake everyone waiting; idempotent."""
        if self._finished:
            return
        self._finished = True
        if self._proto.state is not State.CLOSED:
            self._proto.receive_eof()
        self._rwatch.stop()
        if self._wwatch is not None:
            self._wwatch.stop()
        if self._timer is not None:
            self._timer.stop()
        self._chunks = None
        self._pending = 0
        if self._fd_shared:
            # The app watches this fd itself (select on connection_fd), so
            # gevent defers close() until the hub wakes: shut down first.
            try:
                self._raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._sock.close()
        except OSError:
            pass
        if self._registry is not None:
            self._registry.discard(self)
        if self._channels:
            hub = self._hub
            assert hub is not None
            for name in self._channels:
                hub.leave(name, self)
            self._channels = None
        if self._on_finish is not None:
            self._on_finish(self)
        if self._drain_waiters:
            self._wake_drainers()
        waiter = self._waiter
        if waiter is not None:
            # Deferred, never a switch from inside a caller's loop.
            self._loop.run_callback(waiter.switch, None)

    def _closed_exception(self) -> ConnectionClosed:
        exc = self._proto.closed_exception()
        if self.error is not None:
            exc.__cause__ = self.error
        elif self._proto.failure is not None:
            exc.__cause__ = self._proto.failure
        return exc

    def __repr__(self) -> str:
        return f"<WebSocket {self.remote_addr} {self._proto.state.name}>"


def _scratch_buffer(hub: Any) -> memoryview:
    """The read buffer of this hub, shared by its connections.

    Safe to share: a read callback hands it to ``ServerProtocol``, which
    copies what it keeps, before anything can switch greenlets; one buffer
    per hub (so per thread) instead of 256 KiB per idle connection.
    """
    global _last_scratch
    last = _last_scratch
    if last is not None and last[0]() is hub:
        return last[1]  # one hub per process, in practice: no dict lookup
    scratch = _SCRATCH.get(hub)
    if scratch is None:
        scratch = _SCRATCH[hub] = memoryview(bytearray(_RECV_SIZE))
    _last_scratch = (weakref.ref(hub), scratch)
    return scratch


_SCRATCH: weakref.WeakKeyDictionary[Any, memoryview] = weakref.WeakKeyDictionary()
#: The hub asked for last and its buffer (the hub by weak reference).
_last_scratch: Optional[tuple[weakref.ref[Any], memoryview]] = None


def _first(chunks: deque[memoryview], n: int) -> Iterator[memoryview]:
    for i, chunk in enumerate(chunks):
        if i == n:
            return
        yield chunk
