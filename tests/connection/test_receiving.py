"""Receiving: recv, its queue and back-pressure, timeouts, initial bytes.

The read side is a libev watcher callback: messages are read and queued
whether or not the application is in ``recv``.
"""

from __future__ import annotations

import gevent
import pytest

from geows.exceptions import ConnectionClosedOK
from geows.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_frame,
)
from geows.limits import Limits

MASK = b"\x01\x02\x03\x04"


def frame(opcode, payload=b"", fin=True):
    """A masked client frame."""
    if isinstance(payload, str):
        payload = payload.encode()
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


@pytest.mark.timeout(10)
def test_recv_returns_str_for_text_and_bytes_for_binary(connect):
    conn = connect()
    conn.peer.send_frame(OP_TEXT, "héllo")
    conn.peer.send_frame(OP_BINARY, b"\x00\xffbin")
    conn.peer.send_frame(OP_TEXT, "")
    conn.peer.send_frame(OP_BINARY, b"")

    first = conn.ws.recv()
    second = conn.ws.recv()
    assert (type(first), first) == (str, "héllo")
    assert (type(second), second) == (bytes, b"\x00\xffbin")
    assert conn.ws.recv() == ""
    assert conn.ws.recv() == b""
    assert conn.ws.messages_in == 4


@pytest.mark.timeout(10)
def test_messages_that_arrive_before_recv_is_called_are_queued(connect):
    conn = connect()
    for i in range(5):
        conn.peer.send_frame(OP_TEXT, f"early {i}")
    gevent.sleep(0.05)  # let the hub read them while nobody is in recv
    assert conn.ws.messages_in == 5

    assert [conn.ws.recv() for _ in range(5)] == [f"early {i}" for i in range(5)]


@pytest.mark.timeout(10)
def test_reading_pauses_at_max_queued_messages_and_nothing_accepted_is_lost(
    connect,
):
    conn = connect(limits=Limits(max_queued_messages=2))
    count = 200
    payloads = [bytes([i % 256]) * 65536 + i.to_bytes(4, "big") for i in range(count)]
    data = b"".join(frame(OP_BINARY, p) for p in payloads)
    sender = gevent.spawn(conn.peer.send_raw, data)

    gevent.sleep(0.2)
    # The app has not called recv: the server stopped reading, so TCP pushes
    # back on the peer, which cannot write everything.
    assert not sender.ready()
    assert conn.ws.messages_in < count

    received = [conn.ws.recv(timeout=5) for _ in range(count)]
    assert sender.get(timeout=5) is None
    assert len(received) == count
    assert received == payloads
    assert conn.ws.messages_in == count


@pytest.mark.timeout(10)
def test_recv_with_a_timeout_raises_timeout_and_the_connection_stays_usable(
    connect,
):
    conn = connect()
    with pytest.raises(gevent.Timeout):
        conn.ws.recv(timeout=0.05)
    assert not conn.ws.closed

    conn.peer.send_frame(OP_TEXT, "after the timeout")
    assert conn.ws.recv(timeout=5) == "after the timeout"
    with pytest.raises(gevent.Timeout):
        conn.ws.recv(timeout=0.05)
    conn.ws.send("still open")
    assert conn.peer.read_frame() == (OP_TEXT, b"still open")


@pytest.mark.timeout(10)
def test_recv_nowait_returns_none_when_nothing_is_queued_and_the_message_when_one_is(
    connect,
):
    conn = connect()
    assert conn.ws.recv_nowait() is None

    conn.peer.send_frame(OP_TEXT, "queued")
    conn.peer.send_frame(OP_BINARY, b"too")
    gevent.sleep(0.05)
    first = conn.ws.recv_nowait()
    second = conn.ws.recv_nowait()
    assert (first.text, first.data) == ("queued", b"queued")
    assert (second.text, second.data) == (None, b"too")
    assert conn.ws.recv_nowait() is None


@pytest.mark.timeout(10)
def test_a_second_greenlet_calling_recv_at_the_same_time_gets_runtime_error(
    connect,
):
    conn = connect()
    first = gevent.spawn(conn.ws.recv)
    gevent.sleep(0)  # first is now waiting in recv
    with pytest.raises(RuntimeError):
        conn.ws.recv()

    conn.peer.send_frame(OP_TEXT, "for the first")
    assert first.get(timeout=5) == "for the first"
    # Once the first is done, recv is free again.
    conn.peer.send_frame(OP_TEXT, "for anyone")
    assert conn.ws.recv(timeout=5) == "for anyone"


@pytest.mark.timeout(10)
def test_initial_bytes_are_delivered_before_anything_read_from_the_socket(
    connect,
):
    third = frame(OP_BINARY, b"third, split between initial and the socket")
    initial = (
        frame(OP_TEXT, "first")
        + frame(OP_PING, b"early ping")
        + frame(OP_BINARY, b"second")
        + third[:7]
    )
    conn = connect(initial=initial)
    conn.peer.send_raw(third[7:])
    conn.peer.send_frame(OP_TEXT, "fourth")

    assert conn.ws.recv(timeout=5) == "first"
    assert conn.ws.recv(timeout=5) == b"second"
    assert conn.ws.recv(timeout=5) == b"third, split between initial and the socket"
    assert conn.ws.recv(timeout=5) == "fourth"
    # The ping among the initial bytes was answered too.
    assert conn.peer.read_frame() == (OP_PONG, b"early ping")


@pytest.mark.timeout(10)
def test_fragmented_messages_on_two_connections_interleaved_in_time_never_mix(
    connect,
):
    # Both connections share the hub's read buffer: whatever one keeps of a
    # read (incomplete frames, fragments) must be a copy, never a view.
    conns = {
        "a": connect(limits=Limits(max_queued_messages=1000)),
        "b": connect(limits=Limits(max_queued_messages=1000)),
    }
    expected: dict[str, list[object]] = {"a": [], "b": []}
    pieces: dict[str, list[bytes]] = {"a": [], "b": []}
    for name in conns:
        upper = name.upper().encode()
        for r in range(20):
            if r % 2:
                # Text with a 2-byte UTF-8 character cut between fragments.
                encoded = f"{name}{r}:é".encode() + upper * 3000
                cut = encoded.index("é".encode()) + 1
                parts = [encoded[:cut], encoded[cut:]]
                expected[name].append(encoded.decode())
                opcode = OP_TEXT
            else:
                parts = [upper * (100 + r), name.encode() * 5000, upper * (r + 1)]
                expected[name].append(b"".join(parts))
                opcode = OP_BINARY
            for i, part in enumerate(parts):
                raw = frame(
                    opcode if i == 0 else OP_CONT, part, fin=i == len(parts) - 1
                )
                # Each frame in two pieces: an incomplete frame stays behind.
                half = len(raw) // 2
                pieces[name] += [raw[:half], raw[half:]]

    # Alternate the two byte streams in time, each in its own order, so the
    # server reads them in separate callbacks through the same buffer.
    for piece_a, piece_b in zip(pieces["a"], pieces["b"]):
        conns["a"].peer.send_raw(piece_a)
        conns["b"].peer.send_raw(piece_b)
        gevent.sleep(0.001)

    for name, conn in conns.items():
        got = [conn.ws.recv(timeout=5) for _ in expected[name]]
        assert got == expected[name], name
        assert conn.ws.recv_nowait() is None


@pytest.mark.timeout(10)
def test_initial_bytes_over_max_queued_messages_pause_reading_and_lose_nothing(
    connect,
):
    initial = b"".join(frame(OP_TEXT, f"initial {i}") for i in range(5))
    conn = connect(limits=Limits(max_queued_messages=2), initial=initial)
    conn.peer.send_frame(OP_TEXT, "from the socket")
    expected = [f"initial {i}" for i in range(5)] + ["from the socket"]
    assert [conn.ws.recv(timeout=5) for _ in expected] == expected


@pytest.mark.timeout(10)
def test_a_close_frame_among_the_initial_bytes_ends_the_connection_at_once(
    connect,
):
    initial = frame(OP_TEXT, "last words") + frame(OP_CLOSE, b"\x03\xe8")
    conn = connect(initial=initial)
    assert conn.finished == [conn.ws]
    assert conn.peer.read_until_eof() == [(OP_CLOSE, b"\x03\xe8")]
    assert conn.ws.recv() == "last words"
    with pytest.raises(ConnectionClosedOK) as info:
        conn.ws.recv()
    assert info.value.code == 1000
    assert len(conn.registry) == 0
