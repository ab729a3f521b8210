"""geows.protocol.ServerProtocol against RFC 6455, by feeding bytes.

Client frames are built with a fixed mask so every input is deterministic.
Failure tests check the whole of _Fail the WebSocket Connection_ (7.1.7):
the close code, the close frame queued in data_to_send(), the CLOSING state
and that any further input is discarded.
"""

from __future__ import annotations

import struct
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geows.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    PayloadTooBig,
    ProtocolError,
    closed_exception,
)
from geows.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_frame,
    frame_header,
    is_valid_close_code,
)
from geows.limits import Limits
from geows.protocol import Close, Message, Ping, Pong, ServerProtocol, State

MASK = b"\x01\x02\x03\x04"


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame, masked with the fixed key."""
    return encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=MASK)


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason)


def server_close(code: int) -> bytes:
    """The close frame geows queues when it answers or fails with ``code``."""
    return frame_header(OP_CLOSE, 2) + struct.pack("!H", code)


def summary(events) -> list[tuple]:
    """Events as comparable tuples."""
    out = []
    for event in events:
        if isinstance(event, Message):
            out.append(("message", event.data, event.text))
        elif isinstance(event, Ping):
            out.append(("ping", event.data))
        elif isinstance(event, Pong):
            out.append(("pong", event.data))
        elif isinstance(event, Close):
            out.append(("close", event.code, event.reason))
        else:  # pragma: no cover
            raise AssertionError(event)
    return out


def assert_failed(proto: ServerProtocol, code: int) -> None:
    """The connection was failed with ``code`` as RFC 6455 7.1.7 describes."""
    assert proto.failure is not None
    assert isinstance(proto.failure, ProtocolError)
    assert proto.failure.code == code
    assert proto.close_code == code
    assert proto.state is State.CLOSING
    assert proto.close_sent == (code, "")
    assert proto.data_to_send() == server_close(code)
    # Further input, even a valid ping or close, is discarded.
    assert proto.receive_data(frame(OP_TEXT, b"later")) == []
    assert proto.receive_data(frame(OP_PING, b"ping")) == []
    assert proto.receive_data(close_frame(1000)) == []
    assert proto.data_to_send() == b""
    assert proto.state is State.CLOSING
    assert isinstance(proto.closed_exception(), ConnectionClosedError)


def fail_with(data: bytes, limits: Optional[Limits] = None) -> ServerProtocol:
    proto = ServerProtocol(limits or Limits())
    proto.receive_data(data)
    return proto


# -- RFC 6455 5.6: data frames --------------------------------------------------


class TestSection5_6DataFrames:
    def test_a_text_frame_is_a_text_message(self):
        proto = ServerProtocol()
        events = proto.receive_data(frame(OP_TEXT, "héllo".encode()))
        assert summary(events) == [("message", "héllo".encode(), "héllo")]
        assert proto.data_to_send() == b""

    def test_a_binary_frame_is_a_binary_message_without_text(self):
        proto = ServerProtocol()
        events = proto.receive_data(frame(OP_BINARY, b"\x00\xff"))
        assert summary(events) == [("message", b"\x00\xff", None)]

    def test_an_empty_text_frame_is_an_empty_text_message(self):
        events = ServerProtocol().receive_data(frame(OP_TEXT))
        assert summary(events) == [("message", b"", "")]

    def test_an_empty_binary_frame_is_an_empty_binary_message(self):
        events = ServerProtocol().receive_data(frame(OP_BINARY))
        assert summary(events) == [("message", b"", None)]

    @pytest.mark.parametrize("length", [125, 126, 65535, 65536])
    def test_a_message_at_a_length_boundary_arrives_whole(self, length):
        payload = b"\x5a" * length
        events = ServerProtocol().receive_data(frame(OP_BINARY, payload))
        assert summary(events) == [("message", payload, None)]

    def test_several_frames_in_one_feed_give_several_messages(self):
        data = frame(OP_TEXT, b"one") + frame(OP_BINARY, b"two")
        events = ServerProtocol().receive_data(data)
        assert summary(events) == [
            ("message", b"one", "one"),
            ("message", b"two", None),
        ]

    def test_an_incomplete_frame_waits_for_the_rest(self):
        proto = ServerProtocol()
        data = frame(OP_TEXT, b"hello")
        assert proto.receive_data(data[:-1]) == []
        assert summary(proto.receive_data(data[-1:])) == [
            ("message", b"hello", "hello")
        ]

    def test_the_message_accepts_bytearray_and_memoryview_input(self):
        data = frame(OP_BINARY, b"abc")
        assert summary(ServerProtocol().receive_data(bytearray(data))) == [
            ("message", b"abc", None)
        ]
        assert summary(ServerProtocol().receive_data(memoryview(data))) == [
            ("message", b"abc", None)
        ]

    def test_feeding_byte_by_byte_gives_the_same_events_as_one_feed(self):
        stream = (
            frame(OP_TEXT, b"Hel", fin=False)
            + frame(OP_PING, b"p1")
            + frame(OP_CONT, "lo wörld".encode(), fin=False)
            + frame(OP_PONG, b"p2")
            + frame(OP_CONT, b"!")
            + frame(OP_BINARY, b"\x00" * 300)
            + frame(OP_TEXT, "€".encode())
            + close_frame(1001, b"bye")
        )
        whole = ServerProtocol()
        expected = summary(whole.receive_data(stream))
        expected_out = whole.data_to_send()
        split = ServerProtocol()
        events = []
        for i in range(len(stream)):
            events.extend(split.receive_data(stream[i : i + 1]))
        assert summary(events) == expected
        assert split.data_to_send() == expected_out
        assert expected[0] == ("ping", b"p1")
        assert expected[2] == ("message", "Hello wörld!".encode(), "Hello wörld!")
        assert expected[-1] == ("close", 1001, "bye")


class TestCallerBuffers:
    """The I/O layer reads into one scratch buffer and reuses it at once.

    receive_data() parses the caller's buffer in place, so nothing it returns
    or keeps may point into that buffer.
    """

    @staticmethod
    def feed_through_scratch(proto: ServerProtocol, data: bytes, scratch):
        scratch[: len(data)] = data
        events = proto.receive_data(memoryview(scratch)[: len(data)])
        scratch[:] = b"\xee" * len(scratch)  # the next recv_into overwrites it
        return events

    def test_messages_survive_the_reuse_of_the_callers_buffer(self):
        scratch = bytearray(4096)
        proto = ServerProtocol()
        data = frame(OP_TEXT, b"first") + frame(OP_BINARY, b"\x01" * 200)
        events = self.feed_through_scratch(proto, data, scratch)
        assert summary(events) == [
            ("message", b"first", "first"),
            ("message", b"\x01" * 200, None),
        ]

    def test_an_incomplete_tail_is_copied_before_the_buffer_is_reused(self):
        scratch = bytearray(4096)
        proto = ServerProtocol()
        data = frame(OP_TEXT, b"one") + frame(OP_TEXT, b"two" * 50)
        cut = len(frame(OP_TEXT, b"one")) + 5  # inside the second header/mask
        first = self.feed_through_scratch(proto, data[:cut], scratch)
        assert summary(first) == [("message", b"one", "one")]
        second = self.feed_through_scratch(proto, data[cut:], scratch)
        assert summary(second) == [("message", b"two" * 50, "two" * 50)]

    def test_fragments_and_pings_survive_the_reuse_of_the_callers_buffer(self):
        scratch = bytearray(4096)
        proto = ServerProtocol()
        chunks = [
            frame(OP_TEXT, b"ab", fin=False) + frame(OP_PING, b"pp")[:3],
            frame(OP_PING, b"pp")[3:] + frame(OP_CONT, b"cd", fin=False),
            frame(OP_CONT, b"ef"),
        ]
        events = []
        for chunk in chunks:
            events += self.feed_through_scratch(proto, chunk, scratch)
        assert summary(events) == [("ping", b"pp"), ("message", b"abcdef", "abcdef")]
        assert proto.data_to_send() == b"\x8a\x02pp"

    def test_byte_by_byte_through_one_scratch_buffer_gives_the_same_events(self):
        stream = (
            frame(OP_BINARY, b"x" * 130, fin=False)
            + frame(OP_PONG, b"q")
            + frame(OP_CONT, b"y")
            + close_frame(1000)
        )
        expected = summary(ServerProtocol().receive_data(stream))
        scratch = bytearray(1)
        proto = ServerProtocol()
        events = []
        for i in range(len(stream)):
            events += self.feed_through_scratch(proto, stream[i : i + 1], scratch)
        assert summary(events) == expected


# -- RFC 6455 5.4: fragmentation ------------------------------------------------


class TestSection5_4Fragmentation:
    def test_fragments_of_a_text_message_are_reassembled(self):
        proto = ServerProtocol()
        assert proto.receive_data(frame(OP_TEXT, b"Hel", fin=False)) == []
        assert proto.receive_data(frame(OP_CONT, b"l", fin=False)) == []
        events = proto.receive_data(frame(OP_CONT, b"o"))
        assert summary(events) == [("message", b"Hello", "Hello")]

    def test_fragments_of_a_binary_message_are_reassembled(self):
        data = frame(OP_BINARY, b"\x01", fin=False) + frame(OP_CONT, b"\x02")
        events = ServerProtocol().receive_data(data)
        assert summary(events) == [("message", b"\x01\x02", None)]

    def test_empty_fragments_are_allowed(self):
        data = (
            frame(OP_TEXT, b"", fin=False)
            + frame(OP_CONT, b"", fin=False)
            + frame(OP_CONT, b"")
        )
        assert summary(ServerProtocol().receive_data(data)) == [("message", b"", "")]

    def test_control_frames_may_be_interleaved_with_fragments(self):
        proto = ServerProtocol()
        data = (
            frame(OP_TEXT, b"a", fin=False)
            + frame(OP_PING, b"x")
            + frame(OP_CONT, b"b", fin=False)
            + frame(OP_PONG, b"y")
            + frame(OP_CONT, b"c")
        )
        assert summary(proto.receive_data(data)) == [
            ("ping", b"x"),
            ("pong", b"y"),
            ("message", b"abc", "abc"),
        ]
        assert proto.data_to_send() == b"\x8a\x01x"

    def test_a_close_frame_inside_a_fragmented_message_closes(self):
        proto = ServerProtocol()
        data = frame(OP_TEXT, b"a", fin=False) + close_frame(1000)
        assert summary(proto.receive_data(data)) == [("close", 1000, "")]
        assert proto.state is State.CLOSED

    def test_a_character_split_across_fragments_is_decoded(self):
        euro = "€".encode()
        data = (
            frame(OP_TEXT, euro[:1], fin=False)
            + frame(OP_CONT, euro[1:2], fin=False)
            + frame(OP_CONT, euro[2:])
        )
        assert summary(ServerProtocol().receive_data(data)) == [("message", euro, "€")]

    def test_a_new_message_can_follow_a_fragmented_one(self):
        data = (
            frame(OP_BINARY, b"1", fin=False)
            + frame(OP_CONT, b"2")
            + frame(OP_TEXT, b"3")
        )
        assert summary(ServerProtocol().receive_data(data)) == [
            ("message", b"12", None),
            ("message", b"3", "3"),
        ]


# -- Failures: RFC 6455 5.1-5.5, 5.8, 7.1.7 ----------------------------------------


def _64bit_length_with_top_bit() -> bytes:
    return b"\x82\xff" + struct.pack("!Q", (1 << 63) | 5) + MASK


PROTOCOL_ERRORS = [
    pytest.param(encode_frame(OP_TEXT, b"hi"), id="an-unmasked-client-frame-5.1"),
    pytest.param(frame(OP_TEXT, b"hi", rsv=0x40), id="rsv1-without-extension-5.2"),
    pytest.param(frame(OP_TEXT, b"hi", rsv=0x20), id="rsv2-without-extension-5.2"),
    pytest.param(frame(OP_TEXT, b"hi", rsv=0x10), id="rsv3-without-extension-5.2"),
    pytest.param(frame(OP_PING, b"", rsv=0x40), id="rsv1-on-a-ping-5.2"),
    *(
        pytest.param(frame(op, b"x"), id=f"reserved-data-opcode-{op}-5.2")
        for op in range(3, 8)
    ),
    *(
        pytest.param(frame(op, b"x"), id=f"reserved-control-opcode-{op}-5.2")
        for op in range(11, 16)
    ),
    pytest.param(frame(OP_PING, b"x", fin=False), id="a-fragmented-ping-5.4"),
    pytest.param(frame(OP_PONG, b"x", fin=False), id="a-fragmented-pong-5.4"),
    pytest.param(frame(OP_CLOSE, b"", fin=False), id="a-fragmented-close-5.4"),
    pytest.param(frame(OP_PING, b"x" * 126), id="a-126-byte-ping-5.5"),
    pytest.param(frame(OP_PONG, b"x" * 126), id="a-126-byte-pong-5.5"),
    pytest.param(frame(OP_CLOSE, b"\x03\xe8" + b"x" * 124), id="a-126-byte-close-5.5"),
    pytest.param(frame(OP_CONT, b"x"), id="a-continuation-without-start-5.4"),
    pytest.param(
        frame(OP_CONT, b"x", fin=False), id="an-unfinished-continuation-first-5.4"
    ),
    pytest.param(
        frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"),
        id="a-text-frame-inside-a-fragmented-message-5.4",
    ),
    pytest.param(
        frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b"),
        id="a-binary-frame-inside-a-fragmented-message-5.4",
    ),
    pytest.param(
        frame(OP_BINARY, b"a", fin=False) + frame(OP_TEXT, b"b", fin=False),
        id="a-new-fragmented-message-inside-one-5.4",
    ),
    pytest.param(frame(OP_CLOSE, b"\x03"), id="a-one-byte-close-payload-5.5.1"),
    *(
        pytest.param(close_frame(code), id=f"close-code-{code}-7.4")
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
    ),
    pytest.param(_64bit_length_with_top_bit(), id="a-64-bit-length-with-top-bit-5.2"),
]


class TestFailingTheConnection:
    @pytest.mark.parametrize("data", PROTOCOL_ERRORS)
    def test_a_protocol_error_fails_with_1002(self, data):
        assert_failed(fail_with(data), 1002)

    def test_a_64_bit_length_with_top_bit_fails_even_without_a_size_limit(self):
        proto = fail_with(_64bit_length_with_top_bit(), Limits(max_message_size=None))
        assert_failed(proto, 1002)

    def test_the_header_alone_is_enough_to_fail(self):
        proto = ServerProtocol()
        proto.receive_data(frame(OP_TEXT, b"hi", rsv=0x40)[:2])
        assert_failed(proto, 1002)

    def test_messages_before_the_error_are_still_returned(self):
        proto = ServerProtocol()
        data = frame(OP_TEXT, b"ok") + encode_frame(OP_TEXT, b"bad")
        assert summary(proto.receive_data(data)) == [("message", b"ok", "ok")]
        assert_failed(proto, 1002)

    def test_the_close_frame_carries_only_the_code(self):
        proto = fail_with(frame(OP_CONT, b"x"))
        assert proto.data_to_send() == b"\x88\x02\x03\xea"

    def test_the_failure_is_not_raised_but_recorded(self):
        proto = ServerProtocol()
        assert proto.receive_data(encode_frame(OP_TEXT, b"x")) == []
        assert isinstance(proto.failure, ProtocolError)
        assert proto.output  # the I/O layer's cue to flush data_to_send()


# -- RFC 6455 8.1: UTF-8 in text messages -------------------------------------------


INVALID_UTF8 = [
    pytest.param(b"\xff", id="byte-ff"),
    pytest.param(b"\x80", id="lone-continuation-byte"),
    pytest.param(b"\xc0\xaf", id="overlong-slash"),
    pytest.param(b"\xe0\x80\xaf", id="overlong-3-byte"),
    pytest.param(b"\xed\xa0\x80", id="surrogate-d800"),
    pytest.param(b"\xf4\x90\x80\x80", id="above-u10ffff"),
    pytest.param(b"\xe2\x82", id="truncated-at-the-end"),
    pytest.param(
        b"abc\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", id="mixed"
    ),
]


class TestSection8_1InvalidUtf8:
    @pytest.mark.parametrize("payload", INVALID_UTF8)
    def test_invalid_utf8_in_a_single_text_frame_fails_with_1007(self, payload):
        assert_failed(fail_with(frame(OP_TEXT, payload)), 1007)

    @pytest.mark.parametrize("payload", INVALID_UTF8)
    def test_invalid_utf8_in_a_final_fragment_fails_with_1007(self, payload):
        data = frame(OP_TEXT, b"ok", fin=False) + frame(OP_CONT, payload)
        assert_failed(fail_with(data), 1007)

    def test_invalid_utf8_in_a_binary_message_is_fine(self):
        events = ServerProtocol().receive_data(frame(OP_BINARY, b"\xff\xed\xa0\x80"))
        assert summary(events) == [("message", b"\xff\xed\xa0\x80", None)]

    @pytest.mark.parametrize(
        "tail",
        [
            pytest.param(b"\xf4\x90", id="above-u10ffff-prefix"),
            pytest.param(b"\xed\xa0", id="surrogate-prefix"),
            pytest.param(b"\xed\xbf", id="last-surrogate-prefix"),
            pytest.param(b"\xe0\x80", id="overlong-prefix"),
            pytest.param(b"\xf5", id="byte-f5"),
            pytest.param(b"\xc1", id="byte-c1"),
        ],
    )
    def test_the_first_fragment_that_proves_text_invalid_fails_it(self, tail):
        proto = ServerProtocol()
        assert proto.receive_data(frame(OP_TEXT, b"ok" + tail, fin=False)) == []
        assert_failed(proto, 1007)

    def test_a_surrogate_split_across_fragments_fails_at_its_second_byte(self):
        proto = ServerProtocol()
        assert proto.receive_data(frame(OP_TEXT, b"ok\xed", fin=False)) == []
        assert proto.failure is None
        proto.receive_data(frame(OP_CONT, b"\xa0", fin=False))
        assert_failed(proto, 1007)

    @pytest.mark.parametrize(
        "tail",
        [b"\xe2", b"\xe2\x82", b"\xed\x9f", b"\xf0\x90", b"\xf4\x8f\xbf", b"\xc2"],
    )
    def test_a_fragment_ending_in_a_valid_prefix_waits_for_the_rest(self, tail):
        proto = ServerProtocol()
        assert proto.receive_data(frame(OP_TEXT, tail, fin=False)) == []
        assert proto.failure is None

    def test_a_prefix_left_open_at_the_final_fragment_fails_with_1007(self):
        data = frame(OP_TEXT, b"\xe2\x82", fin=False) + frame(OP_CONT, b"")
        assert_failed(fail_with(data), 1007)


_PREFIXES: frozenset[bytes] = frozenset(
    chr(cp).encode("utf-8")[:k]
    for cp in range(0x80, 0x110000, 64)
    if not 0xD800 <= cp <= 0xDFFF
    for k in range(1, len(chr(cp).encode("utf-8")))
)


def _could_become_valid(data: bytes) -> bool:
    """Whether some continuation makes ``data`` valid UTF-8 (the oracle)."""
    for k in range(4):
        head, tail = data[: len(data) - k], data[len(data) - k :]
        if tail and tail not in _PREFIXES:
            continue
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            continue
        return True
    return False


class TestSection8_1FailFast:
    def test_the_prefix_oracle_knows_the_edges(self):
        assert b"\xf4\x8f\xbf" in _PREFIXES
        assert b"\xf4\x90" not in _PREFIXES
        assert b"\xed\x9f" in _PREFIXES
        assert b"\xed\xa0" not in _PREFIXES
        assert b"\xe0\xa0" in _PREFIXES
        assert b"\xe0\x9f" not in _PREFIXES

    @settings(max_examples=300, deadline=None)
    @given(
        head=st.text(max_size=3).map(lambda s: s.encode("utf-8")),
        tail=st.lists(
            st.one_of(
                st.integers(0x80, 0xBF), st.integers(0xC0, 0xFF), st.integers(0, 255)
            ),
            min_size=1,
            max_size=3,
        ).map(bytes),
    )
    def test_an_unfinished_fragment_fails_exactly_when_no_continuation_can_fix_it(
        self, head, tail
    ):
        payload = head + tail
        proto = ServerProtocol()
        proto.receive_data(frame(OP_TEXT, payload, fin=False))
        if _could_become_valid(payload):
            assert proto.failure is None
        else:
            assert proto.failure is not None
            assert proto.failure.code == 1007


# -- RFC 6455 10.4: message size limit --------------------------------------------


class TestSection10_4SizeLimit:
    def test_a_header_announcing_too_much_fails_with_1009_before_the_payload(self):
        proto = ServerProtocol(Limits(max_message_size=1000))
        header = frame(OP_BINARY, b"\x00" * 1001)[:8]  # 2 + 2 + mask key
        assert len(header) == 8
        assert proto.receive_data(header) == []
        assert isinstance(proto.failure, PayloadTooBig)
        assert_failed(proto, 1009)

    def test_a_64_bit_header_alone_fails_with_1009(self):
        proto = ServerProtocol()
        proto.receive_data(b"\x82\xff" + struct.pack("!Q", 2**40))
        assert_failed(proto, 1009)

    def test_the_default_limit_is_one_mebibyte(self):
        assert Limits().max_message_size == 1024 * 1024
        proto = ServerProtocol()
        proto.receive_data(b"\x82\xff" + struct.pack("!Q", 1024 * 1024 + 1) + MASK)
        assert_failed(proto, 1009)

    def test_a_message_of_exactly_the_limit_is_accepted(self):
        proto = ServerProtocol(Limits(max_message_size=1000))
        events = proto.receive_data(frame(OP_BINARY, b"\x00" * 1000))
        assert summary(events) == [("message", b"\x00" * 1000, None)]

    def test_a_fragmented_message_over_the_limit_fails_with_1009(self):
        proto = ServerProtocol(Limits(max_message_size=1000))
        assert proto.receive_data(frame(OP_TEXT, b"a" * 600, fin=False)) == []
        assert proto.failure is None
        proto.receive_data(frame(OP_CONT, b"a" * 401)[:8])
        assert_failed(proto, 1009)

    def test_a_fragmented_message_of_exactly_the_limit_is_accepted(self):
        proto = ServerProtocol(Limits(max_message_size=1000))
        data = frame(OP_TEXT, b"a" * 600, fin=False) + frame(OP_CONT, b"a" * 400)
        assert summary(proto.receive_data(data)) == [
            ("message", b"a" * 1000, "a" * 1000)
        ]

    def test_control_frames_do_not_count_towards_the_message_size(self):
        proto = ServerProtocol(Limits(max_message_size=10))
        data = (
            frame(OP_BINARY, b"x" * 5, fin=False)
            + frame(OP_PING, b"p" * 100)
            + frame(OP_CONT, b"y" * 5)
        )
        assert summary(proto.receive_data(data))[-1] == (
            "message",
            b"xxxxxyyyyy",
            None,
        )
        assert proto.failure is None

    def test_the_size_count_restarts_with_each_message(self):
        proto = ServerProtocol(Limits(max_message_size=10))
        data = (
            frame(OP_BINARY, b"x" * 6, fin=False)
            + frame(OP_CONT, b"x" * 4)
            + frame(OP_BINARY, b"y" * 6, fin=False)
            + frame(OP_CONT, b"y" * 4)
        )
        assert len(proto.receive_data(data)) == 2
        assert proto.failure is None

    def test_no_limit_accepts_a_message_over_one_mebibyte(self):
        proto = ServerProtocol(Limits(max_message_size=None))
        payload = b"\x01" * (1024 * 1024 + 1)
        events = proto.receive_data(frame(OP_BINARY, payload))
        assert summary(events) == [("message", payload, None)]

    def test_no_limit_waits_for_a_huge_announced_payload(self):
        proto = ServerProtocol(Limits(max_message_size=None))
        assert proto.receive_data(b"\x82\xff" + struct.pack("!Q", 2**40) + MASK) == []
        assert proto.failure is None
        assert proto.state is State.OPEN


# -- RFC 6455 5.5.2/5.5.3: ping and pong ----------------------------------------------


class TestSection5_5_2PingAndPong:
    def test_a_ping_is_answered_with_a_pong_echoing_its_payload(self):
        proto = ServerProtocol()
        events = proto.receive_data(frame(OP_PING, b"Hello"))
        assert summary(events) == [("ping", b"Hello")]
        assert proto.data_to_send() == b"\x8a\x05Hello"
        assert proto.data_to_send() == b""

    def test_an_empty_ping_is_answered_with_an_empty_pong(self):
        proto = ServerProtocol()
        proto.receive_data(frame(OP_PING))
        assert proto.data_to_send() == b"\x8a\x00"

    def test_a_125_byte_ping_is_answered_in_full(self):
        proto = ServerProtocol()
        payload = bytes(range(125))
        proto.receive_data(frame(OP_PING, payload))
        assert proto.data_to_send() == b"\x8a\x7d" + payload

    def test_each_ping_gets_its_own_pong_in_order(self):
        proto = ServerProtocol()
        proto.receive_data(frame(OP_PING, b"1") + frame(OP_PING, b"2"))
        assert proto.data_to_send() == b"\x8a\x011\x8a\x012"

    def test_a_pong_is_an_event_and_needs_no_answer(self):
        proto = ServerProtocol()
        assert summary(proto.receive_data(frame(OP_PONG, b"yo"))) == [("pong", b"yo")]
        assert proto.data_to_send() == b""
        assert not proto.output


# -- RFC 6455 5.5.1, 7.1: the closing handshake ------------------------------------


class TestSection5_5_1ClosingHandshake:
    def test_a_client_close_is_answered_with_the_same_code(self):
        proto = ServerProtocol()
        events = proto.receive_data(close_frame(1000, b"bye"))
        assert summary(events) == [("close", 1000, "bye")]
        assert proto.data_to_send() == server_close(1000)
        assert proto.state is State.CLOSED
        assert proto.close_received == (1000, "bye")
        assert proto.close_sent == (1000, "")
        assert proto.close_code == 1000
        assert proto.close_reason == "bye"

    @pytest.mark.parametrize("code", [1001, 1003, 1011, 1012, 1013, 1014, 3000, 4999])
    def test_any_valid_code_is_echoed(self, code):
        proto = ServerProtocol()
        proto.receive_data(close_frame(code))
        assert proto.data_to_send() == server_close(code)

    def test_an_empty_close_is_answered_with_an_empty_close(self):
        proto = ServerProtocol()
        events = proto.receive_data(frame(OP_CLOSE))
        assert summary(events) == [("close", 1005, "")]
        assert proto.data_to_send() == b"\x88\x00"
        assert proto.state is State.CLOSED
        assert proto.close_received == (1005, "")
        assert proto.close_code == 1005

    def test_input_after_the_close_frame_is_ignored(self):
        proto = ServerProtocol()
        data = close_frame(1000) + frame(OP_TEXT, b"late") + frame(OP_PING, b"p")
        assert summary(proto.receive_data(data)) == [("close", 1000, "")]
        assert proto.receive_data(frame(OP_TEXT, b"later")) == []
        assert proto.data_to_send() == server_close(1000)

    def test_an_invalid_utf8_close_reason_fails_with_1007(self):
        assert_failed(fail_with(close_frame(1000, b"\xff")), 1007)

    def test_a_one_byte_close_fails_with_1002(self):
        assert_failed(fail_with(frame(OP_CLOSE, b"\x03")), 1002)

    def test_close_code_1004_fails_with_1002(self):
        assert_failed(fail_with(close_frame(1004)), 1002)

    def test_send_close_starts_the_closing_handshake(self):
        proto = ServerProtocol()
        assert proto.send_close(1000, "bye") == b"\x88\x05\x03\xe8bye"
        assert proto.state is State.CLOSING
        assert proto.close_sent == (1000, "bye")
        assert proto.close_code == 1000

    def test_send_close_twice_sends_nothing_the_second_time(self):
        proto = ServerProtocol()
        proto.send_close()
        assert proto.send_close(1001) == b""
        assert proto.close_sent == (1000, "")

    def test_send_close_without_a_code_sends_an_empty_close(self):
        assert ServerProtocol().send_close(1005) == b"\x88\x00"

    def test_send_close_cuts_a_long_reason_to_a_valid_frame(self):
        data = ServerProtocol().send_close(1000, "é" * 200)
        assert data[:2] == b"\x88\x7c"
        assert len(data) == 2 + 124
        data[4:].decode("utf-8")

    def test_the_peer_close_after_send_close_closes(self):
        proto = ServerProtocol()
        proto.send_close(1000)
        events = proto.receive_data(close_frame(1000))
        assert summary(events) == [("close", 1000, "")]
        assert proto.state is State.CLOSED
        assert proto.data_to_send() == b""  # no second close frame
        assert proto.close_code == 1000

    def test_messages_still_arrive_while_closing(self):
        proto = ServerProtocol()
        proto.send_close()
        events = proto.receive_data(frame(OP_TEXT, b"in flight"))
        assert summary(events) == [("message", b"in flight", "in flight")]
        assert proto.state is State.CLOSING

    def test_a_protocol_error_while_closing_queues_no_second_close(self):
        proto = ServerProtocol()
        proto.send_close()
        proto.receive_data(frame(OP_CONT, b"x"))
        assert proto.failure is not None
        assert proto.data_to_send() == b""
        assert proto.state is State.CLOSING

    def test_eof_without_a_close_frame_is_1006(self):
        proto = ServerProtocol()
        proto.receive_eof()
        assert proto.state is State.CLOSED
        assert proto.eof_received
        assert proto.close_code == 1006
        exc = proto.closed_exception()
        assert isinstance(exc, ConnectionClosedError)
        assert exc.code == 1006

    def test_eof_after_send_close_is_still_1006(self):
        proto = ServerProtocol()
        proto.send_close(1000)
        proto.receive_eof()
        assert proto.state is State.CLOSED
        assert proto.close_code == 1006

    def test_input_after_eof_is_ignored(self):
        proto = ServerProtocol()
        proto.receive_eof()
        assert proto.receive_data(frame(OP_PING, b"p")) == []
        assert proto.data_to_send() == b""


# -- Sending ------------------------------------------------------------------------


SENDERS = [
    pytest.param(lambda p: p.send_text("x"), id="send_text"),
    pytest.param(lambda p: p.send_binary(b"x"), id="send_binary"),
    pytest.param(lambda p: p.send_ping(b"x"), id="send_ping"),
    pytest.param(lambda p: p.send_pong(b"x"), id="send_pong"),
]


class TestSection5_1ServerFrames:
    def test_send_text_frames_str_as_utf8_unmasked(self):
        assert ServerProtocol().send_text("héllo") == b"\x81\x06h\xc3\xa9llo"

    def test_send_text_accepts_utf8_bytes(self):
        assert ServerProtocol().send_text(b"hi") == b"\x81\x02hi"

    def test_send_binary_uses_a_16_bit_length_from_126_bytes(self):
        data = ServerProtocol().send_binary(b"\x00" * 126)
        assert data[:4] == b"\x82\x7e\x00\x7e"
        assert len(data) == 130

    def test_send_ping_and_send_pong_frame_control_messages(self):
        proto = ServerProtocol()
        assert proto.send_ping(b"hi") == b"\x89\x02hi"
        assert proto.send_pong(b"") == b"\x8a\x00"

    @pytest.mark.parametrize("method", ["send_ping", "send_pong"])
    def test_a_control_payload_over_125_bytes_is_refused(self, method):
        with pytest.raises(ValueError, match="125"):
            getattr(ServerProtocol(), method)(b"x" * 126)

    @pytest.mark.parametrize("send", SENDERS)
    def test_sending_after_the_peer_closed_raises_connection_closed(self, send):
        proto = ServerProtocol()
        proto.receive_data(close_frame(1000, b"bye"))
        with pytest.raises(ConnectionClosedOK) as info:
            send(proto)
        assert info.value.code == 1000
        assert info.value.reason == "bye"

    @pytest.mark.parametrize("send", SENDERS)
    def test_sending_after_send_close_raises_connection_closed(self, send):
        proto = ServerProtocol()
        proto.send_close(1001)
        with pytest.raises(ConnectionClosed):
            send(proto)

    @pytest.mark.parametrize("send", SENDERS)
    def test_sending_after_a_failure_raises_connection_closed_error(self, send):
        proto = fail_with(frame(OP_CONT, b"x"))
        with pytest.raises(ConnectionClosedError) as info:
            send(proto)
        assert info.value.code == 1002

    @pytest.mark.parametrize("send", SENDERS)
    def test_sending_after_eof_raises_connection_closed_error(self, send):
        proto = ServerProtocol()
        proto.receive_eof()
        with pytest.raises(ConnectionClosedError):
            send(proto)

    @pytest.mark.parametrize("code", [1006, 1015, 1004, 999])
    def test_send_close_never_puts_a_reserved_code_on_the_wire(self, code):
        proto = ServerProtocol()
        try:
            data = proto.send_close(code)
        except ValueError:
            return
        assert data[:2] == b"\x88\x02"
        assert is_valid_close_code(struct.unpack("!H", data[2:])[0])


# -- RFC 6455 7.4: how the connection ended ------------------------------------------


class TestSection7_4ClosedException:
    @pytest.mark.parametrize("code", [1000, 1001, 1005])
    def test_a_normal_ending_is_connection_closed_ok(self, code):
        exc = closed_exception(code, "r")
        assert isinstance(exc, ConnectionClosedOK)
        assert (exc.code, exc.reason) == (code, "r")

    @pytest.mark.parametrize("code", [1002, 1003, 1006, 1007, 1009, 1011, 3000, 4999])
    def test_any_other_ending_is_connection_closed_error(self, code):
        exc = closed_exception(code)
        assert isinstance(exc, ConnectionClosedError)
        assert not isinstance(exc, ConnectionClosedOK)
        assert exc.code == code

    @pytest.mark.parametrize(
        ("data", "kind"),
        [
            pytest.param(close_frame(1000), ConnectionClosedOK, id="close-1000"),
            pytest.param(close_frame(1001), ConnectionClosedOK, id="close-1001"),
            pytest.param(frame(OP_CLOSE), ConnectionClosedOK, id="empty-close-1005"),
            pytest.param(close_frame(1011), ConnectionClosedError, id="close-1011"),
            pytest.param(close_frame(4000), ConnectionClosedError, id="close-4000"),
            pytest.param(frame(OP_CONT), ConnectionClosedError, id="failure-1002"),
            pytest.param(
                frame(OP_TEXT, b"\xff"), ConnectionClosedError, id="failure-1007"
            ),
        ],
    )
    def test_the_protocol_picks_the_exception_from_its_close_code(self, data, kind):
        proto = ServerProtocol()
        proto.receive_data(data)
        assert type(proto.closed_exception()) is kind

    def test_a_failure_close_exception_carries_the_internal_reason(self):
        proto = fail_with(frame(OP_TEXT, b"\xff"))
        exc = proto.closed_exception()
        assert exc.code == 1007
        assert "UTF-8" in exc.reason
