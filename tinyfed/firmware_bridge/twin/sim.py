"""A simulated board: the board side of protocol v2 (``docs/protocol.md``) in Python.

:class:`SimBoard` consumes request bytes and returns response bytes, synchronously, exactly as
the firmware would on its UART: it reframes at delimiters with a bounded buffer, NAKs frames
whose header was readable (seq 0xFFFF), answers another protocol version with WRONG_VERSION,
replays the stored response for a repeated seq, loads fragments into two slots with an atomic,
resumable commit, and runs inference through :mod:`tinyfed.firmware_bridge.twin.kernels_np`.
Like the firmware it authenticates every request but HELLO and PING with its device key (held as
a real board holds its key page; None = a keyless board) and tags every answer to one, byte for
byte as ``firmware/src/protocol.c`` does.

Boards are reached as ``sim://BOARD_ID?option=value`` (see :mod:`.protocol_sim`). A board
outlives its connections (like a powered board whose USB cable is re-plugged): the same URL
host and ``name`` option give the same :class:`SimBoard`.
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.link.framing import (
    AUTH_MESSAGES,
    COUNTER_BYTES,
    DEVICE_ID_BYTES,
    KEY_STATE_KEYED,
    KIND_REQUEST,
    KIND_RESPONSE,
    NAK_SEQ,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    REQUEST_AUTH_BYTES,
    TAG_BYTES,
    UNAUTHENTICATED,
    AuthDetail,
    Command,
    CrcMismatch,
    FrameError,
    FrameReader,
    FrameTooLarge,
    FrameTooShort,
    LoadTarget,
    SessionMac,
    Status,
    decode_frame,
    encode_frame,
    header_bytes,
    session_key,
)
from tinyfed.firmware_bridge.link.keys import DeviceKey, KeyStore
from tinyfed.firmware_bridge.link.profile_link import (
    COUNTER_ESTIMATE,
    MAX_OPS,
    MODE_REFERENCE,
    OP_BYTES,
    KernelInfo,
    OpCycles,
    ProfileRun,
    pack_ops,
)
from tinyfed.firmware_bridge.link.window import Place, ReceiveWindow, announced_window
from tinyfed.firmware_bridge.twin.sim_train import BoardReply as _Reply
from tinyfed.firmware_bridge.twin.sim_train import SimTrainer

log = logging.getLogger(__name__)

SIM_BUILD = "tinyfed-sim 1"
#: KERNELS' path on the twin: numpy kernels, no core (and no instruction count).
SIM_KERNEL_PATH = "twin"
_U32 = struct.Struct("<I")


@dataclass
class SimConfig:
    board_id: str = "sim"
    max_payload: int = 256
    slot_bytes: int = 128 * 1024
    arena_bytes: int = 96 * 1024
    firmware_ram_bytes: int = 24 * 1024
    firmware_flash_bytes: int = 96 * 1024
    build: str = SIM_BUILD
    protocol_version: int = PROTOCOL_VERSION
    program_store_bytes: int = 64 * 1024
    data_store_bytes: int = 384 * 1024
    #: request frames the host may keep in flight, announced in HELLO (None: what the firmware's
    #: receive ring gives for max_payload; 0: an older board's stop-and-wait)
    window: int | None = None

    @property
    def announced_window(self) -> int:
        return announced_window(self.max_payload) if self.window is None else self.window

    @classmethod
    def for_board(cls, board_id: str, **overrides: Any) -> SimConfig:
        """Budgets from the board profile of that name when there is one, else the defaults."""
        cfg = cls(board_id=board_id)
        try:
            from tinyfed.boards import get_board

            b = get_board(board_id)
        except Exception:  # noqa: BLE001 - an unknown id is fine for a simulated board
            b = None
        if b is not None:
            cfg.max_payload = min(b.link.max_frame_bytes, 0xFFFF)
            cfg.slot_bytes = b.fragment_flash_budget_bytes // 2
            cfg.arena_bytes = b.fragment_ram_budget_bytes
            cfg.firmware_ram_bytes = b.reserve_ram_bytes
            cfg.firmware_flash_bytes = b.firmware_reserve.flash_kib * 1024
            cfg.program_store_bytes = b.program_store_bytes
            cfg.data_store_bytes = b.data_store_bytes
        for key, value in overrides.items():
            setattr(cfg, key, value)
        return cfg


@dataclass
class _Transfer:
    size: int
    crc: int
    data: bytearray
    target: int = LoadTarget.FRAGMENT
    win: ReceiveWindow = field(default_factory=lambda: ReceiveWindow(0))

    @property
    def offset(self) -> int:
        """Bytes acknowledged: everything below is held."""
        return self.win.next


@dataclass
class _Fragment:
    blob: bytes
    parsed: Any = None
    input_bytes: int | None = None
    arena_bytes: int = 0
    op_count: int = 0


@dataclass
class SimStats:
    requests: int = 0
    replays: int = 0
    naks: int = 0
    dropped: int = 0
    commits: int = 0
    resets: int = 0
    #: requests refused with AUTH, by detail name (NO_KEY, BAD_MAC, ...)
    refused: dict[str, int] = field(default_factory=dict)
    executed: dict[str, int] = field(default_factory=dict)


class SimBoard:
    """The board side of the protocol; feed it bytes with :meth:`receive`."""

    def __init__(self, config: SimConfig | None = None, *, key: DeviceKey | None = None) -> None:
        self.config = config or SimConfig()
        #: The board's identity (its key page); None = a board nobody provisioned.
        self.device_key = key
        self.stats = SimStats()
        #: True while the board is "unplugged": opening or writing its port fails.
        self.unplugged = False
        self._lock = threading.Lock()
        self._reset_state()
        self.active: _Fragment | None = None

    # -- state ---------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._reader = FrameReader.for_payload(self.config.max_payload)
        self._last_seq: int | None = None
        self._last_response = b""
        self._last_request: tuple[int, bytes] | None = None  # an unauthenticated one: (code, payload)
        self._last_counter = 0
        self._session: SessionMac | None = None
        self._update_tag: tuple[bytes, bytes] | None = None  # (the update image it tags, the tag)
        self.transfer: _Transfer | None = None
        self.active = None
        self._input = bytearray()  # the input tensor: any offset inside it is written, as on the firmware
        self._output: bytes | None = None
        self._reference = False
        self._profile: list[OpCycles] = []
        # Flash stores survive a reset on a real board; the training state in RAM does not.
        stores = getattr(self, "trainer", None)
        self.trainer = SimTrainer(self.config.arena_bytes, window=self.config.announced_window,
                                  max_payload=self.config.max_payload)
        if stores is not None:
            self.trainer.program, self.trainer.tail = stores.program, stores.tail
            self.trainer.unit_shapes, self.trainer.ram_bytes = stores.unit_shapes, stores.ram_bytes
            self.trainer.data = stores.data

    def power_cycle(self) -> None:
        """Lose everything, as after RESET."""
        with self._lock:
            self._reset_state()
            self.stats.resets += 1

    # -- bytes in, bytes out ------------------------------------------------------------

    def receive(self, data: bytes) -> bytes:
        """Process incoming bytes; return every byte the board sends in reply."""
        out = bytearray()
        with self._lock:
            for item in self._reader.feed(data):
                out += self._frame(item)
        return bytes(out)

    def _frame(self, item: bytes | FrameTooLarge) -> bytes:
        if isinstance(item, FrameTooLarge):
            return self._nak(Status.FRAME_TOO_LARGE, item)
        try:
            pkt = decode_frame(item, self.config.max_payload)
        except (CrcMismatch, FrameTooShort, FrameTooLarge) as exc:
            return self._nak(exc.status, exc) if exc.header is not None else self._drop(exc)
        except FrameError as exc:
            return self._drop(exc)
        if pkt.kind != KIND_REQUEST:
            return self._drop(None)
        self.stats.requests += 1
        if pkt.version != self.config.protocol_version:
            return self._response(Status.WRONG_VERSION, pkt.seq,
                                  _error_payload(self.config.protocol_version, f"packet v{pkt.version}"))
        if pkt.code in UNAUTHENTICATED:
            if pkt.seq == self._last_seq and self._last_request == (pkt.code, pkt.payload):
                self.stats.replays += 1
                return self._last_response
            status, body = self._run(pkt.code, pkt.payload)
            reply = self._response(status, pkt.seq, body)
            self._last_seq, self._last_response, self._last_request = pkt.seq, reply, (pkt.code, pkt.payload)
            return reply
        refused = self._authenticate(pkt.version, pkt.code, pkt.seq, pkt.payload)
        if isinstance(refused, bytes):
            return refused
        counter, body = refused
        name = Command.NAMES.get(pkt.code, "?")
        self.stats.executed[name] = self.stats.executed.get(name, 0) + 1
        if pkt.code == Command.RESET and not body:
            reply = self._tagged(Status.OK, pkt.seq, counter, b"")
            self._reset_state()  # the session goes with the RAM
            self.stats.resets += 1
            return reply
        if pkt.code == Command.RESET:
            status, out = Status.BAD_LENGTH, _error_payload(0, "RESET takes no payload")
        else:
            status, out = self._run(pkt.code, body)
        reply = self._tagged(status, pkt.seq, counter, out)
        self._last_seq, self._last_response, self._last_request = pkt.seq, reply, None
        return reply

    # -- authentication (docs/protocol.md, "Authentication") ------------------------------

    def _authenticate(self, version: int, code: int, seq: int, payload: bytes) -> bytes | tuple[int, bytes]:
        """``(counter, body)`` of an authentic, fresh request; else the bytes to send: an AUTH
        answer, or the cached response of an authentic retransmission."""
        if self.device_key is None:
            return self._refuse(AuthDetail.NO_KEY, seq)
        if self._session is None:
            return self._refuse(AuthDetail.NO_SESSION, seq)
        if len(payload) < REQUEST_AUTH_BYTES:
            return self._refuse(AuthDetail.TOO_SHORT, seq)
        (counter,) = _U32.unpack_from(payload)
        body, tag = payload[COUNTER_BYTES:-TAG_BYTES], payload[-TAG_BYTES:]
        expected = self._session.request_tag(header_bytes(version, KIND_REQUEST, code, seq), counter, body)
        if not hmac.compare_digest(expected, tag):
            return self._refuse(AuthDetail.BAD_MAC, seq)
        if self._last_request is None and seq == self._last_seq and counter == self._last_counter:
            self.stats.replays += 1
            return self._last_response
        if counter <= self._last_counter:
            return self._refuse(AuthDetail.REPLAYED_COUNTER, seq)
        self._last_counter = counter
        return counter, body

    def _refuse(self, detail: int, seq: int) -> bytes:
        name = AuthDetail.NAMES[detail]
        self.stats.refused[name] = self.stats.refused.get(name, 0) + 1
        return self._response(Status.AUTH, seq, _error_payload(detail, AUTH_MESSAGES[detail]))

    def _tagged(self, status: int, seq: int, counter: int, body: bytes) -> bytes:
        assert self._session is not None
        head = header_bytes(self.config.protocol_version, KIND_RESPONSE, status, seq)
        return self._response(status, seq, body + self._session.response_tag(head, counter, body))

    def _run(self, code: int, payload: bytes) -> tuple[int, bytes]:
        try:
            return Status.OK, self._execute(code, payload)
        except _Reply as err:
            return err.status, _error_payload(err.detail, err.message)

    def _nak(self, status: int, exc: Exception) -> bytes:
        self.stats.naks += 1
        log.debug("sim %s: NAK %s (%s)", self.config.board_id, status, exc)
        return self._response(status, NAK_SEQ, _error_payload(0, str(exc)[:64]))

    def _drop(self, exc: Exception | None) -> bytes:
        self.stats.dropped += 1
        log.debug("sim %s: dropped a frame (%s)", self.config.board_id, exc)
        return b""

    def _response(self, status: int, seq: int, payload: bytes) -> bytes:
        return encode_frame(KIND_RESPONSE, status, seq, payload, version=self.config.protocol_version)

    # -- commands ------------------------------------------------------------------------

    def _execute(self, code: int, p: bytes) -> bytes:
        handler = {
            Command.HELLO: self._hello,
            Command.PING: lambda p: p,
            Command.LOAD_BEGIN: self._load_begin,
            Command.LOAD_CHUNK: self._load_chunk,
            Command.LOAD_COMMIT: self._load_commit,
            Command.INPUT_WRITE: self._input_write,
            Command.INVOKE: self._invoke,
            Command.OUTPUT_READ: self._output_read,
            Command.STATS: lambda p: self.trainer.stats(p, self.config.firmware_ram_bytes),
            Command.TRAIN_SET: self.trainer.train_set,
            Command.TRAIN: self._train,
            Command.UPDATE_READ: self._update_read,
            Command.EVALUATE: lambda p: self.trainer.evaluate(p, self.active),
            Command.PROFILE: self._profile_run,
            Command.PROFILE_READ: self._profile_read,
            Command.KERNELS: self._kernels,
        }.get(code)
        if handler is None:
            raise _Reply(Status.UNKNOWN_COMMAND, code, f"unknown command 0x{code:02x}")
        return handler(p)

    def _hello(self, p: bytes) -> bytes:
        c = self.config
        if len(p) != 1 + NONCE_BYTES:
            raise _Reply(Status.BAD_LENGTH, 1 + NONCE_BYTES, "HELLO takes u8 host_version, 16-byte host_nonce")
        if p[0] != c.protocol_version:
            raise _Reply(Status.WRONG_VERSION, c.protocol_version, f"host v{p[0]}, board v{c.protocol_version}")
        board_id, build = c.board_id.encode()[:255], c.build.encode()[:255]
        board_nonce = os.urandom(NONCE_BYTES)
        dk = self.device_key
        self._session = None  # a new HELLO, from anyone, replaces the session
        self._last_counter = 0
        if dk is not None:
            self._session = SessionMac(session_key(dk.key, dk.device_id, p[1:], board_nonce))
        return (
            struct.pack("<BBHIIII", c.protocol_version, c.announced_window, c.max_payload, c.slot_bytes, c.arena_bytes,
                        c.firmware_ram_bytes, c.firmware_flash_bytes)
            + bytes([len(board_id)]) + board_id + bytes([len(build)]) + build
            + struct.pack("<II", c.program_store_bytes, c.data_store_bytes)
            + (dk.device_id if dk is not None else bytes(DEVICE_ID_BYTES)) + board_nonce
            + bytes([KEY_STATE_KEYED if dk is not None else 0])
        )

    def _train(self, p: bytes) -> bytes:
        """TRAIN, then the update tag over the image it left (bound to the device and the model version)."""
        out = self.trainer.train(p, self.active)
        image = self.trainer.update_image
        if image is not None and self._session is not None and self.device_key is not None:
            tag = self._session.update_tag(self.device_key.device_id, self.trainer.version, image)
            self._update_tag = (image, tag)
        return out

    def _update_read(self, p: bytes) -> bytes:
        """The update image and its 32-byte tag after it, in pieces of at most a response body."""
        if len(p) != 6:
            raise _Reply(Status.BAD_LENGTH, 6, "UPDATE_READ takes u32 offset, u16 length")
        image = self.trainer.update_image
        tagged = self._update_tag
        if image is None or tagged is None or tagged[0] is not image:
            raise _Reply(Status.NO_UPDATE, 0, "no update: TRAIN first")
        served = image + tagged[1]
        offset, length = struct.unpack("<IH", p)
        size = len(served)
        if length > self._body_room or offset > size or length > size - offset:
            raise _Reply(Status.BAD_LENGTH, size & 0xFFFF, f"update bytes: {size}")
        return served[offset:offset + length]

    @property
    def _body_room(self) -> int:
        """The largest response body: max_payload less the tag."""
        return self.config.max_payload - TAG_BYTES

    def _load_begin(self, p: bytes) -> bytes:
        if len(p) not in (8, 9):
            raise _Reply(Status.BAD_LENGTH, 8, "LOAD_BEGIN takes size, crc [, target]")
        size, crc = struct.unpack_from("<II", p)
        target = p[8] if len(p) == 9 else LoadTarget.FRAGMENT
        if target > LoadTarget.DATA:
            raise _Reply(Status.BAD_ARGUMENT, target, "target must be 0, 1 or 2")
        capacity = {LoadTarget.FRAGMENT: self.config.slot_bytes, LoadTarget.PROGRAM: self.config.program_store_bytes,
                    LoadTarget.DATA: self.config.data_store_bytes}[target]
        if size > capacity:
            raise _Reply(Status.FRAGMENT_TOO_LARGE, min(capacity // 1024, 0xFFFF), f"{size} > store {capacity}")
        if size == 0:
            raise _Reply(Status.BAD_LENGTH, 0, "empty fragment")
        t = self.transfer
        if t is None or (t.size, t.crc, t.target) != (size, crc, target):
            self.transfer = t = _Transfer(size, crc, bytearray(size), target,
                                          ReceiveWindow(self.config.announced_window))
            if target != LoadTarget.FRAGMENT:
                self.trainer.invalidate(target)
        return _U32.pack(t.offset)

    def _load_chunk(self, p: bytes) -> bytes:
        if len(p) < 4:
            raise _Reply(Status.BAD_LENGTH, 4, "LOAD_CHUNK needs an offset")
        (offset,) = _U32.unpack_from(p)
        data = p[4:]
        t = self.transfer
        if t is None:
            raise _Reply(Status.OUT_OF_ORDER, 0, "no LOAD_BEGIN")
        if offset > t.size or len(data) > t.size - offset:
            raise _Reply(Status.BAD_LENGTH, t.size - t.offset, f"chunk past size {t.size}")
        n = len(data)
        if not self.config.announced_window:  # an older board: strictly in order
            place = Place.NEXT if offset == t.offset else Place.REFUSE
        else:
            place = t.win.place(offset, n, self.config.announced_window * self.config.max_payload)
        if place is Place.AHEAD and (offset % 4 or (n % 4 and offset + n != t.size)):
            raise _Reply(Status.OUT_OF_ORDER, t.offset & 0xFFFF, "a chunk past a gap must be word aligned")
        if place is Place.REFUSE:
            raise _Reply(Status.OUT_OF_ORDER, t.offset & 0xFFFF, f"expected offset {t.offset}")
        if place is not Place.HELD:
            t.data[offset:offset + n] = data
            if place is Place.NEXT:
                t.win.took(n)
            else:
                t.win.hold(offset, n)
        return _U32.pack(t.offset)

    def _load_commit(self, p: bytes) -> bytes:
        if p:
            raise _Reply(Status.BAD_LENGTH, 0, "LOAD_COMMIT takes no payload")
        t = self.transfer
        if t is None:
            raise _Reply(Status.OUT_OF_ORDER, 0, "no transfer to commit")
        if t.offset != t.size:
            raise _Reply(Status.BAD_LENGTH, t.offset & 0xFFFF, f"have {t.offset} of {t.size} bytes")
        blob = bytes(t.data)
        self.transfer = None  # success or failure, the next LOAD_BEGIN starts afresh
        if zlib.crc32(blob) != t.crc:
            raise _Reply(Status.BAD_CRC, 0, "fragment CRC mismatch")
        if t.target != LoadTarget.FRAGMENT:
            if t.target == LoadTarget.PROGRAM:
                return self.trainer.commit_program(blob, self.active)
            return self.trainer.commit_data(blob)
        fragment = self._parse(blob)
        if fragment.arena_bytes > self.config.arena_bytes:
            raise _Reply(Status.OUT_OF_MEMORY, min(fragment.arena_bytes // 1024, 0xFFFF),
                         f"arena {fragment.arena_bytes} > {self.config.arena_bytes}")
        self.active = fragment  # the one-step switch of slots
        self._profile = []
        self.trainer.fragment_changed(fragment)
        self._input = bytearray(fragment.input_bytes or 0)
        self._output = None
        self.stats.commits += 1
        return struct.pack("<IHH", fragment.arena_bytes, fragment.op_count & 0xFFFF, 0)

    def _parse(self, blob: bytes) -> _Fragment:
        try:
            from tinyfed.firmware_bridge.compile import blob as blob_mod
        except ImportError:  # no parser in this tree: keep the blob opaque (INVOKE says UNSUPPORTED_OP)
            return _Fragment(blob)
        try:
            parsed = blob_mod.parse_blob(blob)
        except Exception as exc:  # noqa: BLE001 - like the firmware: any bad blob is an error reply
            problem = str(getattr(exc, "problem", exc))
            default = Status.WRONG_VERSION if "version" in problem else Status.BAD_MODEL
            raise _Reply(_status_of(exc, default), int(getattr(exc, "detail", 0) or 0), problem[:64]) from None
        known = getattr(blob_mod, "OP_NAMES", None)
        for op in getattr(parsed, "ops", ()) or ():
            code = getattr(op, "code", None)
            if known is not None and code is not None and code not in known:
                raise _Reply(Status.UNSUPPORTED_OP, code, f"op {code} has no kernel")
        return _Fragment(blob, parsed, **_facts(parsed))

    def _need_model(self) -> _Fragment:
        if self.active is None:
            raise _Reply(Status.NO_MODEL, 0, "no fragment committed")
        return self.active

    def _input_write(self, p: bytes) -> bytes:
        frag = self._need_model()
        if len(p) < 4:
            raise _Reply(Status.BAD_LENGTH, 4, "INPUT_WRITE needs an offset")
        (offset,) = _U32.unpack_from(p)
        data = p[4:]
        limit = frag.input_bytes if frag.input_bytes is not None else self.config.arena_bytes
        if offset > limit or len(data) > limit - offset:
            raise _Reply(Status.BAD_LENGTH, limit & 0xFFFF, f"input is {limit} bytes")
        if len(self._input) < offset + len(data):
            self._input.extend(bytes(offset + len(data) - len(self._input)))
        self._input[offset:offset + len(data)] = data
        return _U32.pack(offset + len(data))

    def _invoke(self, p: bytes) -> bytes:
        frag = self._need_model()
        if p:
            raise _Reply(Status.BAD_LENGTH, 0, "INVOKE takes no payload")
        if frag.parsed is None:
            raise _Reply(Status.UNSUPPORTED_OP, 0, "this simulator has no kernels")
        try:
            from tinyfed.firmware_bridge.twin import kernels_np
        except ImportError:
            raise _Reply(Status.UNSUPPORTED_OP, 0, "this simulator has no kernels") from None
        x = np.frombuffer(bytes(self._input), dtype=np.int8)
        shape = _get(frag.parsed, "input_shape")
        try:
            if shape:
                x = x.reshape(tuple(shape))
            y = kernels_np.run_blob(frag.blob, x)
        except Exception as exc:  # noqa: BLE001 - a kernel failure is an error reply, never a crash
            detail = int(getattr(exc, "detail", 0) or 0)
            raise _Reply(_status_of(exc, Status.UNSUPPORTED_OP), detail, str(exc)[:64]) from None
        self._output = np.asarray(y).astype(np.int8, copy=False).tobytes()
        room = self._body_room - 8
        return struct.pack("<II", 0, len(self._output)) + self._output[:room]

    # -- profiling: the twin has no instruction count, so it answers with an estimate, flagged
    # as such (counter COUNTER_ESTIMATE, clock 0): each op's MACs (at least 1) as its "cycles".

    def _kernels(self, p: bytes) -> bytes:
        if len(p) > 1 or (p and p[0] > MODE_REFERENCE):
            raise _Reply(Status.BAD_LENGTH, 1, "KERNELS takes nothing or u8 mode (0 fast, 1 reference)")
        if p:
            self._reference = p[0] == MODE_REFERENCE
        return KernelInfo(SIM_KERNEL_PATH, self._reference).pack()

    def _profile_run(self, p: bytes) -> bytes:
        if len(p) > 1 or (p and p[0] > MODE_REFERENCE):
            raise _Reply(Status.BAD_LENGTH, 1, "PROFILE takes nothing or u8 mode (0 fast, 1 reference)")
        frag = self._need_model()
        if frag.op_count > MAX_OPS:
            raise _Reply(Status.OUT_OF_MEMORY, MAX_OPS, f"PROFILE times at most ops: {MAX_OPS}")
        self._profile = []
        self._invoke(b"")
        reference = p[0] == MODE_REFERENCE if p else self._reference
        self._profile = [OpCycles(op.index, op.code, _mac_estimate(frag.parsed, op), False)
                         for op in frag.parsed.ops]
        run = ProfileRun(sum(op.cycles for op in self._profile), 0, reference, COUNTER_ESTIMATE,
                         len(self._output or b""), self._profile)
        return run.pack()

    def _profile_read(self, p: bytes) -> bytes:
        if len(p) != 4:
            raise _Reply(Status.BAD_LENGTH, 4, "PROFILE_READ takes u16 first_op, u16 count")
        if not self._profile:
            raise _Reply(Status.NO_DATA, 0, "no profile: run PROFILE first")
        first, count = struct.unpack("<HH", p)
        n = len(self._profile)
        if first > n or count > n - first or count > self._body_room // OP_BYTES:
            raise _Reply(Status.BAD_ARGUMENT, n, f"profiled ops: {n}")
        return pack_ops(self._profile[first:first + count])

    def _output_read(self, p: bytes) -> bytes:
        self._need_model()
        if len(p) != 6:
            raise _Reply(Status.BAD_LENGTH, 6, "OUTPUT_READ takes offset and length")
        offset, length = struct.unpack("<IH", p)
        if self._output is None:
            raise _Reply(Status.NO_MODEL, 0, "no output: INVOKE first")
        if length > self._body_room or offset + length > len(self._output):
            raise _Reply(Status.BAD_LENGTH, len(self._output) & 0xFFFF, f"output is {len(self._output)} bytes")
        return self._output[offset:offset + length]


def _mac_estimate(parsed: Any, op: Any) -> int:
    """An op's multiply-accumulates from its blob tensors: the twin's stand-in for cycles.

    CONV_2D: output elements x the weights' per-filter size; DEPTHWISE_CONV_2D: x the kernel's
    taps; FULLY_CONNECTED: x the weight row; any other op: its output elements (at least 1)."""
    from tinyfed.firmware_bridge.compile.blob import OP_CODES

    out = int(np.prod(parsed.tensors[op.output].shape or (1,)))
    weights: tuple[int, ...] = tuple(parsed.tensors[op.inputs[1]].shape) if op.has_input(1) else ()
    if op.code == OP_CODES.get("CONV_2D") and len(weights) == 4:
        return out * int(np.prod(weights[1:]))
    if op.code == OP_CODES.get("DEPTHWISE_CONV_2D") and len(weights) == 4:
        return out * int(weights[1] * weights[2])
    if op.code == OP_CODES.get("FULLY_CONNECTED") and len(weights) == 2:
        return out * int(weights[1])
    return max(1, out)


def _error_payload(detail: int, message: str) -> bytes:
    return struct.pack("<H", detail & 0xFFFF) + message.encode("ascii", "replace")[:64]


def _status_of(exc: Exception, default: int) -> int:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status in Status.NAMES:
        return status
    if isinstance(status, str) and hasattr(Status, status):
        return int(getattr(Status, status))
    return default


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _facts(parsed: Any) -> dict[str, Any]:
    """Input size, arena and op count of a parsed blob, whatever shape the parser returns."""
    facts: dict[str, Any] = {}
    n = _get(parsed, "input_bytes", "input_size", "input_len")
    if n is None:
        shape = _get(parsed, "input_shape")
        if shape is not None:
            n = int(np.prod(shape))
    facts["input_bytes"] = int(n) if n is not None else None
    facts["arena_bytes"] = int(_get(parsed, "arena_bytes", "arena_size") or 0)
    ops = _get(parsed, "op_count", "ops")
    facts["op_count"] = ops if isinstance(ops, int) else len(ops) if ops is not None else 0
    return facts


# -- registry: boards outlive connections -------------------------------------------------

_BOARDS: dict[tuple[str, str], SimBoard] = {}
_BOARDS_LOCK = threading.Lock()
#: The key-store records this process made for its simulated boards: a sim:// board lives only as long
#: as the process, so its key leaves the store with it (forget_sim_boards, or at exit).
_RECORDED: list[tuple[KeyStore, bytes]] = []


def _forget_recorded() -> None:
    while _RECORDED:
        store, device_id = _RECORDED.pop()
        try:
            store.remove(device_id)
        except (OSError, TinyfedError) as exc:  # a store gone or damaged meanwhile: nothing left to forget
            log.debug("could not forget simulated board %s in %s: %s", device_id.hex(), store.path, exc)


atexit.register(_forget_recorded)


def get_sim_board(board_id: str, name: str = "", *, keyed: bool = True, **overrides: Any) -> SimBoard:
    """The simulated board for ``(board_id, name)``; created with ``overrides`` the first time.

    A new board is provisioned like an emulator launch: a fresh identity recorded in the default key
    store (``$TINYFED_KEY_STORE``) before the board holds it; ``keyed=False`` makes a keyless one."""
    key = (board_id, name)
    with _BOARDS_LOCK:
        board = _BOARDS.get(key)
        if board is None:
            device = None
            if keyed:
                store = KeyStore()
                device = store.provision(f"sim://{board_id}" + (f"?name={name}" if name else ""))
                _RECORDED.append((store, device.device_id))
            board = _BOARDS[key] = SimBoard(SimConfig.for_board(board_id, **overrides), key=device)
        return board


def forget_sim_boards() -> None:
    """Drop every simulated board and its key-store record (tests call this for isolation)."""
    with _BOARDS_LOCK:
        _BOARDS.clear()
        _forget_recorded()
