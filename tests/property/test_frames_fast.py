"""The C loop for whole data frames (geows._speedups.parse_data_frames)
against geows' pure-Python frame loop: the same streams, cut the same ways,
must give the same events, replies, state and failure with and without it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geows import protocol
from geows.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, encode_frame
from geows.limits import Limits
from geows.protocol import Close, Message, Ping, Pong, ServerProtocol

speedups = pytest.importorskip("geows._speedups")

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MASK = b"\x11\x22\x33\x44"

payloads = st.one_of(
    st.text(max_size=40).map(lambda t: t.encode()),
    st.binary(max_size=40),
    st.sampled_from([b"\xed\xa0\x80", b"\xff", b"caf\xc3", b"\xc3\xa9", b"x" * 130]),
    st.integers(min_value=120, max_value=70000).map(lambda n: b"a" * n),
)  # fmt: skip


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    opcode = draw(
        st.sampled_from([OP_TEXT, OP_BINARY, OP_TEXT, OP_BINARY, OP_CONT, OP_PING,
                         OP_CLOSE, 3, 11])
    )  # fmt: skip
    payload = draw(payloads)
    if opcode == OP_CLOSE:
        payload = draw(st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye", b"\x00"]))
    if opcode == OP_PING:
        payload = payload[:125]
    fin = draw(st.sampled_from([True, True, True, False]))
    rsv = draw(st.sampled_from([0, 0, 0, 0, 0x40]))
    masked = draw(st.sampled_from([True, True, True, True, False]))
    return encode_frame(
        opcode, payload, fin=fin, rsv=rsv, mask=MASK if masked else None
    )


def _summary(events: list) -> list[tuple]:
    out: list[tuple] = []
    for e in events:
        if isinstance(e, Message):
            out.append(("message", bytes(e.data), e.text))
        elif isinstance(e, Close):
            out.append(("close", e.code, e.reason))
        elif isinstance(e, (Ping, Pong)):
            out.append((type(e).__name__, bytes(e.data)))
    return out


def _feed(stream: bytes, cuts: list[int], max_size: int, fast: bool) -> tuple:
    saved = protocol._parse_data_frames
    protocol._parse_data_frames = speedups.parse_data_frames if fast else None
    try:
        proto = ServerProtocol(Limits(max_message_size=max_size))
        events: list = []
        prev = 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            piece = stream[prev:cut]
            prev = max(prev, cut)
            if piece:
                # A memoryview, as the connection passes its read buffer.
                events += proto.receive_data(memoryview(bytearray(piece)))
        failure = proto.failure
        return (
            _summary(events),
            proto.data_to_send(),
            proto.state,
            None if failure is None else (type(failure), failure.code),
            proto.close_received,
        )
    finally:
        protocol._parse_data_frames = saved


@SETTINGS
@given(
    st.lists(frames(), max_size=8).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=200000), max_size=5),
    st.one_of(st.sampled_from([1 << 20, 70000]), st.integers(0, 45)),
)
def test_same_result_with_and_without_the_c_loop(
    stream: bytes, cuts: list[int], max_size: int
) -> None:
    cuts = [c % (len(stream) + 1) for c in cuts]
    assert _feed(stream, cuts, max_size, True) == _feed(stream, cuts, max_size, False)


def test_it_takes_whole_frames_and_stops_at_anything_else() -> None:
    text = encode_frame(OP_TEXT, "héllo".encode(), mask=MASK)
    binary = encode_frame(OP_BINARY, b"\x00\x01", mask=MASK)
    ping = encode_frame(OP_PING, b"p", mask=MASK)
    stream = text + binary + ping + text
    messages, pos = speedups.parse_data_frames(stream, 0, -1, Message)
    assert [(m.data, m.text) for m in messages] == [
        ("héllo".encode(), "héllo"),
        (b"\x00\x01", None),
    ]
    assert pos == len(text) + len(binary)  # the ping is the Python loop's
    # Partial, oversized, unmasked, fragmented and invalid text all stop it.
    for stop in (
        text[:-1],
        encode_frame(OP_TEXT, b"x" * 11, mask=MASK),
        encode_frame(OP_TEXT, b"x"),
        encode_frame(OP_TEXT, b"x", fin=False, mask=MASK),
        encode_frame(OP_TEXT, b"\xff", mask=MASK),
        encode_frame(OP_BINARY, b"x", rsv=0x40, mask=MASK),
    ):
        assert speedups.parse_data_frames(stop, 0, 10, Message) == ([], 0)


@st.composite
def good_frames(draw: st.DrawFn) -> bytes:
    """The frames the C loop is for: whole, masked, unfragmented data."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
    return encode_frame(opcode, draw(payloads), mask=MASK)


@SETTINGS
@given(
    st.lists(st.one_of(good_frames(), good_frames(), frames()), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=200000), max_size=3),
    st.integers(min_value=-1, max_value=1),
    st.integers(min_value=0, max_value=5),
)
def test_same_result_at_the_size_limit(
    parts: list[bytes], cuts: list[int], delta: int, which: int
) -> None:
    # The limit right at, below and above one frame's payload length.
    frame = parts[which % len(parts)]
    length = frame[1] & 0x7F
    if length == 126:
        length = int.from_bytes(frame[2:4], "big")
    elif length == 127:
        length = int.from_bytes(frame[2:10], "big")
    max_size = max(0, length + delta)
    stream = b"".join(parts)
    cuts = [c % (len(stream) + 1) for c in cuts]
    assert _feed(stream, cuts, max_size, True) == _feed(stream, cuts, max_size, False)


@SETTINGS
@given(
    st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, 0xA, OP_CLOSE, OP_CONT]),
    st.one_of(
        st.text(max_size=50),
        st.binary(max_size=50),
        st.integers(min_value=120, max_value=70000).map(lambda n: b"b" * n),
        st.integers(min_value=120, max_value=70000).map(lambda n: "é" * n),
    ),
    st.sampled_from([bytes, bytearray, memoryview]),
)
def test_server_frame_matches_header_plus_payload(
    opcode: int, data: object, kind: type
) -> None:
    if isinstance(data, bytes):
        data = kind(data)
    try:
        expected: object = protocol._server_frame_py(opcode, data)  # type: ignore[arg-type]
    except Exception as exc:  # str in a non-text frame: TypeError
        expected = type(exc)
    try:
        got: object = speedups.server_frame(opcode, data)
    except Exception as exc:
        got = type(exc)
    assert got == expected


def test_server_frame_refuses_what_the_concatenation_refuses() -> None:
    with pytest.raises(TypeError):
        speedups.server_frame(OP_BINARY, "text")
    with pytest.raises(UnicodeEncodeError):
        speedups.server_frame(OP_TEXT, "\ud800")
    with pytest.raises(ValueError, match="opcode"):
        speedups.server_frame(16, b"")
