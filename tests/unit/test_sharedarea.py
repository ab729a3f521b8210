"""geows.sharedarea: bounds, round trips, and atomicity across processes.

Most tests run twice: with the C speedup's lock-free atomics ("atomics")
and with every operation on the fcntl record lock ("lockf"), the path
taken when the speedup is not built. Atomicity is checked with real
``os.fork()`` children hammering one counter.
"""

from __future__ import annotations

import array
import mmap
import os
import select
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from geows import sharedarea, uwsgi_compat
from geows.exceptions import ConnectionClosed
from geows.sharedarea import SharedArea

PAGE = mmap.PAGESIZE
MAX64 = (1 << 63) - 1
MIN64 = -(1 << 63)

HAVE_ATOMICS = sharedarea._ATOMICS is not None

PATHS = [
    pytest.param(
        True,
        id="atomics",
        marks=pytest.mark.skipif(not HAVE_ATOMICS, reason="C speedup not built"),
    ),
    pytest.param(False, id="lockf"),
]


@pytest.fixture(autouse=True)
def _no_areas_after() -> Iterator[None]:
    yield
    sharedarea.setup([])


@pytest.fixture(params=PATHS)
def cpu(request: pytest.FixtureRequest) -> bool:
    """Whether the areas of the test use the CPU atomics or the lock."""
    return bool(request.param)


@pytest.fixture
def area(cpu: bool) -> SharedArea:
    """Area 0: one page, on the path of the ``cpu`` fixture."""
    sharedarea.setup([1], cpu_atomics=cpu)
    created = sharedarea.area(0)
    assert created.cpu_atomics is cpu
    return created


# -- setup and ids ---------------------------------------------------------------


def test_setup_creates_one_zeroed_area_per_entry_with_ids_in_order():
    sharedarea.setup([1, 3, 2])
    sizes = [len(sharedarea.area(i)) for i in range(3)]
    assert sizes == [PAGE, 3 * PAGE, 2 * PAGE]
    for i in range(3):
        assert sharedarea.area(i).id == i
        assert sharedarea.area(i).read(0) == bytes(sizes[i])
    assert repr(sharedarea.area(1)) == f"<SharedArea 1: {3 * PAGE} bytes>"


def test_areas_are_separate_memory():
    sharedarea.setup([1, 1])
    sharedarea.area(0).write(0, b"zero")
    sharedarea.area(1).write(0, b"one!")
    assert sharedarea.area(0).read(0, 4) == b"zero"
    assert sharedarea.area(1).read(0, 4) == b"one!"


def test_setup_again_replaces_every_area():
    sharedarea.setup([1, 1])
    old = sharedarea.area(0)
    old.write(0, b"old")
    sharedarea.setup([2])
    assert len(sharedarea.area(0)) == 2 * PAGE
    assert sharedarea.area(0).read(0, 3) == bytes(3)
    assert old.read(0, 3) == b"old"  # still usable, no longer shared out
    with pytest.raises(ValueError, match="ids are 0 to 0"):
        sharedarea.area(1)


def test_no_areas_by_default_and_after_an_empty_setup():
    sharedarea.setup([])
    with pytest.raises(ValueError, match=r"no shared area 0: none was configured"):
        sharedarea.area(0)


@pytest.mark.parametrize("bad", [1, 2, -1, 1 << 70])
def test_unknown_ids_are_value_errors(bad: int):
    sharedarea.setup([1])
    with pytest.raises(ValueError, match=rf"^no shared area {bad}: ids are 0 to 0"):
        sharedarea.area(bad)


def test_ids_must_be_integers():
    sharedarea.setup([1])
    with pytest.raises(TypeError):
        sharedarea.area(0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sharedarea.area("0")  # type: ignore[arg-type]


@pytest.mark.parametrize("pages", [[0], [1, -2]])
def test_setup_refuses_empty_areas(pages: list[int]):
    with pytest.raises(ValueError, match="pages"):
        sharedarea.setup(pages)


def test_a_failed_setup_leaves_the_old_areas():
    sharedarea.setup([1])
    with pytest.raises(ValueError, match="0 pages"):
        sharedarea.setup([1, 0])
    assert len(sharedarea.area(0)) == PAGE


# -- bounds ------------------------------------------------------------------------


def test_read_edges(area: SharedArea):
    size = len(area)
    assert size == PAGE
    assert len(area.read(0)) == size
    assert len(area.read(0, size)) == size
    assert len(area.read(size - 1)) == 1
    assert len(area.read(size - 1, 1)) == 1
    assert len(area.read(size - 10, 10)) == 10


@pytest.mark.parametrize(
    ("pos", "length", "message"),
    [
        (-1, 0, r"^position -1 is negative$"),
        (-1, 1, r"^position -1 is negative$"),
        (PAGE, 0, rf"^position {PAGE} is outside shared area 0 \({PAGE} bytes: "),
        (PAGE, 1, rf"^position {PAGE} is outside"),
        (PAGE + 1, 0, "is outside"),
        (1 << 64, 0, "is outside"),
        (0, PAGE + 1, rf"^{PAGE + 1} bytes at position 0 run past the end"),
        (PAGE - 10, 11, "run past the end"),
        (PAGE - 1, 2, "run past the end"),
        (1, (1 << 64) - 1, "run past the end"),  # pos + len wraps in 64 bits
        (8, (1 << 63) - 4, "run past the end"),
        (0, -1, r"^length -1 is negative$"),
        (PAGE - 1, -1, "length -1 is negative"),
    ],
)
def test_read_out_of_range(area: SharedArea, pos: int, length: int, message: str):
    with pytest.raises(ValueError, match=message):
        area.read(pos, length)


def test_write_edges(area: SharedArea):
    area.write(PAGE - 4, b"tail")
    assert area.read(PAGE - 4) == b"tail"
    area.write(0, bytes(range(256)) * (PAGE // 256))
    assert area.read(0) == bytes(range(256)) * (PAGE // 256)
    area.write(PAGE - 1, b"")  # nothing to write, but a valid position


@pytest.mark.parametrize(
    ("pos", "data", "message"),
    [
        (-1, b"x", "position -1 is negative"),
        (PAGE, b"", "is outside"),
        (PAGE, b"x", "is outside"),
        (PAGE - 3, b"tail", f"4 bytes at position {PAGE - 3} run past the end"),
        (0, bytes(PAGE + 1), "run past the end"),
        ((1 << 64) - 1, b"x", "is outside"),
    ],
)
def test_write_out_of_range_writes_nothing(
    area: SharedArea, pos: int, data: bytes, message: str
):
    with pytest.raises(ValueError, match=message):
        area.write(pos, data)
    assert area.read(0) == bytes(PAGE)


def test_bytes_one_at_a_time(area: SharedArea):
    area.write_byte(0, 0)
    area.write_byte(1, 255)
    area.write_byte(PAGE - 1, 7)
    assert [area.read_byte(p) for p in (0, 1, PAGE - 1)] == [0, 255, 7]
    assert area.read(0, 2) == b"\x00\xff"
    for pos in (-1, PAGE, PAGE + 1):
        with pytest.raises(ValueError, match="position"):
            area.read_byte(pos)
        with pytest.raises(ValueError, match="position"):
            area.write_byte(pos, 1)
    for value in (-1, 256, 1 << 64):
        with pytest.raises(ValueError, match=rf"byte value {value} is not in 0 to 255"):
            area.write_byte(0, value)
    assert area.read_byte(0) == 0


@pytest.mark.parametrize("op", ["read64", "write64", "inc64", "dec64"])
def test_64_bit_edges(area: SharedArea, op: str):
    call: Callable[..., Any] = getattr(area, op)
    args = () if op == "read64" else (1,)
    call(PAGE - 8, *args)  # the last 8 bytes
    call(PAGE - 9, *args)  # unaligned: through the lock on both paths
    for pos, message in [
        (PAGE - 7, f"8 bytes at position {PAGE - 7} run past the end"),
        (PAGE - 1, "run past the end"),
        (PAGE, "is outside"),
        (-8, "position -8 is negative"),
        (-1, "negative"),
    ]:
        with pytest.raises(ValueError, match=message):
            call(pos, *args)


def test_64_bit_value_range(area: SharedArea):
    area.write64(0, MAX64)
    assert area.read64(0) == MAX64
    area.write64(0, MIN64)
    assert area.read64(0) == MIN64
    for value in (MAX64 + 1, MIN64 - 1, 1 << 64):
        with pytest.raises(ValueError, match="does not fit in a signed 64-bit"):
            area.write64(0, value)
        with pytest.raises(ValueError, match=rf"amount {value} does not fit"):
            area.inc64(0, value)
        with pytest.raises(ValueError, match="does not fit"):
            area.dec64(0, value)
    assert area.read64(0) == MIN64


def test_types_are_checked(area: SharedArea):
    with pytest.raises(TypeError):
        area.read(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        area.read(0, "4")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        area.write(0, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        area.write64(0, 1.5)  # type: ignore[arg-type]


# -- round trips -------------------------------------------------------------------


def test_bytes_round_trip(area: SharedArea):
    area.write(100, b"hello")
    area.write(105, bytearray(b", "))
    area.write(107, memoryview(b"--world--")[2:7])
    assert area.read(100, 12) == b"hello, world"
    assert area.read(99, 14) == b"\x00hello, world\x00"
    assert area.read(PAGE - 3) == bytes(3)


def test_any_contiguous_buffer_is_written_as_its_bytes(area: SharedArea):
    numbers = array.array("I", [1, 2, 3])
    area.write(0, memoryview(numbers))
    assert area.read(0, numbers.itemsize * 3) == numbers.tobytes()


def test_64_bit_layout_is_little_endian_twos_complement(area: SharedArea):
    area.write64(8, 0x0102030405060708)
    assert area.read(8, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    area.write64(16, -2)
    assert area.read(16, 8) == b"\xfe" + b"\xff" * 7
    area.write(24, (-300).to_bytes(8, "little", signed=True))
    assert area.read64(24) == -300


@pytest.mark.parametrize("pos", [0, 8, 3, PAGE - 8, PAGE - 11])
def test_inc64_and_dec64_return_the_new_value(area: SharedArea, pos: int):
    assert area.read64(pos) == 0
    assert area.inc64(pos) == 1
    assert area.inc64(pos, 10) == 11
    assert area.inc64(pos, -20) == -9
    assert area.dec64(pos) == -10
    assert area.dec64(pos, -15) == 5
    assert area.dec64(pos, 5) == 0
    assert area.read64(pos) == 0
    assert area.inc64(pos, 0) == 0


def test_unaligned_values_overlap_their_neighbours_bytes(area: SharedArea):
    area.write64(3, -1)
    assert area.read(0, 12) == bytes(3) + b"\xff" * 8 + bytes(1)
    assert area.inc64(3) == 0
    assert area.read(0, 12) == bytes(12)


def test_64_bit_arithmetic_wraps(area: SharedArea):
    area.write64(0, MAX64)
    assert area.inc64(0) == MIN64
    assert area.dec64(0) == MAX64
    assert area.dec64(0, MIN64) == -1  # subtracting -2**63
    assert area.inc64(0, MIN64) == MAX64
    area.write64(8, MIN64)
    assert area.dec64(8, MAX64) == 1


# -- atomicity ---------------------------------------------------------------------


def _fork_children(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` in ``count`` forked children, released together."""
    ready_r, ready_w = os.pipe()
    pids = []
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                status = 1
                try:
                    os.close(ready_w)
                    os.read(ready_r, 1)
                    work(index)
                    status = 0
                finally:
                    os._exit(status)
            pids.append(pid)
    finally:
        os.write(ready_w, b"go" * count)  # every child starts at once
        os.close(ready_w)
        os.close(ready_r)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    assert statuses == [0] * count


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pos", [64, 101])
def test_inc64_is_atomic_across_processes(area: SharedArea, pos: int):
    def work(_: int) -> None:
        for _ in range(20_000):
            area.inc64(pos)

    _fork_children(4, work)
    assert area.read64(pos) == 80_000
    assert area.read(pos - 8, 8) == bytes(8)  # the neighbours are untouched
    assert area.read(pos + 8, 8) == bytes(8)


@pytest.mark.timeout(60)
def test_inc64_and_dec64_mixed_across_processes(area: SharedArea):
    area.write64(0, 1_000)

    def work(index: int) -> None:
        for _ in range(10_000):
            if index % 2:
                area.dec64(0, 3)
            else:
                area.inc64(0, 5)

    _fork_children(4, work)
    assert area.read64(0) == 1_000 + 2 * 10_000 * (5 - 3)


@pytest.mark.timeout(60)
def test_lockf_path_is_atomic_across_threads(monkeypatch: pytest.MonkeyPatch):
    # fcntl locks belong to the process and do not exclude its threads: the
    # in-process mutex does. Make each read-modify-write let other threads
    # run in its middle, as a preempted thread would.
    wrap64 = sharedarea._wrap64

    def preempted(value: int) -> int:
        time.sleep(0)
        return wrap64(value)

    monkeypatch.setattr(sharedarea, "_wrap64", preempted)
    sharedarea.setup([1], cpu_atomics=False)
    area = sharedarea.area(0)

    def work() -> None:
        for _ in range(2_000):
            area.inc64(8)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert area.read64(8) == 8_000


@pytest.mark.timeout(60)
def test_a_read_never_sees_half_of_a_write(cpu: bool):
    # Bytes always go through the lock; big writes make overlaps likely.
    sharedarea.setup([64], cpu_atomics=cpu)
    area = sharedarea.area(0)
    size = len(area)
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            round_ = 0
            while not select.select([stop_r], [], [], 0)[0]:
                area.write(0, bytes([65 + round_ % 2]) * size)
                round_ += 1
            status = 0
        finally:
            os._exit(status)
    seen: set[bytes] = set()
    try:
        # Read until both contents were seen (the writer keeps changing it).
        for _ in range(200_000):
            data = area.read(0)
            assert data in (bytes(size), b"A" * size, b"B" * size)
            seen.add(data[:1])
            if {b"A", b"B"} <= seen:
                break
        assert {b"A", b"B"} <= seen
    finally:
        os.write(stop_w, b"stop")
        assert os.waitpid(pid, 0)[1] == 0
        os.close(stop_r)
        os.close(stop_w)


# -- the C functions ------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_ATOMICS, reason="C speedup not built")
def test_the_c_atomics_check_their_buffer():
    from geows import _speedups  # type: ignore[attr-defined]

    mem = mmap.mmap(-1, PAGE, flags=mmap.MAP_SHARED)
    assert _speedups.atomic_add64(mem, 8, 5) == 5
    assert _speedups.atomic_add64(mem, 8, -7) == -2
    assert _speedups.atomic_load64(mem, 8) == -2
    _speedups.atomic_store64(mem, 16, MAX64)
    assert _speedups.atomic_add64(mem, 16, 1) == MIN64
    for pos in (-8, -1, PAGE - 7, PAGE, 1 << 40):
        with pytest.raises(ValueError, match="do not fit"):
            _speedups.atomic_add64(mem, pos, 1)
        with pytest.raises(ValueError, match="do not fit"):
            _speedups.atomic_load64(mem, pos)
    with pytest.raises(ValueError, match="not 8-byte aligned"):
        _speedups.atomic_store64(mem, 4, 1)
    with pytest.raises(TypeError):
        _speedups.atomic_add64(bytes(16), 0, 1)  # read-only
    with pytest.raises(ValueError, match="do not fit"):
        _speedups.atomic_load64(bytearray(7), 0)


# -- the uwsgi functions -------------------------------------------------------------


class FakeWebSocket:
    """Records what the uwsgi functions send; ``closed`` makes sends fail."""

    def __init__(self, closed: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.closed = closed

    def _send(self, kind: str, data: Any) -> None:
        if self.closed:
            raise ConnectionClosed(1000)
        self.sent.append((kind, bytes(data)))

    def send_text(self, data: Any) -> None:
        self._send("text", data)

    def send_binary(self, data: Any) -> None:
        self._send("binary", data)


def _context(ws: Any) -> Any:
    return SimpleNamespace(websocket=ws)


def test_uwsgi_sharedarea_functions(cpu: bool):
    sharedarea.setup([1, 2], cpu_atomics=cpu)
    uwsgi = uwsgi_compat
    uwsgi.sharedarea_write(1, 10, b"bytes")
    uwsgi.sharedarea_write(1, 15, " and caf\u00e9")
    assert uwsgi.sharedarea_read(1, 10, 15) == b"bytes and caf\xc3\xa9"
    assert uwsgi.sharedarea_read(1, 2 * PAGE - 2) == bytes(2)
    assert uwsgi.sharedarea_read(0, 10, 5) == bytes(5)
    uwsgi.sharedarea_writebyte(0, 3, 200)
    assert uwsgi.sharedarea_readbyte(0, 3) == 200
    uwsgi.sharedarea_write64(0, 8, -5)
    assert uwsgi.sharedarea_read64(0, 8) == -5
    assert uwsgi.sharedarea_inc64(0, 8) == -4
    assert uwsgi.sharedarea_inc64(0, 8, 10) == 6
    assert uwsgi.sharedarea_dec64(0, 8) == 5
    assert uwsgi.sharedarea_dec64(0, 8, 5) == 0
    with pytest.raises(ValueError, match="no shared area 2"):
        uwsgi.sharedarea_read(2, 0)
    with pytest.raises(ValueError, match="is outside"):
        uwsgi.sharedarea_read64(0, PAGE)
    with pytest.raises(ValueError, match="byte value"):
        uwsgi.sharedarea_writebyte(0, 0, 256)


def test_uwsgi_functions_without_areas():
    with pytest.raises(ValueError, match="none was configured"):
        uwsgi_compat.sharedarea_inc64(0, 0)


def test_websocket_send_from_sharedarea_sends_the_bytes():
    sharedarea.setup([1])
    sharedarea.area(0).write(PAGE - 6, b"\xe2\x98\x83end")
    ws = FakeWebSocket()
    ctx = _context(ws)
    uwsgi_compat.websocket_send_from_sharedarea(0, PAGE - 6, 3, ctx)
    uwsgi_compat.websocket_send_from_sharedarea(0, PAGE - 3, request_context=ctx)
    uwsgi_compat.websocket_send_binary_from_sharedarea(0, PAGE - 6, 0, ctx)
    uwsgi_compat.websocket_send_binary_from_sharedarea(0, PAGE - 1, 1, ctx)
    assert ws.sent == [
        ("text", b"\xe2\x98\x83"),
        ("text", b"end"),
        ("binary", b"\xe2\x98\x83end"),
        ("binary", b"d"),
    ]


@pytest.mark.parametrize(
    "send",
    [
        uwsgi_compat.websocket_send_from_sharedarea,
        uwsgi_compat.websocket_send_binary_from_sharedarea,
    ],
)
def test_websocket_send_from_sharedarea_errors(send: Callable[..., None]):
    sharedarea.setup([1])
    ws = FakeWebSocket()
    # Bad arguments: ValueError, checked before the connection is looked up.
    for args, message in [
        ((1, 0), "no shared area 1"),
        ((0, PAGE), "is outside"),
        ((0, -1), "position -1 is negative"),
        ((0, PAGE - 1, 2), "run past the end"),
        ((0, 0, -1), "length -1 is negative"),
    ]:
        with pytest.raises(ValueError, match=message):
            send(*args, request_context=_context(ws))
        with pytest.raises(ValueError, match=message):
            send(*args)  # no current request either
    assert ws.sent == []
    # No request, no handshake, a closed connection: OSError.
    with pytest.raises(OSError, match="no current request"):
        send(0, 0)
    with pytest.raises(OSError, match="websocket_handshake"):
        send(0, 0, request_context=_context(None))
    with pytest.raises(OSError, match="unable to send") as info:
        send(0, 0, request_context=_context(FakeWebSocket(closed=True)))
    assert isinstance(info.value.__cause__, ConnectionClosed)
