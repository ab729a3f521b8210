"""Closing: the handshake from either side, failures, aborts and the end.

RFC 6455 7.1.1: the server closes the TCP connection first. After failing
the connection (7.1.7) it half-closes, so that unread input cannot turn its
close into a reset, and closes once the peer did or ``close_timeout`` passed.
"""

from __future__ import annotations

import gevent
import gevent.socket
import pytest

from geows.connection import WebSocket
from geows.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from geows.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    encode_frame,
    parse_close,
)
from geows.keepalive import Registry
from geows.limits import Limits, Timeouts

SHORT = Timeouts(ping_interval=None, pong_tolerance=0.2, close_timeout=0.3)
LONG = Timeouts(ping_interval=None, pong_tolerance=0.2, close_timeout=5.0)


def frame(opcode, payload=b"", fin=True, mask=b"\x01\x02\x03\x04"):
    """A client frame, masked unless ``mask=None``."""
    return encode_frame(opcode, payload, fin=fin, mask=mask)


def keep_sending(peer) -> None:
    """Write until the socket says the other end is gone (or 100 KiB went)."""
    for _ in range(100):
        peer.send_raw(b"x" * 1024)
        gevent.sleep(0.001)


def close_frame(code, reason=""):
    """What a server close frame must be, as ``Peer.read_frame`` returns it."""
    return OP_CLOSE, code.to_bytes(2, "big") + reason.encode()


@pytest.mark.timeout(10)
def test_a_peer_close_is_answered_and_the_server_closes_tcp_first(connect):
    conn = connect(timeouts=LONG)
    conn.peer.send_frame(OP_TEXT, "one")
    conn.peer.send_frame(OP_BINARY, b"two")
    conn.peer.send_close(1000, "done")

    # The peer's socket is still open: the EOF is the server's doing.
    assert conn.peer.read_until_eof() == [close_frame(1000)]
    conn.ws.wait_closed(timeout=5)
    assert conn.finished == [conn.ws]

    # Messages received before the close come first, then the close.
    assert conn.ws.recv() == "one"
    assert conn.ws.recv() == b"two"
    with pytest.raises(ConnectionClosedOK) as info:
        conn.ws.recv()
    assert (info.value.code, info.value.reason) == (1000, "done")
    assert (conn.ws.close_code, conn.ws.close_reason) == (1000, "done")
    with pytest.raises(ConnectionClosedOK):
        conn.ws.recv()
    assert list(conn.ws) == []


@pytest.mark.timeout(10)
def test_a_pending_recv_raises_connection_closed_ok_when_the_peer_closes(connect):
    conn = connect()
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    conn.peer.send_close(1001, "going away")
    assert conn.peer.read_until_eof() == [close_frame(1001)]
    with pytest.raises(ConnectionClosedOK) as info:
        receiving.get(timeout=5)
    assert (info.value.code, info.value.reason) == (1001, "going away")


@pytest.mark.timeout(10)
def test_an_empty_peer_close_is_answered_with_an_empty_close(connect):
    conn = connect()
    conn.peer.send_close(None)
    assert conn.peer.read_until_eof() == [(OP_CLOSE, b"")]
    with pytest.raises(ConnectionClosedOK) as info:
        conn.ws.recv(timeout=5)
    assert info.value.code == 1005
    assert conn.ws.close_code == 1005


@pytest.mark.timeout(10)
def test_server_close_sends_its_code_and_closes_tcp_when_the_peer_answers(connect):
    conn = connect(timeouts=LONG)
    closing = gevent.spawn(conn.ws.close, 4000, "bye")

    opcode, payload = conn.peer.read_frame()
    assert (opcode, parse_close(payload)) == (OP_CLOSE, (4000, "bye"))
    assert conn.ws.closed
    with pytest.raises(ConnectionClosed):
        conn.ws.send("too late")
    conn.peer.send_close(4000)
    # Well before close_timeout (5 s): the answer ended it.
    assert conn.peer.read_frame(timeout=3) is None
    assert closing.get(timeout=3) is None
    assert conn.ws.close_code == 4000
    assert conn.finished == [conn.ws]


@pytest.mark.timeout(10)
def test_server_close_closes_tcp_after_close_timeout_when_the_peer_never_answers(
    connect,
):
    conn = connect(timeouts=SHORT)
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    closing = gevent.spawn(conn.ws.close, 4000, "bye")

    frames = conn.peer.read_until_eof()
    assert closing.get(timeout=5) is None
    assert len(frames) == 1
    assert parse_close(frames[0][1]) == (4000, "bye")
    # No close frame came back: 1006 (RFC 6455 7.1.5).
    assert conn.ws.close_code == 1006
    with pytest.raises(ConnectionClosedError) as info:
        receiving.get(timeout=5)
    assert info.value.code == 1006
    assert conn.finished == [conn.ws]
    # Closing again is a no-op that returns at once.
    conn.ws.close()


@pytest.mark.timeout(10)
def test_a_protocol_error_sends_close_1002_then_half_closes_until_the_peer_closes(
    connect,
):
    conn = connect(timeouts=LONG)
    conn.peer.send_frame(OP_TEXT, "before the error")
    conn.peer.send_frame(OP_TEXT, "unmasked", mask=None)

    # What came before the bad frame is still delivered, then the failure.
    assert conn.ws.recv(timeout=5) == "before the error"
    receiving = gevent.spawn(conn.ws.recv)
    # The close frame, then EOF: the server shut down its sending side...
    assert conn.peer.read_until_eof() == [close_frame(1002)]
    with pytest.raises(ConnectionClosedError) as info:
        receiving.get(timeout=5)
    assert info.value.code == 1002
    assert conn.ws.close_code == 1002
    # ...but still reads, so whatever the peer still sends is drained.
    assert conn.finished == []
    conn.peer.send_frame(OP_TEXT, "ignored")
    conn.peer.send_close(1000)
    conn.peer.close()
    conn.ws.wait_closed(timeout=3)  # well before close_timeout (5 s)
    assert conn.finished == [conn.ws]
    with pytest.raises(ConnectionClosedError) as info:
        conn.ws.recv()
    assert info.value.code == 1002


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("limits", "bad_frame", "code"),
    [
        pytest.param(Limits(), frame(OP_TEXT, b"x", mask=None), 1002, id="unmasked"),
        pytest.param(
            Limits(), frame(OP_TEXT, b"caf\xc3\x28"), 1007, id="invalid-utf-8"
        ),
        pytest.param(
            Limits(max_message_size=1000),
            frame(OP_BINARY, b"x" * 1001),
            1009,
            id="too-big",
        ),
        pytest.param(
            Limits(), frame(0x3, b"reserved opcode"), 1002, id="reserved-opcode"
        ),
    ],
)
def test_a_failed_connection_sends_its_close_code_and_recv_raises_it(
    connect, limits, bad_frame, code
):
    conn = connect(limits=limits)
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    conn.peer.send_raw(bad_frame)
    with pytest.raises(ConnectionClosedError) as info:
        receiving.get(timeout=5)
    assert info.value.code == code
    assert conn.peer.read_until_eof() == [close_frame(code)]
    conn.peer.close()
    conn.ws.wait_closed(timeout=5)
    assert conn.ws.close_code == code
    assert conn.finished == [conn.ws]


@pytest.mark.timeout(10)
def test_after_a_protocol_error_the_socket_is_closed_after_close_timeout(connect):
    conn = connect(timeouts=SHORT)
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    conn.peer.send_frame(OP_BINARY, b"unmasked", mask=None)

    with pytest.raises(ConnectionClosedError) as info:
        receiving.get(timeout=5)
    assert info.value.code == 1002
    assert conn.peer.read_until_eof() == [close_frame(1002)]
    # The peer keeps its end open; the server gives up after close_timeout.
    conn.ws.wait_closed(timeout=5)
    assert conn.finished == [conn.ws]
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        keep_sending(conn.peer)


@pytest.mark.timeout(10)
def test_a_peer_that_drops_tcp_without_a_close_frame_is_1006(connect):
    conn = connect()
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    conn.peer.close()
    with pytest.raises(ConnectionClosedError) as info:
        receiving.get(timeout=5)
    assert info.value.code == 1006
    assert conn.ws.close_code == 1006
    assert conn.finished == [conn.ws]
    with pytest.raises(ConnectionClosedError):
        conn.ws.send("nobody there")


@pytest.mark.timeout(10)
def test_abort_sends_close_1011_then_closes_tcp(connect):
    conn = connect(timeouts=LONG)
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    conn.ws.abort()
    # No waiting for the peer, not even close_timeout.
    assert conn.finished == [conn.ws]
    assert conn.peer.read_until_eof() == [close_frame(1011)]
    with pytest.raises(ConnectionClosedError) as info:
        receiving.get(timeout=5)
    # Aborting does not wait for a close frame: 1006 (RFC 6455 7.1.5).
    assert info.value.code == 1006
    assert conn.ws.close_code == 1006
    conn.ws.abort()
    assert conn.finished == [conn.ws]


@pytest.mark.timeout(10)
def test_on_finish_is_called_exactly_once_however_many_ways_it_ends(connect):
    conn = connect()
    conn.peer.send_close(1000)
    assert conn.peer.read_until_eof() == [close_frame(1000)]
    conn.ws.wait_closed(timeout=5)
    conn.ws.close()
    conn.ws.abort()
    conn.peer.close()
    gevent.sleep(0.05)
    assert conn.finished == [conn.ws]
    assert len(conn.registry) == 0


@pytest.mark.timeout(10)
def test_the_registry_drops_each_websocket_once_it_finished():
    registry = Registry(SHORT)
    pairs = [gevent.socket.socketpair() for _ in range(3)]
    finished = []
    sockets = [
        WebSocket(
            server,
            environ={"REMOTE_ADDR": "test"},
            timeouts=SHORT,
            registry=registry,
            on_finish=finished.append,
        )
        for server, _ in pairs
    ]
    try:
        assert len(registry) == 3
        assert set(registry) == set(sockets)

        pairs[1][1].close()  # the peer of the second one drops
        sockets[1].wait_closed(timeout=5)
        assert set(registry) == {sockets[0], sockets[2]}

        sockets[0].abort()
        assert set(registry) == {sockets[2]}
        assert finished == [sockets[1], sockets[0]]
    finally:
        for ws in sockets:
            ws.abort()
        registry.stop()
        for _server, client in pairs:
            client.close()
    assert len(registry) == 0
    assert finished == [sockets[1], sockets[0], sockets[2]]


@pytest.mark.timeout(10)
def test_messages_the_peer_sends_after_server_close_are_dropped_not_queued(
    connect,
):
    conn = connect(timeouts=LONG)
    conn.peer.send_frame(OP_TEXT, "read before close: dropped by close()")
    gevent.sleep(0.05)
    closing = gevent.spawn(conn.ws.close, 1000)
    opcode, payload = conn.peer.read_frame()
    assert (opcode, parse_close(payload)) == (OP_CLOSE, (1000, ""))
    # A peer that floods instead of answering: memory must stay bounded by
    # max_queued_messages (16) although reading goes on to find the close.
    for i in range(500):
        conn.peer.send_frame(OP_BINARY, bytes([i % 256]) * 4096)
    conn.peer.send_close(1000)
    assert conn.peer.read_frame() is None
    closing.get(timeout=5)
    assert conn.ws.messages_in == 501
    with pytest.raises(ConnectionClosedOK):
        conn.ws.recv()


@pytest.mark.timeout(10)
def test_recv_timeout_holds_while_the_peer_keeps_the_closing_connection_busy(
    connect,
):
    # Regression: each wake-up that brought no message (a ping, a message
    # dropped while closing) used to start the deadline over.
    conn = connect(timeouts=Timeouts(ping_interval=None, close_timeout=1.5))
    closing = gevent.spawn(conn.ws.close, 4000)
    assert conn.peer.read_frame()[0] == OP_CLOSE

    def chatter() -> None:
        while True:
            conn.peer.send_frame(OP_PING, b"still here")
            gevent.sleep(0.05)

    chatting = gevent.spawn(chatter)
    try:
        # The connection is still closing (close_timeout 1.5 s) when 0.2 s
        # have passed: that must be a Timeout, not the end of the connection.
        with pytest.raises(gevent.Timeout):
            conn.ws.recv(timeout=0.2)
    finally:
        chatting.kill()
        closing.kill()


@pytest.mark.timeout(10)
def test_an_app_waiting_in_recv_answers_the_messages_before_a_bad_frame_first(
    connect,
):
    conn = connect()
    answered = []

    def echo_app() -> None:
        for message in conn.ws:
            conn.ws.send(f"answer to {message}")
            answered.append(message)

    app = gevent.spawn(echo_app)
    gevent.sleep(0)
    # Good messages and a bad frame in one read.
    conn.peer.send_raw(
        frame(OP_TEXT, b"q1") + frame(OP_TEXT, b"q2") + frame(OP_TEXT, b"x", mask=None)
    )
    assert conn.peer.read_until_eof() == [
        (OP_TEXT, b"answer to q1"),
        (OP_TEXT, b"answer to q2"),
        close_frame(1002),
    ]
    with pytest.raises(ConnectionClosedError) as info:
        app.get(timeout=5)
    assert info.value.code == 1002
    assert answered == ["q1", "q2"]


@pytest.mark.timeout(10)
def test_close_after_a_deferred_protocol_error_sends_the_errors_code(connect):
    conn = connect(timeouts=LONG)
    closed_by_app = []

    def app() -> None:
        message = conn.ws.recv()
        # Answering is still possible; then the app closes with its own code.
        conn.ws.send(f"answer to {message}")
        conn.ws.close(4000, "app code")
        closed_by_app.append(conn.ws.close_code)

    running = gevent.spawn(app)
    gevent.sleep(0)
    conn.peer.send_raw(frame(OP_TEXT, b"q") + frame(OP_TEXT, b"x", mask=None))
    frames = conn.peer.read_until_eof()
    assert frames == [(OP_TEXT, b"answer to q"), close_frame(1002)]
    conn.peer.close()
    running.get(timeout=5)
    assert closed_by_app == [1002]
    assert conn.finished == [conn.ws]
