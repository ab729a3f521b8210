"""Sans-I/O codec for the uwsgi binary protocol (the one nginx ``uwsgi_pass`` speaks).

nginx (``uwsgi_pass``), uWSGI's own routers and its FastRouter forward each
request to a backend as one *packet* instead of an HTTP head::

    modifier1 (u8) | datasize (u16, little-endian) | modifier2 (u8) | vars

For ``modifier1`` 0, a WSGI request, the ``datasize`` bytes of vars are a
sequence of ``keysize (u16le), key, valsize (u16le), value``: the CGI/WSGI
environ itself (``REQUEST_METHOD``, ``REQUEST_URI``, ``HTTP_HOST``...).  The
request body, ``CONTENT_LENGTH`` bytes, follows on the stream; the answer is a
plain HTTP response written raw.  There is one request per connection.

Why limits: the front server is usually trusted, but a backend port reachable
by anyone else must not let one packet cost unbounded CPU or memory.  The
format caps a packet at 65535 bytes; :class:`UwsgiLimits` lets an operator cap
it lower and bounds the number of vars, as ``HTTPLimits`` does for headers.

Errors are :class:`geows.http.HTTPError`, so the I/O layer answers a bad
packet exactly like a bad HTTP head: 400 malformed, 431 too many vars or too
large, 501 a ``modifier1`` other than 0.

Repeated header lines: nginx sends one ``HTTP_*`` var per request header
line, so a header the client sent twice (two ``Connection`` lines, two
``Cookie`` lines) arrives as two vars of the same name. Those are joined
with "," in wire order, as a recipient may combine field lines (RFC 9110
5.3) and as geows' HTTP listener builds its environ; any other repeated
name is ambiguous and refused (400).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Optional, Union
from urllib.parse import quote

from geows.http import HTTPError, Request

__all__ = [
    "HEADER_SIZE",
    "MAX_DATASIZE",
    "UwsgiLimits",
    "UwsgiRequest",
    "encode_packet",
    "parse_packet",
]

#: modifier1, datasize (u16le), modifier2.
HEADER_SIZE = 4
#: The largest datasize (and key or value) a u16 can announce.
MAX_DATASIZE = 0xFFFF

_HEADER = struct.Struct("<BHB")
_U16 = struct.Struct("<H")
_MAX_CONTENT_LENGTH = 2**63 - 1  # as geows.http: an int64 on every side
# RFC 3875 4.1.18: header fields already available through another variable
# get no HTTP_ variable; CONTENT_LENGTH and CONTENT_TYPE are what count.
_SHADOWED = frozenset(("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"))
# Characters left as they are when PATH_INFO is turned back into a target:
# the RFC 3986 "pchar" set minus "%" (PATH_INFO is already decoded) plus "/".
_PATH_SAFE = "/:@!$&'()*+,;=-._~"

Buffer = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class UwsgiLimits:
    """Bounds on one uwsgi packet, like :class:`geows.http.HTTPLimits` for HTTP."""

    #: Number of vars in one packet; over -> 431. nginx's ``uwsgi_params``
    #: sends 14 and each request header adds one; a browser's WebSocket
    #: upgrade carries about 15, so 100 (HTTPLimits.max_headers) is ample.
    max_vars: int = 100
    #: Packet datasize in bytes; over -> 431, refused from the 4-byte header
    #: alone. 65535 is the format's own ceiling (uWSGI's ``--buffer-size``
    #: default is 4096 and nginx's ``uwsgi_buffer_size`` one page; both
    #: refuse larger heads). A smaller value lets an operator cap it lower.
    max_packet: int = MAX_DATASIZE


@dataclass
class UwsgiRequest:
    """One parsed WSGI request packet: its modifiers and its vars in wire order."""

    modifier1: int
    modifier2: int
    #: The environ the front server sent: ASCII names, values decoded as
    #: latin-1 ("bytes as latin-1 str", PEP 3333).
    vars: dict[str, str]

    @property
    def method(self) -> str:
        """``REQUEST_METHOD`` (never empty in a packet parse_packet accepted)."""
        return self.vars.get("REQUEST_METHOD", "")

    @property
    def target(self) -> str:
        """The request-target: ``REQUEST_URI``, else rebuilt from the path vars.

        ``REQUEST_URI`` is the raw target nginx received.  Without it the
        target is ``SCRIPT_NAME + PATH_INFO`` percent-encoded again (those are
        decoded) plus ``?QUERY_STRING`` when there is one, as PEP 3333's URL
        reconstruction does; "/" when there is no path at all.
        """
        uri = self.vars.get("REQUEST_URI")
        if uri:
            return uri
        path = self.vars.get("SCRIPT_NAME", "") + self.vars.get("PATH_INFO", "")
        target = quote(path.encode("latin-1"), safe=_PATH_SAFE) or "/"
        query = self.vars.get("QUERY_STRING")
        if query:
            target += "?" + query
        return target

    @property
    def version(self) -> str:
        """``SERVER_PROTOCOL``, or "HTTP/1.1" when the front server left it out."""
        return self.vars.get("SERVER_PROTOCOL") or "HTTP/1.1"

    @property
    def content_length(self) -> Optional[int]:
        """``CONTENT_LENGTH`` as an int; None when absent or empty (PEP 3333).

        Raises HTTPError(400) for anything but decimal digits: the body is
        framed by this number alone, so a doubtful one must not be guessed at.
        """
        value = self.vars.get("CONTENT_LENGTH")
        if not value:
            return None
        # isascii(): str.isdigit() also accepts digits such as "\xb2".
        if not (value.isascii() and value.isdigit()):
            raise _bad("malformed CONTENT_LENGTH")
        if len(value) > 19 or int(value) > _MAX_CONTENT_LENGTH:
            raise _bad("CONTENT_LENGTH too large")
        return int(value)

    def headers(self) -> list[tuple[str, str]]:
        """The request headers in :class:`geows.http.Request` form.

        ``HTTP_X_FOO`` becomes ``("x-foo", value)``; ``CONTENT_TYPE`` and
        ``CONTENT_LENGTH`` become their headers when not empty (and shadow
        any ``HTTP_CONTENT_*`` duplicates, RFC 3875 4.1.18).  Wire order.
        """
        out: list[tuple[str, str]] = []
        for name, value in self.vars.items():
            if name.startswith("HTTP_"):
                if name not in _SHADOWED:
                    out.append((name[5:].lower().replace("_", "-"), value))
            elif name in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                out.append((name.lower().replace("_", "-"), value))
        return out

    def to_http_request(self) -> Request:
        """This request as a :class:`geows.http.Request` for the HTTP layers.

        Its ``keep_alive`` is always False: the uwsgi protocol carries one
        request per connection, whatever ``Connection`` header came with it.
        """
        length = self.content_length
        return _UwsgiHTTPRequest(
            method=self.method,
            target=self.target,
            version=self.version,
            headers=self.headers(),
            body_kind="length" if length else "none",
            content_length=length,
        )


class _UwsgiHTTPRequest(Request):
    """A Request that arrived over uwsgi: never kept alive."""

    @property
    def keep_alive(self) -> bool:
        """Always False: one request per uwsgi connection."""
        return False


def _bad(reason: str) -> HTTPError:
    return HTTPError(HTTPStatus.BAD_REQUEST, reason)


def _check_header(buf: Buffer, limits: UwsgiLimits) -> Optional[tuple[int, int, int]]:
    """Validate what has arrived of the 4-byte header; its fields once complete."""
    n = len(buf)
    if n >= 1 and buf[0] != 0:
        raise HTTPError(
            HTTPStatus.NOT_IMPLEMENTED, f"uwsgi modifier1 {buf[0]} is not supported"
        )
    if n >= 3:
        datasize = buf[1] | buf[2] << 8
        if datasize > limits.max_packet:
            raise HTTPError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "uwsgi packet too large"
            )
    if n < HEADER_SIZE:
        return None
    modifier1, datasize, modifier2 = _HEADER.unpack_from(buf)
    return modifier1, datasize, modifier2


def parse_packet(
    buf: Buffer, limits: UwsgiLimits = UwsgiLimits()
) -> Optional[tuple[UwsgiRequest, int]]:
    """Parse the uwsgi packet at the start of `buf`.

    Returns None while the packet is incomplete, else the request and the
    number of bytes it took (the body follows them).  Raises HTTPError: 501
    for a modifier1 other than 0 and 431 for a datasize over
    ``limits.max_packet``, both as soon as the header bytes show it; 400 for
    malformed vars, 431 for more than ``limits.max_vars`` of them.
    """
    header = _check_header(buf, limits)
    if header is None:
        return None
    modifier1, datasize, modifier2 = header
    end = HEADER_SIZE + datasize
    if len(buf) < end:
        return None
    data = bytes(buf[HEADER_SIZE:end])
    request = UwsgiRequest(modifier1, modifier2, _parse_vars(data, limits))
    if not request.method:
        raise _bad("no REQUEST_METHOD")
    _ = request.content_length  # a malformed CONTENT_LENGTH is 400 now
    return request, end


def _parse_vars(data: bytes, limits: UwsgiLimits) -> dict[str, str]:
    """Decode a packet's ``keysize key valsize value`` sequence."""
    result: dict[str, str] = {}
    count = 0  # vars read, repeated names included
    pos = 0
    end = len(data)
    while pos < end:
        if count >= limits.max_vars:
            raise HTTPError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many uwsgi vars"
            )
        if end - pos < 2:
            raise _bad("trailing bytes after the last uwsgi var")
        (size,) = _U16.unpack_from(data, pos)
        pos += 2
        if size == 0:
            raise _bad("empty uwsgi var name")
        if pos + size > end:
            raise _bad("uwsgi var name runs past the packet")
        raw_key = data[pos : pos + size]
        pos += size
        if not raw_key.isascii():
            raise _bad("uwsgi var name is not ASCII")
        key = raw_key.decode("ascii")
        shown = repr(key[:40])  # for the reason: a log line, not the whole key
        if end - pos < 2:
            raise _bad(f"uwsgi var {shown} has no value")
        (size,) = _U16.unpack_from(data, pos)
        pos += 2
        if pos + size > end:
            raise _bad(f"uwsgi var {shown} value runs past the packet")
        value = data[pos : pos + size].decode("latin-1")
        pos += size
        count += 1
        if key not in result:
            result[key] = value
        elif key.startswith("HTTP_"):
            result[key] += "," + value  # a repeated header line
        else:
            raise _bad(f"duplicate uwsgi var {shown}")
    return result


def encode_packet(
    vars: Union[Mapping[str, str], Iterable[tuple[str, str]]],
    modifier1: int = 0,
    modifier2: int = 0,
) -> bytes:
    """One uwsgi packet carrying `vars`: the client side, for forwarding requests.

    Names must be non-empty ASCII and unique but for ``HTTP_*`` ones (repeated
    header lines, as nginx sends them), values latin-1 encodable (PEP 3333
    strings).  Raises ValueError for anything parse_packet would refuse
    or the format cannot carry: a name or value over 65535 bytes, a packet
    whose vars exceed 65535 bytes, a modifier outside 0-255.
    """
    if not (0 <= modifier1 <= 255 and 0 <= modifier2 <= 255):
        raise ValueError("uwsgi modifiers are 0-255")
    pairs = vars.items() if isinstance(vars, Mapping) else vars
    parts: list[bytes] = []
    seen: set[str] = set()
    for key, value in pairs:
        if not key or not key.isascii():
            raise ValueError(f"uwsgi var name {key!r} is empty or not ASCII")
        if key in seen and not key.startswith("HTTP_"):
            raise ValueError(f"duplicate uwsgi var {key!r}")
        seen.add(key)
        raw_key = key.encode("ascii")
        try:
            raw_value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"uwsgi var {key!r} is not latin-1 text") from None
        if len(raw_key) > MAX_DATASIZE or len(raw_value) > MAX_DATASIZE:
            raise ValueError(f"uwsgi var {key!r} is over 65535 bytes")
        parts += (
            _U16.pack(len(raw_key)),
            raw_key,
            _U16.pack(len(raw_value)),
            raw_value,
        )
    data = b"".join(parts)
    if len(data) > MAX_DATASIZE:
        raise ValueError(f"uwsgi vars take {len(data)} bytes, over 65535")
    return _HEADER.pack(modifier1, len(data), modifier2) + data
