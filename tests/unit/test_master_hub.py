"""The master's channel hub: its frame codec, and hub + clients in one process.

The codec is sans-I/O: every stream is fed split at every byte. The hub
(:class:`HubServer`, a plain selectors loop) runs in a thread on a Unix
socket; the clients (:class:`MasterHubClient`) run under gevent in the test's
thread, without monkey patching, with stand-in members that record what is
delivered to them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import gevent
import pytest

from geows.channels import ChannelError
from geows.channels.master import (
    MAX_NAME,
    MESSAGE,
    PUBLISH,
    SUBSCRIBE,
    TO_HUB,
    TO_WORKER,
    UNSUBSCRIBE,
    Decoder,
    Frame,
    HubProtocolError,
    HubServer,
    MasterHubClient,
    encode_frame,
)
from geows.frames import OP_BINARY, OP_TEXT, frame_header

pytestmark = pytest.mark.timeout(30)

FRAMES = [
    Frame(SUBSCRIBE, "room"),
    Frame(PUBLISH, "room", OP_TEXT, "héllo".encode()),
    Frame(MESSAGE, "ünïcode ☃", OP_BINARY, bytes(range(256)) * 3),
    Frame(PUBLISH, "", OP_BINARY, b""),
    Frame(UNSUBSCRIBE, "room"),
    Frame(MESSAGE, "x" * MAX_NAME, OP_TEXT, b"at the name limit"),
]


def stream(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(*frame) for frame in frames)


# -- codec ---------------------------------------------------------------------


def test_each_frame_round_trips():
    for frame in FRAMES:
        assert Decoder().feed(encode_frame(*frame)) == [frame]


def test_a_stream_split_at_every_byte_decodes_the_same():
    data = stream(FRAMES)
    for cut in range(len(data) + 1):
        decoder = Decoder()
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert got == FRAMES, cut
        assert decoder.buffered == 0


def test_a_stream_fed_one_byte_at_a_time_decodes_the_same():
    data = stream(FRAMES)
    decoder = Decoder()
    got: list[Frame] = []
    for i in range(len(data)):
        got += decoder.feed(data[i : i + 1])
    assert got == FRAMES


def test_an_incomplete_frame_waits_for_the_rest():
    data = encode_frame(PUBLISH, "room", OP_TEXT, b"payload")
    decoder = Decoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [Frame(PUBLISH, "room", OP_TEXT, b"payload")]


def head(length: int, op: int, opcode: int, name_len: int) -> bytes:
    return length.to_bytes(4, "big") + bytes([op, opcode]) + name_len.to_bytes(2, "big")


@pytest.mark.parametrize(
    ("data", "accept", "message"),
    [
        (head(4, 9, 0, 0), TO_HUB, "unknown op 0x9"),
        (head(4, 0, 0, 0), TO_HUB, "unknown op 0x0"),
        (encode_frame(MESSAGE, "r", OP_TEXT, b"m"), TO_HUB, "unexpected MESSAGE"),
        (encode_frame(PUBLISH, "r", OP_TEXT, b"m"), TO_WORKER, "unexpected PUBLISH"),
        (head(5, PUBLISH, 0, 1) + b"r", TO_HUB, "PUBLISH with opcode 0x0"),
        (head(5, PUBLISH, 9, 1) + b"r", TO_HUB, "PUBLISH with opcode 0x9"),
        (head(6, SUBSCRIBE, 0, 1) + b"r!", TO_HUB, "SUBSCRIBE with an opcode"),
        (head(5, SUBSCRIBE, 1, 1) + b"r", TO_HUB, "SUBSCRIBE with an opcode"),
        (head(3, SUBSCRIBE, 0, 0), TO_HUB, "shorter than its head"),
        (head(6, SUBSCRIBE, 0, 3) + b"ab", TO_HUB, "shorter than its head"),
        (head(4 + 2000, SUBSCRIBE, 0, 2000), TO_HUB, "channel name of 2000"),
        (head(6, SUBSCRIBE, 0, 2) + b"\xff\xfe", TO_HUB, "not valid UTF-8"),
    ],
)
def test_bad_input_raises_a_clear_error(data: bytes, accept: frozenset, message: str):
    with pytest.raises(HubProtocolError, match=message):
        Decoder(accept).feed(data)
    # The same error whatever the split (as soon as the bytes show it).
    decoder = Decoder(accept)

    def byte_by_byte() -> None:
        for i in range(len(data)):
            decoder.feed(data[i : i + 1])

    with pytest.raises(HubProtocolError, match=message):
        byte_by_byte()


def test_a_payload_over_the_limit_is_refused_from_the_head_alone():
    decoder = Decoder(max_payload=100)
    data = head(4 + 1 + 101, PUBLISH, OP_BINARY, 1)
    with pytest.raises(HubProtocolError, match="payload of 101 bytes"):
        decoder.feed(data)  # no need to wait for the body
    assert Decoder(max_payload=101).feed(data) == []


def test_a_failed_decoder_refuses_more_input():
    decoder = Decoder()
    with pytest.raises(HubProtocolError):
        decoder.feed(head(4, 99, 0, 0))
    with pytest.raises(HubProtocolError, match="failed earlier"):
        decoder.feed(encode_frame(SUBSCRIBE, "room"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((SUBSCRIBE, "x" * (MAX_NAME + 1)), "channel name of"),
        ((SUBSCRIBE, "\udcff"), "not valid UTF-8"),
        ((SUBSCRIBE, "r", OP_TEXT), "with an opcode"),
        ((UNSUBSCRIBE, "r", 0, b"x"), "with an opcode or a payload"),
        ((PUBLISH, "r", 0, b"x"), "opcode 0x0"),
        ((7, "r"), "unknown op"),
    ],
)
def test_encoding_an_invalid_frame_raises(args: tuple, message: str):
    with pytest.raises(HubProtocolError, match=message):
        encode_frame(*args)


def test_encoding_a_payload_over_the_limit_raises():
    with pytest.raises(HubProtocolError, match="payload of 11 bytes"):
        encode_frame(PUBLISH, "r", OP_TEXT, b"x" * 11, max_payload=10)


# -- hub and clients -------------------------------------------------------------


class Member:
    """Stands in for a WebSocket: records the frames delivered to it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(bytes(frame))


def text(payload: bytes) -> bytes:
    return frame_header(OP_TEXT, len(payload)) + payload


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.005)


class RunningHub:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.server: HubServer
        self.thread: threading.Thread
        self.start()

    def start(self) -> None:
        self.server = HubServer(self.listener)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    running = RunningHub(tmp_path / "hub.sock")
    yield running
    running.stop()
    running.listener.close()


@pytest.fixture
def clients(hub: RunningHub) -> Iterator[list[MasterHubClient]]:
    started = [MasterHubClient(hub.path) for _ in range(2)]
    for client in started:
        client.start()
        assert client.connected
    yield started
    for client in started:
        client.close()


def test_a_publish_reaches_every_worker_subscribed_including_its_own(
    hub: RunningHub, clients: list[MasterHubClient]
):
    a, b = clients
    on_a, on_b, elsewhere = Member(), Member(), Member()
    a.join("room", on_a)  # type: ignore[arg-type]
    b.join("room", on_b)  # type: ignore[arg-type]
    b.join("other", elsewhere)  # type: ignore[arg-type]
    wait_until(lambda: len(hub.server.channels.get("room", ())) == 2)
    a.publish("room", "hello")
    wait_until(lambda: on_a.frames and on_b.frames)
    assert on_a.frames == on_b.frames == [text(b"hello")]
    b.publish("room", b"\x00\x01")
    wait_until(lambda: len(on_a.frames) == 2 and len(on_b.frames) == 2)
    assert on_a.frames[1] == frame_header(OP_BINARY, 2) + b"\x00\x01"
    assert elsewhere.frames == []


def test_each_publishers_order_is_kept(hub: RunningHub, clients: list[MasterHubClient]):
    a, b = clients
    on_b = Member()
    b.join("room", on_b)  # type: ignore[arg-type]
    wait_until(lambda: "room" in hub.server.channels)
    sent = [str(i).encode() * (1 + i % 300) for i in range(2000)]
    for payload in sent:
        a.publish("room", payload, binary=False)
    wait_until(lambda: len(on_b.frames) == len(sent))
    assert on_b.frames == [text(p) for p in sent]


def test_the_last_member_leaving_unsubscribes(
    hub: RunningHub, clients: list[MasterHubClient]
):
    a, b = clients
    first, second = Member(), Member()
    b.join("room", first)  # type: ignore[arg-type]
    b.join("room", second)  # type: ignore[arg-type]
    wait_until(lambda: "room" in hub.server.channels)
    b.leave("room", first)  # type: ignore[arg-type]
    a.publish("room", "still here")
    wait_until(lambda: second.frames == [text(b"still here")])
    b.leave("room", second)  # type: ignore[arg-type]
    wait_until(lambda: "room" not in hub.server.channels)
    a.publish("room", "nobody")
    assert first.frames == []


def test_publishing_without_a_hub_raises_channel_error(tmp_path: Path):
    client = MasterHubClient(str(tmp_path / "nothing.sock"))
    client.start()
    try:
        assert not client.connected
        with pytest.raises(ChannelError, match="not connected"):
            client.publish("room", "lost?")
    finally:
        client.close()


def test_a_publish_too_large_for_the_hub_raises_channel_error(
    clients: list[MasterHubClient],
):
    client = clients[0]
    client.max_payload = 10
    with pytest.raises(ChannelError, match="payload of 11 bytes"):
        client.publish("room", b"x" * 11)


def test_clients_reconnect_and_subscribe_again_when_the_hub_restarts(
    hub: RunningHub, clients: list[MasterHubClient]
):
    a, b = clients
    on_b = Member()
    b.join("room", on_b)  # type: ignore[arg-type]
    wait_until(lambda: "room" in hub.server.channels)
    hub.stop()  # drops both connections; the listener stays, as in the master
    wait_until(lambda: not hub.server.peers)
    hub.start()
    # Publishes fail while a client is down; once back, they go through.
    wait_until(lambda: "room" in hub.server.channels and len(hub.server.peers) == 2)
    a.publish("room", "after the restart")
    wait_until(lambda: on_b.frames == [text(b"after the restart")])


def test_the_hub_drops_a_worker_that_sends_garbage(
    hub: RunningHub, clients: list[MasterHubClient]
):
    wait_until(lambda: len(hub.server.peers) == 2)
    rogue = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rogue.connect(hub.path)
    rogue.settimeout(5)
    wait_until(lambda: len(hub.server.peers) == 3)
    rogue.sendall(head(4, 42, 0, 0))
    assert rogue.recv(10) == b""  # closed by the hub
    rogue.close()
    wait_until(lambda: len(hub.server.peers) == 2)
