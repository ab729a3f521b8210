"""The relay behind ``--route``: one routed request, and whatever follows it,
between the client and a backend (gevent I/O; the byte work is in
:mod:`geows.router`). Not to be confused with :mod:`geows.proxy_protocol`,
the PROXY header *we* may receive.

How a relay goes:

1. The request goes out: for ``http:`` its head as received (see
   :func:`geows.router.http_request_head`), for ``uwsgi:`` a packet of the
   environ's vars. Connecting takes at most ``--route-timeout`` (refused or
   unreachable: 502; too slow: 504); a log line names the backend.
2. Two directions, one greenlet each: *downstream* (backend to client) runs
   in the connection's greenlet, *upstream* (client to backend) in a helper.
   Each reads at most 64 KiB and writes it with a blocking ``sendall``
   before reading again, so a side that does not read stalls the other
   side's reads (backpressure) and nothing is buffered beyond one read.
   Each socket has one writer: downstream writes to the client, upstream to
   the backend (the request head goes out before upstream starts).
3. Upstream passes on the rest of the request body with its framing
   (Content-Length or chunked, checked on the way); after the body, an
   upgrade request's further bytes (WebSocket frames) follow as they come,
   while anything a plain request's client sends (a pipelined request) is
   read and dropped: one request per routed connection. The client's EOF
   becomes ``shutdown(SHUT_WR)`` towards the backend (half-close).
4. Downstream waits for the backend's first byte for ``--route-timeout``
   after the last progress on our side (504 otherwise), then passes the
   answer on as :class:`~geows.router.ResponseWatcher` frames it, until it
   is complete, or the backend's EOF for a close-delimited answer or a
   tunnel (101). The backend's EOF becomes ``shutdown(SHUT_WR)`` towards the
   client, which then has ``--websockets-close-timeout`` to finish (its
   close frame, its own EOF) before both sockets are closed.
5. A relayed WebSocket whose backend goes away (killed, reset) without a
   close frame gets one from us -- 1011 "backend went away" -- when the
   stream stands at a frame boundary. Mid-frame we cannot: a frame of ours
   inside the backend's would corrupt the stream, so the client sees the
   TCP connection close (1006).

A routed request ends its client connection: no keep-alive after it (the
final head says ``Connection: close``). One access log line per relay:
the backend, the status, bytes each way and the duration.
"""

from __future__ import annotations

import logging
import socket
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Optional

import gevent
from gevent import socket as gsocket

from geows.frames import OP_CLOSE, encode_frame, serialize_close
from geows.http import ChunkedDecoder, HTTPError, error_response
from geows.router import (
    BadGateway,
    RequestBody,
    ResponseWatcher,
    Route,
    http_request_head,
    is_upgrade,
    is_websocket_upgrade,
    uwsgi_vars,
)
from geows.uwsgi_proto import encode_packet

if TYPE_CHECKING:
    from geows.wsgi import HTTPConnection

__all__ = ["relay"]

log = logging.getLogger("geows.proxy")
access_log = logging.getLogger("geows.access")

_RECV = 65536
#: The most of a chunked request body we de-chunk in memory for a uwsgi
#: backend (which needs CONTENT_LENGTH up front) when --limit-post is unset.
MAX_DECHUNKED = 64 * 1024 * 1024
#: What a relayed WebSocket client gets when its backend vanishes.
BACKEND_GONE = encode_frame(OP_CLOSE, serialize_close(1011, "backend went away"))
#: What it gets when the server stops and cuts the relay after its grace.
GOING_AWAY = encode_frame(OP_CLOSE, serialize_close(1001, "going away"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def relay(conn: HTTPConnection, route: Route, environ: dict[str, Any]) -> None:
    """Serve ``conn``'s current request through ``route``'s backend."""
    _Relay(conn, route, environ).run()


def _half_close(sock: Any) -> None:
    """Send our FIN and keep reading (the other direction goes on).

    On a TLS socket this goes beneath the TLS layer: ``SSLSocket.shutdown``
    would drop the TLS state the other direction still reads with. No
    close_notify is sent; the answer's own framing, or the WebSocket close
    frame, says where it ends.
    """
    shutdown = (
        partial(gsocket.socket.shutdown, sock)
        if isinstance(sock, gsocket.socket)
        else sock.shutdown
    )
    try:
        shutdown(socket.SHUT_WR)
    except OSError:
        pass


class _ClientGone(Exception):
    """The client left before its request was complete."""


def _recv(sock: Any, seconds: Optional[float]) -> Optional[bytes]:
    """One read of up to 64 KiB; None if ``seconds`` pass first.

    A gevent.Timeout rather than a socket timeout: the other direction's
    greenlet writes to the same socket and must not inherit a deadline.
    """
    if seconds is None:
        return sock.recv(_RECV)  # type: ignore[no-any-return]
    timer = gevent.Timeout(seconds)
    timer.start()
    try:
        return sock.recv(_RECV)  # type: ignore[no-any-return]
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        return None
    finally:
        timer.cancel()


class _Relay:
    """One routed request: its two sockets and what has happened so far."""

    def __init__(
        self, conn: HTTPConnection, route: Route, environ: dict[str, Any]
    ) -> None:
        request = conn.request
        assert request is not None
        self.conn = conn
        self.client = conn.sock
        self.route = route
        self.request = request
        self.environ = environ
        self.settings = conn.settings
        self.backend: Any = None
        self.loop = gevent.get_hub().loop
        self.watcher = ResponseWatcher(
            request.method, is_websocket_upgrade(request), self.settings.http_limits
        )
        #: Bytes from the client after its request head; bytes to the client.
        self.bytes_in = 0
        self.bytes_out = 0
        #: When our side last made progress (connected, or wrote to the
        #: backend): the backend's first byte is due route_timeout later.
        self.progress_at = 0.0
        #: The status we answered ourselves (502, 504, 400...), if any.
        self.answered = 0
        #: Upstream failed on the client's side (bad body, too slow): the
        #: status to answer if the backend has not started its answer.
        self.failure: Optional[HTTPStatus] = None
        self.client_eof = False
        self.backend_broken = False
        #: Downstream is inside a write to the client (maybe mid-frame).
        self.writing = False
        #: Downstream is over: the client has all it will get from us.
        self.downstream_done = False

    # -- the whole relay ------------------------------------------------------

    def run(self) -> None:
        start = self.loop.now()
        self.client.settimeout(None)
        try:
            self._run()
        except _ClientGone:
            pass
        except gevent.GreenletExit:
            self._going_away()
            raise
        except OSError as exc:
            log.debug("route %s: client %s: %s", self.route, self._client(), exc)
        finally:
            if self.backend is not None:
                self.backend.close()
            if self.settings.access_log:
                request = self.request
                status = self.answered or self.watcher.status
                access_log.info(
                    '%s - "%s %s %s" -> %s %s in=%d out=%d %.3fs',
                    self._client(),
                    request.method,
                    request.target,
                    request.version,
                    self.route.action,
                    status or "-",
                    self.bytes_in,
                    self.bytes_out,
                    self.loop.now() - start,
                )

    def _run(self) -> None:
        request = self.request
        action = self.route.action
        body = RequestBody(
            request.body_kind,
            request.content_length,
            self.settings.http_limits,
            self.settings.max_body,
        )
        if action.protocol == "uwsgi":
            try:
                head, body = self._uwsgi_request(body)
            except HTTPError as exc:
                log.info("route %s: bad request body: %s", self.route, exc.reason)
                self._answer(exc.status)
                return
            except ValueError as exc:  # vars over the format's 64 KiB
                log.info("route %s: %s", self.route, exc)
                self._answer(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                return
        else:
            scheme = self.environ.get("wsgi.url_scheme", "http")
            head = http_request_head(request, self._peer(), scheme)
        if not self._connect():
            return
        try:
            self.backend.sendall(head)
        except OSError as exc:
            log.warning("route %s: sending to %s failed: %s", self.route, action, exc)
            self._answer(HTTPStatus.BAD_GATEWAY)
            return
        self.progress_at = self.loop.now()
        if action.protocol == "uwsgi" and not body.done and self._expects_continue():
            # A uwsgi backend cannot answer 100 Continue: we do, as nginx does.
            self.client.sendall(_CONTINUE)
        early = bytes(self.conn.buf)
        self.conn.buf.clear()
        upstream = gevent.spawn(self._upstream, body, early)
        try:
            self._downstream()
            self.downstream_done = True
            if not self.watcher.tunnel:
                # The answer is over: the backend has nothing more for us.
                # This also frees an upstream stuck writing a body the
                # backend will not read; it drains the client from then on.
                self._close_backend()
            _half_close(self.client)
            # The client's turn to finish (a WebSocket client answers our
            # close frame, an HTTP client reads to EOF and closes).
            upstream.join(self.settings.timeouts.close_timeout)
        finally:
            upstream.kill()

    def _answer(self, status: HTTPStatus) -> None:
        """Answer the client ourselves, if the backend has not started to."""
        if self.watcher.started:
            return
        self.answered = status.value
        try:
            self.client.sendall(error_response(status))
        except OSError:
            pass

    def _client(self) -> str:
        """The client for the log: the environ's (behind a trusted proxy,
        the client it names).
        """
        return str(self.environ.get("REMOTE_ADDR") or self._peer())

    def _peer(self) -> str:
        """What ``X-Forwarded-For`` gets appended: the address we got the
        request from (each proxy on the way adds its own peer).
        """
        addr = self.conn.addr
        return str(addr[0]) if isinstance(addr, tuple) else "unix"

    def _expects_continue(self) -> bool:
        request = self.request
        return (
            not self.conn.buf
            and request.version == "HTTP/1.1"
            and request.has_token("expect", "100-continue")
        )

    # -- the way there ------------------------------------------------------------

    def _connect(self) -> bool:
        """Connect to the backend (or answer 502/504); whether we did."""
        action = self.route.action
        address = action.address
        timeout = self.settings.route_timeout
        try:
            if isinstance(address, str):
                sock = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout)
                    sock.connect(address)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = gsocket.create_connection(address, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except socket.timeout:
            log.warning(
                "route %s: %s did not accept within %ss", self.route, action, timeout
            )
            self._answer(HTTPStatus.GATEWAY_TIMEOUT)
            return False
        except OSError as exc:
            log.warning(
                "route %s: cannot connect to %s: %s",
                self.route,
                action,
                exc.strerror or exc,
            )
            self._answer(HTTPStatus.BAD_GATEWAY)
            return False
        sock.settimeout(None)
        self.backend = sock
        return True

    def _uwsgi_request(self, body: RequestBody) -> tuple[bytes, RequestBody]:
        """The uwsgi packet (with the whole body when it came chunked) and
        what is left of the body to pass on.
        """
        request = self.request
        length = request.content_length
        data = b""
        if request.body_kind == "chunked":
            data = self._dechunk()
            length = len(data)
            body = RequestBody("none")
        action = self.route.action
        packet = encode_packet(
            uwsgi_vars(self.environ, length), action.modifier1, action.modifier2
        )
        return packet + data, body

    def _dechunk(self) -> bytes:
        """Read a whole chunked body, de-chunked: uwsgi needs its length
        first. At most --limit-post, or MAX_DECHUNKED when unset (413 over).
        """
        settings = self.settings
        limit = settings.max_body if settings.max_body is not None else MAX_DECHUNKED
        decoder = ChunkedDecoder(settings.http_limits, limit)
        if self._expects_continue():
            self.client.sendall(_CONTINUE)
        pieces: list[bytes] = []
        buf = self.conn.buf
        while not decoder.done:
            if buf:
                data = bytes(buf)
                buf.clear()
            else:
                got = _recv(self.client, settings.body_timeout)
                if got is None:
                    raise HTTPError(HTTPStatus.REQUEST_TIMEOUT, "body too slow")
                if not got:
                    raise _ClientGone()
                data = got
            self.bytes_in += len(data)
            pieces += decoder.feed(data)
        buf[:0] = decoder.unused
        self.bytes_in -= len(decoder.unused)
        return b"".join(pieces)

    # -- client to backend ----------------------------------------------------------

    def _upstream(self, body: RequestBody, early: bytes) -> None:
        """The rest of the request body, then (upgrades) the client's bytes."""
        tunnel = is_upgrade(self.request)
        data = early
        self.bytes_in += len(early)
        body_timeout = self.settings.body_timeout
        try:
            while True:
                if not data:
                    got = _recv(self.client, None if body.done else body_timeout)
                    if got is None:
                        self._fail(HTTPStatus.REQUEST_TIMEOUT, "body too slow")
                        return
                    if not got:
                        break
                    data = got
                    self.bytes_in += len(data)
                if not body.done:
                    part, data = body.feed(data)
                    self._to_backend(part)
                    continue
                if tunnel:
                    self._to_backend(data)
                data = b""  # a plain request's client sent more: dropped
        except HTTPError as exc:
            self._fail(exc.status, exc.reason)
            return
        except OSError:
            pass  # the client reset: its EOF, as far as the backend cares
        self.client_eof = True
        if not self.backend_broken:
            try:
                self.backend.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _to_backend(self, data: bytes) -> None:
        if not data or self.backend_broken:
            return
        try:
            self.backend.sendall(data)
        except OSError:
            # The backend went away; downstream sees it too. Keep reading
            # the client (and dropping) until it is done.
            self.backend_broken = True
            return
        self.progress_at = self.loop.now()

    def _fail(self, status: HTTPStatus, reason: str) -> None:
        """The client botched its body: stop the backend; downstream answers."""
        log.info(
            "route %s: bad request body from %s: %s", self.route, self._client(), reason
        )
        self.failure = status
        self._close_backend()

    def _close_backend(self) -> None:
        """Shut the backend's socket both ways: any greenlet blocked on it wakes."""
        self.backend_broken = True
        try:
            self.backend.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- backend to client ----------------------------------------------------------

    def _downstream(self) -> None:
        """The backend's answer to the client, until it ends."""
        data = self._first_bytes()
        if data is None:
            return
        watcher = self.watcher
        backend = self.backend
        while data:
            try:
                out = watcher.feed(data)
            except BadGateway as exc:
                log.warning("route %s: %s: %s", self.route, self.route.action, exc)
                self._answer(HTTPStatus.BAD_GATEWAY)
                return
            if out:
                self.writing = True
                self.client.sendall(out)  # OSError: the client left, relay over
                self.writing = False
                self.bytes_out += len(out)
            if watcher.done:
                return
            try:
                data = backend.recv(_RECV)
            except OSError as exc:
                log.debug("route %s: backend: %s", self.route, exc)
                data = b""
        self._backend_eof()

    def _first_bytes(self) -> Optional[bytes]:
        """The backend's first bytes; None if it answered nothing (answered
        for it: 504 if it kept silent too long, 502 if it closed).
        """
        timeout = self.settings.route_timeout
        while True:
            wait = self.progress_at + timeout - self.loop.now()
            if wait <= 0:
                log.warning(
                    "route %s: %s did not answer within %ss",
                    self.route,
                    self.route.action,
                    timeout,
                )
                self._answer(HTTPStatus.GATEWAY_TIMEOUT)
                return None
            try:
                data = _recv(self.backend, wait)
            except OSError as exc:
                log.debug("route %s: backend: %s", self.route, exc)
                data = b""
            if data is None:
                continue  # maybe our side made progress meanwhile
            if data:
                return data
            if self.failure is not None:
                self._answer(self.failure)
            else:
                log.warning(
                    "route %s: %s closed the connection without answering",
                    self.route,
                    self.route.action,
                )
                self._answer(HTTPStatus.BAD_GATEWAY)
            return None

    def _going_away(self) -> None:
        """The server cuts the relay (its grace after SIGTERM is over): a
        relayed WebSocket client gets 1001, as the server's own ones do, if
        the stream stands at a frame boundary.
        """
        frames = self.watcher.frames
        if (
            frames is None
            or self.downstream_done
            or frames.closed
            or not frames.at_boundary
            or self.writing
            or self.client_eof
        ):
            return
        with gevent.Timeout(1, False):
            try:
                self.client.sendall(GOING_AWAY)
            except OSError:
                pass

    def _backend_eof(self) -> None:
        """The backend closed (or reset) before its answer was complete."""
        watcher = self.watcher
        frames = watcher.frames
        if frames is not None:
            if frames.closed or self.client_eof:
                return  # a closing handshake, or the client left first
            if frames.at_boundary:
                self.client.sendall(BACKEND_GONE)
                self.bytes_out += len(BACKEND_GONE)
                log.info(
                    "route %s: %s went away; closed the WebSocket with 1011",
                    self.route,
                    self.route.action,
                )
            else:
                # Mid-frame: no frame of ours can follow a partial one, so
                # the client only sees the TCP connection end (1006).
                log.info(
                    "route %s: %s went away mid-frame; closing the connection",
                    self.route,
                    self.route.action,
                )
        elif watcher.in_body and self.failure is None:
            log.warning(
                "route %s: %s closed the connection before the end of its answer",
                self.route,
                self.route.action,
            )
