"""WebSockets over TLS: geows.tls.TLSTransport under a real WebSocket.

The pair of sockets is a ``socketpair`` with a TLS handshake on it (trustme
certificates); the WebSocket gets a :class:`~geows.tls.TLSTransport` as an
HTTPS listener gives it after an upgrade, and the peer speaks frames
through its own SSL socket. What differs from a plain socket is tested
here: retried SSL writes, bytes decrypted but unread, shutdown and peek on
the TCP socket underneath, and the handshake's deadline.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import gevent
import gevent.socket
import pytest
from gevent import get_hub
from gevent import ssl as gevent_ssl

from geows import tls
from geows.connection import WebSocket
from geows.exceptions import ConnectionClosedError
from geows.frames import OP_BINARY, OP_CLOSE, OP_TEXT, serialize_close
from geows.keepalive import Registry
from geows.limits import Limits
from geows.listeners import Listener
from tests.certs import Certs, make_certs
from tests.connection.conftest import QUIET, Peer

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def server_context(certs: Certs) -> ssl.SSLContext:
    listener = Listener("https", ("127.0.0.1", 0), certs.cert_file, certs.key_file)
    return tls.server_context(listener)


def client_context(certs: Certs) -> ssl.SSLContext:
    context = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    certs.ca.configure_trust(context)
    return context


def tls_pair(
    certs: Certs,
    server_context: ssl.SSLContext,
    *,
    server_sndbuf: Optional[int] = None,
    peer_rcvbuf: Optional[int] = None,
) -> tuple[Any, Any]:
    """(server SSL socket, client SSL socket), handshake done."""
    server_sock, client_sock = gevent.socket.socketpair()
    if server_sndbuf is not None:
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server_sndbuf)
    if peer_rcvbuf is not None:
        client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
    client = client_context(certs).wrap_socket(
        client_sock, server_hostname="localhost", do_handshake_on_connect=False
    )
    handshaking = gevent.spawn(client.do_handshake)
    server = tls.accept(server_sock, server_context, 5.0)
    handshaking.get(timeout=5)
    return server, client


class Pair:
    def __init__(self, ws: WebSocket, peer: Peer, transport: tls.TLSTransport):
        self.ws = ws
        self.peer = peer
        self.transport = transport


@pytest.fixture
def connect(certs: Certs, server_context: ssl.SSLContext) -> Iterator[Any]:
    """Factory: a WebSocket on the server end of a TLS socket pair."""
    made: list[tuple[Pair, Registry]] = []

    def make(limits: Optional[Limits] = None, **buffers: int) -> Pair:
        server, client = tls_pair(certs, server_context, **buffers)
        registry = Registry(QUIET)
        transport = tls.TLSTransport(server)
        ws = WebSocket(
            server,
            environ={"REMOTE_ADDR": "tls-test"},
            limits=limits or Limits(),
            timeouts=QUIET,
            registry=registry,
            transport=transport,
        )
        pair = Pair(ws, Peer(client), transport)
        made.append((pair, registry))
        return pair

    yield make
    for pair, registry in made:
        pair.ws.abort()
        registry.stop()
        pair.peer.close()


# -- messages through TLS ------------------------------------------------------


def test_many_small_messages_round_trip_in_order(connect):
    pair = connect()
    count = 2000

    def send_all() -> None:
        for i in range(count):
            pair.peer.send_frame(OP_TEXT, f"message {i}")

    def read_all() -> list[Any]:
        return [pair.peer.read_message() for _ in range(count)]

    sending, reading = gevent.spawn(send_all), gevent.spawn(read_all)
    for i in range(count):
        assert pair.ws.recv(timeout=5) == f"message {i}"
        pair.ws.send(f"answer {i}")
    sending.get(timeout=5)
    assert reading.get(timeout=5) == [
        (OP_TEXT, f"answer {i}".encode()) for i in range(count)
    ]


def test_a_big_message_to_a_slow_reader_retries_ssl_writes_with_the_same_bytes(
    connect,
):
    # Small buffers: the 4 MiB frame meets SSLWantWrite many times, mid
    # record. A retry with other bytes would be OpenSSL's "bad write retry"
    # (the connection would fail); a lost or repeated piece, a bad digest.
    pair = connect(server_sndbuf=16384, peer_rcvbuf=16384)
    data = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    pair.ws.send(data)
    assert pair.ws._pending > 0, "the socket took it all: nothing was retried"
    # Queued behind it (once the buffer drains): sendmsg sends the head alone.
    after = gevent.spawn(pair.ws.send, "after")
    opcode, payload = pair.peer.read_message(timeout=15)
    assert opcode == OP_BINARY
    assert hashlib.sha256(payload).digest() == hashlib.sha256(data).digest()
    assert pair.peer.read_message() == (OP_TEXT, b"after")
    after.get(timeout=5)


def test_a_big_message_from_the_peer_arrives_whole(connect):
    pair = connect(limits=Limits(max_message_size=None))
    data = bytes(range(251)) * 20000  # about 4.8 MiB, some 300 TLS records
    sender = gevent.spawn(pair.peer.send_frame, OP_BINARY, data)
    assert pair.ws.recv(timeout=15) == data
    sender.get(timeout=5)


def test_a_protocol_error_half_closes_tcp_and_still_drains_through_tls(connect):
    pair = connect()
    pair.peer.send_frame(OP_TEXT, "unmasked", mask=None)
    assert pair.peer.read_frame() == (OP_CLOSE, serialize_close(1002, ""))
    # The SSL socket still reads (the drain) after the TCP half-close: what
    # a peer sends when it sees our close frame reaches us...
    pair.peer.send_frame(OP_TEXT, "drained")
    gevent.sleep(0.05)
    assert not pair.ws._finished
    pair.peer.send_close(1000)
    # ...and then the peer sees the end of the stream (no close_notify: an
    # EOF that ssl's suppress_ragged_eofs, the default, reads as b"").
    assert pair.peer.read_until_eof() == []
    pair.peer.close()
    pair.ws.wait_closed(timeout=5)
    with pytest.raises(ConnectionClosedError) as info:
        pair.ws.recv()
    assert info.value.code == 1002


def test_a_close_from_the_peer_is_answered_and_tcp_closed(connect):
    pair = connect()
    pair.peer.send_close(1000, "bye")
    assert pair.peer.read_until_eof() == [(OP_CLOSE, serialize_close(1000, ""))]
    pair.ws.wait_closed(timeout=5)
    assert pair.ws.close_code == 1000


# -- the transport alone ---------------------------------------------------------


def test_recv_into_and_peek_say_would_block_like_a_socket(certs, server_context):
    server, client = tls_pair(certs, server_context)
    try:
        transport = tls.TLSTransport(server)
        buffer = memoryview(bytearray(1024))
        peek = socket.MSG_PEEK | socket.MSG_DONTWAIT
        with pytest.raises(BlockingIOError):
            transport.recv_into(buffer)
        with pytest.raises(BlockingIOError):
            transport.recv(1, peek)
        client.sendall(b"hello")
        gevent.sleep(0.01)
        assert transport.recv(1, peek)  # the record, still in the kernel
        assert transport.recv_into(buffer) == 5
        assert bytes(buffer[:5]) == b"hello"
    finally:
        server.close()
        client.close()


def test_peek_counts_bytes_decrypted_but_not_read(certs, server_context):
    server, client = tls_pair(certs, server_context)
    try:
        transport = tls.TLSTransport(server)
        client.sendall(b"x" * 1000)
        small = memoryview(bytearray(10))
        with gevent.Timeout(5):
            while True:
                try:
                    assert transport.recv_into(small) == 10
                    break
                except BlockingIOError:
                    gevent.sleep(0.01)
        # The record left the kernel whole: only the SSL object has the rest.
        assert server.pending() == 990
        assert transport.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    finally:
        server.close()
        client.close()


def test_the_read_watcher_fires_while_decrypted_bytes_wait(certs, server_context):
    # A reader with a buffer smaller than a TLS record: after the first
    # read the descriptor is quiet, the rest waits in the SSL object.
    server, client = tls_pair(certs, server_context)
    try:
        transport = tls.TLSTransport(server)
        watcher = transport.read_watcher(get_hub().loop)
        small = memoryview(bytearray(1000))
        received = bytearray()
        done = gevent.event.Event()

        def on_readable() -> None:
            try:
                n = transport.recv_into(small)
            except BlockingIOError:
                return
            received.extend(small[:n])
            if len(received) >= 12000:
                watcher.stop()
                done.set()

        watcher.start(on_readable)
        client.sendall(b"y" * 12000)  # one record
        assert done.wait(timeout=5), f"stalled after {len(received)} bytes"
        assert bytes(received) == b"y" * 12000
    finally:
        watcher.stop()
        server.close()
        client.close()


def test_a_started_read_watcher_reads_what_is_already_decrypted(certs, server_context):
    server, client = tls_pair(certs, server_context)
    try:
        transport = tls.TLSTransport(server)
        client.sendall(b"z" * 500)
        small = memoryview(bytearray(100))
        with gevent.Timeout(5):
            while True:
                try:
                    transport.recv_into(small)
                    break
                except BlockingIOError:
                    gevent.sleep(0.01)
        assert server.pending() == 400
        watcher = transport.read_watcher(get_hub().loop)
        calls = []

        def on_readable() -> None:
            calls.append(transport.recv_into(small))
            watcher.stop()

        watcher.start(on_readable)  # the descriptor is quiet
        gevent.sleep(0.05)
        assert calls == [100]
    finally:
        server.close()
        client.close()


def test_send_writes_whole_pieces_and_says_how_much(certs, server_context):
    server, client = tls_pair(certs, server_context)
    try:
        transport = tls.TLSTransport(server)
        data = memoryview(bytes(range(256)) * 16384)  # 4 MiB, more than fits
        sent = transport.send(data)
        assert 0 < sent < len(data)
        assert sent % tls.WRITE_PIECE == 0
        received = bytearray()

        def read_all() -> None:
            while len(received) < len(data):
                received.extend(client.recv(65536))

        reading = gevent.spawn(read_all)
        with gevent.Timeout(10):
            while sent < len(data):
                try:
                    sent += transport.send(data[sent:])
                except BlockingIOError:
                    gevent.sleep(0.001)
        reading.get(timeout=10)
        assert bytes(received) == bytes(data)
    finally:
        server.close()
        client.close()


def test_shutdown_ends_the_peers_reading_but_not_ours(certs, server_context):
    server, client = tls_pair(certs, server_context)
    try:
        transport = tls.TLSTransport(server)
        transport.shutdown(socket.SHUT_WR)
        client.sendall(b"still heard")
        buffer = memoryview(bytearray(100))
        with gevent.Timeout(5):
            while True:
                try:
                    n = transport.recv_into(buffer)
                    break
                except BlockingIOError:
                    gevent.sleep(0.01)
        assert bytes(buffer[:n]) == b"still heard"
        with gevent.Timeout(5):
            assert client.recv(100) == b""
    finally:
        server.close()
        client.close()


# -- the handshake -----------------------------------------------------------------


def test_a_handshake_that_never_starts_times_out(server_context):
    server_sock, client_sock = gevent.socket.socketpair()
    try:
        with pytest.raises(tls.HandshakeError, match="no TLS handshake within"):
            tls.accept(server_sock, server_context, 0.2)
        assert client_sock.recv(10) == b""  # closed
    finally:
        client_sock.close()


def test_a_handshake_that_trickles_times_out_all_the_same(server_context):
    # A ClientHello one byte at a time: each byte would reset a per-read
    # timeout; the deadline is for the whole handshake.
    server_sock, client_sock = gevent.socket.socketpair()

    def trickle() -> None:
        for byte in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 10:
            client_sock.sendall(bytes([byte]))
            gevent.sleep(0.05)

    trickling = gevent.spawn(trickle)
    try:
        with pytest.raises(tls.HandshakeError, match="no TLS handshake within"):
            tls.accept(server_sock, server_context, 0.3)
    finally:
        trickling.kill()
        client_sock.close()


def test_plain_http_fails_the_handshake(server_context):
    server_sock, client_sock = gevent.socket.socketpair()
    try:
        client_sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(tls.HandshakeError, match="TLS handshake failed"):
            tls.accept(server_sock, server_context, 5.0)
    finally:
        client_sock.close()
