"""Framing: packet round trips and every way a frame can be malformed."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from cobs import cobs

from tinyfed.firmware_bridge.link.framing import (
    KIND_REQUEST,
    KIND_RESPONSE,
    NAK_SEQ,
    OVERHEAD,
    CobsDecodeError,
    Command,
    CrcMismatch,
    FrameReader,
    FrameTooLarge,
    FrameTooShort,
    Packet,
    Status,
    decode_frame,
    decode_packet,
    encode_frame,
    encode_packet,
    max_encoded_bytes,
)


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00" * 300, bytes(range(256)), b"\xff" * 256])
def test_round_trip(payload: bytes) -> None:
    frame = encode_frame(KIND_REQUEST, Command.PING, 0x1234, payload)
    assert frame.endswith(b"\x00") and b"\x00" not in frame[:-1]
    pkt = decode_frame(frame[:-1])
    assert pkt == Packet(KIND_REQUEST, Command.PING, 0x1234, payload)


def test_header_layout_is_little_endian_with_crc_over_header_and_payload() -> None:
    raw = encode_packet(KIND_RESPONSE, Status.OUT_OF_ORDER, 0x0102, b"ab")
    assert raw[:5] == bytes([2, 2, 8, 0x02, 0x01])  # version, kind, code, seq: a 5-byte header
    assert raw[5:7] == b"ab"
    assert struct.unpack("<I", raw[7:])[0] == zlib.crc32(raw[:7])
    assert len(raw) == OVERHEAD + 2 and OVERHEAD == 9


def test_random_round_trips() -> None:
    rng = random.Random(1)
    for _ in range(500):
        payload = rng.randbytes(rng.randrange(0, 300))
        seq = rng.randrange(0, 0x10000)
        pkt = Packet(rng.choice([KIND_REQUEST, KIND_RESPONSE]), rng.randrange(256), seq, payload)
        assert decode_frame(pkt.frame()[:-1], max_payload=300) == pkt


def test_nak() -> None:
    assert Packet(KIND_RESPONSE, Status.BAD_CRC, NAK_SEQ).is_nak
    assert not Packet(KIND_RESPONSE, Status.BAD_CRC, 7).is_nak
    assert not Packet(KIND_RESPONSE, Status.NO_MODEL, NAK_SEQ).is_nak


def test_not_cobs() -> None:
    with pytest.raises(CobsDecodeError):
        decode_frame(b"\x09abc")


def test_too_short() -> None:
    raw = encode_packet(KIND_REQUEST, Command.PING, 1)
    assert len(raw) == OVERHEAD
    decode_packet(raw)  # 9 bytes: the shortest packet
    with pytest.raises(FrameTooShort):
        decode_packet(raw[: OVERHEAD - 1])
    with pytest.raises(FrameTooShort):
        decode_frame(cobs.encode(b"\x01\x02"))


def test_truncated_frame() -> None:
    """The length is implied by the frame size: a frame that lost bytes fails its CRC, and one
    cut below 9 bytes whose 5-byte header survived is too short, with that header (BAD_LENGTH)."""
    raw = encode_packet(KIND_REQUEST, Command.PING, 1, b"abcd")
    for cut in range(1, 5):
        with pytest.raises(CrcMismatch) as info:
            decode_packet(raw[:-cut])
        assert info.value.header == (2, KIND_REQUEST, Command.PING, 1) and info.value.status == Status.BAD_CRC
    with pytest.raises(FrameTooShort) as short:
        decode_packet(raw[:8])
    assert short.value.header == (2, KIND_REQUEST, Command.PING, 1) and short.value.status == Status.BAD_LENGTH
    with pytest.raises(FrameTooShort) as unreadable:
        decode_packet(raw[:4])
    assert unreadable.value.header is None


def test_crc_mismatch_every_single_bit() -> None:
    raw = encode_packet(KIND_REQUEST, Command.LOAD_CHUNK, 9, b"\x00\x01\x02\x03payload")
    for bit in range(len(raw) * 8):
        bad = bytearray(raw)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CrcMismatch):  # no length field: every flip leaves the size intact
            decode_packet(bytes(bad))


def test_too_large_for_max_payload() -> None:
    raw = encode_packet(KIND_REQUEST, Command.PING, 1, b"x" * 65)
    with pytest.raises(FrameTooLarge) as info:
        decode_packet(raw, max_payload=64)
    assert info.value.status == Status.FRAME_TOO_LARGE
    decode_packet(raw, max_payload=65)
    with pytest.raises(FrameTooLarge):
        decode_frame(b"\x01" * (max_encoded_bytes(64) + 1), max_payload=64)


def test_other_version_decodes_so_the_board_can_answer_wrong_version() -> None:
    raw = encode_packet(KIND_REQUEST, Command.HELLO, 1, b"\x02", version=2)
    assert decode_packet(raw).version == 2


# -- FrameReader -------------------------------------------------------------------------


def test_reader_splits_a_stream_fed_byte_by_byte() -> None:
    frames = [encode_frame(KIND_REQUEST, Command.PING, i, bytes([i]) * i) for i in range(1, 6)]
    stream = b"".join(frames)
    reader = FrameReader(1000)
    got: list = []
    for b in stream:
        got += reader.feed(bytes([b]))
    assert [decode_frame(f).seq for f in got] == [1, 2, 3, 4, 5]
    assert reader.pending == 0


def test_reader_skips_empty_frames_and_keeps_partial() -> None:
    reader = FrameReader(100)
    assert reader.feed(b"\x00\x00\x00") == []
    assert reader.feed(b"\x02a") == []
    assert reader.pending == 2
    assert reader.feed(b"b\x00") == [b"\x02ab"]


def test_reader_discards_an_oversized_frame_up_to_the_next_delimiter() -> None:
    reader = FrameReader(10)
    good = encode_frame(KIND_REQUEST, Command.PING, 3)  # 10 bytes encoded: exactly max_encoded_bytes(0)
    reader2 = FrameReader(max_encoded_bytes(0))
    assert len(reader2.feed(good)) == 1 and isinstance(reader2.feed(good)[0], bytes)
    out = reader.feed(b"\x01" * 25)
    assert out == [] and reader.pending == 25
    out = reader.feed(b"\x01" * 5 + b"\x00" + b"\x03ab\x00")
    assert isinstance(out[0], FrameTooLarge) and out[1] == b"\x03ab"
    assert reader.discarded_frames == 1
    # the buffer never holds more than max_frame bytes
    reader.feed(b"\x05" * 10_000)
    assert len(reader._buf) <= 10


def test_reader_exact_bound_is_accepted() -> None:
    reader = FrameReader(4)
    assert reader.feed(b"\x05abcd"[:4] + b"\x00") == [b"\x05abc"]
    assert isinstance(reader.feed(b"abcde\x00")[0], FrameTooLarge)


def test_resync_after_garbage() -> None:
    reader = FrameReader.for_payload(64)
    good = encode_frame(KIND_RESPONSE, Status.OK, 5, b"hi")
    items = reader.feed(b"\x13\x37garbage" + b"\x00" + good)
    assert len(items) == 2
    with pytest.raises(CobsDecodeError):
        decode_frame(items[0])
    assert decode_frame(items[1]).payload == b"hi"
