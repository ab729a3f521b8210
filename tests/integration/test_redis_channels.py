"""``--channels redis://``: channels across separate geows processes.

Real ``redis-server`` (tests/redis_server.py), real ``geows serve`` processes
of examples/chat/app.py (``/ws?room=R`` joins channel ``room:R`` and
publishes what the client sends; ``POST /say?room=R`` publishes
``[announcement] BODY``), real clients, all on 127.0.0.1.

A Redis subscription is made in the background after a member joins, so a
test first waits until every member hears a marker (:func:`sync_room`).
Redis sends one channel's messages to every subscriber in the order it
received the publishes: members in different processes see the same order.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.integration.support import (
    Response,
    assert_no_traceback,
    http_exchange,
    serve,
)
from tests.redis_server import RedisServer, require_redis_server
from tests.servers import EXAMPLES, ROOT, ServerProcess

CHAT = str(EXAMPLES / "chat" / "app.py")
ANNOUNCE = "[announcement] "

pytestmark = pytest.mark.timeout(40)


# -- helpers ------------------------------------------------------------------


def say(server: ServerProcess, room: str, text: str) -> Response:
    """``POST /say?room=ROOM`` with body ``text`` on ``server``."""
    body = text.encode("utf-8")
    return http_exchange(
        server.port,
        "POST",
        f"/say?room={room}",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        body,
    )


def member(server: ServerProcess, room: str) -> ClientConnection:
    """A websocket client in ``room`` on ``server``."""
    return connect(f"{server.ws_url}/ws?room={room}", open_timeout=10)


def sync_room(
    publisher: ServerProcess,
    room: str,
    clients: list[ClientConnection],
    timeout: float = 15.0,
) -> None:
    """Return once every client receives what ``publisher`` publishes in ``room``.

    POSTs numbered markers until each client has heard one (its process has
    subscribed), then one last marker that every client reads up to, so
    that nothing published before is left unread.
    """
    run = uuid.uuid4().hex[:8]
    deadline = time.monotonic() + timeout
    heard = [False] * len(clients)
    count = 0
    while not all(heard):
        if time.monotonic() > deadline:
            raise AssertionError(f"members of {room} heard no marker in {timeout}s")
        count += 1
        response = say(publisher, room, f"sync {run} {count}")
        if response.status != 204:  # the publisher's Redis may still be down
            time.sleep(0.1)
            continue
        for index, client in enumerate(clients):
            if heard[index]:
                continue
            try:
                message = client.recv(timeout=0.2)
            except TimeoutError:
                continue
            heard[index] = str(message).startswith(f"{ANNOUNCE}sync {run} ")
    final = f"{ANNOUNCE}sync {run} final"
    assert say(publisher, room, f"sync {run} final").status == 204
    for client in clients:
        while client.recv(timeout=10) != final:
            pass


def recv_n(client: ClientConnection, count: int) -> list[str]:
    """The next ``count`` messages of ``client`` (text)."""
    return [str(client.recv(timeout=10)) for _ in range(count)]


def is_open(client: ClientConnection) -> bool:
    """Whether the server still answers a ping on this connection."""
    return client.ping().wait(5)


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def server_a(redis_server: RedisServer) -> Iterator[ServerProcess]:
    yield from serve(CHAT, "--channels", redis_server.url)


@pytest.fixture(scope="module")
def server_b(redis_server: RedisServer) -> Iterator[ServerProcess]:
    yield from serve(CHAT, "--channels", redis_server.url)


# -- tests ------------------------------------------------------------------------


def test_members_on_two_instances_hear_each_other_in_order(
    server_a: ServerProcess, server_b: ServerProcess
) -> None:
    assert server_a.port != server_b.port
    room = "two-" + uuid.uuid4().hex[:8]
    with member(server_a, room) as alice, member(server_b, room) as bob:
        sync_room(server_a, room, [alice, bob])
        for number in range(1, 21):
            alice.send(f"alice {number}")
            bob.send(f"bob {number}")
        seen_by_alice = recv_n(alice, 40)
        seen_by_bob = recv_n(bob, 40)
    for seen in (seen_by_alice, seen_by_bob):
        assert [m for m in seen if m.startswith("alice ")] == [
            f"alice {n}" for n in range(1, 21)
        ]
        assert [m for m in seen if m.startswith("bob ")] == [
            f"bob {n}" for n in range(1, 21)
        ]
    # One channel, one order: Redis relays the publishes as it took them.
    assert seen_by_alice == seen_by_bob
    assert_no_traceback(server_a)
    assert_no_traceback(server_b)


def test_http_publish_on_one_instance_reaches_a_member_on_the_other(
    server_a: ServerProcess, server_b: ServerProcess
) -> None:
    room = "http-" + uuid.uuid4().hex[:8]
    with member(server_a, room) as alice:
        sync_room(server_b, room, [alice])
        response = say(server_b, room, "héllo from B")
        assert response.status == 204
        assert alice.recv(timeout=10) == f"{ANNOUNCE}héllo from B"
    assert_no_traceback(server_a)
    assert_no_traceback(server_b)


def test_redis_restart_keeps_members_and_resumes() -> None:
    require_redis_server()
    room = "restart-" + uuid.uuid4().hex[:8]
    with RedisServer() as redis_server:
        url = redis_server.url
        a_gen = serve(CHAT, "--channels", url)
        b_gen = serve(CHAT, "--channels", url)
        server_a, server_b = next(a_gen), next(b_gen)
        try:
            with member(server_a, room) as alice, member(server_b, room) as bob:
                sync_room(server_a, room, [alice, bob])

                redis_server.stop()
                # The publish raises ChannelError; the chat app lets it out.
                for server in (server_a, server_b):
                    response = say(server, room, "into the void")
                    assert response.status == 500, response
                    server.wait_for_log(r"ChannelError: cannot publish")
                for server in (server_a, server_b):
                    server.wait_for_log(r"lost the subscriber connection")
                    server.wait_for_log(r"connection attempt 1 .* failed")
                    server.wait_for_log(r"connection attempt 2 .* failed")
                assert is_open(alice)
                assert is_open(bob)

                redis_server.start()
                sync_room(server_a, room, [alice, bob])
                sync_room(server_b, room, [alice, bob])
                for server in (server_a, server_b):
                    server.wait_for_log(r"subscriber reconnected to redis://")
                alice.send("alice is back")
                assert bob.recv(timeout=10) == "alice is back"
                assert alice.recv(timeout=10) == "alice is back"
                bob.send("bob is back")
                assert alice.recv(timeout=10) == "bob is back"
                assert bob.recv(timeout=10) == "bob is back"
        finally:
            for gen in (a_gen, b_gen):
                for _ in gen:  # stops the server, checks it exited 0
                    pass


# -- payload encoding, in one process -------------------------------------------

# redis-py waits on gevent sockets only once gevent has patched the socket
# module, and the test process must stay unpatched: a subprocess patches first.
ROUND_TRIP = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import base64, json, socket, sys

    import gevent
    import redis

    from geows.channels import ChannelError
    from geows.channels.redis import RedisHub

    url = sys.argv[1]


    class Member:
        def __init__(self):
            self.frames = []

        def deliver(self, frame):
            self.frames.append(bytes(frame))


    def wait_for(predicate, timeout=10.0):
        deadline = gevent.get_hub().loop.now() + timeout
        while not predicate():
            if gevent.get_hub().loop.now() > deadline:
                raise SystemExit("timed out")
            gevent.sleep(0.01)


    def spied(timeout=5.0):
        # get_message answers None for an ignored confirmation too: retry.
        deadline = gevent.get_hub().loop.now() + timeout
        while gevent.get_hub().loop.now() < deadline:
            message = spy.get_message(timeout=0.2)
            if message is not None:
                return message
        raise SystemExit("the spy heard nothing")


    def b64(data):
        return base64.b64encode(data).decode("ascii")


    raw = redis.Redis.from_url(url)
    spy = raw.pubsub(ignore_subscribe_messages=True)
    spy.psubscribe("geows:*")
    hub = RedisHub(url)
    hub.start()
    member = Member()
    hub.join("room", member)
    # Subscribed once a probe comes back; then read past a last one.
    while not member.frames:
        hub.publish("room", "probe")
        gevent.sleep(0.05)
    hub.publish("room", "synced")
    wait_for(lambda: member.frames[-1].endswith(b"synced"))
    del member.frames[:]
    while not spied()["data"].endswith(b"synced"):
        pass

    big = bytes(range(256)) * 800  # over 64 KiB: a 64-bit frame length
    sent = [
        ("text", "h\\u00e9llo"),
        ("binary", b"\\x00\\xffbinary"),
        ("binary", b"t looks like a marker"),
        ("text", ""),
        ("binary", b""),
        ("binary-text", "forced binary"),
        ("text-bytes", b"forced text"),
        ("binary", big),
    ]
    raw.publish("geows:room", b"x not ours")  # a foreign publisher: dropped
    for kind, data in sent:
        binary = {"binary-text": True, "text-bytes": False}.get(kind)
        hub.publish("room", data, binary=binary)
    wait_for(lambda: len(member.frames) == len(sent))
    wire = []
    while len(wire) < len(sent) + 1:
        message = spied()
        wire.append([message["channel"].decode(), b64(message["data"])])

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    down = RedisHub(f"redis://127.0.0.1:{port}/0")
    try:
        down.publish("room", "lost?")
        error = None
    except ChannelError as exc:
        error = [type(exc).__name__, type(exc.__cause__).__module__]
    down.close()
    hub.leave("room", member)
    hub.close()
    print(json.dumps({
        "frames": [b64(frame) for frame in member.frames],
        "wire": wire,
        "error": error,
    }))
    """
)


def parse_frame(frame: bytes) -> tuple[int, bytes]:
    """``(opcode, payload)`` of one unmasked, unfragmented server frame."""
    assert frame[0] & 0x80, "FIN"
    size = frame[1] & 0x7F
    offset = 2
    if size == 126:
        size, offset = int.from_bytes(frame[2:4], "big"), 4
    elif size == 127:
        size, offset = int.from_bytes(frame[2:10], "big"), 10
    payload = frame[offset:]
    assert len(payload) == size
    return frame[0] & 0x0F, payload


def test_payload_kinds_round_trip_through_redis(redis_server: RedisServer) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, redis_server.url],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    frames = [parse_frame(base64.b64decode(f)) for f in result["frames"]]
    big = bytes(range(256)) * 800
    assert frames == [
        (0x1, "héllo".encode()),
        (0x2, b"\x00\xffbinary"),
        (0x2, b"t looks like a marker"),
        (0x1, b""),
        (0x2, b""),
        (0x2, b"forced binary"),
        (0x1, b"forced text"),
        (0x2, big),
    ]
    # On the wire: the prefixed channel, a kind byte, then the payload.
    wire = [(channel, base64.b64decode(data)) for channel, data in result["wire"]]
    assert wire[0] == ("geows:room", b"x not ours")
    assert wire[1:] == [
        ("geows:room", b"t" + "héllo".encode()),
        ("geows:room", b"b\x00\xffbinary"),
        ("geows:room", b"bt looks like a marker"),
        ("geows:room", b"t"),
        ("geows:room", b"b"),
        ("geows:room", b"bforced binary"),
        ("geows:room", b"tforced text"),
        ("geows:room", b"b" + big),
    ]
    assert "dropped a message on b'geows:room'" in proc.stderr
    # Redis down: the publisher gets ChannelError, chained to redis-py's error.
    assert result["error"] == ["ChannelError", "redis.exceptions"]
