"""geows' own benchmark: the figures quoted in the README, with no outside kit.

It starts the server under test itself (pinned to one CPU), drives it from
load-generator processes pinned to other CPUs and prints one line per
scenario with how it was measured::

    python loadtest/bench.py                          # all scenarios, 10 s each
    python loadtest/bench.py --scenarios a,b -d 5 --repeat 3 --json out.json
    python loadtest/bench.py --server "uwsgi --http-socket 127.0.0.1:{PORT} \\
        --gevent 1000 --http-websockets --wsgi-file examples/echo.py"

Scenarios (echo scenarios need an echo endpoint at ``--path``):

a  echo 32 B text, 100 connections x 1 message in flight     messages/s
b  echo 32 B text, 100 connections x 16 messages in flight   messages/s, fairness
c  echo 64 KiB text, 10 connections x 1 message in flight    MB/s (10^6 B)
d  connect + handshake + close, 10 at a time                 handshakes/s
e  5,000 idle connections                                    server KiB/connection
f  fan-out: 1 publisher -> 100 subscribers of a chat room    deliveries/s
   (32 B text; ``--subs``; server: ``--fanout-server``, by
   default loadtest/apps/room.py on geows' named channels)

The load generator is plain non-blocking sockets and ``selectors``: frames
are encoded and masked once, replies are counted from frame headers alone,
and every reply immediately sends the next message on its connection.
Give it more processes with ``--clients-procs`` when the server is not at
100% CPU in the notes column (it is then the client that was measured).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import platform
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

from geows.frames import OP_CLOSE, OP_PONG, OP_TEXT, encode_frame, serialize_close
from geows.handshake import accept_key

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = (
    "geows serve examples/echo.py --http 127.0.0.1:{PORT} --disable-logging"
)
DEFAULT_FANOUT_SERVER = (
    "geows serve loadtest/apps/room.py --http 127.0.0.1:{PORT} --disable-logging"
)
HOST = "127.0.0.1"
RECV_SIZE = 256 * 1024
SETUP_TIMEOUT = 60.0  # connecting every connection of a scenario
SLOT_TIMEOUT = 5.0  # one connect-handshake-close cycle of scenario d
FANOUT_SETTLE = 0.5  # subscribers connected -> first publish (the app joins)
FANOUT_STALL = 2.0  # no delivery progress this long: a message was lost


@dataclass(frozen=True)
class Scenario:
    """One measurement: what it does and the unit of its figure."""

    name: str
    title: str
    kind: str  # "echo", "handshake", "idle" or "fanout"
    conns: int
    inflight: int = 1
    size: int = 0
    unit: str = "msgs/s"


SCENARIOS = {
    "a": Scenario("a", "echo 32 B text, 100 conns x 1 in flight", "echo", 100, 1, 32),
    "b": Scenario("b", "echo 32 B text, 100 conns x 16 in flight", "echo", 100, 16, 32),
    "c": Scenario(
        "c", "echo 64 KiB text, 10 conns x 1 in flight", "echo", 10, 1, 65536, "MB/s"
    ),
    "d": Scenario(
        "d",
        "connect + handshake + close, 10 at a time",
        "handshake",
        10,
        0,
        0,
        "handshakes/s",
    ),
    "e": Scenario("e", "5,000 idle connections", "idle", 5000, unit="KiB/conn"),
    "f": Scenario("f", "fan-out 32 B text", "fanout", 100, 16, 32, unit="deliveries/s"),
}


# -- small helpers -------------------------------------------------------------------


def parse_cpus(text: str) -> list[int]:
    """CPUs in taskset's list format ("1", "1-3", "0,2")."""
    cpus: list[int] = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            cpus.extend(range(int(low), int(high) + 1))
        elif part.strip():
            cpus.append(int(part))
    return cpus


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed``; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def jain(counts: Sequence[int]) -> float:
    """Jain's fairness index: 1.0 when every connection got the same share."""
    total = sum(counts)
    squares = sum(c * c for c in counts)
    return (total * total) / (len(counts) * squares) if squares else 0.0


def upgrade_request(path: str, port: int) -> tuple[bytes, bytes]:
    """An upgrade request with a fresh key, and the accept value it calls for."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    head = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return head.encode("ascii"), accept_key(key).encode("ascii")


def check_101(head: bytes, accept: bytes) -> None:
    """Raise ConnectionError unless ``head`` is a 101 with the right accept."""
    if not head.startswith(b"HTTP/1.1 101") or accept not in head:
        status = head.split(b"\r\n", 1)[0]
        raise ConnectionError(f"no upgrade: {status!r}")


def open_ws(port: int, path: str) -> socket.socket:
    """A blocking connect + handshake (for the setup of a scenario)."""
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request, accept = upgrade_request(path, port)
    sock.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            raise ConnectionError("closed during the handshake")
        buf += chunk
    try:
        check_101(buf, accept)
    except ConnectionError:
        sock.close()
        raise
    return sock  # an echo server says nothing before it is spoken to


# -- the load generator (runs in worker processes) -----------------------------------


class Conn:
    """Client side of one echo connection: reply counting and pending output."""

    __slots__ = ("head", "key", "out", "replies", "skip", "sock", "tail", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.key = os.urandom(4)
        self.skip = 0  # payload bytes of a frame still to come
        self.tail = 0  # 1 when that frame ends a message
        self.head = b""  # an incomplete frame header (or control frame)
        self.out = b""
        self.replies = 0
        self.writing = False


def count_replies(conn: Conn, data: Union[bytes, memoryview]) -> int:
    """Complete messages in ``data``, from frame headers alone.

    Payloads are skipped, not read. Pings get a pong queued; a close frame
    raises ConnectionError.
    """
    n = len(data)
    pos = conn.skip
    replies = 0
    if pos:
        if pos > n:
            conn.skip = pos - n
            return 0
        replies = conn.tail
        conn.skip = conn.tail = 0
    elif conn.head:
        data = conn.head + bytes(data)
        n = len(data)
        conn.head = b""
    while n - pos >= 2:
        b0 = data[pos]
        length = data[pos + 1] & 0x7F
        hlen = 2
        if length == 126:
            if n - pos < 4:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            hlen = 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            hlen = 10
        end = pos + hlen + length
        if b0 & 0x08:  # control frame: handled whole
            if end > n:
                break
            if b0 & 0x0F == OP_CLOSE:
                raise ConnectionError("the server closed the connection")
            if b0 & 0x0F == 0x9:
                conn.out += encode_frame(OP_PONG, data[pos + hlen : end], mask=conn.key)
        elif end > n:
            conn.skip = end - n
            conn.tail = b0 >> 7
            return replies
        else:
            replies += b0 >> 7
        pos = end
    if pos < n:
        conn.head = bytes(data[pos:])
    return replies


def _pin(cpu: Optional[int]) -> None:
    """Run this process on ``cpu`` only (None: anywhere)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _window(barrier: Any, warmup: float, duration: float) -> tuple[float, float]:
    """Wait for every process, then return (start of measurement, end)."""
    barrier.wait(SETUP_TIMEOUT)
    start = time.monotonic() + warmup
    return start, start + duration


def echo_worker(
    job: dict[str, Any], cpu: Optional[int], barrier: Any, results: Any
) -> None:
    """Keep ``inflight`` messages in flight on each connection; count replies."""
    _pin(cpu)
    errors = 0
    conns: list[Conn] = []
    try:
        for _ in range(job["conns"]):
            conns.append(Conn(open_ws(job["port"], job["path"])))
    except OSError as exc:
        results.put({"error": f"setup: {type(exc).__name__}: {exc}"})
        barrier.abort()
        return
    payload = b"x" * job["size"]
    frames = {1: encode_frame(OP_TEXT, payload, mask=os.urandom(4))}
    sel = selectors.DefaultSelector()
    for conn in conns:
        conn.sock.setblocking(False)
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    read_write = selectors.EVENT_READ | selectors.EVENT_WRITE
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)
    measure_from, measure_to = _window(barrier, job["warmup"], job["duration"])
    for conn in conns:
        conn.out = frames[1] * job["inflight"]
        _flush(conn, sel, read_write)
    baseline: Optional[list[int]] = None
    cpu_start = 0.0
    now = time.monotonic()
    while now < measure_to:
        if baseline is None and now >= measure_from:
            baseline = [conn.replies for conn in conns]
            cpu_start = time.process_time()
            measure_from = now
        for key, _mask in sel.select(0.05):
            conn = key.data
            try:
                n = conn.sock.recv_into(buf)
                if not n:
                    raise ConnectionError("EOF")
                got = count_replies(conn, view[:n])
            except BlockingIOError:
                got = 0
            except OSError:
                errors += 1
                sel.unregister(conn.sock)
                conn.sock.close()
                continue
            if got:
                conn.replies += got
                frame = frames.get(got)
                if frame is None:
                    frame = frames[got] = frames[1] * got
                if conn.out:
                    conn.out += frame
                else:  # the usual case: the socket takes it all at once
                    try:
                        sent = conn.sock.send(frame)
                    except BlockingIOError:
                        sent = 0
                    if sent < len(frame):
                        conn.out = frame[sent:]
            if conn.out or conn.writing:
                _flush(conn, sel, read_write)
        now = time.monotonic()
    cpu_used = time.process_time() - cpu_start
    for conn in conns:
        conn.sock.close()
    counts = [c.replies - b for c, b in zip(conns, baseline or [0] * len(conns))]
    results.put(
        {
            "counts": counts,
            "elapsed": now - measure_from,
            "errors": errors,
            "client_cpu": cpu_used,
        }
    )


def _flush(conn: Conn, sel: selectors.BaseSelector, read_write: int) -> None:
    """Send what the socket takes; watch for writability only while blocked."""
    try:
        sent = conn.sock.send(conn.out)
    except BlockingIOError:
        sent = 0
    conn.out = conn.out[sent:] if sent < len(conn.out) else b""
    blocked = bool(conn.out)
    if blocked != conn.writing:
        conn.writing = blocked
        sel.modify(conn.sock, read_write if blocked else selectors.EVENT_READ, conn)


class Slot:
    """One connect -> handshake -> close cycle of scenario d."""

    __slots__ = ("accept", "buf", "sock", "started", "state")

    def __init__(self, sock: socket.socket, accept: bytes) -> None:
        self.sock = sock
        self.accept = accept
        self.buf = b""
        self.state = "connecting"
        self.started = time.monotonic()


def handshake_worker(
    job: dict[str, Any], cpu: Optional[int], barrier: Any, results: Any
) -> None:
    """Cycle ``conns`` slots through connect, handshake, close; count cycles."""
    _pin(cpu)
    port, path = job["port"], job["path"]
    close_frame = encode_frame(OP_CLOSE, serialize_close(1000), mask=os.urandom(4))
    sel = selectors.DefaultSelector()
    done = errors = 0

    def start() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex((HOST, port))  # EINPROGRESS: writable when connected
        request, accept = upgrade_request(path, port)
        slot = Slot(sock, accept)
        slot.buf = request
        sel.register(sock, selectors.EVENT_WRITE, slot)

    def finish(slot: Slot, ok: bool) -> None:
        nonlocal done, errors
        sel.unregister(slot.sock)
        slot.sock.close()
        if ok:
            done += 1
        else:
            errors += 1
        start()

    measure_from, measure_to = _window(barrier, job["warmup"], job["duration"])
    for _ in range(job["conns"]):
        start()
    baseline: Optional[int] = None
    cpu_start = 0.0
    next_sweep = now = time.monotonic()
    while now < measure_to:
        if baseline is None and now >= measure_from:
            baseline, errors = done, 0
            cpu_start = time.process_time()
            measure_from = now
        for key, _mask in sel.select(0.05):
            slot = key.data
            try:
                if slot.state == "connecting":
                    err = slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    slot.sock.send(slot.buf)  # ~200 bytes into an empty buffer
                    slot.buf = b""
                    slot.state = "handshake"
                    sel.modify(slot.sock, selectors.EVENT_READ, slot)
                    continue
                data = slot.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                finish(slot, False)
                continue
            if slot.state == "handshake":
                slot.buf += data
                if b"\r\n\r\n" in slot.buf:
                    try:
                        check_101(slot.buf, slot.accept)
                        slot.sock.send(close_frame)
                    except OSError:
                        finish(slot, False)
                        continue
                    slot.state = "closing"
                elif not data:
                    finish(slot, False)
            elif not data:  # closing: the server closes TCP first (RFC 6455 7.1.1)
                finish(slot, True)
        now = time.monotonic()
        if now >= next_sweep:  # bounded cycles: a stuck slot is an error
            next_sweep = now + 0.5
            for key in list(sel.get_map().values()):
                if now - key.data.started > SLOT_TIMEOUT:
                    finish(key.data, False)
    cpu_used = time.process_time() - cpu_start
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    results.put(
        {
            "counts": [done - (baseline or 0)],
            "elapsed": now - measure_from,
            "errors": errors,
            "client_cpu": cpu_used,
        }
    )


def idle_worker(
    job: dict[str, Any], cpu: Optional[int], barrier: Any, results: Any
) -> None:
    """Open ``conns`` connections, report, hold them until released."""
    _pin(cpu)
    raise_fd_limit(job["conns"] + 256)
    socks: list[socket.socket] = []
    errors = 0
    first_error = ""
    deadline = time.monotonic() + SETUP_TIMEOUT
    for _ in range(job["conns"]):
        if time.monotonic() > deadline:
            errors += job["conns"] - len(socks) - errors
            break
        try:
            socks.append(open_ws(job["port"], job["path"]))
        except OSError as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    results.put({"counts": [len(socks)], "errors": errors, "first_error": first_error})
    try:
        barrier.wait(SETUP_TIMEOUT)  # released once the server's RSS is read
    except Exception:
        pass
    for sock in socks:
        sock.close()


class Subscriber:
    """Client side of one fan-out subscriber: frame parsing and order check."""

    __slots__ = ("buf", "key", "next_seq", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.key = os.urandom(4)
        self.buf = bytearray()
        self.next_seq = 0


def fanout_payload(seq: int, size: int) -> bytes:
    """Message ``seq`` of the publisher: 8 hex digits, then padding."""
    head = b"%08x" % (seq & 0xFFFFFFFF)
    return head + b"." * (size - len(head))


def read_deliveries(sub: Subscriber, data: Union[bytes, memoryview]) -> list[int]:
    """The sequence numbers of the complete messages in ``data``.

    Frames are parsed in place after what an earlier read left incomplete;
    pings are answered; a close frame raises ConnectionError. A message's
    number is the first 8 bytes of its last frame (32-byte messages are never
    fragmented by the servers measured); anything else counts as -1.
    """
    buf = sub.buf
    buf += data
    n = len(buf)
    pos = 0
    seqs = []
    while n - pos >= 2:
        b0 = buf[pos]
        length = buf[pos + 1] & 0x7F
        hlen = 2
        if length == 126:
            if n - pos < 4:
                break
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            hlen = 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            hlen = 10
        start = pos + hlen
        end = start + length
        if end > n:
            break
        if b0 & 0x08:  # control frame
            opcode = b0 & 0x0F
            if opcode == OP_CLOSE:
                raise ConnectionError("the server closed the connection")
            if opcode == 0x9:
                pong = encode_frame(OP_PONG, bytes(buf[start:end]), mask=sub.key)
                sub.sock.setblocking(True)  # rare and tiny
                sub.sock.sendall(pong)
                sub.sock.setblocking(False)
        elif b0 & 0x80:
            try:
                seqs.append(int(buf[start : start + 8], 16))
            except ValueError:
                seqs.append(-1)
        pos = end
    del buf[:pos]
    return seqs


def fanout_worker(
    job: dict[str, Any], cpu: Optional[int], barrier: Any, results: Any
) -> None:
    """Subscribers of a chat room; worker 0 also runs the publisher.

    Flow control as in the kit's ``wsload fanout``: at most ``inflight``
    messages published and not yet delivered to every live subscriber.
    Each worker acks its subscribers' deliveries per message and publishes
    its low-water mark (the first message some live subscriber of it still
    misses) in ``job["marks"]``; the publisher keeps within ``inflight`` of
    the lowest mark. Every delivery is counted and order-checked.
    """
    _pin(cpu)
    raise_fd_limit(job["conns"] + 256)
    index, window, size = job["index"], job["inflight"], job["size"]
    marks = job["marks"]  # shared: one low-water mark per worker
    subs: list[Subscriber] = []
    try:
        for _ in range(job["conns"]):
            subs.append(Subscriber(open_ws(job["port"], job["path"])))
    except OSError as exc:
        results.put({"error": f"setup: {type(exc).__name__}: {exc}"})
        barrier.abort()
        return
    sel = selectors.DefaultSelector()
    for sub in subs:
        sub.sock.setblocking(False)
        sel.register(sub.sock, selectors.EVENT_READ, sub)
    counts = [0] * len(subs)
    slot_of = {id(sub): i for i, sub in enumerate(subs)}
    alive = len(subs)
    acks = [0] * window  # deliveries of message seq, at acks[seq % window]
    mark = 0  # lowest message not yet delivered to every live subscriber here
    errors = order_errors = 0
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)
    read_write = selectors.EVENT_READ | selectors.EVENT_WRITE
    measure_from, measure_to = _window(barrier, job["warmup"], job["duration"])

    publisher: Optional[Conn] = None
    sent = forced = stalls = published_at_start = 0
    publish_from = progress_at = 0.0
    if index == 0:
        try:
            publisher = Conn(open_ws(job["port"], job["path"]))
        except OSError as exc:
            results.put({"error": f"publisher: {type(exc).__name__}: {exc}"})
            return
        publisher.sock.setblocking(False)
        sel.register(publisher.sock, selectors.EVENT_READ, publisher)
        publish_from = progress_at = time.monotonic() + FANOUT_SETTLE

    def advance() -> None:
        # After a lost subscriber the counts are approximate (its acks stay
        # in); the loss is reported as an error anyway.
        nonlocal mark
        if alive <= 0:
            marks[index] = 1 << 62  # nobody left here to wait for
            return
        start = mark
        while acks[mark % window] >= alive:
            acks[mark % window] = 0
            mark += 1
        if mark != start:
            marks[index] = mark

    baseline: Optional[list[int]] = None
    cpu_start = 0.0
    now = time.monotonic()
    while now < measure_to:
        if baseline is None and now >= measure_from:
            baseline = counts[:]
            cpu_start = time.process_time()
            measure_from = now
            published_at_start = sent
        if publisher is not None and now >= publish_from:
            low = max(min(marks), forced)
            if sent - low >= window and now - progress_at > FANOUT_STALL:
                stalls += 1  # a message some subscriber never got: skip it
                forced = low + 1
                progress_at = now
                low = forced
            elif sent - low < window:
                progress_at = now
            if sent - low < window and not publisher.out:
                publisher.out = b"".join(
                    encode_frame(OP_TEXT, fanout_payload(seq, size), mask=os.urandom(4))
                    for seq in range(sent, low + window)
                )
                sent = low + window
                _flush(publisher, sel, read_write)
        for key, events in sel.select(0.005):
            obj = key.data
            if obj is publisher:
                assert publisher is not None
                try:
                    if events & selectors.EVENT_WRITE:
                        _flush(publisher, sel, read_write)
                    if events & selectors.EVENT_READ:
                        n = publisher.sock.recv_into(buf)
                        if not n:
                            raise ConnectionError("EOF")
                        publisher.replies += count_replies(publisher, view[:n])
                except BlockingIOError:
                    pass
                except OSError:
                    errors += 1
                    sel.unregister(publisher.sock)
                    publisher.sock.close()
                    publisher = None
                continue
            try:
                n = obj.sock.recv_into(buf)
                if not n:
                    raise ConnectionError("EOF")
                seqs = read_deliveries(obj, view[:n])
            except BlockingIOError:
                continue
            except OSError:
                errors += 1
                sel.unregister(obj.sock)
                obj.sock.close()
                alive -= 1
                advance()
                continue
            if not seqs:
                continue
            counts[slot_of[id(obj)]] += len(seqs)
            expected = obj.next_seq
            for seq in seqs:
                if seq != expected:
                    order_errors += 1  # lost, duplicated, reordered or garbled
                    if seq < 0:
                        continue
                if mark <= seq < mark + window:
                    acks[seq % window] += 1
                expected = seq + 1
            obj.next_seq = expected
            advance()
        now = time.monotonic()
    cpu_used = time.process_time() - cpu_start
    for sub in subs:
        sub.sock.close()
    if publisher is not None:
        publisher.sock.close()
    result = {
        "counts": [c - b for c, b in zip(counts, baseline or [0] * len(counts))],
        "elapsed": now - measure_from,
        "errors": errors + order_errors + stalls,
        "order_errors": order_errors,
        "client_cpu": cpu_used,
        "subs_lost": len(subs) - alive,
    }
    if index == 0:
        result["published"] = sent - published_at_start
        result["stalls"] = stalls
    results.put(result)


WORKERS = {
    "echo": echo_worker,
    "handshake": handshake_worker,
    "idle": idle_worker,
    "fanout": fanout_worker,
}


# -- the server under test -----------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (a server may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children.get(current, []))
    return pids


def server_rss_kib(pid: int) -> int:
    """VmRSS of the server's process tree, in KiB."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server's process tree."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class Server:
    """The server under test, started from the ``--server`` template."""

    def __init__(self, template: str, cpus: Optional[str]) -> None:
        self.port = free_port()
        args = shlex.split(template.replace("{PORT}", str(self.port)))
        if args[0] == "geows" and shutil.which("geows") is None:
            args[:1] = [sys.executable, "-m", "geows"]
        if cpus is not None:
            args[:0] = ["taskset", "-c", cpus]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at startup:\n{self.output()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("server did not listen within 30 s") from None
                time.sleep(0.05)

    def output(self) -> str:
        """The end of the server's output (for a startup failure)."""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 5 s."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.log.close()


# -- running scenarios ---------------------------------------------------------------


def warm_up(port: int, path: str) -> None:
    """A few connections with an echo each, so lazy imports and caches are done."""
    frame = encode_frame(OP_TEXT, b"warm", mask=os.urandom(4))
    for _ in range(20):
        try:
            sock = open_ws(port, path)
        except OSError:
            continue
        with sock:
            sock.sendall(frame)
            try:
                sock.recv(64)
            except OSError:
                pass


def run_once(
    scenario: Scenario, args: argparse.Namespace, client_cpus: list[Optional[int]]
) -> dict[str, Any]:
    """Start a fresh server, run one scenario against it, stop the server."""
    fanout = scenario.kind == "fanout"
    server = Server(args.fanout_server if fanout else args.server, args.server_cpus)
    ctx = multiprocessing.get_context("fork")
    procs = args.clients_procs
    conns = {"idle": args.idle_conns, "fanout": args.subs}.get(
        scenario.kind, scenario.conns
    )
    shares = [conns // procs + (i < conns % procs) for i in range(procs)]
    marks = ctx.RawArray("q", procs)  # fan-out: each worker's low-water mark
    barrier = ctx.Barrier(procs + 1)
    results = ctx.Queue()
    workers = []
    try:
        warm_up(server.port, args.path)
        time.sleep(0.3)
        rss_before = server_rss_kib(server.proc.pid)
        for i, share in enumerate(shares):
            job = {
                "port": server.port,
                "path": args.path,
                "conns": share,
                "index": i,
                "marks": marks,
                "inflight": args.fanout_window if fanout else scenario.inflight,
                "size": scenario.size,
                "warmup": args.warmup,
                "duration": args.duration,
            }
            worker = ctx.Process(
                target=WORKERS[scenario.kind],
                args=(job, client_cpus[i % len(client_cpus)], barrier, results),
                daemon=True,
            )
            worker.start()
            workers.append(worker)
        outcome: dict[str, Any] = {}
        if scenario.kind == "idle":
            parts = [results.get(timeout=SETUP_TIMEOUT * 2) for _ in workers]
            time.sleep(1.0)  # let the server settle
            rss_after = server_rss_kib(server.proc.pid)
            barrier.wait(SETUP_TIMEOUT)
            opened = sum(p["counts"][0] for p in parts)
            if not opened:
                raise RuntimeError(f"no connection opened: {parts[0]['first_error']}")
            outcome = {
                "value": (rss_after - rss_before) / opened if opened else 0.0,
                "connections": opened,
                "errors": sum(p["errors"] for p in parts),
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
            }
        else:
            try:
                barrier.wait(SETUP_TIMEOUT)
            except threading.BrokenBarrierError:
                raise RuntimeError(results.get(timeout=5)["error"]) from None
            time.sleep(args.warmup)
            cpu0, t0 = server_cpu_seconds(server.proc.pid), time.monotonic()
            time.sleep(args.duration)
            cpu1, t1 = server_cpu_seconds(server.proc.pid), time.monotonic()
            timeout = args.warmup + args.duration + SETUP_TIMEOUT
            parts = [results.get(timeout=timeout) for _ in workers]
            setup_errors = [p["error"] for p in parts if "error" in p]
            if setup_errors:
                raise RuntimeError(setup_errors[0])
            counts = [c for p in parts for c in p["counts"]]
            if not sum(counts):
                errors = sum(p["errors"] for p in parts)
                raise RuntimeError(f"nothing completed ({errors} errors)")
            rate = sum(sum(p["counts"]) / p["elapsed"] for p in parts)
            if scenario.unit == "MB/s":
                rate = rate * scenario.size / 1e6
            outcome = {
                "value": rate,
                "errors": sum(p["errors"] for p in parts),
                "server_cpu": (cpu1 - cpu0) / (t1 - t0),
                "client_cpu": sum(p["client_cpu"] / p["elapsed"] for p in parts),
            }
            if scenario.kind == "echo":
                outcome["fairness"] = jain(counts)
            if fanout:
                publishing = [p for p in parts if "published" in p]
                outcome["published_per_s"] = sum(
                    p["published"] / p["elapsed"] for p in publishing
                )
                outcome["order_errors"] = sum(p["order_errors"] for p in parts)
                outcome["subs_lost"] = sum(p["subs_lost"] for p in parts)
                outcome["stalls"] = sum(p.get("stalls", 0) for p in publishing)
        return outcome
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
        server.stop()


def describe(scenario: Scenario, args: argparse.Namespace) -> str:
    """The scenario's parameters, as printed next to its figure."""
    if scenario.kind == "idle":
        return f"{args.idle_conns:,} idle connections"
    if scenario.kind == "fanout":
        return f"{scenario.title}, 1 -> {args.subs:,} subscribers"
    return scenario.title


def format_value(value: float, unit: str) -> str:
    """A figure with its unit; one decimal for the small ones."""
    if unit in ("MB/s", "KiB/conn"):
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}"


def notes(run: dict[str, Any]) -> str:
    """What else a run measured: fairness, CPU use, RSS, errors."""
    parts = []
    if "fairness" in run:
        parts.append(f"fairness {run['fairness']:.3f}")
    if "published_per_s" in run:
        parts.append(f"{run['published_per_s']:,.0f} published/s")
    if "server_cpu" in run:
        parts.append(f"server CPU {run['server_cpu']:.0%}")
        parts.append(f"client CPU {run['client_cpu']:.0%}")
    if "rss_before_kib" in run:
        parts.append(
            f"server RSS {run['rss_before_kib'] / 1024:.1f} -> "
            f"{run['rss_after_kib'] / 1024:.1f} MiB for {run['connections']:,} conns"
        )
    parts.append(f"errors {run['errors']}")
    if run.get("order_errors") or run.get("subs_lost") or run.get("stalls"):
        parts.append(
            f"(order {run['order_errors']}, subscribers lost "
            f"{run['subs_lost']}, stalls {run['stalls']})"
        )
    return ", ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse options, run the scenarios, print the table; 1 if any failed."""
    parser = argparse.ArgumentParser(
        description="Benchmark a WebSocket echo server (geows by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help="server command; {PORT} is replaced by a free port",
    )
    parser.add_argument(
        "--fanout-server",
        default=DEFAULT_FANOUT_SERVER,
        help="server command of scenario f: a chat room (every message to "
        "every member) at --path; {PORT} is replaced by a free port",
    )
    parser.add_argument("--path", default="/ws", help="the endpoints' path")
    parser.add_argument(
        "--scenarios",
        default="a,b,c,d,e,f",
        help="comma-separated, from: " + ",".join(SCENARIOS),
    )
    parser.add_argument(
        "-d", "--duration", type=float, default=10.0, help="seconds measured per run"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load before measuring"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per scenario; the median is reported",
    )
    parser.add_argument(
        "--clients-procs", type=int, default=1, help="load-generator processes"
    )
    parser.add_argument(
        "--idle-conns", type=int, default=5000, help="connections of scenario e"
    )
    parser.add_argument(
        "--subs", type=int, default=100, help="subscribers of scenario f"
    )
    parser.add_argument(
        "--fanout-window",
        type=int,
        default=16,
        help="scenario f: messages published and not yet delivered to every "
        "subscriber, at most",
    )
    parser.add_argument(
        "--server-cpus", default="0", help="CPUs for the server (taskset -c list)"
    )
    parser.add_argument(
        "--client-cpus",
        default=None,
        help="CPUs for the load generator, one per process in "
        "turn (default: the CPUs after the server's)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument("--json", metavar="OUT", help="also write results as JSON")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if (
        unknown
        or args.repeat < 1
        or args.clients_procs < 1
        or args.duration <= 0
        or args.subs < 1
        or args.fanout_window < 1
    ):
        parser.error(f"bad scenarios {unknown}" if unknown else "bad numbers")

    allowed = (
        sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    )
    server_cpus = parse_cpus(args.server_cpus)
    can_pin = (
        not args.no_pin
        and shutil.which("taskset") is not None
        and len(allowed) >= 2
        and set(server_cpus) <= set(allowed)
    )
    client_cpus: list[Optional[int]]
    if can_pin:
        if args.client_cpus:
            client_cpus = list(parse_cpus(args.client_cpus))
        else:
            rest = [c for c in allowed if c not in server_cpus]
            client_cpus = list(rest[: args.clients_procs])
    else:
        args.server_cpus = None
        client_cpus = [None]
    limit = raise_fd_limit(max(args.idle_conns, args.subs) + 1024)

    pin_text = f"taskset -c {args.server_cpus} " if args.server_cpus else ""
    client_text = (
        f"pinned to CPU {','.join(map(str, client_cpus))}"
        if client_cpus != [None]
        else "not pinned"
    )
    print(f"server:  {pin_text}{args.server}   (WebSocket path {args.path})")
    if "f" in names:
        print(f"fan-out: {pin_text}{args.fanout_server}")
    print(
        f"clients: {args.clients_procs} process(es) {client_text}; "
        f"{args.warmup:g} s warm-up + {args.duration:g} s measured per run, "
        f"median of {args.repeat}; a fresh server per run"
    )
    print(
        f"machine: {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
        f"({cpu_model()}), open files limit {limit}"
    )
    print()
    print(f"{'':2}{'scenario':<46}{'result':>22}   notes")

    report: dict[str, Any] = {
        "server": args.server,
        "path": args.path,
        "server_cpus": args.server_cpus,
        "client_cpus": client_cpus,
        "clients_procs": args.clients_procs,
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "results": [],
    }
    status = 0
    for name in names:
        scenario = SCENARIOS[name]
        runs = []
        try:
            for _ in range(args.repeat):
                runs.append(run_once(scenario, args, client_cpus))
        except Exception as exc:  # a broken run: report it, go on
            why = str(exc) or type(exc).__name__
            print(f"{name:<2}{describe(scenario, args):<46}{'failed':>22}   {why}")
            status = 1
            continue
        values = [r["value"] for r in runs]
        median = statistics.median(values)
        middle = min(runs, key=lambda r: abs(r["value"] - median))
        print(
            f"{name:<2}{describe(scenario, args):<46}"
            f"{format_value(median, scenario.unit):>22}   {notes(middle)}"
        )
        report["results"].append(
            {
                **asdict(scenario),
                "title": describe(scenario, args),
                "value": median,
                "runs": runs,
            }
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return status


def cpu_model() -> str:
    """The CPU's model name, for the header of the table."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
