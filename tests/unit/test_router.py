"""Routes and the sans-I/O half of the relay (geows.router): parsing
``--route``, matching, the request an http or uwsgi backend gets, where a
request body ends, how a backend's answer is framed, WebSocket frame
boundaries in a relayed stream.
"""

from __future__ import annotations

import re
import struct
from http import HTTPStatus
from pathlib import Path

import pytest

from geows.config import Config, ConfigError, read_ini
from geows.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, encode_frame
from geows.http import HTTPError, HTTPLimits, parse_head
from geows.router import (
    Backend,
    BadGateway,
    FrameTracker,
    RequestBody,
    ResponseWatcher,
    Route,
    find_route,
    http_request_head,
    parse_route,
    uwsgi_vars,
)
from geows.uwsgi_proto import encode_packet, parse_packet


def request(raw: bytes):
    parsed = parse_head(raw, HTTPLimits())
    assert parsed is not None
    return parsed[0]


def head_lines(data: bytes) -> list[str]:
    assert data.endswith(b"\r\n\r\n")
    return data[:-4].decode("latin-1").split("\r\n")


# -- parsing --route -----------------------------------------------------------


def test_an_http_route_has_a_regex_and_a_host_and_port() -> None:
    route = parse_route("^/websocket http:127.0.0.1:8080")
    assert route.pattern.pattern == "^/websocket"
    assert route.action == Backend("http", ("127.0.0.1", 8080))
    assert str(route) == "^/websocket http:127.0.0.1:8080"


def test_a_uwsgi_route_takes_uwsgis_modifiers() -> None:
    route = parse_route("^/ws uwsgi:127.0.0.1:3032,0,0")
    assert route.action == Backend("uwsgi", ("127.0.0.1", 3032), 0, 0)
    assert parse_route("^/ws uwsgi:127.0.0.1:3032,5,9").action.modifier2 == 9


def test_uwsgi_modifiers_default_to_zero() -> None:
    assert parse_route(". uwsgi:h:1").action == Backend("uwsgi", ("h", 1), 0, 0)
    assert parse_route(". uwsgi:h:1,7").action == Backend("uwsgi", ("h", 1), 7, 0)
    assert str(parse_route(". uwsgi:h:1").action) == "uwsgi:h:1,0,0"


def test_a_backend_may_be_ipv6_or_a_unix_socket() -> None:
    assert parse_route(". http:[::1]:81").action.address == ("::1", 81)
    assert str(parse_route(". http:[::1]:81").action) == "http:[::1]:81"
    assert parse_route(". uwsgi:/run/app.sock,0,0").action.address == "/run/app.sock"
    assert parse_route(". http:unix:/run/b.sock").action.address == "/run/b.sock"


def test_spaces_around_and_between_are_forgiven() -> None:
    route = parse_route("  ^/a   http:127.0.0.1:1  ")
    assert (route.pattern.pattern, route.action.address) == ("^/a", ("127.0.0.1", 1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("^/ws", "not 'REGEX ACTION'"),
        ("", "not 'REGEX ACTION'"),
        ("^/( http:h:1", "bad regex '^/('"),
        ("^/ws rewrite:/x", "unsupported action 'rewrite:/x'"),
        ("^/ws https:h:443", "unsupported action"),
        ("^/ws http", "unsupported action"),
        ("^/ws http:h", "not HOST:PORT"),
        ("^/ws http::80", "not HOST:PORT"),
        ("^/ws http:h:0", "not HOST:PORT"),
        ("^/ws http:h:65536", "not HOST:PORT"),
        ("^/ws http:h:8080 extra", "not HOST:PORT"),
        ("^/ws http:h:1,0,0", "http: takes an address only"),
        ("^/ws uwsgi:h:1,0,0,0", "at most two modifiers"),
        ("^/ws uwsgi:h:1,256", "modifier '256' is not 0-255"),
        ("^/ws uwsgi:h:1,x", "modifier 'x' is not 0-255"),
        ("^/ws uwsgi:unix:", "no Unix socket path"),
    ],
)
def test_a_bad_route_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_route(text)


def test_a_bad_route_is_a_config_error_naming_the_option() -> None:
    config = Config(app="app.py", route=["^/ws http:h:1", "^/( http:h:1"])
    with pytest.raises(ConfigError, match=r"^--route '\^/\( http:h:1': bad regex"):
        config.validate()


def test_routes_keep_the_order_given() -> None:
    config = Config(app="app.py", route=["^/a http:h:1", "^/ uwsgi:h:2"])
    config.validate()
    assert [str(r.action) for r in config.routes()] == ["http:h:1", "uwsgi:h:2,0,0"]


def test_an_ini_file_repeats_route_as_uwsgi_does(tmp_path: Path) -> None:
    ini = tmp_path / "app.ini"
    ini.write_text(
        "[uwsgi]\n"
        "route = ^/websocket uwsgi:127.0.0.1:3032,0,0\n"
        "route = ^/api http:127.0.0.1:8080\n"
        "route-timeout = 5\n"
    )
    config = Config(app="app.py")
    config.update(read_ini(str(ini)))
    routes = config.routes()
    assert [r.action.protocol for r in routes] == ["uwsgi", "http"]
    assert config.route_timeout == 5.0


# -- matching ------------------------------------------------------------------


def routes(*texts: str) -> list[Route]:
    return [parse_route(t) for t in texts]


def test_the_regex_is_searched_not_anchored() -> None:
    table = routes(r"\.php$ http:h:1")
    assert find_route(table, "/shop/index.php") is table[0]
    assert find_route(table, "/index.php/x") is None


def test_the_first_match_wins() -> None:
    table = routes("^/ws/admin http:h:1", "^/ws http:h:2")
    assert find_route(table, "/ws/admin/x") is table[0]
    assert find_route(table, "/ws/chat") is table[1]
    assert find_route(table, "/other") is None


# -- the request an http backend gets ------------------------------------------


def test_a_plain_request_goes_with_connection_close_and_forwarded_fields() -> None:
    req = request(
        b"POST /api?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 3\r\nX-Test: yes\r\n\r\n"
    )
    lines = head_lines(http_request_head(req, "10.0.0.7", "https"))
    assert lines == [
        "POST /api?q=1 HTTP/1.1",
        "host: example.com",
        "content-length: 3",
        "x-test: yes",
        "connection: close",
        "x-forwarded-for: 10.0.0.7",
        "x-forwarded-proto: https",
        "x-forwarded-host: example.com",
    ]


def test_the_client_address_is_appended_to_x_forwarded_for() -> None:
    req = request(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n"
        b"X-Forwarded-For: 5.6.7.8\r\n\r\n"
    )
    lines = head_lines(http_request_head(req, "127.0.0.1", "http"))
    assert "x-forwarded-for: 1.2.3.4, 5.6.7.8, 127.0.0.1" in lines


def test_a_clients_own_forwarded_proto_and_host_are_not_passed_on() -> None:
    req = request(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: evil\r\n\r\n"
    )
    lines = head_lines(http_request_head(req, "127.0.0.1", "http"))
    assert [x for x in lines if x.startswith("x-forwarded-")] == [
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: h",
    ]


def test_an_upgrade_keeps_connection_upgrade_and_its_upgrade_field() -> None:
    req = request(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: k\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    lines = head_lines(http_request_head(req, "127.0.0.1", "http"))
    assert lines[:5] == [
        "GET /ws HTTP/1.1",
        "host: h",
        "upgrade: websocket",
        "sec-websocket-key: k",
        "sec-websocket-version: 13",
    ]
    assert "connection: upgrade" in lines
    assert "connection: close" not in lines


def test_an_upgrade_field_without_connection_upgrade_is_dropped() -> None:
    req = request(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
    lines = head_lines(http_request_head(req, "127.0.0.1", "http"))
    assert "upgrade: websocket" not in lines
    assert "connection: close" in lines


def test_fields_named_by_connection_are_dropped_but_never_the_framing() -> None:
    req = request(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: x-secret, content-length\r\n"
        b"X-Secret: 1\r\nContent-Length: 2\r\n\r\n"
    )
    lines = head_lines(http_request_head(req, "127.0.0.1", "http"))
    assert "x-secret: 1" not in lines
    assert "content-length: 2" in lines


def test_a_chunked_request_keeps_its_transfer_encoding() -> None:
    req = request(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert "transfer-encoding: chunked" in head_lines(
        http_request_head(req, "127.0.0.1", "http")
    )


# -- the packet a uwsgi backend gets -------------------------------------------


ENVIRON = {
    "REQUEST_METHOD": "POST",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/ws/caf\xc3\xa9",
    "QUERY_STRING": "a=1",
    "REQUEST_URI": "/ws/caf%C3%A9?a=1",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "50000",
    "CONTENT_TYPE": "text/plain",
    "CONTENT_LENGTH": "5",
    "HTTP_HOST": "example.com",
    "HTTP_EXPECT": "100-continue",
    "HTTP_TRANSFER_ENCODING": "chunked",
    "HTTP_UPGRADE": "websocket",
    "wsgi.url_scheme": "https",
    "wsgi.input": object(),
}


def test_uwsgi_vars_are_the_cgi_variables_and_the_http_fields() -> None:
    found = dict(uwsgi_vars(ENVIRON, 11))
    assert found == {
        "REQUEST_METHOD": "POST",
        "REQUEST_URI": "/ws/caf%C3%A9?a=1",
        "PATH_INFO": "/ws/caf\xc3\xa9",
        "QUERY_STRING": "a=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "11",
        "REQUEST_SCHEME": "https",
        "UWSGI_SCHEME": "https",
        "HTTPS": "on",
        "HTTP_HOST": "example.com",
        "HTTP_UPGRADE": "websocket",
    }


def test_uwsgi_vars_have_no_content_length_without_a_body() -> None:
    found = dict(uwsgi_vars({**ENVIRON, "wsgi.url_scheme": "http"}, None))
    assert "CONTENT_LENGTH" not in found
    assert "HTTPS" not in found


def test_uwsgi_vars_make_a_packet_a_uwsgi_server_reads_back() -> None:
    packet = encode_packet(uwsgi_vars(ENVIRON, 5), 0, 0)
    parsed = parse_packet(packet + b"hello")
    assert parsed is not None
    req, size = parsed
    assert size == len(packet)
    assert req.vars["PATH_INFO"].encode("latin-1") == "/ws/café".encode()
    assert req.content_length == 5


# -- where a request body ends -------------------------------------------------


def test_a_length_body_ends_after_its_length() -> None:
    body = RequestBody("length", 5)
    assert body.feed(b"abc") == (b"abc", b"")
    assert not body.done
    assert body.feed(b"deGET /") == (b"de", b"GET /")
    assert body.done
    assert body.feed(b"more") == (b"", b"more")


def test_no_body_is_done_at_once() -> None:
    assert RequestBody("none").done
    assert RequestBody("length", 0).done
    assert RequestBody("none").feed(b"x") == (b"", b"x")


def test_a_chunked_body_is_passed_on_with_its_framing_up_to_its_end() -> None:
    raw = b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: t\r\n\r\n"
    body = RequestBody("chunked")
    out = b""
    for i in range(len(raw)):
        part, rest = body.feed(raw[i : i + 1])
        out += part
        assert rest == b""
    assert body.done
    assert out == raw


def test_what_follows_a_chunked_body_is_not_part_of_it() -> None:
    body = RequestBody("chunked")
    assert body.feed(b"2\r\nab\r\n0\r\n\r\nNEXT") == (b"2\r\nab\r\n0\r\n\r\n", b"NEXT")


def test_bad_chunking_is_an_http_error_before_the_backend_sees_it() -> None:
    with pytest.raises(HTTPError) as info:
        RequestBody("chunked").feed(b"zz\r\n")
    assert info.value.status == HTTPStatus.BAD_REQUEST


def test_a_chunked_body_over_the_limit_is_413() -> None:
    body = RequestBody("chunked", None, HTTPLimits(), max_body=4)
    with pytest.raises(HTTPError) as info:
        body.feed(b"5\r\nabcde\r\n")
    assert info.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


# -- the backend's answer ------------------------------------------------------


def feed_all(watcher: ResponseWatcher, data: bytes, step: int = 0) -> bytes:
    if not step:
        return watcher.feed(data)
    return b"".join(watcher.feed(data[i : i + step]) for i in range(0, len(data), step))


@pytest.mark.parametrize("step", [0, 1, 7])
def test_a_content_length_answer_ends_after_its_body(step: int) -> None:
    watcher = ResponseWatcher("GET", websocket=False)
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
    )
    out = feed_all(watcher, answer + b"JUNK", step)
    assert (
        out == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    assert watcher.done
    assert watcher.status == 200
    assert not watcher.in_body


@pytest.mark.parametrize("step", [0, 1, 5])
def test_a_chunked_answer_ends_after_its_last_chunk(step: int) -> None:
    watcher = ResponseWatcher("GET", websocket=False)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    body = b"5\r\nhello\r\n0\r\n\r\n"
    out = feed_all(watcher, head + b"\r\n" + body + b"JUNK", step)
    assert out == head + b"Connection: close\r\n\r\n" + body
    assert watcher.done


def test_an_answer_without_length_runs_to_the_backends_eof() -> None:
    watcher = ResponseWatcher("GET", websocket=False)
    out = watcher.feed(b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\n\r\nsome")
    assert out == b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nsome"
    assert watcher.feed(b" more") == b" more"
    assert not watcher.done
    assert not watcher.in_body  # EOF is its end


@pytest.mark.parametrize(
    ("method", "status"), [("HEAD", "200 OK"), ("GET", "204 No Content")]
)
def test_bodiless_answers_end_with_their_head(method: str, status: str) -> None:
    watcher = ResponseWatcher(method, websocket=False)
    out = watcher.feed(f"HTTP/1.1 {status}\r\nContent-Length: 9\r\n\r\n".encode())
    assert out.endswith(b"Connection: close\r\n\r\n")
    assert watcher.done


def test_interim_answers_pass_as_they_are_before_the_final_one() -> None:
    watcher = ResponseWatcher("POST", websocket=False)
    assert watcher.feed(b"HTTP/1.1 100 Continue\r\n\r\n") == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    assert watcher.started
    assert watcher.status == 0
    assert watcher.in_body
    out = watcher.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert (
        out == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert (watcher.status, watcher.done) == (201, True)


def test_a_101_turns_into_a_tunnel_with_frames_tracked() -> None:
    watcher = ResponseWatcher("GET", websocket=True)
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n"
    )
    frame = encode_frame(OP_TEXT, b"hi")
    assert watcher.feed(head + frame[:3]) == head + frame[:3]
    assert (watcher.status, watcher.tunnel, watcher.done) == (101, True, False)
    assert watcher.frames is not None
    assert not watcher.frames.at_boundary
    assert watcher.feed(frame[3:]) == frame[3:]
    assert watcher.frames.at_boundary


def test_a_101_to_something_else_is_a_tunnel_without_frames() -> None:
    watcher = ResponseWatcher("GET", websocket=False)
    watcher.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
    assert watcher.tunnel
    assert watcher.frames is None


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_an_answer_that_is_not_http_is_a_bad_gateway(answer: bytes) -> None:
    with pytest.raises(BadGateway):
        ResponseWatcher("GET", websocket=False).feed(answer)


def test_a_head_that_never_ends_is_a_bad_gateway() -> None:
    watcher = ResponseWatcher("GET", False, HTTPLimits(max_head=100))
    watcher.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(BadGateway, match="too large"):
        watcher.feed(b"X: " + b"y" * 200)


# -- frame boundaries ----------------------------------------------------------


def frames_stream() -> bytes:
    return b"".join(
        (
            encode_frame(OP_TEXT, b"a" * 5),
            encode_frame(OP_BINARY, b"b" * 300),  # 16-bit length
            encode_frame(OP_BINARY, b"c" * 70000),  # 64-bit length
            encode_frame(OP_PING, b""),
            encode_frame(OP_TEXT, b"masked", mask=b"\x01\x02\x03\x04"),
        )
    )


@pytest.mark.parametrize("step", [1, 2, 3, 13, 14, 4096, 1 << 20])
def test_frame_boundaries_are_found_however_the_stream_is_cut(step: int) -> None:
    stream = frames_stream()
    ends = set()
    pos = 0
    for size in (5 + 2, 300 + 4, 70000 + 10, 2, 6 + 6):
        pos += size
        ends.add(pos)
    tracker = FrameTracker()
    for i in range(0, len(stream), step):
        tracker.feed(stream[i : i + step])
        end = min(i + step, len(stream))
        assert tracker.at_boundary == (end in ends), end
    assert tracker.at_boundary
    assert not tracker.closed


def test_a_close_frame_is_noticed() -> None:
    tracker = FrameTracker()
    tracker.feed(encode_frame(OP_TEXT, b"x") + encode_frame(OP_CLOSE, b"\x03\xe8")[:1])
    assert not tracker.closed
    tracker.feed(encode_frame(OP_CLOSE, b"\x03\xe8")[1:])
    assert tracker.closed
    assert tracker.at_boundary


def test_a_length_with_the_top_bit_set_breaks_tracking_for_good() -> None:
    tracker = FrameTracker()
    tracker.feed(struct.pack("!BBQ", 0x82, 127, 1 << 63))
    assert tracker.broken
    assert not tracker.at_boundary
    tracker.feed(encode_frame(OP_TEXT, b"x"))
    assert not tracker.at_boundary
