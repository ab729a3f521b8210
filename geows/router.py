"""Routes (``--route 'REGEX ACTION'``) and the sans-I/O half of relaying one.

A route is uWSGI's ``route = REGEX ACTION`` with its two proxy actions,
``http:ADDRESS`` and ``uwsgi:ADDRESS[,MODIFIER1[,MODIFIER2]]``, ADDRESS being
``HOST:PORT`` or a Unix socket path. As uWSGI's plain ``route`` does, the
regex is searched (not anchored: write ``^`` yourself) in PATH_INFO, the
percent-decoded path without the query string, and the first route that
matches wins. Routes are parsed once, at start-up.

Relaying is bytes in, bytes out, so most of it lives here, free of sockets
and greenlets: the request head an http backend gets, the uwsgi vars a uwsgi
backend gets, where the client's request body ends, how the backend's answer
is framed (so the relay knows when it is over), and where the WebSocket frame
boundaries fall in a relayed session (so the relay can close it cleanly when
the backend dies). :mod:`geows.proxy` does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from geows.frames import OP_CLOSE, parse_header
from geows.http import ChunkedDecoder, HTTPError, HTTPLimits, Request

__all__ = [
    "Backend",
    "BadGateway",
    "FrameTracker",
    "RequestBody",
    "ResponseWatcher",
    "Route",
    "find_route",
    "http_request_head",
    "is_upgrade",
    "is_websocket_upgrade",
    "parse_action",
    "parse_route",
    "uwsgi_vars",
]

Address = Union[tuple[str, int], str]  # (host, port), or a Unix socket path

_ACTIONS = "http:HOST:PORT or uwsgi:HOST:PORT[,MODIFIER1,MODIFIER2]"


@dataclass(frozen=True)
class Backend:
    """Where a route sends its requests, and in which protocol."""

    protocol: Literal["http", "uwsgi"]
    address: Address
    #: uwsgi packet modifiers (0, 0 is a WSGI request); always 0 for http.
    modifier1: int = 0
    modifier2: int = 0

    def __str__(self) -> str:
        address = self.address
        if isinstance(address, str):
            where = address
        else:
            host, port = address
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.protocol == "uwsgi":
            return f"uwsgi:{where},{self.modifier1},{self.modifier2}"
        return f"http:{where}"


@dataclass(frozen=True)
class Route:
    """One ``--route``: requests whose PATH_INFO matches go to ``action``."""

    pattern: re.Pattern[str]
    action: Backend

    def __str__(self) -> str:
        return f"{self.pattern.pattern} {self.action}"


def parse_route(text: str) -> Route:
    """``'REGEX ACTION'`` to a Route; ValueError says what is wrong.

    Like uWSGI, the regex ends at the first space (write ``\\s`` or ``\\x20``
    for a space inside it).
    """
    parts = text.strip().split(None, 1)
    if len(parts) != 2:
        raise ValueError(f"not 'REGEX ACTION' (ACTION: {_ACTIONS})")
    regex, action = parts
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ValueError(f"bad regex {regex!r}: {exc}") from None
    return Route(pattern, parse_action(action))


def parse_action(text: str) -> Backend:
    """``http:ADDRESS`` or ``uwsgi:ADDRESS[,MOD1[,MOD2]]`` to a Backend."""
    text = text.strip()
    kind, colon, rest = text.partition(":")
    if not colon or kind not in ("http", "uwsgi"):
        raise ValueError(f"unsupported action {text!r}: geows routes to {_ACTIONS}")
    where, *modifiers = rest.split(",")
    address = _address(where, text)
    if kind == "http":
        if modifiers:
            raise ValueError(f"{text!r}: http: takes an address only")
        return Backend("http", address)
    if len(modifiers) > 2:
        raise ValueError(f"{text!r}: at most two modifiers")
    values = []
    for modifier in modifiers:
        modifier = modifier.strip()
        if not (modifier.isascii() and modifier.isdigit()) or int(modifier) > 255:
            raise ValueError(f"{text!r}: modifier {modifier!r} is not 0-255")
        values.append(int(modifier))
    values += [0] * (2 - len(values))
    return Backend("uwsgi", address, values[0], values[1])


def _address(value: str, action: str) -> Address:
    value = value.strip()
    if value.startswith("unix:"):
        value = value[5:]
        if not value:
            raise ValueError(f"{action!r}: no Unix socket path")
        return value
    if "/" in value:
        return value
    host, colon, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not colon
        or not host
        or not (port.isascii() and port.isdigit())
        or not 0 < int(port) < 65536
    ):
        raise ValueError(f"{action!r}: the backend is not HOST:PORT or a socket path")
    return host, int(port)


def find_route(routes: Iterable[Route], path_info: str) -> Optional[Route]:
    """The first route whose regex is found in ``path_info``, or None."""
    for route in routes:
        if route.pattern.search(path_info):
            return route
    return None


# -- the request --------------------------------------------------------------

#: Hop-by-hop fields (RFC 9110 7.6.1) and the X-Forwarded fields we set
#: ourselves: never passed on as the client sent them.
_DROPPED = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-for",
    )
)
#: Fields a Connection header may not make us drop: they frame the body we
#: pass on as it is, and the backend must frame it the same way.
_FRAMING = frozenset(("content-length", "transfer-encoding", "host"))


def is_upgrade(request: Request) -> bool:
    """Whether the client asks to switch protocols (RFC 9110 7.8)."""
    return request.has_token("connection", "upgrade") and bool(request.get("upgrade"))


def is_websocket_upgrade(request: Request) -> bool:
    """Whether the client asks for a WebSocket (RFC 6455 4.1)."""
    return is_upgrade(request) and request.has_token("upgrade", "websocket")


def http_request_head(request: Request, client: str, scheme: str) -> bytes:
    """The head an http backend gets for ``request``.

    Method, target, version and fields as received (names lower-case, as
    the parser keeps them), less the hop-by-hop fields, plus
    ``Connection: close`` (we close after one answer) or, for an upgrade,
    ``Connection: upgrade`` and the client's ``Upgrade``. ``X-Forwarded-For``
    gets ``client`` appended; ``X-Forwarded-Proto`` and ``-Host`` are ours
    (a client's own would be believed by the backend: they are dropped).
    """
    upgrade = is_upgrade(request)
    named: set[str] = set()
    for name, value in request.headers:
        if name == "connection":
            named.update(t.strip(" \t").lower() for t in value.split(","))
    named -= _FRAMING
    lines = [f"{request.method} {request.target} {request.version}"]
    forwarded = []
    for name, value in request.headers:
        if name == "x-forwarded-for":
            forwarded.append(value)
        elif (upgrade and name == "upgrade") or (
            name not in _DROPPED and name not in named
        ):
            lines.append(f"{name}: {value}")
    lines.append("connection: upgrade" if upgrade else "connection: close")
    forwarded.append(client)
    lines.append("x-forwarded-for: " + ", ".join(forwarded))
    lines.append("x-forwarded-proto: " + scheme)
    host = request.get("host")
    if host:
        lines.append("x-forwarded-host: " + host)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


#: CGI variables a uwsgi backend gets from the environ (nginx's uwsgi_params).
_UWSGI_VARS = (
    "REQUEST_METHOD",
    "REQUEST_URI",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "CONTENT_TYPE",
)
#: Fields we deal with ourselves: the body goes de-chunked with a
#: CONTENT_LENGTH, and a uwsgi backend cannot answer 100 Continue.
_UWSGI_SKIPPED = frozenset(("HTTP_EXPECT", "HTTP_TRANSFER_ENCODING"))


def uwsgi_vars(
    environ: Mapping[str, Any], content_length: Optional[int]
) -> list[tuple[str, str]]:
    """The vars of the uwsgi packet for a request, from its WSGI environ.

    ``content_length``: the length of the body the backend will get (after
    de-chunking), None when there is none.
    """
    out = [(name, environ[name]) for name in _UWSGI_VARS if name in environ]
    if content_length is not None:
        out.append(("CONTENT_LENGTH", str(content_length)))
    scheme = environ.get("wsgi.url_scheme", "http")
    out.append(("REQUEST_SCHEME", scheme))
    out.append(("UWSGI_SCHEME", scheme))
    if scheme == "https":
        out.append(("HTTPS", "on"))
    out.extend(
        (name, value)
        for name, value in environ.items()
        if name.startswith("HTTP_")
        and name not in _UWSGI_SKIPPED
        and isinstance(value, str)
    )
    return out


class RequestBody:
    """Where a request body ends in the bytes the client sends after its head.

    The body is passed on as it came, framing included; a chunked one goes
    through a :class:`~geows.http.ChunkedDecoder` on the way, so that we and
    the backend agree on where it ends (bad chunking is an HTTPError here,
    before the backend sees it) and ``max_body`` holds.
    """

    __slots__ = ("_decoder", "_left", "done")

    def __init__(
        self,
        kind: str,
        length: Optional[int] = None,
        limits: Optional[HTTPLimits] = None,
        max_body: Optional[int] = None,
    ) -> None:
        self._left = length or 0
        self._decoder: Optional[ChunkedDecoder] = None
        if kind == "chunked":
            self._decoder = ChunkedDecoder(limits or HTTPLimits(), max_body)
        self.done = kind == "none" or (kind == "length" and not self._left)

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Split ``data`` into (body bytes, what follows the body)."""
        if self.done:
            return b"", data
        decoder = self._decoder
        if decoder is None:
            left = self._left
            if len(data) < left:
                self._left = left - len(data)
                return data, b""
            self._left = 0
            self.done = True
            return data[:left], data[left:]
        decoder.feed(data)  # HTTPError on bad chunking or a body too large
        if not decoder.done:
            return data, b""
        self.done = True
        end = len(data) - len(decoder.unused)
        return data[:end], data[end:]


# -- the answer ---------------------------------------------------------------


class BadGateway(ValueError):
    """The backend's answer is not an HTTP response we can pass on."""


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS = re.compile(r"HTTP/1\.[01] ([0-9]{3})(?: .*)?")
_HEAD, _LENGTH, _CHUNKED, _TO_EOF, _TUNNEL, _DONE = range(6)


class ResponseWatcher:
    """Follows a backend's answer as it is relayed to the client.

    :meth:`feed` takes the backend's bytes and returns what to send on:
    interim (1xx) answers as they are; the final head with its Connection
    and Keep-Alive fields replaced by ``Connection: close`` (a routed
    request ends the client's connection); the body as it is, up to where
    its framing (RFC 9112 6.3) says it ends -- :attr:`done` then. After a
    ``101``, bytes flow unchanged (:attr:`tunnel`) and, for a WebSocket,
    :attr:`frames` tracks their frame boundaries.
    """

    __slots__ = (
        "_chunks",
        "_head",
        "_left",
        "_limits",
        "_method",
        "_mode",
        "_websocket",
        "done",
        "frames",
        "started",
        "status",
        "tunnel",
    )

    def __init__(
        self, method: str, websocket: bool, limits: Optional[HTTPLimits] = None
    ) -> None:
        self._method = method
        self._websocket = websocket
        self._limits = limits or HTTPLimits()
        self._mode = _HEAD
        self._head = bytearray()
        self._left = 0
        self._chunks: Optional[ChunkedDecoder] = None
        #: The final status code, once its head is in.
        self.status = 0
        #: Something was returned to be sent to the client.
        self.started = False
        #: The answer is complete (never, for a tunnel).
        self.done = False
        #: The backend switched protocols (101).
        self.tunnel = False
        self.frames: Optional[FrameTracker] = None

    @property
    def in_body(self) -> bool:
        """Whether the backend stopping now would cut the answer short."""
        return self._mode in (_HEAD, _LENGTH, _CHUNKED)

    def feed(self, data: bytes) -> bytes:
        """The part of ``data`` to send to the client; BadGateway if the
        backend does not speak HTTP.
        """
        out = self._heads(data) if self._mode == _HEAD else self._body(data)
        if out:
            self.started = True
        return out

    def _heads(self, data: bytes) -> bytes:
        head = self._head
        head += data
        out = b""
        while self._mode == _HEAD:
            match = _HEAD_END.search(head, 0, self._limits.max_head + 4)
            if match is None:
                if len(head) > self._limits.max_head:
                    raise BadGateway("response head too large")
                return out
            end = match.end()
            out += self._start(bytes(head[: match.start()]))
            del head[:end]
        rest = bytes(head)
        head.clear()
        return out + self._body(rest)

    def _start(self, head: bytes) -> bytes:
        """One response head: decide the framing; the head to send on."""
        lines = head.decode("latin-1").split("\n")
        lines = [line.rstrip("\r") for line in lines]
        match = _STATUS.fullmatch(lines[0])
        if match is None:
            raise BadGateway(f"not an HTTP response: {lines[0][:60]!r}")
        code = int(match.group(1))
        if 100 <= code < 200 and code != 101:
            return head + b"\r\n\r\n"  # interim: the final answer follows
        self.status = code
        if code == 101:
            self._mode = _TUNNEL
            self.tunnel = True
            if self._websocket:
                self.frames = FrameTracker()
            return head + b"\r\n\r\n"
        kept = [lines[0]]
        codings = lengths = ""
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise BadGateway(f"malformed response header line {line[:60]!r}")
            name = name.strip().lower()
            if name in ("connection", "keep-alive"):
                continue
            if name == "transfer-encoding":
                codings += "," + value
            elif name == "content-length":
                lengths += "," + value
            kept.append(line)
        kept.append("Connection: close\r\n\r\n")
        self._framing(code, codings, lengths)
        return "\r\n".join(kept).encode("latin-1")

    def _framing(self, code: int, codings: str, lengths: str) -> None:
        """Where the body ends (RFC 9112 6.3)."""
        if self._method == "HEAD" or code in (204, 304):
            self._mode = _DONE
        elif codings:
            last = codings.rsplit(",", 1)[1].split(";")[0].strip().lower()
            if last == "chunked":
                self._mode = _CHUNKED
                self._chunks = ChunkedDecoder(self._limits)
            else:
                self._mode = _TO_EOF
        elif lengths:
            values = {v.strip() for v in lengths.split(",") if v.strip()}
            if len(values) != 1:
                raise BadGateway("conflicting Content-Length")
            value = values.pop()
            if not (value.isascii() and value.isdigit()):
                raise BadGateway(f"malformed Content-Length {value[:20]!r}")
            self._left = int(value)
            self._mode = _LENGTH if self._left else _DONE
        else:
            self._mode = _TO_EOF
        self.done = self._mode == _DONE

    def _body(self, data: bytes) -> bytes:
        mode = self._mode
        if mode == _TUNNEL:
            if self.frames is not None:
                self.frames.feed(data)
            return data
        if mode == _TO_EOF:
            return data
        if mode == _LENGTH:
            left = self._left
            if len(data) < left:
                self._left = left - len(data)
                return data
            self._left = 0
            self._mode = _DONE
            self.done = True
            return data[:left]  # anything after the answer is not for the client
        if mode == _CHUNKED:
            decoder = self._chunks
            assert decoder is not None
            try:
                decoder.feed(data)
            except HTTPError as exc:
                raise BadGateway(f"bad chunked body: {exc.reason}") from None
            if not decoder.done:
                return data
            self._mode = _DONE
            self.done = True
            return data[: len(data) - len(decoder.unused)]
        return b""  # _DONE


class FrameTracker:
    """Frame boundaries in a server's stream of WebSocket frames (RFC 6455 5.2).

    Keeps no payload: a frame header in pieces (at most 14 bytes) and a count
    of payload bytes still to come. :attr:`at_boundary` says whether a frame
    of our own (a close frame) may be sent now without cutting one in two.
    """

    __slots__ = ("_head", "_left", "broken", "closed")

    def __init__(self) -> None:
        self._head = b""
        self._left = 0
        #: The stream is not WebSocket frames (a 64-bit length with its top
        #: bit set): boundaries are unknown from there on.
        self.broken = False
        #: The server sent a close frame (its header, at least).
        self.closed = False

    @property
    def at_boundary(self) -> bool:
        """Whether the stream so far ends exactly at the end of a frame."""
        return not self._left and not self._head and not self.broken

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Account for the next bytes of the stream."""
        if self.broken:
            return
        pos = 0
        n = len(data)
        while pos < n:
            left = self._left
            if left:
                step = min(left, n - pos)
                self._left = left - step
                pos += step
                continue
            head = self._head + bytes(data[pos : pos + 14])
            parsed = parse_header(head, 0)
            if parsed is None or parsed[3] > len(head):  # (a masking key)
                self._head = head  # the rest of data: less than a header
                return
            b0, _, length, size = parsed
            if length >> 63:
                self.broken = True
                return
            pos += size - len(self._head)
            self._head = b""
            if b0 & 0x0F == OP_CLOSE:
                self.closed = True
            self._left = length
