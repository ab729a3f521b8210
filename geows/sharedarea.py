"""Shared memory areas across worker processes (uWSGI's SharedArea).

``geows serve --sharedarea PAGES`` (repeatable: area ids 0, 1, ...) calls
:func:`setup` before it forks any worker, so every worker maps the same
anonymous ``MAP_SHARED`` pages: a byte written by one worker is seen by all.
Apps reach an area with :func:`area` (or through ``uwsgi.sharedarea_*``).

Layout
    An area is ``PAGES * mmap.PAGESIZE`` bytes, zero-filled at start.
    Positions run from 0 to ``len(area) - 1``; every position and length is
    checked, so no call ever reads or writes outside the area (``ValueError``
    says which bound was crossed). 64-bit values are signed, two's
    complement, **little-endian** on every platform, and wrap on overflow.

Concurrency
    ``read64``, ``write64``, ``inc64`` and ``dec64`` at a position that is a
    multiple of 8 use the CPU's lock-free atomic instructions (the C speedup,
    on little-endian machines): they never block and never lose an update.
    Everything else -- byte and bytes reads and writes, 64-bit operations at
    unaligned positions, and all operations when the C speedup is missing --
    takes a lock on exactly the bytes it touches: a POSIX record lock
    (``fcntl.lockf``) on an unlinked file opened by :func:`setup`, shared for
    reads and exclusive for writes, which excludes other processes, plus a
    mutex against this process's threads. Greenlets need nothing more: no
    operation yields while it holds the lock. So a read never sees half of
    a concurrent write, and unaligned counters are exact too. The lock path
    does not exclude the atomic one: keep counters (aligned, updated with
    ``inc64``) apart from bytes written with ``write``.
"""

from __future__ import annotations

import fcntl
import importlib
import mmap
import operator
import os
import struct
import sys
import tempfile
from typing import Any, Callable, NamedTuple, Optional, Union

from gevent.monkey import get_original

__all__ = ["SharedArea", "area", "setup"]

BytesLike = Union[bytes, bytearray, memoryview]

_INT64 = struct.Struct("<q")
_MIN64 = -(1 << 63)
_MAX64 = (1 << 63) - 1
_SPAN64 = 1 << 64


class _Atomics(NamedTuple):
    """The C speedup's lock-free 64-bit operations (native byte order)."""

    add: Callable[[mmap.mmap, int, int], int]
    load: Callable[[mmap.mmap, int], int]
    store: Callable[[mmap.mmap, int, int], None]


def _find_atomics() -> Optional[_Atomics]:
    # The atomics work in native byte order; the layout is little-endian.
    if sys.byteorder != "little":  # pragma: no cover - no such CI machine
        return None
    try:
        speedups: Any = importlib.import_module("geows._speedups")
        return _Atomics(
            speedups.atomic_add64, speedups.atomic_load64, speedups.atomic_store64
        )
    except (ImportError, AttributeError):  # pragma: no cover - depends on build
        # Not built, or built where 64-bit atomics are not lock-free.
        return None


_ATOMICS = _find_atomics()

# A real mutex even after gevent.monkey.patch_all(): it only guards the few
# instructions between lock and unlock, which never yield to the hub.
_allocate_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")
_thread_lock = _allocate_lock()


def _renew_thread_lock() -> None:
    # A thread of the parent may have held it at fork; the child's copy
    # would then stay locked forever.
    global _thread_lock
    _thread_lock = _allocate_lock()


os.register_at_fork(after_in_child=_renew_thread_lock)


class _RecordLock:
    """Byte-range locks for every area, on one unlinked file.

    Area bytes map to file offsets (each area has its own range), so
    operations on disjoint bytes do not wait for each other across
    processes. The file is inherited by forked workers; record locks belong
    to a process, hence the extra in-process mutex for threads.
    """

    def __init__(self) -> None:
        # Open for the lock's whole life: closing it would drop our locks.
        self._file = tempfile.TemporaryFile(prefix="geows-sharedarea-")  # noqa: SIM115
        self._fd = self._file.fileno()

    def acquire(self, start: int, length: int, exclusive: bool) -> None:
        """Lock ``length`` (> 0) bytes at ``start``, waiting for others."""
        _thread_lock.acquire()
        try:
            cmd = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            fcntl.lockf(self._fd, cmd, length, start)
        except BaseException:
            _thread_lock.release()
            raise

    def release(self, start: int, length: int) -> None:
        """Unlock what :meth:`acquire` locked."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, length, start)
        finally:
            _thread_lock.release()


def _wrap64(value: int) -> int:
    """``value`` modulo 2**64, as a signed 64-bit integer."""
    return (value - _MIN64) % _SPAN64 + _MIN64


def _int64(value: int, what: str) -> int:
    value = operator.index(value)
    if not _MIN64 <= value <= _MAX64:
        raise ValueError(
            f"{what} {value} does not fit in a signed 64-bit integer "
            f"({_MIN64} to {_MAX64})"
        )
    return value


class SharedArea:
    """One shared memory area: bytes every worker process sees alike.

    Get one with :func:`area`; :func:`setup` creates them. Positions are
    byte offsets from 0 to ``len(area) - 1``; out-of-range positions,
    lengths and values raise ``ValueError`` (bad types ``TypeError``).
    See the module documentation for byte order and atomicity.
    """

    __slots__ = ("_atomics", "_base", "_id", "_lock", "_mem", "_size")

    def __init__(
        self,
        area_id: int,
        mem: mmap.mmap,
        lock: _RecordLock,
        base: int,
        atomics: Optional[_Atomics],
    ) -> None:
        """Wrap ``mem``; its bytes are locked at ``base`` onwards in ``lock``."""
        self._id = area_id
        self._mem = mem
        self._size = len(mem)
        self._lock = lock
        self._base = base
        self._atomics = atomics

    @property
    def id(self) -> int:
        """The area's id: its index among the ``--sharedarea`` options."""
        return self._id

    @property
    def cpu_atomics(self) -> bool:
        """Whether 64-bit operations at aligned positions are lock-free."""
        return self._atomics is not None

    def __len__(self) -> int:
        """The size in bytes (a whole number of pages)."""
        return self._size

    def __repr__(self) -> str:
        return f"<SharedArea {self._id}: {self._size} bytes>"

    # -- bounds ----------------------------------------------------------------

    def _position(self, pos: int) -> int:
        pos = operator.index(pos)
        if pos < 0:
            raise ValueError(f"position {pos} is negative")
        if pos >= self._size:
            raise ValueError(
                f"position {pos} is outside shared area {self._id} "
                f"({self._size} bytes: positions 0 to {self._size - 1})"
            )
        return pos

    def _span(self, pos: int, length: int) -> int:
        """``pos`` checked, with ``length`` bytes from it inside the area."""
        pos = self._position(pos)
        if length > self._size - pos:
            raise ValueError(
                f"{length} bytes at position {pos} run past the end of shared "
                f"area {self._id} ({self._size} bytes: positions 0 to "
                f"{self._size - 1})"
            )
        return pos

    # -- bytes -----------------------------------------------------------------

    def read(self, pos: int, length: int = 0) -> bytes:
        """``length`` bytes from ``pos``; ``length`` 0 (the default): to the end."""
        length = operator.index(length)
        if length < 0:
            raise ValueError(f"length {length} is negative")
        pos = self._position(pos)
        if length == 0:
            length = self._size - pos
        else:
            self._span(pos, length)
        start = self._base + pos
        self._lock.acquire(start, length, exclusive=False)
        try:
            return self._mem[pos : pos + length]
        finally:
            self._lock.release(start, length)

    def write(self, pos: int, data: BytesLike) -> None:
        """Write ``data`` (any contiguous bytes-like object) at ``pos``."""
        view = memoryview(data).cast("B")
        length = view.nbytes
        pos = self._span(pos, length)
        if length == 0:
            return
        start = self._base + pos
        self._lock.acquire(start, length, exclusive=True)
        try:
            self._mem[pos : pos + length] = view
        finally:
            self._lock.release(start, length)

    def read_byte(self, pos: int) -> int:
        """The byte at ``pos``, 0 to 255."""
        pos = self._position(pos)
        start = self._base + pos
        self._lock.acquire(start, 1, exclusive=False)
        try:
            return self._mem[pos]
        finally:
            self._lock.release(start, 1)

    def write_byte(self, pos: int, value: int) -> None:
        """Set the byte at ``pos`` to ``value`` (0 to 255)."""
        value = operator.index(value)
        if not 0 <= value <= 255:
            raise ValueError(f"byte value {value} is not in 0 to 255")
        pos = self._position(pos)
        start = self._base + pos
        self._lock.acquire(start, 1, exclusive=True)
        try:
            self._mem[pos] = value
        finally:
            self._lock.release(start, 1)

    # -- 64-bit integers -------------------------------------------------------

    def read64(self, pos: int) -> int:
        """The signed little-endian 64-bit integer at ``pos`` (8 bytes)."""
        pos = self._span(pos, 8)
        if self._atomics is not None and pos % 8 == 0:
            return self._atomics.load(self._mem, pos)
        start = self._base + pos
        self._lock.acquire(start, 8, exclusive=False)
        try:
            value: int = _INT64.unpack_from(self._mem, pos)[0]
            return value
        finally:
            self._lock.release(start, 8)

    def write64(self, pos: int, value: int) -> None:
        """Store ``value`` (-2**63 to 2**63 - 1) at ``pos``, little-endian."""
        value = _int64(value, "value")
        pos = self._span(pos, 8)
        if self._atomics is not None and pos % 8 == 0:
            self._atomics.store(self._mem, pos, value)
            return
        start = self._base + pos
        self._lock.acquire(start, 8, exclusive=True)
        try:
            _INT64.pack_into(self._mem, pos, value)
        finally:
            self._lock.release(start, 8)

    def inc64(self, pos: int, amount: int = 1) -> int:
        """Atomically add ``amount`` to the integer at ``pos``; the new value.

        Atomic across processes and greenlets; wraps on overflow.
        """
        return self._add(pos, _int64(amount, "amount"))

    def dec64(self, pos: int, amount: int = 1) -> int:
        """Atomically subtract ``amount`` from the integer at ``pos``; the new
        value. Atomic across processes and greenlets; wraps on overflow.
        """
        return self._add(pos, _wrap64(-_int64(amount, "amount")))

    def _add(self, pos: int, amount: int) -> int:
        pos = self._span(pos, 8)
        if self._atomics is not None and pos % 8 == 0:
            return self._atomics.add(self._mem, pos, amount)
        start = self._base + pos
        self._lock.acquire(start, 8, exclusive=True)
        try:
            value = _wrap64(_INT64.unpack_from(self._mem, pos)[0] + amount)
            _INT64.pack_into(self._mem, pos, value)
            return value
        finally:
            self._lock.release(start, 8)


_areas: tuple[SharedArea, ...] = ()


def setup(pages: list[int], *, cpu_atomics: bool = True) -> None:
    """Create one zero-filled area of ``pages[i]`` pages for each id ``i``.

    Call it before forking workers: the areas are anonymous shared mappings,
    so only processes forked afterwards share them. Calling it again
    replaces every area (areas obtained before keep their old memory).
    ``cpu_atomics=False`` makes every operation take the lock, as when the
    C speedup is not built (for tests).
    """
    global _areas
    counts = [operator.index(n) for n in pages]
    for index, count in enumerate(counts):
        if count < 1:
            raise ValueError(f"shared area {index}: {count} pages (at least 1)")
    # Old areas keep the old lock file open for as long as they are used.
    _areas = ()
    if not counts:
        return
    lock = _RecordLock()
    atomics = _ATOMICS if cpu_atomics else None
    areas = []
    base = 0
    for area_id, count in enumerate(counts):
        mem = mmap.mmap(-1, count * mmap.PAGESIZE, flags=mmap.MAP_SHARED)
        areas.append(SharedArea(area_id, mem, lock, base, atomics))
        base += len(mem)
    _areas = tuple(areas)


def area(area_id: int) -> SharedArea:
    """The area with id ``area_id`` (the n-th ``--sharedarea``, from 0).

    Raises ``ValueError`` for an id that was not configured.
    """
    area_id = operator.index(area_id)
    if 0 <= area_id < len(_areas):
        return _areas[area_id]
    if not _areas:
        raise ValueError(
            f"no shared area {area_id}: none was configured "
            "(start geows serve with --sharedarea PAGES)"
        )
    raise ValueError(
        f"no shared area {area_id}: ids are 0 to {len(_areas) - 1} "
        "(one per --sharedarea option)"
    )
