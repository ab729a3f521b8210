"""geows.frames against RFC 6455: framing (5.2), masking (5.3), the examples
of 5.7 and close payloads (5.5.1, 7.4).

Every frame here is built with a fixed mask so the bytes are deterministic.
"""

from __future__ import annotations

import struct

import pytest

from geows import frames
from geows.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseCode,
    apply_mask,
    encode_frame,
    frame_header,
    is_valid_close_code,
    parse_close,
    parse_header,
    serialize_close,
)

MASK = b"\x01\x02\x03\x04"


# -- RFC 6455 5.2: base framing protocol -------------------------------------


class TestSection5_2BaseFraming:
    @pytest.mark.parametrize(
        ("length", "expected"),
        [
            pytest.param(0, b"\x82\x00", id="0-fits-in-7-bits"),
            pytest.param(125, b"\x82\x7d", id="125-fits-in-7-bits"),
            pytest.param(126, b"\x82\x7e\x00\x7e", id="126-needs-16-bits"),
            pytest.param(65535, b"\x82\x7e\xff\xff", id="65535-fits-in-16-bits"),
            pytest.param(
                65536,
                b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00",
                id="65536-needs-64-bits",
            ),
        ],
    )
    def test_header_uses_the_minimal_length_encoding(self, length, expected):
        assert frame_header(OP_BINARY, length) == expected

    def test_header_without_fin_clears_the_top_bit(self):
        assert frame_header(OP_TEXT, 3, fin=False) == b"\x01\x03"

    def test_header_carries_the_rsv_bits_given(self):
        assert frame_header(OP_TEXT, 0, rsv=0x40) == b"\xc1\x00"
        assert frame_header(OP_TEXT, 0, rsv=0x70) == b"\xf1\x00"

    @pytest.mark.parametrize(
        "opcode", [OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG]
    )
    def test_header_puts_the_opcode_in_the_low_nibble(self, opcode):
        assert frame_header(opcode, 0)[0] == 0x80 | opcode

    def test_opcodes_have_their_rfc_values(self):
        assert (OP_CONT, OP_TEXT, OP_BINARY) == (0x0, 0x1, 0x2)
        assert (OP_CLOSE, OP_PING, OP_PONG) == (0x8, 0x9, 0xA)

    @pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536])
    def test_unmasked_frame_is_header_then_payload(self, length):
        payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
        frame = encode_frame(OP_BINARY, payload)
        header = frame_header(OP_BINARY, length)
        assert frame == header + payload

    @pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536])
    def test_masked_frame_sets_the_mask_bit_and_carries_the_key(self, length):
        payload = b"\xaa" * length
        frame = encode_frame(OP_BINARY, payload, mask=MASK)
        header = bytearray(frame_header(OP_BINARY, length))
        header[1] |= 0x80
        assert frame[: len(header)] == header
        assert frame[len(header) : len(header) + 4] == MASK
        assert apply_mask(frame[len(header) + 4 :], MASK) == payload

    @pytest.mark.parametrize(
        ("length", "header_length"),
        [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)],
    )
    def test_parse_header_reads_back_each_length_encoding(self, length, header_length):
        frame = encode_frame(OP_BINARY, b"\x00" * length, fin=False)
        b0, b1, parsed_length, hlen = parse_header(frame, 0)
        assert b0 == OP_BINARY
        assert b1 & 0x80 == 0
        assert parsed_length == length
        assert hlen == header_length

    def test_parse_header_counts_the_masking_key_in_the_header_length(self):
        frame = encode_frame(OP_TEXT, b"x" * 126, mask=MASK)
        assert parse_header(frame, 0) == (0x81, 0x80 | 126, 126, 8)

    def test_parse_header_reads_at_the_given_offset(self):
        frame = b"junk" + encode_frame(OP_PING, b"hi", mask=MASK)
        assert parse_header(frame, 4) == (0x89, 0x82, 2, 6)

    @pytest.mark.parametrize(
        "partial",
        [b"", b"\x82", b"\x82\x7e", b"\x82\x7e\x01", b"\x82\x7f" + b"\x00" * 7],
        ids=["empty", "one-byte", "16-bit-missing", "16-bit-half", "64-bit-short"],
    )
    def test_parse_header_waits_for_an_incomplete_header(self, partial):
        assert parse_header(partial, 0) is None

    def test_parse_header_returns_a_64_bit_length_with_the_top_bit_as_is(self):
        header = b"\x82\xff" + struct.pack("!Q", 1 << 63)
        assert parse_header(header, 0)[2] == 1 << 63


# -- RFC 6455 5.3: client-to-server masking -----------------------------------


def _maskers():
    """Every apply_mask: the pure-Python fallback and, if built, the C one."""
    found = [pytest.param(frames._apply_mask_py, id="python")]
    try:
        from geows._speedups import apply_mask as c_apply_mask
    except ImportError:
        pass
    else:
        found.append(pytest.param(c_apply_mask, id="c-speedup"))
    return found


class TestSection5_3Masking:
    def test_the_module_uses_one_of_the_known_implementations(self):
        assert apply_mask in [p.values[0] for p in _maskers()]

    @pytest.mark.parametrize("mask_fn", _maskers())
    @pytest.mark.parametrize(
        "length", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 1000, 65537]
    )
    def test_masking_twice_gives_back_the_payload(self, mask_fn, length):
        payload = bytes((i * 7 + 3) & 0xFF for i in range(length))
        masked = mask_fn(payload, MASK)
        assert len(masked) == length
        assert mask_fn(masked, MASK) == payload

    @pytest.mark.parametrize("mask_fn", _maskers())
    @pytest.mark.parametrize("length", [1, 3, 8, 10, 17, 64, 301])
    def test_masking_xors_byte_i_with_key_byte_i_mod_4(self, mask_fn, length):
        payload = bytes((i * 31) & 0xFF for i in range(length))
        expected = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
        assert mask_fn(payload, MASK) == expected

    @pytest.mark.parametrize("mask_fn", _maskers())
    def test_masking_an_empty_payload_gives_empty_bytes(self, mask_fn):
        assert mask_fn(b"", MASK) == b""

    @pytest.mark.parametrize("mask_fn", _maskers())
    def test_masking_returns_bytes(self, mask_fn):
        assert type(mask_fn(bytearray(b"abcde"), MASK)) is bytes

    @pytest.mark.parametrize("mask_fn", _maskers())
    def test_masking_accepts_bytearray_and_memoryview(self, mask_fn):
        payload = b"Hello, world"
        expected = mask_fn(payload, MASK)
        assert mask_fn(bytearray(payload), MASK) == expected
        assert mask_fn(memoryview(payload), MASK) == expected
        assert mask_fn(memoryview(b"xx" + payload)[2:], MASK) == expected

    @pytest.mark.parametrize("mask_fn", _maskers())
    def test_masking_keeps_leading_zero_bytes(self, mask_fn):
        # An int-based XOR must not drop high-order zero bytes.
        assert mask_fn(MASK * 3, MASK) == b"\x00" * 12

    @pytest.mark.parametrize("mask_fn", _maskers())
    def test_the_all_zero_key_leaves_the_payload_unchanged(self, mask_fn):
        assert mask_fn(b"abcdef", b"\x00\x00\x00\x00") == b"abcdef"

    @pytest.mark.parametrize("mask_fn", _maskers())
    def test_the_result_does_not_alias_the_input(self, mask_fn):
        data = bytearray(b"abcdefgh")
        masked = mask_fn(memoryview(data), MASK)
        data[:] = b"\x00" * 8
        assert mask_fn(masked, MASK) == b"abcdefgh"


# -- RFC 6455 5.7: examples -----------------------------------------------------


class TestSection5_7Examples:
    def test_single_frame_unmasked_text_hello(self):
        assert encode_frame(OP_TEXT, b"Hello") == bytes(
            [0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]
        )

    def test_single_frame_masked_text_hello(self):
        frame = encode_frame(OP_TEXT, b"Hello", mask=b"\x37\xfa\x21\x3d")
        assert frame == bytes(
            [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        )

    def test_masked_hello_unmasks_to_hello(self):
        masked = bytes([0x7F, 0x9F, 0x4D, 0x51, 0x58])
        assert apply_mask(masked, b"\x37\xfa\x21\x3d") == b"Hello"

    def test_fragmented_unmasked_text_hel_lo(self):
        assert encode_frame(OP_TEXT, b"Hel", fin=False) == bytes(
            [0x01, 0x03, 0x48, 0x65, 0x6C]
        )
        assert encode_frame(OP_CONT, b"lo") == bytes([0x80, 0x02, 0x6C, 0x6F])

    def test_unmasked_ping_hello(self):
        assert encode_frame(OP_PING, b"Hello") == bytes(
            [0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]
        )

    def test_masked_pong_hello(self):
        frame = encode_frame(OP_PONG, b"Hello", mask=b"\x37\xfa\x21\x3d")
        assert frame == bytes(
            [0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        )

    def test_256_byte_binary_uses_a_16_bit_length(self):
        assert encode_frame(OP_BINARY, b"\x00" * 256)[:4] == b"\x82\x7e\x01\x00"

    def test_64_kib_binary_uses_a_64_bit_length(self):
        frame = encode_frame(OP_BINARY, b"\x00" * 65536)
        assert frame[:10] == b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"


# -- RFC 6455 5.5.1 and 7.4: close payloads -------------------------------------


VALID_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]


class TestSection7_4CloseCodes:
    @pytest.mark.parametrize("code", VALID_CODES)
    def test_a_code_that_may_be_sent_is_valid(self, code):
        assert is_valid_close_code(code)

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_a_reserved_or_out_of_range_code_is_invalid(self, code):
        assert not is_valid_close_code(code)

    def test_close_code_enum_matches_the_rfc_and_iana_values(self):
        assert CloseCode.NORMAL == 1000
        assert CloseCode.PROTOCOL_ERROR == 1002
        assert CloseCode.NO_STATUS == 1005
        assert CloseCode.ABNORMAL == 1006
        assert CloseCode.INVALID_DATA == 1007
        assert CloseCode.MESSAGE_TOO_BIG == 1009
        assert CloseCode.BAD_GATEWAY == 1014


class TestSection5_5_1ParseClose:
    def test_an_empty_payload_means_no_status_1005(self):
        assert parse_close(b"") == (1005, "")

    def test_a_one_byte_payload_is_rejected(self):
        with pytest.raises(ValueError, match="1-byte"):
            parse_close(b"\x03")

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_a_valid_code_is_returned_with_its_reason(self, code):
        assert parse_close(struct.pack("!H", code) + b"bye") == (code, "bye")

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_a_valid_code_without_reason_has_an_empty_reason(self, code):
        assert parse_close(struct.pack("!H", code)) == (code, "")

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_an_invalid_code_is_rejected(self, code):
        with pytest.raises(ValueError, match="invalid close code"):
            parse_close(struct.pack("!H", code))

    def test_a_utf8_reason_is_decoded(self):
        assert parse_close(b"\x03\xe8caf\xc3\xa9") == (1000, "café")

    def test_an_invalid_utf8_reason_raises_unicode_decode_error(self):
        with pytest.raises(UnicodeDecodeError):
            parse_close(b"\x03\xe8\xff")

    def test_a_surrogate_in_the_reason_is_invalid_utf8(self):
        with pytest.raises(UnicodeDecodeError):
            parse_close(b"\x03\xe8\xed\xa0\x80")


class TestSection5_5_1SerializeClose:
    def test_no_code_gives_an_empty_payload(self):
        assert serialize_close(None) == b""

    def test_code_1005_gives_an_empty_payload(self):
        assert serialize_close(1005) == b""

    def test_a_code_is_two_bytes_in_network_order(self):
        assert serialize_close(1000) == b"\x03\xe8"
        assert serialize_close(4999) == b"\x13\x87"

    def test_the_reason_follows_the_code_as_utf8(self):
        assert serialize_close(1001, "bye é") == b"\x03\xe9bye \xc3\xa9"

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_serialize_then_parse_round_trips(self, code):
        assert parse_close(serialize_close(code, "reason")) == (code, "reason")

    def test_a_reason_that_fits_exactly_is_kept_whole(self):
        reason = "r" * 123
        assert serialize_close(1000, reason) == b"\x03\xe8" + reason.encode()

    @pytest.mark.parametrize(
        "reason",
        [
            pytest.param("a" * 300, id="ascii"),
            pytest.param("é" * 100, id="two-byte-chars"),
            pytest.param("€" * 60, id="three-byte-chars"),
            pytest.param("\U0001f600" * 40, id="four-byte-chars"),
            pytest.param("a" + "\U0001f600" * 40, id="four-byte-chars-offset"),
            pytest.param("ab" + "€" * 60, id="three-byte-chars-offset"),
        ],
    )
    def test_a_long_reason_is_cut_at_a_utf8_boundary_to_125_bytes(self, reason):
        payload = serialize_close(1000, reason)
        assert len(payload) <= 125
        code, kept = parse_close(payload)  # decodes: the cut is on a boundary
        assert code == 1000
        assert reason.startswith(kept)
        # The longest prefix that fits: one more character would not.
        next_char = reason[len(kept)]
        assert len(payload) + len(next_char.encode("utf-8")) > 125

    def test_a_cut_reason_uses_every_byte_it_can(self):
        assert len(serialize_close(1000, "€" * 60)) == 125  # 2 + 41 * 3
        assert len(serialize_close(1000, "é" * 100)) == 124  # 2 + 61 * 2
