"""Named channels: join a channel, and what is published there reaches you.

Every backend shares :class:`Hub`'s local part: the members in this process,
a message framed once and the same bytes queued to every member without
waiting (:meth:`geows.WebSocket.deliver`). Backends differ only in how a
publish reaches the other processes: :mod:`~geows.channels.memory` (one
process), :mod:`~geows.channels.master` (the workers of one machine, through
their master) and :mod:`~geows.channels.redis` (many machines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from geows.exceptions import GeowsError
from geows.frames import OP_BINARY, OP_TEXT, frame_header

if TYPE_CHECKING:
    from geows.connection import WebSocket

__all__ = ["ChannelError", "Hub", "current_hub", "publish", "set_hub"]


class ChannelError(GeowsError):
    """A publish could not be handed to the channel backend (e.g. Redis down)."""


Data = Union[str, bytes, bytearray, memoryview]


def encode(data: Data, binary: Optional[bool] = None) -> tuple[int, bytes]:
    """``(opcode, payload)``: by default str is text and bytes-like binary;
    ``binary`` forces the kind (uWSGI's publish sends bytes as text).
    """
    if isinstance(data, str):
        payload = data.encode("utf-8")
        return (OP_BINARY if binary else OP_TEXT), payload
    return (OP_TEXT if binary is False else OP_BINARY), bytes(data)


class Hub:
    """Channel membership of this process, and fan-out to local members.

    Subclasses connect processes: they override :meth:`_publish` (send a
    message to every process with members) and may override
    :meth:`_subscribe` / :meth:`_unsubscribe` (first local member joined /
    last one left), calling :meth:`dispatch` for messages that arrive.
    ``_subscribe``/``_unsubscribe`` must not block: a connection that ends
    leaves its channels from inside the event loop's callbacks.
    """

    def __init__(self) -> None:
        self._members: dict[str, set[WebSocket]] = {}

    # -- membership ------------------------------------------------------------

    def join(self, name: str, ws: WebSocket) -> None:
        """Add ``ws`` to channel ``name``."""
        members = self._members.get(name)
        if members is None:
            self._subscribe(name)  # may raise: then nothing has changed
            members = self._members[name] = set()
        members.add(ws)

    def leave(self, name: str, ws: WebSocket) -> None:
        """Remove ``ws`` from channel ``name`` (no error if it was not in it)."""
        members = self._members.get(name)
        if members is None or ws not in members:
            return
        members.discard(ws)
        if not members:
            del self._members[name]
            self._unsubscribe(name)

    def members(self, name: str) -> int:
        """How many local members ``name`` has."""
        return len(self._members.get(name, ()))

    @property
    def channels(self) -> list[str]:
        """Channels with at least one local member."""
        return list(self._members)

    # -- messages ----------------------------------------------------------------

    def publish(self, name: str, data: Data, *, binary: Optional[bool] = None) -> None:
        """Send ``data`` to every member of ``name`` (str: text, bytes: binary).

        Raises :class:`ChannelError` if the backend cannot take it: a publish
        is never lost silently.
        """
        opcode, payload = encode(data, binary)
        self._publish(name, opcode, payload)

    def dispatch(self, name: str, opcode: int, payload: bytes) -> None:
        """Deliver a message to the local members of ``name``: framed once."""
        members = self._members.get(name)
        if not members:
            return
        frame = frame_header(opcode, len(payload)) + payload
        for ws in list(members):
            ws.deliver(frame)

    # -- backend hooks -------------------------------------------------------------

    def _publish(self, name: str, opcode: int, payload: bytes) -> None:
        raise NotImplementedError

    def _subscribe(self, name: str) -> None:
        """The first local member joined ``name``."""

    def _unsubscribe(self, name: str) -> None:
        """The last local member left ``name``."""

    def start(self) -> None:
        """Connect to the backend (called once the server runs)."""

    def close(self) -> None:
        """Disconnect from the backend."""


_hub: Optional[Hub] = None


def set_hub(hub: Optional[Hub]) -> None:
    """Make ``hub`` the process's hub (``geows serve`` does this at start)."""
    global _hub
    _hub = hub


def current_hub() -> Hub:
    """The process's hub; an in-memory one until a server sets another."""
    global _hub
    if _hub is None:
        from geows.channels.memory import MemoryHub

        _hub = MemoryHub()
    return _hub


def make_hub(url: str = "", *, hub_address: Optional[str] = None) -> Hub:
    """The hub for ``--channels URL``: ``memory://`` (or nothing) in one
    process, the master's hub at ``hub_address`` for workers without a URL,
    ``redis://host:port/db`` across processes and machines.
    """
    scheme = url.split("://", 1)[0].lower() if url else ""
    if scheme in ("redis", "rediss", "unix"):
        from geows.channels.redis import RedisHub

        return RedisHub(url)
    if scheme not in ("", "memory"):
        raise ValueError(f"unknown channel backend {url!r}: memory:// or redis://")
    if hub_address is not None and scheme == "":
        from geows.channels.master import MasterHubClient

        return MasterHubClient(hub_address)
    from geows.channels.memory import MemoryHub

    return MemoryHub()


def publish(name: str, data: Data, *, binary: Optional[bool] = None) -> None:
    """Publish ``data`` on channel ``name`` from anywhere in a served app:
    a websocket handler, a plain HTTP request, a background greenlet.
    """
    current_hub().publish(name, data, binary=binary)
