"""UwsgiConnection: one uwsgi packet in, one raw HTTP response (or a WebSocket) out.

The test plays the front server (nginx ``uwsgi_pass``) on one end of a
socket pair: it writes a packet made with ``encode_packet`` (the vars nginx
1.22's ``uwsgi_params`` sends, as seen on the wire) and the body, then reads
what geows answers until it closes. The last tests go through a real
:class:`geows.server.Server` on loopback TCP and a Unix socket.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from http import HTTPStatus
from typing import Any, Callable, Optional
from urllib.parse import unquote

import gevent
import gevent.socket
import pytest

import geows
from geows import uwsgi_compat
from geows.frames import OP_BINARY, OP_CLOSE, OP_TEXT
from geows.handshake import accept_key
from geows.keepalive import Registry
from geows.listeners import Listener
from geows.server import Server
from geows.uwsgi_conn import UwsgiConnection, url_scheme
from geows.uwsgi_proto import UwsgiLimits, encode_packet
from geows.wsgi import Settings
from tests.connection.conftest import QUIET, WAIT, FarEnd, frame

pytestmark = pytest.mark.timeout(15)

#: The front server's peer address as the backend's socket sees it.
FRONT_ADDR = ("127.0.0.1", 40000)
KEY = base64.b64encode(b"0123456789abcdef").decode("ascii")


def nginx_vars(method: str = "GET", uri: str = "/", **extra: str) -> dict[str, str]:
    """The vars nginx 1.22 sends with ``include uwsgi_params``, in its order."""
    path, _, query = uri.partition("?")
    return {
        "QUERY_STRING": query,
        "REQUEST_METHOD": method,
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": "",
        "REQUEST_URI": uri,
        "PATH_INFO": unquote(path),
        "DOCUMENT_ROOT": "/usr/share/nginx/html",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_SCHEME": "http",
        "REMOTE_ADDR": "203.0.113.7",
        "REMOTE_PORT": "51234",
        "SERVER_PORT": "80",
        "SERVER_NAME": "example.org",
        "HTTP_HOST": "example.org",
        **extra,
    }


def upgrade_vars(uri: str = "/ws", **extra: str) -> dict[str, str]:
    """A browser's upgrade request as nginx passes it (headers untouched)."""
    headers = {
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    return nginx_vars("GET", uri, **{**headers, **extra})


class Front(FarEnd):
    """The front server's end of the connection."""

    def request(self, vars: dict[str, str], body: bytes = b"") -> None:
        self.send(encode_packet(vars) + body)

    def read_all(self, timeout: float = WAIT) -> bytes:
        """Everything geows writes until it closes; then close this end too,
        as nginx does once it has the response (geows waits for that).
        """
        data = bytearray(self.peer.buf)
        self.peer.buf.clear()
        with gevent.Timeout(timeout):
            while True:
                try:
                    piece = self.sock.recv(65536)
                except ConnectionResetError:
                    break
                if not piece:
                    break
                data += piece
        self.sock.shutdown(socket.SHUT_WR)
        return bytes(data)

    def response(self, timeout: float = WAIT) -> tuple[str, dict[str, str], bytes]:
        """(status line, headers by lower-cased name, body to EOF)."""
        head, _, body = self.read_all(timeout).partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        return status, headers, body


@pytest.fixture
def front() -> Any:
    """Factory: ``front(app, **settings) -> Front`` with the connection running."""
    made: list[tuple[Front, Registry]] = []

    def make(app: Callable[..., Any], **kwargs: Any) -> Front:
        server_sock, client_sock = gevent.socket.socketpair()
        registry = Registry(QUIET)
        settings = Settings(
            app=app,
            timeouts=QUIET,
            registry=registry,
            server_name="backend.local",
            server_port="3031",
            **kwargs,
        )
        conn = UwsgiConnection(settings, server_sock, FRONT_ADDR)
        job = gevent.spawn(conn.run)
        f = Front(client_sock, conn, job)
        made.append((f, registry))
        return f

    yield make
    for f, registry in made:
        f.job.kill()
        f.sock.close()
        registry.stop()


class Recorder:
    """A WSGI app that records its environ (and the body it read)."""

    def __init__(self, body: bytes = b"ok", read: Optional[int] = None) -> None:
        self.environ: dict[str, Any] = {}
        self.body = body
        self.read = read  # bytes of wsgi.input to read; -1 all, None none
        self.got = b""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.environ = dict(environ)
        if self.read is not None:
            self.got = environ["wsgi.input"].read(self.read)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [self.body]


# -- ordinary requests -------------------------------------------------------


def test_a_get_with_a_query_string_is_answered_in_raw_http_and_closed(front):
    app = Recorder(b"hello")
    f = front(app)
    f.request(nginx_vars("GET", "/a%20b/c?x=1&y=2", HTTP_X_FOO="bar"))
    status, headers, body = f.response()
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == "5"
    assert body == b"hello"
    f.job.join(WAIT)
    assert f.job.successful()
    env = app.environ
    assert env["REQUEST_METHOD"] == "GET"
    assert env["REQUEST_URI"] == "/a%20b/c?x=1&y=2"
    assert env["PATH_INFO"] == "/a b/c"
    assert env["QUERY_STRING"] == "x=1&y=2"
    assert env["HTTP_X_FOO"] == "bar"


def test_the_environ_is_the_packet_vars_plus_wsgi_keys(front):
    app = Recorder()
    f = front(app)
    vars = nginx_vars("GET", "/env")
    f.request(vars)
    f.response()
    env = app.environ
    # Every var as nginx sent it, but the empty CONTENT_* (absent instead).
    for name, value in vars.items():
        if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            assert name not in env
        else:
            assert env[name] == value, name
    # The client's address, not the front server's.
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["REMOTE_PORT"] == "51234"
    assert env["SERVER_NAME"] == "example.org"
    assert env["SERVER_PORT"] == "80"
    assert env["SCRIPT_NAME"] == ""
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input"].read() == b""
    assert env["geows.connection"] is f.conn
    assert all(isinstance(v, str) for k, v in env.items() if k.isupper())


def test_http_content_duplicates_are_left_out_of_the_environ(front):
    app = Recorder(read=-1)
    f = front(app)
    f.request(
        nginx_vars(
            "POST",
            "/form",
            CONTENT_TYPE="text/plain",
            CONTENT_LENGTH="3",
            HTTP_CONTENT_TYPE="text/plain",
            HTTP_CONTENT_LENGTH="3",
        ),
        b"abc",
    )
    f.response()
    assert app.environ["CONTENT_TYPE"] == "text/plain"
    assert app.environ["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in app.environ
    assert "HTTP_CONTENT_LENGTH" not in app.environ


def test_what_the_front_left_out_comes_from_the_target_listener_and_socket(front):
    app = Recorder()
    f = front(app)
    f.request({"REQUEST_METHOD": "GET", "REQUEST_URI": "/p%2Fq/r?k=v"})
    status, _, _ = f.response()
    assert status == "HTTP/1.1 200 OK"
    env = app.environ
    assert env["PATH_INFO"] == "/p/q/r"
    assert env["QUERY_STRING"] == "k=v"
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "backend.local"
    assert env["SERVER_PORT"] == "3031"
    assert env["REMOTE_ADDR"] == "127.0.0.1"  # the socket's peer
    assert env["REMOTE_PORT"] == "40000"


def test_an_empty_server_name_is_the_listeners_and_the_path_keeps_script_name(
    front,
):
    app = Recorder()
    f = front(app)
    f.request(
        {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "/app",
            "REQUEST_URI": "/app/x/y",
            "SERVER_NAME": "",
        }
    )
    f.response()
    env = app.environ
    assert env["SERVER_NAME"] == "backend.local"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/x/y")


@pytest.mark.parametrize(
    ("vars", "scheme"),
    [
        ({}, "http"),
        ({"REQUEST_SCHEME": "https"}, "https"),
        ({"HTTPS": "on", "REQUEST_SCHEME": "https"}, "https"),
        ({"HTTPS": "1"}, "https"),
        ({"HTTPS": "off", "REQUEST_SCHEME": "https"}, "http"),
        ({"UWSGI_SCHEME": "https", "REQUEST_SCHEME": "http"}, "https"),
        ({"UWSGI_SCHEME": "HTTP", "HTTPS": "on"}, "http"),
        ({"UWSGI_SCHEME": "gopher", "REQUEST_SCHEME": "https"}, "https"),
    ],
)
def test_url_scheme_follows_uwsgi_scheme_then_https_then_request_scheme(vars, scheme):
    assert url_scheme(vars) == scheme


def test_the_url_scheme_in_the_environ_comes_from_the_vars(front):
    app = Recorder()
    f = front(app)
    f.request(nginx_vars("GET", "/", HTTPS="on", REQUEST_SCHEME="https"))
    f.response()
    assert app.environ["wsgi.url_scheme"] == "https"


def test_a_post_body_is_content_length_bytes_after_the_packet(front):
    app = Recorder(read=-1)
    f = front(app)
    body = b"name=value&other=" + b"x" * 100_000
    vars = nginx_vars(
        "POST",
        "/form",
        CONTENT_TYPE="application/x-www-form-urlencoded",
        CONTENT_LENGTH=str(len(body)),
    )
    # In pieces, the packet split across writes like any TCP stream.
    packet = encode_packet(vars)
    f.send(packet[:7])
    gevent.sleep(0.01)
    f.send(packet[7:] + body[:1000])
    gevent.sleep(0.01)
    f.send(body[1000:])
    status, _, _ = f.response()
    assert status == "HTTP/1.1 200 OK"
    assert app.got == body
    assert app.environ["CONTENT_LENGTH"] == str(len(body))


def test_the_body_ends_at_content_length_even_if_more_bytes_follow(front):
    app = Recorder(read=-1)
    f = front(app)
    f.request(nginx_vars("PUT", "/x", CONTENT_LENGTH="4"), b"datamore")
    f.response()
    assert app.got == b"data"


def test_expect_100_continue_is_not_answered_the_front_did_it(front):
    app = Recorder(read=-1)
    f = front(app)
    f.request(
        nginx_vars("POST", "/x", CONTENT_LENGTH="2", HTTP_EXPECT="100-continue"),
        b"hi",
    )
    status, _, _ = f.response()
    assert status == "HTTP/1.1 200 OK"  # no "100 Continue" before it
    assert app.got == b"hi"
    assert app.environ["HTTP_EXPECT"] == "100-continue"


def test_a_response_of_unknown_length_is_not_chunked_and_ends_with_the_close(front):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first,"
        yield b"second"

    f = front(app)
    f.request(nginx_vars("GET", "/gen"))
    status, headers, body = f.response()
    assert status == "HTTP/1.1 200 OK"
    assert "transfer-encoding" not in headers
    assert "content-length" not in headers
    assert body == b"first,second"


def test_the_status_line_says_http_1_1_whatever_the_client_spoke(front):
    app = Recorder(b"ok")
    f = front(app)
    f.request(nginx_vars("GET", "/", SERVER_PROTOCOL="HTTP/2.0"))
    status, _, body = f.response()
    assert status == "HTTP/1.1 200 OK"
    assert body == b"ok"
    assert app.environ["SERVER_PROTOCOL"] == "HTTP/2.0"


def test_head_gets_the_headers_without_the_body(front):
    app = Recorder(b"a body")
    f = front(app)
    f.request(nginx_vars("HEAD", "/"))
    status, headers, body = f.response()
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == "6"
    assert body == b""


def test_an_app_error_is_a_500(front, caplog):
    def app(environ, start_response):
        raise RuntimeError("boom")

    f = front(app)
    f.request(nginx_vars("GET", "/"))
    status, _, body = f.response()
    assert status == "HTTP/1.1 500 Internal Server Error"
    assert b"boom" not in body
    f.job.join(WAIT)
    assert "error in the application" in caplog.text
    caplog.clear()  # the one error this test expects


def test_the_access_log_shows_the_client_address_from_remote_addr(front, caplog):
    f = front(Recorder())
    f.request(nginx_vars("GET", "/logged?q=1"))
    f.response()
    f.job.join(WAIT)
    lines = [r.getMessage() for r in caplog.records if r.name == "geows.access"]
    assert lines, caplog.text
    assert lines[-1].startswith('203.0.113.7 - "GET /logged?q=1 HTTP/1.1" 200 2 ')


def test_a_body_over_limit_post_is_a_413(front):
    app = Recorder(read=-1)
    f = front(app, max_body=10)
    f.request(nginx_vars("POST", "/", CONTENT_LENGTH="11"), b"x" * 11)
    status, _, _ = f.response()
    assert status == "HTTP/1.1 413 Request Entity Too Large"
    assert app.environ == {}


# -- refused packets -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # modifier1 5 (PSGI): not a WSGI request
        (encode_packet({"REQUEST_METHOD": "GET"}, modifier1=5), HTTPStatus(501)),
        # a var whose value runs past the packet
        (b"\x00\x08\x00\x00\x01\x00A\x09\x00abc", HTTPStatus(400)),
        # no REQUEST_METHOD
        (encode_packet({"REQUEST_URI": "/"}), HTTPStatus(400)),
        # CONTENT_LENGTH not a number
        (
            encode_packet({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "1e3"}),
            HTTPStatus(400),
        ),
        # more vars than max_vars (4 here)
        (encode_packet({f"V{i}": "x" for i in range(5)}), HTTPStatus(431)),
        # a datasize over max_packet (1000 here): refused from the header
        (b"\x00\xe9\x03\x00", HTTPStatus(431)),
    ],
    ids=["modifier1", "overrun", "no-method", "bad-length", "vars", "size"],
)
def test_a_malformed_packet_gets_its_status_as_plain_http_and_the_close(
    front, data, status
):
    app = Recorder()
    f = front(app, uwsgi_limits=UwsgiLimits(max_vars=4, max_packet=1000))
    f.send(data)
    line, headers, _ = f.response()
    assert line == f"HTTP/1.1 {status.value} {status.phrase}"
    assert headers["connection"] == "close"
    assert app.environ == {}
    f.job.join(WAIT)
    assert f.job.successful()


def test_a_slow_front_hitting_the_header_deadline_gets_a_408(front):
    app = Recorder()
    f = front(app, header_timeout=0.2)
    f.send(encode_packet(nginx_vars())[:20])  # and then nothing
    status, _, _ = f.response()
    assert status == "HTTP/1.1 408 Request Timeout"
    assert app.environ == {}


def test_a_silent_front_is_closed_at_the_header_deadline_without_a_word(front):
    f = front(Recorder(), header_timeout=0.2)
    assert f.read_all() == b""
    f.job.join(WAIT)
    assert f.job.successful()


# -- websockets ----------------------------------------------------------------


def native_echo(environ, start_response):
    ws = geows.accept(environ)
    for message in ws:
        ws.send(message)
    return []


def uwsgi_echo(environ, start_response):
    uwsgi_compat.websocket_handshake(
        environ["HTTP_SEC_WEBSOCKET_KEY"], environ.get("HTTP_ORIGIN", "")
    )
    while True:
        try:
            message = uwsgi_compat.websocket_recv()
        except OSError:
            return []
        uwsgi_compat.websocket_send(message)


@pytest.mark.parametrize("app", [native_echo, uwsgi_echo], ids=["native", "uwsgi"])
def test_an_upgrade_is_answered_101_and_frames_flow_both_ways(front, app):
    f = front(app)
    f.request(upgrade_vars("/ws?room=1"))
    head = f.read_head().decode("latin-1").split("\r\n")
    assert head[0] == "HTTP/1.1 101 Switching Protocols"
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}" in head
    assert "Upgrade: websocket" in head
    f.peer.send_frame(OP_TEXT, "hello")
    assert f.peer.read_message() == (OP_TEXT, b"hello")
    if app is native_echo:
        f.peer.send_frame(OP_BINARY, b"\x00\xff")
        assert f.peer.read_message() == (OP_BINARY, b"\x00\xff")
    f.peer.send_close(1000)
    assert f.peer.read_frame() == (OP_CLOSE, b"\x03\xe8")
    assert f.peer.read_frame() is None  # then the server closes
    f.job.join(WAIT)
    assert f.job.successful()


def test_frames_sent_right_behind_the_packet_are_not_lost(front):
    f = front(native_echo)
    f.request(upgrade_vars(), frame(OP_TEXT, "early"))
    f.read_head()
    assert f.peer.read_message() == (OP_TEXT, b"early")
    f.peer.send_close(1000)
    assert f.peer.read_frame()[0] == OP_CLOSE


def test_a_firefox_style_connection_header_passes_the_handshake(front):
    f = front(native_echo)
    f.request(upgrade_vars(HTTP_CONNECTION="keep-alive, Upgrade"))
    assert f.read_head().startswith(b"HTTP/1.1 101 ")


def test_connection_header_lines_sent_as_repeated_vars_pass_the_handshake(front):
    """nginx sends one var per header line: two HTTP_CONNECTION vars here."""
    f = front(native_echo)
    vars = upgrade_vars(HTTP_CONNECTION="keep-alive")
    f.send(encode_packet([*vars.items(), ("HTTP_CONNECTION", "Upgrade")]))
    assert f.read_head().startswith(b"HTTP/1.1 101 ")


def test_the_websocket_sees_the_client_address_and_logs_it(front, caplog):
    seen = []

    def app(environ, start_response):
        ws = geows.accept(environ)
        seen.append(ws.remote_addr)
        ws.close(1000)
        return []

    f = front(app)
    f.request(upgrade_vars("/who"))
    f.read_head()
    assert f.peer.read_frame()[0] == OP_CLOSE
    f.peer.send_close(1000)
    f.job.join(WAIT)
    assert seen == ["203.0.113.7"]
    lines = [r.getMessage() for r in caplog.records if r.name == "geows.access"]
    assert lines[-1].startswith('203.0.113.7 - "WEBSOCKET /who" 1000 ')


def test_an_upgrade_without_upgrade_header_is_refused_with_426(front):
    f = front(native_echo)
    vars = upgrade_vars()
    del vars["HTTP_UPGRADE"]
    f.request(vars)
    status, headers, _ = f.response()
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert headers["upgrade"] == "websocket"


# -- through a Server: the listener picks UwsgiConnection ----------------------


def _serve(listener: Listener, app: Any) -> Server:
    server = Server(Settings(app=app, timeouts=QUIET), [listener])
    server.start()
    return server


def _exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    out = bytearray()
    with gevent.Timeout(WAIT):
        while True:
            piece = sock.recv(65536)
            if not piece:
                return bytes(out)
            out += piece


def _environ_app(environ, start_response):
    keys = ("REMOTE_ADDR", "PATH_INFO", "wsgi.url_scheme")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({k: environ[k] for k in keys}).encode()]


def test_a_uwsgi_tcp_listener_serves_packets():
    server = _serve(Listener.uwsgi("127.0.0.1:0"), _environ_app)
    try:
        port = server.listeners[0].address[1]  # type: ignore[index]
        with gevent.socket.create_connection(("127.0.0.1", port)) as sock:
            answer = _exchange(sock, encode_packet(nginx_vars("GET", "/tcp")))
    finally:
        server.stop(timeout=1)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(body) == {
        "REMOTE_ADDR": "203.0.113.7",
        "PATH_INFO": "/tcp",
        "wsgi.url_scheme": "http",
    }


def test_a_uwsgi_unix_listener_serves_packets(tmp_path):
    path = str(tmp_path / "geows.sock")
    server = _serve(Listener.uwsgi(path), _environ_app)
    try:
        with gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            answer = _exchange(sock, encode_packet(nginx_vars("GET", "/unix")))
    finally:
        server.stop(timeout=1)
    assert not os.path.exists(path)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(body)["PATH_INFO"] == "/unix"


def test_an_unread_body_does_not_reset_the_response_away():
    """The app ignores a large body: geows half-closes and drains it
    (lingering close) instead of closing with unread input, which would
    answer the front server with a reset that can destroy the response
    (without the drain this front reads ECONNRESET instead of the body).
    """
    big = b"r" * (1 << 20)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [big]

    server = _serve(Listener.uwsgi("127.0.0.1:0"), app)
    try:
        port = server.listeners[0].address[1]  # type: ignore[index]
        body = b"b" * (512 * 1024)
        vars = nginx_vars("POST", "/", CONTENT_LENGTH=str(len(body)))
        with gevent.socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(encode_packet(vars))
            sending = gevent.spawn(sock.sendall, body)
            gevent.sleep(0.2)  # the response is written while the body waits
            answer = bytearray()
            with gevent.Timeout(WAIT):
                while True:
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    answer += piece
            sending.join(WAIT)
    finally:
        server.stop(timeout=1)
    assert answer.endswith(b"\r\n\r\n" + big)
