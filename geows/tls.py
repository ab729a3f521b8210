"""TLS for ``--https`` listeners: the server context, the handshake, and the
WebSocket's transport over an SSL socket.

* :func:`server_context` is built once per listener (never per connection).
* :func:`accept` runs the handshake of one accepted connection within one
  deadline for the whole handshake, so a client that trickles its
  ClientHello gains nothing over one that sends nothing.
* :class:`TLSTransport` gives :class:`~geows.connection.WebSocket` the calls
  it makes on a raw socket (``recv_into``, ``send``, ``sendmsg``,
  ``shutdown``, a peek) with the same contract (``BlockingIOError`` when it
  would block), through the SSL object instead.

The HTTP phase needs nothing of this: gevent's ``SSLSocket`` has the
cooperative ``recv``/``sendall``/``settimeout`` of the plain socket.

gevent is imported where it is used, not with the module: the config
check (:meth:`geows.config.Config.validate`) builds the contexts to test the
files in the master process, which never imports gevent.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from typing import Any, Callable, Optional

from geows.frames import BytesLike
from geows.listeners import Listener

__all__ = ["HandshakeError", "TLSTransport", "accept", "server_context"]

#: Most bytes handed to one SSL write. SSL writes are all or nothing (there
#: is no partial-write mode in Python's ssl): a piece written whole lets the
#: WebSocket see progress on a big message, so its keepalive does not take
#: a slow but moving send for a stalled one.
WRITE_PIECE = 64 * 1024

_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class HandshakeError(ConnectionError):
    """A TLS handshake that failed or did not finish in time."""


def server_context(
    listener: Listener, context_class: Optional[type[ssl.SSLContext]] = None
) -> ssl.SSLContext:
    """The SSL context of an ``--https`` listener (raises OSError or
    ValueError when its files or ciphers cannot be used).

    The context ``ssl.create_default_context(Purpose.CLIENT_AUTH)`` makes
    (``PROTOCOL_TLS_SERVER``: the stdlib's options and ciphers, no SSLv3,
    no weak ciphers), but from ``context_class``: gevent's ``SSLContext``
    by default, whose sockets wait cooperatively whether or not ``ssl`` is
    monkey-patched; that function always builds the stdlib's. Its only
    other addition, writing session keys to ``$SSLKEYLOGFILE``, is a
    debugging aid a server should not pick up from its environment.
    """
    if listener.certfile is None or listener.keyfile is None:
        raise ValueError(f"{listener.spec}: an https listener needs CERT and KEY")
    if context_class is None:
        from gevent import ssl as gevent_ssl

        context_class = gevent_ssl.SSLContext
    context = context_class(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Compression invites CRIME; renegotiation, a client-driven CPU drain
    # (and reads that would need to write): both off, whatever the defaults
    # of the OpenSSL build.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if listener.ciphers:
        context.set_ciphers(listener.ciphers)  # TLS 1.2 suites; 1.3 keeps its own
    context.load_cert_chain(listener.certfile, listener.keyfile)
    if listener.cafile:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=listener.cafile)
    # We speak HTTP/1.1 only; saying so spares ALPN clients a guess.
    context.set_alpn_protocols(["http/1.1"])
    return context


def accept(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> Any:
    """The TLS handshake on an accepted connection; the SSL socket.

    Raises :class:`HandshakeError` (the socket closed) when the handshake
    fails or takes more than ``timeout`` seconds in all.
    """
    from gevent import Timeout

    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    timer = Timeout.start_new(
        timeout, HandshakeError(f"no TLS handshake within {timeout:g}s")
    )
    try:
        tls.do_handshake()
    except HandshakeError:
        tls.close()
        raise
    except OSError as exc:  # ssl.SSLError is one
        tls.close()
        raise HandshakeError(f"TLS handshake failed: {exc}") from exc
    except BaseException:
        tls.close()
        raise
    finally:
        timer.cancel()
    return tls


class TLSTransport:
    """A WebSocket's socket calls over TLS, with the raw socket's contract.

    The SSL socket is used non-blocking: the WebSocket's libev watchers do
    the waiting. Two things differ from a plain socket and are handled here:

    * A write that would block may have been partly taken into the SSL
      object already; OpenSSL then requires the retry to pass the same
      bytes. The WebSocket retries with the same head chunk (it only drops
      what ``send`` reported written), and ``sendmsg`` sends that head
      chunk alone (SSL has no scatter write), so the retry is always the
      same bytes.
    * Decrypted bytes can wait inside the SSL object while the descriptor
      is not readable: :meth:`read_watcher` also fires while they do.

    ``shutdown`` and the peek act on the TCP socket underneath.
    """

    __slots__ = ("_pending", "_read", "_tcp", "_write", "fd")

    def __init__(self, tls: Any) -> None:
        tls.settimeout(0.0)  # SSLWant*Error instead of waiting in gevent
        self._read: Callable[[int, memoryview], int] = tls.read
        self._write: Callable[[BytesLike], int] = tls.write
        self._pending: Callable[[], int] = tls.pending
        # gevent's SSLSocket wraps the stdlib socket in ``_sock`` (as its
        # plain socket does): shutting down the SSLSocket itself would also
        # drop its SSL object, and the drain after our close frame reads on.
        self._tcp: socket.socket = getattr(tls, "_sock", tls)
        self.fd: int = tls.fileno()

    def recv_into(self, buffer: memoryview) -> int:
        """Decrypted bytes into ``buffer``; 0 at the end of the stream."""
        try:
            return self._read(len(buffer), buffer)
        except _WOULD_BLOCK:
            raise BlockingIOError from None

    def send(self, data: BytesLike) -> int:
        """Write what the socket takes now, in whole pieces; how much.

        Raises BlockingIOError when not even the first piece went out.
        """
        if len(data) <= WRITE_PIECE:
            try:
                return self._write(data)
            except _WOULD_BLOCK:
                raise BlockingIOError from None
        view = memoryview(data)
        total = len(view)
        sent = 0
        while sent < total:
            try:
                sent += self._write(view[sent : sent + WRITE_PIECE])
            except _WOULD_BLOCK:
                if sent:
                    return sent
                raise BlockingIOError from None
        return sent

    def sendmsg(self, buffers: Sequence[BytesLike]) -> int:
        """Like ``socket.sendmsg``, but only the first buffer goes out."""
        return self.send(buffers[0])

    def recv(self, size: int, flags: int) -> bytes:
        """A peek (``MSG_PEEK``): is anything waiting, decrypted or not?"""
        if not flags & socket.MSG_PEEK:
            raise ValueError("TLSTransport.recv only peeks")
        if self._pending():
            return b"\x00"
        return self._tcp.recv(size, flags)

    def shutdown(self, how: int) -> None:
        """Shut down the TCP connection (no TLS close_notify)."""
        self._tcp.shutdown(how)

    def read_watcher(self, loop: Any) -> ReadWatcher:
        """A read watcher for the WebSocket (see :class:`ReadWatcher`)."""
        return ReadWatcher(loop, self.fd, self._pending)


class ReadWatcher:
    """A libev read watcher that also fires while the SSL object holds
    decrypted bytes (the descriptor says nothing about those).

    Same ``start(callback)`` / ``stop()`` / ``active`` as ``loop.io``. After
    each callback, while still started, bytes still pending schedule
    another call in this loop iteration; so does a start that finds some.
    """

    __slots__ = ("_again", "_callback", "_io", "_loop", "_pending")

    def __init__(self, loop: Any, fd: int, pending: Callable[[], int]) -> None:
        self._loop = loop
        self._io = loop.io(fd, 1)
        self._pending = pending
        self._callback: Optional[Callable[[], None]] = None
        self._again: Any = None

    @property
    def active(self) -> bool:
        return bool(self._io.active)

    def start(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._io.start(self._fire)
        if self._again is None and self._pending():
            self._again = self._loop.run_callback(self._fire)

    def stop(self) -> None:
        self._io.stop()
        if self._again is not None:
            self._again.stop()
            self._again = None

    def _fire(self) -> None:
        again = self._again
        if again is not None:
            again.stop()  # this call does its work, whichever woke it
            self._again = None
        callback = self._callback
        assert callback is not None
        callback()
        if self._io.active and self._again is None and self._pending():
            self._again = self._loop.run_callback(self._fire)
