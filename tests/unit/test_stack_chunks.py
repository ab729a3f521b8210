"""The C speedup's cache of interpreter stack chunks (one per greenlet).

Python 3.11+ gives every greenlet that runs Python code a 16 KiB chunk
for its frames; the cache hands finished greenlets' chunks to new ones.
"""

from __future__ import annotations

import sys

import pytest
from greenlet import greenlet  # type: ignore[import-untyped]

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(
        sys.version_info < (3, 11), reason="no per-greenlet stack chunks before 3.11"
    ),
]

speedups = pytest.importorskip("geows._speedups")


def _run(n: int) -> None:
    def work() -> int:
        return sum(range(10))

    for _ in range(n):
        assert greenlet(work).switch() == 45


def test_finished_greenlets_chunks_are_reused() -> None:
    assert speedups.install_chunk_cache(64) is True
    before = speedups.chunk_cache_stats()
    _run(500)
    after = speedups.chunk_cache_stats()
    # One chunk goes round: every greenlet but possibly the first reuses it.
    assert after["hits"] - before["hits"] >= 499
    assert after["misses"] - before["misses"] <= 1


def test_the_cache_keeps_at_most_its_limit_and_a_lower_limit_releases() -> None:
    speedups.install_chunk_cache(8)
    parked = []

    def park() -> None:
        greenlet.getcurrent().parent.switch()

    for _ in range(40):  # 40 greenlets alive at once, each with its chunk
        g = greenlet(park)
        g.switch()
        parked.append(g)
    for g in parked:
        g.switch()  # each finishes and frees its chunk
    assert all(g.dead for g in parked)
    assert speedups.chunk_cache_stats()["cached"] == 8
    speedups.install_chunk_cache(2)
    assert speedups.chunk_cache_stats()["cached"] == 2
    _run(10)  # still serving from the smaller cache
    assert speedups.chunk_cache_stats()["cached"] <= 2
    speedups.install_chunk_cache(64)


def test_limit_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be"):
        speedups.install_chunk_cache(-1)
    with pytest.raises(ValueError, match="limit must be"):
        speedups.install_chunk_cache(10**6)
