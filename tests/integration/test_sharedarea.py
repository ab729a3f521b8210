"""The shared area in a real ``geows serve --sharedarea``.

The app is tests/apps/sharedarea_app.py: HTTP endpoints over the
``uwsgi.sharedarea_*`` functions and a websocket that answers commands with
``uwsgi.websocket_send[_binary]_from_sharedarea``.
"""

from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.support import (
    OP_BINARY,
    OP_TEXT,
    RawWebSocket,
    Response,
    assert_no_traceback,
    http_exchange,
    serve,
)
from tests.servers import APPS, running

APP = str(APPS / "sharedarea_app.py")
PAGE = mmap.PAGESIZE

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def server():
    yield from serve(APP, "--sharedarea", "1", "--sharedarea", "2")


@pytest.fixture(scope="module")
def bare_server():
    yield from serve(APP)


def write(port: int, target: str, body: bytes) -> Response:
    """POST ``body`` to ``target`` (a /write URL)."""
    length = [("Content-Length", str(len(body)))]
    return http_exchange(port, "POST", target, length, body)


def test_one_request_writes_and_another_reads(server):
    written = write(server.port, "/write?pos=100", b"shared!")
    assert written.status == 204
    read = http_exchange(server.port, "GET", "/read?pos=100&len=7")
    assert (read.status, read.body) == (200, b"shared!")
    rest = http_exchange(server.port, "GET", "/read?pos=100")  # len 0: to the end
    assert len(rest.body) == PAGE - 100
    assert rest.body.startswith(b"shared!")
    assert_no_traceback(server)


def test_areas_have_their_own_ids_and_sizes(server):
    write(server.port, "/write?id=1&pos=0", b"area one")
    one = http_exchange(server.port, "GET", "/read?id=1&pos=0&len=8")
    zero = http_exchange(server.port, "GET", "/read?id=0&pos=0&len=8")
    assert (one.body, zero.body) == (b"area one", bytes(8))
    last = http_exchange(server.port, "GET", f"/read?id=1&pos={2 * PAGE - 1}")
    assert (last.status, last.body) == (200, b"\x00")


def test_bytes_and_counters(server):
    byte = http_exchange(server.port, "GET", "/byte?pos=2000&set=255")
    assert byte.body == b"255"
    values = [
        http_exchange(server.port, "POST", f"/inc?pos=2048&by={by}").body.split()[0]
        for by in (1, 1, 40, -2)
    ]
    assert values == [b"1", b"2", b"42", b"40"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (f"/read?pos={PAGE}", f"position {PAGE} is outside shared area 0"),
        ("/read?pos=-1", "position -1 is negative"),
        (f"/read?pos={PAGE - 4}&len=5", "5 bytes at position"),
        ("/read?pos=0&len=-1", "length -1 is negative"),
        ("/read?id=2&pos=0", "no shared area 2: ids are 0 to 1"),
        (f"/byte?pos={PAGE}", "is outside"),
        ("/byte?pos=0&set=256", "byte value 256 is not in 0 to 255"),
        (f"/inc?pos={PAGE - 7}", "run past the end"),
    ],
)
def test_bad_arguments_are_value_errors(server, target: str, message: str):
    response = http_exchange(server.port, "GET", target)
    assert response.status == 400
    assert message in response.body.decode()


def test_a_write_past_the_end_writes_nothing(server):
    pos = 2 * PAGE - 3  # the end of area 1, which no other test writes
    response = write(server.port, f"/write?id=1&pos={pos}", b"four")
    assert response.status == 400
    assert f"4 bytes at position {pos} run past the end".encode() in response.body
    after = http_exchange(server.port, "GET", f"/read?id=1&pos={pos}")
    assert after.body == bytes(3)


def test_websocket_sends_the_area_bytes_as_text_and_binary(server):
    text = "h\u00e9llo \u2603".encode()
    write(server.port, "/write?pos=300", text)
    with RawWebSocket(server.port, "/ws") as ws:
        ws.send_text(f"text 300 {len(text)}")
        frame = ws.recv_data_frame()
        assert (frame.opcode, frame.payload) == (OP_TEXT, text)
        ws.send_text(f"binary 300 {len(text)}")
        frame = ws.recv_data_frame()
        assert (frame.opcode, frame.payload) == (OP_BINARY, text)
        tail = b"the end of the page."
        write(server.port, f"/write?pos={PAGE - len(tail)}", tail)
        ws.send_text(f"text {PAGE - len(tail)}")  # len 0: to the end
        frame = ws.recv_data_frame()
        assert (frame.opcode, frame.payload) == (OP_TEXT, tail)
        ws.send_text(f"binary {PAGE - 5} 0")
        frame = ws.recv_data_frame()
        assert (frame.opcode, frame.payload) == (OP_BINARY, b"page.")
        ws.send_text(f"binary {PAGE - 1} 1")
        frame = ws.recv_data_frame()
        assert (frame.opcode, frame.payload) == (OP_BINARY, b".")
    assert_no_traceback(server)


def test_websocket_send_from_the_second_area(server):
    write(server.port, f"/write?id=1&pos={PAGE + 10}", b"far")
    with RawWebSocket(server.port, "/ws?id=1") as ws:
        ws.send_text(f"text {PAGE + 10} 3")
        frame = ws.recv_data_frame()
        assert (frame.opcode, frame.payload) == (OP_TEXT, b"far")


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_websocket_bad_position_is_a_value_error(server, kind: str):
    with RawWebSocket(server.port, "/ws") as ws:
        for command, message in [
            (f"{kind} {PAGE}", f"400 position {PAGE} is outside shared area 0"),
            (f"{kind} -1", "400 position -1 is negative"),
            (f"{kind} 10 {PAGE}", f"400 {PAGE} bytes at position 10 run past"),
        ]:
            ws.send_text(command)
            frame = ws.recv_data_frame()
            assert frame.opcode == OP_TEXT
            assert frame.payload.decode().startswith(message)
        # The connection is still usable after the errors.
        ws.send_text(f"{kind} {PAGE - 1}")
        assert len(ws.recv_data_frame().payload) == 1
    assert_no_traceback(server)


def test_without_sharedarea_every_id_is_unknown(bare_server):
    response = http_exchange(bare_server.port, "GET", "/read?pos=0")
    assert response.status == 400
    assert b"no shared area 0: none was configured" in response.body
    with RawWebSocket(bare_server.port, "/ws") as ws:
        ws.send_text("text 0")
        assert ws.recv_data_frame().payload.startswith(b"400 no shared area 0")
    assert_no_traceback(bare_server)


def test_a_counter_is_shared_by_the_workers_of_processes_2():
    def inc(port: int) -> tuple[int, int]:
        value, pid = http_exchange(port, "POST", "/inc?pos=64").body.split()
        return int(value), int(pid)

    with running(APP, "--processes", "2", "--sharedarea", "1") as server:
        # Concurrent requests, each on its own connection, spread over both.
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(inc, [server.port] * 400))
        # Should the kernel have sent them all to one worker, go on until
        # the other one answers too.
        for _ in range(1_000):
            if len({pid for _, pid in results}) == 2:
                break
            results.append(inc(server.port))
        assert len({pid for _, pid in results}) == 2, "one worker served all"
        # Every increment saw a different value: none was lost or repeated.
        assert sorted(value for value, _ in results) == list(range(1, len(results) + 1))
        assert_no_traceback(server)
        assert server.stop() == 0
