"""``wsgi.input``: a request body read from the client as the app asks for it.

By Content-Length or chunked (decoded with :class:`geows.http.ChunkedDecoder`),
answering ``Expect: 100-continue`` on the first read, and skipping what the
app left unread so the connection can serve its next request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from geows.http import ChunkedDecoder, HTTPError, Request

if TYPE_CHECKING:
    from geows.wsgi import HTTPConnection

__all__ = ["Closed", "Input"]

#: Bytes asked of the socket per read.
_RECV = 65536
#: Unread request body we drain to keep a connection alive; more and we close.
_MAX_DRAIN = 64 * 1024


class Closed(Exception):
    """The client went away mid-request; end the connection quietly."""


class Input:
    """``wsgi.input``: the request body, by Content-Length or chunked."""

    __slots__ = (
        "_conn",
        "_continue",
        "_decoder",
        "_done",
        "_kind",
        "_left",
        "_pending",
    )

    def __init__(self, conn: HTTPConnection, request: Request) -> None:
        self._conn = conn
        self._kind = request.body_kind
        self._left = request.content_length or 0
        self._decoder: Optional[ChunkedDecoder] = None
        self._pending = bytearray()
        self._done = self._kind == "none" or (self._kind == "length" and not self._left)
        self._continue = (
            not self._done
            and request.version == "HTTP/1.1"
            and request.has_token("expect", "100-continue")
        )
        if self._kind == "chunked":
            self._decoder = ChunkedDecoder(
                conn.settings.http_limits, conn.settings.max_body
            )

    def _recv(self) -> bytes:
        conn = self._conn
        if conn.buf:
            data = bytes(conn.buf)
            conn.buf.clear()
            return data
        if self._continue:
            self._continue = False
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.sock.settimeout(conn.settings.body_timeout)
        data = conn.sock.recv(_RECV)
        if not data:
            raise Closed()
        return data

    def _fill(self) -> bool:
        """Read more of the body into ``_pending``; False at its end."""
        if self._done:
            return False
        data = self._recv()
        if self._decoder is None:
            if len(data) > self._left:
                self._conn.buf[:0] = data[self._left :]  # the next request
                data = data[: self._left]
            self._left -= len(data)
            self._pending += data
            self._done = not self._left
            return True
        decoder = self._decoder
        try:
            for piece in decoder.feed(data):
                self._pending += piece
        except HTTPError:
            self._conn._keep_alive = False
            raise
        if decoder.done:
            self._done = True
            if decoder.unused:
                self._conn.buf[:0] = decoder.unused
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        """Read at most ``size`` bytes (all when negative or None)."""
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._pending)
            self._pending.clear()
            return data
        while len(self._pending) < size and self._fill():
            pass
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    def readline(self, size: Optional[int] = -1) -> bytes:
        """Read one line (with its newline), at most ``size`` bytes."""
        limit = size if size is not None and size >= 0 else None
        while True:
            nl = self._pending.find(b"\n")
            if nl >= 0:
                end = nl + 1
                break
            if limit is not None and len(self._pending) >= limit:
                end = limit
                break
            if not self._fill():
                end = len(self._pending)
                break
        if limit is not None:
            end = min(end, limit)
        data = bytes(self._pending[:end])
        del self._pending[:end]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        """All remaining lines."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Input:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def finish(self) -> bool:
        """Skip an unread body so the next request can be read; False if we
        would rather close the connection than read that much.
        """
        if self._done:
            return True
        if self._continue:
            return False  # the client waits for 100; it will not send a body
        skipped = 0
        try:
            while self._fill():
                skipped += len(self._pending)
                self._pending.clear()
                if skipped > _MAX_DRAIN:
                    return False
        except (OSError, HTTPError, Closed):
            return False
        return True
