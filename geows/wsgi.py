"""The per-connection HTTP/1.1 loop: requests in, WSGI app calls, responses out.

One greenlet runs :meth:`HTTPConnection.run` for a client: it reads a request
head (with a deadline), builds a PEP 3333 environ, calls the application,
writes its response (Content-Length or chunked), and loops while the
connection is kept alive. An application that upgrades (``geows.accept`` or
``uwsgi.websocket_handshake``) turns the connection into a
:class:`~geows.connection.WebSocket` for the rest of its life.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Union
from urllib.parse import unquote_to_bytes

from gevent import get_hub

from geows import handshake
from geows.connection import WebSocket
from geows.exceptions import ConnectionClosed, InvalidHandshake
from geows.forwarded import TrustedProxies, resolve
from geows.http import (
    HTTPError,
    HTTPLimits,
    Request,
    error_response,
    parse_head,
)
from geows.input import Closed as _Closed
from geows.input import Input
from geows.keepalive import Registry
from geows.limits import Limits, Timeouts
from geows.origins import OriginPolicy
from geows.proxy import relay
from geows.router import Route, find_route
from geows.uwsgi_proto import UwsgiLimits

if TYPE_CHECKING:
    from geows.tls import TLSTransport

__all__ = ["HTTPConnection", "Settings", "current_connection"]

access_log = logging.getLogger("geows.access")
log = logging.getLogger("geows.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ExcInfo = tuple[type[BaseException], BaseException, Optional[TracebackType]]

#: The HTTP connection whose request this greenlet is serving; the uWSGI
#: adapter finds "the current request" through it. Per greenlet, never global.
current_connection: contextvars.ContextVar[HTTPConnection] = contextvars.ContextVar(
    "geows_connection"
)

_RECV = 65536


@dataclass(frozen=True)
class Settings:
    """What every connection of a server shares (read-only)."""

    app: WSGIApp
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    http_limits: HTTPLimits = field(default_factory=HTTPLimits)
    uwsgi_limits: UwsgiLimits = field(default_factory=UwsgiLimits)
    #: Seconds a client has to send a complete request head, and the
    #: longest a kept-alive connection may sit idle between requests.
    header_timeout: float = 10.0
    #: Seconds a body read may wait for the client.
    body_timeout: float = 60.0
    max_body: Optional[int] = None
    access_log: bool = True
    url_scheme: str = "http"
    multiprocess: bool = False
    server_name: str = "localhost"
    server_port: str = "80"
    registry: Optional[Registry] = None
    extra_environ: dict[str, Any] = field(default_factory=dict)
    #: ``--route``: requests whose PATH_INFO matches go to a backend.
    routes: tuple[Route, ...] = ()
    #: Seconds a routed backend has to accept, and to start its answer.
    route_timeout: float = 30.0
    #: Seconds a client of a TLS listener has to complete the handshake.
    tls_handshake_timeout: float = 10.0
    #: Makes a WebSocket's transport from the connection's socket (TLS
    #: listeners: :class:`geows.tls.TLSTransport`); None: the raw socket.
    transport: Optional[Callable[[Any], TLSTransport]] = None
    #: ``--trusted-proxies``: the peers whose forwarding headers name the
    #: client. None (nobody) costs nothing per request.
    trusted_proxies: Optional[TrustedProxies] = None
    #: ``--forwarded-header``: which family of those headers to read
    #: (see :func:`geows.forwarded.resolve`).
    forwarded_header: str = "x-forwarded-for"
    #: ``--websockets-allowed-origins``: None lets any Origin upgrade.
    origins: Optional[OriginPolicy] = None
    #: ``--websockets-allow-missing-origin``: for per-call origin lists too.
    allow_missing_origin: bool = False


class HTTPConnection:
    """One client connection: HTTP/1.1 requests, then maybe a WebSocket.

    Subclasses for other front doors (:class:`geows.uwsgi_conn.UwsgiConnection`)
    override :meth:`_parse_head`, :meth:`_cgi_environ`, :meth:`_close` and
    the two response-framing attributes below; the loop, the app call and
    the upgrade stay here.
    """

    #: Whether a response body of unknown length goes chunked to an HTTP/1.1
    #: client; if not, the connection's close marks its end.
    chunked_responses: ClassVar[bool] = True
    #: The status line's HTTP version; None answers in the request's.
    response_version: ClassVar[Optional[str]] = None

    __slots__ = (
        "_bodiless",
        "_chunked",
        "_headers",
        "_headers_sent",
        "_input",
        "_keep_alive",
        "_length",
        "_sent",
        "_status",
        "addr",
        "buf",
        "environ",
        "idle",
        "peer",
        "request",
        "settings",
        "sock",
        "stopping",
        "websocket",
    )

    def __init__(self, settings: Settings, sock: socket.socket, addr: Any) -> None:
        self.settings = settings
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.request: Optional[Request] = None
        self.environ: dict[str, Any] = {}
        self.websocket: Optional[WebSocket] = None
        self._status = ""
        self._headers: list[tuple[str, str]] = []
        self._headers_sent = False
        self._chunked = False
        self._bodiless = False
        self._length: Optional[int] = None
        self._sent = 0
        self._keep_alive = True
        self._input: Optional[Input] = None
        #: True while waiting for the next request with nothing read yet: a
        #: stopping server may close such a connection at once.
        self.idle = False
        #: Set by a stopping server: finish this request, then close.
        self.stopping = False
        #: The socket's own peer when ``addr`` came from a PROXY protocol
        #: header (set by the server), else None.
        self.peer: Any = None

    # -- the loop --------------------------------------------------------------

    def run(self) -> None:
        """Serve requests until the client leaves, errs or upgrades."""
        current_connection.set(self)
        try:
            while self._keep_alive and not self.stopping:
                request = self._read_request()
                if request is None:
                    return
                self._serve(request)
                if self.websocket is not None:
                    return
        except _Closed:
            pass
        except OSError as exc:
            log.debug("connection from %s: %s", self.addr, exc)
        finally:
            if self.websocket is None:  # else the WebSocket owns the socket
                self._close()
            self._forget()

    def _close(self) -> None:
        """Close the client socket once the connection is done."""
        try:
            self.sock.close()
        except OSError:
            pass

    def _forget(self) -> None:
        """Drop the references that make this connection a cycle (environ
        and input point back at it), so it is freed at once, not by the
        cyclic GC: that GC, run every few hundred connections, cost a tenth
        of the server's time in a handshake benchmark.
        """
        self.environ = {}
        self._input = None
        self.websocket = None

    def _read_request(self) -> Optional[Request]:
        """Read and parse one request head; None when the client is done."""
        settings = self.settings
        buf = self.buf
        deadline: Optional[float] = None
        loop = get_hub().loop
        while True:
            if buf:  # nothing to parse before the first read
                try:
                    parsed = self._parse_head(buf)
                except HTTPError as exc:
                    self.environ = {}  # the log names the peer, not the last client
                    self._refuse(exc.status)
                    return None
                if parsed is not None:
                    request, consumed = parsed
                    del buf[:consumed]
                    return request
            if deadline is None:
                deadline = loop.now() + settings.header_timeout
            remaining = deadline - loop.now()
            if remaining <= 0:
                if buf:
                    self.environ = {}
                    self._refuse(HTTPStatus.REQUEST_TIMEOUT)
                return None
            self.sock.settimeout(remaining)
            # Idle only between requests: a connection accepted but not yet
            # heard from is a client about to speak, not one to drop.
            self.idle = not buf and self.request is not None
            try:
                data = self.sock.recv(_RECV)
            except socket.timeout:
                continue
            finally:
                self.idle = False
            if not data:
                return None
            buf += data

    def _parse_head(self, buf: bytearray) -> Optional[tuple[Request, int]]:
        """The request at the start of ``buf`` and the bytes it took; None
        while incomplete. Raises HTTPError with the status to refuse with.
        """
        return parse_head(buf, self.settings.http_limits)

    def _refuse(self, status: HTTPStatus) -> None:
        """Answer a request we cannot serve and stop reading from the client."""
        try:
            self.sock.sendall(error_response(status))
        except OSError:
            pass
        self._keep_alive = False
        if self.settings.access_log:
            access_log.info("%s - %d (refused)", self._client(), status.value)

    def _serve(self, request: Request) -> None:
        settings = self.settings
        self.request = request
        self._status = ""
        self._headers = []
        self._headers_sent = False
        self._chunked = False
        self._bodiless = False
        self._length = None
        self._sent = 0
        self._keep_alive = request.keep_alive
        inp = self._input = Input(self, request)
        environ = self.environ = self._environ(request, inp)
        max_body = settings.max_body
        if (
            max_body is not None
            and request.content_length is not None
            and request.content_length > max_body
        ):
            # After the environ: the log names the client a proxy sent.
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        if settings.routes:
            route = find_route(settings.routes, environ["PATH_INFO"])
            if route is not None:
                self._keep_alive = False  # the relay ends the connection
                relay(self, route, environ)
                return
        start = time.monotonic()
        result: Optional[Iterable[bytes]] = None
        try:
            result = settings.app(environ, self.start_response)
            if self.websocket is None:
                if (
                    type(result) in (list, tuple)
                    and len(result) == 1  # type: ignore[arg-type]
                    and self._status
                    and not self._headers_sent
                ):
                    self._one_piece(result[0])  # type: ignore[index]
                    result = ()
                for data in result:
                    if data:
                        self.write(data)
                if not self._headers_sent:
                    self._finish_empty()
                elif self._chunked:
                    self.sock.sendall(b"0\r\n\r\n")
                elif (
                    self._length is not None
                    and self._sent < self._length
                    and not self._bodiless
                ):
                    log.error("response of %s shorter than its Content-Length", request)
                    self._keep_alive = False  # the client still waits for bytes
        except _Closed:
            raise
        except Exception as exc:
            self._app_failed(exc)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("error closing the response of %s", request.target)
        ws = self.websocket
        if ws is not None:
            if not ws.closed:
                ws.close(1000)
            ws.wait_closed()
            return
        if settings.access_log:
            access_log.info(
                '%s - "%s %s %s" %s %d %.1fms',
                self._client(),
                request.method,
                request.target,
                request.version,
                self._status.split(" ", 1)[0] or "-",
                self._sent,
                (time.monotonic() - start) * 1000,
            )
        if self._keep_alive and not inp.finish():
            self._keep_alive = False

    def _app_failed(self, exc: Exception) -> None:
        """The app raised: answer 500 (or the handshake's status) if we still can."""
        invalid = exc if isinstance(exc, InvalidHandshake) else exc.__cause__
        if self.websocket is not None and isinstance(
            exc if isinstance(exc, ConnectionClosed) else invalid, ConnectionClosed
        ):
            # uWSGI apps end by letting recv's OSError out: a normal ending.
            self._keep_alive = False
            return
        if isinstance(exc, HTTPError):
            # A body the client got wrong (bad chunking, over --limit-post),
            # met while the app read it: the client's fault, not a 500.
            log.info("bad request body from %s: %s", self._client(), exc.reason)
            status, headers = exc.status, []
        elif isinstance(invalid, InvalidHandshake):
            log.info("refused upgrade from %s: %s", self._client(), invalid.reason)
            status, headers = invalid.status, invalid.headers
        else:
            log.exception("error in the application serving %s", self.request)
            status, headers = HTTPStatus.INTERNAL_SERVER_ERROR, []
        self._keep_alive = False
        if self.websocket is not None:
            if not self.websocket.closed:
                self.websocket.abort(1011)  # never the error text to the peer
            return
        self._status = str(status.value)
        if not self._headers_sent:
            try:
                self.sock.sendall(error_response(status, headers))
            except OSError:
                pass

    # -- WSGI responses ----------------------------------------------------------

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: Optional[ExcInfo] = None,
    ) -> Callable[[bytes], None]:
        """PEP 3333 start_response."""
        if exc_info is not None:
            try:
                if self._headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._status:
            raise AssertionError("start_response called twice without exc_info")
        self._status = status
        self._headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        """Write body data, sending the head first."""
        if not self._status:
            raise AssertionError("write() before start_response()")
        if not self._headers_sent:
            self._send_head(len(data))
        if self._bodiless:
            return  # HEAD, 204, 304: the head says it all (RFC 9110 9.3.2)
        length = self._length
        if length is not None and self._sent + len(data) > length:
            # More than the app's Content-Length: send what it promised,
            # then close rather than desynchronise the connection.
            data = data[: length - self._sent]
            self._keep_alive = False
            log.error("response of %s longer than its Content-Length", self.request)
        if self._chunked:
            self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.sock.sendall(data)
        self._sent += len(data)

    def _one_piece(self, data: bytes) -> None:
        """A response of one piece: send it with a Content-Length, not chunked."""
        if not any(n.lower() == "content-length" for n, _ in self._headers):
            self._headers = [*self._headers, ("Content-Length", str(len(data)))]
        self.write(data)

    def _finish_empty(self) -> None:
        if not self._status:
            raise AssertionError("the application returned without start_response()")
        self._send_head(0, complete=True)

    def _send_head(self, first: int, complete: bool = False) -> None:
        request = self.request
        assert request is not None
        status = self._status
        code = status[:3]
        lines = [
            (self.response_version or request.version).encode("ascii"),
            b" ",
            status.encode("latin-1"),
            b"\r\n",
        ]
        has_length = False
        for name, value in self._headers:
            lname = name.lower()
            if lname == "content-length":
                has_length = True
                self._length = int(value)
            elif lname == "connection" and "close" in value.lower():
                self._keep_alive = False
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        bodiless = self._bodiless = (
            code in ("204", "304") or code[0] == "1" or request.method == "HEAD"
        )
        if not has_length and not bodiless:
            if complete:
                lines.append(b"Content-Length: 0\r\n")
            elif request.version == "HTTP/1.1" and self.chunked_responses:
                self._chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self._keep_alive = False
        if not self._keep_alive:
            lines.append(b"Connection: close\r\n")
        elif request.version == "HTTP/1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.sock.sendall(b"".join(lines))
        self._headers_sent = True

    # -- the environ ---------------------------------------------------------------

    def _environ(self, request: Request, inp: Input) -> dict[str, Any]:
        """The PEP 3333 environ: :meth:`_cgi_environ`, then the ``wsgi.*`` keys."""
        settings = self.settings
        environ = self._cgi_environ(request)
        environ.update(
            {
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": settings.url_scheme,
                "wsgi.input": inp,
                "wsgi.input_terminated": True,
                "wsgi.errors": sys.stderr,
                "wsgi.multithread": False,
                "wsgi.multiprocess": settings.multiprocess,
                "wsgi.run_once": False,
                "geows.connection": self,
            }
        )
        if settings.trusted_proxies is not None or self.peer is not None:
            self._real_client(environ, request)
        if settings.extra_environ:
            environ.update(settings.extra_environ)
        return environ

    def _real_client(self, environ: dict[str, Any], request: Request) -> None:
        """The client behind a PROXY header or a trusted proxy, in the environ.

        ``geows.peer_addr`` keeps the address of the socket's own peer (the
        balancer or the proxy) whenever ``REMOTE_ADDR`` is someone else's.
        From a trusted peer that sent forwarding headers, ``REMOTE_ADDR``,
        ``REMOTE_PORT`` (empty when the headers name no port) and
        ``wsgi.url_scheme`` (with ``HTTPS=on`` for https) are the client's.
        A PROXY header has replaced the peer already: trust is then judged
        on the address it named.
        """
        peer = self.peer
        if peer is not None:
            environ["geows.peer_addr"] = peer[0] if isinstance(peer, tuple) else ""
        settings = self.settings
        trusted = settings.trusted_proxies
        if trusted is None:
            return
        addr = self.addr
        client = resolve(
            (addr[0], addr[1]) if isinstance(addr, tuple) else (None, None),
            environ["wsgi.url_scheme"],
            request.headers,
            trusted,
            header=settings.forwarded_header,
        )
        if not client.via_proxy:
            return
        environ.setdefault("geows.peer_addr", environ["REMOTE_ADDR"])
        environ["REMOTE_ADDR"] = client.addr or ""
        environ["REMOTE_PORT"] = "" if client.port is None else str(client.port)
        environ["wsgi.url_scheme"] = client.scheme
        if client.scheme == "https":
            environ["HTTPS"] = "on"
        else:
            environ.pop("HTTPS", None)

    def _cgi_environ(self, request: Request) -> dict[str, Any]:
        """The request's CGI variables (RFC 3875 4.1): from its head and the socket."""
        settings = self.settings
        target = request.target
        path, _, query = target.partition("?")
        if path[:1] != "/" and "://" in path:  # absolute-form (RFC 9112 3.2.2)
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        addr = self.addr
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1")
            if "%" in path
            else path,
            "QUERY_STRING": query,
            "REQUEST_URI": target,
            "SERVER_NAME": settings.server_name,
            "SERVER_PORT": settings.server_port,
            "SERVER_PROTOCOL": request.version,
            "REMOTE_ADDR": addr[0] if isinstance(addr, tuple) else "",
            "REMOTE_PORT": str(addr[1]) if isinstance(addr, tuple) else "",
        }
        _cgi_headers(environ, request.headers, _ENV_KEYS, _MAX_ENV_KEYS)
        return environ

    def _client(self) -> str:
        """Who the log names: the request's ``REMOTE_ADDR`` once its environ
        is built (behind a trusted proxy, the client it names), else the peer.
        """
        environ = self.environ
        if environ:
            return environ.get("REMOTE_ADDR") or "-"
        addr = self.addr
        return addr[0] if isinstance(addr, tuple) else str(addr or "-")

    # -- upgrade -----------------------------------------------------------------

    def upgrade(
        self,
        subprotocols: Optional[list[str]] = None,
        *,
        key: Optional[str] = None,
        choose: Optional[str] = None,
        origins: Union[OriginPolicy, Sequence[str], None] = None,
    ) -> WebSocket:
        """Complete the WebSocket handshake for the current request.

        ``subprotocols``: the server's, in preference order; ``choose``: one
        subprotocol to answer with if the client offered it (uWSGI's
        ``proto``). ``origins``: the allowed origins for this upgrade
        instead of ``--websockets-allowed-origins`` (an empty list allows
        any). Raises :class:`~geows.InvalidHandshake` (nothing is written)
        when the request is not a valid upgrade, 403 when its ``Origin`` is
        not allowed.
        """
        request = self.request
        if request is None:
            raise RuntimeError("no request to upgrade")
        if self.websocket is not None:
            raise RuntimeError("the connection is already a WebSocket")
        if self._headers_sent:
            raise RuntimeError("a response was already started")
        get = request.header_index().get  # the names below are lower case
        client_key = handshake.check_request(
            request.method,
            request.version,
            get,
            has_body=request.body_kind != "none",
        )
        settings = self.settings
        policy = settings.origins if origins is None else origins
        if policy is not None:
            if not isinstance(policy, OriginPolicy):
                policy = OriginPolicy(
                    policy, allow_missing=settings.allow_missing_origin
                )
            policy.check(get("origin"))
        if key:
            key = key.strip()
            if key != client_key:
                handshake.check_request(
                    "GET", "HTTP/1.1", {"sec-websocket-key": key, **_UPGRADE}.get
                )
        offered = handshake.offered_subprotocols(get("sec-websocket-protocol"))
        wanted = [choose] if choose else subprotocols
        subprotocol = handshake.select_subprotocol(offered, wanted)
        self.sock.sendall(handshake.response_bytes(key or client_key, subprotocol))
        self._headers_sent = True
        self._status = "101"
        initial = bytes(self.buf)
        self.buf.clear()
        self.sock.settimeout(None)
        make_transport = settings.transport
        ws = WebSocket(
            self.sock,
            self.environ,
            subprotocol=subprotocol,
            limits=settings.limits,
            timeouts=settings.timeouts,
            registry=settings.registry,
            initial=initial,
            on_finish=self._websocket_finished if settings.access_log else None,
            transport=None if make_transport is None else make_transport(self.sock),
        )
        self.websocket = ws
        # The environ keeps the headers; the parsed copy would only cost
        # every idle WebSocket a kilobyte.
        request.forget_headers()
        return ws

    def _websocket_finished(self, ws: WebSocket) -> None:
        request = self.request
        access_log.info(
            '%s - "WEBSOCKET %s" %d in=%d out=%d %.1fs',
            self._client(),
            request.target if request else "-",
            ws.close_code or 1006,
            ws.messages_in,
            ws.messages_out,
            get_hub().loop.now() - ws.opened_at,
        )


#: Header name -> environ key (a pure function of the name, cached as
#: requests come; bounded, since names are the client's choice).
_ENV_KEYS: dict[str, str] = {}
_MAX_ENV_KEYS = 512


def _cgi_headers_py(
    environ: dict[str, Any],
    headers: list[tuple[str, str]],
    keys: dict[str, str],
    max_keys: int,
) -> None:
    """Add request headers to ``environ`` as CGI variables: ``HTTP_*``
    (repeats joined with ","), ``CONTENT_TYPE`` and ``CONTENT_LENGTH``.
    Names with "_" are dropped: mangled, they would pass for a "-" name.
    """
    for name, value in headers:
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "content-length":
            environ["CONTENT_LENGTH"] = value
            continue
        key = keys.get(name)
        if key is None:
            if "_" in name:
                continue  # ambiguous with "-" once mangled: never trust it
            key = "HTTP_" + name.upper().replace("-", "_")
            if len(keys) < max_keys:
                keys[name] = key
        if key in environ:
            environ[key] += "," + value
        else:
            environ[key] = value


try:  # the same loop in C (geows/_speedups.c), a tenth of a handshake's bytecode
    from geows._speedups import (  # type: ignore[attr-defined,import-not-found,unused-ignore]
        cgi_headers as _cgi_headers,
    )
except ImportError:  # pragma: no cover - built without a compiler
    _cgi_headers = _cgi_headers_py

_UPGRADE = {
    "upgrade": "websocket",
    "connection": "upgrade",
    "sec-websocket-version": "13",
}
