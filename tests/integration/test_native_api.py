"""The native API (``geows.accept`` -> ``geows.WebSocket``) over real sockets.

App: tests/apps/native.py. The main server limits messages to 1 KiB
(``--websockets-max-size 1``); keepalive tests use a second server that
pings every 0.2 s and gives up on a silent peer after 0.3 s.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.integration.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    assert_no_traceback,
    close_payload,
    encode_frame,
    serve,
)
from tests.servers import APPS, running

APP = str(APPS / "native.py")

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(scope="module")
def server():
    yield from serve(APP, "--websockets-max-size", "1")


@pytest.fixture(scope="module")
def keepalive_server():
    yield from serve(
        APP,
        "--websockets-ping-freq",
        "0.2",
        "--websockets-pong-tolerance",
        "0.3",
        "--websockets-close-timeout",
        "1",
    )


# -- messages ------------------------------------------------------------------


def test_str_stays_text_and_bytes_stay_binary(server):
    with connect(server.ws_url + "/echo", open_timeout=10) as ws:
        ws.send("h\u00e9llo \u2603")
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str)
        assert reply == "h\u00e9llo \u2603"
        ws.send(b"\x00\x01\xfe\xff")
        reply = ws.recv(timeout=10)
        assert isinstance(reply, bytes)
        assert reply == b"\x00\x01\xfe\xff"
        ws.send("")
        assert ws.recv(timeout=10) == ""
        ws.send(b"")
        assert ws.recv(timeout=10) == b""


def test_opcodes_on_the_wire(server):
    with RawWebSocket(server.port, "/echo") as raw:
        raw.send_frame(OP_TEXT, b"text")
        raw.send_frame(OP_BINARY, b"\xffbinary")
        first, second = raw.recv_data_frame(), raw.recv_data_frame()
        assert (first.opcode, first.payload) == (OP_TEXT, b"text")
        assert (second.opcode, second.payload) == (OP_BINARY, b"\xffbinary")
        assert not first.masked
        assert not second.masked


def test_fragmented_message_is_reassembled(server):
    with RawWebSocket(server.port, "/echo") as raw:
        raw.send_frame(OP_TEXT, b"caf", fin=False)
        # The multi-byte character split across two frames.
        raw.send_frame(OP_CONT, b"\xc3", fin=False)
        raw.send_frame(OP_PING, b"in between")
        raw.send_frame(OP_CONT, b"\xa9!", fin=True)
        pong = raw.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"in between")
        frame = raw.recv_data_frame()
        assert (frame.fin, frame.opcode) == (True, OP_TEXT)
        assert frame.payload.decode("utf-8") == "caf\u00e9!"


def test_frames_sent_with_the_handshake_are_not_lost(server):
    # A client may send its first frames right behind the upgrade request.
    early = encode_frame(OP_TEXT, b"early one") + encode_frame(OP_BINARY, b"two")
    with RawWebSocket(server.port, "/echo", early=early) as raw:
        first, second = raw.recv_data_frame(), raw.recv_data_frame()
    assert (first.opcode, first.payload) == (OP_TEXT, b"early one")
    assert (second.opcode, second.payload) == (OP_BINARY, b"two")


def test_websocket_attributes(server):
    url = server.ws_url + "/info?x=1"
    with connect(url, subprotocols=["superchat"], open_timeout=10) as ws:
        info = json.loads(ws.recv(timeout=10))
    assert info == {
        "subprotocol": "superchat",
        "remote_addr": "127.0.0.1",
        "path": "/info",
        "query": "x=1",
        "same_environ": True,
        "is_websocket": True,
    }


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["superchat", "chat"], "chat"),  # the server's preference wins
        (["superchat"], "superchat"),
        (["nope", "chat"], "chat"),
        (["nope"], None),
        (None, None),
    ],
)
def test_subprotocol_selection(server, offered, chosen):
    with connect(server.ws_url + "/info", subprotocols=offered, open_timeout=10) as ws:
        assert ws.subprotocol == chosen
        assert json.loads(ws.recv(timeout=10))["subprotocol"] == chosen
        if chosen is None:
            assert "Sec-WebSocket-Protocol" not in ws.response.headers


def test_recv_timeout_leaves_the_connection_usable(server):
    with connect(server.ws_url + "/timeout", open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "timed out"
        ws.send("after the timeout")
        assert ws.recv(timeout=10) == "after the timeout"


def test_two_clients_fragments_never_mix(server):
    a = RawWebSocket(server.port, "/echo?tag=mixA")
    b = RawWebSocket(server.port, "/echo?tag=mixB")
    with a, b:
        steps = [
            (a, OP_TEXT, b"A1-", False),
            (b, OP_BINARY, b"B1-", False),
            (a, OP_CONT, b"A2-", False),
            (b, OP_CONT, b"B2-", False),
            (b, OP_CONT, b"B3", True),
            (a, OP_CONT, b"A3", True),
        ]
        for client, opcode, payload, fin in steps:
            client.send_frame(opcode, payload, fin=fin)
            time.sleep(0.02)  # separate reads on the server side
        frame_a = a.recv_data_frame()
        frame_b = b.recv_data_frame()
    assert (frame_a.opcode, frame_a.payload) == (OP_TEXT, b"A1-A2-A3")
    assert (frame_b.opcode, frame_b.payload) == (OP_BINARY, b"B1-B2-B3")


def test_two_clients_in_threads_never_mix(server):
    results: dict[str, list[str]] = {}

    def client(name: str) -> None:
        with connect(server.ws_url + "/echo", open_timeout=10) as ws:
            got = []
            for i in range(100):
                ws.send(iter([f"{name}-{i}-", "x" * 100, f"-{name}"]))
                got.append(ws.recv(timeout=10))
            results[name] = got

    threads = [threading.Thread(target=client, args=(n,)) for n in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    for name in ("one", "two"):
        assert results[name] == [
            f"{name}-{i}-" + "x" * 100 + f"-{name}" for i in range(100)
        ]


def test_bulk_sends_wait_for_a_slow_reader(server):
    with connect(server.ws_url + "/bulk", open_timeout=10, max_size=None) as ws:
        ws.send("40")
        time.sleep(0.3)  # let the server's write buffer fill up
        got = [ws.recv(timeout=10) for _ in range(40)]
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert [(len(m), m[:1], m[-1:]) for m in got] == [
        (65536, bytes([i]), bytes([i])) for i in range(40)
    ]
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1000


def test_app_exception_after_accept_closes_1011():
    with running(APP) as crash_server:
        with connect(crash_server.ws_url + "/crash", open_timeout=10) as ws:
            ws.send("trigger")
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1011
        assert info.value.rcvd.reason == ""  # never the error text
        crash_server.wait_for_log(r"RuntimeError: crash after accept")
        assert "Traceback" in crash_server.log


# -- closing -------------------------------------------------------------------


def test_server_close_code_and_reason_reach_the_client(server):
    url = server.ws_url + "/close?code=4001&reason=bye&tag=srvclose"
    with connect(url, open_timeout=10) as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")
    line = server.wait_for_log(r"APP srvclose after close")
    assert "code=4001" in line


def test_server_close_frame_on_the_wire(server):
    with RawWebSocket(server.port, "/close?code=4001&reason=bye") as raw:
        raw.send_text("go")
        frame = raw.recv_data_frame()
        assert frame.opcode == OP_CLOSE
        assert (frame.close_code, frame.close_reason) == (4001, "bye")
        raw.send_frame(OP_CLOSE, close_payload(4001))
        assert raw.frames_until_eof() == []  # then the server closes TCP


def test_websocket_client_sees_server_close(server):
    ws = websocket.create_connection(
        server.ws_url + "/close?code=4001&reason=bye", timeout=10
    )
    try:
        ws.send("go")
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert data[:2] == (4001).to_bytes(2, "big")
        assert data[2:] == b"bye"
    finally:
        ws.close()


def test_iteration_ends_with_ok_on_normal_close(server):
    with connect(server.ws_url + "/echo?tag=okclose", open_timeout=10) as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "x"
    assert "close_code=1000" in server.wait_for_log(r"APP okclose ")


def test_iteration_ends_with_ok_on_going_away(server):
    with RawWebSocket(server.port, "/echo?tag=goingaway") as raw:
        raw.send_frame(OP_CLOSE, close_payload(1001, "tab closed"))
        assert raw.expect_close().close_code == 1001
    assert "close_code=1001" in server.wait_for_log(r"APP goingaway ")


def test_error_close_code_raises_connection_closed_error(server):
    with RawWebSocket(server.port, "/echo?tag=errclose") as raw:
        raw.send_frame(OP_CLOSE, close_payload(4000, "app error"))
        assert raw.expect_close().close_code == 4000
    line = server.wait_for_log(r"APP errclose ")
    assert "ConnectionClosedError code=4000" in line


def test_abrupt_disconnect_raises_connection_closed_error(server):
    with RawWebSocket(server.port, "/echo?tag=abrupt") as raw:
        raw.send_text("hi")
        assert raw.recv_data_frame().payload == b"hi"
    line = server.wait_for_log(r"APP abrupt ")
    assert "ConnectionClosedError code=1006" in line
    assert_no_traceback(server)


# -- protocol violations and limits ----------------------------------------------


def test_message_at_the_limit_is_echoed(server):
    with connect(server.ws_url + "/echo", open_timeout=10) as ws:
        ws.send("m" * 1024)
        assert ws.recv(timeout=10) == "m" * 1024


def test_message_over_max_size_closes_1009(server):
    with connect(server.ws_url + "/echo?tag=toobig", open_timeout=10) as ws:
        ws.send("m" * 1025)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009
    assert "code=1009" in server.wait_for_log(r"APP toobig ")


def test_fragmented_message_over_max_size_closes_1009(server):
    with RawWebSocket(server.port, "/echo") as raw:
        raw.send_frame(OP_BINARY, b"a" * 600, fin=False)
        raw.send_frame(OP_CONT, b"b" * 600, fin=True)
        frames = raw.frames_until_eof()
    assert [f.opcode for f in frames] == [OP_CLOSE]
    assert frames[0].close_code == 1009


def test_oversized_frame_header_alone_closes_1009(server):
    with RawWebSocket(server.port, "/echo") as raw:
        # Announce 5000 bytes and send none: the header alone is enough.
        raw.sock.sendall(encode_frame(OP_BINARY, b"x" * 5000)[:8])
        frames = raw.frames_until_eof()
    assert [(f.opcode, f.close_code) for f in frames] == [(OP_CLOSE, 1009)]


@pytest.mark.parametrize(
    "fragments",
    [
        [(OP_TEXT, b"\xff\xfe", True)],
        [(OP_TEXT, b"ok \xed", False), (OP_CONT, b"\xa0\x80", True)],  # surrogate
    ],
    ids=["single-frame", "fragmented"],
)
def test_invalid_utf8_text_closes_1007(server, fragments):
    with RawWebSocket(server.port, "/echo") as raw:
        for opcode, payload, fin in fragments:
            raw.send_frame(opcode, payload, fin=fin)
        frames = raw.frames_until_eof()
    assert [f.opcode for f in frames] == [OP_CLOSE]
    assert frames[0].close_code == 1007


def test_unmasked_frame_closes_1002(server):
    with RawWebSocket(server.port, "/echo?tag=unmasked") as raw:
        raw.send_frame(OP_TEXT, b"naked", mask=False)
        frames = raw.frames_until_eof()
    assert [f.opcode for f in frames] == [OP_CLOSE]
    assert frames[0].close_code == 1002
    assert "code=1002" in server.wait_for_log(r"APP unmasked ")


def test_reserved_bits_close_1002(server):
    with RawWebSocket(server.port, "/echo") as raw:
        raw.send_frame(OP_TEXT, b"compressed?", rsv=4)
        frames = raw.frames_until_eof()
    assert frames[-1].opcode == OP_CLOSE
    assert frames[-1].close_code == 1002


def test_ping_is_answered_with_pong_echoing_payload(server):
    with RawWebSocket(server.port, "/echo") as raw:
        raw.send_frame(OP_PING, b"are you there?")
        pong = raw.recv_frame()
        assert (pong.fin, pong.opcode, pong.payload) == (
            True,
            OP_PONG,
            b"are you there?",
        )
        raw.send_frame(OP_PING)
        assert raw.recv_frame().payload == b""
        raw.send_text("still open")
        assert raw.recv_data_frame().payload == b"still open"


def test_websocket_client_ping_pong(server):
    ws = websocket.create_connection(server.ws_url + "/echo", timeout=10)
    try:
        ws.ping("payload-123")
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PONG
        assert data == b"payload-123"
    finally:
        ws.close()


# -- keepalive -------------------------------------------------------------------


def test_keepalive_sends_ping_and_gratuitous_pong(keepalive_server):
    with RawWebSocket(keepalive_server.port, "/echo") as raw:
        seen = []
        while seen.count(OP_PING) < 3:
            frame = raw.recv_frame()
            seen.append(frame.opcode)
            if frame.opcode == OP_PING:
                raw.send_frame(OP_PONG, frame.payload)
        assert OP_PONG in seen  # the unsolicited heartbeat pong
        assert set(seen) <= {OP_PING, OP_PONG}
        raw.send_text("alive")
        assert raw.recv_data_frame().payload == b"alive"


def test_client_answering_pings_stays_connected(keepalive_server):
    with RawWebSocket(keepalive_server.port, "/echo?tag=answering") as raw:
        pings = 0
        while pings < 6:  # several ping intervals and pong tolerances
            frame = raw.recv_frame()
            if frame.opcode == OP_PING:
                pings += 1
                raw.send_frame(OP_PONG, frame.payload)
            assert frame.opcode != OP_CLOSE
        raw.send_text("still here")
        assert raw.recv_data_frame().payload == b"still here"
        raw.send_frame(OP_CLOSE, close_payload(1000))
        assert raw.expect_close().close_code == 1000
    assert "close_code=1000" in keepalive_server.wait_for_log(r"APP answering ")


def test_library_client_stays_connected_while_idle(keepalive_server):
    with connect(keepalive_server.ws_url + "/echo?tag=idle", open_timeout=10) as ws:
        time.sleep(1.2)  # idle for several ping intervals: pongs keep it alive
        ws.send("after idling")
        assert ws.recv(timeout=10) == "after idling"
    assert "close_code=1000" in keepalive_server.wait_for_log(r"APP idle ")


def test_dead_peer_is_dropped(keepalive_server):
    with RawWebSocket(keepalive_server.port, "/echo?tag=dead") as raw:
        # Never answer, never send: read what the server sends until it hangs up.
        frames = raw.frames_until_eof()
    opcodes = [f.opcode for f in frames]
    assert OP_PING in opcodes
    if OP_CLOSE in opcodes:
        close = frames[opcodes.index(OP_CLOSE)]
        assert close.close_code == 1011
    keepalive_server.wait_for_log(r"dead: no pong")
    # The app's recv fails with an error, chained to the keepalive's verdict
    # (the code is 1006: no close frame came from the peer).
    line = keepalive_server.wait_for_log(r"APP dead ")
    assert "ConnectionClosedError" in line
    assert "no pong" in line
    assert_no_traceback(keepalive_server)
