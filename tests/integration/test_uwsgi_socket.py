"""``--uwsgi-socket`` behind the real nginx (``uwsgi_pass``), TCP and Unix socket.

nginx is ``tests.frontends.nginx_uwsgi``: ``include uwsgi_params;
uwsgi_pass ADDRESS;`` and ``uwsgi_read_timeout``, no websocket-specific
lines. Requests go to nginx; nginx speaks the uwsgi protocol to ``geows
serve``.

What nginx 1.22 sends (checked on the wire): the ``uwsgi_params`` vars
(REQUEST_METHOD, REQUEST_URI, PATH_INFO decoded, QUERY_STRING, empty
CONTENT_TYPE/CONTENT_LENGTH without a body, SERVER_PROTOCOL, REQUEST_SCHEME,
REMOTE_ADDR/REMOTE_PORT of the client, SERVER_NAME/SERVER_PORT, HTTP_HOST),
then every request header line as an HTTP_* var (a repeated line as a
repeated var), ``HTTP_UPGRADE`` and ``HTTP_CONNECTION`` exactly as the
client sent them (also ``HTTP_EXPECT``, which nginx has already answered).
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Optional, Union

import pytest
import websocket
from websockets.sync.client import connect

from geows.uwsgi_proto import encode_packet
from tests.frontends import FrontProcess, nginx_uwsgi
from tests.integration.support import (
    RawWebSocket,
    Reader,
    Response,
    assert_no_traceback,
    read_response,
    request_bytes,
    serve,
)
from tests.servers import APPS, EXAMPLES, ServerProcess

pytestmark = pytest.mark.timeout(30)


# -- servers -------------------------------------------------------------------


def uwsgi_port(server: ServerProcess) -> int:
    """The port of the server's uwsgi listener (``uwsgi://127.0.0.1:PORT/``)."""
    return int(server.url("uwsgi://127.0.0.1:").rstrip("/").rsplit(":", 1)[1])


#: ``with served(app, *args) as server:`` -- stopped, exit status checked.
served = contextmanager(serve)


@pytest.fixture(scope="module")
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="geows-uwsgi-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def http_app() -> Iterator[ServerProcess]:
    yield from serve(str(APPS / "http_app.py"), "--uwsgi-socket", "127.0.0.1:0")


@pytest.fixture(scope="module")
def native_app(sock_dir: Path) -> Iterator[ServerProcess]:
    """The native API's test app on a TCP and a Unix uwsgi socket at once."""
    yield from serve(
        str(APPS / "native.py"),
        "--uwsgi-socket",
        "127.0.0.1:0",
        "--socket",  # uWSGI's spelling
        str(sock_dir / "native.sock"),
    )


@pytest.fixture(scope="module", params=["tcp", "unix"])
def front(
    request: pytest.FixtureRequest, http_app: ServerProcess, sock_dir: Path
) -> Iterator[tuple[FrontProcess, ServerProcess]]:
    """nginx in front of http_app, over TCP or over a Unix socket."""
    if request.param == "tcp":
        with nginx_uwsgi(uwsgi_port(http_app)) as nginx:
            yield nginx, http_app
        return
    path = sock_dir / "http.sock"
    app = str(APPS / "http_app.py")
    with served(app, "--uwsgi-socket", str(path)) as server:
        assert server.url("uwsgi://") == f"uwsgi://unix:{path}"
        with nginx_uwsgi(path) as nginx:
            yield nginx, server


def exchange(
    port: int,
    method: str,
    target: str,
    headers: Optional[list[tuple[str, str]]] = None,
    body: bytes = b"",
) -> Response:
    """One request through nginx; its final response (after any 100)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        headers = [("Connection", "close"), *(headers or [])]
        sock.sendall(request_bytes(method, target, headers, body))
        reader = Reader(sock)
        while True:
            response = read_response(reader, method)
            if response.status != 100:
                return response


# -- HTTP through nginx --------------------------------------------------------


def test_a_get_reaches_the_app_with_the_clients_address(front):
    nginx, server = front
    response = exchange(nginx.port, "GET", "/env?x=1&y=%20", [("X-Test", "hi")])
    assert response.status == 200
    env = json.loads(response.body)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/env"
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["HTTP_X_TEST"] == "hi"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["CONTENT_LENGTH"] is None  # nginx sent it empty
    # Over the Unix socket geows' peer has no address at all: this 127.0.0.1
    # is nginx's REMOTE_ADDR, the client's.
    line = server.wait_for_log(r'"GET /env\?x=1&y=%20 HTTP/1.1" 200')
    assert line.split(" geows.access INFO ")[1].startswith("127.0.0.1 - ")


def test_a_post_body_reaches_the_app(front):
    nginx, _ = front
    body = b"line one\nline two\n" * 1000
    response = exchange(
        nginx.port,
        "POST",
        "/body?mode=readline",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        body,
    )
    assert response.status == 200
    assert "".join(json.loads(response.body)).encode("latin-1") == body


def test_a_chunked_request_body_reaches_the_app_de_chunked(front):
    nginx, _ = front
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    response = exchange(
        nginx.port, "POST", "/body", [("Transfer-Encoding", "chunked")], chunked
    )
    assert response.status == 200
    assert json.loads(response.body) == ["hello world"]


def test_a_body_sent_after_expect_100_continue_reaches_the_app(front):
    """nginx answers the 100 and passes HTTP_EXPECT on; geows sends none."""
    nginx, _ = front
    response = exchange(
        nginx.port,
        "POST",
        "/body",
        [("Expect", "100-continue"), ("Content-Length", "4")],
        b"data",
    )
    assert response.status == 200
    assert json.loads(response.body) == ["data"]


def test_a_streamed_response_of_unknown_length_arrives_whole(front):
    nginx, _ = front
    response = exchange(nginx.port, "GET", "/chunks")
    assert response.status == 200
    assert response.body == b"first,second,third"


def test_head_and_204_have_no_body(front):
    nginx, _ = front
    head = exchange(nginx.port, "HEAD", "/one")
    assert head.status == 200
    assert head.header("Content-Length") == "6"
    empty = exchange(nginx.port, "GET", "/nocontent")
    assert empty.status == 204
    assert empty.body == b""


def test_an_app_error_is_a_500_through_nginx(front):
    nginx, server = front
    response = exchange(nginx.port, "GET", "/boom")
    assert response.status == 500
    server.wait_for_log("kaboom before start_response")


def test_nginx_logged_no_upstream_errors(front):
    nginx, _ = front
    exchange(nginx.port, "GET", "/one")
    log = nginx.log()
    assert "upstream prematurely closed" not in log
    assert "[error]" not in log, log


# -- a packet straight to the geows process ------------------------------------


def test_a_packet_sent_directly_is_served_with_its_remote_addr(http_app):
    vars = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/env",
        "PATH_INFO": "/env",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "REMOTE_ADDR": "198.51.100.23",
        "REMOTE_PORT": "6543",
        "SERVER_NAME": "example.org",
        "SERVER_PORT": "443",
        "HTTPS": "on",
        "HTTP_HOST": "example.org",
    }
    port = uwsgi_port(http_app)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode_packet(vars))
        response = read_response(Reader(sock))
    assert response.version == "HTTP/1.1"
    env = json.loads(response.body)
    assert env["REMOTE_ADDR"] == "198.51.100.23"
    assert env["wsgi.url_scheme"] == "https"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    http_app.wait_for_log(r'^.* 198\.51\.100\.23 - "GET /env HTTP/1\.0" 200 ')


# -- websockets through nginx --------------------------------------------------


@pytest.fixture(scope="module", params=["tcp", "unix"])
def ws_front(
    request: pytest.FixtureRequest, native_app: ServerProcess, sock_dir: Path
) -> Iterator[tuple[FrontProcess, ServerProcess]]:
    if request.param == "tcp":
        upstream: Union[int, Path] = uwsgi_port(native_app)
    else:
        upstream = sock_dir / "native.sock"
    with nginx_uwsgi(upstream) as nginx:
        yield nginx, native_app


def test_a_websocket_echoes_through_nginx(ws_front):
    nginx, server = ws_front
    url = f"ws://127.0.0.1:{nginx.port}/echo?tag=nginx-echo"
    with connect(url, subprotocols=["superchat"], open_timeout=10) as ws:
        assert ws.subprotocol == "superchat"
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01" * 40000)
        assert ws.recv(timeout=10) == b"\x00\x01" * 40000
    server.wait_for_log("APP nginx-echo iteration ended close_code=1000")
    assert_no_traceback(server)


def test_the_websocket_sees_the_clients_address_and_the_log_shows_it(ws_front):
    nginx, server = ws_front
    url = f"ws://127.0.0.1:{nginx.port}/info?tag=nginx-info"
    with connect(url, open_timeout=10) as ws:
        info = json.loads(ws.recv(timeout=10))
    assert info["remote_addr"] == "127.0.0.1"
    assert info["path"] == "/info"
    assert info["query"] == "tag=nginx-info"
    line = server.wait_for_log(r'"WEBSOCKET /info\?tag=nginx-info" 1000')
    assert line.split(" geows.access INFO ")[1].startswith("127.0.0.1 - ")


def test_an_upgrade_with_two_connection_lines_passes_through_nginx(ws_front):
    """``Connection: Upgrade`` and ``Connection: keep-alive`` lines: nginx
    sends two HTTP_CONNECTION vars, which geows joins.
    """
    nginx, _ = ws_front
    with RawWebSocket(nginx.port, "/echo?tag=ff", [("Connection", "keep-alive")]) as ws:
        assert ws.handshake.status == 101
        ws.send_text("ff")
        assert ws.recv_data_frame().payload == b"ff"


def test_a_websocket_client_library_also_works(ws_front):
    nginx, _ = ws_front
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{nginx.port}/echo?tag=wsclient", timeout=10
    )
    try:
        ws.send("from websocket-client")
        assert ws.recv() == "from websocket-client"
    finally:
        ws.close()


# -- the uWSGI examples, unmodified, behind nginx -------------------------------


@contextmanager
def example_behind_nginx(name: str) -> Iterator[tuple[FrontProcess, ServerProcess]]:
    """examples/uwsgi/NAME behind nginx, as uWSGI would be: ``--socket``."""
    app = str(EXAMPLES / "uwsgi" / name)
    with ExitStack() as stack:
        server = stack.enter_context(served(app, "--socket", "127.0.0.1:0"))
        nginx = stack.enter_context(nginx_uwsgi(uwsgi_port(server)))
        yield nginx, server


@pytest.fixture(scope="module")
def uwsgi_echo() -> Iterator[tuple[FrontProcess, ServerProcess]]:
    with example_behind_nginx("echo.py") as both:
        yield both


def test_the_uwsgi_echo_example_works_behind_nginx(uwsgi_echo):
    nginx, server = uwsgi_echo
    with connect(f"ws://127.0.0.1:{nginx.port}/", open_timeout=10) as ws:
        for text in ("one", "two", "three"):
            ws.send(text)
            assert ws.recv(timeout=10) == text
    server.wait_for_log(r'127\.0\.0\.1 - "WEBSOCKET /" ')
    assert_no_traceback(server)


@pytest.fixture(scope="module")
def uwsgi_guarded() -> Iterator[tuple[FrontProcess, ServerProcess]]:
    with example_behind_nginx("guarded.py") as both:
        yield both


def test_the_guarded_example_refuses_and_accepts_behind_nginx(uwsgi_guarded):
    nginx, server = uwsgi_guarded
    refused = exchange(nginx.port, "GET", "/?token=wrong")
    assert refused.status == 403
    not_upgrade = exchange(nginx.port, "GET", "/?token=secret")
    assert not_upgrade.status == 426
    url = f"ws://127.0.0.1:{nginx.port}/?token=secret&who=nginx"
    with connect(url, open_timeout=10) as ws:
        ws.send("guarded")
        assert ws.recv(timeout=10) == "guarded"
    server.wait_for_log("guarded: session of nginx ended after 1 messages")


def test_keepalive_pings_keep_nginx_from_cutting_an_idle_websocket():
    """nginx closes an upgraded connection that sends nothing for
    ``uwsgi_read_timeout``; geows' pings are traffic, so a quiet client
    survives a longer silence (the migration guide's advice).
    """
    app = str(EXAMPLES / "uwsgi" / "echo.py")
    args = ("--socket", "127.0.0.1:0", "--websockets-ping-freq", "0.3")
    with ExitStack() as stack:
        server = stack.enter_context(served(app, *args))
        upstream = uwsgi_port(server)
        nginx = stack.enter_context(nginx_uwsgi(upstream, read_timeout="1s"))
        url = f"ws://127.0.0.1:{nginx.port}/"
        ws = stack.enter_context(connect(url, open_timeout=10))
        time.sleep(2.5)  # silence longer than uwsgi_read_timeout
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"
