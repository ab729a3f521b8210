"""geows' frame codec checked against wsproto, an independent implementation.

wsproto's low-level ``FrameProtocol`` is the oracle in both directions:

* a client-side ``FrameProtocol(client=True)`` writes masked frames that
  geows' ``ServerProtocol`` must read as the same messages, and it reads the
  unmasked frames geows writes;
* a server-side ``FrameProtocol(client=False)`` reads the same (possibly
  broken) client streams as geows, and both must reach the same verdict.

The places where RFC 6455 leaves a receiver free and the two differ are
listed in docs/topics/receiver-freedoms.rst and pinned at the end.

wsproto notes: ``received_frames()`` yields data frames in pieces as bytes
arrive (``frame_finished`` False), so pieces are joined here until
``message_finished``; text pieces are already-decoded ``str``; a close frame's
payload is a ``(code, reason)`` tuple; after a close frame or a
``ParseFailed`` the generator is spent and yields nothing more.
"""

from __future__ import annotations

import struct
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from geows.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    apply_mask,
    encode_frame,
    is_valid_close_code,
)
from geows.limits import Limits
from geows.protocol import Close, Message, Ping, Pong, ServerProtocol

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Codes both implementations accept; 1014 is a known difference (see the end).
SHARED_CODES = [c for c in range(1000, 1016) if is_valid_close_code(c) and c != 1014]
SHARED_CODES += [3000, 3999, 4000, 4999]


# -- Readers: both implementations reduced to the same event tuples ----------------


def geows_summary(events) -> list[tuple]:
    out: list[tuple] = []
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


class GeowsReader:
    def __init__(self, limits: Optional[Limits] = None) -> None:
        self.proto = ServerProtocol(limits or Limits())

    def feed(self, data: bytes) -> list[tuple]:
        return geows_summary(self.proto.receive_data(data))

    def verdict(self) -> list[tuple]:
        failure = self.proto.failure
        return [("fail", failure.code)] if failure is not None else []


class WsprotoReader:
    """A wsproto FrameProtocol whose data pieces are joined into messages."""

    def __init__(self, client: bool) -> None:
        self.fp = FrameProtocol(client=client, extensions=[])
        self.parts: list = []
        self.failed: list[tuple] = []

    def feed(self, data: bytes) -> list[tuple]:
        self.fp.receive_bytes(data)
        out: list[tuple] = []
        try:
            for frame in self.fp.received_frames():
                if frame.opcode is Opcode.PING:
                    out.append(("ping", bytes(frame.payload)))
                elif frame.opcode is Opcode.PONG:
                    out.append(("pong", bytes(frame.payload)))
                elif frame.opcode is Opcode.CLOSE:
                    code, reason = frame.payload
                    out.append(("close", int(code), reason))
                else:
                    self.parts.append(frame.payload)
                    if frame.message_finished:
                        out.append(self._message(frame.opcode))
        except ParseFailed as exc:
            self.failed = [("fail", int(exc.code))]
        return out

    def _message(self, opcode: Opcode) -> tuple:
        parts, self.parts = self.parts, []
        if opcode is Opcode.TEXT:
            text = "".join(parts)
            return ("message", text.encode("utf-8"), text)
        return ("message", b"".join(bytes(p) for p in parts), None)

    def verdict(self) -> list[tuple]:
        return self.failed


def read_whole(reader, data: bytes) -> list[tuple]:
    return reader.feed(data) + reader.verdict()


# -- Strategies ------------------------------------------------------------------------


def _sometimes_big(small, big):
    """``small`` mostly, ``big`` about one time in fifteen."""
    return st.integers(0, 14).flatmap(lambda k: big if k == 0 else small)


_big_binary = st.tuples(
    st.integers(65536, 70000), st.binary(min_size=1, max_size=7)
).map(lambda t: (t[1] * t[0])[: t[0]])
_big_text = st.tuples(st.integers(65536, 66000), st.text(min_size=1, max_size=3)).map(
    lambda t: (t[1] * t[0])[: t[0]]
)

binary_payloads = _sometimes_big(st.binary(max_size=300), _big_binary)
text_payloads = _sometimes_big(st.text(max_size=100), _big_text)
messages = st.one_of(text_payloads, binary_payloads)  # str is text, bytes binary
control_payloads = st.binary(max_size=125)
masks = st.binary(min_size=4, max_size=4)
close_reasons = st.text(max_size=70)


def fit_reason(reason: str) -> str:
    """The longest prefix of ``reason`` that fits a close frame (123 bytes)."""
    while len(reason.encode("utf-8")) > 123:
        reason = reason[:-1]
    return reason


@st.composite
def cuts(draw, length: int) -> list[int]:
    """Sorted split points inside ``length`` (duplicates give empty fragments)."""
    points = draw(st.lists(st.integers(0, length), max_size=4))
    return sorted(points)


def split(payload, points):
    edges = [0, *points, len(payload)]
    return [payload[a:b] for a, b in zip(edges, edges[1:])]


@st.composite
def wsproto_client_streams(draw):
    """A client byte stream written by wsproto, with the events it must give."""
    client = FrameProtocol(client=True, extensions=[])
    chunks: list[bytes] = []
    expected: list[tuple] = []
    for message in draw(st.lists(messages, max_size=5)):
        pieces = split(message, draw(cuts(len(message))))
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            chunks.append(bytes(client.send_data(piece, fin=last)))
            if not last and draw(st.booleans()):
                ping = draw(control_payloads)
                chunks.append(bytes(client.ping(ping)))
                expected.append(("ping", ping))
        if isinstance(message, str):
            expected.append(("message", message.encode("utf-8"), message))
        else:
            expected.append(("message", message, None))
    if draw(st.booleans()):
        pong = draw(control_payloads)
        chunks.append(bytes(client.pong(pong)))
        expected.append(("pong", pong))
    if draw(st.booleans()):
        code = draw(st.sampled_from(SHARED_CODES))
        reason = draw(close_reasons)
        chunks.append(bytes(client.close(code, reason)))
        expected.append(("close", code, fit_reason(reason)))
    return b"".join(chunks), expected


# A raw client frame: (opcode, payload, fin, rsv, masked).
RawFrame = tuple


def _data_frames(payload: bytes, opcode: int, points) -> list[RawFrame]:
    pieces = split(payload, points)
    return [
        (opcode if i == 0 else OP_CONT, piece, i == len(pieces) - 1, 0, True)
        for i, piece in enumerate(pieces)
    ]


@st.composite
def client_frame_lists(draw) -> list[RawFrame]:
    """Mostly valid client frames, then a few mutations that may break them.

    Text is split at byte offsets, so characters are cut across fragments.
    """
    frames: list[RawFrame] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "binary", "ping", "pong"]))
        if kind == "ping":
            frames.append((OP_PING, draw(control_payloads), True, 0, True))
        elif kind == "pong":
            frames.append((OP_PONG, draw(control_payloads), True, 0, True))
        else:
            if kind == "text":
                payload, opcode = draw(st.text(max_size=40)).encode("utf-8"), OP_TEXT
            else:
                payload, opcode = draw(st.binary(max_size=60)), OP_BINARY
            pieces = _data_frames(payload, opcode, draw(cuts(len(payload))))
            if len(pieces) > 1 and draw(st.booleans()):
                at = draw(st.integers(1, len(pieces) - 1))
                pieces.insert(at, (OP_PING, draw(control_payloads), True, 0, True))
            frames.extend(pieces)
    if draw(st.booleans()):
        code = draw(st.sampled_from(SHARED_CODES))
        reason = draw(close_reasons).encode("utf-8")[:123]
        frames.append((OP_CLOSE, struct.pack("!H", code) + reason, True, 0, True))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        frames = _mutate(draw, frames)
    return frames


def _random_frame(draw) -> RawFrame:
    opcode = draw(st.integers(0, 15))
    if opcode >= 8:
        payload = draw(st.one_of(st.binary(max_size=127), st.just(b"x" * 126)))
    else:
        payload = draw(st.binary(max_size=40))
    return (opcode, payload, draw(st.booleans()), 0, True)


def _mutate(draw, frames: list[RawFrame]) -> list[RawFrame]:
    frames = list(frames)
    kind = draw(
        st.sampled_from(
            ["insert", "fin", "rsv", "opcode", "unmask", "payload", "close", "drop"]
        )
    )
    if kind == "insert" or not frames:
        at = draw(st.integers(0, len(frames)))
        frames.insert(at, _random_frame(draw))
        return frames
    at = draw(st.integers(0, len(frames) - 1))
    opcode, payload, fin, rsv, masked = frames[at]
    if kind == "fin":
        fin = not fin
    elif kind == "rsv":
        rsv = draw(st.sampled_from([0x10, 0x20, 0x40, 0x70]))
    elif kind == "opcode":
        opcode = draw(st.integers(0, 15))
    elif kind == "unmask":
        masked = False
    elif kind == "payload":
        payload = draw(st.binary(max_size=130))
    elif kind == "close":
        opcode = OP_CLOSE
        payload = draw(
            st.one_of(
                st.binary(max_size=3),
                st.tuples(st.integers(0, 65535), st.binary(max_size=8)).map(
                    lambda t: struct.pack("!H", t[0]) + t[1]
                ),
            )
        )
    elif kind == "drop":
        del frames[at]
        return frames
    frames[at] = (opcode, payload, fin, rsv, masked)
    return frames


def encode_frames(frames: list[RawFrame], mask: bytes) -> bytes:
    out = []
    for opcode, payload, fin, rsv, masked in frames:
        if opcode == OP_CLOSE and payload[:2] == b"\x03\xf6":
            payload = b"\x03\xe8" + payload[2:]  # 1014: a known difference
        key = mask if masked else None
        out.append(encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=key))
    return b"".join(out)


def _leaves_a_surrogate_prefix_open(frames: list[RawFrame]) -> bool:
    """Whether a non-final fragment ends inside a would-be surrogate (ED A0-BF).

    geows fails such text at once; wsproto only when the message ends.
    """
    running = b""
    for opcode, payload, fin, _rsv, _masked in frames:
        if opcode >= 8:
            continue
        running += payload
        if not fin and running[-2:-1] == b"\xed" and running[-1] >= 0xA0:
            return True
        if fin:
            running = b""
    return False


def split_stream(data: bytes, points: list[int]) -> list[bytes]:
    return split(data, sorted(points))


# -- (a) wsproto writes, geows reads ---------------------------------------------------


class TestWsprotoClientToGeows:
    @SETTINGS
    @given(stream=wsproto_client_streams())
    def test_messages_written_by_wsproto_are_read_by_geows_unchanged(self, stream):
        data, expected = stream
        reader = GeowsReader()
        assert read_whole(reader, data) == expected

    @SETTINGS
    @given(stream=wsproto_client_streams())
    def test_geows_answers_each_wsproto_ping_and_close(self, stream):
        data, expected = stream
        proto = ServerProtocol()
        proto.receive_data(data)
        replies = read_whole(WsprotoReader(client=True), proto.data_to_send())
        want = [("pong", e[1]) for e in expected if e[0] == "ping"]
        want += [("close", e[1], "") for e in expected if e[0] == "close"]
        assert replies == want

    @SETTINGS
    @given(stream=wsproto_client_streams())
    def test_wsproto_reads_its_own_stream_as_the_same_events(self, stream):
        # Keeps the oracle honest: the expected events are wsproto's as well.
        data, expected = stream
        assert read_whole(WsprotoReader(client=False), data) == expected


# -- (b) chunking does not matter ------------------------------------------------------


class TestChunking:
    @SETTINGS
    @given(stream=wsproto_client_streams(), data=st.data())
    def test_any_chunking_of_a_valid_stream_gives_the_same_events(self, stream, data):
        raw, _expected = stream
        whole = GeowsReader()
        expected = read_whole(whole, raw)
        expected_out = whole.proto.data_to_send()
        points = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
        chunked = GeowsReader()
        events: list[tuple] = []
        for chunk in split_stream(raw, points):
            events.extend(chunked.feed(chunk))
        assert events + chunked.verdict() == expected
        assert chunked.proto.data_to_send() == expected_out

    @SETTINGS
    @given(frames=client_frame_lists(), mask=masks, data=st.data())
    def test_any_chunking_of_any_stream_gives_the_same_verdict(
        self, frames, mask, data
    ):
        raw = encode_frames(frames, mask)
        whole = GeowsReader()
        expected = read_whole(whole, raw)
        expected_out = whole.proto.data_to_send()
        points = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
        chunked = GeowsReader()
        events: list[tuple] = []
        scratch = bytearray(len(raw))  # one read buffer, reused like the I/O layer
        for chunk in split_stream(raw, points):
            scratch[: len(chunk)] = chunk
            events.extend(chunked.feed(memoryview(scratch)[: len(chunk)]))
            scratch[:] = bytes(len(scratch))
        assert events + chunked.verdict() == expected
        assert chunked.proto.data_to_send() == expected_out
        assert chunked.proto.state is whole.proto.state

    def test_feeding_one_byte_at_a_time_matches_one_feed(self):
        client = FrameProtocol(client=True, extensions=[])
        raw = b"".join(
            bytes(x)
            for x in (
                client.send_data("fragmented ", fin=False),
                client.ping(b"p"),
                client.send_data("tëxt", fin=True),
                client.send_data(b"\x00" * 70000),
                client.close(1000, "done"),
            )
        )
        expected = read_whole(GeowsReader(), raw)
        reader = GeowsReader()
        events: list[tuple] = []
        for i in range(len(raw)):
            events.extend(reader.feed(raw[i : i + 1]))
        assert events == expected
        assert [e[0] for e in expected] == ["ping", "message", "message", "close"]


# -- Differential: both read the same possibly broken client streams -------------------


class TestSameVerdictAsWsproto:
    @SETTINGS
    @given(frames=client_frame_lists(), mask=masks)
    def test_geows_and_wsproto_agree_on_any_client_stream(self, frames, mask):
        raw = encode_frames(frames, mask)
        ours = read_whole(GeowsReader(), raw)
        theirs = read_whole(WsprotoReader(client=False), raw)
        if ours == theirs:
            return
        # The one allowed difference: geows fails text as soon as a fragment
        # ends in a surrogate prefix (RFC 6455 8.1); wsproto waits.
        assert _leaves_a_surrogate_prefix_open(frames), (ours, theirs)
        assert ours[-1] == ("fail", 1007)
        before = ours[:-1]
        assert theirs[: len(before)] == before
        assert all(e[0] != "message" for e in theirs[len(before) :])


# -- (c) geows writes, wsproto reads ---------------------------------------------------


outgoing = st.one_of(
    st.tuples(st.just("text"), text_payloads),
    st.tuples(st.just("binary"), binary_payloads),
    st.tuples(st.just("ping"), control_payloads),
    st.tuples(st.just("pong"), control_payloads),
)


class TestGeowsToWsprotoClient:
    @SETTINGS
    @given(
        ops=st.lists(outgoing, max_size=6),
        close=st.one_of(
            st.none(),
            st.tuples(st.sampled_from([*SHARED_CODES, 1005]), st.text(max_size=150)),
        ),
    )
    def test_frames_geows_sends_are_read_by_wsproto_unchanged(self, ops, close):
        proto = ServerProtocol()
        chunks: list[bytes] = []
        expected: list[tuple] = []
        for kind, payload in ops:
            if kind == "text":
                chunks.append(proto.send_text(payload))
                expected.append(("message", payload.encode("utf-8"), payload))
            elif kind == "binary":
                chunks.append(proto.send_binary(payload))
                expected.append(("message", payload, None))
            elif kind == "ping":
                chunks.append(proto.send_ping(payload))
                expected.append(("ping", payload))
            else:
                chunks.append(proto.send_pong(payload))
                expected.append(("pong", payload))
        if close is not None:
            code, reason = close
            chunks.append(proto.send_close(code, reason))
        events = read_whole(WsprotoReader(client=True), b"".join(chunks))
        if close is None:
            assert events == expected
            return
        assert events[:-1] == expected
        kind, code_read, reason_read = events[-1]
        assert kind == "close"
        if code == 1005:
            assert (code_read, reason_read) == (1005, "")
            return
        assert code_read == code
        encoded = reason.encode("utf-8")
        if len(encoded) <= 123:
            assert reason_read == reason
        else:  # cut on a character boundary, keeping all that fits
            assert reason.startswith(reason_read)
            assert 123 - 3 <= len(reason_read.encode("utf-8")) <= 123

    @SETTINGS
    @given(message=messages)
    def test_a_message_echoed_by_geows_round_trips_through_wsproto(self, message):
        client = FrameProtocol(client=True, extensions=[])
        proto = ServerProtocol()
        (event,) = proto.receive_data(bytes(client.send_data(message)))
        if event.text is not None:
            echoed = proto.send_text(event.text)
        else:
            echoed = proto.send_binary(event.data)
        (back,) = read_whole(WsprotoReader(client=True), echoed)
        if isinstance(message, str):
            assert back == ("message", message.encode("utf-8"), message)
        else:
            assert back == ("message", message, None)


# -- (d) garbage never raises ---------------------------------------------------------


def _check_replies(proto: ServerProtocol, events: list[tuple]) -> None:
    """data_to_send() holds only pongs for the pings seen, then maybe a close."""
    replies = read_whole(WsprotoReader(client=True), proto.data_to_send())
    pings = [("pong", e[1]) for e in events if e[0] == "ping"]
    closes = [r for r in replies if r[0] == "close"]
    assert replies[: len(pings)] == pings
    assert replies[len(pings) :] == closes
    assert len(closes) <= 1
    if proto.failure is not None:
        assert closes == [("close", proto.failure.code, "")]
    elif proto.close_received is not None:
        assert closes == [("close", proto.close_received[0], "")]
    else:
        assert closes == []


class TestGarbageIn:
    @SETTINGS
    @given(data=st.binary(max_size=400))
    def test_random_bytes_never_raise(self, data):
        proto = ServerProtocol()
        events = geows_summary(proto.receive_data(data))
        _check_replies(proto, events)

    @SETTINGS
    @given(
        head=st.sampled_from([0x81, 0x82, 0x01, 0x00, 0x88, 0x89, 0x8A]),
        body=st.binary(max_size=400),
    )
    def test_random_masked_bytes_never_raise(self, head, body):
        # A plausible first byte and the mask bit set get past the first checks.
        proto = ServerProtocol()
        data = bytes([head]) + bytes([(body[:1] or b"\x00")[0] | 0x80]) + body[1:]
        events = geows_summary(proto.receive_data(data))
        _check_replies(proto, events)

    @SETTINGS
    @given(frames=client_frame_lists(), mask=masks)
    def test_broken_frame_streams_never_raise(self, frames, mask):
        proto = ServerProtocol()
        events = geows_summary(proto.receive_data(encode_frames(frames, mask)))
        _check_replies(proto, events)


# -- Receiver freedoms (docs/topics/receiver-freedoms.rst) -----------------------------


def _nonminimal(opcode: int, payload: bytes, width: int, mask: bytes) -> bytes:
    """A masked frame whose length uses ``width`` (16 or 64) bits needlessly."""
    if width == 16:
        length = bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return bytes([0x80 | opcode]) + length + mask + apply_mask(payload, mask)


class TestReceiverFreedoms:
    @SETTINGS
    @given(
        payload=st.binary(max_size=300),
        width=st.sampled_from([16, 64]),
        mask=masks,
    )
    def test_geows_accepts_non_minimal_data_lengths(self, payload, width, mask):
        if width == 16:
            payload = payload[:125]  # 16 bits where 7 would do
        raw = _nonminimal(OP_BINARY, payload, width, mask)
        assert read_whole(GeowsReader(), raw) == [("message", payload, None)]

    @SETTINGS
    @given(payload=st.binary(max_size=125), width=st.sampled_from([16, 64]), mask=masks)
    def test_geows_accepts_non_minimal_control_lengths(self, payload, width, mask):
        raw = _nonminimal(OP_PING, payload, width, mask)
        reader = GeowsReader()
        assert read_whole(reader, raw) == [("ping", payload)]
        assert reader.proto.data_to_send() == encode_frame(OP_PONG, payload)

    @pytest.mark.parametrize("width", [16, 64])
    def test_wsproto_rejects_non_minimal_lengths(self, width):
        raw = _nonminimal(OP_BINARY, b"hello", width, b"\x01\x02\x03\x04")
        assert read_whole(WsprotoReader(client=False), raw) == [("fail", 1002)]

    @pytest.mark.parametrize("code", [1012, 1013, 1014])
    def test_geows_accepts_iana_codes_1012_to_1014(self, code):
        raw = encode_frame(OP_CLOSE, struct.pack("!H", code), mask=b"\x01\x02\x03\x04")
        assert read_whole(GeowsReader(), raw) == [("close", code, "")]

    def test_wsproto_accepts_1012_and_1013_but_rejects_1014(self):
        def wsproto_reads(code):
            raw = encode_frame(
                OP_CLOSE, struct.pack("!H", code), mask=b"\x01\x02\x03\x04"
            )
            return read_whole(WsprotoReader(client=False), raw)

        assert wsproto_reads(1012) == [("close", 1012, "")]
        assert wsproto_reads(1013) == [("close", 1013, "")]
        assert wsproto_reads(1014) == [("fail", 1002)]

    def test_geows_limits_a_message_to_1_mib_by_default_and_wsproto_does_not(self):
        payload = b"\x00" * (1024 * 1024 + 1)
        raw = encode_frame(OP_BINARY, payload, mask=b"\x01\x02\x03\x04")
        assert read_whole(GeowsReader(), raw) == [("fail", 1009)]
        assert read_whole(WsprotoReader(client=False), raw) == [
            ("message", payload, None)
        ]
        unlimited = GeowsReader(Limits(max_message_size=None))
        assert read_whole(unlimited, raw) == [("message", payload, None)]

    def test_geows_fails_a_surrogate_prefix_at_the_fragment_and_wsproto_later(self):
        raw = encode_frame(OP_TEXT, b"ok\xed\xa0", fin=False, mask=b"\x01\x02\x03\x04")
        assert read_whole(GeowsReader(), raw) == [("fail", 1007)]
        assert read_whole(WsprotoReader(client=False), raw) == []
        rest = encode_frame(OP_CONT, b"\x80", mask=b"\x01\x02\x03\x04")
        assert read_whole(WsprotoReader(client=False), raw + rest) == [("fail", 1007)]
