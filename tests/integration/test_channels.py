"""Named channels in one process (memory hub), in uWSGI's style and natively.

The app is tests/apps/channels_app.py: WebSocket members that join, leave and
publish on command, and HTTP endpoints that publish, flood a channel from a
background greenlet and report the hub's member count.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Callable, Optional

import pytest
import websocket

from tests.integration.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    Reader,
    assert_no_traceback,
    read_head,
    request_bytes,
    serve,
    upgrade_headers,
)
from tests.servers import APPS, ServerProcess, running

APP = str(APPS / "channels_app.py")
STYLES = ["uwsgi", "native"]
WAIT = 10.0  # seconds any single expected event may take

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve(APP)


# -- helpers ------------------------------------------------------------------------


def member(
    server: ServerProcess, style: str, join: tuple[str, ...] = ()
) -> websocket.WebSocket:
    """A connected client of /uwsgi or /native, in the ``join`` channels."""
    query = f"?join={','.join(join)}" if join else ""
    return websocket.create_connection(f"{server.ws_url}/{style}{query}", timeout=WAIT)


def http(server: ServerProcess, method: str, target: str, body: bytes = b"") -> str:
    """One HTTP request to the app; the response body as text."""
    request = urllib.request.Request(
        server.http_url + target, data=body if method == "POST" else None, method=method
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return response.read().decode()


def publish(server: ServerProcess, channel: str, body: str, kind: str = "text") -> None:
    """Publish from a plain HTTP request (returns once the hub has queued it)."""
    http(server, "POST", f"/publish?ch={channel}&kind={kind}", body.encode())


def members(server: ServerProcess, channel: str) -> int:
    return int(http(server, "GET", f"/members?ch={channel}"))


def wait_members(server: ServerProcess, channel: str, count: int) -> None:
    """Poll the hub's member count until it is ``count`` (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        now = members(server, channel)
        if now == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{channel!r} has {now} members, expected {count}")
        time.sleep(0.02)


def command(ws: websocket.WebSocket, text: str) -> None:
    """Send a join/leave command and read its acknowledgement."""
    ws.send(text)
    verb, name = text.split(" ", 1)
    assert ws.recv() == {"join": "joined ", "leave": "left "}[verb] + name


def assert_nothing_pending(ws: websocket.WebSocket, sent_so_far: int) -> None:
    """Prove no channel message is queued for ``ws``: the next thing it gets
    is the echo of a probe (everything published before was queued before it).
    """
    ws.send("probe")
    assert ws.recv() == f"echo:{sent_so_far + 1}:probe"


def recv_kind(ws: websocket.WebSocket) -> tuple[int, bytes]:
    opcode, data = ws.recv_data()
    return opcode, data


# -- membership and order -------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_members_get_every_message_in_publish_order(
    server: ServerProcess, style: str
) -> None:
    channel = f"order-{style}"
    readers = [member(server, style, (channel,)) for _ in range(3)]
    publisher = member(server, style)  # not a member
    try:
        for i in range(200):
            publisher.send(f"pub {channel} message {i:03d}")
        for ws in readers:
            got = [ws.recv() for _ in range(200)]
            assert got == [f"message {i:03d}" for i in range(200)]
        assert_nothing_pending(publisher, 200)  # publishing is not joining
    finally:
        for ws in [*readers, publisher]:
            ws.close()


@pytest.mark.parametrize("style", STYLES)
def test_a_member_that_publishes_gets_its_own_message(
    server: ServerProcess, style: str
) -> None:
    channel = f"self-{style}"
    ws = member(server, style, (channel,))
    other = member(server, style, (channel,))
    try:
        ws.send(f"pub {channel} said by me")
        assert ws.recv() == "said by me"
        assert other.recv() == "said by me"
    finally:
        ws.close()
        other.close()


@pytest.mark.parametrize("style", STYLES)
def test_non_members_get_nothing(server: ServerProcess, style: str) -> None:
    inside = member(server, style, (f"in-{style}",))
    outside = member(server, style, (f"out-{style}",))
    lurker = member(server, style)
    try:
        publish(server, f"in-{style}", "for members only")
        assert inside.recv() == "for members only"
        assert_nothing_pending(outside, 0)
        assert_nothing_pending(lurker, 0)
    finally:
        for ws in (inside, outside, lurker):
            ws.close()


@pytest.mark.parametrize("style", STYLES)
def test_join_and_leave_on_command(server: ServerProcess, style: str) -> None:
    channel = f"leave-{style}"
    ws = member(server, style)
    try:
        command(ws, f"join {channel}")
        assert members(server, channel) == 1
        publish(server, channel, "one")
        assert ws.recv() == "one"
        command(ws, f"leave {channel}")
        assert members(server, channel) == 0
        publish(server, channel, "two")  # queued before the probe's echo if at all
        assert_nothing_pending(ws, 2)
        command(ws, f"join {channel}")
        publish(server, channel, "three")
        assert ws.recv() == "three"
    finally:
        ws.close()


@pytest.mark.parametrize("style", STYLES)
def test_a_closed_connection_leaves_its_channels(
    server: ServerProcess, style: str
) -> None:
    a, b = f"gone-a-{style}", f"gone-b-{style}"
    clean = member(server, style, (a, b))
    abrupt = member(server, style, (a, b))
    stays = member(server, style, (a,))
    try:
        wait_members(server, a, 3)
        wait_members(server, b, 2)
        clean.close()  # closing handshake
        wait_members(server, a, 2)
        wait_members(server, b, 1)
        abrupt.sock.shutdown(socket.SHUT_RDWR)  # TCP gone, no close frame
        abrupt.sock.close()
        wait_members(server, a, 1)
        wait_members(server, b, 0)
        publish(server, a, "still here")
        assert stays.recv() == "still here"
    finally:
        stays.close()
    wait_members(server, a, 0)
    server.wait_for_log(rf"APP {style} member ended")


# -- who can publish, and what arrives ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "opcode", "payload"),
    [
        ("text", OP_TEXT, "caf\u00e9 \u2603"),
        ("bytes", OP_BINARY, "raw bytes"),
        ("uwsgi", OP_TEXT, "uwsgi text"),
        ("uwsgi-binary", OP_BINARY, "uwsgi binary"),
    ],
)
def test_publish_from_plain_http_keeps_the_frame_kind(
    server: ServerProcess, kind: str, opcode: int, payload: str
) -> None:
    channel = f"kind-{kind}"
    ws = member(server, "native", (channel,))
    try:
        publish(server, channel, payload, kind)
        assert recv_kind(ws) == (opcode, payload.encode("utf-8"))
    finally:
        ws.close()


@pytest.mark.parametrize("style", STYLES)
def test_publish_from_a_websocket_keeps_the_frame_kind(
    server: ServerProcess, style: str
) -> None:
    channel = f"wskind-{style}"
    ws = member(server, style, (channel,))
    try:
        ws.send(f"pub {channel} as text")
        ws.send(f"pubbin {channel} as binary")
        assert recv_kind(ws) == (OP_TEXT, b"as text")
        assert recv_kind(ws) == (OP_BINARY, b"as binary")
    finally:
        ws.close()


def test_publish_from_a_background_greenlet(server: ServerProcess) -> None:
    ws = member(server, "uwsgi", ("ticks",))
    try:
        assert http(server, "GET", "/ticker") == "ticking\n"
        ticks = [ws.recv() for _ in range(5)]
        numbers = [int(re.fullmatch(r"tick (\d+)", t).group(1)) for t in ticks]  # type: ignore[union-attr]
        assert numbers == list(range(numbers[0], numbers[0] + 5))
    finally:
        ws.close()


@pytest.mark.parametrize("style", STYLES)
def test_channel_messages_arrive_while_the_app_waits_in_recv(
    server: ServerProcess, style: str
) -> None:
    # The app sits in websocket_recv() / ws.recv() the whole time: channel
    # messages reach the client without it, and recv returns only what the
    # client sent (the echo's counter says how many recv returned).
    channel = f"blocked-{style}"
    ws = member(server, style, (channel,))
    try:
        for i in range(5):
            publish(server, channel, f"news {i}")
        assert [ws.recv() for _ in range(5)] == [f"news {i}" for i in range(5)]
        ws.send("hello")
        assert ws.recv() == "echo:1:hello"
        publish(server, channel, "more news")
        assert ws.recv() == "more news"
        ws.send("again")
        assert ws.recv() == "echo:2:again"
    finally:
        ws.close()


# -- a member that does not read ---------------------------------------------------


class SlowMember:
    """A raw client with a tiny receive buffer that joins and does not read."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        self.reader = Reader(self.sock)
        self.sock.sendall(request_bytes("GET", path, upgrade_headers()))
        head = read_head(self.reader)
        assert head.status == 101, head

    def read_to_close(self) -> tuple[int, Optional[bytes]]:
        """Read (now) every frame to the end: (data frames, close payload)."""
        frames, close = 0, None
        try:
            while True:
                first, second = self.reader.read_exact(2)
                size = second & 0x7F
                if size == 126:
                    (size,) = struct.unpack("!H", self.reader.read_exact(2))
                elif size == 127:
                    (size,) = struct.unpack("!Q", self.reader.read_exact(8))
                payload = self.reader.read_exact(size)
                opcode = first & 0x0F
                if opcode == OP_CLOSE:
                    close = payload
                    assert self.reader.at_eof(), "data after the close frame"
                    break
                if opcode != OP_PING:
                    frames += 1
        except (EOFError, ConnectionResetError):
            pass
        return frames, close

    def close(self) -> None:
        self.sock.close()


def read_in_background(
    ws: websocket.WebSocket, count: int
) -> tuple[threading.Thread, list[str], Callable[[], Optional[BaseException]]]:
    """Read ``count`` messages from ``ws`` in a thread."""
    got: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(count):
                got.append(ws.recv())
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got, lambda: failure[0] if failure else None


@pytest.mark.parametrize(
    ("how", "slow_style", "count", "size", "every"),
    [
        # Far past 4x the 16 KiB backlog in no time: closed at once.
        ("burst", "uwsgi", 3000, 100, 0),
        # About 20 KB/s: over 16 KiB, then under 4x it for longer than 0.5 s.
        ("steady", "native", 400, 200, 0.01),
    ],
)
def test_a_slow_member_is_closed_and_the_others_get_everything(
    how: str, slow_style: str, count: int, size: int, every: float
) -> None:
    backlog = 16 * 1024
    args = ("--channel-backlog", "16", "--channel-slow-timeout", "0.5")
    with running(APP, *args) as srv:
        channel = f"flood-{how}"
        # sndbuf: the kernel holds only a few KiB of what the slow one leaves
        # unread, so the backlog in the server is what fills up.
        slow = SlowMember(srv.port, f"/{slow_style}?join={channel}&sndbuf=4096")
        fast = member(srv, "native", (channel,))
        try:
            wait_members(srv, channel, 2)
            thread, got, failure = read_in_background(fast, count)
            target = f"/flood?ch={channel}&n={count}&size={size}&every={every}"
            assert http(srv, "POST", target) == ""
            line = srv.wait_for_log(r"closed: \d+ bytes of channel messages unread")
            frames, close = slow.read_to_close()
            thread.join(WAIT + count * every * 2)
            assert not thread.is_alive(), f"fast member got {len(got)} of {count}"
            assert failure() is None, failure()
            assert len(got) == count
            assert [int(m[:8]) for m in got] == list(range(count))
            assert all(len(m) == size for m in got)
            wait_members(srv, channel, 1)
            assert frames < count
            assert close is not None, "no close frame before EOF"
            assert struct.unpack("!H", close[:2])[0] == 1008
            assert close[2:] == b"too slow to read channel messages"
            unread = int(re.search(r"closed: (\d+) bytes", line).group(1))  # type: ignore[union-attr]
            if how == "steady":
                assert unread <= 4 * backlog + size  # the timeout, not the cap
            else:
                assert unread > 4 * backlog
            srv.wait_for_log(rf"APP {slow_style} member ended")
            srv.wait_for_log(rf"APP flood of {count} on {channel} done")
        finally:
            fast.close()
            slow.close()
        assert srv.stop() == 0
    assert_no_traceback(srv)
