"""MemoryHub: channels inside one process, the embedded default."""

from __future__ import annotations

from geows.channels import Hub

__all__ = ["MemoryHub"]


class MemoryHub(Hub):
    """Every member lives in this process: a publish is a local dispatch."""

    def _publish(self, name: str, opcode: int, payload: bytes) -> None:
        self.dispatch(name, opcode, payload)
