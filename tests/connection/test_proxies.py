"""Who the client is (trusted proxies, PROXY protocol) and who may upgrade (Origin).

The first tests play a client, or a proxy, on one end of a socket pair and
run :class:`geows.wsgi.HTTPConnection` on the other with a made-up peer
address, so the address the headers come from is the test's to choose.
The PROXY protocol tests read headers off socket pairs, then go through a
real :class:`geows.server.Server` on loopback TCP and a Unix socket.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
from dataclasses import replace
from typing import Any, Callable

import gevent
import gevent.socket
import pytest

import geows
from geows import proxy_protocol, uwsgi_compat
from geows.forwarded import TrustedProxies
from geows.frames import OP_CLOSE, OP_TEXT
from geows.keepalive import Registry
from geows.listeners import Listener
from geows.origins import OriginPolicy
from geows.server import Server, read_proxy_header
from geows.uwsgi_conn import UwsgiConnection
from geows.uwsgi_proto import encode_packet
from geows.wsgi import HTTPConnection, Settings
from tests.connection.conftest import QUIET, WAIT, FarEnd

pytestmark = pytest.mark.timeout(15)

#: The direct peer: a proxy on the loopback interface, or a client.
PROXY = ("127.0.0.1", 40000)
CLIENT = ("203.0.113.50", 51000)
KEY = base64.b64encode(b"0123456789abcdef").decode("ascii")


class Client(FarEnd):
    """The far end of one connection: raw requests in, responses out."""

    def get(self, target: str = "/", *headers: str, close: bool = False) -> None:
        lines = [f"GET {target} HTTP/1.1", "Host: example.com", *headers]
        if close:
            lines.append("Connection: close")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def upgrade(self, target: str = "/ws", *headers: str) -> None:
        self.get(
            target,
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Version: 13",
            *headers,
        )

    def head(self, timeout: float = WAIT) -> str:
        """The next response head's status line, its body left unread."""
        self.last_head = self.read_head(timeout).decode("latin-1")
        return self.last_head.split("\r\n", 1)[0]

    def json(self, timeout: float = WAIT) -> Any:
        """Status line, then the Content-Length body of the next response."""
        status = self.head(timeout)
        assert status == "HTTP/1.1 200 OK", status
        length = next(
            int(line.split(":", 1)[1])
            for line in self.last_head.split("\r\n")
            if line.lower().startswith("content-length:")
        )
        buf = self.peer.buf
        with gevent.Timeout(timeout):
            while len(buf) < length:
                buf += self.sock.recv(65536)
        body = bytes(buf[:length])
        del buf[:length]
        return json.loads(body)


@pytest.fixture
def serve() -> Any:
    """Factory: ``serve(app, addr=PROXY, **settings) -> Client``, running."""
    made: list[tuple[Client, Registry]] = []

    def make(
        app: Callable[..., Any],
        addr: Any = PROXY,
        cls: type[HTTPConnection] = HTTPConnection,
        **kwargs: Any,
    ) -> Client:
        server_sock, client_sock = gevent.socket.socketpair()
        registry = Registry(QUIET)
        settings = Settings(app=app, timeouts=QUIET, registry=registry, **kwargs)
        conn = cls(settings, server_sock, addr)
        client = Client(client_sock, conn, gevent.spawn(conn.run))
        made.append((client, registry))
        return client

    yield make
    for client, registry in made:
        client.job.kill()
        client.sock.close()
        registry.stop()


CLIENT_KEYS = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
    "HTTPS",
    "geows.peer_addr",
)


def client_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers with the environ's idea of the client, as JSON."""
    body = json.dumps({k: environ.get(k) for k in CLIENT_KEYS}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def trusting(*entries: str) -> TrustedProxies:
    return TrustedProxies(entries)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "geows.access"]


# -- trusted proxies --------------------------------------------------------------


def test_without_trusted_proxies_forwarding_headers_are_ignored(serve):
    c = serve(client_app)
    c.get("/", "X-Forwarded-For: 198.51.100.1", "X-Forwarded-Proto: https")
    assert c.json() == {
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "wsgi.url_scheme": "http",
        "HTTPS": None,
        "geows.peer_addr": None,
    }


def test_a_trusted_proxy_names_the_client_and_the_scheme(serve):
    c = serve(client_app, trusted_proxies=trusting("loopback"))
    c.get("/", "X-Forwarded-For: 198.51.100.1", "X-Forwarded-Proto: https")
    assert c.json() == {
        "REMOTE_ADDR": "198.51.100.1",
        "REMOTE_PORT": "",  # X-Forwarded-For names no port
        "wsgi.url_scheme": "https",
        "HTTPS": "on",
        "geows.peer_addr": "127.0.0.1",
    }


def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy(serve):
    c = serve(client_app, trusted_proxies=trusting("127.0.0.1", "10.0.0.0/8"))
    # A client put 192.0.2.66 first; the proxies appended the rest.
    c.get("/", "X-Forwarded-For: 192.0.2.66, 198.51.100.1, 10.1.2.3")
    assert c.json()["REMOTE_ADDR"] == "198.51.100.1"


def test_an_untrusted_peer_is_the_client_whatever_it_sends(serve):
    c = serve(client_app, addr=CLIENT, trusted_proxies=trusting("loopback"))
    c.get("/", "X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: https")
    env = c.json()
    assert env["REMOTE_ADDR"] == "203.0.113.50"
    assert env["REMOTE_PORT"] == "51000"
    assert env["wsgi.url_scheme"] == "http"
    assert env["geows.peer_addr"] is None


def test_a_trusted_proxy_without_forwarding_headers_is_the_client(serve):
    c = serve(client_app, trusted_proxies=trusting("loopback"))
    c.get("/")
    env = c.json()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", "40000")
    assert env["geows.peer_addr"] is None


def test_forwarded_is_not_read_by_default(serve):
    # What a proxy that sets only X-Forwarded-For passes on from a client.
    c = serve(client_app, trusted_proxies=trusting("loopback"))
    c.get("/", "Forwarded: for=192.0.2.66", "X-Forwarded-For: 198.51.100.1")
    assert c.json()["REMOTE_ADDR"] == "198.51.100.1"


@pytest.mark.parametrize("mode", ["forwarded", "auto"])
def test_forwarded_is_read_when_asked_with_the_port_it_names(serve, mode):
    c = serve(client_app, trusted_proxies=trusting("loopback"), forwarded_header=mode)
    c.get(
        "/",
        'Forwarded: for="198.51.100.1:4711";proto=https',
        "X-Forwarded-For: 192.0.2.66",
    )
    env = c.json()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.1", "4711")
    assert env["wsgi.url_scheme"] == "https"


def test_a_unix_socket_peer_is_trusted_as_unix(serve):
    c = serve(client_app, addr="", trusted_proxies=trusting("unix"))
    c.get("/", "X-Forwarded-For: 198.51.100.1")
    env = c.json()
    assert env["REMOTE_ADDR"] == "198.51.100.1"
    assert env["geows.peer_addr"] == ""


def test_a_trusted_proxy_saying_http_wins_over_an_https_listener(serve):
    c = serve(client_app, trusted_proxies=trusting("loopback"), url_scheme="https")
    c.get("/", "X-Forwarded-For: 198.51.100.1", "X-Forwarded-Proto: http")
    env = c.json()
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTPS"] is None


def test_the_access_log_names_the_client_and_each_request_its_own(serve, caplog):
    caplog.set_level(logging.INFO, "geows.access")
    c = serve(client_app, trusted_proxies=trusting("loopback"))
    c.get("/a", "X-Forwarded-For: 198.51.100.1")
    c.json()
    c.get("/b", "X-Forwarded-For: 198.51.100.2")
    c.json()
    # A head that cannot be parsed is refused: it names the peer, not the
    # client of the request before it on this connection.
    c.send(b"NOT HTTP\r\n\r\n")
    assert c.head().startswith("HTTP/1.1 400 ")
    c.job.join(WAIT)
    lines = access_lines(caplog)
    assert lines[0].startswith('198.51.100.1 - "GET /a HTTP/1.1" 200 ')
    assert lines[1].startswith('198.51.100.2 - "GET /b HTTP/1.1" 200 ')
    assert lines[2] == "127.0.0.1 - 400 (refused)"


def test_a_body_over_the_limit_is_logged_with_the_client(serve, caplog):
    caplog.set_level(logging.INFO, "geows.access")
    c = serve(client_app, trusted_proxies=trusting("loopback"), max_body=10)
    c.get("/", "X-Forwarded-For: 198.51.100.1", "Content-Length: 11")
    assert c.head().startswith("HTTP/1.1 413 ")
    c.job.join(WAIT)
    assert access_lines(caplog) == ["198.51.100.1 - 413 (refused)"]


def test_a_websocket_and_its_log_line_name_the_client(serve, caplog):
    caplog.set_level(logging.INFO, "geows.access")
    seen = []

    def app(environ, start_response):
        ws = geows.accept(environ)
        seen.append(ws.remote_addr)
        ws.close(1000)
        return []

    c = serve(app, trusted_proxies=trusting("loopback"))
    c.upgrade("/who", "X-Forwarded-For: 198.51.100.1")
    assert c.head() == "HTTP/1.1 101 Switching Protocols"
    assert c.peer.read_frame()[0] == OP_CLOSE
    c.peer.send_close(1000)
    c.job.join(WAIT)
    assert seen == ["198.51.100.1"]
    assert access_lines(caplog)[-1].startswith('198.51.100.1 - "WEBSOCKET /who" 1000 ')


def test_over_uwsgi_the_vars_name_the_client_and_trusted_proxies_do_not_apply(
    serve,
):
    vars = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.7",
        "REMOTE_PORT": "5555",
        "SERVER_NAME": "example.org",
        "SERVER_PORT": "80",
        "HTTP_X_FORWARDED_FOR": "192.0.2.66",  # the client's own
    }
    c = serve(client_app, cls=UwsgiConnection, trusted_proxies=trusting("loopback"))
    c.send(encode_packet(vars))
    env = c.json()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "5555")
    assert env["geows.peer_addr"] is None


# -- origins ----------------------------------------------------------------------


def native_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    ws = geows.accept(environ)
    for message in ws:
        ws.send(message)
    return []


def upgrade_status(c: Client, *headers: str) -> str:
    c.upgrade("/ws", *headers)
    return c.head()


def server_policy(*entries: str, allow_missing: bool = False) -> OriginPolicy:
    return OriginPolicy(entries, allow_missing=allow_missing)


@pytest.mark.parametrize(
    "origin",
    ["https://app.example", "https://APP.example:443", "https://a.b.example.org"],
)
def test_an_allowed_origin_upgrades(serve, origin):
    policy = server_policy("https://app.example", "https://*.example.org")
    c = serve(native_echo, origins=policy)
    assert upgrade_status(c, f"Origin: {origin}") == "HTTP/1.1 101 Switching Protocols"
    c.peer.send_frame(OP_TEXT, "hi")
    assert c.peer.read_frame() == (OP_TEXT, b"hi")


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "http://app.example", "https://example.org", "null"],
)
def test_another_origin_gets_403_and_the_app_no_websocket(serve, caplog, origin):
    caplog.set_level(logging.INFO)
    policy = server_policy("https://app.example", "https://*.example.org")
    c = serve(native_echo, origins=policy)
    assert upgrade_status(c, f"Origin: {origin}") == "HTTP/1.1 403 Forbidden"
    c.job.join(WAIT)
    assert c.conn.websocket is None
    assert any("is not allowed" in r.getMessage() for r in caplog.records)


def test_a_missing_origin_gets_403_unless_allowed(serve):
    c = serve(native_echo, origins=server_policy("https://app.example"))
    assert upgrade_status(c) == "HTTP/1.1 403 Forbidden"
    policy = server_policy("https://app.example", allow_missing=True)
    c = serve(native_echo, origins=policy)
    assert upgrade_status(c) == "HTTP/1.1 101 Switching Protocols"


def test_without_a_policy_any_origin_upgrades(serve):
    c = serve(native_echo)
    assert upgrade_status(c, "Origin: https://evil.example") == (
        "HTTP/1.1 101 Switching Protocols"
    )


def test_an_invalid_upgrade_is_told_so_before_its_origin(serve):
    c = serve(native_echo, origins=server_policy("https://app.example"))
    c.get("/ws", "Origin: https://evil.example", "Upgrade: websocket")
    assert c.head() == "HTTP/1.1 400 Bad Request"


def accepting(**kwargs: Any) -> Callable[..., list[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ws = geows.accept(environ, **kwargs)
        ws.close(1000)
        return []

    return app


def test_accept_origins_replace_the_servers_policy(serve):
    app = accepting(origins=["https://native.example"])
    policy = server_policy("https://app.example")
    c = serve(app, origins=policy)
    assert upgrade_status(c, "Origin: https://app.example") == "HTTP/1.1 403 Forbidden"
    c = serve(app, origins=policy)
    assert upgrade_status(c, "Origin: https://native.example") == (
        "HTTP/1.1 101 Switching Protocols"
    )
    c = serve(app)  # no server policy at all
    assert upgrade_status(c, "Origin: https://app.example") == "HTTP/1.1 403 Forbidden"


def test_accept_origins_take_an_origin_policy_and_the_allow_missing_option(serve):
    app = accepting(origins=OriginPolicy(["https://x.example"], allow_missing=True))
    assert upgrade_status(serve(app)) == "HTTP/1.1 101 Switching Protocols"
    listed = accepting(origins=["https://x.example"])
    assert upgrade_status(serve(listed)) == "HTTP/1.1 403 Forbidden"
    c = serve(listed, allow_missing_origin=True)
    assert upgrade_status(c) == "HTTP/1.1 101 Switching Protocols"


def test_accept_with_an_empty_origin_list_allows_any(serve):
    c = serve(accepting(origins=[]), origins=server_policy("https://app.example"))
    assert upgrade_status(c, "Origin: https://evil.example") == (
        "HTTP/1.1 101 Switching Protocols"
    )


def test_uwsgi_websocket_handshake_checks_the_origin_too(serve):
    raised: list[BaseException] = []

    def app(environ, start_response):
        try:
            uwsgi_compat.websocket_handshake()
        except OSError as exc:
            raised.append(exc)
            raise
        return []

    c = serve(app, origins=server_policy("https://app.example"))
    assert upgrade_status(c, "Origin: https://evil.example") == "HTTP/1.1 403 Forbidden"
    c.job.join(WAIT)
    assert isinstance(raised[0].__cause__, geows.InvalidHandshake)


# -- the PROXY protocol: reading the header ---------------------------------------

V1 = proxy_protocol.encode_v1(("198.51.100.1", 4711), ("127.0.0.1", 8000))
V2 = proxy_protocol.encode_v2(("2001:db8::1", 4712), ("2001:db8::2", 443), [(4, b"x")])
REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def read_header(
    data: list[bytes], timeout: float = WAIT, eof: bool = False
) -> tuple[Any, bytes]:
    """read_proxy_header on a socket pair fed ``data`` piece by piece; the
    address it returns and what it left unread.
    """
    ours, theirs = gevent.socket.socketpair()
    with ours, theirs:

        def feed() -> None:
            for piece in data:
                theirs.sendall(piece)
                gevent.sleep(0.01)
            if eof:
                theirs.shutdown(socket.SHUT_WR)

        feeder = gevent.spawn(feed)
        try:
            addr = read_proxy_header(ours, PROXY, timeout=timeout)
        finally:
            feeder.join(WAIT)
        ours.setblocking(False)
        try:
            rest = ours.recv(65536)
        except BlockingIOError:
            rest = b""
    return addr, rest


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_exactly_the_header_is_read_and_the_rest_stays_in_the_socket(header):
    addr, rest = read_header([header + REQUEST])
    assert rest == REQUEST
    assert addr == (("198.51.100.1", 4711) if header is V1 else ("2001:db8::1", 4712))


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_a_header_arriving_byte_by_byte_is_read_whole(header):
    pieces = [header[i : i + 1] for i in range(len(header))] + [REQUEST]
    assert read_header(pieces) == (read_header([header])[0], REQUEST)


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY UNKNOWN\r\n",
        proxy_protocol.encode_v2(None, None),  # LOCAL
    ],
    ids=["v1-unknown", "v2-local"],
)
def test_a_header_without_a_client_keeps_the_peer(header):
    assert read_header([header + REQUEST]) == (PROXY, REQUEST)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([REQUEST], "bad PROXY header: not a PROXY protocol header"),
        ([b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"], "bad PROXY header"),
        ([b"PROXY TCP4 198.51.100.1"], "closed before a complete PROXY header"),
    ],
    ids=["http", "malformed", "cut"],
)
def test_a_bad_or_cut_header_raises_oserror(data, message):
    with pytest.raises(OSError, match=message):
        read_header(data, eof=True)


def test_a_header_that_does_not_come_in_time_raises_oserror():
    with pytest.raises(OSError, match=r"no complete PROXY header within 0\.2s"):
        read_header([V1[:20]], timeout=0.2)


# -- the PROXY protocol: through a Server -------------------------------------------


def proxied(listener: Listener) -> Listener:
    """The listener, expecting a PROXY header (``--proxy-protocol``)."""
    return replace(listener, proxy_protocol=True)


def run_server(listener: Listener, app: Callable[..., Any], **kwargs: Any) -> Server:
    server = Server(Settings(app=app, timeouts=QUIET, **kwargs), [listener])
    server.start()
    return server


def exchange(sock: Any, data: bytes) -> bytes:
    """Send ``data``; everything that comes back until the server closes."""
    sock.sendall(data)
    out = bytearray()
    with gevent.Timeout(WAIT):
        while True:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                return bytes(out)
            if not piece:
                return bytes(out)
            out += piece


CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"


def body_of(answer: bytes) -> Any:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    return json.loads(body)


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_a_tcp_listener_takes_the_client_from_the_proxy_header(header):
    listener = Listener.http("127.0.0.1:0")
    server = run_server(proxied(listener), client_app)
    try:
        port = server.listeners[0].address[1]  # type: ignore[index]
        with gevent.socket.create_connection(("127.0.0.1", port)) as sock:
            env = body_of(exchange(sock, header + CLOSE_REQUEST))
    finally:
        server.stop(timeout=1)
    client = ("198.51.100.1", "4711") if header is V1 else ("2001:db8::1", "4712")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == client
    assert env["geows.peer_addr"] == "127.0.0.1"


def test_a_local_header_keeps_the_peer_on_a_unix_listener(tmp_path):
    listener = Listener.http(str(tmp_path / "pp.sock"))
    server = run_server(proxied(listener), client_app)
    try:
        with gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(tmp_path / "pp.sock"))
            local = proxy_protocol.encode_v2(None, None)
            env = body_of(exchange(sock, local + CLOSE_REQUEST))
    finally:
        server.stop(timeout=1)
    assert env["REMOTE_ADDR"] == ""
    assert env["geows.peer_addr"] is None


def test_a_unix_listener_takes_the_client_from_the_proxy_header(tmp_path):
    listener = Listener.http(str(tmp_path / "pp.sock"))
    server = run_server(proxied(listener), client_app)
    try:
        with gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(tmp_path / "pp.sock"))
            env = body_of(exchange(sock, V1 + CLOSE_REQUEST))
    finally:
        server.stop(timeout=1)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.1", "4711")
    assert env["geows.peer_addr"] == ""


def test_trust_is_judged_on_the_address_of_the_proxy_header():
    listener = proxied(Listener.http("127.0.0.1:0"))
    trusted = trusting("198.51.100.0/24")
    server = run_server(listener, client_app, trusted_proxies=trusted)
    try:
        port = server.listeners[0].address[1]  # type: ignore[index]
        request = CLOSE_REQUEST.replace(
            b"\r\n\r\n", b"\r\nX-Forwarded-For: 192.0.2.9\r\n\r\n"
        )
        with gevent.socket.create_connection(("127.0.0.1", port)) as sock:
            env = body_of(exchange(sock, V1 + request))
    finally:
        server.stop(timeout=1)
    assert env["REMOTE_ADDR"] == "192.0.2.9"
    assert env["geows.peer_addr"] == "127.0.0.1"  # the socket's own peer


@pytest.mark.parametrize(
    "data", [REQUEST, b"PROXY TCP9 x\r\n" + REQUEST], ids=["none", "malformed"]
)
def test_a_connection_without_a_good_header_is_closed_unanswered(data, caplog):
    caplog.set_level(logging.INFO, "geows.server")
    called = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.append(True)
        return client_app(environ, start_response)

    server = run_server(proxied(Listener.http("127.0.0.1:0")), app)
    try:
        port = server.listeners[0].address[1]  # type: ignore[index]
        with gevent.socket.create_connection(("127.0.0.1", port)) as sock:
            local_port = sock.getsockname()[1]
            assert exchange(sock, data) == b""
    finally:
        server.stop(timeout=1)
    assert not called
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1
    assert dropped[0].levelno == logging.INFO
    message = dropped[0].getMessage()
    assert f"'127.0.0.1', {local_port}" in message
    assert "bad PROXY header" in message


def test_the_header_deadline_is_the_http_header_timeout(caplog):
    caplog.set_level(logging.INFO, "geows.server")
    listener = proxied(Listener.http("127.0.0.1:0"))
    server = run_server(listener, client_app, header_timeout=0.2)
    try:
        port = server.listeners[0].address[1]  # type: ignore[index]
        with gevent.socket.create_connection(("127.0.0.1", port)) as sock:
            assert exchange(sock, V1[:10]) == b""
    finally:
        server.stop(timeout=1)
    assert any("within 0.2s" in r.getMessage() for r in caplog.records)
