"""Stream: the raw socket with cooperative waits that the HTTP loop reads and
writes through, and the Server's own accept loop that hands it out.
"""

from __future__ import annotations

import gc
import socket

import gevent
import gevent.socket
import pytest

from geows.listeners import Listener
from geows.server import Server
from geows.stream import Stream
from geows.wsgi import Settings


def _pair() -> tuple[Stream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return Stream(ours), theirs


def test_recv_waits_for_data_without_blocking_other_greenlets() -> None:
    stream, peer = _pair()
    with peer:
        later = gevent.spawn_later(0.05, peer.sendall, b"hello")
        stream.settimeout(5)
        assert stream.recv(100) == b"hello"
        later.join()
        stream.close()


def test_recv_raises_socket_timeout_when_nothing_comes() -> None:
    stream, peer = _pair()
    with peer:
        stream.settimeout(0.05)
        with pytest.raises(socket.timeout):
            stream.recv(100)
        stream.close()


def test_sendall_waits_while_the_peer_reads_slowly_and_loses_nothing() -> None:
    stream, peer = _pair()
    data = bytes(range(256)) * 8192  # 2 MiB: far over the socket buffers
    received = bytearray()
    peer_g = gevent.socket.socket(fileno=peer.detach())

    def read_all() -> None:
        while len(received) < len(data):
            chunk = peer_g.recv(65536)
            if not chunk:
                return
            received.extend(chunk)
            gevent.sleep(0)

    reader = gevent.spawn(read_all)
    stream.settimeout(10)
    stream.sendall(data)
    reader.join(timeout=10)
    assert bytes(received) == data
    stream.close()
    peer_g.close()


def test_a_finished_connection_is_freed_without_the_cyclic_gc() -> None:
    """environ and wsgi.input point back at the connection; the loop drops
    those references at the end, so reference counting alone frees it."""

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = Server(Settings(app=app, access_log=False), [Listener.http("127.0.0.1:0")])
    server.start()
    port = server.listeners[0].address[1]  # type: ignore[index]
    gc.collect()
    gc.disable()
    try:
        client = gevent.socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            chunk = client.recv(4096)
            if not chunk:
                break
            reply += chunk
        client.close()
        assert reply.endswith(b"ok")
        gevent.sleep(0.05)  # the connection's greenlet ends
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage]
        assert "HTTPConnection" not in cyclic
        assert "Input" not in cyclic
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        server.stop(timeout=1)


def test_the_server_accepts_many_waiting_clients_and_stops_cleanly() -> None:
    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Length", "1")])
        return [b"!"]

    server = Server(Settings(app=app, access_log=False), [Listener.http("127.0.0.1:0")])
    server.start()
    port = server.listeners[0].address[1]  # type: ignore[index]

    def one() -> bytes:
        sock = gevent.socket.create_connection(("127.0.0.1", port))
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := sock.recv(4096):
                out += chunk
            return out

    jobs = [gevent.spawn(one) for _ in range(200)]
    gevent.joinall(jobs, timeout=20)
    assert all(job.value and job.value.endswith(b"!") for job in jobs)
    server.stop(timeout=1)
    assert not server.connections
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
