"""Listeners: what each listening address speaks, and how it is bound.

A server has one or more listeners: ``--http`` (HTTP/1.1 and ws://),
``--https`` (the same over TLS, wss://) and ``--uwsgi-socket`` (the uwsgi
binary protocol nginx's ``uwsgi_pass`` speaks), each on a TCP address or a
Unix socket path, each optionally expecting a PROXY protocol header first.
:class:`Listener` is that description; :func:`bind` makes the socket.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass, replace
from typing import Literal, Optional, Union

__all__ = ["BACKLOG", "Listener", "bind", "parse_address"]

Protocol = Literal["http", "https", "uwsgi"]
Address = Union[tuple[str, int], str]  # (host, port), or a Unix socket path

#: Pending connections the kernel queues per listener (uWSGI's --listen is
#: 100; a burst of reconnecting websocket clients needs far more).
BACKLOG = 2048
#: Seconds a new connection may stay silent before it is accepted anyway
DEFER_ACCEPT = 1


class ListenerError(ValueError):
    """A listener description we cannot use (the config layer names the option)."""


@dataclass(frozen=True)
class Listener:
    """One listening address and what it speaks."""

    protocol: Protocol
    address: Address
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    ciphers: Optional[str] = None
    #: CA bundle that client certificates must chain to (then required).
    cafile: Optional[str] = None
    #: Expect a PROXY protocol v1/v2 header before anything else.
    proxy_protocol: bool = False

    @property
    def scheme(self) -> str:
        """``wsgi.url_scheme`` of requests arriving here."""
        return "https" if self.protocol == "https" else "http"

    @property
    def is_unix(self) -> bool:
        return isinstance(self.address, str)

    @property
    def spec(self) -> str:
        """The address as given on the command line (``HOST:PORT`` or a path)."""
        if isinstance(self.address, str):
            return self.address
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def url(self, bound: Optional[Address] = None) -> str:
        """How to reach it, for the log: ``http://127.0.0.1:8000/``, ``uwsgi://…``."""
        address = self.address if bound is None else bound
        if isinstance(address, str):
            return f"{self.protocol}://unix:{address}"
        host, port = address[0], address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"{self.protocol}://{shown}:{port}/"

    def with_address(self, address: Address) -> Listener:
        """The same listener on a resolved address (after binding port 0)."""
        return replace(self, address=address)

    # -- from the command line -------------------------------------------------

    @classmethod
    def http(cls, value: str) -> Listener:
        """``--http HOST:PORT`` (or a Unix socket path)."""
        return cls("http", _address(value))

    @classmethod
    def uwsgi(cls, value: str) -> Listener:
        """``--uwsgi-socket HOST:PORT`` or a Unix socket path."""
        return cls("uwsgi", _address(value))

    @classmethod
    def https(cls, value: str, cafile: Optional[str] = None) -> Listener:
        """``--https HOST:PORT,CERT,KEY[,CIPHERS[,CA]]`` (uWSGI's syntax)."""
        parts = value.split(",")
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise ListenerError(f"not HOST:PORT,CERT,KEY: {value!r}")
        ciphers = parts[3] if len(parts) > 3 and parts[3] else None
        # uWSGI marks an optional client certificate with "!"; geows always
        # requires one when a CA is given, so the mark is accepted and dropped.
        ca = parts[4].lstrip("!") if len(parts) > 4 and parts[4] else cafile
        if len(parts) > 5:
            raise ListenerError(f"too many fields: {value!r}")
        for path in (parts[1], parts[2], ca):
            if path is not None and not os.path.isfile(path):
                raise ListenerError(f"no such file: {path}")
        return cls("https", _address(parts[0]), parts[1], parts[2], ciphers, ca)


def _address(value: str) -> Address:
    value = value.strip()
    if value.startswith("unix:"):
        value = value[5:]
    if "/" in value or value.endswith(".sock"):
        return value
    return parse_address(value)


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[v6]:PORT`` to (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ListenerError(f"not HOST:PORT: {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def bind(
    listener: Listener, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A socket bound to the listener's address; listening and non-blocking
    if ``listen`` (several workers may accept from it, so accept must never
    block). A stale Unix socket file is replaced; a live one is an error.
    """
    if isinstance(listener.address, str):
        return _bind_unix(listener.address, listen)
    host, port = listener.address
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            _defer_accept(sock)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, listen: bool) -> socket.socket:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # nobody listens: left by a dead server
            else:
                raise OSError(f"{path}: another server is listening there")
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if listen:
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _defer_accept(sock: socket.socket) -> None:
    """Accept a connection only once its first bytes are in (Linux).

    A worker that stops (SIGTERM, or replaced by a reload) closes the
    connections waiting for a request at once; without this, that includes
    a connection it accepted a moment before the client's request arrived,
    and that client would see its new connection dropped. HTTP, TLS and
    uwsgi clients speak first, so nothing waits for the server here.
    """
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, DEFER_ACCEPT)
        except OSError:
            pass
