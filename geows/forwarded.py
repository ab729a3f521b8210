"""The real client behind trusted reverse proxies (RFC 7239, X-Forwarded-*).

A proxy reports the client it serves in ``Forwarded`` (RFC 7239) or in the
older ``X-Forwarded-For`` / ``X-Forwarded-Proto``. Anyone can send these
headers, so :func:`resolve` believes them by these rules:

1. Nothing is believed unless the direct peer is trusted
   (``--trusted-proxies``): otherwise the client is the peer and the scheme
   is the connection's, whatever the headers say.
2. ``Forwarded`` is used when present, else ``X-Forwarded-For`` with
   ``X-Forwarded-Proto``; the two families are never mixed. Several header
   lines and comma-separated lists make one list of hops, in order: the
   leftmost is the one farthest away, the rightmost was added by the peer.
3. Walk from the right. A hop whose address is itself trusted is a proxy of
   ours and is skipped; the first untrusted one is the client. A client can
   put what it likes at the left of the list, but not past our proxies, so
   prefixing spoofs nothing. When every hop is trusted, the leftmost is the
   client.
4. A hidden hop (``unknown``, an obfuscated ``_name`` (RFC 7239 6.2, 6.3),
   a ``Forwarded`` element without ``for=``) ends the walk: the address stays
   the last one resolved, the address of the proxy that saw the hidden node.
5. A malformed hop ends the walk the same way: keep what was resolved so
   far. Peer input never raises.
6. Scheme: the proto of the hop chosen (``Forwarded``: of its element;
   ``X-Forwarded-Proto``: when it has as many entries as the hops), else the
   last proto given, else the connection's scheme. Only ``http`` and
   ``https`` count (``ws``/``wss`` mean the same); any other value is ignored.
7. Port: the client's source port when the chosen hop names one
   (``for="[2001:db8::1]:4711"``, ``192.0.2.1:5678``), else None; the
   peer's port when the client is the peer. ``X-Forwarded-Port`` is not read:
   it names the port the client reached on the proxy, a server port.
8. An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``, what a dual-stack
   socket reports) counts as its IPv4 address, for trust and in the answer.
   Addresses taken from headers come back in canonical form; the peer's is
   returned as given.

Caveat for rule 2: a proxy passes through, untouched, whichever family it
does not set itself. Behind a proxy that only sets ``X-Forwarded-For``
(nginx's usual ``$proxy_add_x_forwarded_for``), a client's own
``Forwarded`` header would win, so either have the proxy clear it
(``proxy_set_header Forwarded "";``) or call ``resolve(...,
header="x-forwarded-for")``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

__all__ = ["Client", "TrustedProxies", "resolve"]

_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Shorthands for ``--trusted-proxies``: the loopback ranges, and the private
#: ranges of RFC 1918 (IPv4) and RFC 4193 (IPv6 unique local addresses).
SHORTHANDS: dict[str, tuple[str, ...]] = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
}

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_HEADER_CHOICES = ("auto", "forwarded", "x-forwarded-for")

# RFC 7239 6.3: obfnode = "_" 1*( ALPHA / DIGIT / "." / "_" / "-" ); obfport too.
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+\Z")
# RFC 9110 5.6.2 token characters, for parameter names.
_TCHAR = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_OWS = " \t"


class TrustedProxies:
    """The peers whose forwarding headers are believed (``--trusted-proxies``).

    Entries are IP addresses or CIDR networks (IPv4 or IPv6), ``unix`` (a
    peer over a Unix socket, whose address is None or ""), ``loopback`` and
    ``private`` (see ``SHORTHANDS``); each may be a comma-separated list.
    No entries: nobody is trusted.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        if isinstance(entries, str):  # one value, not a list of characters
            entries = [entries]
        self.unix = False
        self._v4: list[ipaddress.IPv4Network] = []
        self._v6: list[ipaddress.IPv6Network] = []
        self._entries: list[str] = []
        for entry in entries:
            for piece in entry.split(","):
                text = piece.strip()
                if not text:
                    continue
                self._entries.append(text)
                word = text.lower()
                if word == "unix":
                    self.unix = True
                elif word in SHORTHANDS:
                    for net in SHORTHANDS[word]:
                        self._add(_network(net))
                else:
                    self._add(_network(text))

    def _add(self, net: _Network) -> None:
        if isinstance(net, ipaddress.IPv4Network):
            self._v4.append(net)
        else:
            self._v6.append(net)

    def __contains__(self, peer_ip: Optional[str]) -> bool:
        """Whether a peer address is trusted; None or "" is a Unix socket peer."""
        if not peer_ip:
            return self.unix
        ip = _ip(peer_ip)
        return ip is not None and self.trusts(ip)

    def trusts(self, ip: _Address) -> bool:
        """Whether a parsed address is in a trusted network."""
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is None:
                return any(ip in net for net in self._v6)
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._v4)

    def __bool__(self) -> bool:
        return self.unix or bool(self._v4) or bool(self._v6)

    def __repr__(self) -> str:
        return f"TrustedProxies({self._entries!r})"


def _network(text: str) -> _Network:
    """One address or network entry; IPv4-mapped IPv6 networks become IPv4."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"invalid trusted proxy {text!r}: not an IP address, a CIDR network, "
            f"'unix', 'loopback' or 'private' ({exc})"
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


@dataclass(frozen=True)
class Client:
    """Who is on the other end: the peer, or the client a trusted proxy names.

    ``via_proxy`` is True when the peer is trusted and sent forwarding
    headers, which then decided ``addr``, ``port`` and ``scheme``.
    """

    addr: Optional[str]
    port: Optional[int]
    scheme: str
    via_proxy: bool


class _Node(NamedTuple):
    """A parsed hop: ``ip`` None for a hidden (unknown or obfuscated) node."""

    ip: Optional[_Address]
    port: Optional[int]


_HIDDEN = _Node(None, None)


def resolve(
    peer: tuple[Optional[str], Optional[int]],
    scheme: str,
    headers: list[tuple[str, str]],
    trusted: TrustedProxies,
    *,
    header: str = "auto",
) -> Client:
    """The client behind ``peer`` by the rules of this module's docstring.

    ``headers`` are (lower-case name, value) pairs in wire order, as
    ``geows.http.Request.headers``. ``header`` picks the family to read:
    "auto" (``Forwarded`` when present), "forwarded" or "x-forwarded-for".
    """
    if header not in _HEADER_CHOICES:
        raise ValueError(f"header must be one of {_HEADER_CHOICES}, not {header!r}")
    peer_addr, peer_port = peer
    direct = Client(peer_addr, peer_port, scheme, False)
    if not trusted or peer_addr not in trusted:
        return direct

    forwarded = [v for n, v in headers if n == "forwarded"]
    hops: list[Optional[_Node]]  # None: malformed
    protos: list[Optional[str]]
    aligned: bool  # protos[i] is hop i's proto
    if header == "forwarded" or (header == "auto" and forwarded):
        if not forwarded:
            return direct
        hops, protos = [], []
        for params in _forwarded_elements(forwarded):
            if params is None:
                hops.append(None)
                protos.append(None)
            else:
                for_ = params.get("for")
                hops.append(_HIDDEN if for_ is None else _parse_node(for_))
                protos.append(params.get("proto"))
        aligned = True
    else:
        xff = _list_header(headers, "x-forwarded-for")
        xfp = _list_header(headers, "x-forwarded-proto")
        if xff is None and xfp is None:
            return direct
        hops = [_parse_node(v) for v in xff or []]
        protos = list(xfp or [])
        aligned = len(protos) == len(hops)

    addr, port = peer_addr, peer_port
    chosen: Optional[int] = None
    for i in range(len(hops) - 1, -1, -1):
        hop = hops[i]
        if hop is None:  # malformed: keep what was resolved so far
            break
        chosen = i
        if hop.ip is None:  # hidden: keep the address of the proxy that saw it
            break
        addr, port = _text(hop.ip), hop.port
        if not trusted.trusts(hop.ip):
            break

    proto: Optional[str] = None
    if aligned and chosen is not None:
        proto = protos[chosen]
    if proto is None:
        proto = next((p for p in reversed(protos) if p is not None), None)
    if proto is not None:
        scheme = _SCHEMES.get(proto.strip().lower(), scheme)
    return Client(addr, port, scheme, True)


def _list_header(headers: list[tuple[str, str]], name: str) -> Optional[list[str]]:
    """A comma-list header's non-empty elements over all its lines; None if absent."""
    lines = [v for n, v in headers if n == name]
    if not lines:
        return None
    return [e.strip(_OWS) for line in lines for e in line.split(",") if e.strip(_OWS)]


def _ip(text: str) -> Optional[_Address]:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _text(ip: _Address) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 as its IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _parse_node(text: str) -> Optional[_Node]:
    """A node (RFC 7239 6): ``IPv4[:port]``, ``"[IPv6]"[:port]``, ``unknown``,
    ``_obfuscated``; a bare IPv6 address too. None when malformed.
    """
    if text.lower() == "unknown" or _OBFUSCATED.match(text):
        return _HIDDEN
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        ip = _ip(text[1:end])
        if not isinstance(ip, ipaddress.IPv6Address):
            return None
        rest = text[end + 1 :]
        if not rest:
            return _Node(ip, None)
        if not rest.startswith(":"):
            return None
        return _with_port(ip, rest[1:])
    ip = _ip(text)
    if ip is not None:
        return _Node(ip, None)
    host, colon, port = text.rpartition(":")
    ip = _ip(host) if colon else None
    if not isinstance(ip, ipaddress.IPv4Address):
        return None
    return _with_port(ip, port)


def _with_port(ip: _Address, port: str) -> Optional[_Node]:
    """``ip`` with a node-port (1*5DIGIT) or an obfuscated port (kept as None)."""
    if _OBFUSCATED.match(port):
        return _Node(ip, None)
    if not (0 < len(port) <= 5 and port.isascii() and port.isdigit()):
        return None
    number = int(port)
    return _Node(ip, number) if number <= 65535 else None


def _forwarded_elements(lines: list[str]) -> list[Optional[dict[str, str]]]:
    """The elements of ``Forwarded`` lines (RFC 7239 4): parameters by
    lower-case name, or None for an element that does not parse.

    Each line is parsed alone, so a broken line cannot swallow the next. After
    an error, parsing resumes after the first comma of the broken element:
    a proxy's own ``, for=...`` that follows a client's broken text (an
    unterminated quote, say) is still read.
    """
    elements: list[Optional[dict[str, str]]] = []
    for line in lines:
        n = len(line)
        i = 0
        while i <= n:
            start = i
            params, i = _element(line, i)
            if params is None:
                elements.append(None)
                comma = line.find(",", start)
                if comma < 0:
                    break
                i = comma + 1
                continue
            if params:  # empty list elements are ignored (RFC 9110 5.6.1)
                elements.append(params)
            i += 1  # past the comma, or past the end
    return elements


def _element(line: str, i: int) -> tuple[Optional[dict[str, str]], int]:
    """One element from ``i``: (params, index of the ending comma or end),
    or (None, i) on a syntax error. Whitespace is tolerated around ``;``.
    """
    n = len(line)
    params: dict[str, str] = {}
    while True:
        while i < n and line[i] in _OWS:
            i += 1
        if i >= n or line[i] == ",":
            return params, i
        if line[i] == ";":
            i += 1
            continue
        j = i
        while j < n and line[j] in _TCHAR:
            j += 1
        if j == i or j >= n or line[j] != "=":
            return None, i
        name = line[i:j].lower()
        i = j + 1
        if i < n and line[i] == '"':
            value, i = _quoted(line, i)
            if value is None:
                return None, i
        else:
            j = i
            while j < n and line[j] not in ';,"' + _OWS:
                j += 1
            value = line[i:j]
            i = j
        if name in params:  # RFC 7239 4: a parameter occurs at most once
            return None, i
        params[name] = value
        while i < n and line[i] in _OWS:
            i += 1
        if i < n and line[i] not in ";,":
            return None, i


def _quoted(line: str, i: int) -> tuple[Optional[str], int]:
    """The quoted-string at ``line[i]`` unescaped (RFC 9110 5.6.4) and the
    index after it; None if it is not terminated.
    """
    out: list[str] = []
    n = len(line)
    i += 1
    while i < n:
        c = line[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(line[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return None, n
