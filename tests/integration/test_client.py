"""geows.client against a real ``geows serve`` on 127.0.0.1.

The server is examples/echo.py (uWSGI style: its /ws echoes every message as
text, and / answers 200 with a page). The last tests feed
:class:`~geows.client.ClientProtocol` bytes directly, for the framing cases
no echo server produces (fragments, masked server frames, split reads).
"""

from __future__ import annotations

import signal
import struct
from collections.abc import Iterator

import pytest

import geows
from geows.client import ClientProtocol, connect
from geows.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, apply_mask
from geows.protocol import Close, Message, State
from tests.servers import ServerProcess, running

ECHO = "examples/echo.py"
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def echo() -> Iterator[ServerProcess]:
    with running(ECHO) as server:
        yield server


def ws_url(server: ServerProcess, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def test_text_echo(echo: ServerProcess) -> None:
    with connect(ws_url(echo), subprotocols=["chat"]) as ws:
        assert ws.subprotocol is None  # the echo app chooses none
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"


def test_binary_message_goes_through(echo: ServerProcess) -> None:
    payload = "bytes → text".encode()
    with connect(ws_url(echo)) as ws:
        ws.send(payload)
        reply = ws.recv(timeout=5)
    # The uWSGI-style echo answers every message with a text frame.
    assert reply == payload.decode("utf-8")


def test_hundred_messages_in_a_row(echo: ServerProcess) -> None:
    with connect(ws_url(echo)) as ws:
        for i in range(100):
            ws.send(f"message {i}")
            assert ws.recv(timeout=5) == f"message {i}"
        for i in range(100):  # pipelined: several frames per read
            ws.send(f"burst {i}")
        assert [ws.recv(timeout=5) for _ in range(100)] == [
            f"burst {i}" for i in range(100)
        ]


def test_one_mib_message(echo: ServerProcess) -> None:
    text = "0123456789abcdef" * (1 << 16)
    assert len(text) == 1 << 20
    with connect(ws_url(echo)) as ws:
        ws.send(text)
        assert ws.recv(timeout=20) == text


def test_close_handshake(echo: ServerProcess) -> None:
    ws = connect(ws_url(echo))
    ws.send("bye")
    ws.close()
    assert ws.closed
    assert ws.close_code == 1000
    with pytest.raises(geows.ConnectionClosedOK) as info:
        ws.recv(timeout=5)
    assert info.value.code == 1000
    with pytest.raises(geows.ConnectionClosed):
        ws.send("too late")
    ws.close()  # idempotent


def test_message_too_big_for_the_server() -> None:
    with running(ECHO, "--websockets-max-size", "1") as server:
        ws = connect(ws_url(server))
        ws.send("x" * 2048)
        with pytest.raises(geows.ConnectionClosedError) as info:
            ws.recv(timeout=10)
        assert info.value.code == 1009
        assert ws.close_code == 1009


def test_iteration_and_lost_server() -> None:
    with running(ECHO) as server:
        ws = connect(ws_url(server))
        for word in ("one", "two"):
            ws.send(word)
        received = []

        def read_all() -> None:
            for message in ws:
                received.append(message)
                if len(received) == 2:
                    server.proc.send_signal(signal.SIGKILL)

        with pytest.raises(geows.ConnectionClosedError) as info:
            read_all()
        assert received == ["one", "two"]
        assert info.value.code == 1006  # no close frame: abnormal closure
        assert ws.close_code == 1006
        server.proc.wait(10)


def test_pings_answered_while_waiting() -> None:
    args = ("--websockets-ping-freq", "0.2", "--websockets-pong-tolerance", "0.5")
    with running(ECHO, *args) as server, connect(ws_url(server)) as ws:
        # The server pings every 0.2 s and drops peers silent for 0.5 s.
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.5)
        assert not ws.closed
        ws.send("alive")
        assert ws.recv(timeout=5) == "alive"


def test_handshake_refused_with_status(echo: ServerProcess) -> None:
    with pytest.raises(geows.InvalidHandshake) as info:
        connect(ws_url(echo, "/"))
    assert info.value.status == 200


def test_not_a_ws_url() -> None:
    with pytest.raises(ValueError, match="ws://"):
        connect("http://127.0.0.1:1/")


# -- ClientProtocol, fed bytes ------------------------------------------------------


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked frame as a server sends it."""
    b0 = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        return struct.pack("!BB", b0, len(payload)) + payload
    return struct.pack("!BBH", b0, 126, len(payload)) + payload


def unmask(frame: bytes) -> tuple[int, bytes]:
    """Opcode and payload of a masked client frame (short or 16-bit length)."""
    assert frame[1] & 0x80, "client frames must be masked"
    length, pos = frame[1] & 0x7F, 2
    if length == 126:
        length, pos = struct.unpack("!H", frame[2:4])[0], 4
    key = frame[pos : pos + 4]
    return frame[0] & 0x0F, apply_mask(frame[pos + 4 : pos + 4 + length], key)


def test_protocol_masks_with_fresh_keys() -> None:
    proto = ClientProtocol()
    frames = [proto.send_text("same") for _ in range(8)]
    assert all(unmask(frame) == (OP_TEXT, b"same") for frame in frames)
    assert len({frame[2:6] for frame in frames}) > 1


def test_protocol_fragments_split_byte_by_byte() -> None:
    proto = ClientProtocol()
    data = (
        server_frame(OP_TEXT, "hé".encode(), fin=False)
        + server_frame(OP_PING, b"p")
        + server_frame(0x0, b"x" * 300)
    )
    events = []
    for i in range(len(data)):
        events += proto.receive_data(data[i : i + 1])
    assert isinstance(events[-1], Message)
    assert events[-1].text == "hé" + "x" * 300
    assert unmask(proto.data_to_send()) == (OP_PONG, b"p")


def test_protocol_answers_close_masked() -> None:
    proto = ClientProtocol()
    (event,) = proto.receive_data(server_frame(OP_CLOSE, struct.pack("!H", 1001)))
    assert isinstance(event, Close)
    assert event.code == 1001
    assert proto.state is State.CLOSED
    assert unmask(proto.data_to_send()) == (OP_CLOSE, struct.pack("!H", 1001))


def test_protocol_fails_on_masked_server_frame() -> None:
    proto = ClientProtocol()
    frame = bytearray(server_frame(OP_TEXT, b"abcd"))
    frame[1] |= 0x80
    frame[2:2] = b"\x01\x02\x03\x04"
    assert proto.receive_data(bytes(frame)) == []
    assert proto.failure is not None
    assert proto.close_code == 1002
    assert unmask(proto.data_to_send())[0] == OP_CLOSE
