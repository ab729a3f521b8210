"""``--https``: HTTPS and wss:// from the same app, with real clients.

Certificates come from trustme for each run (see tests/certs.py): the
clients trust its CA, the server gets a certificate for 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import websocket
from websockets.asyncio.client import connect

from tests.browser import chromium
from tests.certs import Certs, make_certs
from tests.integration.support import (
    OP_PING,
    OP_PONG,
    RawWebSocket,
    assert_no_traceback,
    open_socket,
    serve,
)
from tests.servers import APPS, EXAMPLES, ServerProcess

pytestmark = pytest.mark.timeout(60)

APP = str(APPS / "tls_app.py")
WAIT = 10.0
#: Bytes that may end a connection the server dropped (EOF, or a reset
#: when it closed with our bytes unread).
DROPPED = (ConnectionResetError, BrokenPipeError)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def server(certs: Certs) -> Iterator[ServerProcess]:
    """Plain HTTP and HTTPS on one server; 20 MiB messages; a short handshake."""
    yield from serve(
        APP,
        "--http",
        "127.0.0.1:0",
        "--https",
        certs.https(),
        "--websockets-max-size",
        str(20 * 1024),
        "--tls-handshake-timeout",
        "1",
    )


@pytest.fixture(scope="module")
def client_ca_server(certs: Certs) -> Iterator[ServerProcess]:
    """HTTPS requiring client certificates signed by the test CA."""
    yield from serve(APP, "--https", certs.https(), "--https-ca", certs.ca_file)


def get_json(url: str, context: ssl.SSLContext) -> Any:
    with urllib.request.urlopen(url, context=context, timeout=WAIT) as response:
        assert response.status == 200
        return json.load(response)


def client_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def wait_for_drop(server: ServerProcess, port: int, why: str) -> str:
    """The log line of the server dropping our connection from ``port``."""
    return server.wait_for_log(
        rf"connection from \('127\.0\.0\.1', {port}\) dropped: {why}"
    )


# -- HTTPS --------------------------------------------------------------------


def test_an_https_request_sees_scheme_https_and_https_on(server, certs):
    env = get_json(server.https_url + "/env", certs.client_context())
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"
    assert env["SERVER_PORT"] == str(server.port_of("https"))
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_http_and_https_listeners_serve_the_same_app(server, certs):
    plain = get_json(server.http_url + "/env", certs.client_context())
    assert plain["wsgi.url_scheme"] == "http"
    assert plain["HTTPS"] is None
    assert plain["SERVER_PORT"] == str(server.port_of("http"))
    secure = get_json(server.https_url + "/env", certs.client_context())
    assert secure["wsgi.url_scheme"] == "https"
    assert server.port_of("http") != server.port_of("https")


def test_keep_alive_and_big_bodies_over_one_tls_connection(server, certs):
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        server.port_of("https"),
        context=certs.client_context(),
        timeout=WAIT,
    )
    try:
        for size in (0, 100, 5 * 1024 * 1024, 17):
            conn.request("GET", f"/big?n={size}")
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert body == bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    finally:
        conn.close()


# -- wss:// ---------------------------------------------------------------------
#
# websockets' asyncio client, not its sync one: the sync client reads in a
# background thread while the caller's thread writes, and concurrent reads
# and writes on one ssl socket are not safe. Over TLS it intermittently
# loses its upgrade request (the server then times the connection out),
# against geows and against websockets' own sync server alike; see
# python-websockets/websockets#1648 and python/cpython#137583.


def wss_echo(
    url: str,
    context: ssl.SSLContext,
    messages: list[Any],
    *,
    pipelined: bool = False,
    max_size: Optional[int] = 2**20,
) -> list[Any]:
    """Send ``messages`` one by one (or all before reading any); the replies."""

    async def talk() -> list[Any]:
        async with connect(
            url, ssl=context, max_size=max_size, open_timeout=WAIT
        ) as ws:
            replies = []
            for message in messages:
                await ws.send(message)
                if not pipelined:
                    replies.append(await asyncio.wait_for(ws.recv(), 30))
            for _ in messages if pipelined else ():
                replies.append(await asyncio.wait_for(ws.recv(), WAIT))
            return replies

    return asyncio.run(talk())


@pytest.mark.parametrize("path", ["/echo", "/ws"])
def test_wss_echo_with_the_websockets_client(server, certs, path):
    messages: list[Any] = [b"over tls"]
    if path == "/echo":
        messages.append("text too")
    replies = wss_echo(server.wss_url + path, certs.client_context(), messages)
    assert replies == messages


def test_wss_echo_with_websocket_client(server, certs):
    ws = websocket.create_connection(
        server.wss_url + "/echo",
        timeout=WAIT,
        sslopt={"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": certs.ca_file},
    )
    try:
        for i in range(100):
            ws.send(f"message {i}")
            assert ws.recv() == f"message {i}"
    finally:
        ws.close()


def test_a_10_mib_message_round_trips_over_wss(server, certs):
    # Bigger than any socket buffer: SSL writes meet SSLWantWrite mid-record
    # both ways, and the server reads some 640 TLS records per message.
    data = os.urandom(10 * 1024 * 1024)
    replies = wss_echo(
        server.wss_url + "/echo", certs.client_context(), [data, data], max_size=None
    )
    assert replies == [data, data]


def test_many_small_messages_in_a_row_over_wss(server, certs):
    messages = [f"{i}" for i in range(5000)]
    replies = wss_echo(
        server.wss_url + "/echo", certs.client_context(), messages, pipelined=True
    )
    assert replies == messages


def test_keepalive_pings_reach_a_wss_client(certs):
    args = ("--https", certs.https(), "--websockets-ping-freq", "0.2")
    for server in serve(APP, *args):
        port = server.port_of("https")
        with RawWebSocket(port, "/echo", tls=certs.client_context()) as ws:
            opcodes = []
            while OP_PING not in opcodes:
                frame = ws.recv_frame()
                opcodes.append(frame.opcode)
            ws.send_frame(OP_PONG)
            assert set(opcodes) <= {OP_PING, OP_PONG}
            ws.send_text("still there")
            assert ws.recv_data_frame().payload == b"still there"
        assert_no_traceback(server)


# -- refused and dropped ----------------------------------------------------------


def test_tls_1_2_is_served_and_a_tls_1_1_client_is_refused(server, certs):
    tls12 = certs.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        open_socket(server.port_of("https")) as sock,
        tls12.wrap_socket(sock, server_hostname="127.0.0.1") as conn,
    ):
        assert conn.version() == "TLSv1.2"

    tls11 = certs.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls11.minimum_version = ssl.TLSVersion.TLSv1
        tls11.maximum_version = ssl.TLSVersion.TLSv1_1
    tls11.set_ciphers("DEFAULT:@SECLEVEL=0")  # TLS 1.1 needs SHA-1 suites
    with open_socket(server.port_of("https")) as sock:
        port = client_port(sock)
        with pytest.raises(ssl.SSLError) as info:
            tls11.wrap_socket(sock, server_hostname="127.0.0.1")
    if info.value.reason == "NO_PROTOCOLS_AVAILABLE":
        pytest.skip(
            "this OpenSSL cannot even offer TLS 1.1: the server's refusal of it "
            "is untested here (TLS 1.2 served: tested above)"
        )
    assert info.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    line = wait_for_drop(server, port, "TLS handshake failed")
    assert "unsupported protocol" in line.lower()


def test_plain_http_to_the_tls_port_is_dropped(server, certs):
    with open_socket(server.port_of("https")) as sock:
        port = client_port(sock)
        sock.sendall(b"GET /env HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            assert sock.recv(1024) == b""
        except DROPPED:
            pass
    assert "http request" in wait_for_drop(server, port, "TLS handshake failed")
    assert get_json(server.https_url + "/env", certs.client_context())


def test_a_client_that_never_handshakes_is_dropped_and_others_are_served(server, certs):
    with open_socket(server.port_of("https"), timeout=WAIT) as silent:
        port = client_port(silent)
        # Served while the silent one waits.
        assert get_json(server.https_url + "/env", certs.client_context())
        assert silent.recv(1) == b""  # the server closed it
    wait_for_drop(server, port, "no TLS handshake within 1s")
    assert get_json(server.https_url + "/env", certs.client_context())


def test_a_partial_client_hello_is_dropped(server, certs):
    bios = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello_maker = certs.client_context().wrap_bio(*bios, server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        hello_maker.do_handshake()
    hello = bios[1].read()
    with open_socket(server.port_of("https"), timeout=WAIT) as sock:
        port = client_port(sock)
        sock.sendall(hello[: len(hello) // 2])
        try:
            assert sock.recv(1) == b""
        except DROPPED:
            pass
    wait_for_drop(server, port, "no TLS handshake within 1s")
    assert_no_traceback(server)


# -- client certificates -------------------------------------------------------------


def test_a_client_certificate_from_the_ca_is_accepted(client_ca_server, certs):
    context = certs.client_context(client_cert=certs.client_file)
    env = get_json(client_ca_server.https_url + "/env", context)
    assert env["HTTPS"] == "on"
    replies = wss_echo(client_ca_server.wss_url + "/echo", context, ["certified"])
    assert replies == ["certified"]


def request_env(sock: socket.socket, context: ssl.SSLContext) -> bytes:
    """GET /env over TLS on ``sock``; ConnectionResetError for an EOF."""
    conn = context.wrap_socket(sock, server_hostname="127.0.0.1")
    conn.sendall(b"GET /env HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = conn.recv(1024)
    if not data:
        raise ConnectionResetError("EOF")
    return data


def refused(server: ServerProcess, context: ssl.SSLContext) -> str:
    """Fail an HTTPS request with ``context``; the server's log line of it."""
    with open_socket(server.port_of("https")) as sock:
        port = client_port(sock)
        # TLS 1.3: the client finishes its side before the server has
        # checked its certificate; the refusal arrives on the first read.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request_env(sock, context)
    return wait_for_drop(server, port, "TLS handshake failed")


def test_a_client_without_a_certificate_is_refused(client_ca_server, certs):
    line = refused(client_ca_server, certs.client_context())
    assert "certificate" in line.lower()


def test_a_client_certificate_from_another_ca_is_refused(
    client_ca_server, certs, tmp_path
):
    stranger = make_certs(tmp_path)
    line = refused(
        client_ca_server, certs.client_context(client_cert=stranger.client_file)
    )
    assert re.search("certificate|unknown ca", line.lower())
    assert_no_traceback(client_ca_server)


# -- a browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_over_https(certs: Certs) -> Iterator[ServerProcess]:
    yield from serve(str(EXAMPLES / "echo.py"), "--https", certs.https())


def test_chromium_echoes_over_wss(echo_over_https):
    # Chromium cannot be told to trust one CA without an NSS database: it
    # ignores certificate errors instead (the clients above verify).
    with chromium("--ignore-certificate-errors", ignore_https_errors=True) as browser:
        page = browser.new_page()
        page.goto(echo_over_https.https_url + "/")
        assert page.evaluate("location.protocol") == "https:"
        log = page.locator("#log")
        page.wait_for_function(
            "document.getElementById('log').textContent.includes('open')",
            timeout=10_000,
        )
        page.fill("#m", "hello over wss")
        page.click("button")
        page.wait_for_function(
            "document.getElementById('log').textContent.includes('< hello over wss')",
            timeout=10_000,
        )
        assert "closed" not in log.inner_text()
    assert_no_traceback(echo_over_https)
