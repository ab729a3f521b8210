"""``geows serve --processes N``: a master, its workers, and channels across
them through the master's hub. Real processes on 127.0.0.1.

App: tests/apps/workers_app.py (GET /pid; /ws joins "room", sends
``pid N`` first, then publishes what it receives; POST /say publishes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Callable

import pytest
import websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.integration.support import assert_no_traceback, http_exchange
from tests.servers import APPS, ROOT, ServerProcess, running

APP = APPS / "workers_app.py"
WAIT = 10.0

pytestmark = pytest.mark.timeout(40)


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def get_pid(server: ServerProcess) -> int:
    """The pid of the worker that answers GET /pid on a new connection."""
    response = http_exchange(server.port, "GET", "/pid", [("Connection", "close")])
    assert response.status == 200, response
    return int(response.body)


def worker_ids(server: ServerProcess, count: int = 2) -> dict[int, tuple[int, int]]:
    """pid -> (uwsgi.worker_id(), uwsgi.numproc), asked (GET /id) until
    ``count`` distinct workers answered (bounded)."""
    seen: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + WAIT
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only saw workers {seen}"
        response = http_exchange(server.port, "GET", "/id", [("Connection", "close")])
        assert response.status == 200, response
        pid, worker_id, numproc = map(int, response.body.split())
        seen[pid] = (worker_id, numproc)
    return seen


def worker_pids(server: ServerProcess, count: int = 2) -> set[int]:
    """Ask until ``count`` distinct workers answered (bounded)."""
    seen: set[int] = set()
    deadline = time.monotonic() + WAIT
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only saw workers {seen}"
        seen.add(get_pid(server))
    return seen


def say(server: ServerProcess, body: bytes) -> int:
    """POST /say: publish ``body`` to the room; the response status."""
    headers = [("Content-Length", str(len(body))), ("Connection", "close")]
    return http_exchange(server.port, "POST", "/say", headers, body).status


class Client:
    """A websocket to /ws, with the pid of the worker serving it."""

    def __init__(self, server: ServerProcess, stack: ExitStack) -> None:
        url = f"{server.ws_url}/ws"
        self.ws: ClientConnection = stack.enter_context(connect(url, open_timeout=WAIT))
        first = self.ws.recv(timeout=WAIT)
        match = re.fullmatch(r"pid (\d+)", str(first))
        assert match, first
        self.pid = int(match.group(1))

    def next_message(self) -> str:
        """The next room message, skipping the sync probes."""
        while True:
            message = str(self.ws.recv(timeout=WAIT))
            if not message.startswith("sync-"):
                return message


@contextmanager
def clients_on_distinct_workers(
    server: ServerProcess, count: int = 2
) -> Iterator[list[Client]]:
    """Open websockets until ``count`` are served by distinct workers.

    The others are closed at once: left open, they would be sent every room
    message unread, and a client that stops reading cannot close cleanly.
    """
    with ExitStack() as stack:
        chosen: dict[int, Client] = {}
        for _ in range(200):
            with ExitStack() as attempt:
                client = Client(server, attempt)
                if client.pid not in chosen:
                    chosen[client.pid] = client
                    stack.enter_context(attempt.pop_all())
            if len(chosen) == count:
                break
        assert len(chosen) == count, f"websockets only reached {list(chosen)}"
        yield list(chosen.values())


def sync_room(server: ServerProcess, clients: list[Client]) -> None:
    """Publish probes until every client got one: each worker's subscription
    has then reached the hub, so later messages cannot overtake it.
    """
    pending = list(clients)
    deadline = time.monotonic() + WAIT
    probe = 0
    while pending:
        assert time.monotonic() < deadline, "the room never reached every client"
        probe += 1
        say(server, f"sync-{probe}".encode())
        for client in list(pending):
            try:
                message = str(client.ws.recv(timeout=0.2))
            except TimeoutError:
                continue
            if message.startswith("sync-"):
                pending.remove(client)


def exit_status(proc: subprocess.Popen[str], timeout: float = 20.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError("the master did not exit") from None


def test_workers_answer_from_distinct_processes():
    with running(APP, "--processes", "2") as server:
        pids = worker_pids(server)
        assert server.proc.pid not in pids  # the master serves nothing itself
        server.wait_for_log(rf"master {server.proc.pid}: 2 workers ready")
        serving = [line for line in server.lines if "serving" in line]
        assert len(serving) == 1, serving  # announced once, by the master
        assert f"http://127.0.0.1:{server.port}/" in serving[0]
        status = server.stop()
    assert status == 0, server.log
    assert_no_traceback(server)


def test_worker_id_and_numproc_as_uwsgi_numbers_them():
    with running(APP) as server:  # one process: worker 1 of 1
        assert list(worker_ids(server, 1).values()) == [(1, 1)]
        assert server.stop() == 0, server.log
    with running(APP, "--processes", "2") as server:
        ids = worker_ids(server)
        assert sorted(ids.values()) == [(1, 2), (2, 2)]
        # A replacement takes the number of the worker it replaces.
        victim = next(pid for pid, (number, _) in ids.items() if number == 2)
        os.kill(victim, signal.SIGKILL)
        server.wait_for_log(rf"worker {victim} exited unexpectedly")
        ids = worker_ids(server)  # waits for the replacement to answer
        assert victim not in ids
        assert sorted(ids.values()) == [(1, 2), (2, 2)]
        assert server.stop() == 0, server.log


def test_workers_with_reuse_port_share_one_port():
    with running(APP, "--processes", "2", "--reuse-port") as server:
        assert len(worker_pids(server)) == 2
        status = server.stop()
    assert status == 0, server.log


def test_channels_span_workers():
    with running(APP, "--processes", "2") as server:
        with clients_on_distinct_workers(server) as (a, b):
            assert a.pid != b.pid
            sync_room(server, [a, b])
            a.ws.send("from a")
            assert a.next_message() == "from a"  # the publisher's worker too
            assert b.next_message() == "from a"
            b.ws.send("from b")
            assert b.next_message() == "from b"
            assert a.next_message() == "from b"
            assert say(server, b"said") == 200
            assert a.next_message() == "said"
            assert b.next_message() == "said"
            # One publisher's messages arrive in order, on every worker.
            for i in range(50):
                a.ws.send(f"m{i}")
            for client in (a, b):
                assert [client.next_message() for _ in range(50)] == [
                    f"m{i}" for i in range(50)
                ]
        status = server.stop()
    assert status == 0, server.log
    assert_no_traceback(server)


def test_a_killed_worker_is_replaced_and_the_others_keep_serving():
    with running(APP, "--processes", "2") as server:
        with clients_on_distinct_workers(server) as (survivor, victim):
            sync_room(server, [survivor, victim])
            os.kill(victim.pid, signal.SIGKILL)
            server.wait_for_log(
                rf"worker {victim.pid} exited unexpectedly "
                r"\(exit status -9: killed by SIGKILL\); starting a replacement"
            )
            with pytest.raises(ConnectionClosed):
                victim.next_message()
            # The websocket on the other worker goes on, channels included.
            survivor.ws.send("still here")
            assert survivor.next_message() == "still here"
            pids = worker_pids(server)
            assert victim.pid not in pids
            assert survivor.pid in pids
            (replacement,) = pids - {survivor.pid}
            server.wait_for_log(rf"worker {replacement} started")
            # The replacement joined the room through the hub as well.
            with clients_on_distinct_workers(server) as (c, d):
                sync_room(server, [c, d, survivor])
                c.ws.send("everyone")
                for client in (c, d, survivor):
                    assert client.next_message() == "everyone"
        status = server.stop()
    assert status == 0, server.log


class HandshakeLoop(threading.Thread):
    """Connects and handshakes (websocket-client) again and again."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.done = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                ws = websocket.create_connection(self.url, timeout=WAIT)
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            self.done += 1
            try:
                ws.close(timeout=1)
            except Exception:
                pass  # a closing worker may have closed it first: not a refusal

    def wait_more(self, count: int) -> None:
        target = self.done + count
        wait_for(lambda: self.done >= target or bool(self.failures), "handshakes")


def test_sighup_reloads_without_refusing_a_connection():
    with running(APP, "--processes", "2") as server:
        old = worker_pids(server)
        loop = HandshakeLoop(f"{server.ws_url}/ws")
        loop.start()
        try:
            loop.wait_more(5)
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_log(r"reload complete \(generation 1\)")
            for pid in old:
                server.wait_for_log(rf"worker {pid} exited \(exit status 0\)")
            loop.wait_more(5)
        finally:
            loop.halt.set()
            loop.join(WAIT)
        assert not loop.failures, loop.failures
        new = worker_pids(server)
        assert not new & old
        for _ in range(20):
            assert get_pid(server) in new
        status = server.stop()
    assert status == 0, server.log
    assert_no_traceback(server)


def test_a_sighup_during_a_reload_is_queued():
    with running(APP, "--processes", "2") as server:
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(r"reloading: starting 2 new workers \(generation 1\)")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(r"reload complete \(generation 2\)")
        assert any("reloading once they are up" in line for line in server.lines)
        assert len(worker_pids(server)) == 2
        status = server.stop()
    assert status == 0, server.log


def test_a_reload_whose_code_fails_keeps_the_old_workers(tmp_path):
    app = tmp_path / "deployed_app.py"
    app.write_text(
        "import os\n\n\n"
        "def application(env, start_response):\n"
        '    start_response("200 OK", [("Content-Type", "text/plain")])\n'
        "    return [str(os.getpid()).encode()]\n"
    )
    with running(app, "--processes", "2") as server:
        old = worker_pids(server)
        app.write_text('raise RuntimeError("a broken deploy")\n')
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(r"reload abandoned \(generation 1\)", timeout=20)
        assert "a broken deploy" in server.log
        assert worker_pids(server) == old
        for _ in range(10):
            assert get_pid(server) in old
        status = server.stop()
    assert status == 0, server.log


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_workers_and_hub_stop_when_the_master_is_killed():
    with running(APP, "--processes", "2") as server:
        pids = worker_pids(server)
        line = server.wait_for_log(r"channel hub \d+ started")
        pids.add(int(line.split("channel hub ")[1].split()[0]))
        with clients_on_distinct_workers(server) as clients:
            server.proc.kill()
            server.proc.wait(WAIT)
            for client in clients:
                with pytest.raises(ConnectionClosed) as info:
                    client.next_message()
                assert info.value.rcvd is not None
                assert info.value.rcvd.code == 1001
        wait_for(lambda: not any(alive(pid) for pid in pids), "orphans to exit")


def test_sigterm_closes_websockets_with_1001_and_the_master_exits_0():
    started = running(APP, "--processes", "2")
    with started as server, clients_on_distinct_workers(server) as clients:
        server.proc.send_signal(signal.SIGTERM)
        for client in clients:
            with pytest.raises(ConnectionClosed) as info:
                client.next_message()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001
        assert exit_status(server.proc) == 0, server.log
    assert_no_traceback(server)
    server.wait_for_log("geows stopped")


def test_the_hub_restarts_and_channels_recover():
    with running(APP, "--processes", "2") as server:
        first = server.wait_for_log(r"channel hub \d+ started")
        hub_pid = int(first.split("channel hub ")[1].split()[0])
        with clients_on_distinct_workers(server) as (a, b):
            sync_room(server, [a, b])
            os.kill(hub_pid, signal.SIGKILL)
            server.wait_for_log(r"channel hub exited unexpectedly \(exit status -9")
            wait_for(
                lambda: (
                    sum("channel hub" in x and "started" in x for x in server.lines)
                    == 2
                ),
                "a new hub",
            )
            # Workers reconnect and subscribe again; publishes flow again.
            sync_room(server, [a, b])
            a.ws.send("after the hub restart")
            assert a.next_message() == "after the hub restart"
            assert b.next_message() == "after the hub restart"
        status = server.stop()
    assert status == 0, server.log


def test_a_worker_crashing_at_import_makes_the_master_give_up():
    args = ["serve", str(APP), "--processes", "2", "--http", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "geows", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env={**os.environ, "WORKERS_APP_CRASH": "1", "PYTHONUNBUFFERED": "1"},
    )
    try:
        _, log = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, log = proc.communicate(timeout=5)
        raise AssertionError(f"the master kept going:\n{log}") from None
    assert proc.returncode == 1, log
    assert "crashing at import, as asked" in log
    assert re.search(r"workers keep failing: 5 exited in a row .*; giving up", log)
    forks = len(re.findall(r"worker \d+ started", log))
    assert 5 <= forks <= 10, log  # at most 5 tries per worker slot
    assert "serving" not in log
