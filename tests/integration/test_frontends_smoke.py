"""The front fixtures work: real nginx and HAProxy in front of ``geows serve``.

Plain HTTP and a websocket echo go through nginx ``proxy_pass`` and HAProxy
``mode http``; geows' keepalive pings hold an idle websocket open through
both, where the same websocket without pings is closed by the front.
A one-connection recorder also stands in for geows to show the bytes a
front sends (uwsgi packets, PROXY headers); geows itself behind them is
tested in test_uwsgi_socket.py and the proxy tests. The last tests keep
docs/deploy/ and the fixtures' configurations the same.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Optional, Union

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from geows import proxy_protocol
from geows.uwsgi_proto import parse_packet
from tests.frontends import (
    HAPROXY_CONFIG,
    NGINX_PROXY_DIRECTIVES,
    NGINX_UWSGI_DIRECTIVES,
    FrontProcess,
    free_port,
    haproxy_http,
    nginx_proxy,
    nginx_uwsgi,
)
from tests.servers import APPS, EXAMPLES, ROOT, ServerProcess, running

pytestmark = pytest.mark.timeout(60)

ECHO = EXAMPLES / "echo.py"
DEPLOY = ROOT / "docs" / "deploy"

# A front, given the upstream port and an idle timeout for websockets.
Front = Callable[[int, str], AbstractContextManager[FrontProcess]]
FRONTS: dict[str, Front] = {
    "nginx": lambda port, idle: nginx_proxy(port, read_timeout=idle),
    "haproxy": lambda port, idle: haproxy_http(port, tunnel_timeout=idle),
}


@pytest.fixture(params=sorted(FRONTS))
def front_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def http_app() -> Iterator[ServerProcess]:
    with running(APPS / "http_app.py") as server:
        yield server


@pytest.fixture(scope="module")
def echo_app() -> Iterator[ServerProcess]:
    with running(ECHO) as server:
        yield server


def get(url: str, headers: Optional[dict[str, str]] = None) -> tuple[int, bytes]:
    """Status and body of a GET, error statuses included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


# -- geows behind the fronts --------------------------------------------------


def test_an_http_request_reaches_geows_through_the_front(
    front_kind: str, http_app: ServerProcess
) -> None:
    with FRONTS[front_kind](http_app.port, "1h") as front:
        status, body = get(front.url + "/env?via=front", {"X-Test": "through"})
        assert status == 200, front.log()
    info = json.loads(body)
    assert info["PATH_INFO"] == "/env"
    assert info["QUERY_STRING"] == "via=front"
    assert info["HTTP_X_TEST"] == "through"
    assert info["REMOTE_ADDR"] == "127.0.0.1"  # the front: no --trusted-proxies


def test_a_websocket_echoes_through_the_front(
    front_kind: str, echo_app: ServerProcess
) -> None:
    with FRONTS[front_kind](echo_app.port, "1h") as front:
        status, page = get(front.url + "/")
        assert status == 200, front.log()
        assert b"geows echo" in page
        with connect(front.ws_url + "/ws", open_timeout=10) as ws:
            for text in ("héllo", "x" * 70000):
                ws.send(text)
                assert ws.recv(timeout=10) == text


def test_nginx_proxy_pass_reaches_geows_on_a_unix_socket() -> None:
    directory = Path(tempfile.mkdtemp(prefix="geows-sock-"))
    sock_path = directory / "http.sock"
    listen = ("--http", "127.0.0.1:0", "--http", str(sock_path))
    try:
        with running(ECHO, *listen) as app, nginx_proxy(sock_path) as front:
            assert f"unix:{sock_path}" in front.config
            status, _ = get(front.url + "/")
            assert status == 200, front.log()
            with connect(front.ws_url + "/ws", open_timeout=10) as ws:
                ws.send("over a unix socket")
                assert ws.recv(timeout=10) == "over a unix socket"
        assert f"on http://unix:{sock_path}" in app.log
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def quiet_websocket(kind: str, ping_freq: str) -> Iterator[tuple[FrontProcess, Any]]:
    """A websocket to the echo through a front whose idle timeout is 2 s; the
    client sends no pings of its own.
    """
    freq = ("--websockets-ping-freq", ping_freq)
    with running(ECHO, *freq) as app, FRONTS[kind](app.port, "2s") as front:
        url = front.ws_url + "/ws"
        with connect(url, ping_interval=None, open_timeout=10) as ws:
            yield front, ws


def test_geows_pings_hold_an_idle_websocket_open_through_the_front(
    front_kind: str,
) -> None:
    with quiet_websocket(front_kind, "0.5") as (front, ws):
        # Longer than the front's idle timeout, without a message.
        with pytest.raises(TimeoutError):
            ws.recv(timeout=3.5)
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here", front.log()


def test_without_pings_the_front_closes_an_idle_websocket(front_kind: str) -> None:
    with quiet_websocket(front_kind, "0") as (front, ws):
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
        if front_kind == "nginx":
            assert "upstream timed out" in front.log()


# -- what the fronts send, seen by a recorder ---------------------------------


class Recorder:
    """One connection's worth of upstream: record what arrives, answer, echo.

    ``complete(data)`` returns how many bytes form the request once they
    have all arrived (None before). The recorder then writes ``reply`` and,
    if ``echo``, sends back what comes next once, prefixed with ``echo:``.
    """

    def __init__(
        self,
        complete: Callable[[bytes], Optional[int]],
        reply: bytes,
        echo: bool = False,
        unix_path: Optional[Path] = None,
    ) -> None:
        self.complete = complete
        self.reply = reply
        self.echo = echo
        self.received = b""
        self.error: Optional[BaseException] = None
        if unix_path is not None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix_path))
            self.address: Union[int, Path] = unix_path
        else:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.bind(("127.0.0.1", 0))
            self.address = int(self.listener.getsockname()[1])
        self.listener.listen(4)
        self.listener.settimeout(15)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        assert isinstance(self.address, int)
        return self.address

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(15)
                while self.complete(self.received) is None:
                    data = conn.recv(65536)
                    if not data:
                        return
                    self.received += data
                conn.sendall(self.reply)
                if self.echo:
                    conn.sendall(b"echo:" + conn.recv(65536))
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            self.listener.close()

    def wait(self) -> bytes:
        """What arrived, once the connection is over."""
        self.thread.join(20)
        assert not self.thread.is_alive(), "the recorder is still waiting"
        if self.error is not None:
            raise self.error
        return self.received


def http_head(data: bytes) -> Optional[int]:
    """Length of the HTTP head at the start of ``data`` (None until complete)."""
    end = data.find(b"\r\n\r\n")
    return None if end < 0 else end + 4


def proxied_http_head(data: bytes) -> Optional[int]:
    """Length of a PROXY header and the HTTP head after it.

    The v2 signature itself starts with CRLF CRLF: the PROXY header must be
    parsed first, never searched through for the end of a head.
    """
    parsed = proxy_protocol.parse(data)
    if parsed is None:
        return None
    end = data.find(b"\r\n\r\n", parsed[1])
    return None if end < 0 else end + 4


def uwsgi_packet(data: bytes) -> Optional[int]:
    parsed = parse_packet(data)
    return None if parsed is None else parsed[1]


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_sends_a_proxy_header_when_asked(version: int) -> None:
    recorder = Recorder(proxied_http_head, OK)
    kwargs = {"send_proxy": version == 1, "send_proxy_v2": version == 2}
    with haproxy_http(recorder.port, **kwargs) as front:
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            client_port = sock.getsockname()[1]
            sock.sendall(
                b"GET /x HTTP/1.1\r\nHost: example.com\r\n"
                b"X-Forwarded-For: 192.0.2.7\r\nForwarded: for=198.51.100.1\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
        received = recorder.wait()
    parsed = proxy_protocol.parse(received)
    assert parsed is not None
    info, size = parsed
    assert info.version == version
    assert info.source == ("127.0.0.1", client_port)
    assert info.destination == ("127.0.0.1", front.port)
    head = received[size:].decode("latin-1").lower()
    lines = head.split("\r\n")
    assert lines[0] == "get /x http/1.1"
    # Not one list: the client's header stays, HAProxy adds a second line.
    assert lines.count("x-forwarded-for: 192.0.2.7") == 1
    assert lines.count("x-forwarded-for: 127.0.0.1") == 1
    assert "x-forwarded-proto: http" in lines
    assert not any(line.startswith("forwarded:") for line in lines)


def test_nginx_proxy_pass_sends_the_documented_headers() -> None:
    recorder = Recorder(http_head, OK)
    with nginx_proxy(recorder.port) as front:
        status, _ = get(
            front.url + "/p?q=1",
            {
                "Host": "example.com:8080",
                "X-Forwarded-For": "192.0.2.7",
                "Forwarded": "for=198.51.100.1",
            },
        )
        received = recorder.wait().decode("latin-1")
    assert status == 200
    lines = received.split("\r\n")
    assert lines[0] == "GET /p?q=1 HTTP/1.1"
    # Connection: upgrade on every request, an Upgrade header only when the
    # client sent one; $host has lost the port; the client is appended.
    assert "Connection: upgrade" in lines
    assert not any(line.lower().startswith("upgrade:") for line in lines)
    assert "Host: example.com" in lines
    assert "X-Forwarded-For: 192.0.2.7, 127.0.0.1" in lines
    assert "X-Forwarded-Proto: http" in lines
    assert not any(line.lower().startswith("forwarded:") for line in lines)


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_nginx_uwsgi_answers_502_when_nothing_listens(where: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="geows-sock-"))
    try:
        upstream = free_port() if where == "tcp" else directory / "none.sock"
        with nginx_uwsgi(upstream) as front:
            status, _ = get(front.url + "/")
            assert status == 502, front.log()
            assert "failed" in front.log()
            assert "while connecting to upstream" in front.log()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_nginx_uwsgi_sends_an_upgrade_as_one_packet_and_tunnels_after_101() -> None:
    # A short directory: a Unix socket path must fit in 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="geows-sock-"))
    try:
        switch = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n"
        )
        sock_path = directory / "app.sock"
        recorder = Recorder(uwsgi_packet, switch, echo=True, unix_path=sock_path)
        with nginx_uwsgi(sock_path) as front:
            with socket.create_connection(("127.0.0.1", front.port), timeout=10) as c:
                c.sendall(
                    b"GET /ws?room=1 HTTP/1.1\r\nHost: example.com:8080\r\n"
                    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                head = c.recv(4096)
                assert head.startswith(b"HTTP/1.1 101 "), front.log()
                c.sendall(b"after the switch")
                assert c.recv(4096) == b"echo:after the switch"
            received = recorder.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    parsed = parse_packet(received)
    assert parsed is not None
    packet, size = parsed
    assert size == len(received)  # no body
    env = packet.vars
    assert (packet.modifier1, packet.modifier2) == (0, 0)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["REQUEST_URI"] == "/ws?room=1"
    assert env["PATH_INFO"] == "/ws"
    assert env["QUERY_STRING"] == "room=1"
    # The hop-by-hop headers reach a uwsgi upstream as they came, unlike
    # proxy_pass where the config must set them.
    assert env["HTTP_UPGRADE"] == "websocket"
    assert env["HTTP_CONNECTION"] == "Upgrade"
    assert env["HTTP_SEC_WEBSOCKET_KEY"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert env["HTTP_HOST"] == "example.com"  # uwsgi_params: $host, no port
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(front.port)
    assert env["CONTENT_LENGTH"] == ""  # sent empty, not left out


# -- the docs show what the fixtures run --------------------------------------


def doc_lines(name: str) -> set[str]:
    """The stripped lines of a page in docs/deploy/."""
    text = (DEPLOY / name).read_text(encoding="utf-8")
    return {line.strip() for line in text.splitlines()}


def config_lines(template: str, **values: str) -> list[str]:
    """The stripped, non-blank lines of a fixture template, filled in."""
    lines = template.format(**values).splitlines()
    return [line.strip() for line in lines if line.strip()]


def test_docs_nginx_page_shows_the_fixture_directives() -> None:
    proxy = NGINX_PROXY_DIRECTIVES
    tcp = config_lines(proxy, upstream="127.0.0.1:8000", read_timeout="1h")
    unix = config_lines(proxy, upstream="unix:/run/geows/http.sock", read_timeout="")
    uwsgi = config_lines(
        NGINX_UWSGI_DIRECTIVES,
        uwsgi_params="/etc/nginx/uwsgi_params",
        upstream="unix:/run/geows/app.sock",
        read_timeout="1h",
    )
    expected = [*tcp, unix[0], *uwsgi]  # unix[0]: its proxy_pass line
    documented = doc_lines("nginx.rst")
    assert [line for line in expected if line not in documented] == []


def test_docs_haproxy_page_shows_the_fixture_config() -> None:
    # The global section is the tests' own (logging to stderr).
    config = "defaults" + HAPROXY_CONFIG.split("defaults", 1)[1]
    values = {"bind": ":80", "upstream": "127.0.0.1:8000", "tunnel_timeout": "1h"}
    expected = [
        *config_lines(config, server_options="", **values),
        *config_lines(config, server_options=" send-proxy-v2", **values)[-1:],
    ]
    documented = doc_lines("haproxy.rst")
    assert [line for line in expected if line not in documented] == []
