"""The host end of the link: :class:`BoardClient` speaks protocol v2 to one board.

Stop-and-wait with retransmission: each request waits for the response with its ``seq``; on a
timeout (monotonic clock; ``timeout`` plus the request's wire time, doubled per retry) or a NAK
(a BAD_CRC/FRAME_TOO_LARGE/BAD_LENGTH response with seq 0xFFFF) the same packet is sent again,
at most ``retries`` times. The board replays its stored response for a repeated seq, so a lost
response never applies a command twice. Every failure is a typed
:class:`~tinyfed.firmware_bridge.link.errors.LinkError` naming the device and the command.

Authentication (``docs/protocol.md``, "Authentication"): HELLO sends a fresh host nonce; the board
answers with its device id and a nonce; the client looks the id up in its :class:`KeyStore`
(unknown: :class:`UnknownDevice`; a keyless board: ``AuthenticationFailed("no_key")``), derives the
session key and confirms the session with one authenticated request before it trusts the board.
Every other request then carries a counter and a tag, and a response whose tag is wrong is dropped
(``LinkStats.bad_macs``) while the client waits on for the authentic one.

    with BoardClient("sim://nrf52840") as board:
        info = board.hello()
        board.load_fragment(blob)
        y = board.infer(x_int8)
"""

from __future__ import annotations

import hmac
import logging
import os
import random
import statistics
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Self, TypeVar

import numpy as np
from serial.serialutil import SerialException

from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.link.errors import (
    MODEL_VERSION_COMMANDS,
    AuthenticationFailed,
    DeviceError,
    DeviceUnreachable,
    LinkTimeout,
    ProtocolError,
    ProtocolVersionMismatch,
    UnknownDevice,
)
from tinyfed.firmware_bridge.link.framing import (
    DELIMITER,
    DEVICE_ID_BYTES,
    KEY_STATE_KEYED,
    KIND_REQUEST,
    KIND_RESPONSE,
    NONCE_BYTES,
    PRE_HELLO_PAYLOAD,
    PROTOCOL_VERSION,
    REQUEST_AUTH_BYTES,
    TAG_BYTES,
    UNAUTHENTICATED,
    UPDATE_TAG_BYTES,
    AuthDetail,
    Command,
    FrameError,
    FrameReader,
    FrameTooLarge,
    LoadTarget,
    Packet,
    SessionMac,
    Status,
    command_name,
    decode_frame,
    encode_frame,
    header_bytes,
    session_key,
)
from tinyfed.firmware_bridge.link.keys import KeyStore
from tinyfed.firmware_bridge.link.profile_link import (
    MODE_FAST,
    MODE_REFERENCE,
    OP_BYTES,
    KernelInfo,
    ProfileRun,
    unpack_ops,
)
from tinyfed.firmware_bridge.link.train_link import (
    EVALUATE_RESPONSE,
    STATS_RESPONSE,
    TRAIN_HEAD_CYCLES,
    TRAIN_RESPONSE,
    UPDATE_FLAG_FLOAT,
    UPDATE_HEADER,
    DeviceUpdate,
    EvalReport,
    RamStats,
    TrainParams,
    TrainReport,
    unpack_update,
)
from tinyfed.firmware_bridge.link.transport import DEFAULT_BAUD, SerialSettings, open_port
from tinyfed.firmware_bridge.link.window import Piece, SendWindow

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_U32 = struct.Struct("<I")
_HELLO = struct.Struct("<BBHIIII")
#: Bound on a response frame before HELLO says the board's max_payload (HELLO itself can carry
#: two 255-byte strings).
_RX_MIN_PAYLOAD = 600
_TIMEOUT, _NAK = "timeout", "nak"
#: What HELLO v2 appends after the v1 fields: device_id, board_nonce, key_state.
_HELLO_AUTH_BYTES = DEVICE_ID_BYTES + NONCE_BYTES + 1
#: The AUTH details after which the client says HELLO again (once) and resends: the board lost
#: its session (reset) or holds another one (someone else said HELLO).
_REHELLO_DETAILS = frozenset({AuthDetail.NO_SESSION, AuthDetail.BAD_MAC})
#: A windowed piece sent this many times without an answer goes stop-and-wait (see _Pipeline) ...
_SOLO_AFTER = 2
#: ... and once at least this many such pieces are over half of those done, the link does.
_COLLAPSE_AFTER = 3


class _Refused(Exception):
    """An AUTH answer (untagged, a hint): the board did not run the request."""

    def __init__(self, detail: int, message: str) -> None:
        super().__init__(message)
        self.detail = detail
        self.message = message


@dataclass(frozen=True)
class HelloInfo:
    """What a board says about itself in HELLO."""

    protocol_version: int
    max_payload: int
    fragment_slot_bytes: int
    arena_bytes: int
    firmware_ram_bytes: int
    firmware_flash_bytes: int
    board_id: str
    build: str
    program_store_bytes: int = 0  # training-program flash store (0: firmware cannot train)
    data_store_bytes: int = 0  # local-data flash store
    device_id: bytes = bytes(DEVICE_ID_BYTES)  # public: the key store's index (all zeros: no key)
    keyed: bool = False  # the board holds a device key (never the key itself)
    #: request frames the host may keep in flight (HELLO's second byte; 0: older firmware, stop-and-wait)
    window: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["device_id"] = self.device_id.hex()
        return d

    @classmethod
    def parse(cls, p: bytes) -> HelloInfo:
        if len(p) < _HELLO.size + 2:
            raise ValueError(f"HELLO response of {len(p)} bytes is too short")
        version, window, max_payload, slot, arena, ram, flash = _HELLO.unpack_from(p)
        at = _HELLO.size
        n = p[at]
        board_id = p[at + 1:at + 1 + n]
        at += 1 + n
        if len(board_id) != n or at >= len(p):
            raise ValueError("HELLO response truncated in board_id")
        m = p[at]
        build = p[at + 1:at + 1 + m]
        end = at + 1 + m
        if len(build) != m or len(p) != end + 8 + _HELLO_AUTH_BYTES:
            raise ValueError(f"HELLO response of {len(p)} bytes has a wrong length for protocol v{PROTOCOL_VERSION}")
        program_store, data_store = struct.unpack_from("<II", p, end)
        device_id = p[end + 8:end + 8 + DEVICE_ID_BYTES]
        return cls(version, max_payload, slot, arena, ram, flash, board_id.decode("ascii", "replace"),
                   build.decode("ascii", "replace"), program_store, data_store, bytes(device_id),
                   p[-1] == KEY_STATE_KEYED, window)

    @property
    def request_room(self) -> int:
        """The largest body of an authenticated request (max_payload less counter and tag)."""
        return self.max_payload - REQUEST_AUTH_BYTES

    @property
    def response_room(self) -> int:
        """The largest body of an authenticated response (max_payload less the tag)."""
        return self.max_payload - TAG_BYTES


@dataclass(frozen=True)
class LoadResult:
    size: int
    crc32: int
    resumed_from: int
    arena_bytes: int
    op_count: int
    chunks: int


@dataclass
class LinkStats:
    """Counters of one client's link: what went wrong and how it was recovered."""

    requests: int = 0
    sent_frames: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    naks: int = 0
    bad_frames: int = 0
    stray_responses: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    #: responses dropped because their tag did not verify (an injected or altered frame)
    bad_macs: int = 0
    #: AUTH answers (the board refused a request) and the HELLOs said again after one
    auth_refusals: int = 0
    #: requests sent by a windowed transfer (several in flight; their resends count in retransmissions)
    windowed_requests: int = 0
    #: windowed requests found lost (no answer, or a NAK or a later answer came first) and sent again;
    #: those a later cumulative ack proved held are not resent
    gaps_resent: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class BenchResult:
    rtt_min_s: float
    rtt_median_s: float
    echo_payload: int
    echo_bytes_per_s: float
    samples: int
    stats: dict[str, int] = field(default_factory=dict)


class BoardClient:
    """A connection to one board at a pyserial URL (tty, ``socket://``, ``sim://``).

    ``port`` lets a caller hand in an already open pyserial-like object (tests wrap one in a
    fault injector); ``clock`` overrides the monotonic clock (a ``sim://`` port supplies its own
    virtual clock, so timeouts cost no real time). ``key_store`` holds the boards' keys (None: the
    default store, ``$TINYFED_KEY_STORE``). ``serial``: a tty's settings (``transport.serial_settings(board)``
    from the board profile; default ``baudrate`` 8N1), whose baud also times the requests. ``window``
    bounds the request frames a windowed transfer keeps in flight (uploads, w*, inputs, update and
    output reads): None uses what the board announces in HELLO, 1 is stop-and-wait (as against a
    board that announces none).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        retries: int = 5,
        name: str | None = None,
        port: Any = None,
        baudrate: int = DEFAULT_BAUD,
        clock: Callable[[], float] | None = None,
        key_store: KeyStore | None = None,
        serial: SerialSettings | None = None,
        window: int | None = None,
    ) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        if window is not None and not 1 <= window <= 255:
            raise ValueError(f"window must be 1 (stop-and-wait) .. 255, or None for the board's own; got {window}")
        self.window = window
        self._collapsed = False  # a windowed transfer fell back to stop-and-wait: so do the next ones
        self.url = url
        self.name = name or url
        self.timeout = timeout
        self.retries = retries
        self.serial = serial if serial is not None else SerialSettings(baudrate=baudrate)
        self.baudrate = self.serial.baudrate
        self.stats = LinkStats()
        self.info: HelloInfo | None = None
        self.last_cycles: int | None = None
        self._port = port
        self._own_port = port is None
        self._clock_override = clock
        self._clock: Callable[[], float] = time.monotonic
        self._reader = FrameReader.for_payload(_RX_MIN_PAYLOAD)
        self._frames: deque[bytes | FrameTooLarge] = deque()
        self._seq = random.SystemRandom().randrange(0, 0xFFFF)
        self.key_store = key_store if key_store is not None else KeyStore()
        self._session: SessionMac | None = None
        self._counter = 0
        self._weights_version: int | None = None
        self._train_session: SessionMac | None = None  # the session TRAIN ran in (its update tag's key)
        if port is not None:
            self._attach(port)

    # -- connection ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._port is not None and bool(getattr(self._port, "is_open", True))

    def open(self) -> BoardClient:
        if self._port is None:
            self._attach(open_port(self.url, timeout=self.timeout, name=self.name, settings=self.serial))
            self._own_port = True
        return self

    def _attach(self, port: Any) -> None:
        self._port = port
        self._clock = self._clock_override or getattr(port, "tinyfed_clock", None) or time.monotonic
        self._reader.reset()
        self._frames.clear()
        # An empty frame ends whatever partial frame the board may hold from an earlier session.
        self._write(DELIMITER, "open")

    def close(self) -> None:
        self._session = None
        port, self._port = self._port, None
        if port is not None and self._own_port:
            try:
                port.close()
            except (SerialException, OSError):
                pass

    def reconnect(self) -> HelloInfo:
        """Close and reopen the port (after the link went away), then HELLO again."""
        self.close()
        self.info = None
        self.open()
        return self.hello()

    # -- commands ------------------------------------------------------------------------

    def hello(self) -> HelloInfo:
        """Say HELLO, look the board up in the key store and open an authenticated session.

        Refuses a board of another protocol version (:class:`ProtocolVersionMismatch`), one the key
        store does not know (:class:`UnknownDevice`), a keyless one (``AuthenticationFailed("no_key")``)
        and one that cannot prove it holds the key (``AuthenticationFailed("bad_mac")``)."""
        self._session = None
        self.info = None
        self._collapsed = False
        host_nonce = os.urandom(NONCE_BYTES)
        p = self.request(Command.HELLO, bytes([PROTOCOL_VERSION]) + host_nonce)
        try:
            info = HelloInfo.parse(p)
        except ValueError as exc:
            if len(p) >= 1 and p[0] != PROTOCOL_VERSION:
                raise ProtocolVersionMismatch(device=self.name, board_version=p[0],
                                              host_version=PROTOCOL_VERSION) from None
            raise ProtocolError(str(exc), device=self.name, command="HELLO",
                                fix="flash the firmware of this tinyfed version") from None
        if info.protocol_version != PROTOCOL_VERSION:
            raise ProtocolVersionMismatch(device=self.name, board_version=info.protocol_version,
                                          host_version=PROTOCOL_VERSION)
        if info.max_payload < REQUEST_AUTH_BYTES + 16:
            raise ProtocolError(f"board announces max_payload {info.max_payload}", device=self.name,
                                command="HELLO", fix="flash the firmware of this tinyfed version")
        if not info.keyed:
            raise AuthenticationFailed("no_key", "the board holds no device key", device=self.name, command="HELLO")
        device = self.key_store.lookup(info.device_id)
        if device is None:
            raise UnknownDevice(info.device_id.hex(), device=self.name, key_store=str(self.key_store.path))
        board_nonce = p[-1 - NONCE_BYTES:-1]
        self._session = SessionMac(session_key(device.key, device.device_id, host_nonce, board_nonce))
        self._counter = 0
        self.info = info
        self._reader.max_frame = FrameReader.for_payload(max(info.max_payload, _RX_MIN_PAYLOAD)).max_frame
        try:
            # One authenticated exchange before anything is trusted: a board that does not hold the
            # key (a program answering HELLO with a known id) fails here.
            self._authenticated(Command.STATS, b"", None, None)
        except _Refused as refused:
            self._session, self.info = None, None
            raise self._auth_error(refused, Command.STATS) from None
        except BaseException:
            self._session, self.info = None, None
            raise
        log.debug("%s: hello %s (device %s, session confirmed)", self.name, info.board_id, info.device_id.hex())
        return info

    def ping(self, payload: bytes = b"") -> float:
        """Echo ``payload``; return the round-trip time in seconds (retransmissions included)."""
        limit = self.info.max_payload if self.info else PRE_HELLO_PAYLOAD
        if len(payload) > limit:
            raise TinyfedError(f"PING payload of {len(payload)} bytes exceeds {limit}",
                               fix="HELLO first, or send a shorter payload", source=self.name)
        start = time.perf_counter()
        echo = self.request(Command.PING, payload)
        rtt = time.perf_counter() - start
        if echo != payload:
            raise ProtocolError("PING echo differs from what was sent", device=self.name, command="PING")
        return rtt

    def reset(self) -> None:
        """Reset the board (all its state is lost); HELLO again before large requests."""
        self.request(Command.RESET, b"")
        self.info = None
        self._session = None  # the board restarts without a session

    def load_fragment(self, blob: bytes, progress: Callable[[int, int], None] | None = None) -> LoadResult:
        """Upload ``blob`` in chunks and commit it; resumes a transfer the board already holds part of.

        Until the commit succeeds, the board's previous fragment stays active.
        """
        return self._load(blob, LoadTarget.FRAGMENT, progress)

    def load_program(self, program: bytes, progress: Callable[[int, int], None] | None = None) -> LoadResult:
        """Upload a TFTR training program (``train_blob.compile_program``); w* is then at version 0.

        ``arena_bytes`` of the result is the RAM the training state takes on the board."""
        return self._load(program, LoadTarget.PROGRAM, progress)

    def load_data(self, image: bytes, progress: Callable[[int, int], None] | None = None) -> LoadResult:
        """Provision the board's local data (a TFDS image, ``local_data.pack``), once per board.

        ``arena_bytes`` of the result is the sample count the board accepted."""
        return self._load(image, LoadTarget.DATA, progress)

    def _load(self, blob: bytes, target: int, progress: Callable[[int, int], None] | None) -> LoadResult:
        info = self.info or self.hello()
        blob = bytes(blob)
        size, crc = len(blob), zlib.crc32(blob)
        offset = resumed_from = self._begin(size, crc, target)
        window = self.transfer_window
        chunk = info.request_room - 4
        if window > 1:
            chunk &= ~3  # a chunk past a gap goes to flash as it is: whole words
        chunks = 0
        restarts = 0
        if progress:
            progress(offset, size)
        while offset < size:
            pieces = [Piece(_U32.pack(a) + blob[a:a + chunk], a, min(a + chunk, size))
                      for a in range(offset, size, chunk)]
            try:
                self._windowed(Command.LOAD_CHUNK, pieces, self._cumulative_ack(size, "LOAD_CHUNK"), window,
                               on_ack=(lambda ack: progress(ack, size)) if progress else None)
            except DeviceError as exc:
                if exc.status != Status.OUT_OF_ORDER or restarts >= 3:
                    raise
                restarts += 1  # the board lost the transfer or holds another offset: ask it where to go on
                offset = self._begin(size, crc, target)
                continue
            chunks += len(pieces)
            offset = size
        p = self.request(Command.LOAD_COMMIT, b"")
        if len(p) != 8:
            raise ProtocolError(f"LOAD_COMMIT response of {len(p)} bytes", device=self.name, command="LOAD_COMMIT")
        arena, ops, _ = struct.unpack("<IHH", p)
        if target != LoadTarget.DATA:
            self._weights_version = 0  # a new fragment or program puts w* back at version 0
        log.info("%s: loaded %d bytes (resumed at %d) in %d chunks, window %d", self.name, size, resumed_from,
                 chunks, window)
        return LoadResult(size, crc, resumed_from, arena, ops, chunks)

    def _begin(self, size: int, crc: int, target: int) -> int:
        payload = struct.pack("<II", size, crc) + (bytes([target]) if target != LoadTarget.FRAGMENT else b"")
        offset = self._u32(self.request(Command.LOAD_BEGIN, payload), "LOAD_BEGIN")
        if offset > size:
            raise ProtocolError(f"resume offset {offset} beyond size {size}", device=self.name, command="LOAD_BEGIN")
        return offset

    def _read_rest(self, code: int, have: bytes, total: int) -> bytes:
        """A board-side buffer of ``total`` bytes, of which ``have`` arrived already, read on with
        ``code`` (OUTPUT_READ, UPDATE_READ: ``u32 offset, u16 length``) in max_payload pieces, with
        the board's window of requests in flight."""
        info = self.info or self.hello()
        cmd = command_name(code)
        room = info.response_room
        pieces = [Piece(struct.pack("<IH", a, min(room, total - a)), a, min(a + room, total))
                  for a in range(len(have), total, room)]

        def accept(piece: Piece, part: bytes) -> int | None:
            if len(part) != piece.end - piece.start:
                raise ProtocolError(f"{cmd} returned {len(part)} bytes, asked {piece.end - piece.start}",
                                    device=self.name, command=cmd)
            piece.reply = part
            return None

        self._windowed(code, pieces, accept, self.transfer_window)
        return bytes(have) + b"".join(piece.reply or b"" for piece in pieces)

    # -- local training (docs/protocol.md, "Training") ----------------------------------

    def set_weights(self, version: int, values: np.ndarray) -> None:
        """Send w* (float32, trainable.tfw order) as model ``version``; the board trains from it."""
        info = self.info or self.hello()
        v = np.ascontiguousarray(values, dtype="<f4").ravel()
        if not np.all(np.isfinite(v)):
            raise TinyfedError("w* holds NaN or infinite values", fix="check the global model", source=self.name)
        per = (info.request_room - 8) // 4
        self._weights_version = None
        total = v.size
        # The first chunk alone (offset 0 starts the version on the board), then the rest windowed.
        first = v[:per]
        nxt = self._u32(self.request(Command.TRAIN_SET, struct.pack("<II", version, 0) + first.tobytes()),
                        "TRAIN_SET")
        if nxt != first.size:
            raise ProtocolError(f"board acknowledged value {nxt}, expected {first.size}", device=self.name,
                                command="TRAIN_SET")
        pieces = [Piece(struct.pack("<II", version, a) + v[a:a + per].tobytes(), a, min(a + per, total))
                  for a in range(first.size, total, per)]
        self._windowed(Command.TRAIN_SET, pieces, self._cumulative_ack(total, "TRAIN_SET"), self.transfer_window)
        self._weights_version = version  # what the update tag must bind

    def train(self, params: TrainParams, *, timeout: float = 600.0) -> TrainReport:
        """Run local SGD on the board's own data (blocks for the run; ``timeout`` bounds it, a lost or
        corrupted request's retransmissions included)."""
        p = self.request(Command.TRAIN, params.pack(), timeout=timeout, total=timeout)
        self._train_session = self._session
        if len(p) not in (TRAIN_RESPONSE.size, TRAIN_RESPONSE.size + TRAIN_HEAD_CYCLES.size):
            raise ProtocolError(f"TRAIN response of {len(p)} bytes", device=self.name, command="TRAIN")
        return TrainReport.unpack(p)

    def read_update(self, size: int | None = None, *, values: int | None = None,
                    version: int | None = None) -> DeviceUpdate:
        """Fetch the update of the last TRAIN (``size``: its image bytes, from TrainReport) and check
        its tag: it must bind this board's device id and ``version`` (default: the version the last
        :meth:`set_weights` sent), else ``AuthenticationFailed`` (``bad_update_mac``, or
        ``wrong_version`` when it binds another version).

        ``values`` is how many the host expects (the w* it sent): a header claiming more is refused
        before anything more is read, so a board cannot make the host read gigabytes (fewer values
        are read, and the update check rejects them as ``bad_shape``)."""
        head = self.request(Command.UPDATE_READ, struct.pack("<IH", 0, UPDATE_HEADER.size))
        if len(head) != UPDATE_HEADER.size:
            raise ProtocolError(f"UPDATE_READ returned {len(head)} bytes", device=self.name, command="UPDATE_READ")
        claimed_version, _, _, _, elements, n_scales, flags = UPDATE_HEADER.unpack(head)
        if values is not None and (elements > values or n_scales > max(values, 1)):
            raise ProtocolError(f"the update claims {elements:,} values and {n_scales:,} scales; the board trains "
                                f"{values:,}", device=self.name, command="UPDATE_READ")
        total = UPDATE_HEADER.size + 4 * n_scales + (4 if flags & UPDATE_FLAG_FLOAT else 1) * elements
        if size is not None and size != total:
            raise ProtocolError(f"update image is {total} bytes, TRAIN said {size}", device=self.name,
                                command="UPDATE_READ")
        tagged = self._read_rest(Command.UPDATE_READ, head, total + UPDATE_TAG_BYTES)
        image, tag = tagged[:total], tagged[total:]
        expected = version if version is not None else self._weights_version
        self._check_update_tag(image, tag, claimed_version if expected is None else expected, claimed_version)
        return unpack_update(image)

    def _check_update_tag(self, image: bytes, tag: bytes, version: int, claimed_version: int) -> None:
        mac = self._train_session or self._session
        if mac is None or self.info is None:
            raise AuthenticationFailed("bad_update_mac", "no session to check the update's tag with",
                                       device=self.name, command="UPDATE_READ")
        device_id = self.info.device_id
        if hmac.compare_digest(mac.update_tag(device_id, version, image), tag):
            return
        if claimed_version != version and hmac.compare_digest(mac.update_tag(device_id, claimed_version, image), tag):
            raise AuthenticationFailed("wrong_version", f"the update is bound to model version {claimed_version}, "
                                       f"not {version}", device=self.name, command="UPDATE_READ")
        raise AuthenticationFailed("bad_update_mac", f"the update's tag does not bind device {device_id.hex()} "
                                   f"at model version {version}", device=self.name, command="UPDATE_READ")

    def evaluate(self, max_samples: int = 0, *, timeout: float = 600.0) -> EvalReport:
        """Local loss and accuracy of the current w* on the board's own data."""
        p = self.request(Command.EVALUATE, _U32.pack(max_samples), timeout=timeout, total=timeout)
        if len(p) != EVALUATE_RESPONSE.size:
            raise ProtocolError(f"EVALUATE response of {len(p)} bytes", device=self.name, command="EVALUATE")
        return EvalReport.unpack(p)

    def ram_stats(self) -> RamStats:
        """RAM high-water marks since reset (stack and arena paint)."""
        p = self.request(Command.STATS, b"")
        if len(p) != STATS_RESPONSE.size:
            raise ProtocolError(f"STATS response of {len(p)} bytes", device=self.name, command="STATS")
        return RamStats.unpack(p)

    def infer(self, x_int8: np.ndarray) -> np.ndarray:
        """Run the loaded fragment on one int8 input; return its int8 output (flat)."""
        x = np.asarray(x_int8)
        if x.dtype != np.int8:
            raise TinyfedError(f"infer needs an int8 array, got {x.dtype}", fix="quantize the input first",
                               source=self.name)
        self._write_input(x)
        p = self.request(Command.INVOKE, b"")
        if len(p) < 8:
            raise ProtocolError(f"INVOKE response of {len(p)} bytes", device=self.name, command="INVOKE")
        cycles, out_size = struct.unpack_from("<II", p)
        self._check_output_size(out_size, "INVOKE")
        out = self._read_rest(Command.OUTPUT_READ, p[8:8 + out_size], out_size)
        self.last_cycles = cycles
        return np.frombuffer(out, dtype=np.int8).copy()

    def _check_output_size(self, out_size: int, cmd: str) -> None:
        """The output lives in the board's arena: a claim of more is a lie, refused before a byte of it is read."""
        limit = self.info.arena_bytes if self.info is not None else 1 << 20
        if out_size > limit:
            raise ProtocolError(f"{cmd} claims a {out_size:,}-byte output, more than the board's "
                                f"{limit:,}-byte arena", device=self.name, command=cmd)

    def _write_input(self, x: np.ndarray) -> None:
        """INPUT_WRITE ``x`` (int8) in max_payload pieces."""
        info = self.info or self.hello()
        data = x.tobytes()
        chunk = info.request_room - 4
        pieces = [Piece(_U32.pack(a) + data[a:a + chunk], a, min(a + chunk, len(data)))
                  for a in range(0, len(data), chunk)]

        def accept(piece: Piece, p: bytes) -> int | None:
            nxt = self._u32(p, "INPUT_WRITE")
            if nxt != piece.end:
                raise ProtocolError(f"board acknowledged input offset {nxt}, expected {piece.end}",
                                    device=self.name, command="INPUT_WRITE")
            return None

        self._windowed(Command.INPUT_WRITE, pieces, accept, self.transfer_window)

    # -- profiling (docs/protocol.md, "Profiling") --------------------------------------

    def kernels(self, reference: bool | None = None) -> KernelInfo:
        """The image's optimised kernel path and the engine's mode; ``reference`` True/False
        switches every later run (INVOKE, TRAIN, EVALUATE) to the plain-C / optimised kernels."""
        payload = b"" if reference is None else bytes([MODE_REFERENCE if reference else MODE_FAST])
        p = self.request(Command.KERNELS, payload)
        try:
            return KernelInfo.unpack(p)
        except ValueError as exc:
            raise ProtocolError(str(exc), device=self.name, command="KERNELS") from None

    def profile(self, x_int8: np.ndarray, *, reference: bool | None = None, timeout: float = 120.0) -> ProfileRun:
        """Run the loaded fragment once on ``x_int8`` with every op timed; ``reference`` picks the
        kernels for this run only (None: the engine's current mode). The output comes back too,
        so two runs can be compared bit for bit."""
        x = np.asarray(x_int8)
        if x.dtype != np.int8:
            raise TinyfedError(f"profile needs an int8 array, got {x.dtype}", fix="quantize the input first",
                               source=self.name)
        info = self.info or self.hello()
        self._write_input(x)
        payload = b"" if reference is None else bytes([MODE_REFERENCE if reference else MODE_FAST])
        try:
            run = ProfileRun.unpack(self.request(Command.PROFILE, payload, timeout=timeout))
        except ValueError as exc:
            raise ProtocolError(str(exc), device=self.name, command="PROFILE") from None
        per = max(1, info.response_room // OP_BYTES)
        ops = []
        for first in range(0, len(run.ops), per):
            count = min(per, len(run.ops) - first)
            p = self.request(Command.PROFILE_READ, struct.pack("<HH", first, count))
            if len(p) != count * OP_BYTES:
                raise ProtocolError(f"PROFILE_READ returned {len(p)} bytes for {count} ops", device=self.name,
                                    command="PROFILE_READ")
            ops += unpack_ops(p, first)
        run.ops = ops
        self._check_output_size(run.output_bytes, "PROFILE")
        run.output = self._read_rest(Command.OUTPUT_READ, b"", run.output_bytes)
        self.last_cycles = run.cycles
        return run

    def bench(self, samples: int = 50) -> BenchResult:
        """Round-trip time of empty PINGs and echo throughput of full-size PINGs."""
        info = self.info or self.hello()
        before = self.stats.to_dict()
        rtts = [self.ping(b"") for _ in range(samples)]
        payload = bytes(random.Random(0).randbytes(info.max_payload))
        start = time.perf_counter()
        for _ in range(samples):
            self.ping(payload)
        elapsed = time.perf_counter() - start
        after = self.stats.to_dict()
        return BenchResult(
            rtt_min_s=min(rtts),
            rtt_median_s=statistics.median(rtts),
            echo_payload=len(payload),
            echo_bytes_per_s=2 * len(payload) * samples / elapsed if elapsed > 0 else float("inf"),
            samples=samples,
            stats={k: after[k] - before[k] for k in after},
        )

    # -- windowed transfers (docs/protocol.md, "Windowed transfers") ----------------------

    @property
    def transfer_window(self) -> int:
        """Request frames a transfer keeps in flight: the board's announced window, capped by
        ``window`` (1 = stop-and-wait, also against a board that announces none); 1 as well, until
        the next HELLO, after a transfer on this link collapsed to stop-and-wait (see _Pipeline)."""
        announced = self.info.window if self.info is not None else 0
        if announced < 2 or self._collapsed:
            return 1
        return announced if self.window is None else min(self.window, announced)

    def _cumulative_ack(self, total: int, cmd: str) -> Callable[[Piece, bytes], int | None]:
        """The check of a write whose OK answer is the board's cumulative ack (u32): at or past the
        piece's end, or, for a piece held past a gap, at or before its start."""
        def accept(piece: Piece, p: bytes) -> int | None:
            ack = self._u32(p, cmd)
            if ack > total or piece.start < ack < piece.end:
                raise ProtocolError(f"board acknowledged {ack} for the piece [{piece.start}, {piece.end}) of "
                                    f"{total}", device=self.name, command=cmd)
            return ack
        return accept

    def _windowed(self, code: int, pieces: list[Piece], accept: Callable[[Piece, bytes], int | None], window: int,
                  on_ack: Callable[[int], None] | None = None) -> None:
        """Run ``pieces`` (requests of one offset-addressed command) to completion: one at a time when
        ``window`` is 1, else up to ``window`` in flight. ``accept`` checks a piece's OK answer and
        returns the cumulative ack it carries (None for a command without one); ``on_ack`` hears
        every advance of it."""
        if not pieces:
            return
        sw = SendWindow(pieces, window)
        if window <= 1:
            for piece in pieces:
                if piece.done:
                    continue  # a cumulative ack already covered it
                piece.sends += 1
                ack = accept(piece, self.request(code, piece.body))
                piece.done = True
                if ack is not None:
                    before = sw.acked
                    sw.cumulative(ack)
                    if on_ack is not None and sw.acked > before:
                        on_ack(sw.acked)
            return
        self._in_session(code, lambda: self._pipeline(code, sw, accept, on_ack))

    def _pipeline(self, code: int, sw: SendWindow, accept: Callable[[Piece, bytes], int | None],
                  on_ack: Callable[[int], None] | None) -> None:
        """Selective repeat over the board's in-order processing (:class:`_Pipeline`)."""
        session = self._session
        if session is None or self._port is None:
            raise DeviceUnreachable("the port is not open", device=self.name, command=command_name(code),
                                    fix="use the client as a context manager or call open()")
        room = self.info.request_room if self.info else PRE_HELLO_PAYLOAD
        longest = max(len(piece.body) for piece in sw.pieces)
        if longest > room:
            raise ValueError(f"{command_name(code)} body of {longest} bytes exceeds the board's {room}")
        _Pipeline(self, code, session, sw, accept, on_ack, longest).run()

    def _quiet(self, seconds: float, cmd: str) -> None:
        """Drop what the board still sends (answers and NAKs of requests given up on) until the line
        has been silent for ``seconds`` (at most 20 such periods), so that none of it is taken for
        the answer, or a NAK, of the stop-and-wait request that follows."""
        dropped = len(self._frames)
        self._frames.clear()
        for _ in range(20):
            data = self._read(seconds, cmd)
            if not data:
                break
            dropped += len(self._reader.feed(data))
        self.stats.stray_responses += dropped

    def _await_any(self, flight: dict[int, tuple[int, int]], deadline: float, cmd: str,
                   session: SessionMac) -> Packet | str | None:
        """The next authentic answer to a windowed request in flight (seq -> (piece, counter)), or _NAK,
        or None at the deadline. Answers to anything else (a duplicate, a piece already resent) are strays."""
        outcome = self._await_answer({seq: counter for seq, (_, counter) in flight.items()}, deadline, cmd, session)
        return None if outcome == _TIMEOUT else outcome

    # -- the exchange --------------------------------------------------------------------

    def request(self, code: int, payload: bytes = b"", *, timeout: float | None = None,
                total: float | None = None) -> bytes:
        """Send one request and return the payload of its OK response (retransmitting as needed).

        ``timeout`` replaces the client's timeout for this request (TRAIN runs for seconds); each
        retransmission after a timeout waits twice as long. ``total`` bounds the whole request,
        retransmissions included (a silent board costs ``total``, not the doubling series).
        An error status raises :class:`DeviceError` (or :class:`ProtocolVersionMismatch`).

        Every command but HELLO and PING is authenticated: ``payload`` is its body, the client adds
        the counter and the tag (and says HELLO first when there is no session); the returned body
        has had its tag checked. When the board answers NO_SESSION or BAD_MAC (it was reset, or
        someone else said HELLO) the client says HELLO again, once, and resends.
        """
        if code in UNAUTHENTICATED:
            return self._exchange(code, payload, None, timeout, total)
        return self._in_session(code, lambda: self._authenticated(code, payload, timeout, total))

    def _in_session(self, code: int, attempt: Callable[[], _T]) -> _T:
        """Run an authenticated exchange: HELLO first when there is no session, and once more when the
        board lost or replaced its session (NO_SESSION, BAD_MAC); any other refusal raises."""
        if self._session is None and self._port is not None:
            self.hello()
        try:
            return attempt()
        except _Refused as refused:
            if refused.detail not in _REHELLO_DETAILS:
                raise self._auth_error(refused, code) from None
            log.info("%s: %s refused (%s): saying HELLO again", self.name, command_name(code), refused.message)
        self.hello()
        try:
            return attempt()
        except _Refused as refused:
            raise self._auth_error(refused, code) from None

    def _auth_error(self, refused: _Refused, code: int) -> AuthenticationFailed:
        reason = {AuthDetail.NO_KEY: "no_key", AuthDetail.NO_SESSION: "no_session",
                  AuthDetail.REPLAYED_COUNTER: "replayed_counter"}.get(refused.detail, "bad_mac")
        return AuthenticationFailed(reason, f"the board refused the request: {refused.message or reason}",
                                    device=self.name, command=command_name(code))

    def _authenticated(self, code: int, body: bytes, timeout: float | None, total: float | None) -> bytes:
        """One authenticated exchange in the current session (raises :class:`_Refused` on AUTH)."""
        cmd = command_name(code)
        session = self._session
        if session is None:
            raise DeviceUnreachable("the port is not open", device=self.name, command=cmd,
                                    fix="use the client as a context manager or call open()")
        room = self.info.request_room if self.info else PRE_HELLO_PAYLOAD
        if len(body) > room:
            raise ValueError(f"{cmd} body of {len(body)} bytes exceeds the board's {room} (max_payload less "
                             f"counter and tag)")
        self._counter += 1
        return self._exchange(code, body, (session, self._counter), timeout, total)

    def _exchange(self, code: int, body: bytes, auth: tuple[SessionMac, int] | None, timeout: float | None,
                  total: float | None) -> bytes:
        cmd = command_name(code)
        if self._port is None:
            raise DeviceUnreachable("the port is not open", device=self.name, command=cmd,
                                    fix="use the client as a context manager or call open()")
        seq = self._next_seq()
        payload = body
        if auth is None:
            limit = self.info.max_payload if self.info else max(PRE_HELLO_PAYLOAD, 8 + 256)
            if len(payload) > limit:
                raise ValueError(f"{cmd} payload of {len(payload)} bytes exceeds max_payload {limit}")
        else:
            session, counter = auth
            payload = session.request_payload(code, seq, counter, body)
        frame = encode_frame(KIND_REQUEST, code, seq, payload)
        wait = (self.timeout if timeout is None else timeout) + self._wire_time(len(frame))
        self.stats.requests += 1
        started = self._clock()
        attempts = 0
        out = frame
        end = None if total is None else started + total
        bad_macs = self.stats.bad_macs
        while True:
            attempts += 1
            self._write(out, cmd)
            until = self._clock() + wait if end is None else min(self._clock() + wait, end)
            outcome = self._await(seq, until, cmd, auth)
            if isinstance(outcome, Packet):
                return self._check(outcome, cmd)
            if outcome == _TIMEOUT:
                self.stats.timeouts += 1
                wait *= 2
                # The board may hold a partial frame whose delimiter was lost: end it first, so
                # the retransmission is not swallowed with it.
                out = DELIMITER + frame
            if attempts > self.retries or (end is not None and self._clock() >= end):
                if self.stats.bad_macs > bad_macs:
                    raise AuthenticationFailed(
                        "bad_mac", f"no authentic response after {attempts} attempt(s): "
                        f"{self.stats.bad_macs - bad_macs} response(s) with a wrong tag were dropped",
                        device=self.name, command=cmd)
                raise LinkTimeout(device=self.name, command=cmd, attempts=attempts, waited_s=self._clock() - started)
            self.stats.retransmissions += 1
            log.debug("%s: %s seq %d: %s, retransmitting (attempt %d)", self.name, cmd, seq, outcome, attempts + 1)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 0xFFFF  # 0 .. 0xFFFE; 0xFFFF is the NAK seq
        return self._seq

    def _wire_time(self, n_request: int) -> float:
        """Seconds the request and the largest response take on a UART at ``baudrate``."""
        n_response = (self.info.max_payload if self.info else _RX_MIN_PAYLOAD) + 16
        return 10.0 * (n_request + n_response) / self.baudrate

    def _check(self, pkt: Packet, cmd: str) -> bytes:
        if pkt.code == Status.OK:
            return pkt.payload
        detail = struct.unpack_from("<H", pkt.payload)[0] if len(pkt.payload) >= 2 else 0
        message = pkt.payload[2:].decode("ascii", "replace")
        if pkt.code == Status.AUTH:
            self.stats.auth_refusals += 1
            raise _Refused(detail, message)
        if pkt.code == Status.WRONG_VERSION and cmd not in MODEL_VERSION_COMMANDS:
            raise ProtocolVersionMismatch(device=self.name, board_version=detail or pkt.version,
                                          host_version=PROTOCOL_VERSION, command=cmd)
        raise DeviceError(pkt.code, detail, message, device=self.name, command=cmd)

    def _await(self, seq: int, deadline: float, cmd: str, auth: tuple[SessionMac, int] | None = None) -> Packet | str:
        """The answer to request ``seq`` (its tag checked under ``auth``: session, counter), _NAK or _TIMEOUT."""
        session, counter = auth if auth is not None else (None, 0)
        return self._await_answer({seq: counter}, deadline, cmd, session)

    def _await_answer(self, counters: dict[int, int], deadline: float, cmd: str,
                      session: SessionMac | None) -> Packet | str:
        """The first authentic answer to one of the requests ``counters`` names (seq -> the counter it
        carried), _NAK when a NAK came and nothing answered behind it, or _TIMEOUT at ``deadline``.
        Undecodable frames, requests, answers to other seqs and forged tags are counted and skipped: an
        injected frame must not end a good exchange. Without ``session`` the answer is taken untagged."""
        nak = False
        while True:
            while self._frames:
                item = self._frames.popleft()
                if isinstance(item, FrameTooLarge):
                    self.stats.bad_frames += 1
                    continue
                try:
                    pkt = decode_frame(item)
                except FrameError as exc:
                    self.stats.bad_frames += 1
                    log.debug("%s: dropped a response frame: %s", self.name, exc)
                    continue
                if pkt.kind != KIND_RESPONSE:
                    self.stats.bad_frames += 1
                    continue
                if pkt.is_nak:
                    self.stats.naks += 1
                    nak = True  # answers may still be right behind it: look at what is buffered first
                    continue
                if pkt.seq not in counters:
                    self.stats.stray_responses += 1
                    continue
                if session is None or pkt.code == Status.AUTH:
                    return pkt  # AUTH answers are untagged hints: a forged one can only deny service
                authentic = self._verified(pkt, session, counters[pkt.seq])
                if authentic is None:
                    self.stats.bad_macs += 1
                    log.debug("%s: %s seq %d: dropped a response whose tag does not verify", self.name, cmd, pkt.seq)
                    continue
                return authentic
            if nak:
                return _NAK
            remaining = deadline - self._clock()
            if remaining <= 0:
                return _TIMEOUT
            data = self._read(remaining, cmd)
            if data:
                self._frames.extend(self._reader.feed(data))

    @staticmethod
    def _verified(pkt: Packet, session: SessionMac, counter: int) -> Packet | None:
        """``pkt`` without its tag when the tag verifies, else None."""
        if len(pkt.payload) < TAG_BYTES:
            return None
        body, tag = pkt.payload[:-TAG_BYTES], pkt.payload[-TAG_BYTES:]
        head = header_bytes(pkt.version, pkt.kind, pkt.code, pkt.seq)
        if not hmac.compare_digest(session.response_tag(head, counter, body), tag):
            return None
        return Packet(pkt.kind, pkt.code, pkt.seq, body, pkt.version)

    # -- bytes ---------------------------------------------------------------------------

    def _write(self, data: bytes, cmd: str) -> None:
        try:
            self._port.write(data)
        except (SerialException, OSError) as exc:
            raise self._gone(exc, cmd) from None
        self.stats.bytes_sent += len(data)
        if data != DELIMITER:
            self.stats.sent_frames += 1

    def _read(self, wait: float, cmd: str) -> bytes:
        """Block up to ``wait`` seconds for a first byte, then take whatever else is there."""
        port = self._port
        try:
            port.timeout = wait
            data = port.read(1)
            if data:
                port.timeout = 0
                data += port.read(65536)
        except (SerialException, OSError) as exc:
            raise self._gone(exc, cmd) from None
        self.stats.bytes_received += len(data)
        return data

    def _gone(self, exc: BaseException, cmd: str) -> DeviceUnreachable:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return DeviceUnreachable(f"the link went away ({text})", device=self.name, command=cmd,
                                 fix="reconnect the board (or restart the emulator) and run the command again; "
                                     "an upload resumes where it stopped")

    def _u32(self, p: bytes, cmd: str) -> int:
        if len(p) != 4:
            raise ProtocolError(f"expected a 4-byte response, got {len(p)} bytes", device=self.name, command=cmd)
        return _U32.unpack(p)[0]


class _Pipeline:
    """One windowed transfer (docs/protocol.md, "Windowed transfers"): selective repeat over the
    board's in-order processing.

    Every request gets a fresh seq and counter, a resend too, so the board's replay protection is
    untouched. The board answers in the order it received, so an answer to a later seq, or a NAK,
    tells which earlier request (or its answer) was lost, and a lost piece the cumulative ack shows
    held is not sent again. A piece lost twice goes stop-and-wait once the window has drained, where
    a resend is the same bytes (a line that spoils every first transmission still passes it);
    once ``_COLLAPSE_AFTER`` or more such pieces are over half of those done, the rest of the
    transfer, and the link's later transfers until the next HELLO, go stop-and-wait.
    """

    def __init__(self, client: BoardClient, code: int, session: SessionMac, sw: SendWindow,
                 accept: Callable[[Piece, bytes], int | None], on_ack: Callable[[int], None] | None,
                 longest: int) -> None:
        self.c, self.code, self.cmd, self.session = client, code, command_name(code), session
        self.sw, self.accept, self.on_ack = sw, accept, on_ack
        self.base_wait = client.timeout + sw.window * client._wire_time(longest + 11 + REQUEST_AUTH_BYTES)
        self.flight: dict[int, tuple[int, int]] = {}  # seq -> (piece index, counter), in the order sent
        self.resync = False  # after a timeout: start the next frame with a delimiter
        self.solos = 0
        self.solo_all = False
        self.windowed_since_solo = False
        #: how long the line must stay silent before a stop-and-wait piece follows windowed ones
        self.quiet = min(self.base_wait, 0.1 + sw.window * client._wire_time(longest + 11 + REQUEST_AUTH_BYTES))
        self.bad_macs = client.stats.bad_macs
        self.started = client._clock()

    def run(self) -> None:
        wait = self.base_wait
        while not self.sw.finished:
            self._send()
            if not self.flight:
                continue
            outcome = self.c._await_any(self.flight, self.c._clock() + wait, self.cmd, self.session)
            if outcome is None:  # silence: everything in flight is lost
                self.c.stats.timeouts += 1
                self._lost(list(self.flight))
                self.resync = True
                wait *= 2
                continue
            wait = self.base_wait
            if outcome == _NAK:  # where the oldest unanswered request stood (NAKs read together: once)
                self._lost([next(iter(self.flight))])
                continue
            assert isinstance(outcome, Packet)
            earlier = list(self.flight)[:list(self.flight).index(outcome.seq)]
            i, _ = self.flight.pop(outcome.seq)
            self._took(self.sw.pieces[i], self.c._check(outcome, self.cmd))  # an error raises (AUTH: _Refused)
            self._lost(earlier)  # answered in order: what was sent before it is lost (or only its answer)

    def _lost(self, seqs: list[int]) -> None:
        pieces = [self.sw.pieces[self.flight.pop(seq)[0]] for seq in seqs]
        self.c.stats.gaps_resent += sum(not piece.done for piece in pieces)

    def _took(self, piece: Piece, body: bytes) -> None:
        ack = self.accept(piece, body)
        piece.done = True
        if ack is not None:
            before = self.sw.acked
            self.sw.cumulative(ack)
            if self.on_ack is not None and self.sw.acked > before:
                self.on_ack(self.sw.acked)

    def _send(self) -> None:
        c = self.c
        for i in self.sw.sendable({index for index, _ in self.flight.values()}):
            piece = self.sw.pieces[i]
            if self.solo_all or (_SOLO_AFTER <= piece.sends <= c.retries):
                if not self.flight:
                    if self.windowed_since_solo:  # answers or NAKs of requests given up on may follow
                        c._quiet(self.quiet, self.cmd)
                        self.windowed_since_solo = False
                    self._solo(piece)
                return  # (else let the window drain first)
            if piece.sends > c.retries:
                if c.stats.bad_macs > self.bad_macs:
                    raise AuthenticationFailed(
                        "bad_mac", f"no authentic response after {piece.sends} attempt(s): "
                        f"{c.stats.bad_macs - self.bad_macs} response(s) with a wrong tag were dropped",
                        device=c.name, command=self.cmd)
                raise LinkTimeout(device=c.name, command=self.cmd, attempts=piece.sends,
                                  waited_s=c._clock() - self.started)
            c._counter += 1
            seq = c._next_seq()
            frame = encode_frame(KIND_REQUEST, self.code, seq,
                                 self.session.request_payload(self.code, seq, c._counter, piece.body))
            c._write(DELIMITER + frame if self.resync else frame, self.cmd)
            self.resync = False
            self.windowed_since_solo = True
            self.flight[seq] = (i, c._counter)
            if piece.sends:
                c.stats.retransmissions += 1
                log.debug("%s: %s [%d, %d) sent again (attempt %d)", c.name, self.cmd, piece.start, piece.end,
                          piece.sends + 1)
            else:
                c.stats.requests += 1
                c.stats.windowed_requests += 1
            piece.sends += 1

    def _solo(self, piece: Piece) -> None:
        c = self.c
        c._counter += 1
        if piece.sends:
            c.stats.retransmissions += 1
        piece.sends += 1
        body = c._exchange(self.code, piece.body, (self.session, c._counter), None, None)
        if piece.sends > 1:
            c.stats.requests -= 1  # a resend, not a new request
        self._took(piece, body)
        self.solos += 1
        done = sum(p.done for p in self.sw.pieces)
        if self.solos >= _COLLAPSE_AFTER and 2 * self.solos > done and not self.solo_all:
            self.solo_all = c._collapsed = True
            log.info("%s: %s: %d of %d pieces were lost twice: this transfer and the next ones go stop-and-wait "
                     "until the next HELLO", c.name, self.cmd, self.solos, done)
