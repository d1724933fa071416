"""Packets and frames of the wire protocol (``docs/protocol.md``), separate from any byte stream.

A *packet* is ``version, kind, code, seq (u16), payload, crc32 (u32)``, little endian, the
CRC-32 (``zlib.crc32``) covering everything before it. The payload's length is implied by the
packet's: ``len(packet) - 9``. A *frame* is the COBS encoding of a packet followed by one
``0x00`` delimiter.

Protocol v2 authenticates every request but HELLO and PING, and every answer to one, with
HMAC-SHA-256 under a per-session key (``docs/protocol.md``, "Authentication"): :class:`SessionMac`
computes the tags both ends check.

:class:`FrameReader` splits a byte stream at delimiters with a bounded buffer, in the spirit of
pyserial's ``serial.threaded.Packetizer`` but without a thread: feed it bytes, get frames (or a
:class:`FrameTooLarge` for a frame that outgrew the bound, whose bytes are discarded up to the
next delimiter). :func:`decode_frame` turns one frame into a :class:`Packet` or raises a typed
:class:`FrameError`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

from cobs import cobs

PROTOCOL_VERSION = 2
KIND_REQUEST = 0x01
KIND_RESPONSE = 0x02
HEADER = struct.Struct("<BBBH")  # version, kind, code, seq
HEADER_BYTES = HEADER.size  # 5
CRC_BYTES = 4
OVERHEAD = HEADER_BYTES + CRC_BYTES  # 9: the shortest packet
DELIMITER = b"\x00"
#: seq of a board's reply to a frame it could not accept (so the host retransmits at once).
NAK_SEQ = 0xFFFF
#: Largest payload before HELLO (HELLO and PING only).
PRE_HELLO_PAYLOAD = 64
#: The firmware's default max_payload (the whole payload: an authenticated request's counter and
#: tag included).
DEFAULT_MAX_PAYLOAD = 256

# -- authentication (protocol v2) ----------------------------------------------------------
#: An authenticated request's payload is ``counter u32 | body | tag``, a response's ``body | tag``.
COUNTER_BYTES = 4
TAG_BYTES = 16
#: Counter and tag: what an authenticated request's payload holds besides its body.
REQUEST_AUTH_BYTES = COUNTER_BYTES + TAG_BYTES
NONCE_BYTES = 16
DEVICE_ID_BYTES = 16
#: The update tag UPDATE_READ serves after the update image (a whole HMAC-SHA-256).
UPDATE_TAG_BYTES = 32
#: First byte of the MAC input: which direction the tagged packet travels.
TAG_REQUEST = 0x01
TAG_RESPONSE = 0x02
SESSION_LABEL = b"tinyfed-session-v2"
UPDATE_LABEL = b"tinyfed-update-v2"
#: HELLO's key_state byte.
KEY_STATE_KEYED = 1


class _CodeTable:
    """A table of wire codes: ``NAMES`` maps each code back to its constant's name, for logs and errors."""

    NAMES: ClassVar[dict[int, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.NAMES = {code: name for name, code in vars(cls).items() if name.isupper() and isinstance(code, int)}


class Command(_CodeTable):
    HELLO = 0x01
    PING = 0x02
    RESET = 0x03
    LOAD_BEGIN = 0x10
    LOAD_CHUNK = 0x11
    LOAD_COMMIT = 0x12
    INPUT_WRITE = 0x20
    INVOKE = 0x21
    OUTPUT_READ = 0x22
    BENCH = 0x30
    STATS = 0x31
    PROFILE = 0x32
    PROFILE_READ = 0x33
    KERNELS = 0x34
    TRAIN_SET = 0x40
    TRAIN = 0x41
    UPDATE_READ = 0x42
    EVALUATE = 0x43


class LoadTarget:
    """Which flash store a LOAD_BEGIN writes (its optional 9th byte)."""

    FRAGMENT = 0
    PROGRAM = 1
    DATA = 2


class Status(_CodeTable):
    OK = 0
    BAD_CRC = 1
    UNKNOWN_COMMAND = 2
    FRAGMENT_TOO_LARGE = 3
    OUT_OF_MEMORY = 4
    UNSUPPORTED_OP = 5
    WRONG_VERSION = 6
    BAD_LENGTH = 7
    OUT_OF_ORDER = 8
    NO_MODEL = 9
    BAD_MODEL = 10
    FRAME_TOO_LARGE = 11
    BUSY = 12
    NO_DATA = 13
    BAD_ARGUMENT = 14
    NO_UPDATE = 15
    AUTH = 16


class AuthDetail(_CodeTable):
    """The detail of an ``AUTH`` answer: why the board refused the request (it did not run it)."""

    NO_KEY = 1
    NO_SESSION = 2
    BAD_MAC = 3
    REPLAYED_COUNTER = 4
    TOO_SHORT = 5


#: The message of each AUTH answer (the firmware sends the same bytes).
AUTH_MESSAGES: dict[int, str] = {
    AuthDetail.NO_KEY: "no device key: provision this board",
    AuthDetail.NO_SESSION: "no session: say HELLO first",
    AuthDetail.BAD_MAC: "request tag does not verify",
    AuthDetail.REPLAYED_COUNTER: "counter not above the last one",
    AuthDetail.TOO_SHORT: "payload shorter than counter and tag",
}

#: Commands a board runs without authentication; every other one needs a session's tag.
UNAUTHENTICATED = frozenset({Command.HELLO, Command.PING})

#: Statuses a board sends with seq NAK_SEQ for a frame it dropped; the host retransmits at once.
NAK_STATUSES = frozenset({Status.BAD_CRC, Status.FRAME_TOO_LARGE, Status.BAD_LENGTH})


def command_name(code: int) -> str:
    return Command.NAMES.get(code, f"0x{code:02x}")


def status_name(code: int) -> str:
    return Status.NAMES.get(code, f"status {code}")


def session_key(key: bytes, device_id: bytes, host_nonce: bytes, board_nonce: bytes) -> bytes:
    """Ks = HMAC-SHA-256(K, "tinyfed-session-v2" || device_id || host_nonce || board_nonce)."""
    return hmac.digest(key, SESSION_LABEL + device_id + host_nonce + board_nonce, hashlib.sha256)


class SessionMac:
    """The tags of one session (key ``Ks``): the HMAC's keyed state is computed once and copied per
    packet, as the firmware does, so a tag costs only its message's blocks."""

    def __init__(self, session_key_: bytes) -> None:
        self._base = hmac.new(session_key_, digestmod=hashlib.sha256)

    def _tag(self, *parts: bytes) -> bytes:
        h = self._base.copy()
        for part in parts:
            h.update(part)
        return h.digest()

    def request_tag(self, header: bytes, counter: int, body: bytes) -> bytes:
        """Tag of a request: HMAC(Ks, 0x01 || header5 || counter_le || body)[:16]."""
        return self._tag(bytes([TAG_REQUEST]), header[:HEADER_BYTES], struct.pack("<I", counter), body)[:TAG_BYTES]

    def response_tag(self, header: bytes, counter: int, body: bytes) -> bytes:
        """Tag of a response: HMAC(Ks, 0x02 || header5 of the response || request's counter_le || body)[:16]."""
        return self._tag(bytes([TAG_RESPONSE]), header[:HEADER_BYTES], struct.pack("<I", counter), body)[:TAG_BYTES]

    def request_payload(self, code: int, seq: int, counter: int, body: bytes, *,
                        version: int = PROTOCOL_VERSION) -> bytes:
        """The payload of an authenticated request: ``counter u32 | body | tag``."""
        tag = self.request_tag(header_bytes(version, KIND_REQUEST, code, seq), counter, body)
        return struct.pack("<I", counter) + body + tag

    def update_tag(self, device_id: bytes, version: int, update: bytes) -> bytes:
        """The 32-byte tag binding an update image to the device and the model version it trained at."""
        return self._tag(UPDATE_LABEL, device_id, struct.pack("<I", version), update)


def header_bytes(version: int, kind: int, code: int, seq: int) -> bytes:
    """The 5 header bytes as on the wire (what the tags cover)."""
    return HEADER.pack(version, kind, code, seq)


# -- errors ------------------------------------------------------------------------------


class FrameError(ValueError):
    """A frame that must be dropped. ``header`` is the packet header when it was readable."""

    status = Status.BAD_CRC

    def __init__(self, message: str, header: tuple[int, ...] | None = None) -> None:
        super().__init__(message)
        self.header = header


class CobsDecodeError(FrameError):
    """The frame is not valid COBS."""


class FrameTooShort(FrameError):
    """Fewer than 9 bytes: no room for a header and a CRC (``header`` is set when 5-8 bytes
    hold a readable header; a board answers that with ``BAD_LENGTH``)."""

    status = Status.BAD_LENGTH


class FrameTooLarge(FrameError):
    """The frame is longer than ``max_payload + 9`` bytes."""

    status = Status.FRAME_TOO_LARGE


class CrcMismatch(FrameError):
    """The CRC-32 does not match."""


# -- packets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    kind: int
    code: int
    seq: int
    payload: bytes = b""
    version: int = PROTOCOL_VERSION

    @property
    def is_nak(self) -> bool:
        return self.kind == KIND_RESPONSE and self.seq == NAK_SEQ and self.code in NAK_STATUSES

    def encode(self) -> bytes:
        """The packet bytes (header, payload, CRC), not yet COBS-encoded."""
        return encode_packet(self.kind, self.code, self.seq, self.payload, version=self.version)

    def frame(self) -> bytes:
        """The frame on the wire: COBS(packet) + 0x00."""
        return cobs.encode(self.encode()) + DELIMITER


def encode_packet(kind: int, code: int, seq: int, payload: bytes = b"", *, version: int = PROTOCOL_VERSION) -> bytes:
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"seq {seq} out of range")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes is too long for a packet")
    body = HEADER.pack(version, kind, code, seq) + bytes(payload)
    return body + struct.pack("<I", zlib.crc32(body))


def encode_frame(kind: int, code: int, seq: int, payload: bytes = b"", *, version: int = PROTOCOL_VERSION) -> bytes:
    return cobs.encode(encode_packet(kind, code, seq, payload, version=version)) + DELIMITER


def max_packet_bytes(max_payload: int) -> int:
    return max_payload + OVERHEAD


def max_encoded_bytes(max_payload: int) -> int:
    """The longest COBS encoding (without delimiter) of a packet with ``max_payload`` bytes of payload."""
    n = max_packet_bytes(max_payload)
    return n + n // 254 + 1


def decode_packet(data: bytes, max_payload: int | None = None) -> Packet:
    """Check and unpack one packet (already COBS-decoded). Raises a :class:`FrameError`."""
    if len(data) < OVERHEAD:
        short_header = HEADER.unpack_from(data) if len(data) >= HEADER_BYTES else None
        raise FrameTooShort(f"frame of {len(data)} bytes is shorter than {OVERHEAD}", short_header)
    header = HEADER.unpack_from(data)
    version, kind, code, seq = header
    if max_payload is not None and len(data) > max_packet_bytes(max_payload):
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds max_payload {max_payload} + {OVERHEAD}", header)
    (crc,) = struct.unpack_from("<I", data, len(data) - CRC_BYTES)
    if crc != zlib.crc32(data[:-CRC_BYTES]):
        raise CrcMismatch("CRC-32 mismatch", header)
    return Packet(kind=kind, code=code, seq=seq, payload=bytes(data[HEADER_BYTES:-CRC_BYTES]), version=version)


def decode_frame(frame: bytes, max_payload: int | None = None) -> Packet:
    """Decode one frame (COBS bytes without the delimiter) into a checked :class:`Packet`."""
    if max_payload is not None and len(frame) > max_encoded_bytes(max_payload):
        raise FrameTooLarge(f"frame of {len(frame)} encoded bytes exceeds the bound for max_payload {max_payload}")
    try:
        data = cobs.decode(frame)
    except cobs.DecodeError as exc:
        raise CobsDecodeError(f"not COBS: {exc}") from None
    return decode_packet(data, max_payload)


class FrameReader:
    """Split a byte stream into frames at 0x00 delimiters, with a bounded buffer.

    :meth:`feed` returns, in order, one item per delimiter that ended a non-empty frame: the
    frame's bytes (COBS, without the delimiter), or a :class:`FrameTooLarge` instance when the
    frame grew past ``max_frame`` encoded bytes (its bytes were discarded up to the delimiter).
    Empty frames (consecutive delimiters) are skipped.
    """

    def __init__(self, max_frame: int) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._overflow = 0  # bytes discarded of the current oversized frame
        self.discarded_frames = 0

    @classmethod
    def for_payload(cls, max_payload: int) -> FrameReader:
        return cls(max_encoded_bytes(max_payload))

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held (or discarded) so far."""
        return len(self._buf) + self._overflow

    def reset(self) -> None:
        self._buf.clear()
        self._overflow = 0

    def feed(self, data: bytes) -> list[bytes | FrameTooLarge]:
        out: list[bytes | FrameTooLarge] = []
        start = 0
        n = len(data)
        while start < n:
            end = data.find(0, start)
            piece = data[start:] if end < 0 else data[start:end]
            self._take(piece)
            if end < 0:
                break
            if self._overflow:
                out.append(FrameTooLarge(f"frame of at least {self._overflow + len(self._buf)} encoded bytes exceeds "
                                         f"{self.max_frame}"))
                self.discarded_frames += 1
            elif self._buf:
                out.append(bytes(self._buf))
            self.reset()
            start = end + 1
        return out

    def _take(self, piece: bytes) -> None:
        if self._overflow:
            self._overflow += len(piece)
            return
        room = self.max_frame - len(self._buf)
        if len(piece) <= room:
            self._buf += piece
        else:
            self._overflow = len(self._buf) + len(piece)
            self._buf.clear()
