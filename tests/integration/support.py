"""Support for the integration tests: server fixtures and byte-level clients.

The real client libraries hide exactly what some tests need to see or to
break: frame opcodes, masking, fragmentation, half-sent request heads.
:class:`RawWebSocket` and :func:`read_response` work on a plain socket.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from tests.servers import ServerProcess, running

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def serve(app: str, *args: str) -> Iterator[ServerProcess]:
    """Body of a server fixture: run, yield, then stop it and check it exited 0."""
    with running(app, *args) as server:
        yield server
        status = server.stop()
    assert status == 0, f"server exited with {status}:\n{server.log}"


def assert_no_traceback(server: ServerProcess) -> None:
    """Fail, showing the log, if the server logged a traceback."""
    assert "Traceback" not in server.log, server.log


def open_socket(port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the test server on 127.0.0.1."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """Buffered reads from a socket: lines, exact sizes, everything to EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, marker: bytes) -> bytes:
        """Bytes up to and including ``marker``; EOFError if it never comes."""
        while True:
            index = self.buf.find(marker)
            if index >= 0:
                end = index + len(marker)
                data = bytes(self.buf[:end])
                del self.buf[:end]
                return data
            if not self._more():
                raise EOFError(f"EOF before {marker!r}; got {bytes(self.buf)!r}")

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes; EOFError if the peer closes first."""
        while len(self.buf) < size:
            if not self._more():
                raise EOFError(f"EOF after {len(self.buf)} of {size} bytes")
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def read_to_eof(self) -> bytes:
        """Everything until the peer closes (ECONNRESET counts as the end)."""
        try:
            while self._more():
                pass
        except ConnectionResetError:
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def at_eof(self) -> bool:
        """True if nothing is buffered and the peer has closed."""
        if self.buf:
            return False
        try:
            return not self._more()
        except ConnectionResetError:
            return True


# -- HTTP ---------------------------------------------------------------------


@dataclass
class Response:
    """One parsed HTTP response."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def read_head(reader: Reader) -> Response:
    """Read a status line and headers (no body)."""
    head = reader.read_until(b"\r\n\r\n").decode("latin-1")
    lines = head.split("\r\n")
    version, status, *rest = lines[0].split(" ", 2)
    response = Response(version, int(status), rest[0] if rest else "")
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            response.headers.append((name, value.strip()))
    return response


def read_response(reader: Reader, method: str = "GET") -> Response:
    """Read one complete response, its body framed as the headers say."""
    response = read_head(reader)
    code = response.status
    if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
        return response
    te = (response.header("Transfer-Encoding") or "").lower()
    length = response.header("Content-Length")
    if "chunked" in te:
        response.chunked = True
        pieces = []
        while True:
            size_line = reader.read_until(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while reader.read_until(b"\r\n") != b"\r\n":
                    pass  # trailers
                break
            pieces.append(reader.read_exact(size))
            if reader.read_exact(2) != b"\r\n":
                raise AssertionError("chunk not followed by CRLF")
        response.body = b"".join(pieces)
    elif length is not None:
        response.body = reader.read_exact(int(length))
    else:
        response.body = reader.read_to_eof()
    return response


def request_bytes(
    method: str,
    target: str,
    headers: Optional[list[tuple[str, str]]] = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    """A request head (with Host) and body, as bytes."""
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def http_exchange(
    port: int,
    method: str,
    target: str,
    headers: Optional[list[tuple[str, str]]] = None,
    body: bytes = b"",
) -> Response:
    """One request on a new connection; the response."""
    with open_socket(port) as sock:
        sock.sendall(request_bytes(method, target, headers, body))
        return read_response(Reader(sock), method)


# -- WebSocket ----------------------------------------------------------------


def upgrade_headers(key: Optional[str] = None) -> list[tuple[str, str]]:
    """The headers of a valid upgrade request."""
    key = key or base64.b64encode(os.urandom(16)).decode("ascii")
    return [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
) -> bytes:
    """One client frame (masked unless ``mask`` is False)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame."""
    return struct.pack("!H", code) + reason.encode("utf-8")


@dataclass
class Frame:
    """A frame received from the server."""

    fin: bool
    opcode: int
    payload: bytes
    masked: bool = False

    @property
    def close_code(self) -> Optional[int]:
        """The code of a close frame (None when it has no payload)."""
        assert self.opcode == OP_CLOSE
        if len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])

    @property
    def close_reason(self) -> str:
        """The reason of a close frame."""
        return self.payload[2:].decode("utf-8")


class RawWebSocket:
    """A hand-rolled WebSocket client: handshake, then frames as bytes."""

    def __init__(
        self,
        port: int,
        path: str = "/",
        headers: Optional[list[tuple[str, str]]] = None,
        timeout: float = 10.0,
        early: bytes = b"",
        tls: Optional[ssl.SSLContext] = None,
    ) -> None:
        """Connect and upgrade; ``early`` bytes (frames) go out in the same
        write as the upgrade request, before the 101 is seen. With ``tls``,
        over TLS (wss://) with that client context.
        """
        self.sock = open_socket(port, timeout)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.reader = Reader(self.sock)
        request = request_bytes("GET", path, upgrade_headers() + list(headers or []))
        self.sock.sendall(request + early)
        self.handshake = read_head(self.reader)
        if self.handshake.status != 101:
            raise AssertionError(f"handshake refused: {self.handshake}")

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: bool) -> None:
        """Send one frame (see :func:`encode_frame` for the options)."""
        self.sock.sendall(encode_frame(opcode, payload, **kwargs))  # type: ignore[arg-type]

    def send_text(self, text: str) -> None:
        """Send a one-frame text message."""
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def recv_frame(self) -> Frame:
        """The next frame from the server; EOFError when the server closed."""
        first, second = self.reader.read_exact(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self.reader.read_exact(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self.reader.read_exact(8))
        masked = bool(second & 0x80)
        key = self.reader.read_exact(4) if masked else b""
        payload = self.reader.read_exact(size)
        if masked:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return Frame(bool(first & 0x80), first & 0x0F, payload, masked)

    def recv_data_frame(self, answer_pings: bool = True) -> Frame:
        """The next non-control frame (or a close frame), answering pings."""
        while True:
            frame = self.recv_frame()
            if frame.opcode == OP_PING and answer_pings:
                self.send_frame(OP_PONG, frame.payload)
            elif frame.opcode not in (OP_PING, OP_PONG):
                return frame

    def frames_until_eof(self) -> list[Frame]:
        """Every frame the server sends until it closes the TCP connection."""
        frames = []
        while True:
            try:
                frames.append(self.recv_frame())
            except (EOFError, ConnectionResetError):
                return frames

    def expect_close(self) -> Frame:
        """Read past data/control frames to the server's close frame."""
        while True:
            frame = self.recv_frame()
            if frame.opcode == OP_CLOSE:
                return frame

    def close(self) -> None:
        """Close the TCP connection (no closing handshake)."""
        self.sock.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
