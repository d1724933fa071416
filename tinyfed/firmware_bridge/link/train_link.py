"""Messages of local training on the link (``docs/protocol.md``, "Training"): what TRAIN,
UPDATE_READ, EVALUATE and STATS carry, packed and parsed in one place for the client, the
``sim://`` board and the tests."""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TRAIN_REQUEST = struct.Struct("<IHHfIIB")  # version, epochs, batch, lr, seed, max_samples, flags
#: With FLAG_DP the request goes on with the mechanism's parameters (docs/privacy.md).
TRAIN_DP = struct.Struct("<ff")  # clip C (L2 norm), noise multiplier sigma (noise std = sigma * C)
TRAIN_RESPONSE = struct.Struct("<IIIffIIB")  # version, n, steps, loss, variance, update_bytes, cycles, cached
#: Firmware that times the frozen head appends its cycles to TRAIN's response (the twin does not).
TRAIN_HEAD_CYCLES = struct.Struct("<I")
UPDATE_HEADER = struct.Struct("<IIffIHBx")  # version, n, loss, variance, elements, scales, flags
EVALUATE_RESPONSE = struct.Struct("<IIfI")  # n, correct, loss, cycles
STATS_RESPONSE = struct.Struct("<8I")
FLAG_PER_CHANNEL = 0x01
FLAG_HEAD_CACHE = 0x02
FLAG_FLOAT_UPDATE = 0x04  # TRAIN: send delta as float32 (the dense baselines' payload)
FLAG_DP = 0x08  # TRAIN: clip and noise the delta on the board; loss and variance withheld
UPDATE_FLAG_FLOAT = 0x02  # update image: float32 elements, no scales


@dataclass(frozen=True)
class TrainParams:
    """One local training run (the run config's device step)."""

    version: int
    epochs: int = 1
    batch_size: int = 16
    lr: float = 0.01
    seed: int = 0
    max_samples: int = 0  # 0 = every local sample
    per_channel: bool = False
    #: keep the frozen fragment's outputs in spare arena RAM after the first epoch (RAM the plan
    #: did not budget; the board falls back to recomputing when it does not fit)
    head_cache: bool = False
    #: send delta as float32 instead of int8 (FedAvg/FedBuff as the paper runs them)
    float_update: bool = False
    #: differential privacy (docs/privacy.md): clip delta to this L2 norm (0 = DP off) ...
    dp_clip: float = 0.0
    #: ... and add Gaussian noise of std dp_noise * dp_clip per coordinate
    dp_noise: float = 0.0

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0

    def pack(self) -> bytes:
        if self.epochs < 1 or self.batch_size < 1 or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"epochs and batch_size must be >= 1 and lr finite and > 0: {self}")
        if self.dp and not (math.isfinite(self.dp_clip) and math.isfinite(self.dp_noise) and self.dp_noise >= 0):
            raise ValueError(f"dp_clip must be finite and > 0, dp_noise finite and >= 0: {self}")
        flags = ((FLAG_PER_CHANNEL if self.per_channel else 0) | (FLAG_HEAD_CACHE if self.head_cache else 0)
                 | (FLAG_FLOAT_UPDATE if self.float_update else 0) | (FLAG_DP if self.dp else 0))
        p = TRAIN_REQUEST.pack(self.version, self.epochs, self.batch_size, self.lr, self.seed & 0xFFFFFFFF,
                               self.max_samples, flags)
        return p + TRAIN_DP.pack(self.dp_clip, self.dp_noise) if self.dp else p

    @classmethod
    def unpack(cls, p: bytes) -> TrainParams:
        """The request as a board reads it; raises ValueError when the DP flag and its parameters
        do not come together (the board's BAD_LENGTH)."""
        version, epochs, batch, lr, seed, max_samples, flags = TRAIN_REQUEST.unpack_from(p)
        dp = bool(flags & FLAG_DP)
        if len(p) != TRAIN_REQUEST.size + (TRAIN_DP.size if dp else 0):
            raise ValueError(f"TRAIN of {len(p)} bytes with DP flag {dp}")
        clip, noise = TRAIN_DP.unpack_from(p, TRAIN_REQUEST.size) if dp else (0.0, 0.0)
        return cls(version, epochs, batch, lr, seed, max_samples, bool(flags & FLAG_PER_CHANNEL),
                   bool(flags & FLAG_HEAD_CACHE), bool(flags & FLAG_FLOAT_UPDATE), clip, noise)


@dataclass(frozen=True)
class TrainReport:
    """TRAIN's answer: the run happened; the update waits on the board for UPDATE_READ."""

    version: int
    n: int
    steps: int
    loss: float
    variance: float
    update_bytes: int
    cycles: int
    head_cached: bool = False  # the fragment's outputs were cached after the first epoch
    #: Of ``cycles``, those the frozen int8 head took (the rest: the float tail's forward, backward
    #: and SGD); None when the board does not report it (the sim:// twin, older firmware).
    head_cycles: int | None = None

    @classmethod
    def unpack(cls, p: bytes) -> TrainReport:
        version, n, steps, loss, variance, update_bytes, cycles, cached = TRAIN_RESPONSE.unpack_from(p)
        head = TRAIN_HEAD_CYCLES.unpack_from(p, TRAIN_RESPONSE.size)[0] if len(p) > TRAIN_RESPONSE.size else None
        return cls(version, n, steps, loss, variance, update_bytes, cycles, bool(cached), head)

    def pack(self) -> bytes:
        p = TRAIN_RESPONSE.pack(self.version, self.n, self.steps, self.loss, self.variance, self.update_bytes,
                                self.cycles & 0xFFFFFFFF, int(self.head_cached))
        return p if self.head_cycles is None else p + TRAIN_HEAD_CYCLES.pack(self.head_cycles & 0xFFFFFFFF)


@dataclass
class DeviceUpdate:
    """An update as a board sends it: delta of w* = scale * q (int8), or float32 delta values
    (``values``, the dense baselines' payload), with its metadata."""

    version: int
    n: int
    loss: float
    variance: float
    q: np.ndarray  # int8, every element of w* in trainable.tfw order (empty for a float32 update)
    scales: np.ndarray  # float32: one per unit, or one per unit row (output channel) when per_channel
    per_channel: bool
    wire_bytes: int = 0  # bytes of the update image as sent
    values: np.ndarray | None = None  # float32 delta, when the board sent float32

    def dequantize(self, unit_shapes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Float deltas per unit, shaped (channels, values per channel) like trainable.tfw records."""
        if self.values is not None:
            out, k = [], 0
            for channels, per in unit_shapes:
                out.append(self.values[k:k + channels * per].reshape(channels, per).copy())
                k += channels * per
            if k != self.values.size:
                raise ValueError(f"update holds {self.values.size} values, the plan's units {k}")
            return out
        out, k, s = [], 0, 0
        for channels, per in unit_shapes:
            q = self.q[k:k + channels * per].astype(np.float32).reshape(channels, per)
            if self.per_channel:
                out.append(q * self.scales[s:s + channels, None])
                s += channels
            else:
                out.append(q * self.scales[s])
                s += 1
            k += channels * per
        if k != self.q.size or s != self.scales.size:
            raise ValueError(f"update holds {self.q.size} values / {self.scales.size} scales, "
                             f"the plan's units {k} / {s}")
        return out

    def dense(self, unit_shapes: list[tuple[int, int]]) -> np.ndarray:
        return np.concatenate([d.ravel() for d in self.dequantize(unit_shapes)])


def delta_variance(delta: np.ndarray) -> float:
    """The variance an update reports: of its flat delta, in float64, rounded to the float32 the update
    carries. The board computes it before quantizing; with DP the host computes it on the noised delta."""
    return float(np.float32(delta.astype(np.float64).var())) if delta.size else 0.0


def pack_update(version: int, n: int, loss: float, variance: float, q: np.ndarray, scales: np.ndarray,
                per_channel: bool, values: np.ndarray | None = None) -> bytes:
    """The update image UPDATE_READ serves: header | f32 scales | int8 q (or f32 values)."""
    if values is not None:
        v = np.asarray(values, "<f4")
        return UPDATE_HEADER.pack(version, n, loss, variance, v.size, 0, UPDATE_FLAG_FLOAT) + v.tobytes()
    header = UPDATE_HEADER.pack(version, n, loss, variance, q.size, scales.size,
                                FLAG_PER_CHANNEL if per_channel else 0)
    return header + np.asarray(scales, "<f4").tobytes() + np.asarray(q, np.int8).tobytes()


def unpack_update(image: bytes) -> DeviceUpdate:
    if len(image) < UPDATE_HEADER.size:
        raise ValueError(f"update image of {len(image)} bytes is shorter than its header")
    version, n, loss, variance, elements, n_scales, flags = UPDATE_HEADER.unpack_from(image)
    if flags & UPDATE_FLAG_FLOAT:
        if n_scales or len(image) != UPDATE_HEADER.size + 4 * elements:
            raise ValueError(f"float32 update image of {len(image)} bytes for {elements} values")
        values = np.frombuffer(image, "<f4", elements, UPDATE_HEADER.size).astype(np.float32)
        return DeviceUpdate(version, n, loss, variance, np.zeros(0, np.int8), np.zeros(0, np.float32), False,
                            len(image), values)
    want = UPDATE_HEADER.size + 4 * n_scales + elements
    if len(image) != want:
        raise ValueError(f"update image of {len(image)} bytes, its header says {want}")
    at = UPDATE_HEADER.size
    scales = np.frombuffer(image, "<f4", n_scales, at).astype(np.float32)
    q = np.frombuffer(image, np.int8, elements, at + 4 * n_scales).copy()
    return DeviceUpdate(version, n, loss, variance, q, scales, bool(flags & FLAG_PER_CHANNEL), len(image))


@functools.lru_cache(maxsize=64)
def _blocks(unit_shapes: tuple[tuple[int, int], ...], per_channel: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The quantization blocks of a layout (one per unit, or per row of every unit): their
    sizes, the starts of the non-empty ones, which are non-empty, and the element count.
    Fixed per layout, so computed once (the simulator quantizes every task's update)."""
    shapes = np.array(unit_shapes, dtype=np.int64).reshape(-1, 2)
    channels, per = shapes[:, 0], shapes[:, 1]
    sizes = np.repeat(per, channels) if per_channel else channels * per
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    filled = sizes > 0  # reduceat would hand an empty block its neighbour's first value
    for a in (sizes, starts, filled):
        a.flags.writeable = False
    return sizes, starts[filled], filled, int(sizes.sum())


def quantize_flat(delta: np.ndarray, unit_shapes: list[tuple[int, int]], per_channel: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The board's quantization of a flat float32 delta: scale = max|d| / 127 per unit (or row),
    q = clip(rint(d / scale), -127, 127), 0 where the scale is 0. float32 throughout, as on the FPU.

    Whole-vector numpy passes (maxima by ``reduceat``, each element divided by its block's scale):
    elementwise float32 division and an exact maximum give the same bits as a loop per block."""
    d = np.asarray(delta, np.float32).ravel()
    sizes, starts, filled, total = _blocks(tuple((int(c), int(p)) for c, p in unit_shapes), bool(per_channel))
    if total > d.size:
        raise ValueError(f"delta of {d.size} values for units of {total}")
    q = np.zeros(d.size, np.int8)
    if not sizes.size:
        return q, np.zeros(0, np.float32)
    amax = np.zeros(sizes.size, np.float32)
    if starts.size:
        amax[filled] = np.maximum.reduceat(np.abs(d[:total]), starts)
    scales = amax / np.float32(127.0)
    ok = scales > 0  # False for 0 and NaN: those blocks stay 0
    qq = d[:total] / np.repeat(np.where(ok, scales, np.float32(1.0)), sizes)
    np.rint(qq, out=qq)
    np.clip(qq, -127, 127, out=qq)
    if not ok.all():
        qq[~np.repeat(ok, sizes)] = 0
    q[:total] = qq.astype(np.int8)
    return q, scales


@dataclass(frozen=True)
class EvalReport:
    n: int
    correct: int
    loss: float
    cycles: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @classmethod
    def unpack(cls, p: bytes) -> EvalReport:
        return cls(*EVALUATE_RESPONSE.unpack(p))


@dataclass(frozen=True)
class RamStats:
    """STATS: high-water marks of the RAM paint laid at reset."""

    stack_bytes: int
    stack_peak: int
    static_bytes: int
    arena_bytes: int
    arena_peak: int
    fragment_arena: int
    training_ram: int
    firmware_region: int  # stack + .data + .bss, padded to the arena's KiB boundary

    @property
    def peak_ram(self) -> int:
        """Static data + deepest stack + highest arena byte ever written."""
        return self.static_bytes + self.stack_peak + self.arena_peak

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_ram"] = self.peak_ram
        return d

    @classmethod
    def unpack(cls, p: bytes) -> RamStats:
        return cls(*STATS_RESPONSE.unpack(p))
