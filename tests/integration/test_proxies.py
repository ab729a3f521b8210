"""Who the client is behind real nginx and HAProxy, and who may open a WebSocket.

On loopback every process is 127.0.0.1, so the tests give the client a
made-up address the way a farther proxy would: an ``X-Forwarded-For`` the
client sends itself, which nginx appends 127.0.0.1 to. Trusting only
127.0.0.1, geows skips nginx's entry and takes the rightmost one it does
not trust. Behind HAProxy with the PROXY protocol the client is 127.0.0.1
too, but its source port tells it from HAProxy's own connection.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.frontends import haproxy_http, nginx_proxy
from tests.integration.support import serve
from tests.servers import APPS, ServerProcess, running, start_server

pytestmark = pytest.mark.timeout(60)

APP = APPS / "proxies_app.py"


def get(url: str, headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The JSON body of a GET that must succeed."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())  # type: ignore[no-any-return]


def raw_get(port: int, target: str, *headers: str) -> tuple[int, dict[str, Any]]:
    """A GET on a socket of our own: its local port, and the JSON answer."""
    lines = [f"GET {target} HTTP/1.1", "Host: example.com", "Connection: close"]
    request = "\r\n".join([*lines, *headers]) + "\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(request.encode("latin-1"))
        answer = bytearray()
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    return local_port, json.loads(body)


# -- nginx proxy_pass, --trusted-proxies ------------------------------------------


@pytest.fixture(scope="module")
def behind_nginx() -> Iterator[tuple[ServerProcess, Any]]:
    trusted = ("--trusted-proxies", "127.0.0.1")
    with running(APP, *trusted) as app, nginx_proxy(app.port) as front:
        yield app, front


def test_the_app_sees_the_client_nginx_forwards(behind_nginx):
    app, front = behind_nginx
    env = get(front.url + "/env?one", {"X-Forwarded-For": "203.0.113.9"})
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.9, 127.0.0.1"
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["REMOTE_PORT"] == ""  # X-Forwarded-For names no port
    assert env["geows.peer_addr"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"  # nginx's $scheme
    app.wait_for_log(r' 203\.0\.113\.9 - "GET /env\?one HTTP/1\.1" 200 ')


def test_the_client_is_the_rightmost_untrusted_address(behind_nginx):
    _, front = behind_nginx
    headers = {"X-Forwarded-For": "198.51.100.66, 203.0.113.9"}
    assert get(front.url + "/env", headers)["REMOTE_ADDR"] == "203.0.113.9"


def test_without_a_header_of_the_clients_the_client_is_nginxs_peer(behind_nginx):
    _, front = behind_nginx
    env = get(front.url + "/env")
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_a_clients_forwarded_header_does_not_reach_geows(behind_nginx):
    _, front = behind_nginx
    headers = {"Forwarded": "for=198.51.100.66", "X-Forwarded-For": "203.0.113.9"}
    assert get(front.url + "/env", headers)["REMOTE_ADDR"] == "203.0.113.9"


def test_a_websocket_and_its_log_line_name_the_forwarded_client(behind_nginx):
    app, front = behind_nginx
    headers = {"X-Forwarded-For": "203.0.113.10"}
    with connect(front.ws_url + "/ws", additional_headers=headers) as ws:
        env = json.loads(ws.recv(timeout=10))
        ws.send("through nginx")
        assert ws.recv(timeout=10) == "through nginx"
    assert env["REMOTE_ADDR"] == "203.0.113.10"
    assert env["geows.peer_addr"] == "127.0.0.1"
    app.wait_for_log(r' 203\.0\.113\.10 - "WEBSOCKET /ws" 1000 ')


# -- straight to geows: which headers count --------------------------------------


def test_without_trusted_proxies_a_clients_headers_are_ignored():
    with running(APP) as app:
        env = get(
            app.http_url + "/env",
            {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
        )
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["geows.peer_addr"] is None


@pytest.mark.parametrize(
    ("mode", "client"),
    [(None, "203.0.113.9"), ("forwarded", "198.51.100.66"), ("auto", "198.51.100.66")],
)
def test_forwarded_header_picks_the_header_family(mode, client):
    # A trusted peer sending both, as a proxy that only sets X-Forwarded-For
    # would pass a client's Forwarded on.
    args = ["--trusted-proxies", "loopback"]
    if mode:
        args += ["--forwarded-header", mode]
    headers = {
        "Forwarded": 'for=198.51.100.66;proto="https"',
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
    }
    with running(APP, *args) as app:
        env = get(app.http_url + "/env", headers)
    assert env["REMOTE_ADDR"] == client
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"


def test_a_bad_trusted_proxy_stops_the_server_at_start_up():
    with pytest.raises(AssertionError, match="did not start") as info:
        start_server(APP, "--trusted-proxies", "127.0.0.1/40")
    assert "--trusted-proxies: invalid trusted proxy '127.0.0.1/40'" in str(info.value)


# -- HAProxy with the PROXY protocol ------------------------------------------------


@pytest.fixture(scope="module")
def proxy_protocol_app() -> Iterator[ServerProcess]:
    yield from serve(str(APP), "--proxy-protocol", "all")


@pytest.mark.parametrize("version", [1, 2])
def test_http_through_haproxy_names_the_clients_address_and_port(
    version, proxy_protocol_app
):
    kwargs = {"send_proxy": version == 1, "send_proxy_v2": version == 2}
    with haproxy_http(proxy_protocol_app.port, **kwargs) as front:
        local_port, env = raw_get(front.port, f"/env?v{version}")
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(local_port)
    assert env["geows.peer_addr"] == "127.0.0.1"  # HAProxy's own connection
    proxy_protocol_app.wait_for_log(rf' 127\.0\.0\.1 - "GET /env\?v{version} ')


@pytest.mark.parametrize("version", [1, 2])
def test_a_websocket_echoes_through_haproxy_with_the_clients_port(
    version, proxy_protocol_app
):
    kwargs = {"send_proxy": version == 1, "send_proxy_v2": version == 2}
    port = proxy_protocol_app.port
    with haproxy_http(port, **kwargs) as front, connect(front.ws_url + "/ws") as ws:
        local_port = ws.local_address[1]
        env = json.loads(ws.recv(timeout=10))
        for text in ("héllo", "x" * 70000):
            ws.send(text)
            assert ws.recv(timeout=10) == text
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(local_port)


def test_a_plain_client_is_dropped_unanswered(proxy_protocol_app):
    with socket.create_connection(
        ("127.0.0.1", proxy_protocol_app.port), timeout=10
    ) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(b"GET /env HTTP/1.1\r\nHost: example.com\r\n\r\n")
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert answer == b""
    line = proxy_protocol_app.wait_for_log(rf"'127\.0\.0\.1', {local_port}\) dropped")
    assert "INFO" in line
    assert "bad PROXY header" in line


def test_haproxys_local_health_checks_are_accepted(proxy_protocol_app):
    # send-proxy-v2 health checks open with a LOCAL header: no client to
    # name, so the peer stays REMOTE_ADDR, and the check gets its answer.
    succeeded = "Health check for server geows/geows1 succeeded"
    before = len(proxy_protocol_app.lines)
    with haproxy_http(
        proxy_protocol_app.port, send_proxy_v2=True, check="/env?check"
    ) as front:
        line = proxy_protocol_app.wait_for_log(r'"GET /env\?check HTTP/1\.0" 200 ')
        deadline = time.monotonic() + 10
        while succeeded not in front.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = front.log()
    assert " 127.0.0.1 - " in line
    assert succeeded in log, log
    assert "Health check for server geows/geows1 failed" not in log
    assert not [x for x in proxy_protocol_app.lines[before:] if "dropped" in x]


# -- origins ------------------------------------------------------------------------

ORIGINS = ("--websockets-allowed-origins", "https://app.example,https://*.example.org")


@pytest.fixture(scope="module")
def strict_app() -> Iterator[ServerProcess]:
    yield from serve(str(APP), *ORIGINS)


def echo_once(url: str, **kwargs: Any) -> None:
    with connect(url, open_timeout=10, **kwargs) as ws:
        if url.endswith("/ws"):
            ws.recv(timeout=10)  # the client description comes first
        ws.send("allowed")
        assert ws.recv(timeout=10) == "allowed"


def refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        echo_once(url, **kwargs)
    return info.value.response.status_code


@pytest.mark.parametrize("path", ["/ws", "/ws-uwsgi"])
@pytest.mark.parametrize("origin", ["https://app.example", "https://chat.example.org"])
def test_an_allowed_origin_opens_a_websocket(strict_app, path, origin):
    echo_once(strict_app.ws_url + path, origin=origin)


@pytest.mark.parametrize("path", ["/ws", "/ws-uwsgi"])
def test_another_origin_gets_403(strict_app, path):
    url = strict_app.ws_url + path
    assert refused_status(url, origin="https://evil.example") == 403
    strict_app.wait_for_log(
        r"refused upgrade .* 'https://evil\.example' is not allowed"
    )


def test_a_missing_origin_gets_403(strict_app):
    assert refused_status(strict_app.ws_url + "/ws") == 403


def test_a_missing_origin_is_let_through_when_allowed():
    with running(APP, *ORIGINS, "--websockets-allow-missing-origin") as app:
        echo_once(app.ws_url + "/ws")
        assert refused_status(app.ws_url + "/ws", origin="https://evil.example") == 403


def test_accept_origins_in_the_app_replace_the_servers(strict_app):
    url = strict_app.ws_url + "/ws-native"
    echo_once(url, origin="https://native.example")
    assert refused_status(url, origin="https://app.example") == 403


def test_an_origin_check_works_the_same_behind_nginx(strict_app):
    with nginx_proxy(strict_app.port) as front:
        echo_once(front.ws_url + "/ws", origin="https://app.example")
        assert (
            refused_status(front.ws_url + "/ws", origin="https://evil.example") == 403
        )


def test_plain_http_is_not_checked(strict_app):
    try:
        env = get(strict_app.http_url + "/env", {"Origin": "https://evil.example"})
    except urllib.error.HTTPError as exc:  # pragma: no cover - shown on failure
        pytest.fail(f"plain request refused: {exc}")
    assert env["REMOTE_ADDR"] == "127.0.0.1"
