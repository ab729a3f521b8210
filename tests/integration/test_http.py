"""Plain HTTP/1.1 through ``geows serve``, byte by byte over raw sockets.

App: tests/apps/http_app.py.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.support import (
    Reader,
    http_exchange,
    open_socket,
    read_head,
    read_response,
    request_bytes,
    serve,
)
from tests.servers import APPS

APP = str(APPS / "http_app.py")

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(scope="module")
def server():
    yield from serve(APP)


@pytest.fixture(scope="module")
def impatient_server():
    # --http explicitly: tests/servers.py adds "--http 127.0.0.1:0" only when
    # no argument starts with "--http", and "--http-header-timeout" does.
    yield from serve(APP, "--http", "127.0.0.1:0", "--http-header-timeout", "0.5")


@pytest.fixture
def conn(server):
    """A raw connection to the server and its reader."""
    sock = open_socket(server.port)
    try:
        yield sock, Reader(sock)
    finally:
        sock.close()


def chunked(*pieces: bytes) -> bytes:
    """A chunked request body."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return body + b"0\r\n\r\n"


# -- responses and keep-alive -----------------------------------------------------


def test_keep_alive_serves_several_requests(conn):
    sock, reader = conn
    for target in ("/one", "/env", "/chunks", "/one"):
        sock.sendall(request_bytes("GET", target))
        response = read_response(reader)
        assert response.status == 200
        assert response.header("Connection") is None
    assert response.body == b"single"


def test_chunked_response_for_several_pieces(server):
    response = http_exchange(server.port, "GET", "/chunks")
    assert response.status == 200
    assert response.chunked
    assert response.header("Content-Length") is None
    assert response.body == b"first,second,third"


def test_content_length_for_single_item_list(server):
    response = http_exchange(server.port, "GET", "/one")
    assert response.header("Content-Length") == "6"
    assert response.header("Transfer-Encoding") is None
    assert response.body == b"single"


def test_http10_request_closes_the_connection(conn):
    sock, reader = conn
    sock.sendall(request_bytes("GET", "/one", version="HTTP/1.0"))
    response = read_response(reader)
    assert (response.version, response.status) == ("HTTP/1.0", 200)
    assert response.header("Connection") == "close"
    assert response.body == b"single"
    assert reader.at_eof()


def test_http10_streamed_body_ends_with_the_connection(conn):
    sock, reader = conn
    sock.sendall(request_bytes("GET", "/chunks", version="HTTP/1.0"))
    response = read_response(reader)
    assert response.header("Transfer-Encoding") is None
    assert not response.chunked
    assert response.body == b"first,second,third"


def test_http10_keep_alive_when_asked(conn):
    sock, reader = conn
    ask = [("Connection", "keep-alive")]
    sock.sendall(request_bytes("GET", "/one", ask, version="HTTP/1.0"))
    response = read_response(reader)
    assert response.header("Connection") == "keep-alive"
    sock.sendall(request_bytes("GET", "/one", ask, version="HTTP/1.0"))
    assert read_response(reader).body == b"single"


def test_connection_close_request_header(conn):
    sock, reader = conn
    sock.sendall(request_bytes("GET", "/one", [("Connection", "close")]))
    response = read_response(reader)
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert reader.at_eof()


def test_pipelined_requests_answered_in_order(conn):
    sock, reader = conn
    sock.sendall(
        request_bytes("GET", "/one")
        + request_bytes("POST", "/body?mode=read", [("Content-Length", "5")], b"hello")
        + request_bytes(
            "POST",
            "/body?mode=iter",
            [("Transfer-Encoding", "chunked")],
            chunked(b"a\nb", b"\nc"),
        )
        + request_bytes("GET", "/chunks")
        + request_bytes("GET", "/env?third")
    )
    assert read_response(reader).body == b"single"
    assert json.loads(read_response(reader).body) == ["hello"]
    assert json.loads(read_response(reader).body) == ["a\n", "b\n", "c"]
    assert read_response(reader).body == b"first,second,third"
    assert json.loads(read_response(reader).body)["QUERY_STRING"] == "third"


@pytest.mark.parametrize("target", ["/one", "/chunks"])
def test_head_has_no_body(conn, target):
    sock, reader = conn
    sock.sendall(request_bytes("HEAD", target))
    response = read_response(reader, "HEAD")
    assert response.status == 200
    # The next response on the connection must start right after the head.
    sock.sendall(request_bytes("GET", "/env"))
    start = reader.read_exact(5)
    assert start == b"HTTP/", f"bytes after the HEAD response: {start!r}"


def test_204_has_no_body(conn):
    sock, reader = conn
    sock.sendall(request_bytes("GET", "/nocontent"))
    assert read_response(reader).status == 204
    sock.sendall(request_bytes("GET", "/one"))
    assert read_response(reader).body == b"single"


def test_body_shorter_than_content_length_closes(conn):
    sock, reader = conn
    sock.sendall(request_bytes("GET", "/short"))
    response = read_head(reader)
    assert response.header("Content-Length") == "10"
    assert reader.read_to_eof() == b"abcdef"  # then the server hangs up


def test_body_longer_than_content_length_is_cut_and_closes(conn):
    sock, reader = conn
    sock.sendall(request_bytes("GET", "/long"))
    response = read_response(reader)
    assert response.body == b"abc"
    assert reader.at_eof()


def test_head_response_head(conn):
    sock, reader = conn
    sock.sendall(request_bytes("HEAD", "/one", [("Connection", "close")]))
    response = read_response(reader, "HEAD")
    assert response.status == 200
    assert response.header("Content-Length") == "6"  # as a GET would say
    assert response.header("Transfer-Encoding") is None


# -- request bodies -----------------------------------------------------------------


BODY_PIECES = (b"hello\nwor", b"ld\n", b"last")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("read", ["hello\nworld\nlast"]),
        ("readline", ["hello\n", "world\n", "last"]),
        ("iter", ["hello\n", "world\n", "last"]),
        ("sized", ["hell", "o\nwo", "rld\n", "last"]),
    ],
)
def test_chunked_request_body(conn, mode, expected):
    sock, reader = conn
    headers = [("Transfer-Encoding", "chunked")]
    sock.sendall(request_bytes("POST", f"/body?mode={mode}", headers))
    for piece in BODY_PIECES:  # in separate segments, like a streaming client
        sock.sendall(chunked(piece)[: -len(b"0\r\n\r\n")])
    sock.sendall(b"0\r\n\r\n")
    response = read_response(reader)
    assert response.status == 200
    assert json.loads(response.body) == expected
    # The connection is still in sync for the next request.
    sock.sendall(request_bytes("GET", "/one"))
    assert read_response(reader).body == b"single"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("read", ["hello\nworld\nlast"]),
        ("readline", ["hello\n", "world\n", "last"]),
        ("iter", ["hello\n", "world\n", "last"]),
    ],
)
def test_content_length_request_body(conn, mode, expected):
    sock, reader = conn
    body = b"".join(BODY_PIECES)
    headers = [("Content-Length", str(len(body))), ("Content-Type", "text/plain")]
    sock.sendall(request_bytes("POST", f"/body?mode={mode}", headers, body))
    response = read_response(reader)
    assert json.loads(response.body) == expected
    sock.sendall(request_bytes("GET", "/one"))
    assert read_response(reader).body == b"single"


def test_unread_body_is_skipped_for_the_next_request(conn):
    sock, reader = conn
    sock.sendall(
        request_bytes("POST", "/one", [("Content-Length", "11")], b"ignored bod")
    )
    assert read_response(reader).body == b"single"
    sock.sendall(request_bytes("GET", "/env"))
    assert json.loads(read_response(reader).body)["PATH_INFO"] == "/env"


def test_expect_100_continue(conn):
    sock, reader = conn
    headers = [("Content-Length", "5"), ("Expect", "100-continue")]
    sock.sendall(request_bytes("POST", "/body?mode=read", headers))
    interim = read_head(reader)  # nothing sent yet: the server must invite it
    assert (interim.status, interim.reason) == (100, "Continue")
    sock.sendall(b"howdy")
    response = read_response(reader)
    assert response.status == 200
    assert json.loads(response.body) == ["howdy"]


def test_expect_100_continue_not_sent_when_body_unread(conn):
    sock, reader = conn
    headers = [("Content-Length", "5"), ("Expect", "100-continue")]
    sock.sendall(request_bytes("POST", "/one", headers))
    response = read_response(reader)
    assert response.status == 200  # the final answer, no 100 before it
    assert response.body == b"single"


# -- refusals -----------------------------------------------------------------------


def _refusal(server, raw: bytes):
    with open_socket(server.port) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        response = read_response(reader)
        assert response.header("Connection") == "close"
        assert reader.at_eof()
        return response


def test_bad_request_line_is_400(server):
    assert _refusal(server, b"THIS IS NOT HTTP AT ALL\r\n\r\n").status == 400
    assert _refusal(server, b"GET /\r\nHost: x\r\n\r\n").status == 400


def test_unsupported_http_version_is_505(server):
    assert _refusal(server, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").status == 505


def test_too_long_request_line_is_414(server):
    target = "/env?" + "q" * 9000
    assert _refusal(server, request_bytes("GET", target)).status == 414


def test_too_many_headers_is_431(server):
    headers = [(f"X-Filler-{i}", "v") for i in range(101)]
    assert _refusal(server, request_bytes("GET", "/one", headers)).status == 431


@pytest.mark.parametrize("coding", ["gzip, chunked", "x-custom"])
def test_unsupported_transfer_encoding_is_501(server, coding):
    raw = request_bytes("POST", "/body", [("Transfer-Encoding", coding)])
    assert _refusal(server, raw).status == 501


def test_missing_host_is_400(server):
    assert _refusal(server, b"GET /one HTTP/1.1\r\n\r\n").status == 400


def test_stalled_head_gets_408(impatient_server):
    with open_socket(impatient_server.port) as sock:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        reader = Reader(sock)
        response = read_response(reader)
        assert response.status == 408
        assert reader.at_eof()


def test_idle_keep_alive_connection_is_closed_quietly(impatient_server):
    with open_socket(impatient_server.port) as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes("GET", "/one"))
        assert read_response(reader).body == b"single"
        # Nothing more is sent: the server hangs up without a 408.
        assert reader.read_to_eof() == b""


# -- application errors -------------------------------------------------------------


def test_app_exception_is_500_with_traceback_logged(server, conn):
    sock, reader = conn
    sock.sendall(request_bytes("GET", "/boom"))
    response = read_response(reader)
    assert response.status == 500
    assert b"kaboom" not in response.body  # never the error to the client
    assert response.header("Connection") == "close"
    assert reader.at_eof()
    server.wait_for_log(r"RuntimeError: kaboom before start_response")
    assert "Traceback" in server.log


def test_app_exception_mid_body_cuts_the_connection(server, conn):
    sock, reader = conn
    sock.sendall(request_bytes("GET", "/boom-late"))
    head = read_head(reader)
    assert head.status == 200
    rest = reader.read_to_eof()
    assert b"partial" in rest
    assert not rest.endswith(b"0\r\n\r\n")  # no clean end: the client can tell
    server.wait_for_log(r"RuntimeError: kaboom mid-body")


# -- the environ --------------------------------------------------------------------


def _env(server, target: str, headers=None) -> dict:
    response = http_exchange(server.port, "GET", target, headers)
    assert response.status == 200
    return json.loads(response.body)


def test_path_info_is_percent_decoded(server):
    env = _env(server, "/env/caf%C3%A9%20x%2Fy")
    # PEP 3333: the decoded bytes, as latin-1 characters.
    assert env["PATH_INFO"] == "/env/caf\u00e9 x/y".encode().decode("latin-1")


def test_query_string_is_passed_undecoded(server):
    env = _env(server, "/env?a=1&b=%20x&c")
    assert env["QUERY_STRING"] == "a=1&b=%20x&c"
    assert env["PATH_INFO"] == "/env"
    assert _env(server, "/env")["QUERY_STRING"] == ""


def test_environ_basics(server):
    env = _env(server, "/env", [("X-Test", "yes")])
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SCRIPT_NAME"] == ""
    assert env["HTTP_X_TEST"] == "yes"


def test_absolute_form_target(server):
    env = _env(server, "http://127.0.0.1/env/abs?k=v")
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/env/abs", "k=v")


def test_repeated_header_is_joined(server):
    env = _env(server, "/env", [("X-Test", "a"), ("X-Test", "b")])
    assert env["HTTP_X_TEST"] == "a,b"


def test_header_with_underscore_is_not_trusted(server):
    env = _env(server, "/env", [("X_Test", "spoofed")])
    assert env["HTTP_X_TEST"] is None


def test_body_headers_in_environ(server):
    response = http_exchange(
        server.port,
        "POST",
        "/env",
        [("Content-Type", "text/plain"), ("Content-Length", "2")],
        b"hi",
    )
    env = json.loads(response.body)
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "2")
    assert env["REQUEST_METHOD"] == "POST"
