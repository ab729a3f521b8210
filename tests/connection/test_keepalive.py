"""Keepalive: pings answered at once, pings sent on schedule, dead peers failed.

One sweeper greenlet per :class:`geows.keepalive.Registry` runs every
connection's :meth:`~geows.connection.WebSocket.keepalive`.
"""

from __future__ import annotations

import time

import gevent
import gevent.event
import pytest

from geows.exceptions import ConnectionClosedError
from geows.frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_frame,
    parse_close,
)
from geows.limits import Limits, Timeouts

KEEPALIVE = Timeouts(ping_interval=0.1, pong_tolerance=0.2, close_timeout=0.3)


def masked(opcode: int, text: str) -> bytes:
    """A masked client frame."""
    return encode_frame(opcode, text.encode(), mask=b"\x01\x02\x03\x04")


def answer_pings(peer) -> int:
    """Play a healthy client: read everything, answer every ping; until EOF."""
    pings = 0
    try:
        while True:
            got = peer.read_frame(timeout=30)
            if got is None:
                return pings
            if got[0] == OP_PING:
                pings += 1
                peer.send_frame(OP_PONG, got[1])
    except OSError:
        return pings


@pytest.mark.timeout(10)
def test_a_peer_ping_is_answered_while_the_app_is_busy_elsewhere(connect):
    conn = connect()
    busy = gevent.event.Event()

    def app() -> object:
        busy.wait()  # doing something else entirely: not in recv
        return conn.ws.recv(timeout=5)

    running = gevent.spawn(app)
    gevent.sleep(0)
    conn.peer.send_frame(OP_PING, b"are you there?")
    assert conn.peer.read_frame() == (OP_PONG, b"are you there?")
    conn.peer.send_frame(OP_PING, b"")
    assert conn.peer.read_frame() == (OP_PONG, b"")
    assert not running.ready()

    busy.set()
    conn.peer.send_frame(OP_TEXT, "now the app reads")
    assert running.get(timeout=5) == "now the app reads"


@pytest.mark.timeout(10)
def test_keepalive_sends_pings_and_gratuitous_pongs(connect):
    conn = connect(timeouts=KEEPALIVE)
    seen = []
    while seen.count(OP_PING) < 3:
        got = conn.peer.read_frame()
        assert got is not None
        opcode, payload = got
        assert payload == b""
        seen.append(opcode)
        if opcode == OP_PING:
            conn.peer.send_frame(OP_PONG, payload)
    assert OP_PONG in seen
    assert set(seen) == {OP_PING, OP_PONG}
    assert not conn.ws.closed


@pytest.mark.timeout(10)
def test_a_peer_that_answers_stays_open_for_many_ping_intervals(connect):
    conn = connect(timeouts=KEEPALIVE)
    pings = 0

    def answering_peer() -> None:
        nonlocal pings
        while True:
            got = conn.peer.read_frame()
            if got is None:
                return
            if got[0] == OP_PING:
                pings += 1
                # Any frame is a sign of life; alternate pongs and data.
                if pings % 2:
                    conn.peer.send_frame(OP_PONG, got[1])
                else:
                    conn.peer.send_frame(OP_TEXT, f"alive {pings}")

    peer = gevent.spawn(answering_peer)
    gevent.sleep(1.0)
    assert pings >= 3
    assert not conn.ws.closed
    assert conn.ws.close_code is None
    assert conn.finished == []
    assert conn.ws.recv(timeout=5) == "alive 2"
    conn.ws.send("you are fine")
    peer.kill()
    assert conn.peer.read_message() == (OP_TEXT, b"you are fine")


@pytest.mark.timeout(10)
def test_a_silent_peer_is_sent_close_1011_and_disconnected(connect):
    conn = connect(timeouts=KEEPALIVE)
    receiving = gevent.spawn(conn.ws.recv)

    # The peer reads (so the close frame can go out) but never answers.
    frames = conn.peer.read_until_eof()
    opcodes = [opcode for opcode, _ in frames]
    assert opcodes[-1] == OP_CLOSE
    assert set(opcodes[:-1]) == {OP_PING, OP_PONG}
    assert parse_close(frames[-1][1]) == (1011, "")

    with pytest.raises(ConnectionClosedError) as info:
        receiving.get(timeout=5)
    # No close frame came back: RFC 6455 7.1.5 calls that 1006, and that is
    # what geows reports; why it died is the exception's cause.
    assert info.value.code == 1006
    assert isinstance(info.value.__cause__, ConnectionError)
    assert str(info.value.__cause__) == "no pong"
    assert conn.ws.close_code == 1006
    assert conn.ws.closed
    assert conn.finished == [conn.ws]
    assert len(conn.registry) == 0


@pytest.mark.timeout(10)
def test_a_paused_connection_is_not_failed_for_pongs_it_did_not_read(connect):
    conn = connect(limits=Limits(max_queued_messages=2), timeouts=KEEPALIVE)
    # One write, so one read queues all three and reading pauses.
    conn.peer.send_raw(b"".join(masked(OP_TEXT, f"m{i}") for i in range(3)))
    answering = gevent.spawn(answer_pings, conn.peer)
    # The app does not read: reading is paused, the peer's pongs wait in the
    # socket, and the keepalive must not hold that against the peer.
    gevent.sleep(0.6)
    assert not conn.ws.closed, repr(conn.ws.error)
    assert conn.finished == []
    assert [conn.ws.recv(timeout=5) for _ in range(3)] == ["m0", "m1", "m2"]
    answering.kill()


@pytest.mark.timeout(10)
def test_a_peer_is_not_failed_for_a_pong_still_unread_when_reading_resumes(
    connect,
):
    # Regression: after a pause longer than pong_tolerance, a sweeper tick due
    # when the loop next ran came before the read callback (libev runs timers
    # first) and failed the peer although its pong was waiting in the socket.
    conn = connect(limits=Limits(max_queued_messages=2), timeouts=KEEPALIVE)
    conn.peer.send_raw(b"".join(masked(OP_TEXT, f"m{i}") for i in range(3)))
    answering = gevent.spawn(answer_pings, conn.peer)
    gevent.sleep(0.6)  # paused for more than ping_interval + pong_tolerance
    assert not conn.ws.closed
    assert conn.ws.recv(timeout=5) == "m0"
    assert conn.ws.recv(timeout=5) == "m1"  # reading resumes here
    time.sleep(0.05)  # the app computes a while without yielding (2 ticks)
    assert conn.ws.recv(timeout=5) == "m2"
    gevent.sleep(0.3)
    try:
        assert not conn.ws.closed, repr(conn.ws.error)
    finally:
        answering.kill()
