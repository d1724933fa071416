"""The trainable part of a plan: ``trainable.tfw``, the float32 initial values of w*.

Layout (little endian; documented in ``docs/plan-format.md``)::

    header   magic "TFW1" | u16 version=1 | u16 unit count | u32 total values | u32 crc32(records)
    record   u16 op index in tail.tflite | u16 tensor index in tail.tflite | u8 kind (0 weights, 1 bias)
             | u8 output-channel axis | u16 channel count n | u16 channels in the tensor
             | u16 reserved (0) | u32 values per channel | u16 channel index[n] (+2 bytes pad if n odd)
             | f32 values[n * values per channel]

Weights of a record are the selected output channels in ascending order; each channel's values
are the tensor's elements with the output-channel axis moved first, in C order. Values are the
dequantized int8 weights (``scale[c] * (q - zero_point[c])``), so the board starts training
from exactly the model the frozen int8 graph encodes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from tinyfed.errors import PlanError

MAGIC = b"TFW1"
VERSION = 1
_HEADER = struct.Struct("<4sHHII")
_RECORD = struct.Struct("<HHBBHHHI")
KIND_WEIGHTS = 0
KIND_BIAS = 1


@dataclass
class TrainableUnit:
    """One tensor's selected slice: the board trains exactly these values."""

    op_index: int
    tensor_index: int
    kind: int
    axis: int
    channels: tuple[int, ...]
    tensor_channels: int
    values: np.ndarray  # float32, shape (len(channels), values_per_channel)

    @property
    def values_per_channel(self) -> int:
        return int(self.values.shape[1]) if self.values.ndim == 2 else 1


def dequantize_channels(data: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, axis: int) -> np.ndarray:
    """int8/int32 constant -> float32 with per-channel (or per-tensor) scale and zero point."""
    moved = np.moveaxis(data.astype(np.float64), axis, 0)
    n = moved.shape[0]
    s = np.broadcast_to(np.asarray(scales, dtype=np.float64), (n,)) if len(scales) in (1, n) else None
    z = np.broadcast_to(np.asarray(zero_points, dtype=np.float64), (n,)) if len(zero_points) in (1, n) else None
    if s is None or z is None:
        raise PlanError(f"tensor has {len(scales)} scales for {n} channels",
                        fix="re-convert the model with per-channel or per-tensor quantization")
    shape = (n,) + (1,) * (moved.ndim - 1)
    return ((moved - z.reshape(shape)) * s.reshape(shape)).reshape(n, -1).astype(np.float32)


def encode(units: list[TrainableUnit]) -> bytes:
    """Serialize units to the ``trainable.tfw`` format."""
    records = bytearray()
    total = 0
    for u in units:
        n = len(u.channels)
        values = np.ascontiguousarray(u.values, dtype="<f4").reshape(n, -1)
        records += _RECORD.pack(u.op_index, u.tensor_index, u.kind, u.axis, n, u.tensor_channels, 0, values.shape[1])
        records += struct.pack(f"<{n}H", *u.channels)
        if n % 2:
            records += b"\0\0"
        records += values.tobytes()
        total += values.size
    header = _HEADER.pack(MAGIC, VERSION, len(units), total, zlib.crc32(records))
    return header + bytes(records)


def decode(blob: bytes) -> list[TrainableUnit]:
    """Parse ``trainable.tfw``; every inconsistency is an error, never a partial result."""
    if len(blob) < _HEADER.size:
        raise PlanError(f"trainable file is {len(blob)} bytes, shorter than its header", fix="re-run `tinyfed plan`")
    magic, version, count, total, crc = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION:
        raise PlanError(f"not a tinyfed trainable file (magic {magic!r}, version {version})",
                        fix="re-run `tinyfed plan`")
    body = blob[_HEADER.size :]
    if zlib.crc32(body) != crc:
        raise PlanError("trainable file fails its CRC-32 check", fix="the file is corrupt; re-run `tinyfed plan`")
    units, pos, seen = [], 0, 0
    for _ in range(count):
        op, tensor, kind, axis, n, tensor_channels, _r, per = _RECORD.unpack_from(body, pos)
        pos += _RECORD.size
        channels = struct.unpack_from(f"<{n}H", body, pos)
        pos += 2 * n + (2 if n % 2 else 0)
        values = np.frombuffer(body, dtype="<f4", count=n * per, offset=pos).reshape(n, per).astype(np.float32)
        pos += 4 * n * per
        seen += n * per
        units.append(TrainableUnit(op, tensor, kind, axis, tuple(channels), tensor_channels, values))
    if pos != len(body) or seen != total:
        raise PlanError("trainable file length does not match its records", fix="re-run `tinyfed plan`")
    return units


def whole_model_units(graph) -> list[TrainableUnit]:
    """Every weight and bias of every op, all channels: w* = the whole graph, as the FedAvg and
    FedBuff baselines train it (``encode`` it and compile it with the graph as the tail)."""
    units = []
    for op in graph.ops:
        pairs = (
            (graph.weight_tensor(op), KIND_WEIGHTS, graph.output_channel_axis(op)),
            (graph.bias_tensor(op), KIND_BIAS, 0),
        )
        for t, kind, axis in pairs:
            if t is None:
                continue
            data = graph.constant_data(t.index)
            scales = np.asarray(t.scales if t.scales else [1.0])
            zero_points = np.asarray(t.zero_points if t.zero_points else [0])
            qaxis = t.quantized_dimension if len(scales) > 1 else axis
            if qaxis != axis:
                raise PlanError(f"tensor {t.index} is quantized along axis {qaxis}, not its output channels ({axis})",
                                fix="convert the model with per-channel quantization on the output channels")
            values = dequantize_channels(data, scales, zero_points, axis)
            channels = values.shape[0]
            units.append(TrainableUnit(op.index, t.index, kind, axis, tuple(range(channels)), channels, values))
    return units
