"""``geows serve`` as a process: loading apps, options and ini files, logging,
signals and exit statuses.

App: tests/apps/lifecycle_app.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.integration.support import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    RawWebSocket,
    Reader,
    assert_no_traceback,
    http_exchange,
    open_socket,
    read_response,
    request_bytes,
)
from tests.servers import APPS, ROOT, ServerProcess, running

APP = APPS / "lifecycle_app.py"
EXPECT_PATCHED = {"GEOWS_TEST_EXPECT_PATCHED": "1"}

pytestmark = pytest.mark.timeout(30)


def geows(*args: str, env=None) -> subprocess.CompletedProcess:
    """Run ``python -m geows ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "geows", *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=str(ROOT),
        env={**os.environ, **(env or {})},
    )


def start_with_ini(ini: Path, *args: str) -> ServerProcess:
    """``geows serve --ini FILE ARGS``: the ini file gives the app and address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geows", "serve", "--ini", str(ini), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server = ServerProcess(proc)
    deadline = time.monotonic() + 20
    while not server.port:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            raise AssertionError(f"server did not start:\n{server.log}")
        time.sleep(0.02)
    return server


def exit_status(server: ServerProcess) -> int:
    """Wait for a server already signalled (signalling it again could land
    after its handlers are gone, when the default action kills it).
    """
    try:
        return server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        raise AssertionError(f"server did not exit:\n{server.log}") from None


def get(server: ServerProcess, target: str) -> bytes:
    response = http_exchange(server.port, "GET", target)
    assert response.status == 200, response
    return response.body


def echo_sizes(server: ServerProcess, size: int):
    """Send a ``size``-byte message to /ws: the echo, or the close code."""
    with connect(server.ws_url + "/ws", open_timeout=10) as ws:
        ws.send("s" * size)
        try:
            return len(ws.recv(timeout=10))
        except ConnectionClosed as exc:
            return ("closed", exc.rcvd.code if exc.rcvd else None)


# -- loading the app -----------------------------------------------------------------


def test_module_colon_callable_spec():
    with running("tests.apps.lifecycle_app:other", env=EXPECT_PATCHED) as server:
        assert get(server, "/") == b"callable: other"


def test_file_colon_callable_spec():
    with running(f"{APP}:other") as server:
        assert get(server, "/") == b"callable: other"


def test_callable_option():
    with running(str(APP), "--callable", "other") as server:
        assert get(server, "/") == b"callable: other"
        assert server.stop() == 0


def test_monkey_patching_happens_before_app_import():
    # The app asserts at import that socket is already patched.
    with running(str(APP), env=EXPECT_PATCHED) as server:
        assert get(server, "/patched") == b"socket patched: True"
        assert get(server, "/") == b"callable: application"


def test_no_monkey_patch():
    with running(str(APP), "--no-monkey-patch") as server:
        assert get(server, "/patched") == b"socket patched: False"
        # uWSGI websockets still work on an unpatched process.
        assert echo_sizes(server, 10) == 10


def test_app_failing_at_import_exits_nonzero():
    result = geows(
        "serve", str(APP), "--no-monkey-patch", "--http", "127.0.0.1:0",
        env=EXPECT_PATCHED,
    )  # fmt: skip
    assert result.returncode != 0
    assert "socket was not patched before the app was imported" in result.stderr


def test_missing_app_file_exits_nonzero_with_message():
    result = geows("serve", "missing.py", "--http", "127.0.0.1:0")
    assert result.returncode != 0
    assert "no such file: missing.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_callable_exits_nonzero_with_message():
    result = geows("serve", str(APP), "--callable", "nope", "--http", "127.0.0.1:0")
    assert result.returncode != 0
    assert "has no callable 'nope'" in result.stderr


def test_invalid_option_value_exits_nonzero_with_message():
    result = geows("serve", str(APP), "--websockets-pong-tolerance", "0")
    assert result.returncode != 0
    assert "--websockets-pong-tolerance must be > 0" in result.stderr


def test_serve_help_lists_the_options():
    result = geows("serve", "--help")
    assert result.returncode == 0
    for option in (
        "--http",
        "--ini",
        "--callable",
        "--websockets-ping-freq",
        "--websockets-pong-tolerance",
        "--websockets-max-size",
        "--websockets-close-timeout",
        "--http-header-timeout",
        "--shutdown-timeout",
        "--disable-logging",
        "--max-connections",
        "--no-monkey-patch",
    ):
        assert option in result.stdout, option


# -- ini files -----------------------------------------------------------------------


def write_ini(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "app.ini"
    path.write_text(textwrap.dedent(text).format(app=APP), encoding="utf-8")
    return path


def test_uwsgi_ini_section(tmp_path):
    ini = write_ini(
        tmp_path,
        """
        [uwsgi]
        http = 127.0.0.1:0
        wsgi-file = {app}
        master = true
        http-websockets = true
        websockets-max-size = 1
        harakiri = 30
        """,
    )
    server = start_with_ini(ini)
    try:
        server.wait_for_log(r"'harakiri' is not supported by geows; ignored")
        assert get(server, "/") == b"callable: application"
        assert echo_sizes(server, 1024) == 1024
        assert echo_sizes(server, 2000) == ("closed", 1009)
    finally:
        assert server.stop() == 0


def test_geows_ini_section(tmp_path):
    ini = write_ini(
        tmp_path,
        """
        [geows]
        http = 127.0.0.1:0
        app = {app}
        callable = other
        disable-logging = true
        """,
    )
    server = start_with_ini(ini)
    try:
        assert get(server, "/") == b"callable: other"
    finally:
        assert server.stop() == 0
    assert "geows.access" not in server.log


def test_geows_section_wins_over_uwsgi_section(tmp_path):
    # Documented: options come from [geows], else from [uwsgi].
    ini = write_ini(
        tmp_path,
        """
        [uwsgi]
        http = 127.0.0.1:0
        wsgi-file = {app}
        websockets-max-size = 1

        [geows]
        http = 127.0.0.1:0
        wsgi-file = {app}
        """,
    )
    server = start_with_ini(ini)
    try:
        assert echo_sizes(server, 2000) == 2000
    finally:
        assert server.stop() == 0


def test_command_line_overrides_ini(tmp_path):
    ini = write_ini(
        tmp_path,
        """
        [uwsgi]
        http = 127.0.0.1:0
        wsgi-file = {app}
        websockets-max-size = 1
        """,
    )
    server = start_with_ini(ini, "--websockets-max-size", "4")
    try:
        assert echo_sizes(server, 2000) == 2000
    finally:
        assert server.stop() == 0


# -- signals -------------------------------------------------------------------------

#: A short grace period: a regression fails fast instead of waiting 10 s.
GRACE = ("--shutdown-timeout", "2")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_websockets_with_1001_and_exits_0(sig):
    with running(str(APP), *GRACE) as server:
        with connect(server.ws_url + "/ws", open_timeout=10) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            server.proc.send_signal(sig)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
        assert exit_status(server) == 0
    server.wait_for_log(rf"{sig.name}: stopping")
    server.wait_for_log(r"geows stopped")
    assert_no_traceback(server)


def test_signal_close_frame_on_the_wire():
    with running(str(APP), *GRACE) as server:
        with RawWebSocket(server.port, "/ws") as raw:
            server.proc.send_signal(signal.SIGTERM)
            frame = raw.expect_close()
            assert (frame.close_code, frame.close_reason) == (1001, "going away")
            raw.send_frame(OP_CLOSE, frame.payload[:2])
            assert raw.frames_until_eof() == []
        assert exit_status(server) == 0


def test_shutdown_does_not_wait_forever_for_a_silent_peer():
    # The client never answers the close frame: the server gives up on it
    # after the close timeout (inside the grace period) and exits 0.
    args = ("--websockets-close-timeout", "0.5", "--shutdown-timeout", "3")
    with running(str(APP), *args) as server:
        with RawWebSocket(server.port, "/ws") as raw:
            server.proc.send_signal(signal.SIGTERM)
            frames = raw.frames_until_eof()
            opcodes = [f.opcode for f in frames if f.opcode not in (OP_PING, OP_PONG)]
            assert opcodes == [OP_CLOSE]
            assert frames[-1].close_code == 1001
        assert exit_status(server) == 0


def test_signal_lets_an_in_flight_request_finish():
    with running(str(APP)) as server:
        with open_socket(server.port) as sock:
            sock.sendall(request_bytes("GET", "/slow"))
            server.wait_for_log(r"slow request started")
            server.proc.send_signal(signal.SIGTERM)
            response = read_response(Reader(sock))
        assert (response.status, response.body) == (200, b"slow done")
        assert exit_status(server) == 0


# -- access log ----------------------------------------------------------------------


def access_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.lines if "geows.access" in line]


def make_traffic(server: ServerProcess) -> None:
    """Two HTTP requests on one connection, a refused one, a websocket session."""
    with open_socket(server.port) as sock:
        reader = Reader(sock)
        for target in ("/access-one", "/access-two?q=1"):
            sock.sendall(request_bytes("GET", target))
            assert read_response(reader).status == 200
    with open_socket(server.port) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert read_response(Reader(sock)).status == 400
    with connect(server.ws_url + "/ws?session=1", open_timeout=10) as ws:
        for word in ("a", "b", "c"):
            ws.send(word)
            assert ws.recv(timeout=10) == word


def test_access_log_lines():
    with running(str(APP)) as server:
        make_traffic(server)
        server.wait_for_log(r"WEBSOCKET /ws\?session=1")
        assert server.stop() == 0
    lines = access_lines(server)
    assert len(lines) == 4, "\n".join(lines)
    one = [line for line in lines if '"GET /access-one HTTP/1.1" 200 ' in line]
    two = [line for line in lines if '"GET /access-two?q=1 HTTP/1.1" 200 ' in line]
    assert len(one) == 1
    assert len(two) == 1
    assert re.search(r"127\.0\.0\.1 - \"GET /access-one HTTP/1\.1\" 200 21 ", one[0])
    assert len([line for line in lines if "400 (refused)" in line]) == 1
    (ws_line,) = [line for line in lines if "WEBSOCKET" in line]
    assert '"WEBSOCKET /ws?session=1" 1000 in=3 out=3' in ws_line


@pytest.mark.parametrize("option", ["--max-connections", "--gevent"])
def test_connection_cap_queues_the_next_client(option):
    with running(str(APP), option, "1") as server:
        with connect(server.ws_url + "/ws?first", open_timeout=10) as ws:
            ws.send("hold the only slot")
            assert ws.recv(timeout=10) == "hold the only slot"
            waiting = open_socket(server.port)
            waiting.sendall(request_bytes("GET", "/?second"))
            time.sleep(0.3)  # a chance to be served (wrongly) while the slot is held
        with waiting:
            response = read_response(Reader(waiting))
        assert response.body == b"callable: application"
        server.wait_for_log(r"GET /\?second ")
    lines = access_lines(server)
    first = next(i for i, line in enumerate(lines) if "/ws?first" in line)
    second = next(i for i, line in enumerate(lines) if "/?second" in line)
    assert first < second, "\n".join(lines)


def test_disable_logging_removes_access_lines():
    with running(str(APP), "--disable-logging") as server:
        make_traffic(server)
        assert server.stop() == 0
    assert access_lines(server) == []
    assert "serving" in server.log  # geows' own log is still there
