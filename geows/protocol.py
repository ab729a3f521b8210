"""ServerProtocol: the sans-I/O WebSocket state machine of one connection.

Bytes in (:meth:`ServerProtocol.receive_data`), events and bytes out. It
never touches a socket, a clock or a greenlet, so every rule is tested by
feeding bytes.

State rules -- this is the only place that changes ``state``::

    OPEN ──send_close()────────────────▶ CLOSING ──close frame received──▶ CLOSED
     │                                     ▲   └──receive_eof()────────────▶ CLOSED
     ├──peer breaks the protocol ─────────┘  (we send close 1002/1007/1009, failed=True,
     │                                        further input is ignored)
     ├──close frame received ──(reply queued with the same code)───────▶ CLOSED
     └──receive_eof() ──────────────────────────────────────────────────▶ CLOSED (1006)

* Data can be sent only in OPEN; control replies (pong, close) are queued in
  :meth:`data_to_send`, which the I/O layer must flush after each feed.
* After CLOSED the server closes TCP first (RFC 6455 7.1.1). After a
  failure it closes TCP once the close frame is flushed.
* The peer's bad input is never raised to the caller: it fails the
  connection, records ``failure`` and queues the close frame. With
  ``defer_failure=True`` it only records ``failure`` (input is discarded from
  there on) and stays OPEN until the I/O layer calls
  :meth:`~ServerProtocol.fail_connection`: the application may still answer
  the messages that came before the bad frame, in order, before the close.
* Text is validated as its bytes arrive, whatever the fragmenting and the
  TCP segmentation: invalid UTF-8 fails at the first byte that proves it
  (RFC 6455 8.1), not when the message or frame is complete.
"""

from __future__ import annotations

import codecs
from enum import IntEnum
from typing import Callable, Optional, Union

from geows.exceptions import (
    ConnectionClosed,
    PayloadTooBig,
    ProtocolError,
    closed_exception,
)
from geows.frames import (
    MAX_CONTROL_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    BytesLike,
    apply_mask,
    frame_header,
    is_valid_close_code,
    parse_close,
    parse_header,
    serialize_close,
)
from geows.limits import Limits

__all__ = ["Close", "Event", "Message", "Ping", "Pong", "ServerProtocol", "State"]


class State(IntEnum):
    """Connection states of RFC 6455 4 and 7, from the handshake on."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class Message:
    """A complete data message: ``data`` is its payload, ``text`` its decoded
    text for a text message and None for a binary one.
    """

    __slots__ = ("data", "text")

    def __init__(self, data: bytes, text: Optional[str]) -> None:
        self.data = data
        self.text = text

    def __repr__(self) -> str:
        kind = "text" if self.text is not None else "binary"
        return f"Message({kind}, {len(self.data)} bytes)"


class Ping:
    """A ping from the peer; the pong is already queued."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Pong:
    """A pong from the peer, solicited or not."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Close:
    """The peer's close frame; ``code`` is 1005 when it had none."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


Event = Union[Message, Ping, Pong, Close]

_utf8_decoder = codecs.getincrementaldecoder("utf-8")

# The C speedup of the frame loop's common case: whole, masked, unfragmented
# text and binary frames (geows/_speedups.c); None without a compiler.
_parse_data_frames: Optional[
    Callable[[BytesLike, int, int, type[Message]], tuple[list[Event], int]]
]
try:
    from geows._speedups import (  # type: ignore[attr-defined,import-not-found,no-redef,unused-ignore]
        parse_data_frames as _parse_data_frames,
    )
except ImportError:  # pragma: no cover - depends on the build
    _parse_data_frames = None


def _server_frame_py(opcode: int, data: Union[str, BytesLike]) -> bytes:
    """One final unmasked frame; str is sent as UTF-8 (text frames only)."""
    if opcode == OP_TEXT and isinstance(data, str):
        data = data.encode("utf-8")
    return frame_header(opcode, len(data)) + data  # type: ignore[arg-type,operator]


_server_frame: Callable[[int, Union[str, BytesLike]], bytes] = _server_frame_py
try:  # the same in one allocation (geows/_speedups.c)
    from geows._speedups import (  # type: ignore[attr-defined,import-not-found,no-redef,unused-ignore]
        server_frame as _server_frame,
    )
except ImportError:  # pragma: no cover - depends on the build
    pass


def _pending_is_invalid(decoder: codecs.IncrementalDecoder) -> bool:
    """Whether the bytes an incremental decoder holds can never become valid.

    CPython rejects every impossible prefix at once except a surrogate's
    (ED A0..BF); RFC 6455 8.1 asks us to fail as soon as text is invalid.
    """
    pending = decoder.getstate()[0]
    return len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0


_INTERLEAVED = "new data frame inside a fragmented message"
DEFAULT_LIMITS = Limits()

# Prebuilt frames that never change.
_EMPTY_CLOSE_FRAME = frame_header(OP_CLOSE, 0)


class ServerProtocol:
    """The server side of one WebSocket connection after the handshake."""

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        *,
        defer_failure: bool = False,
    ) -> None:
        self.limits = limits
        #: Whether a protocol error waits for :meth:`fail_connection`.
        self.defer_failure = defer_failure
        self._max_size = limits.max_message_size
        self._fast_max = -1 if self._max_size is None else self._max_size
        self.state = State.OPEN
        self._buf = bytearray()
        #: Frames the protocol queued itself (pongs, close replies); the I/O
        #: layer checks it after each feed and flushes :meth:`data_to_send`.
        self.output: list[bytes] = []
        # Message being assembled -- fragmented, or one frame whose payload
        # arrives over several feeds: opcode (0 = none), unmasked payload so
        # far, and for text the decoder that validates it as it comes.
        self._frag_opcode = 0
        self._frag_data = bytearray()
        self._decoder: Optional[codecs.IncrementalDecoder] = None
        # Data frame whose payload is still arriving: bytes to come, FIN bit,
        # and its masking key rotated to the next byte's position.
        self._frame_left = 0
        self._frame_fin = 0
        self._frame_mask = b""
        #: ``(code, reason)`` of the peer's close frame, once received.
        self.close_received: Optional[tuple[int, str]] = None
        #: ``(code, reason)`` of our close frame, once sent.
        self.close_sent: Optional[tuple[int, str]] = None
        #: Why we failed the connection, if we did.
        self.failure: Optional[ProtocolError] = None
        #: True once the peer closed the TCP connection.
        self.eof_received = False

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: BytesLike) -> list[Event]:
        """Feed bytes read from the socket; return the events they complete."""
        if self.failure is not None or self.state is State.CLOSED:
            return []  # RFC 6455 7.1.7: after failing, input is discarded.
        buf: BytesLike
        if self._buf:
            buf = self._buf
            buf += data
        else:
            # Nothing held over: parse the caller's buffer in place and copy
            # only an incomplete tail (the common case copies nothing).
            buf = data
        end = len(buf)
        if _parse_data_frames is not None and not (
            self._frame_left or self._frag_opcode
        ):
            # Whole single-frame messages in C; the loop below takes over at
            # the first frame that is anything else, errors included.
            events, pos = _parse_data_frames(buf, 0, self._fast_max, Message)
            if pos == end:
                if buf is self._buf:
                    buf.clear()
                return events
        else:
            events = []
            pos = 0
        try:
            while True:
                if self._frame_left:
                    # The rest of a data frame begun in an earlier feed.
                    pos = self._stream_payload(buf, pos, end)
                    if self._frame_left:
                        break
                    if self._frame_fin:
                        events.append(self._end_message())
                    continue
                header = parse_header(buf, pos)
                if header is None:
                    break
                b0, b1, length, hlen = header
                opcode = b0 & 0x0F
                self._check_header(b0, b1, opcode, length)
                start = pos + hlen
                stop = start + length
                if stop > end:
                    if opcode >= 8 or start > end:
                        break  # a control frame (<= 125 bytes) is taken whole
                    # A data frame only partly here: take its payload as it
                    # arrives, so that invalid text fails at once (RFC 6455
                    # 8.1) rather than once the whole frame is in.
                    self._begin_message(opcode)
                    self._frame_fin = b0 & 0x80
                    self._frame_mask = bytes(buf[start - 4 : start])
                    self._frame_left = length
                    pos = start
                    continue
                payload = apply_mask(buf[start:stop], bytes(buf[start - 4 : start]))
                pos = stop
                if opcode == OP_TEXT and b0 & 0x80:
                    if self._frag_opcode:
                        raise ProtocolError(_INTERLEAVED)
                    try:
                        events.append(Message(payload, payload.decode("utf-8")))
                    except UnicodeDecodeError:
                        raise ProtocolError("invalid UTF-8 in text", 1007) from None
                elif opcode == OP_BINARY and b0 & 0x80:
                    if self._frag_opcode:
                        raise ProtocolError(_INTERLEAVED)
                    events.append(Message(payload, None))
                elif opcode < 8:
                    event = self._fragment(opcode, b0 & 0x80, payload)
                    if event is not None:
                        events.append(event)
                else:
                    control = self._control(opcode, payload)
                    events.append(control)
                    if self.close_received is not None:
                        break
        except ProtocolError as exc:
            self._fail(exc)
            return events
        if buf is self._buf:
            if pos:
                del buf[:pos]
        elif pos < end and self.close_received is None:
            self._buf = bytearray(buf[pos:])
        return events

    def _check_header(self, b0: int, b1: int, opcode: int, length: int) -> None:
        """Frame-level rules, checked before the payload is read (RFC 6455 5.2)."""
        if not b1 & 0x80:
            raise ProtocolError("unmasked client frame")  # 5.1
        if b0 & 0x70:
            raise ProtocolError("reserved bits set without an extension")
        if opcode >= 8:
            if opcode > OP_PONG:
                raise ProtocolError(f"reserved opcode {opcode}")
            if not b0 & 0x80:
                raise ProtocolError("fragmented control frame")  # 5.4
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError("control frame payload over 125 bytes")  # 5.5
            return
        if opcode > OP_BINARY:
            raise ProtocolError(f"reserved opcode {opcode}")
        if length >> 63:
            raise ProtocolError("frame length with the most significant bit set")
        max_size = self._max_size
        if max_size is not None and len(self._frag_data) + length > max_size:
            raise PayloadTooBig(
                f"message over {max_size} bytes"  # 1009 from the header alone
            )

    def _fragment(self, opcode: int, fin: int, payload: bytes) -> Optional[Message]:
        """Assemble fragmented messages (RFC 6455 5.4), validating text early."""
        self._begin_message(opcode)
        self._add_payload(payload)
        return self._end_message() if fin else None

    def _begin_message(self, opcode: int) -> None:
        """A data frame starts: a new message, or the next fragment of one."""
        if opcode == OP_CONT:
            if not self._frag_opcode:
                raise ProtocolError("continuation frame with nothing to continue")
        else:
            if self._frag_opcode:
                raise ProtocolError(_INTERLEAVED)
            self._frag_opcode = opcode
            if opcode == OP_TEXT:
                self._decoder = _utf8_decoder()

    def _stream_payload(self, buf: BytesLike, pos: int, end: int) -> int:
        """Take what ``buf[pos:end]`` holds of the current frame's payload.

        Unmasks it with the key rotated to where this piece starts (RFC 6455
        5.3: byte i of the payload is XORed with key byte i mod 4) and
        returns the position after it.
        """
        n = min(self._frame_left, end - pos)
        if n:
            mask = self._frame_mask
            self._add_payload(apply_mask(buf[pos : pos + n], mask))
            self._frame_left -= n
            shift = n & 3
            if shift:
                self._frame_mask = mask[shift:] + mask[:shift]
        return pos + n

    def _add_payload(self, payload: bytes) -> None:
        """Append payload to the message; fail at the first byte that makes
        its text invalid (RFC 6455 8.1, 5.6), whatever the fragmenting.

        Text is only validated here, then decoded once, whole, at the end:
        keeping one ``str`` per piece would cost far more memory than the
        bytes when a peer sends many tiny pieces.
        """
        self._frag_data += payload
        decoder = self._decoder
        if decoder is not None:
            try:
                decoder.decode(payload)
            except UnicodeDecodeError:
                raise ProtocolError("invalid UTF-8 in text", 1007) from None
            if _pending_is_invalid(decoder):
                raise ProtocolError("invalid UTF-8 in text", 1007)

    def _end_message(self) -> Message:
        """The final frame of the message is in: the message, and reset."""
        data = bytes(self._frag_data)
        text = None
        decoder = self._decoder
        if decoder is not None:
            try:
                decoder.decode(b"", True)  # a character left incomplete
            except UnicodeDecodeError:
                raise ProtocolError("invalid UTF-8 in text", 1007) from None
            text = data.decode("utf-8")
        self._frag_opcode = 0
        self._frag_data = bytearray()
        self._decoder = None
        return Message(data, text)

    def _control(self, opcode: int, payload: bytes) -> Union[Ping, Pong, Close]:
        """Handle a control frame; queue the reply it calls for."""
        if opcode == OP_PING:
            if self.state is State.OPEN:
                self.output.append(frame_header(OP_PONG, len(payload)) + payload)
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        try:
            code, reason = parse_close(payload)
        except UnicodeDecodeError:
            raise ProtocolError("invalid UTF-8 in close reason", 1007) from None
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        self.close_received = (code, reason)
        if self.state is State.OPEN:
            # 5.5.1: answer with the same code; an empty close with an empty one.
            self.close_sent = (code, "")
            self.output.append(self._close_frame(code, ""))
        self.state = State.CLOSED
        self._buf = bytearray()
        return Close(code, reason)

    def receive_eof(self) -> None:
        """The peer closed the TCP connection."""
        self.eof_received = True
        self.state = State.CLOSED
        self._buf = bytearray()

    def _fail(self, exc: ProtocolError) -> None:
        """_Fail the WebSocket Connection_ (RFC 6455 7.1.7) with exc's code.

        The input is discarded from here on. The close frame is queued now,
        or, with ``defer_failure``, by :meth:`fail_connection`.
        """
        self.failure = exc
        self._buf = bytearray()
        if not self.defer_failure:
            self.fail_connection()

    def fail_connection(self) -> None:
        """Queue the close frame of the recorded ``failure``; go CLOSING.

        For ``defer_failure``: the I/O layer calls it once the application
        has had the messages returned before the bad frame and has answered
        them, so that the peer gets those answers before the close. RFC 6455
        7.1.7 only forbids processing the data that follows the bad frame;
        Autobahn cases 3.2-3.4, 4.1.3-4.2.5 and 5.15 expect the answers.
        Does nothing without a failure or once the close frame is queued.
        """
        exc = self.failure
        if exc is not None and self.state is State.OPEN:
            self.close_sent = (exc.code, "")
            # Never the internal text: just the code.
            self.output.append(self._close_frame(exc.code, ""))
            self.state = State.CLOSING

    # -- output --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes the protocol queued on its own (pongs, close replies)."""
        if not self.output:
            return b""
        out = b"".join(self.output)
        self.output.clear()
        return out

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            raise self.closed_exception()

    def send_text(self, data: Union[str, BytesLike]) -> bytes:
        """Frame a text message; ``data`` is str or UTF-8 bytes."""
        if self.state is not State.OPEN:
            raise self.closed_exception()
        return _server_frame(OP_TEXT, data)

    def send_binary(self, data: BytesLike) -> bytes:
        """Frame a binary message."""
        if self.state is not State.OPEN:
            raise self.closed_exception()
        return _server_frame(OP_BINARY, data)

    def send_ping(self, data: bytes = b"") -> bytes:
        """Frame a ping (at most 125 bytes)."""
        self._check_open()
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError("ping payload over 125 bytes")
        return frame_header(OP_PING, len(data)) + data

    def send_pong(self, data: bytes = b"") -> bytes:
        """Frame a pong, solicited or not (RFC 6455 5.5.3)."""
        self._check_open()
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError("pong payload over 125 bytes")
        return frame_header(OP_PONG, len(data)) + data

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake; returns b"" if it was already started.

        With a deferred failure recorded, the failure's code replaces
        ``code``: the peer is told why (RFC 6455 7.1.7).
        """
        if code != 1005 and not is_valid_close_code(code):  # 1005: empty close
            # 7.4.1/7.4.2: 1004-1006, 1015 and unassigned codes never go out.
            raise ValueError(f"close code {code} may not be sent")
        if self.state is not State.OPEN:
            return b""
        if self.failure is not None:
            code, reason = self.failure.code, ""
        self.close_sent = (code, reason)
        self.state = State.CLOSING
        return self._close_frame(code, reason)

    @staticmethod
    def _close_frame(code: Optional[int], reason: str) -> bytes:
        payload = serialize_close(code, reason)
        if not payload:
            return _EMPTY_CLOSE_FRAME
        return frame_header(OP_CLOSE, len(payload)) + payload

    # -- outcome -------------------------------------------------------------

    @property
    def close_code(self) -> int:
        """The code that describes how the connection ended (or is ending).

        RFC 6455 7.1.5: the code of the close frame received, 1006 when none
        was; ours when we failed the connection. While our own close waits
        for the peer's answer, the code we sent.
        """
        if self.failure is not None:
            return self.failure.code
        if self.close_received is not None:
            return self.close_received[0]
        if self.state is State.CLOSED:
            return 1006
        if self.close_sent is not None:
            return self.close_sent[0]
        return 1006

    @property
    def close_reason(self) -> str:
        """The reason matching :attr:`close_code`."""
        if self.failure is not None:
            return self.failure.reason
        if self.close_received is not None:
            return self.close_received[1]
        if self.close_sent is not None and self.state is not State.CLOSED:
            return self.close_sent[1]
        return ""

    def closed_exception(self) -> ConnectionClosed:
        """The exception an application sees for this ending."""
        return closed_exception(self.close_code, self.close_reason)
