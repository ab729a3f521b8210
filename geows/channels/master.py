"""The master's channel hub: channels across the workers of one machine.

With ``--processes N`` and no ``--channels`` URL, the master forks a small
*hub process* that listens on a Unix socket in a private directory (mode
0700, from :func:`tempfile.mkdtemp`); every worker connects to it with a
:class:`MasterHubClient`. A worker tells the hub which channels have local
members (subscribe / unsubscribe) and hands it every publish; the hub sends
each publish, as a *message*, to every worker subscribed to its channel, the
publisher's own worker included. One connection per worker and one hub loop
keep each publisher's messages in the order it published them.

Why a process and not a thread of the master:

* the master forks workers (and, on ``SIGHUP``, a new generation of them)
  for as long as it runs; forking a process that has a second thread running
  is unsafe (a lock such as logging's, held by that thread at the fork, stays
  held forever in the child), so the master stays single-threaded;
* a bug or a memory blow-up in the hub cannot take the supervisor down: the
  master restarts a hub that died, and workers reconnect and subscribe again;
* the master binds the Unix socket itself, before forking the hub, and keeps
  it: a restarted hub inherits the same listening socket, so the address
  never changes and workers that reconnect early just wait in its backlog.

The hub never runs application code and never imports gevent: it is a plain
:mod:`selectors` loop (:class:`HubServer`). The wire format is a sans-I/O
codec (:func:`encode_frame`, :class:`Decoder`) shared by both ends::

    u32 length of the rest | u8 op | u8 opcode | u16 name length | name | payload

``op`` is one of :data:`SUBSCRIBE`, :data:`UNSUBSCRIBE`, :data:`PUBLISH`
(worker to hub) or :data:`MESSAGE` (hub to worker); ``opcode`` is the
WebSocket opcode of a publish or message (text or binary) and 0 otherwise;
the name is UTF-8. Sizes are bounded (:data:`MAX_NAME`, ``max_payload``),
and anything else is a :class:`HubProtocolError`.

This is the single-machine default; ``--channels redis://...`` is what
spans several machines.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from geows.channels import ChannelError, Hub
from geows.frames import OP_BINARY, OP_TEXT

if TYPE_CHECKING:
    import gevent
    from gevent.event import Event

__all__ = [
    "MAX_NAME",
    "MAX_PAYLOAD",
    "MESSAGE",
    "PUBLISH",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "Decoder",
    "Frame",
    "HubProtocolError",
    "HubServer",
    "MasterHubClient",
    "encode_frame",
]

log = logging.getLogger("geows.channels.master")

# -- the codec -------------------------------------------------------------------

SUBSCRIBE = 1
UNSUBSCRIBE = 2
PUBLISH = 3
MESSAGE = 4

OP_NAMES = {
    SUBSCRIBE: "SUBSCRIBE",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    PUBLISH: "PUBLISH",
    MESSAGE: "MESSAGE",
}
#: What a worker may send to the hub, and what the hub may send to a worker.
TO_HUB = frozenset({SUBSCRIBE, UNSUBSCRIBE, PUBLISH})
TO_WORKER = frozenset({MESSAGE})

#: Longest channel name, in UTF-8 bytes.
MAX_NAME = 1024
#: Default largest payload of one publish (64 MiB).
MAX_PAYLOAD = 64 * 1024 * 1024

_LENGTH = struct.Struct("!I")
_HEAD = struct.Struct("!IBBH")  # length, op, opcode, name length
_FIXED = _HEAD.size - _LENGTH.size  # bytes counted by length besides name+payload


class HubProtocolError(ValueError):
    """Bytes that are not a valid hub frame, or a frame over the limits."""


class Frame(NamedTuple):
    """One decoded frame."""

    op: int
    name: str
    opcode: int = 0
    payload: bytes = b""


def _check(
    op: int, opcode: int, name_len: int, payload_len: int, max_payload: int
) -> None:
    if op not in OP_NAMES:
        raise HubProtocolError(f"unknown op {op:#x}")
    if name_len > MAX_NAME:
        raise HubProtocolError(
            f"channel name of {name_len} bytes (the limit is {MAX_NAME})"
        )
    if op in (PUBLISH, MESSAGE):
        if opcode not in (OP_TEXT, OP_BINARY):
            raise HubProtocolError(
                f"{OP_NAMES[op]} with opcode {opcode:#x} (text or binary only)"
            )
        if payload_len > max_payload:
            raise HubProtocolError(
                f"payload of {payload_len} bytes (the limit is {max_payload})"
            )
    elif opcode or payload_len:
        raise HubProtocolError(f"{OP_NAMES[op]} with an opcode or a payload")


def encode_frame(
    op: int,
    name: str,
    opcode: int = 0,
    payload: bytes = b"",
    *,
    max_payload: int = MAX_PAYLOAD,
) -> bytes:
    """The bytes of one frame; :class:`HubProtocolError` if it is not valid."""
    try:
        raw_name = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HubProtocolError(f"channel name is not valid UTF-8: {exc}") from None
    _check(op, opcode, len(raw_name), len(payload), max_payload)
    length = _FIXED + len(raw_name) + len(payload)
    return _HEAD.pack(length, op, opcode, len(raw_name)) + raw_name + payload


class Decoder:
    """Frames from a byte stream, split anywhere.

    ``accept``: the ops this end may receive (another is an error);
    ``max_payload``: the largest payload accepted. Errors are raised as soon
    as the bytes that show them arrive (a frame's head is checked before its
    body is waited for); after an error the decoder refuses further input.
    """

    def __init__(
        self,
        accept: Iterable[int] = OP_NAMES,
        *,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self._accept = frozenset(accept)
        self._max_payload = max_payload
        self._buf = bytearray()
        self._checked = False  # the head of the frame _buf starts with is checked
        self._failed: Optional[HubProtocolError] = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; the frames it completes, in order."""
        if self._failed is not None:
            raise HubProtocolError(f"decoder failed earlier: {self._failed}")
        try:
            return self._feed(data)
        except HubProtocolError as exc:
            self._failed = exc
            raise

    def _feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        head = _HEAD.size
        while end - pos >= head:
            length, op, opcode, name_len = _HEAD.unpack_from(buf, pos)
            if not self._checked:
                self._check_head(length, op, opcode, name_len)
                self._checked = True
            total = _LENGTH.size + length
            if end - pos < total:
                break
            start = pos + head
            name_end = start + name_len
            try:
                name = buf[start:name_end].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise HubProtocolError(
                    f"channel name is not valid UTF-8: {exc}"
                ) from None
            frames.append(Frame(op, name, opcode, bytes(buf[name_end : pos + total])))
            pos += total
            self._checked = False
        if pos:
            del buf[:pos]
        return frames

    def _check_head(self, length: int, op: int, opcode: int, name_len: int) -> None:
        if length < _FIXED + name_len:
            raise HubProtocolError(
                f"frame length {length} is shorter than its head and "
                f"{name_len}-byte name"
            )
        if op in OP_NAMES and op not in self._accept:
            raise HubProtocolError(f"unexpected {OP_NAMES[op]} frame")
        _check(op, opcode, name_len, length - _FIXED - name_len, self._max_payload)


# -- the hub (its own process, no gevent) ----------------------------------------

#: Most bytes queued for one worker before the hub drops that worker.
MAX_BUFFER = 64 * 1024 * 1024
_RECV = 256 * 1024


class _Peer:
    """One worker's connection, as the hub sees it."""

    __slots__ = ("channels", "decoder", "label", "out", "sock", "writing")

    def __init__(self, sock: socket.socket, max_payload: int) -> None:
        self.sock = sock
        self.decoder = Decoder(TO_HUB, max_payload=max_payload)
        self.out = bytearray()
        self.channels: set[str] = set()
        self.writing = False
        self.label = _peer_label(sock)


def _peer_label(sock: socket.socket) -> str:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is not None:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            return f"worker {pid}"
        except OSError:
            pass
    return f"worker on fd {sock.fileno()}"


class HubServer:
    """Forwards publishes to the workers subscribed to their channel.

    Runs a blocking :mod:`selectors` loop over ``listener`` (a listening
    Unix socket) until :meth:`stop` or, with ``parent_pid``, until that
    process is gone. A worker that sends an invalid frame, or lets more
    than ``max_buffer`` bytes of messages pile up unread, is disconnected
    (it reconnects and subscribes again).
    """

    def __init__(
        self,
        listener: socket.socket,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self.listener = listener
        self.max_payload = max_payload
        self.max_buffer = max_buffer
        self.channels: dict[str, set[_Peer]] = {}
        self.peers: set[_Peer] = set()
        self._selector = selectors.DefaultSelector()
        self._dirty: set[_Peer] = set()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def stop(self) -> None:
        """Make :meth:`serve_forever` return (from any thread)."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def serve_forever(self, parent_pid: Optional[int] = None) -> None:
        """Serve until :meth:`stop`, or until ``parent_pid`` is not our parent."""
        sel = self._selector
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stopping:
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("channel hub: the master is gone; exiting")
                    return
                for key, events in sel.select(1.0):
                    peer = key.data
                    if peer is None:
                        if key.fileobj is self.listener:
                            self._accept()
                        continue
                    if events & selectors.EVENT_WRITE:
                        self._dirty.add(peer)
                    if events & selectors.EVENT_READ and peer in self.peers:
                        self._read(peer)
                self._flush()
        finally:
            for peer in list(self.peers):
                self._drop(peer, None)
            sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: try again on the next event
                log.error("channel hub: accept failed: %s", exc)
                return
            sock.setblocking(False)
            peer = _Peer(sock, self.max_payload)
            self.peers.add(peer)
            self._selector.register(sock, selectors.EVENT_READ, peer)
            log.debug("channel hub: %s connected", peer.label)

    def _read(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(peer, f"read failed: {exc}")
            return
        if not data:
            self._drop(peer, None)
            return
        try:
            frames = peer.decoder.feed(data)
        except HubProtocolError as exc:
            self._drop(peer, f"protocol error: {exc}")
            return
        for frame in frames:
            if frame.op == PUBLISH:
                self._forward(frame)
            elif frame.op == SUBSCRIBE:
                peer.channels.add(frame.name)
                self.channels.setdefault(frame.name, set()).add(peer)
            else:  # UNSUBSCRIBE
                self._unsubscribe(peer, frame.name)

    def _unsubscribe(self, peer: _Peer, name: str) -> None:
        peer.channels.discard(name)
        members = self.channels.get(name)
        if members is not None:
            members.discard(peer)
            if not members:
                del self.channels[name]

    def _forward(self, frame: Frame) -> None:
        members = self.channels.get(frame.name)
        if not members:
            return
        data = encode_frame(
            MESSAGE,
            frame.name,
            frame.opcode,
            frame.payload,
            max_payload=self.max_payload,
        )
        for peer in list(members):
            peer.out += data
            if len(peer.out) > self.max_buffer:
                self._drop(
                    peer,
                    f"{len(peer.out)} bytes of channel messages unread "
                    f"(limit {self.max_buffer}); messages for it are lost",
                )
            else:
                self._dirty.add(peer)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for peer in dirty:
            if peer not in self.peers:
                continue
            if peer.out:
                try:
                    sent = peer.sock.send(peer.out)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self._drop(peer, f"write failed: {exc}")
                    continue
                del peer.out[:sent]
            want = bool(peer.out)
            if want != peer.writing:
                peer.writing = want
                events = selectors.EVENT_READ
                if want:
                    events |= selectors.EVENT_WRITE
                self._selector.modify(peer.sock, events, peer)

    def _drop(self, peer: _Peer, reason: Optional[str]) -> None:
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        self._dirty.discard(peer)
        for name in list(peer.channels):
            self._unsubscribe(peer, name)
        try:
            self._selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()
        if reason is None:
            log.debug("channel hub: %s disconnected", peer.label)
        else:
            log.error("channel hub: dropping %s: %s", peer.label, reason)


# -- the worker's end (gevent) -----------------------------------------------------


class MasterHubClient(Hub):
    """A worker's hub: channels shared with the other workers of the master.

    Runs in a worker under gevent. Publishes go to the hub (and come back
    from it, like every other worker's, so a member sees its own worker's
    messages in the same order as everyone else). If the hub is down,
    :meth:`publish` raises :class:`~geows.channels.ChannelError`; the client
    reconnects with a backoff and subscribes its channels again.
    """

    #: Reconnection delays: first, growth factor, longest (seconds).
    retry_first = 0.05
    retry_max = 2.0

    def __init__(
        self,
        address: str,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_pending: int = MAX_BUFFER,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.address = address
        self.max_payload = max_payload
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self._sock: Optional[Any] = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._wakeup: Optional[Event] = None
        self._writer: Optional[gevent.Greenlet] = None
        self._runner: Optional[gevent.Greenlet] = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the hub connection is up (publishes can be handed over)."""
        return self._sock is not None

    # -- Hub hooks -----------------------------------------------------------------

    def start(self) -> None:
        """Connect (once, right away), then keep the connection up."""
        import gevent

        self._closed = False
        try:
            self._connect()
        except OSError as exc:
            log.warning(
                "channel hub at %s unreachable (%s); retrying", self.address, exc
            )
        self._runner = gevent.spawn(self._run)

    def close(self) -> None:
        """Disconnect and stop reconnecting."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.kill(block=False)
        self._disconnect(None)

    def _publish(self, name: str, opcode: int, payload: bytes) -> None:
        if self._sock is None:
            raise ChannelError(
                f"channel hub at {self.address} is not connected; "
                f"message to {name!r} not sent"
            )
        try:
            frame = encode_frame(
                PUBLISH, name, opcode, payload, max_payload=self.max_payload
            )
        except HubProtocolError as exc:
            raise ChannelError(f"cannot publish to {name!r}: {exc}") from None
        if self._out_size + len(frame) > self.max_pending:
            raise ChannelError(
                f"channel hub is not keeping up ({self._out_size} bytes queued); "
                f"message to {name!r} not sent"
            )
        self._queue(frame)

    def _subscribe(self, name: str) -> None:
        if self._sock is not None:
            self._queue(encode_frame(SUBSCRIBE, name))
        # else: subscribed with every other channel once reconnected

    def _unsubscribe(self, name: str) -> None:
        if self._sock is not None:
            self._queue(encode_frame(UNSUBSCRIBE, name))

    # -- the connection ------------------------------------------------------------

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_size += len(frame)
        if self._wakeup is not None:
            self._wakeup.set()

    def _connect(self) -> None:
        """Connect and queue a subscribe per channel with members (no yield
        between the two: a join meanwhile cannot be missed).
        """
        import gevent
        from gevent import socket as gsocket
        from gevent.event import Event

        sock = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(self.address)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._out = []
        self._out_size = 0
        self._wakeup = wakeup = Event()
        for name in self.channels:
            self._queue(encode_frame(SUBSCRIBE, name))
        self._writer = gevent.spawn(self._write_loop, sock, wakeup)
        log.debug("connected to the channel hub at %s", self.address)

    def _disconnect(self, reason: Optional[str]) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        unsent = len(self._out)
        self._out = []
        self._out_size = 0
        self._wakeup = None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.kill(block=False)
        sock.close()
        if reason is not None:
            lost = f"; {unsent} queued frames not sent" if unsent else ""
            log.warning(
                "channel hub connection lost (%s)%s; reconnecting", reason, lost
            )

    def _run(self) -> None:
        import gevent

        delay = self.retry_first
        failures = 0
        while not self._closed:
            sock = self._sock
            if sock is None:
                try:
                    self._connect()
                except OSError as exc:
                    failures += 1
                    if failures == 1 or failures % 20 == 0:
                        log.warning(
                            "channel hub at %s unreachable (%s); retrying",
                            self.address,
                            exc,
                        )
                    gevent.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                if failures:
                    log.info("reconnected to the channel hub")
                failures = 0
                delay = self.retry_first
                continue
            reason = self._read_loop(sock)
            if not self._closed:
                self._disconnect(reason)

    def _read_loop(self, sock: Any) -> str:
        decoder = Decoder(TO_WORKER, max_payload=self.max_payload)
        while True:
            try:
                data = sock.recv(_RECV)
            except OSError as exc:
                return f"read failed: {exc}"
            if not data:
                return "the hub closed the connection"
            try:
                frames = decoder.feed(data)
            except HubProtocolError as exc:
                log.error("channel hub sent an invalid frame: %s", exc)
                return f"protocol error: {exc}"
            for frame in frames:
                self.dispatch(frame.name, frame.opcode, frame.payload)

    def _is_current(self, sock: Any) -> bool:
        return self._sock is sock

    def _write_loop(self, sock: Any, wakeup: Event) -> None:
        while True:
            wakeup.wait()
            wakeup.clear()
            while self._out:
                if not self._is_current(sock):
                    return
                chunks, self._out = self._out, []
                size = self._out_size
                try:
                    sock.sendall(b"".join(chunks))
                except OSError as exc:
                    if self._is_current(sock):
                        log.warning("channel hub: write failed: %s", exc)
                        # The reader sees the end and reconnects.
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    return
                self._out_size -= size
