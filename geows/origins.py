"""Origin checking for WebSocket upgrades (RFC 6455 10.2, RFC 6454).

Browsers let any page open a WebSocket to any server, sending the page's
origin in ``Origin``; a server that relies on cookies must check it or be
open to cross-site WebSocket hijacking. ``--websockets-allowed-origins``
lists what is allowed; each value may be a comma-separated list of:

``https://example.com``, ``http://localhost:8000``
    An exact origin: ``scheme://host[:port]``, no path. Scheme and host
    compare case-insensitively; a default port is the same as none
    (``https://example.com:443`` is ``https://example.com``; 80 for http and
    ws, 443 for https and wss). IPv6 hosts go in brackets. Hosts are ASCII:
    write an internationalized name in its ``xn--`` form, as browsers send it.
``https://*.example.com``
    Any subdomain, one or more labels deep: ``a.example.com`` and
    ``a.b.example.com``, but not ``example.com`` itself, nor
    ``evilexample.com``, nor ``example.com.evil.org``. ``*.`` may only lead
    the host; scheme and port match as for an exact origin.
``http://localhost:*``, ``https://*.example.com:*``
    ``*`` as the port: any port, the default one included.
``*``
    Any origin (``null`` and malformed values included): the Origin header
    must be present, nothing more.
``null``
    The literal ``null`` origin of sandboxed frames and ``file://`` pages.

No entries at all means no check. A request without ``Origin`` is refused
by a non-empty policy unless ``allow_missing`` is set: browsers always send
it on a WebSocket upgrade, so a missing one is a non-browser client (curl, a
backend service), which the Origin check does not protect against anyway;
refusing by default keeps a policy strict until someone says otherwise.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import NamedTuple, Optional, Union

from geows.exceptions import InvalidHandshake

__all__ = ["DEFAULT_PORTS", "OriginPolicy"]

#: Ports that an origin leaves out (WHATWG URL "special schemes").
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")
# Host names: dot-separated labels, with an optional trailing dot (a distinct
# origin). Lenient on hyphens and underscores, which real names carry.
_HOSTNAME = re.compile(r"(?:[a-z0-9_-]+\.)*[a-z0-9_-]+\.?\Z")
_MAX_SHOWN = 200  # of an origin quoted in a refusal


class _AnyPort:
    def __repr__(self) -> str:
        return "*"


_ANY_PORT = _AnyPort()


class _Origin(NamedTuple):
    """A parsed origin; ``port`` None: a scheme without default port, none given."""

    scheme: str
    host: str
    port: Optional[int]


class _Pattern(NamedTuple):
    """A wildcard entry; ``*.example.com`` is host "example.com", subdomains."""

    scheme: str
    host: str
    subdomains: bool
    port: Union[int, _AnyPort, None]

    def matches(self, origin: _Origin) -> bool:
        if origin.scheme != self.scheme:
            return False
        if self.port is not _ANY_PORT and origin.port != self.port:
            return False
        if not self.subdomains:
            return origin.host == self.host
        suffix = "." + self.host
        return len(origin.host) > len(suffix) and origin.host.endswith(suffix)


class OriginPolicy:
    """Which ``Origin`` values may open a WebSocket (syntax in the module doc)."""

    def __init__(
        self, entries: Iterable[str] = (), *, allow_missing: bool = False
    ) -> None:
        if isinstance(entries, str):  # one value, not a list of characters
            entries = [entries]
        self.allow_missing = allow_missing
        self._any = False
        self._null = False
        self._exact: set[_Origin] = set()
        self._patterns: list[_Pattern] = []
        self._entries: list[str] = []
        for entry in entries:
            for piece in entry.split(","):
                text = piece.strip()
                if text:
                    self._entries.append(text)
                    self._add(text)

    def _add(self, text: str) -> None:
        if text == "*":
            self._any = True
            return
        if text.lower() == "null":
            self._null = True
            return
        if "*" not in text:
            origin = _parse(text)
            if origin is None:
                raise ValueError(
                    f"invalid allowed origin {text!r}: expected scheme://host[:port] "
                    "without path, 'null' or a pattern such as https://*.example.com"
                )
            self._exact.add(origin)
            return
        pattern = _parse_pattern(text)
        if pattern is None:
            raise ValueError(
                f"invalid origin pattern {text!r}: '*' may be the whole entry, "
                "lead the host as '*.' (https://*.example.com) or be the port "
                "(http://localhost:*)"
            )
        self._patterns.append(pattern)

    def __bool__(self) -> bool:
        """Whether the policy checks anything (no entries: everything allowed)."""
        return bool(self._entries)

    def __repr__(self) -> str:
        return f"OriginPolicy({self._entries!r}, allow_missing={self.allow_missing})"

    def allows(self, origin: Optional[str]) -> bool:
        """Whether a request with this ``Origin`` value (None: absent) may upgrade."""
        if origin is None:
            return self.allow_missing or not self._entries
        if not self._entries or self._any:
            return True
        if origin.lower() == "null":
            return self._null
        parsed = _parse(origin)
        if parsed is None:
            return False
        if parsed in self._exact:
            return True
        return any(p.matches(parsed) for p in self._patterns)

    def check(self, origin: Optional[str]) -> None:
        """Refuse an upgrade whose ``Origin`` is not allowed, with 403 Forbidden."""
        if self.allows(origin):
            return
        if origin is None:
            reason = "missing Origin header (not a browser) is not allowed"
        else:
            shown = origin if len(origin) <= _MAX_SHOWN else origin[:_MAX_SHOWN] + "..."
            reason = f"origin {shown!r} is not allowed"
        raise InvalidHandshake(reason, HTTPStatus.FORBIDDEN)


def _split(text: str) -> Optional[tuple[str, str, Optional[str]]]:
    """``scheme://host[:port]`` in lower case as (scheme, host, port text)."""
    if not text.isascii():
        return None
    scheme, sep, rest = text.lower().partition("://")
    if not sep or not _SCHEME.match(scheme):
        return None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return None
        host, after = rest[: end + 1], rest[end + 1 :]
        if after and not after.startswith(":"):
            return None
        return scheme, host, after[1:] if after else None
    host, colon, port = rest.partition(":")
    return scheme, host, port if colon else None


def _host(host: str) -> Optional[str]:
    """A validated, normalized host: a name or IPv4 address, or ``[IPv6]``."""
    if host.startswith("["):
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        return None if ip.scope_id else f"[{ip}]"
    return host if _HOSTNAME.match(host) else None


def _port(scheme: str, port: Optional[str]) -> Optional[int]:
    """The port, normalized (the scheme's default when absent); -1 if invalid."""
    if port is None:
        return DEFAULT_PORTS.get(scheme)
    if not (0 < len(port) <= 5 and port.isdigit()):  # ASCII: checked by _split
        return -1
    number = int(port)
    return number if number <= 65535 else -1


def _parse(text: str) -> Optional[_Origin]:
    """An origin ``scheme://host[:port]``, or None when it is not one."""
    parts = _split(text)
    if parts is None:
        return None
    scheme, host, port_text = parts
    normal = _host(host)
    port = _port(scheme, port_text)
    if normal is None or port == -1:
        return None
    return _Origin(scheme, normal, port)


def _parse_pattern(text: str) -> Optional[_Pattern]:
    """An entry with ``*`` as the leading host labels and/or the port."""
    parts = _split(text)
    if parts is None:
        return None
    scheme, host, port_text = parts
    subdomains = host.startswith("*.")
    if subdomains:
        host = host[2:]
        if host.startswith("[") or host.endswith("]"):
            return None  # an IP address has no subdomains
    normal = _host(host)
    if normal is None:
        return None
    if port_text == "*":
        return _Pattern(scheme, normal, subdomains, _ANY_PORT)
    port = _port(scheme, port_text)
    if port == -1:
        return None
    return _Pattern(scheme, normal, subdomains, port)
