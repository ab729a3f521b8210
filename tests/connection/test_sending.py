"""Sending: whole frames from any greenlet, the write buffer and its limit.

Writes try the socket at once; what it does not take waits in an ordered
list of chunks flushed by a write watcher, and a sender waits only past
``Limits.write_buffer_high``.
"""

from __future__ import annotations

import struct

import gevent
import pytest

from geows.exceptions import ConnectionClosed, ConnectionClosedError
from geows.frames import OP_BINARY, OP_PING, OP_PONG, OP_TEXT
from geows.limits import Limits, Timeouts

KEEPALIVE = Timeouts(ping_interval=0.1, pong_tolerance=0.2, close_timeout=0.3)
SIZES = [0, 1, 8, 125, 126, 127, 1000, 65535, 65536, 100 * 1024, 3000, 17]


def payload(sender: int, seq: int, size: int) -> bytes:
    """Identifies its sender and rank; the filler depends on both."""
    head = struct.pack("!HH", sender, seq)
    start = (sender * 7 + seq) % 251
    filler = bytes((start + i) % 251 for i in range(min(size, 251)))
    return (head + filler * (size // 251 + 1))[: max(size, 4)]


@pytest.mark.timeout(10)
def test_frames_sent_from_many_greenlets_at_once_never_interleave_and_keep_order(
    connect,
):
    conn = connect()
    greenlets, per_greenlet = 20, 50

    def sender(g: int) -> None:
        for seq in range(per_greenlet):
            data = payload(g, seq, SIZES[(g + seq) % len(SIZES)])
            if seq % 5 == 4:
                # Text too, as hex: any bytes survive as valid UTF-8.
                conn.ws.send_text(data.hex())
            else:
                conn.ws.send(data)
            if seq % 7 == 0:
                gevent.sleep(0)

    def reader() -> list[tuple[int, bytes]]:
        frames = []
        for _ in range(greenlets * per_greenlet):
            got = conn.peer.read_frame(timeout=8)
            assert got is not None, "EOF before every frame arrived"
            frames.append(got)
        return frames

    reading = gevent.spawn(reader)
    senders = [gevent.spawn(sender, g) for g in range(greenlets)]
    gevent.joinall(senders, timeout=8, raise_error=True)
    frames = reading.get(timeout=8)

    next_seq = [0] * greenlets
    for opcode, data in frames:
        if opcode == OP_TEXT:
            data = bytes.fromhex(data.decode())
        else:
            assert opcode == OP_BINARY
        g, seq = struct.unpack("!HH", data[:4])
        assert seq == next_seq[g], f"greenlet {g}: got {seq}, expected {next_seq[g]}"
        assert data == payload(g, seq, SIZES[(g + seq) % len(SIZES)])
        assert (opcode == OP_TEXT) == (seq % 5 == 4)
        next_seq[g] += 1
    assert next_seq == [per_greenlet] * greenlets
    assert conn.ws.messages_out == greenlets * per_greenlet


@pytest.mark.timeout(10)
def test_send_waits_only_past_write_buffer_high(connect):
    high = 64 * 1024
    conn = connect(limits=Limits(write_buffer_high=high), server_sndbuf=4096)
    conn.peer.shrink_rcvbuf(4096)
    message = b"m" * 1000
    accepted = 0

    def sender() -> None:
        nonlocal accepted
        while True:
            conn.ws.send(message)
            accepted += len(message)

    sending = gevent.spawn(sender)
    gevent.sleep(0.1)
    # The peer reads nothing: the sender is stuck, but only after the buffer
    # took more than write_buffer_high bytes the socket did not.
    assert not sending.ready()
    stuck_at = accepted
    assert stuck_at > high
    assert stuck_at < high + 1024 * 1024
    gevent.sleep(0.05)
    assert accepted == stuck_at

    # Once the peer reads, the sender goes on.
    for _ in range(100):
        assert conn.peer.read_frame() == (OP_BINARY, message)
    gevent.sleep(0.05)
    assert accepted > stuck_at
    sending.kill()


@pytest.mark.timeout(10)
def test_a_peer_that_stops_reading_is_failed_and_the_blocked_sender_is_released(
    connect,
):
    conn = connect(
        limits=Limits(write_buffer_high=64 * 1024),
        timeouts=KEEPALIVE,
        server_sndbuf=4096,
        peer_rcvbuf=4096,
    )
    message = b"s" * 8192
    accepted = 0

    def sender() -> None:
        nonlocal accepted
        while True:
            conn.ws.send(message)
            accepted += len(message)

    sending = gevent.spawn(sender)
    # The peer neither reads nor sends: no progress and no pong, so the
    # keepalive fails the connection; the sender must not wait forever.
    gevent.joinall([sending], timeout=5)
    assert sending.ready()
    exc = sending.exception
    assert isinstance(exc, ConnectionClosedError)
    assert exc.code == 1006
    assert accepted > 64 * 1024
    assert conn.ws.closed
    assert conn.ws.close_code == 1006
    assert isinstance(conn.ws.error, ConnectionError)
    assert conn.finished == [conn.ws]
    with pytest.raises(ConnectionClosed):
        conn.ws.send("after the end")

    # What the kernel had taken is still readable, then EOF: no close frame
    # could be queued behind the stuck data.
    frames = conn.peer.read_until_eof()
    assert conn.peer.eof
    assert all(f == (OP_BINARY, message) for f in frames)


@pytest.mark.timeout(10)
def test_a_peer_that_talks_but_never_reads_is_failed_for_the_stalled_send(connect):
    conn = connect(
        limits=Limits(write_buffer_high=16 * 1024),
        timeouts=KEEPALIVE,
        server_sndbuf=4096,
        peer_rcvbuf=4096,
    )
    heard = []

    def chatty_peer() -> None:
        # Plenty of signs of life, so "no pong" never applies; but no reads.
        try:
            while True:
                conn.peer.send_frame(OP_TEXT, "still talking")
                gevent.sleep(0.02)
        except OSError:
            return

    def app_reader() -> None:
        for message in conn.ws:
            heard.append(message)

    def app_sender() -> None:
        while True:
            conn.ws.send(b"x" * 4096)

    talking = gevent.spawn(chatty_peer)
    reading = gevent.spawn(app_reader)
    sending = gevent.spawn(app_sender)
    gevent.joinall([sending, reading], timeout=5)
    talking.kill()
    assert sending.ready()
    assert reading.ready()
    assert isinstance(sending.exception, ConnectionClosedError)
    assert isinstance(reading.exception, ConnectionClosedError)
    assert str(reading.exception.__cause__) == "send stalled"
    assert heard
    assert conn.finished == [conn.ws]


@pytest.mark.timeout(10)
def test_a_slow_but_reading_peer_that_answers_pings_is_not_failed(connect):
    # Regression: a ping skipped because the write buffer was over
    # write_buffer_high used to start the pong deadline all the same, so a
    # consumer on a slow link was failed with 1011 for a ping it never got.
    conn = connect(timeouts=KEEPALIVE, server_sndbuf=8192, peer_rcvbuf=8192)
    big = b"b" * (100 * 1024)  # one frame over write_buffer_high (64 KiB)
    pings = 0

    def sender() -> None:
        while True:
            conn.ws.send(big)

    def slow_reader() -> None:
        nonlocal pings
        while True:
            got = conn.peer.read_frame(timeout=5)
            if got is None:
                return
            if got[0] == OP_PING:
                pings += 1
                conn.peer.send_frame(OP_PONG, got[1])
            gevent.sleep(0.005)  # a slow link: progress, but slower than we send

    sending = gevent.spawn(sender)
    reading = gevent.spawn(slow_reader)
    gevent.sleep(1.0)
    try:
        assert not conn.ws.closed, f"failed: {conn.ws.error!r} after {pings} pings"
    finally:
        sending.kill()
        reading.kill()
