"""uWSGI-style apps (examples/uwsgi/) served unmodified by ``geows serve``."""

from __future__ import annotations

import time

import pytest
import websocket
from websockets.sync.client import connect

from tests.integration.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    RawWebSocket,
    assert_no_traceback,
    close_payload,
    encode_frame,
    http_exchange,
    serve,
    upgrade_headers,
)
from tests.servers import APPS, EXAMPLES

UWSGI = EXAMPLES / "uwsgi"

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(scope="module")
def echo_server():
    yield from serve(str(UWSGI / "echo.py"))


@pytest.fixture(scope="module")
def keepalive_echo_server():
    yield from serve(
        str(UWSGI / "echo.py"),
        "--websockets-ping-freq",
        "0.2",
        "--websockets-pong-tolerance",
        "0.3",
    )


@pytest.fixture(scope="module")
def proto_server():
    yield from serve(str(UWSGI / "subprotocol_binary.py"))


@pytest.fixture(scope="module")
def ticker_server():
    yield from serve(str(UWSGI / "second_greenlet.py"))


@pytest.fixture(scope="module")
def poll_server():
    yield from serve(str(UWSGI / "recv_nb_poll.py"))


@pytest.fixture(scope="module")
def select_server():
    yield from serve(str(UWSGI / "select_fd.py"))


@pytest.fixture(scope="module")
def select_keepalive_server():
    yield from serve(
        str(UWSGI / "select_fd.py"),
        "--websockets-ping-freq",
        "0.2",
        "--websockets-pong-tolerance",
        "0.3",
    )


@pytest.fixture(scope="module")
def guarded_server():
    yield from serve(str(UWSGI / "guarded.py"))


@pytest.fixture(scope="module")
def misc_server():
    yield from serve(str(APPS / "uwsgi_misc.py"))


# -- echo.py -------------------------------------------------------------------


def test_echo_text(echo_server):
    ws = websocket.create_connection(echo_server.ws_url + "/", timeout=10)
    try:
        for text in ("hello", "h\u00e9llo \u2603", "", "x" * 70000):
            ws.send(text)
            assert ws.recv() == text
    finally:
        ws.close()


def test_echo_many_messages_in_order(echo_server):
    with connect(echo_server.ws_url + "/", open_timeout=10) as ws:
        for i in range(200):
            ws.send(f"message {i}")
        assert [ws.recv(timeout=10) for _ in range(200)] == [
            f"message {i}" for i in range(200)
        ]


def test_echo_binary_comes_back_as_text(echo_server):
    # websocket_recv does not tell text from binary; websocket_send is text.
    with connect(echo_server.ws_url + "/", open_timeout=10) as ws:
        ws.send(b"plain ascii bytes")
        assert ws.recv(timeout=10) == "plain ascii bytes"


def test_echo_client_close_ends_app_without_traceback(echo_server):
    with connect(echo_server.ws_url + "/normal-close", open_timeout=10) as ws:
        ws.send("one")
        assert ws.recv(timeout=10) == "one"
    echo_server.wait_for_log(r'"WEBSOCKET /normal-close" 1000 in=1 out=1')
    assert_no_traceback(echo_server)


def test_echo_abrupt_disconnect_without_traceback(echo_server):
    with RawWebSocket(echo_server.port, "/abrupt") as raw:
        raw.send_text("ping?")
        frame = raw.recv_data_frame()
        assert (frame.opcode, frame.payload) == (OP_TEXT, b"ping?")
    # TCP closed without a close frame: websocket_recv raises OSError (1006).
    echo_server.wait_for_log(r'"WEBSOCKET /abrupt" 1006 in=1 out=1')
    assert_no_traceback(echo_server)


def test_echo_dead_peer_ends_recv_without_traceback(keepalive_echo_server):
    server = keepalive_echo_server
    with RawWebSocket(server.port, "/silent") as raw:
        frames = raw.frames_until_eof()  # never answering the pings
    assert OP_PING in [f.opcode for f in frames]
    server.wait_for_log(r"dead: no pong")
    server.wait_for_log(r'"WEBSOCKET /silent" ')
    assert_no_traceback(server)


def test_echo_live_peer_survives_keepalive(keepalive_echo_server):
    with connect(keepalive_echo_server.ws_url + "/lively", open_timeout=10) as ws:
        for i in range(8):
            ws.send(f"beat {i}")
            assert ws.recv(timeout=10) == f"beat {i}"
            time.sleep(0.1)  # over several ping intervals; the library answers
    keepalive_echo_server.wait_for_log(r'"WEBSOCKET /lively" 1000 in=8 out=8')


# -- subprotocol_binary.py -----------------------------------------------------


def test_subprotocol_chosen_from_offer(proto_server):
    with connect(
        proto_server.ws_url + "/", subprotocols=["chat", "other"], open_timeout=10
    ) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "chat"
        assert ws.recv(timeout=10) == b"proto=chat"


def test_subprotocol_not_offered_gives_none(proto_server):
    with connect(
        proto_server.ws_url + "/", subprotocols=["other"], open_timeout=10
    ) as ws:
        assert ws.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers
        assert ws.recv(timeout=10) == b"proto=none"


def test_binary_frames_arrive_as_bytes(proto_server):
    with connect(proto_server.ws_url + "/", subprotocols=["chat"]) as ws:
        assert ws.recv(timeout=10) == b"proto=chat"
        payload = bytes(range(256)) * 4
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        ws.send("text in, binary out")
        assert ws.recv(timeout=10) == b"text in, binary out"


def test_binary_opcode_on_the_wire(proto_server):
    with RawWebSocket(proto_server.port) as raw:
        greeting = raw.recv_data_frame()
        assert (greeting.opcode, greeting.payload) == (OP_BINARY, b"proto=none")
        raw.send_frame(OP_BINARY, b"\x00\xff\x10")
        frame = raw.recv_data_frame()
        assert (frame.fin, frame.opcode, frame.payload) == (
            True,
            OP_BINARY,
            b"\x00\xff\x10",
        )
        assert not frame.masked


def test_handshake_proto_answered_only_when_offered(misc_server):
    # uwsgi.websocket_handshake(proto="chat") without looking at the offer.
    url = misc_server.ws_url + "/proto-always"
    with connect(url, subprotocols=["other"], open_timeout=10) as ws:
        assert ws.subprotocol is None
        ws.send("still works")
        assert ws.recv(timeout=10) == "still works"
    with connect(url, subprotocols=["x", "chat"], open_timeout=10) as ws:
        assert ws.subprotocol == "chat"
    with connect(url, open_timeout=10) as ws:
        assert ws.subprotocol is None


# -- second_greenlet.py --------------------------------------------------------


def test_second_greenlet_ticks_interleave_with_echoes(ticker_server):
    ticks: list[str] = []
    echoes: list[str] = []
    sent: list[str] = []
    with connect(ticker_server.ws_url + "/", open_timeout=10) as ws:
        while len(ticks) < 10 or len(echoes) < len(sent):
            msg = ws.recv(timeout=10)
            assert isinstance(msg, str)
            if msg.startswith("tick "):
                ticks.append(msg)
                if len(ticks) <= 10:
                    # A message right after each tick: echoes and ticks interleave.
                    body = f"msg {len(ticks)} " + "z" * 500
                    sent.append(body)
                    ws.send(body)
            else:
                echoes.append(msg)
    assert ticks == [f"tick {n}" for n in range(1, len(ticks) + 1)]
    assert echoes == [f"echo {body}" for body in sent]
    ticker_server.wait_for_log(r'"WEBSOCKET /" 1000 in=10 ')
    assert_no_traceback(ticker_server)


def test_second_greenlet_frames_intact_under_load(ticker_server):
    # Many sizeable echoes from one greenlet while the other ticks: every
    # frame must arrive whole and in order, never spliced into another.
    bodies = [f"{i:04d}" + chr(0x41 + i % 26) * (3000 + i) for i in range(60)]
    with connect(ticker_server.ws_url + "/load", open_timeout=10) as ws:
        for body in bodies:
            ws.send(body)
        echoes: list[str] = []
        ticks: list[str] = []
        while len(echoes) < len(bodies) or not ticks:
            msg = ws.recv(timeout=10)
            (ticks if msg.startswith("tick ") else echoes).append(msg)
    assert echoes == [f"echo {body}" for body in bodies]
    assert ticks == [f"tick {n}" for n in range(1, len(ticks) + 1)]


# -- recv_nb_poll.py -----------------------------------------------------------


def test_recv_nb_polling_echo(poll_server):
    with connect(poll_server.ws_url + "/", open_timeout=10) as ws:
        ws.send("first")
        assert ws.recv(timeout=10) == "first"
        burst = [f"burst {i}" for i in range(50)]
        for msg in burst:
            ws.send(msg)
        assert [ws.recv(timeout=10) for _ in burst] == burst
    poll_server.wait_for_log(r'"WEBSOCKET /" 1000 in=51 out=51')
    assert_no_traceback(poll_server)


def test_recv_nb_polling_burst_in_one_segment(poll_server):
    with RawWebSocket(poll_server.port, "/raw") as raw:
        raw.sock.sendall(b"".join(encode_frame(OP_TEXT, b"m%d" % i) for i in range(5)))
        got = [raw.recv_data_frame().payload for _ in range(5)]
        assert got == [b"m%d" % i for i in range(5)]
        raw.send_frame(OP_CLOSE, close_payload(1000))
        assert raw.expect_close().close_code == 1000


# -- select_fd.py --------------------------------------------------------------


def test_select_forwards_pipe_and_echoes_client(select_server):
    events: list[str] = []
    echoes: list[str] = []
    with connect(select_server.ws_url + "/", open_timeout=10) as ws:
        for word in ("alpha", "beta", "gamma"):
            ws.send(word)
        while len(events) < 5 or len(echoes) < 3:
            msg = ws.recv(timeout=10)
            (echoes if msg.startswith("echo ") else events).append(msg)
        # Still responsive after the producer has finished.
        ws.send("delta")
        assert ws.recv(timeout=10) == "echo delta"
    assert events == [f"event {n}" for n in range(1, 6)]
    assert echoes == ["echo alpha", "echo beta", "echo gamma"]
    select_server.wait_for_log(r'"WEBSOCKET /" 1000 in=4 out=9')
    assert_no_traceback(select_server)


def test_select_drains_messages_read_together(select_server):
    with RawWebSocket(select_server.port, "/together") as raw:
        raw.sock.sendall(b"".join(encode_frame(OP_TEXT, b"t%d" % i) for i in range(4)))
        echoes = []
        while len(echoes) < 4:
            payload = raw.recv_data_frame().payload
            if payload.startswith(b"echo "):
                echoes.append(payload)
        assert echoes == [b"echo t%d" % i for i in range(4)]
        raw.send_frame(OP_CLOSE, close_payload(1000))
        raw.expect_close()
    select_server.wait_for_log(r'"WEBSOCKET /together" 1000 in=4 ')
    assert_no_traceback(select_server)


@pytest.mark.timeout(15)
def test_select_dead_peer_gets_tcp_close(select_keepalive_server):
    # The app waits in gevent.select on connection_fd() when the keepalive
    # declares the peer dead: the TCP connection must still be closed.
    server = select_keepalive_server
    with RawWebSocket(server.port, "/silent", timeout=3) as raw:
        frames = raw.frames_until_eof()  # never answering the pings
    server.wait_for_log(r"dead: no pong")
    assert frames[-1].opcode == OP_CLOSE
    assert frames[-1].close_code == 1011


# -- guarded.py: errors --------------------------------------------------------


def test_missing_token_is_403_without_upgrade(guarded_server):
    response = http_exchange(guarded_server.port, "GET", "/", upgrade_headers())
    assert response.status == 403
    assert response.body == b"forbidden\n"
    assert response.header("Upgrade") is None
    assert response.header("Sec-WebSocket-Accept") is None
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(guarded_server.ws_url + "/?token=wrong", timeout=10)
    assert info.value.status_code == 403


def test_plain_get_to_handshake_is_426(guarded_server):
    response = http_exchange(guarded_server.port, "GET", "/?token=secret")
    assert response.status == 426
    assert response.header("Upgrade") == "websocket"
    assert response.header("Connection").lower() == "close"


def _without(headers, name):
    return [(k, v) for k, v in headers if k.lower() != name.lower()]


def test_upgrade_without_connection_header_is_400(guarded_server):
    headers = _without(upgrade_headers(), "Connection")
    response = http_exchange(guarded_server.port, "GET", "/?token=secret", headers)
    assert response.status == 400


def test_wrong_websocket_version_is_426(guarded_server):
    headers = [*_without(upgrade_headers(), "Sec-WebSocket-Version")]
    headers.append(("Sec-WebSocket-Version", "8"))
    response = http_exchange(guarded_server.port, "GET", "/?token=secret", headers)
    assert response.status == 426
    assert response.header("Sec-WebSocket-Version") == "13"


@pytest.mark.parametrize("key", ["not-base64!", "c2hvcnQ=", ""])
def test_bad_key_is_400(guarded_server, key):
    headers = _without(upgrade_headers(), "Sec-WebSocket-Key")
    if key:
        headers.append(("Sec-WebSocket-Key", key))
    response = http_exchange(guarded_server.port, "GET", "/?token=secret", headers)
    assert response.status == 400


def test_upgrade_with_post_is_refused(guarded_server):
    response = http_exchange(
        guarded_server.port, "POST", "/?token=secret", upgrade_headers()
    )
    assert response.status == 405
    assert response.header("Allow") == "GET"


def test_refused_handshakes_log_no_traceback(guarded_server):
    http_exchange(guarded_server.port, "GET", "/?token=secret")
    guarded_server.wait_for_log(r"refused upgrade")
    assert_no_traceback(guarded_server)


def test_recv_raises_oserror_after_client_close(guarded_server):
    url = guarded_server.ws_url + "/?token=secret&who=alice"
    with connect(url, open_timeout=10) as ws:
        ws.send("one")
        ws.send("two")
        assert [ws.recv(timeout=10), ws.recv(timeout=10)] == ["one", "two"]
    line = guarded_server.wait_for_log(r"guarded: session of alice ended")
    assert "after 2 messages" in line
    assert "websocket closed: 1000" in line
    assert_no_traceback(guarded_server)


def test_recv_raises_oserror_after_abrupt_disconnect(guarded_server):
    with RawWebSocket(guarded_server.port, "/?token=secret&who=bob") as raw:
        raw.send_text("only")
        assert raw.recv_data_frame().payload == b"only"
    line = guarded_server.wait_for_log(r"guarded: session of bob ended")
    assert "websocket closed: 1006" in line
    assert_no_traceback(guarded_server)


# -- other uwsgi functions -----------------------------------------------------


def test_send_without_request_context_in_other_greenlet_raises(misc_server):
    with connect(misc_server.ws_url + "/no-context", open_timeout=10) as ws:
        outcome = ws.recv(timeout=10)
        assert outcome.startswith("OSError: no current request"), outcome
        ws.send("via context")
        assert ws.recv(timeout=10) == "via context"


def test_send_str_is_utf8_text_and_send_binary_is_binary(misc_server):
    with RawWebSocket(misc_server.port, "/str-send") as raw:
        text = raw.recv_data_frame()
        assert text.opcode == OP_TEXT
        assert text.payload.decode("utf-8") == "h\u00e9llo \u2603"
        binary = raw.recv_data_frame()
        assert (binary.opcode, binary.payload) == (OP_BINARY, b"\x00\xff")
        raw.send_text("done")
        assert raw.expect_close().close_code == 1000


def test_uwsgi_version_over_http(misc_server):
    response = http_exchange(misc_server.port, "GET", "/meta")
    assert response.status == 200
    assert response.body.startswith(b"version=2.")
