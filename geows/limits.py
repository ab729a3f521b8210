"""Limits and timeouts: frozen data passed down explicitly.

CLI / ini -> ``Config`` -> ``Server`` -> ``WebSocket`` -> ``ServerProtocol``.
Sizes are bytes and times seconds here; KiB appear only at the uWSGI option
boundary. ``None`` disables a limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Limits", "Timeouts"]


@dataclass(frozen=True)
class Limits:
    """Size limits of one WebSocket connection."""

    #: Largest message after reassembly; uWSGI's ``--websockets-max-size``
    #: default is 1024 KiB, and so is ours. Over it: close 1009.
    max_message_size: Optional[int] = 1024 * 1024
    #: Messages read ahead of the application before reading stops (TCP then
    #: pushes back on the peer). Bounds memory of an app that never calls recv.
    max_queued_messages: int = 16
    #: Outgoing bytes buffered for one connection before a sender waits.
    write_buffer_high: int = 64 * 1024
    #: Channel messages queued for a member that reads slower than they come.
    #: 128 KiB holds about 1,000 chat messages for a client that pauses (a
    #: phone changing networks); 10,000 members all at the cap would hold
    #: about 1.3 GB, the worst case. Over it past ``slow_member_timeout``, or
    #: over four times it at all: close 1008. Never dropped silently.
    max_channel_backlog: int = 128 * 1024


@dataclass(frozen=True)
class Timeouts:
    """Time limits of one WebSocket connection, in seconds."""

    #: Send a ping this often; uWSGI's ``--websockets-ping-freq`` default.
    ping_interval: Optional[float] = 30.0
    #: A peer silent this long after a ping is dead. uWSGI uses 3 s, which
    #: drops healthy clients on slow mobile links and behind busy proxies;
    #: 10 s still frees a dead peer's resources promptly.
    pong_tolerance: float = 10.0
    #: Wait this long for the peer's close frame after sending ours.
    close_timeout: float = 5.0
    #: A channel member over ``Limits.max_channel_backlog`` this long is closed
    #: with 1008 so that it cannot slow the others down.
    slow_member_timeout: float = 10.0

    @property
    def send_stall(self) -> Optional[float]:
        """A send that makes no progress this long fails the connection."""
        if self.ping_interval is None:
            return None
        return self.ping_interval + self.pong_tolerance
