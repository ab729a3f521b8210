"""The application reads the socket itself: uWSGI's select-then-recv_nb pattern.

After :meth:`~geows.connection.WebSocket.app_reads` the background reader
stops, the descriptor turns readable when the peer sends, and
:meth:`~geows.connection.WebSocket.recv_nowait` reads what the socket has.
"""

from __future__ import annotations

import gevent
import gevent.select
import pytest

from geows.exceptions import ConnectionClosedError, ConnectionClosedOK
from geows.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, parse_close
from geows.limits import Timeouts

KEEPALIVE = Timeouts(ping_interval=0.1, pong_tolerance=0.2, close_timeout=0.3)


def readable(fd: int, timeout: float = 5.0) -> bool:
    """Whether ``fd`` turns readable within ``timeout`` (gevent's select)."""
    return gevent.select.select([fd], [], [], timeout)[0] == [fd]


@pytest.mark.timeout(10)
def test_the_descriptor_turns_readable_when_the_peer_sends_and_recv_nowait_reads_it(
    connect,
):
    conn = connect()
    fd = conn.ws.app_reads()
    assert fd == conn.ws.fileno()
    assert conn.ws.recv_nowait() is None

    waiting = gevent.spawn(readable, fd)
    gevent.sleep(0.05)
    assert not waiting.ready()
    conn.peer.send_frame(OP_TEXT, "select me")
    assert waiting.get(timeout=5)
    message = conn.ws.recv_nowait()
    assert (message.text, message.data) == ("select me", b"select me")
    assert conn.ws.recv_nowait() is None


@pytest.mark.timeout(10)
def test_pings_are_answered_when_the_app_reads(connect):
    conn = connect()
    fd = conn.ws.app_reads()
    conn.peer.send_frame(OP_PING, b"ping 1")
    conn.peer.send_frame(OP_BINARY, b"data")
    assert readable(fd)
    message = conn.ws.recv_nowait()
    assert message.data == b"data"
    assert conn.peer.read_frame() == (OP_PONG, b"ping 1")


@pytest.mark.timeout(10)
def test_blocking_recv_still_works_after_app_reads(connect):
    conn = connect()
    conn.ws.app_reads()
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    conn.peer.send_frame(OP_TEXT, "blocking")
    assert receiving.get(timeout=5) == "blocking"
    with pytest.raises(gevent.Timeout):
        conn.ws.recv(timeout=0.05)
    conn.peer.send_frame(OP_TEXT, "again")
    assert conn.ws.recv(timeout=5) == "again"


@pytest.mark.timeout(10)
def test_a_select_wakes_when_the_connection_ends_under_it(connect):
    conn = connect()
    fd = conn.ws.app_reads()
    waiting = gevent.spawn(readable, fd)
    gevent.sleep(0.05)
    conn.peer.close()
    assert waiting.get(timeout=5)
    with pytest.raises(ConnectionClosedError) as info:
        conn.ws.recv_nowait()  # reads the EOF
    assert info.value.code == 1006
    assert conn.finished == [conn.ws]


@pytest.mark.timeout(10)
def test_a_select_wakes_when_the_keepalive_fails_a_silent_peer(connect):
    conn = connect(timeouts=KEEPALIVE)
    fd = conn.ws.app_reads()
    assert readable(fd)
    assert conn.ws.closed
    assert str(conn.ws.error) == "no pong"
    with pytest.raises(ConnectionClosedError):
        conn.ws.recv_nowait()


@pytest.mark.timeout(10)
def test_a_pong_the_app_has_not_read_yet_counts_as_life(connect):
    conn = connect(timeouts=KEEPALIVE)
    conn.ws.app_reads()
    pongs = 0

    def answering_peer() -> None:
        nonlocal pongs
        while True:
            got = conn.peer.read_frame(timeout=30)
            if got is None:
                return
            if got[0] == OP_PING:
                conn.peer.send_frame(OP_PONG, got[1])
                pongs += 1

    peer = gevent.spawn(answering_peer)
    # The app does not read for many pong tolerances: the pongs wait in the
    # socket, unread, and the peer is alive all the same.
    gevent.sleep(1.0)
    assert pongs >= 3
    assert not conn.ws.closed, repr(conn.ws.error)
    peer.kill()
    conn.peer.send_frame(OP_TEXT, "still here")
    assert conn.ws.recv(timeout=5) == "still here"


@pytest.mark.timeout(10)
def test_close_hands_reading_back_to_the_background(connect):
    conn = connect(timeouts=Timeouts(ping_interval=None, close_timeout=5.0))
    conn.ws.app_reads()
    closing = gevent.spawn(conn.ws.close, 1000, "done")
    opcode, payload = conn.peer.read_frame()
    assert (opcode, parse_close(payload)) == (OP_CLOSE, (1000, "done"))
    # Nobody calls recv: the server must read the answer itself.
    conn.peer.send_close(1000)
    assert conn.peer.read_frame(timeout=3) is None
    assert closing.get(timeout=3) is None
    assert conn.ws.close_code == 1000


@pytest.mark.timeout(10)
def test_close_from_another_greenlet_while_the_app_waits_in_recv_reads_the_answer(
    connect,
):
    conn = connect(timeouts=Timeouts(ping_interval=None, close_timeout=1.0))
    conn.ws.app_reads()
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    closing = gevent.spawn(conn.ws.close, 1000, "bye")
    opcode, payload = conn.peer.read_frame()
    assert (opcode, parse_close(payload)) == (OP_CLOSE, (1000, "bye"))
    # The peer was sending when our close arrived: a message in flight...
    conn.peer.send_frame(OP_TEXT, "in flight")
    gevent.sleep(0.05)
    # ...then its answer.
    conn.peer.send_close(1000)
    closing.get(timeout=5)
    assert conn.ws.close_code == 1000
    with pytest.raises(ConnectionClosedOK):
        receiving.get(timeout=5)


@pytest.mark.timeout(10)
def test_after_a_protocol_error_the_server_drains_the_peer_though_the_app_read_itself(
    connect,
):
    conn = connect(timeouts=Timeouts(ping_interval=None, close_timeout=1.0))
    conn.ws.app_reads()
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    conn.peer.send_frame(OP_TEXT, "unmasked", mask=None)
    with pytest.raises(ConnectionClosedError) as info:
        receiving.get(timeout=5)
    assert info.value.code == 1002
    assert conn.peer.read_until_eof() == [(OP_CLOSE, b"\x03\xea")]
    # The peer still had plenty to send: the server reads and drops it (the
    # peer's send completes), then sees the peer's EOF.
    conn.peer.send_raw(b"z" * (4 * 1024 * 1024))
    conn.peer.close()
    conn.ws.wait_closed(timeout=5)
    assert conn.finished == [conn.ws]


@pytest.mark.timeout(10)
def test_a_recv_already_waiting_when_the_app_takes_over_reading_still_gets_messages(
    connect,
):
    conn = connect()
    receiving = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)
    fd = conn.ws.app_reads()  # e.g. uwsgi.connection_fd() from another greenlet
    assert fd == conn.ws.fileno()
    conn.peer.send_frame(OP_TEXT, "for the waiting recv")
    assert receiving.get(timeout=1) == "for the waiting recv"
