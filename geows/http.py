"""Sans-I/O HTTP/1.1 request parsing (RFC 9110, RFC 9112) with strict limits.

Nothing here touches sockets, time or threads: callers hand in bytes and get
back parsed requests, decoded body pieces or an :class:`HTTPError` carrying the
status to answer with.  The head parser is on the WebSocket handshake hot
path: the optional C extension ``geows._httpfast`` parses the common,
plainly well-formed head and leaves everything else to the pure-Python
parser, the one authority, whose own common case is a few C-level passes
over the whole head (find, count, translate, one regex findall) plus a
short loop over the fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal, Optional, Union

__all__ = [
    "BodyKind",
    "ChunkedDecoder",
    "HTTPError",
    "HTTPLimits",
    "Request",
    "error_response",
    "parse_head",
    "status_line",
]

BodyKind = Literal["none", "length", "chunked"]


@dataclass(frozen=True)
class HTTPLimits:
    """Size limits that bound the memory and CPU one request head may cost."""

    max_request_line: int = 8192  # bytes; over -> 414
    max_header_line: int = 8192  # bytes per header line; over -> 431
    max_headers: int = 100  # number of header lines; over -> 431
    max_head: int = 65536  # whole head (and chunked trailers); over -> 431
    max_chunk_line: int = 1024  # chunk-size line incl. extensions; over -> 400


class HTTPError(Exception):
    """A request the server must refuse; carries the status to answer with."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        self.status = HTTPStatus(status)
        self.reason = reason
        super().__init__(f"{self.status.value} {self.status.phrase}: {reason}")


@dataclass
class Request:
    """A parsed request head; body framing is decided while parsing."""

    method: str
    target: str
    version: str
    # Names lower-cased, values stripped of surrounding OWS, in wire order.
    headers: list[tuple[str, str]]
    body_kind: BodyKind = "none"
    content_length: Optional[int] = None
    #: name -> joined value, built by the first :meth:`get` (the handshake
    #: asks for six headers: one pass instead of six).
    _index: Optional[dict[str, str]] = field(
        default=None, init=False, repr=False, compare=False
    )

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """Value of header `name`; repeated fields are joined with ", ".

        Joining is how RFC 9110 5.3 says a recipient may combine field lines.
        """
        return self.header_index().get(name.lower(), default)

    def header_index(self) -> dict[str, str]:
        """Lower-case name -> value as :meth:`get` gives it, built once: a
        caller with names already in lower case looks up with its ``get``.
        """
        index = self._index
        if index is None:
            index = {}
            for n, v in self.headers:
                index[n] = f"{index[n]}, {v}" if n in index else v
            self._index = index
        return index

    def forget_headers(self) -> None:
        """Drop the parsed headers (an upgraded connection keeps the environ)."""
        self.headers.clear()
        self._index = None

    def has_token(self, name: str, token: str) -> bool:
        """Whether comma-separated header `name` lists `token` (case-insensitive)."""
        value = self.header_index().get(name.lower())
        if value is None:
            return False
        token = token.lower()
        for element in value.split(","):  # repeated fields: joined with ", "
            if element.strip(" \t").lower() == token:
                return True
        return False

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may stay open after this request (RFC 9112 9.3)."""
        if self.has_token("connection", "close"):
            return False
        if self.version == "HTTP/1.1":
            return True
        return self.has_token("connection", "keep-alive")

    @property
    def path(self) -> str:
        """The request-target up to the first "?"."""
        return self.target.partition("?")[0]

    @property
    def query_string(self) -> str:
        """The request-target after the first "?", or ""."""
        return self.target.partition("?")[2]


# --- grammar --------------------------------------------------------------

_TCHAR = r"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_TOKEN_RE = re.compile(_TCHAR + "+")
# One header line: the name, then the value after its leading OWS and up to
# the LF (its trailing OWS and CR are stripped afterwards).  Anchored per
# line, so the number of matches equals the number of lines only when every
# line is well-formed: findall validates and extracts in one C-level pass.
_FIELD_RE = re.compile(r"^(" + _TCHAR + r"+):[ \t]*(.*)\n", re.MULTILINE)
# Bytes allowed anywhere in a head: HTAB, LF, VCHAR, SP and obs-text.  What
# translate() leaves behind is CRs and forbidden control characters.
_HEAD_BYTES = bytes([9, 10, *range(0x20, 0x7F), *range(0x80, 0x100)])
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB
_VERSION_RE = re.compile(r"HTTP/[0-9]\.[0-9]")
_COMMON_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")
)
_FRAMING_NAMES = frozenset(("host", "content-length", "transfer-encoding"))
# Transfer codings in the IANA registry.  Only "chunked" is implemented; the
# others are refused with 501 unless their position makes the body length
# undeterminable (400), and names outside the registry are 501 "unknown".
_KNOWN_CODINGS = frozenset(
    ("chunked", "compress", "deflate", "gzip", "x-compress", "x-gzip")
)
_MAX_LEADING_EMPTY_LINES = 8
_MAX_CONTENT_LENGTH = 2**63 - 1

_HEX_RE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_BAD_BYTE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TRAILER_RE = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*")


def _bad(reason: str) -> HTTPError:
    return HTTPError(HTTPStatus.BAD_REQUEST, reason)


# --- request head ---------------------------------------------------------


# The optional C fast path (geows/_httpfast.c): for a plainly well-formed
# common head it returns (method, target, version, headers, index, consumed),
# the fields _parse_head_py would produce plus the index Request.get builds;
# for anything else None, and _parse_head_py, the single authority on what
# is valid and how a refusal is answered, decides.
_FastHead = tuple[str, str, str, list[tuple[str, str]], dict[str, str], int]
_fast_parse_head: Optional[
    Callable[[Union[bytes, bytearray], int, int, int, int], Optional[_FastHead]]
]
try:
    from geows._httpfast import parse_head as _fast_parse_head
except ImportError:  # pragma: no cover - depends on the build
    _fast_parse_head = None


def parse_head(
    buf: Union[bytes, bytearray], limits: HTTPLimits
) -> Optional[tuple[Request, int]]:
    """Parse a request head at the start of buf; None if incomplete; else
    (request, bytes consumed incl. the blank line). Raise HTTPError on bad input.
    """
    fast = _fast_parse_head
    if fast is not None:
        parsed = fast(
            buf,
            limits.max_request_line,
            limits.max_header_line,
            limits.max_headers,
            limits.max_head,
        )
        if parsed is not None:
            method, target, version, headers, index, consumed = parsed
            request = Request(method, target, version, headers)
            request._index = index  # so the handshake's get()s need no pass
            return request, consumed
    return _parse_head_py(buf, limits)


def _parse_head_py(
    buf: Union[bytes, bytearray], limits: HTTPLimits
) -> Optional[tuple[Request, int]]:
    """parse_head in pure Python: the whole grammar, every limit and error."""
    start = 0
    if buf[:1] in (b"\r", b"\n"):
        skipped = _skip_empty_lines(buf)
        if skipped is None:
            return None
        start = skipped

    # The head ends at the first empty line.  Fast path: the first CRLFCRLF,
    # which is that line unless a bare LF (tolerated, RFC 9112 2.2) came
    # earlier.  Searches stop at max_head: a longer head is refused anyway.
    limit_end = start + limits.max_head
    i = buf.find(b"\r\n\r\n", start, limit_end)
    if i >= 0:
        hend, consumed = i + 2, i + 4
        raw = buf[start:hend]
        crlfs = raw.count(b"\r\n")
        if raw.count(b"\n") != crlfs:
            end = _find_head_end(buf, start, hend + 2)
            assert end is not None  # this CRLFCRLF ends a head at the latest
            hend, consumed = end
            raw = buf[start:hend]
            crlfs = raw.count(b"\r\n")
    else:
        end = _find_head_end(buf, start, limit_end)
        if end is None:
            _check_incomplete(buf, start, limits)
            return None
        hend, consumed = end
        raw = buf[start:hend]
        crlfs = raw.count(b"\r\n")

    text = raw.decode("latin-1")
    nl = text.find("\n")
    # Limits first, so that feeding byte by byte fails like feeding at once.
    rl_end = nl - 1 if text[nl - 1] == "\r" else nl
    if rl_end > limits.max_request_line:
        raise HTTPError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    block = text[nl + 1 :]  # the header lines, each ending with (CR)LF
    nheaders = block.count("\n")
    if nheaders > limits.max_headers:
        raise HTTPError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields"
        )
    if len(block) > limits.max_header_line and any(
        len(line) - line.endswith("\r") > limits.max_header_line
        for line in block.split("\n")
    ):
        raise HTTPError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header line too long"
        )
    # Every CR must be the first half of a CRLF and nothing else may be a
    # control character: then translate() leaves exactly one CR per CRLF.
    leftover = raw.translate(None, _HEAD_BYTES)
    if len(leftover) != crlfs:
        if leftover.replace(b"\r", b""):
            raise _bad("control character in request head")
        raise _bad("bare CR in request head")
    request_line = text[:rl_end]

    method, target, version = _parse_request_line(request_line)

    fields = _FIELD_RE.findall(block)
    if len(fields) != nheaders:
        raise _header_syntax_error(block)
    headers: list[tuple[str, str]] = []
    append = headers.append
    hosts = 0
    lengths: list[str] = []
    codings: list[str] = []
    for name, value in fields:
        name = name.lower()
        value = value.rstrip(" \t\r")  # trailing OWS, and the CR of CRLF
        append((name, value))
        if name in _FRAMING_NAMES:
            if name == "host":
                hosts += 1
            elif name == "content-length":
                lengths.append(value)
            else:
                codings.append(value)

    if hosts > 1:
        raise _bad("more than one Host header")
    if hosts == 0 and version == "HTTP/1.1":
        raise _bad("missing Host header")

    request = Request(method, target, version, headers)
    if codings:
        if version == "HTTP/1.0":
            raise _bad("Transfer-Encoding in an HTTP/1.0 request")
        if lengths:
            raise _bad("both Transfer-Encoding and Content-Length")
        _check_codings(codings)
        request.body_kind = "chunked"
    elif lengths:
        request.content_length = _content_length(lengths)
        request.body_kind = "length"
    return request, consumed


def _skip_empty_lines(buf: Union[bytes, bytearray]) -> Optional[int]:
    """Offset past the leading empty lines (RFC 9112 2.2); None if more may come."""
    pos = 0
    n = len(buf)
    for _ in range(_MAX_LEADING_EMPTY_LINES + 1):
        if buf.startswith(b"\r\n", pos):
            pos += 2
        elif buf.startswith(b"\n", pos):
            pos += 1
        elif pos == n - 1 and buf[pos] == 13:
            return None  # a lone CR at the end: its LF may follow
        else:
            return pos if pos < n else None
    raise _bad("too many empty lines before the request line")


def _find_head_end(
    buf: Union[bytes, bytearray], start: int, end: int
) -> Optional[tuple[int, int]]:
    """End of the head's last line and of its blank line, allowing bare LFs."""
    i = buf.find(b"\n\r\n", start, end)
    j = buf.find(b"\n\n", start, end if i < 0 else i + 2)
    if j >= 0:
        return j + 1, j + 2
    if i >= 0:
        return i + 1, i + 3
    return None


def _check_incomplete(
    buf: Union[bytes, bytearray], start: int, limits: HTTPLimits
) -> None:
    """Enforce the limits on a head whose end has not arrived yet."""
    n = len(buf)
    max_line = limits.max_request_line
    nl = buf.find(b"\n", start, start + max_line + 2)
    if nl < 0:
        pending = n - start - (1 if buf.endswith(b"\r") else 0)
        if pending > max_line:
            raise HTTPError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    elif nl - start - (1 if buf[nl - 1] == 13 else 0) > max_line:
        raise HTTPError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    if n - start >= limits.max_head:
        raise HTTPError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "head too large")
    if nl < 0:
        return
    if buf.count(b"\n", nl + 1) > limits.max_headers:
        raise HTTPError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields"
        )
    max_field = limits.max_header_line
    if n - nl - 1 <= max_field:
        return  # no line can be too long yet
    pos = nl + 1
    while True:
        eol = buf.find(b"\n", pos)
        if eol < 0:
            return
        if eol - pos - (1 if eol > pos and buf[eol - 1] == 13 else 0) > max_field:
            raise HTTPError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header line too long"
            )
        pos = eol + 1


def _parse_request_line(line: str) -> tuple[str, str, str]:
    """Split and validate `method SP target SP version`."""
    parts = line.split(" ")
    if len(parts) != 3:
        raise _bad("malformed request line")
    method, target, version = parts
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        if _VERSION_RE.fullmatch(version):
            raise HTTPError(
                HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                f"unsupported version {version}",
            )
        raise _bad("malformed HTTP version")
    if method not in _COMMON_METHODS and not _TOKEN_RE.fullmatch(method):
        raise _bad("malformed method")
    if not target or "\t" in target:
        raise _bad("malformed request target")
    return method, target, version


def _header_syntax_error(block: str) -> HTTPError:
    """Describe the first malformed header line (only on the error path)."""
    for line in block.split("\n"):
        if _FIELD_RE.fullmatch(line + "\n"):
            continue
        if line[:1] in (" ", "\t"):
            return _bad("obsolete line folding in header")
        name, colon, _ = line.partition(":")
        if not colon:
            return _bad("header line without a colon")
        if not name:
            return _bad("empty header name")
        if name[-1] in " \t":
            return _bad("whitespace between header name and colon")
        return _bad("invalid character in header name")
    return _bad("malformed header")  # pragma: no cover - findall/fullmatch agree


def _check_codings(values: list[str]) -> None:
    """Accept only a Transfer-Encoding whose one and final coding is chunked."""
    codings: list[str] = []
    for value in values:
        for element in value.split(","):
            element = element.strip(" \t")
            if not element:
                continue  # empty list elements are allowed (RFC 9110 5.6.1)
            coding = element.split(";", 1)[0].rstrip(" \t").lower()
            if not _TOKEN_RE.fullmatch(coding):
                raise _bad("malformed Transfer-Encoding")
            codings.append(coding)
    if not codings:
        raise _bad("empty Transfer-Encoding")
    for coding in codings:
        if coding not in _KNOWN_CODINGS:
            raise HTTPError(
                HTTPStatus.NOT_IMPLEMENTED, f"unknown transfer coding {coding!r}"
            )
    if codings[-1] != "chunked" or codings.count("chunked") > 1:
        # The body length cannot be determined (RFC 9112 6.3 item 4).
        raise _bad("chunked is not the final transfer coding")
    if len(codings) > 1:
        raise HTTPError(
            HTTPStatus.NOT_IMPLEMENTED, f"transfer coding {codings[0]!r} not supported"
        )


def _content_length(values: list[str]) -> int:
    """The one Content-Length all the field values agree on (RFC 9110 8.6)."""
    result: Optional[int] = None
    for value in values:
        for element in value.split(","):
            element = element.strip(" \t")
            # isascii(): str.isdigit() also accepts digits such as "\xb2".
            if not (element.isascii() and element.isdigit()):
                raise _bad("malformed Content-Length")
            if len(element) > 19 or int(element) > _MAX_CONTENT_LENGTH:
                raise _bad("Content-Length too large")
            length = int(element)
            if result is None:
                result = length
            elif length != result:
                raise _bad("conflicting Content-Length values")
    assert result is not None  # values is non-empty and split yields >= 1 item
    return result


# --- chunked body ---------------------------------------------------------

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """Incremental decoder for a chunked request body (RFC 9112 7.1).

    Line endings inside the chunked framing must be CRLF: unlike the head,
    bare LF is refused here because parsers that disagree about it are the
    classic request-smuggling vector.
    """

    def __init__(self, limits: HTTPLimits, max_body: Optional[int] = None) -> None:
        self._limits = limits
        self._max_body = max_body
        self._buf = bytearray()
        self._state = _SIZE
        self._remaining = 0  # data bytes left in the current chunk
        self._total = 0  # data bytes announced so far
        self._trailer_size = 0
        self.done = False
        self.unused = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the body pieces it completes (maybe none)."""
        if self.done:
            self.unused += data
            return []
        if self._state == _DATA and not self._buf and len(data) <= self._remaining:
            # Fast path for bulk data: hand the caller's bytes straight back.
            if not data:
                return []
            self._remaining -= len(data)
            if self._remaining == 0:
                self._state = _DATA_END
            return [bytes(data)]
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif state == _DATA_END:
                if n - pos < 2:
                    if buf[pos] != 13:
                        raise _bad("chunk data not followed by CRLF")
                    break
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise _bad("chunk data not followed by CRLF")
                pos += 2
                self._state = _SIZE
            elif state == _SIZE:
                pos = self._size_line(buf, pos)
                if pos < 0:
                    pos = -pos - 1
                    break
            else:  # _TRAILER
                pos = self._trailer_line(buf, pos)
                if pos < 0:
                    pos = -pos - 1
                    break
                if self.done:
                    self.unused = bytes(buf[pos:])
                    buf.clear()
                    return out
        del buf[:pos]
        return out

    def _size_line(self, buf: bytearray, pos: int) -> int:
        """Parse one chunk-size line at pos; new position, or -pos-1 if incomplete."""
        limit = self._limits.max_chunk_line
        eol = buf.find(b"\n", pos, pos + limit + 2)
        if eol < 0:
            if len(buf) - pos >= limit + 2:
                raise _bad("chunk size line too long")
            return -pos - 1
        if eol == pos or buf[eol - 1] != 13:
            raise _bad("chunk size line not ended by CRLF")
        line = bytes(buf[pos : eol - 1])  # at most `limit` bytes, by the find
        size_part, semi, ext = line.partition(b";")
        if semi:
            size_part = size_part.rstrip(b" \t")  # BWS before ";"
            if _BAD_BYTE_RE.search(ext):
                raise _bad("control character in chunk extension")
        if not _HEX_RE.fullmatch(size_part):
            raise _bad("malformed chunk size")
        size = int(size_part, 16)
        if size == 0:
            self._state = _TRAILER
        else:
            self._total += size
            if self._max_body is not None and self._total > self._max_body:
                raise HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large"
                )
            self._remaining = size
            self._state = _DATA
        return eol + 1

    def _trailer_line(self, buf: bytearray, pos: int) -> int:
        """Skip one trailer line at pos; new position, or -pos-1 if incomplete."""
        room = self._limits.max_head - self._trailer_size
        eol = buf.find(b"\n", pos, pos + room)
        if eol < 0:
            if len(buf) - pos >= room:
                raise HTTPError(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "trailers too large"
                )
            return -pos - 1
        if eol == pos or buf[eol - 1] != 13:
            raise _bad("trailer line not ended by CRLF")
        self._trailer_size += eol + 1 - pos
        if eol - 1 == pos:
            self.done = True
            self._state = _DONE
        elif not _TRAILER_RE.fullmatch(buf, pos, eol - 1):
            raise _bad("malformed trailer field")
        return eol + 1


# --- responses ------------------------------------------------------------

_STATUS_LINES: dict[tuple[int, str], bytes] = {}


def status_line(status: Union[HTTPStatus, int], version: str = "HTTP/1.1") -> bytes:
    """b"HTTP/1.1 404 Not Found\\r\\n", with the phrase from http.HTTPStatus."""
    try:
        return _STATUS_LINES[status, version]
    except KeyError:
        pass
    code = int(status)
    if not 100 <= code <= 999:
        raise ValueError(f"invalid status code {code}")
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(f"invalid HTTP version {version!r}")
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = ""  # unregistered code: the reason phrase may be empty
    line = f"{version} {code} {phrase}\r\n".encode("ascii")
    _STATUS_LINES[code, version] = line
    return line


def error_response(
    status: HTTPStatus,
    extra_headers: Iterable[tuple[str, str]] = (),
    body: Optional[str] = None,
) -> bytes:
    """A complete small text/plain response that also closes the connection."""
    status = HTTPStatus(status)
    payload = (status.phrase + "\n" if body is None else body).encode("utf-8")
    parts = [
        status_line(status),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(payload),
        b"Connection: close\r\n",
    ]
    for name, value in extra_headers:
        # Refuse anything that could split the response (header injection).
        if not _TOKEN_RE.fullmatch(name) or _BAD_VALUE_RE.search(value):
            raise ValueError(f"invalid header {name!r}: {value!r}")
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"\r\n")
    parts.append(payload)
    return b"".join(parts)
