"""RedisHub: channels across processes and machines, over Redis pub/sub.

``geows serve APP --channels redis://HOST:PORT/DB``: each process publishes
with Redis ``PUBLISH`` and subscribes to the channels it has members in.
`redis-py <https://pypi.org/project/redis/>`_ is the client (``pip install
geows[redis]``); it uses `hiredis <https://pypi.org/project/hiredis/>`_, a
faster reply parser, by itself when that is installed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

import gevent
from gevent.event import Event

from geows.channels import ChannelError, Hub
from geows.frames import OP_BINARY, OP_TEXT

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "--channels redis:// needs redis-py: pip install 'geows[redis]'"
    ) from exc

__all__ = ["RedisHub", "decode_message", "encode_message"]

log = logging.getLogger("geows.channels.redis")

#: First byte of every payload in Redis: what kind of WebSocket message it is.
_KIND = {OP_TEXT: b"t", OP_BINARY: b"b"}
_OPCODE = {ord(b"t"): OP_TEXT, ord(b"b"): OP_BINARY}
#: Errors that mean "Redis is not there" (redis-py wraps most socket errors).
_LOST = (redis.ConnectionError, redis.TimeoutError, OSError)
_SUBSCRIBE_BATCH = 1000
#: The listener lets the other greenlets run after this many messages in a row.
_YIELD_EVERY = 64


def encode_message(opcode: int, payload: bytes) -> bytes:
    """The bytes published to Redis: a kind byte (``t``/``b``), the payload."""
    return _KIND[opcode] + payload


def decode_message(data: bytes) -> tuple[int, bytes]:
    """``(opcode, payload)`` of bytes from :func:`encode_message`.

    Raises ValueError for anything else (a foreign publisher on our prefix).
    """
    if not data or data[0] not in _OPCODE:
        raise ValueError(f"not a geows channel message: {bytes(data[:16])!r}")
    return _OPCODE[data[0]], bytes(data[1:])


def redact(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisHub(Hub):
    """Channels shared by every geows process connected to one Redis.

    A publish is a Redis ``PUBLISH`` of ``prefix + name`` (the prefix keeps
    geows traffic apart from other users of the same Redis), even for members
    in this process: every process then sees one channel's messages in the
    same order. One listener greenlet per process owns the subscriber
    connection: it ``SUBSCRIBE``\\ s a channel when its first local member
    joins and ``UNSUBSCRIBE``\\ s when the last one leaves (:meth:`join` and
    :meth:`leave` only wake it: they may run in the event loop, where no I/O
    may wait), and dispatches what arrives to the local members.

    Failures:

    * A publish that Redis does not take raises :class:`ChannelError`
      (chained to redis-py's error) in the publisher: never a silent loss.
      It is not retried, so it is delivered at most once; a publish that fails
      while its reply is lost may still have been delivered.
    * When the subscriber connection is lost, members stay connected. The
      listener logs a warning, reconnects with exponential backoff
      (``min_backoff`` doubling up to ``max_backoff`` seconds), resubscribes
      every channel that has local members and logs that it is back.
    * What is lost during an outage: Redis pub/sub keeps no history, so the
      messages published while this process's subscriber is disconnected,
      from the moment Redis dropped the connection until the resubscription
      is done, never reach this process's members. Publishes that fail meet
      :class:`ChannelError`; those accepted by a Redis this process cannot
      hear (a partition, a restart not yet noticed) are gone for it.

    A silent peer (no reset, e.g. a partition) is noticed by a ``PING`` after
    ``idle_ping`` seconds without traffic, unanswered for ``ping_timeout``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "geows:",
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        idle_ping: float = 30.0,
        ping_timeout: float = 10.0,
        **redis_options: Any,
    ) -> None:
        """``url``: as ``redis.Redis.from_url`` takes it (``redis://``,
        ``rediss://``, ``unix://``; query options override ``redis_options``).
        """
        super().__init__()
        self.url = url
        self.prefix = prefix
        self._prefix_b = prefix.encode("utf-8")
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.idle_ping = idle_ping
        self.ping_timeout = ping_timeout
        # A publish waits for Redis at most this long, then fails loudly.
        publish_options: dict[str, Any] = {
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),
            **redis_options,
        }
        # The subscriber reconnects by itself (backoff, resubscription), so
        # redis-py must not retry under it; a started reply gets 10 s.
        subscribe_options: dict[str, Any] = {
            "socket_timeout": 10.0,
            "socket_connect_timeout": 5.0,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
            **redis_options,
        }
        self._client = redis.Redis.from_url(url, **publish_options)
        self._sub_client = redis.Redis.from_url(url, **subscribe_options)
        # A channel of this process alone: it keeps the subscriber in
        # subscribed mode, so that it always reads (and PING works) even
        # without members; ``PUBSUB CHANNELS geows:-hub-*`` lists processes.
        self._control = (
            f"{prefix}-hub-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        ).encode()
        self._wake = Event()
        self._dirty = False  # membership changed since the last reconcile
        self._listener: Optional[gevent.Greenlet] = None
        self._closing = False
        self._sent: set[str] = set()  # subscribed on the current connection
        #: Whether the subscriber is connected and subscribed now.
        self.connected = False

    # -- Hub hooks ---------------------------------------------------------------

    def _publish(self, name: str, opcode: int, payload: bytes) -> None:
        """PUBLISH on a pooled connection; any failure raises ChannelError."""
        try:
            self._client.publish(self._key(name), encode_message(opcode, payload))
        except (redis.RedisError, OSError) as exc:
            raise ChannelError(
                f"cannot publish on channel {name!r} through {redact(self.url)}: {exc}"
            ) from exc

    def _subscribe(self, name: str) -> None:
        """Wake the listener, which subscribes (no I/O here: may be the loop)."""
        self._dirty = True
        self._wake.set()

    def _unsubscribe(self, name: str) -> None:
        """Wake the listener, which unsubscribes."""
        self._dirty = True
        self._wake.set()

    def start(self) -> None:
        """Start the listener greenlet (after gevent's monkey patching).

        Raises :class:`ChannelError` without it: redis-py's blocking sockets
        would stop every connection of the process while they wait.
        """
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            raise ChannelError(
                "--channels redis:// needs gevent's monkey patching "
                "(do not use --no-monkey-patch)"
            )
        if self._listener is None:
            self._closing = False
            self._listener = gevent.spawn(self._run)

    def close(self) -> None:
        """Stop the listener and close every connection to Redis."""
        self._closing = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.kill(block=True, timeout=5)
        self._sub_client.close()
        self._client.close()

    # -- the listener --------------------------------------------------------------

    def _key(self, name: str) -> bytes:
        return self._prefix_b + name.encode("utf-8")

    def _run(self) -> None:
        """Connect, listen, and after a loss reconnect with backoff, forever."""
        delay = self.min_backoff
        attempts = 0  # failed attempts since the connection was lost
        lost_at: Optional[float] = None
        while not self._closing:
            pubsub = self._sub_client.pubsub(  # type: ignore[no-untyped-call]
                ignore_subscribe_messages=True
            )
            connected_at: Optional[float] = None
            try:
                self._connect(pubsub)
                connected_at = time.monotonic()
                self._log_connected(lost_at, attempts)
                lost_at, attempts = None, 0
                self._listen(pubsub)
            except Exception as exc:
                if self._closing:
                    break
                now = time.monotonic()
                if connected_at is not None:
                    lost_at = now
                    # Backoff starts over unless the connection flaps.
                    if now - connected_at >= self.max_backoff:
                        delay = self.min_backoff
                    self._log_lost(exc, delay)
                else:
                    lost_at = lost_at or now
                    attempts += 1
                    self._log_attempt(exc, attempts, delay)
            finally:
                self.connected = False
                _close_quietly(pubsub)
            if self._closing:
                break
            gevent.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    def _log_connected(self, lost_at: Optional[float], attempts: int) -> None:
        where = redact(self.url)
        if lost_at is None:
            log.info("channels: subscriber connected to %s", where)
            return
        log.warning(
            "channels: subscriber reconnected to %s after %d failed attempts "
            "(%.1fs); resubscribed %d channels",
            where,
            attempts,
            time.monotonic() - lost_at,
            len(self._sent),
        )

    def _log_lost(self, exc: Exception, delay: float) -> None:
        if not isinstance(exc, _LOST):
            log.error("channels: subscriber failed", exc_info=exc)
        log.warning(
            "channels: lost the subscriber connection to %s (%s); members stay "
            "connected, messages published until it is back are not received "
            "here; reconnecting in %.1fs",
            redact(self.url),
            exc,
            delay,
        )

    def _log_attempt(self, exc: Exception, attempts: int, delay: float) -> None:
        if not isinstance(exc, _LOST):
            log.error("channels: subscriber failed", exc_info=exc)
        log.warning(
            "channels: connection attempt %d to %s failed (%s); next in %.1fs",
            attempts,
            redact(self.url),
            exc,
            delay,
        )

    def _connect(self, pubsub: Any) -> None:
        """Subscribe the control channel and every channel with members."""
        self._sent = set()
        pubsub.subscribe(self._control)  # connects, or raises ConnectionError
        self._wake.clear()
        self._reconcile(pubsub)
        self.connected = True

    def _reconcile(self, pubsub: Any) -> None:
        """(Un)subscribe so that Redis sends what local members want."""
        self._dirty = False
        wanted = set(self._members)
        add = sorted(wanted - self._sent)
        drop = sorted(self._sent - wanted)
        for start in range(0, len(add), _SUBSCRIBE_BATCH):
            batch = add[start : start + _SUBSCRIBE_BATCH]
            pubsub.subscribe(*[self._key(name) for name in batch])
            self._sent.update(batch)
        for start in range(0, len(drop), _SUBSCRIBE_BATCH):
            batch = drop[start : start + _SUBSCRIBE_BATCH]
            pubsub.unsubscribe(*[self._key(name) for name in batch])
            self._sent.difference_update(batch)

    def _listen(self, pubsub: Any) -> None:
        """Read and dispatch until the connection fails or the hub closes.

        Waits for the socket or for :attr:`_wake` (a join or leave), so that a
        subscription is sent at once rather than at the next poll.
        """
        conn = pubsub.connection
        # redis-py has no public accessor for the socket; every version since
        # 4.5 keeps it in ``Connection._sock``.
        sock = getattr(conn, "_sock", None) if conn is not None else None
        if sock is None:
            raise redis.ConnectionError("no subscriber connection")
        watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        last_read = time.monotonic()
        ping_sent: Optional[float] = None
        handled = 0
        try:
            while not self._closing:
                self._wake.clear()
                if self._dirty:
                    self._reconcile(pubsub)
                if conn.can_read(timeout=0):
                    message = pubsub.get_message(timeout=self.ping_timeout)
                    last_read = time.monotonic()
                    ping_sent = None
                    if message is not None and message.get("type") == "message":
                        self._received(message["channel"], message["data"])
                    handled += 1
                    if handled % _YIELD_EVERY == 0:
                        gevent.sleep(0)  # a flood must not starve the members
                    continue
                now = time.monotonic()
                if ping_sent is None:
                    wait = last_read + self.idle_ping - now
                    if wait <= 0:
                        pubsub.ping()
                        ping_sent = now
                        continue
                else:
                    wait = ping_sent + self.ping_timeout - now
                    if wait <= 0:
                        raise redis.TimeoutError(
                            f"no answer to PING in {self.ping_timeout:g}s"
                        )
                watcher.start(self._wake.set)
                try:
                    self._wake.wait(wait)
                finally:
                    watcher.stop()
        finally:
            watcher.close()

    def _received(self, channel: bytes, data: bytes) -> None:
        """Dispatch one Redis message to the local members of its channel."""
        if not channel.startswith(self._prefix_b) or channel == self._control:
            return
        try:
            name = channel[len(self._prefix_b) :].decode("utf-8")
            opcode, payload = decode_message(data)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            log.warning("channels: dropped a message on %r: %s", channel, exc)
            return
        self.dispatch(name, opcode, payload)


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:  # a connection already broken may fail to close
        log.debug("channels: closing the subscriber connection failed", exc_info=True)
