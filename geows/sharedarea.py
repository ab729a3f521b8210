"""Shared memory areas across worker processes (uWSGI's SharedArea).

Placeholder until the SharedArea work lands: ``setup`` accepts no areas.
"""

from __future__ import annotations


def setup(pages: list[int]) -> None:
    """Create one area per entry of ``pages`` before any worker forks."""
    if pages:
        raise NotImplementedError("--sharedarea is not implemented yet")
