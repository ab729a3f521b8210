"""``--route``: requests relayed to another server, WebSockets included.

A front geows (tests/apps/http_app.py as its own app) routes paths to a
backend geows (tests/apps/route_backend.py) over http:, and to a tiny uwsgi
server written here with the stdlib over uwsgi: (a backend geows speaks
uwsgi once its --uwsgi-socket listener is wired; that test skips until
then). Failures: a port nobody listens on (502), a backend that accepts and
never answers (504), a backend killed mid-session (close frame 1011).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect

from geows.frames import apply_mask
from tests.integration.support import (
    OP_CLOSE,
    Reader,
    assert_no_traceback,
    encode_frame,
    http_exchange,
    open_socket,
    read_head,
    read_response,
    request_bytes,
    serve,
    upgrade_headers,
)
from tests.servers import APPS, ServerProcess, running

LOCAL_APP = str(APPS / "http_app.py")
BACKEND_APP = str(APPS / "route_backend.py")
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

pytestmark = pytest.mark.timeout(30)


# -- backends ------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend() -> Iterator[ServerProcess]:
    yield from serve(BACKEND_APP, "--websockets-max-size", "20480")


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts (the kernel does) and never answers."""
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


class UwsgiServer:
    """A tiny uwsgi backend on 127.0.0.1, stdlib only, a thread per connection.

    Records each packet (modifiers, vars, body). Answers a WebSocket upgrade
    with a 101 and echoes frames until a close frame (echoed too); anything
    else with its vars and body as JSON, close-delimited (no Content-Length,
    as a uwsgi backend may answer).
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[int, int, dict[str, str], bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            reader = Reader(conn)
            modifier1, size, modifier2 = struct.unpack("<BHB", reader.read_exact(4))
            data = reader.read_exact(size)
            found: dict[str, str] = {}
            pos = 0
            while pos < size:
                (length,) = struct.unpack_from("<H", data, pos)
                key = data[pos + 2 : pos + 2 + length].decode("latin-1")
                pos += 2 + length
                (length,) = struct.unpack_from("<H", data, pos)
                found[key] = data[pos + 2 : pos + 2 + length].decode("latin-1")
                pos += 2 + length
            body = reader.read_exact(int(found.get("CONTENT_LENGTH") or 0))
            self.requests.append((modifier1, modifier2, found, body))
            if found.get("HTTP_UPGRADE", "").lower() == "websocket":
                self._echo(conn, reader, found["HTTP_SEC_WEBSOCKET_KEY"])
                return
            answer = json.dumps({"vars": found, "body": body.decode("latin-1")})
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
                + answer.encode("utf-8")
            )

    def _echo(self, conn: socket.socket, reader: Reader, key: str) -> None:
        digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + base64.b64encode(digest)
            + b"\r\n\r\n"
        )
        while True:
            try:
                first, second = reader.read_exact(2)
            except EOFError:
                return
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", reader.read_exact(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", reader.read_exact(8))
            mask = reader.read_exact(4) if second & 0x80 else b""
            payload = reader.read_exact(size)
            if mask:
                payload = apply_mask(payload, mask)
            opcode = first & 0x0F
            conn.sendall(
                encode_frame(opcode, payload, fin=bool(first & 0x80), mask=False)
            )
            if opcode == OP_CLOSE:
                return


@pytest.fixture(scope="module")
def uwsgi_backend() -> Iterator[UwsgiServer]:
    server = UwsgiServer()
    yield server
    server.close()


# -- the front server ----------------------------------------------------------


@pytest.fixture(scope="module")
def front(
    backend: ServerProcess, dead_port: int, uwsgi_backend: UwsgiServer
) -> Iterator[ServerProcess]:
    b = backend.port
    yield from serve(
        LOCAL_APP,
        "--route",
        f"^/ws http:127.0.0.1:{b}",
        "--route",
        f"^/api http:127.0.0.1:{b}",
        "--route",
        f"^/down http:127.0.0.1:{dead_port}",
        "--route",
        f"^/u/ uwsgi:127.0.0.1:{uwsgi_backend.port},0,7",
    )


def json_body(body: bytes) -> dict:
    return json.loads(body.decode("utf-8"))  # type: ignore[no-any-return]


def chunked(*pieces: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return body + b"0\r\n\r\n"


# -- WebSockets over http: -----------------------------------------------------


def test_a_long_echo_session_passes_through(front, backend):
    with connect(f"{front.ws_url}/ws") as ws:
        for i in range(2000):
            message: str | bytes = f"message {i}" if i % 2 else os.urandom(i % 300)
            ws.send(message)
            assert ws.recv(timeout=10) == message
    line = front.wait_for_log(
        rf'"GET /ws HTTP/1.1" -> http:127\.0\.0\.1:{backend.port} 101 '
        r"in=\d+ out=\d+ [0-9.]+s"
    )
    assert "-> http:" in line
    assert_no_traceback(front)


def test_a_10_mib_message_passes_intact(front):
    message = os.urandom(10 * 1024 * 1024)
    with connect(f"{front.ws_url}/ws", max_size=None) as ws:
        ws.send(message)
        assert ws.recv(timeout=20) == message


def test_the_clients_close_and_the_backends_answer_pass_through(front):
    with connect(f"{front.ws_url}/ws") as ws:
        ws.send("bye")
        assert ws.recv(timeout=10) == "bye"
        ws.close(1000, "done")
    assert ws.close_code == 1000  # the backend's answer, relayed


def test_a_refused_upgrade_gets_the_backends_answer_and_the_end(front):
    with open_socket(front.port) as sock:
        sock.sendall(request_bytes("GET", "/ws-nothing-here", upgrade_headers()))
        reader = Reader(sock)
        response = read_response(reader)
        assert response.status == 404
        assert response.header("Connection") == "close"
        assert reader.at_eof()


# -- plain HTTP over http: -----------------------------------------------------


def test_a_routed_get_reaches_the_backend_with_forwarded_fields(front, backend):
    with open_socket(front.port) as sock:
        sock.sendall(request_bytes("GET", "/api/info?x=1", [("X-Test", "yes")]))
        reader = Reader(sock)
        response = read_response(reader)
        assert response.status == 200
        assert response.header("Connection") == "close"
        assert reader.at_eof()  # a routed request ends the connection
    info = json_body(response.body)
    assert (info["method"], info["path"], info["query"]) == ("GET", "/api/info", "x=1")
    assert info["server_port"] == str(backend.port)
    headers = info["headers"]
    assert headers["HTTP_X_TEST"] == "yes"
    assert headers["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert headers["HTTP_X_FORWARDED_PROTO"] == "http"
    assert headers["HTTP_X_FORWARDED_HOST"] == "127.0.0.1"
    assert headers["HTTP_CONNECTION"] == "close"


def test_a_chunked_post_is_passed_on_with_its_chunks(front):
    with open_socket(front.port) as sock:
        sock.sendall(
            request_bytes("POST", "/api/post", [("Transfer-Encoding", "chunked")])
        )
        for piece in (b"5\r\nhello\r\n", b"6\r\n world", b"\r\n0\r\n", b"\r\n"):
            sock.sendall(piece)
        response = read_response(Reader(sock))
    assert response.status == 200
    info = json_body(response.body)
    assert info["body"] == "hello world"
    assert info["headers"]["HTTP_TRANSFER_ENCODING"] == "chunked"


def test_a_post_waiting_for_100_continue_gets_it_from_the_backend(front):
    with open_socket(front.port) as sock:
        reader = Reader(sock)
        sock.sendall(
            request_bytes(
                "POST",
                "/api/post",
                [("Content-Length", "5"), ("Expect", "100-continue")],
            )
        )
        assert read_head(reader).status == 100
        sock.sendall(b"12345")
        response = read_response(reader)
    assert json_body(response.body)["body"] == "12345"


def test_a_large_chunked_answer_arrives_whole(front):
    response = http_exchange(front.port, "GET", "/api/big?n=5000000")
    assert response.chunked
    assert response.body == b"x" * 5_000_000


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_a_client_that_stops_reading_holds_the_backend_back(front):
    # Backpressure: while the client reads nothing, the front reads no more
    # from the backend than it can pass on, so its memory stays flat however
    # large the answer. (A front that buffered would take in the 64 MiB at
    # loopback speed.)
    size = 64 * 1024 * 1024
    before = _rss_kib(front.proc.pid)
    with open_socket(front.port) as sock:
        sock.sendall(request_bytes("GET", f"/api/big?n={size}"))
        reader = Reader(sock)
        response = read_head(reader)
        assert response.status == 200
        peak = before
        for _ in range(10):
            time.sleep(0.1)
            peak = max(peak, _rss_kib(front.proc.pid))
        assert peak - before < 16 * 1024, f"the front grew by {peak - before} KiB"
        total = 0
        while True:  # then all of it arrives
            line = reader.read_until(b"\r\n")
            chunk = int(line.strip(), 16)
            if not chunk:
                break
            total += len(reader.read_exact(chunk))
            reader.read_exact(2)
    assert total == size


def test_a_client_that_half_closes_still_gets_the_whole_answer(front):
    with open_socket(front.port) as sock:
        sock.sendall(request_bytes("GET", "/api/big?n=1000000"))
        sock.shutdown(socket.SHUT_WR)
        response = read_response(Reader(sock))
    assert response.status == 200
    assert response.body == b"x" * 1_000_000


def test_a_half_closed_post_still_gets_its_answer(front):
    with open_socket(front.port) as sock:
        sock.sendall(request_bytes("POST", "/api/post", [("Content-Length", "3")]))
        sock.sendall(b"abc")
        sock.shutdown(socket.SHUT_WR)
        response = read_response(Reader(sock))
    assert json_body(response.body)["body"] == "abc"


def test_a_request_pipelined_after_a_routed_one_never_reaches_the_backend(
    front, backend
):
    with open_socket(front.port) as sock:
        sock.sendall(
            request_bytes("GET", "/api/first") + request_bytes("GET", "/api/second")
        )
        reader = Reader(sock)
        response = read_response(reader)
        assert json_body(response.body)["path"] == "/api/first"
        assert reader.at_eof()
    backend.wait_for_log(r'"GET /api/first HTTP/1.1" 200')
    assert "/api/second" not in backend.log


def test_a_chunked_body_over_limit_post_is_refused_before_the_backend_answers(
    backend,
):
    with (
        running(
            LOCAL_APP,
            "--route",
            f"^/api http:127.0.0.1:{backend.port}",
            "--limit-post",
            "10",
        ) as server,
        open_socket(server.port) as sock,
    ):
        sock.sendall(
            request_bytes(
                "POST",
                "/api/post",
                [("Transfer-Encoding", "chunked")],
                chunked(b"0123456789", b"overflow"),
            )
        )
        response = read_response(Reader(sock))
        assert response.status == 413
        server.wait_for_log(r"bad request body from 127\.0\.0\.1")


def test_paths_no_route_matches_are_served_by_the_local_app(front):
    with open_socket(front.port) as sock:
        reader = Reader(sock)
        for _ in range(2):  # and kept alive as usual
            sock.sendall(request_bytes("GET", "/one"))
            response = read_response(reader)
            assert (response.status, response.body) == (200, b"single")
            assert response.header("Connection") is None


def test_the_first_matching_route_wins(backend, dead_port):
    b = backend.port
    with running(
        LOCAL_APP,
        "--route",
        f"^/api/one http:127.0.0.1:{b}",
        "--route",
        f"^/api http:127.0.0.1:{dead_port}",
    ) as server:
        assert http_exchange(server.port, "GET", "/api/one").status == 200
        assert http_exchange(server.port, "GET", "/api/two").status == 502


# -- a backend that fails ------------------------------------------------------


def test_a_backend_nobody_listens_on_is_a_502_and_a_log_line(front, dead_port):
    response = http_exchange(front.port, "GET", "/down")
    assert response.status == 502
    front.wait_for_log(
        rf"cannot connect to http:127\.0\.0\.1:{dead_port}: Connection refused"
    )
    front.wait_for_log(rf'"GET /down HTTP/1.1" -> http:127\.0\.0\.1:{dead_port} 502')


def test_a_backend_that_never_answers_is_a_504(silent_port):
    with running(
        LOCAL_APP,
        "--route",
        f"^/ http:127.0.0.1:{silent_port}",
        "--route-timeout",
        "1",
    ) as server:
        response = http_exchange(server.port, "GET", "/slow")
        assert response.status == 504
        server.wait_for_log(
            rf"http:127\.0\.0\.1:{silent_port} did not answer within 1\.0s"
        )


def test_a_killed_backend_closes_the_websocket_with_1011():
    with (
        running(BACKEND_APP) as victim,
        running(LOCAL_APP, "--route", f"^/ws http:127.0.0.1:{victim.port}") as server,
    ):
        with connect(f"{server.ws_url}/ws") as ws:
            for i in range(10):
                ws.send(f"m{i}")
                assert ws.recv(timeout=10) == f"m{i}"
            victim.proc.kill()
            victim.proc.wait(10)
            with pytest.raises(ConnectionClosedError) as info:
                ws.recv(timeout=10)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (
            1011,
            "backend went away",
        )
        server.wait_for_log(r"went away; closed the WebSocket with 1011")
        # The front goes on: its own app, and a 502 for the dead route.
        assert http_exchange(server.port, "GET", "/one").status == 200
        assert http_exchange(server.port, "GET", "/ws").status == 502
        assert_no_traceback(server)


def test_a_stopping_front_closes_relayed_websockets_with_1001(backend):
    with running(
        LOCAL_APP,
        "--route",
        f"^/ws http:127.0.0.1:{backend.port}",
        "--shutdown-timeout",
        "0.5",
    ) as server:
        with connect(f"{server.ws_url}/ws") as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
            assert server.stop() == 0
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
        assert_no_traceback(server)


# -- uwsgi: --------------------------------------------------------------------


def test_a_websocket_through_a_uwsgi_route(front, uwsgi_backend):
    with connect(f"{front.ws_url}/u/ws?room=1") as ws:
        for i in range(100):
            ws.send(f"u{i}")
            assert ws.recv(timeout=10) == f"u{i}"
    modifier1, modifier2, found, _ = uwsgi_backend.requests[-1]
    assert (modifier1, modifier2) == (0, 7)
    assert found["PATH_INFO"] == "/u/ws"
    assert found["QUERY_STRING"] == "room=1"
    assert found["REQUEST_URI"] == "/u/ws?room=1"
    assert found["REMOTE_ADDR"] == "127.0.0.1"
    assert found["HTTP_UPGRADE"] == "websocket"
    port = uwsgi_backend.port
    front.wait_for_log(
        rf'"GET /u/ws\?room=1 HTTP/1.1" -> uwsgi:127\.0\.0\.1:{port},0,7 101'
    )


def test_a_chunked_post_reaches_a_uwsgi_backend_de_chunked(front):
    with open_socket(front.port) as sock:
        sock.sendall(
            request_bytes(
                "POST",
                "/u/post",
                [("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")],
                chunked(b"hello", b" ", b"uwsgi"),
            )
        )
        response = read_response(Reader(sock))
    assert response.status == 200
    assert response.header("Connection") == "close"
    answer = json_body(response.body)
    assert answer["body"] == "hello uwsgi"
    assert answer["vars"]["CONTENT_LENGTH"] == "11"
    assert answer["vars"]["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_TRANSFER_ENCODING" not in answer["vars"]


def test_we_answer_100_continue_for_a_uwsgi_backend(front):
    with open_socket(front.port) as sock:
        reader = Reader(sock)
        sock.sendall(
            request_bytes(
                "PUT", "/u/put", [("Content-Length", "4"), ("Expect", "100-continue")]
            )
        )
        assert read_head(reader).status == 100
        sock.sendall(b"data")
        response = read_response(reader)
    answer = json_body(response.body)
    assert (answer["body"], answer["vars"]["CONTENT_LENGTH"]) == ("data", "4")
    assert "HTTP_EXPECT" not in answer["vars"]


def _uwsgi_port(server: ServerProcess) -> int:
    line = server.wait_for_log(r"on uwsgi://127\.0\.0\.1:\d+/")
    return int(line.rsplit(":", 1)[1].rstrip("/"))


def _speaks_uwsgi(port: int) -> bool:
    """Whether a geows --uwsgi-socket listener answers a uwsgi packet."""
    from geows.uwsgi_proto import encode_packet

    packet = encode_packet(
        {"REQUEST_METHOD": "GET", "REQUEST_URI": "/api", "PATH_INFO": "/api"}
    )
    # An HTTP listener would wait for the end of a head that never comes.
    with open_socket(port, timeout=3) as sock:
        sock.sendall(packet)
        try:
            return read_head(Reader(sock)).status == 200
        except (EOFError, OSError, ValueError):
            return False


def test_a_websocket_through_a_uwsgi_route_to_geows():
    with running(BACKEND_APP, "--uwsgi-socket", "127.0.0.1:0") as b:
        port = _uwsgi_port(b)
        if not _speaks_uwsgi(port):
            pytest.skip("geows' --uwsgi-socket listener does not speak uwsgi yet")
        with (
            running(LOCAL_APP, "--route", f"^/ws uwsgi:127.0.0.1:{port}") as server,
            connect(f"{server.ws_url}/ws") as ws,
        ):
            for i in range(200):
                ws.send(f"g{i}")
                assert ws.recv(timeout=10) == f"g{i}"
