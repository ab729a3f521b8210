"""ServerProtocol rules behind Autobahn cases that a frame-at-a-time reading
of RFC 6455 gets wrong, pinned by feeding bytes.

* 6.4.3/6.4.4: invalid UTF-8 inside one text frame that arrives in pieces
  fails at the piece that proves it (RFC 6455 8.1), not at the frame's end.
* 3.2-3.4, 4.1.3-4.2.5, 5.15: with ``defer_failure`` a protocol error lets
  the messages before the bad frame be answered before the close frame
  (RFC 6455 7.1.7 forbids processing only what follows the bad frame).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geows.exceptions import ConnectionClosedError, PayloadTooBig, ProtocolError
from geows.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    encode_frame,
    frame_header,
)
from geows.limits import Limits
from geows.protocol import Close, Message, ServerProtocol, State

MASK = b"\x37\xfa\x21\x3d"
#: Autobahn 6.4.3: valid text, then F4 90 80 80 (above U+10FFFF).
PART1 = bytes.fromhex("cebae1bdb9cf83cebcceb5")
PART2 = bytes.fromhex("f4908080")
PART3 = bytes.fromhex("656469746564")


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    return encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=MASK)


def server_close(code: int) -> bytes:
    return frame_header(OP_CLOSE, 2) + struct.pack("!H", code)


def messages(events) -> list[tuple[bytes, object]]:
    return [(e.data, e.text) for e in events if isinstance(e, Message)]


def feed_in_pieces(proto: ServerProtocol, data: bytes, cuts: list[int]) -> list:
    events = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        events += proto.receive_data(data[last:cut])
        last = cut
    return events


# -- RFC 6455 8.1: text validated as its bytes arrive --------------------------


class TestTextValidatedAsItArrives:
    def test_a_valid_start_of_a_frame_is_taken_and_waits_for_the_rest(self):
        proto = ServerProtocol()
        wire = frame(OP_TEXT, PART1 + PART2 + PART3)
        header = 6  # 2 + the masking key
        assert proto.receive_data(wire[: header + len(PART1)]) == []
        assert proto.failure is None
        assert proto.state is State.OPEN

    def test_invalid_bytes_in_a_partial_frame_fail_at_once_with_1007(self):
        """Autobahn 6.4.3: the second chop fails, the third is never needed."""
        proto = ServerProtocol()
        wire = frame(OP_TEXT, PART1 + PART2 + PART3)
        cut = 6 + len(PART1)
        assert proto.receive_data(wire[:cut]) == []
        assert proto.receive_data(wire[cut : cut + len(PART2)]) == []
        assert proto.failure is not None
        assert proto.failure.code == 1007
        assert proto.state is State.CLOSING
        assert proto.data_to_send() == server_close(1007)

    def test_a_lone_invalid_continuation_byte_fails_at_once(self):
        """Autobahn 6.4.4: ... F4 | 90: the 90 alone proves it invalid."""
        payload = PART1 + b"\xf4\x90\x80\x80" + PART3
        proto = ServerProtocol()
        wire = frame(OP_TEXT, payload)
        cut = 6 + len(PART1) + 1
        assert proto.receive_data(wire[:cut]) == []
        assert proto.failure is None
        assert proto.receive_data(wire[cut : cut + 1]) == []
        assert proto.failure is not None
        assert proto.failure.code == 1007

    def test_a_surrogate_fails_at_its_second_byte_inside_a_frame(self):
        proto = ServerProtocol()
        wire = frame(OP_TEXT, b"ab\xed\xa0\x80cd")
        assert proto.receive_data(wire[: 6 + 3]) == []
        assert proto.failure is None
        proto.receive_data(wire[6 + 3 : 6 + 4])
        assert proto.failure is not None
        assert proto.failure.code == 1007

    def test_a_character_left_open_at_the_end_of_the_message_fails(self):
        proto = ServerProtocol()
        wire = frame(OP_TEXT, b"ab\xe2\x82")
        proto.receive_data(wire[:7])
        assert proto.failure is None
        proto.receive_data(wire[7:])
        assert proto.failure is not None
        assert proto.failure.code == 1007

    def test_a_continuation_frame_in_pieces_is_validated_as_it_comes(self):
        proto = ServerProtocol()
        assert proto.receive_data(frame(OP_TEXT, PART1, fin=False)) == []
        wire = frame(OP_CONT, PART2 + PART3)
        proto.receive_data(wire[:7])
        assert proto.failure is None  # F4 alone may still be valid
        proto.receive_data(wire[7:8])
        assert proto.failure is not None
        assert proto.failure.code == 1007

    def test_binary_frames_in_pieces_are_not_validated(self):
        proto = ServerProtocol()
        wire = frame(OP_BINARY, PART2 * 100)
        events = feed_in_pieces(proto, wire, [3, 7, 8, 100])
        assert messages(events) == [(PART2 * 100, None)]

    @settings(max_examples=300, deadline=None)
    @given(
        payload=st.binary(max_size=300) | st.text(max_size=100).map(str.encode),
        opcode=st.sampled_from([OP_TEXT, OP_BINARY]),
        fragment=st.integers(min_value=0, max_value=300),
        cuts=st.lists(st.integers(min_value=0, max_value=320), max_size=8),
    )
    def test_any_cutting_of_the_input_gives_the_same_outcome(
        self, payload, opcode, fragment, cuts
    ):
        """Streaming a frame (the mask rotates with each piece) changes
        nothing but the moment of a failure.
        """
        first, rest = payload[:fragment], payload[fragment:]
        wire = frame(opcode, first, fin=not rest)
        if rest:
            wire += frame(OP_CONT, rest)
        wire += frame(OP_PING, b"p")
        whole = ServerProtocol()
        expected = whole.receive_data(wire)
        cut = ServerProtocol()
        events = feed_in_pieces(cut, wire, [c for c in cuts if c <= len(wire)])
        assert messages(events) == messages(expected)
        assert (cut.failure is None) == (whole.failure is None)
        if whole.failure is not None:
            assert cut.failure.code == whole.failure.code == 1007
        assert cut.data_to_send() == whole.data_to_send()

    def test_the_size_limit_still_fails_from_the_header_alone(self):
        proto = ServerProtocol(Limits(max_message_size=100))
        proto.receive_data(frame(OP_TEXT, b"a" * 60, fin=False))
        assert proto.failure is None
        wire = frame(OP_CONT, b"b" * 41)
        proto.receive_data(wire[:8])  # header and mask only
        assert isinstance(proto.failure, PayloadTooBig)
        assert proto.data_to_send() == server_close(1009)

    def test_a_message_at_the_size_limit_in_pieces_is_whole(self):
        proto = ServerProtocol(Limits(max_message_size=100))
        wire = frame(OP_TEXT, b"a" * 60, fin=False) + frame(OP_CONT, b"b" * 40)
        events = feed_in_pieces(proto, wire, list(range(1, len(wire), 9)))
        assert messages(events) == [(b"a" * 60 + b"b" * 40, "a" * 60 + "b" * 40)]
        assert proto.failure is None

    def test_a_close_frame_after_a_streamed_frame_is_handled(self):
        proto = ServerProtocol()
        wire = frame(OP_TEXT, "é".encode() * 50) + frame(
            OP_CLOSE, struct.pack("!H", 1000)
        )
        events = feed_in_pieces(proto, wire, [10, 50])
        assert messages(events) == [("é".encode() * 50, "é" * 50)]
        assert isinstance(events[-1], Close)
        assert proto.state is State.CLOSED
        assert proto.data_to_send() == server_close(1000)


# -- RFC 6455 7.1.7: a deferred failure ------------------------------------------

BAD_FRAMES = {
    "3.2 rsv": frame(OP_TEXT, b"Hello, world!", rsv=0x20),
    "4.1.3 opcode 5": frame(5),
    "4.2.4 opcode 14": frame(14, b"payload"),
    "5.15 nothing to continue": frame(OP_CONT, b"fragment3", fin=False),
}


class TestDeferredFailure:
    def test_by_default_the_close_is_queued_at_once(self):
        proto = ServerProtocol()
        events = proto.receive_data(frame(OP_TEXT, b"Hello") + frame(5))
        assert messages(events) == [(b"Hello", "Hello")]
        assert proto.state is State.CLOSING
        assert proto.data_to_send() == server_close(1002)
        with pytest.raises(ConnectionClosedError):
            proto.send_text("Hello")

    @pytest.mark.parametrize("bad", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
    def test_messages_before_the_bad_frame_can_be_answered_first(self, bad):
        proto = ServerProtocol(defer_failure=True)
        before = frame(OP_TEXT, b"fragment1", fin=False) + frame(OP_CONT, b"fragment2")
        events = proto.receive_data(before + bad + frame(OP_PING, b"late"))
        assert messages(events) == [(b"fragment1fragment2", "fragment1fragment2")]
        assert isinstance(proto.failure, ProtocolError)
        assert proto.failure.code == 1002
        assert proto.close_code == 1002
        # Nothing after the bad frame was processed: no pong.
        assert proto.data_to_send() == b""
        assert proto.state is State.OPEN
        assert proto.send_text("fragment1fragment2") == (
            frame_header(OP_TEXT, 18) + b"fragment1fragment2"
        )
        proto.fail_connection()
        assert proto.state is State.CLOSING
        assert proto.close_sent == (1002, "")
        assert proto.data_to_send() == server_close(1002)
        with pytest.raises(ConnectionClosedError):
            proto.send_text("more")

    def test_input_after_the_bad_frame_is_discarded_while_deferred(self):
        proto = ServerProtocol(defer_failure=True)
        proto.receive_data(frame(OP_TEXT, b"\xff"))
        assert proto.failure is not None
        assert proto.failure.code == 1007
        assert proto.receive_data(frame(OP_PING, b"x")) == []
        assert proto.receive_data(frame(OP_CLOSE, struct.pack("!H", 1000))) == []
        assert proto.data_to_send() == b""
        assert proto.close_received is None

    def test_fail_connection_is_idempotent_and_harmless_without_failure(self):
        proto = ServerProtocol(defer_failure=True)
        proto.fail_connection()
        assert proto.state is State.OPEN
        assert proto.data_to_send() == b""
        proto.receive_data(frame(OP_CONT, b"x"))
        proto.fail_connection()
        proto.fail_connection()
        assert proto.data_to_send() == server_close(1002)

    def test_send_close_during_a_deferred_failure_sends_the_failure_code(self):
        proto = ServerProtocol(defer_failure=True)
        proto.receive_data(frame(OP_TEXT, b"ok") + frame(OP_TEXT, b"\xc0"))
        assert proto.send_close(1000, "bye") == server_close(1007)
        assert proto.close_sent == (1007, "")
        assert proto.state is State.CLOSING
        proto.fail_connection()
        assert proto.data_to_send() == b""

    def test_a_size_failure_is_deferred_too(self):
        proto = ServerProtocol(Limits(max_message_size=10), defer_failure=True)
        events = proto.receive_data(
            frame(OP_BINARY, b"1") + frame(OP_BINARY, b"x" * 11)
        )
        assert messages(events) == [(b"1", None)]
        assert proto.state is State.OPEN
        proto.fail_connection()
        assert proto.data_to_send() == server_close(1009)
