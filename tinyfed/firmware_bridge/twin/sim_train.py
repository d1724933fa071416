"""Local training on the ``sim://`` board: the firmware's TRAIN_SET / TRAIN / UPDATE_READ /
EVALUATE / STATS (``firmware/src/train.c``) in numpy.

The frozen fragment runs with the int8 kernels that are bit-exact with the firmware
(:mod:`kernels_np`); the tail trains with the float32 reference (:class:`FloatTail`) in the
firmware's sample order (:mod:`shuffle`), and the update is quantized exactly as the board does
(:func:`train_link.quantize_flat`). Float sums run in another order than the board's, so the
update agrees within float32 rounding (see ``tests/test_train_link.py`` for the measured bound).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.compile.train_blob import ProgramInfo, parse_program
from tinyfed.firmware_bridge.link.framing import Status
from tinyfed.firmware_bridge.link.train_link import (
    EVALUATE_RESPONSE,
    STATS_RESPONSE,
    TrainParams,
    TrainReport,
    delta_variance,
    pack_update,
    quantize_flat,
)
from tinyfed.firmware_bridge.link.window import Place, ReceiveWindow
from tinyfed.firmware_bridge.twin import shuffle
from tinyfed.training.privacy import noised_values
from tinyfed.training.task import Loss
from tinyfed.training.vector import split_units

if TYPE_CHECKING:
    from tinyfed.training.tail import FloatTail

_U32 = struct.Struct("<I")


class BoardReply(Exception):
    """An error reply of the simulated board: raised inside a command handler, sent as a response."""

    def __init__(self, status: int, detail: int = 0, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail & 0xFFFF
        self.message = message


@dataclass
class SimTrainer:
    """The training state of one simulated board."""

    arena_bytes: int
    program: bytes | None = None
    info: ProgramInfo | None = None
    tail: FloatTail | None = None
    unit_shapes: list[tuple[int, int]] = field(default_factory=list)
    ram_bytes: int = 0
    data: local_data.LocalData | None = None
    values: np.ndarray | None = None
    start: np.ndarray | None = None
    version: int = 0
    weights_ok: bool = False
    set_open: bool = False
    set_version: int = 0
    #: the window HELLO announces (0: strictly in order, as older firmware)
    window: int = 0
    max_payload: int = 256
    set_win: ReceiveWindow = field(default_factory=lambda: ReceiveWindow(0))
    update_image: bytes | None = None
    fragment_arena: int = 0
    #: a DP TRAIN ran on the current local data: EVALUATE and TRAIN without DP are refused
    dp_latched: bool = False
    #: the DP noise's generator, seeded from the OS per board (the firmware's is its RNG, rng.h)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    _heads: dict[Any, np.ndarray] = field(default_factory=dict)

    # -- stores --------------------------------------------------------------------------

    def invalidate(self, target: int) -> None:
        if target == 1:
            self.program = self.tail = None
            self.weights_ok = False
            self.update_image = None
        elif target == 2:
            self.data = None
        self._heads.clear()

    def commit_program(self, blob: bytes, fragment: Any) -> bytes:
        from tinyfed.firmware_bridge.compile.program_tail import program_tail

        try:
            tail, shapes, ram = program_tail(blob)
        except Exception as exc:  # noqa: BLE001 - like the firmware: any bad program is an error reply
            problem = str(getattr(exc, "problem", exc))
            raise BoardReply(Status.WRONG_VERSION if "version" in problem else Status.BAD_MODEL, 0,
                             problem[:64]) from None
        self.program, self.tail, self.unit_shapes, self.ram_bytes = blob, tail, shapes, ram
        self.info = parse_program(blob)
        self.fragment_changed(fragment)
        need = self._state_bytes()
        if need > self.arena_bytes - self.fragment_arena:
            raise BoardReply(Status.OUT_OF_MEMORY, need // 1024, f"training state needs {need} bytes")
        return struct.pack("<IHH", need, len(shapes), 0)

    def commit_data(self, image: bytes) -> bytes:
        try:
            self.data = local_data.unpack(image)
        except Exception as exc:  # noqa: BLE001
            raise BoardReply(Status.NO_DATA, 0, str(getattr(exc, "problem", exc))[:64]) from None
        self._heads.clear()
        self.dp_latched = False
        return struct.pack("<IHH", len(self.data.y), self.data.classes, self.data.kind)

    def fragment_changed(self, fragment: Any) -> None:
        """A fragment (or program) was committed: w* back to the program's initial values, version 0."""
        self._heads.clear()
        if fragment is not None:
            self.fragment_arena = int(getattr(fragment, "arena_bytes", 0) or 0)
        else:  # no fragment: the program is the whole model and a raw-sample buffer leads the arena
            self.fragment_arena = (self._input_elems() + 7) & ~7 if self.tail is not None else 0
        self.update_image = None
        self.set_open = False
        self.set_win = ReceiveWindow(self.window)  # no TRAIN_SET chunk of an earlier program is acknowledged
        if self.tail is None:
            self.weights_ok = False
            return
        self.values = np.concatenate([v.ravel() for v in self.tail.unit_values()]).astype(np.float32)
        self.start = self.values.copy()
        self.version = 0
        self.weights_ok = True

    def _input_elems(self) -> int:
        assert self.tail is not None
        return int(np.prod(self.tail.graph.tensors[self.tail.graph.inputs[0]].shape[1:]))

    def _target_bytes(self) -> int:
        return self.info.target_bytes if self.info is not None else 0

    def _state_bytes(self) -> int:
        """The firmware's: tftr state (8-aligned), update scales, one sample's target (4-aligned)."""
        return ((self.ram_bytes + 7) & ~7) + 4 * sum(c for c, _ in self.unit_shapes) + ((self._target_bytes() + 3) & ~3)

    def _targets(self) -> np.ndarray:
        """The local targets as FloatTail takes them, checked against the program as the board does."""
        assert self.data is not None and self.info is not None and self.tail is not None
        info, data = self.info, self.data
        if data.kind != info.target_kind:
            raise BoardReply(Status.NO_DATA, info.target_kind,
                             f"local targets of another task; program target kind {info.target_kind}")
        if data.kind != local_data.TARGET_CLASS and data.classes != info.classes:
            raise BoardReply(Status.NO_DATA, info.classes,
                             f"local targets per sample differ; program outputs {info.classes}")
        out_shape = tuple(self.tail.graph.tensors[self.tail.graph.outputs[0]].shape[1:])
        if data.kind == local_data.TARGET_CLASS:
            return data.y.astype(np.int64)
        if data.kind == local_data.TARGET_INPUT:  # the model's own input, dequantized as the engine does
            centred = data.x.astype(np.int32) - info.target_zero_point
            return (centred * np.float32(info.target_scale)).astype(np.float32).reshape((len(data.x), *out_shape))
        return data.y.astype(np.float32).reshape((len(data.y), *out_shape))

    # -- commands ------------------------------------------------------------------------

    def _ready(self, fragment: Any) -> tuple[np.ndarray, np.ndarray]:
        """Tail inputs (float, dequantized from the head's int8 output) and labels, or the typed error."""
        if self.tail is None:
            if fragment is None:
                raise BoardReply(Status.NO_MODEL, 0, "no committed fragment and no training program")
            raise BoardReply(Status.NO_MODEL, 1, "no training program: load one (LOAD_BEGIN target 1)")
        if self._state_bytes() > self.arena_bytes - self.fragment_arena:
            raise BoardReply(Status.OUT_OF_MEMORY, 0, "training state does not fit the arena")
        if self.data is None:
            raise BoardReply(Status.NO_DATA, 0, "no local data: provision it first")
        if fragment is None:
            if self.data.x.shape[1] != self._input_elems():
                raise BoardReply(Status.NO_DATA, self._input_elems(),
                                 f"local samples do not match the program input of bytes {self._input_elems()}")
            raw_key = ("raw", id(self.data))
            if raw_key not in self._heads:
                in_shape = self.tail.graph.tensors[self.tail.graph.inputs[0]].shape
                self._heads.clear()
                samples = self.data.x.reshape((len(self.data.x),) + tuple(in_shape[1:]))
                self._heads[raw_key] = self.tail.dequantize_input(samples)
            return self._heads[raw_key], self._targets()
        if fragment.input_bytes is not None and self.data.x.shape[1] != fragment.input_bytes:
            raise BoardReply(Status.NO_DATA, fragment.input_bytes,
                             f"local samples do not match the fragment input of bytes {fragment.input_bytes}")
        key = id(fragment)
        if key not in self._heads:
            from tinyfed.firmware_bridge.twin import kernels_np

            shape = tuple(getattr(fragment.parsed, "input_shape", ()) or ())
            x = self.data.x.reshape((len(self.data.x),) + shape[1:]) if shape else self.data.x
            out = np.asarray(kernels_np.run_blob(fragment.blob, x)).astype(np.int8)
            in_shape = self.tail.graph.tensors[self.tail.graph.inputs[0]].shape
            if out[0].size != int(np.prod(in_shape[1:])):
                raise BoardReply(Status.BAD_MODEL, out[0].size,
                                 "training program does not follow this fragment")
            self._heads.clear()
            self._heads[key] = self.tail.dequantize_input(out.reshape((len(out),) + tuple(in_shape[1:])))
        return self._heads[key], self._targets()

    def train_set(self, p: bytes) -> bytes:
        if len(p) < 8 or (len(p) - 8) % 4:
            raise BoardReply(Status.BAD_LENGTH, 8, "TRAIN_SET takes u32 version, u32 offset, f32 values")
        if self.tail is None or self.values is None:
            raise BoardReply(Status.NO_MODEL, 1, "no training program")
        version, offset = struct.unpack_from("<II", p)
        vals = np.frombuffer(p, "<f4", offset=8).astype(np.float32)
        total = self.values.size
        if offset == 0:  # a new version starts (the host sends the first chunk alone)
            self.set_open, self.set_version = True, version
            self.set_win = ReceiveWindow(self.window)
            self.weights_ok = False
            self.update_image = None
        elif version != self.set_version or not (
                self.set_open or (self.weights_ok and self.version == version and self.set_win.next == total)):
            raise BoardReply(Status.OUT_OF_ORDER, self.set_win.next & 0xFFFF,
                             f"expected value offset {self.set_win.next}")
        if offset > total or vals.size > total - offset:
            raise BoardReply(Status.BAD_LENGTH, total, f"w* holds values: {total}")
        if not self.window:  # an older board: strictly in order
            place = Place.NEXT if offset == self.set_win.next else Place.REFUSE
        else:
            place = self.set_win.place(offset, vals.size, self.window * self.max_payload // 4)
        if place is Place.REFUSE:
            raise BoardReply(Status.OUT_OF_ORDER, self.set_win.next & 0xFFFF,
                             f"expected value offset {self.set_win.next}")
        if place is not Place.HELD:
            bad = np.flatnonzero(~np.isfinite(vals))
            if bad.size:
                self.set_open = False
                raise BoardReply(Status.BAD_ARGUMENT, offset + int(bad[0]), "w* value is not finite")
            self.values[offset:offset + vals.size] = vals
            if place is Place.NEXT:
                self.set_win.took(vals.size)
            else:
                self.set_win.hold(offset, vals.size)
        if self.set_open and self.set_win.next == total:
            self.start = self.values.copy()
            self.set_open, self.weights_ok, self.version = False, True, self.set_version
        return _U32.pack(self.set_win.next)

    def train(self, p: bytes, fragment: Any) -> bytes:
        if len(p) not in (21, 29):
            raise BoardReply(Status.BAD_LENGTH, 21, "TRAIN takes 21 bytes (29 with the DP parameters)")
        x, y = self._ready(fragment)
        try:
            params = TrainParams.unpack(p)
        except ValueError:
            raise BoardReply(Status.BAD_LENGTH, 29 if p[20] & 0x08 else 21,
                             "the DP flag and the DP parameters (f32 clip, f32 noise) come together") from None
        if not self.weights_ok or params.version != self.version:
            raise BoardReply(Status.WRONG_VERSION, self.version,
                             f"w* is at model version {self.version}" if self.weights_ok else "w* incomplete")
        if (params.epochs < 1 or params.batch_size < 1 or not np.isfinite(params.lr) or params.lr <= 0
                or p[20] & ~0x0F):
            raise BoardReply(Status.BAD_ARGUMENT, 0, "epochs and batch must be >= 1, lr finite and > 0")
        if params.dp and not (np.isfinite(params.dp_clip) and np.isfinite(params.dp_noise) and params.dp_noise >= 0):
            raise BoardReply(Status.BAD_ARGUMENT, 1, "DP clip must be finite and > 0, noise finite and >= 0")
        if not params.dp and self.dp_latched:
            raise BoardReply(Status.BAD_ARGUMENT, 2,
                             "this board trains with differential privacy: TRAIN without it refused")
        assert self.tail is not None and self.start is not None  # _ready saw the program; weights_ok: w* is set
        from tinyfed.training.step import local_train

        n = min(params.max_samples, len(y)) if params.max_samples else len(y)
        tail = self.tail.copy()
        tail.set_unit_values(split_units(self.start, self.unit_shapes))
        result = local_train(tail, x[:n], y[:n], epochs=params.epochs, lr=np.float32(params.lr),
                             batch_size=params.batch_size, seed=params.seed, order=shuffle.epoch_order)
        self.values = np.concatenate([v.ravel() for v in result.values]).astype(np.float32)
        loss = result.loss
        if params.dp:  # the firmware's order: clip, noise, then quantize; loss and variance withheld
            self.values = noised_values(self.start, self.values, params.dp_clip, params.dp_noise, self.rng)
            self.dp_latched = True
        delta = (self.values - self.start).astype(np.float32)
        q, scales = quantize_flat(delta, self.unit_shapes, params.per_channel)
        variance = delta_variance(delta)
        if params.dp:
            loss = variance = 0.0
        self.update_image = pack_update(self.version, n, loss, variance, q, scales, params.per_channel,
                                        delta if params.float_update else None)
        steps = params.epochs * -(-n // params.batch_size)
        cached = False
        if params.head_cache and fragment is not None and params.epochs > 1:
            out_bytes = int(np.prod(x.shape[1:])) if x.shape[1:] else 0
            spare = self.arena_bytes - ((self.fragment_arena + 7) & ~7) - self._state_bytes()
            cached = n * (self._target_bytes() + out_bytes) <= spare
        return TrainReport(self.version, n, steps, loss, variance, len(self.update_image), 0, cached).pack()

    def update_read(self, p: bytes, max_payload: int) -> bytes:
        if len(p) != 6:
            raise BoardReply(Status.BAD_LENGTH, 6, "UPDATE_READ takes u32 offset, u16 length")
        if self.update_image is None:
            raise BoardReply(Status.NO_UPDATE, 0, "no update: TRAIN first")
        offset, length = struct.unpack("<IH", p)
        size = len(self.update_image)
        if length > max_payload or offset > size or length > size - offset:
            raise BoardReply(Status.BAD_LENGTH, size, f"update bytes: {size}")
        return self.update_image[offset:offset + length]

    def evaluate(self, p: bytes, fragment: Any) -> bytes:
        if len(p) != 4:
            raise BoardReply(Status.BAD_LENGTH, 4, "EVALUATE takes u32 max_samples")
        if self.dp_latched:
            raise BoardReply(Status.BAD_ARGUMENT, 3, "this board trains with differential privacy: EVALUATE refused")
        x, y = self._ready(fragment)
        (max_samples,) = _U32.unpack(p)
        n = min(max_samples, len(y)) if max_samples else len(y)
        assert self.tail is not None and self.values is not None  # _ready saw the program, which set w*
        tail = self.tail.copy()
        tail.set_unit_values(split_units(self.values, self.unit_shapes))
        if not n:
            return EVALUATE_RESPONSE.pack(0, 0, 0.0, 0)
        losses, out = tail.sample_losses(x[:n], y[:n])
        loss = float(losses.mean())
        return EVALUATE_RESPONSE.pack(n, _correct(tail.loss_kind, out, y[:n]), loss, 0)

    def stats(self, p: bytes, fw_ram: int) -> bytes:
        """STATS of a board without paint: the planned figures stand in for the high-water marks."""
        if p:
            raise BoardReply(Status.BAD_LENGTH, 0, "STATS takes no payload")
        train = self._state_bytes() if self.tail is not None else 0
        return STATS_RESPONSE.pack(0, 0, fw_ram, self.arena_bytes, self.fragment_arena + train,
                                   self.fragment_arena, train, fw_ram)


def _correct(loss: Loss, out: np.ndarray, targets: np.ndarray) -> int:
    """EVALUATE's correct count, as the engine counts it: argmax = class; every output's p >= 0.5
    agrees with its label; none for MSE."""
    n = out.shape[0]
    if loss is Loss.SOFTMAX_CE:
        return int((out.reshape(n, -1).argmax(axis=1) == targets).sum())
    if loss is Loss.SIGMOID_BCE:
        return int(((out.reshape(n, -1) >= 0.5) == (targets.reshape(n, -1) != 0)).all(axis=1).sum())
    return 0
