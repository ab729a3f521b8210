"""The uwsgi front door: one request per connection, as nginx ``uwsgi_pass`` sends it.

A front server (nginx's ``uwsgi_pass``, uWSGI's routers) opens a connection,
writes one uwsgi packet whose vars are the request's CGI environ, then the
request body (``CONTENT_LENGTH`` bytes), and reads back a raw HTTP response
until the connection closes. :class:`UwsgiConnection` is
:class:`~geows.wsgi.HTTPConnection` with that head and that framing:

* the head is a packet (:func:`geows.uwsgi_proto.parse_packet`), read with
  the same deadline as an HTTP head; a bad one is answered with the status
  the parser names, as a plain HTTP response, and the connection closes;
* the environ is the packet's vars, as uWSGI makes it, plus ``wsgi.*``;
* the response says ``HTTP/1.1`` and is never chunked: a body of unknown
  length ends when the connection closes (nginx's uwsgi module reads an
  upstream response up to its Content-Length or the close, and does not
  decode chunked);
* a WebSocket upgrade works as over HTTP: nginx passes the client's
  ``Upgrade`` and ``Connection`` headers as ``HTTP_UPGRADE`` and
  ``HTTP_CONNECTION`` (as the client sent them, not rewritten), and relays
  the raw stream both ways once it reads our ``101``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, Optional

from gevent import get_hub

from geows.http import Request
from geows.input import Input
from geows.uwsgi_proto import UwsgiRequest, parse_packet
from geows.wsgi import HTTPConnection, Settings

__all__ = ["UwsgiConnection", "url_scheme"]

#: Vars left out of the environ: the request's own CONTENT_* say it already
#: (RFC 3875 4.1.18), and nginx sends these duplicates as well.
_SHADOWED = frozenset(("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"))
#: CGI variables taken from the request and the listener when the packet
#: lacks them (these may legitimately be empty)...
_IF_ABSENT = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_URI")
#: ...and these also when empty (PEP 3333: never empty).
_IF_EMPTY = (
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
)
#: Seconds and bytes spent reading what the front server still sends after
#: the response (an unread body) before closing; see UwsgiConnection._close.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024
_RECV = 65536


def url_scheme(vars: Mapping[str, str], default: str = "http") -> str:
    """``wsgi.url_scheme`` of a request from its uwsgi vars.

    ``UWSGI_SCHEME`` first (uWSGI's way for a front server to force it),
    then ``HTTPS`` ("on" or "1" means https, as in uWSGI and CGI servers;
    nginx's ``uwsgi_params`` sends it only over TLS), then nginx's
    ``REQUEST_SCHEME``; the listener's ``default`` when none says.
    """
    scheme = vars.get("UWSGI_SCHEME", "").lower()
    if scheme in ("http", "https"):
        return scheme
    https = vars.get("HTTPS")
    if https:
        return "https" if https.lower() in ("on", "1") else "http"
    scheme = vars.get("REQUEST_SCHEME", "").lower()
    if scheme in ("http", "https"):
        return scheme
    return default


class UwsgiConnection(HTTPConnection):
    """One uwsgi connection from a front server: one request, maybe a WebSocket."""

    __slots__ = ("packet",)

    chunked_responses = False
    # The front server parses this status line; the client's own protocol
    # (SERVER_PROTOCOL, maybe HTTP/2.0) is between it and the front server.
    response_version = "HTTP/1.1"

    def __init__(self, settings: Settings, sock: socket.socket, addr: Any) -> None:
        super().__init__(settings, sock, addr)
        #: The packet of the request being served, once read.
        self.packet: Optional[UwsgiRequest] = None

    def _parse_head(self, buf: bytearray) -> Optional[tuple[Request, int]]:
        parsed = parse_packet(buf, self.settings.uwsgi_limits)
        if parsed is None:
            return None
        packet, consumed = parsed
        self.packet = packet
        request = packet.to_http_request()
        # The front server answered "Expect: 100-continue" itself (nginx
        # does, then passes the header on as HTTP_EXPECT): a 100 from us
        # would reach it as the response's status line.
        request.headers[:] = [h for h in request.headers if h[0] != "expect"]
        return request, consumed

    def _cgi_environ(self, request: Request) -> dict[str, Any]:
        """The packet's vars, as uWSGI passes them, completed for PEP 3333.

        Left out: the ``HTTP_CONTENT_LENGTH``/``_TYPE`` duplicates, and
        ``CONTENT_LENGTH``/``CONTENT_TYPE`` when empty (nginx sends both empty
        for a request without a body; PEP 3333 lets them be absent, and they
        are absent on geows' HTTP listener). What PEP 3333 requires and the
        front server did not send comes from the request and the listener as
        on the HTTP listener: ``SCRIPT_NAME``, ``PATH_INFO``, ``QUERY_STRING``
        and ``REQUEST_URI`` when absent; ``SERVER_NAME``, ``SERVER_PORT``,
        ``SERVER_PROTOCOL``, ``REMOTE_ADDR`` and ``REMOTE_PORT`` when absent
        or empty (nginx sends an empty ``SERVER_NAME`` for a server block
        without ``server_name``).
        """
        packet = self.packet
        assert packet is not None
        sent = packet.vars
        environ: dict[str, Any] = {
            name: value for name, value in sent.items() if name not in _SHADOWED
        }
        for name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            if name in environ and not environ[name]:
                del environ[name]
        missing = [name for name in _IF_ABSENT if name not in sent]
        missing += [name for name in _IF_EMPTY if not sent.get(name)]
        if missing:
            fallback = super()._cgi_environ(request)
            for name in missing:
                environ[name] = fallback[name]
            script = sent.get("SCRIPT_NAME")
            path = environ["PATH_INFO"]
            if "PATH_INFO" in missing and script and path.startswith(script):
                environ["PATH_INFO"] = path[len(script) :]  # the rest of the path
        return environ

    def _environ(self, request: Request, inp: Input) -> dict[str, Any]:
        environ = super()._environ(request, inp)
        assert self.packet is not None
        environ["wsgi.url_scheme"] = url_scheme(
            self.packet.vars, self.settings.url_scheme
        )
        return environ

    def _real_client(self, environ: dict[str, Any], request: Request) -> None:
        """Nothing to resolve: the vars name the client already.

        The peer is the front server, and its ``REMOTE_ADDR`` is trusted by
        construction, as uWSGI does; ``--trusted-proxies`` does not apply
        (the client's own ``X-Forwarded-For`` arrives among the vars, as
        ``HTTP_X_FORWARDED_FOR``, and is never believed).
        """

    def _client(self) -> str:
        """The client as the front server saw it (``REMOTE_ADDR``), for the log."""
        packet = self.packet
        if packet is not None:
            addr = packet.vars.get("REMOTE_ADDR")
            if addr:
                return addr
        return super()._client()

    def _close(self) -> None:
        """End the response, then close once the front server has read it.

        A response without Content-Length ends with the connection, so its
        end is a FIN (``shutdown``). Closing a socket with unread input
        (a body the app did not read, the rest of a refused packet) makes
        the kernel answer with a reset, which can destroy response bytes
        the front server has not read yet. So, when a request or a refused
        packet came in, read and drop what the front still sends until it
        closes (nginx does once it has the response), for at most
        ``_LINGER_SECONDS`` and ``_LINGER_BYTES``: a lingering close, as
        nginx and Apache do towards their clients.
        """
        sock = self.sock
        if self.packet is not None or self.buf:
            self.buf.clear()
            try:
                sock.shutdown(socket.SHUT_WR)
                loop = get_hub().loop
                deadline = loop.now() + _LINGER_SECONDS
                drained = 0
                while drained < _LINGER_BYTES:
                    remaining = deadline - loop.now()
                    if remaining <= 0:
                        break
                    sock.settimeout(remaining)
                    data = sock.recv(_RECV)
                    if not data:
                        break
                    drained += len(data)
            except OSError:  # reset, or the deadline (socket.timeout)
                pass
        super()._close()
