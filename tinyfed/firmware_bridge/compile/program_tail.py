"""Read a TFTR training program back into the float32 reference (:class:`FloatTail`).

The ``sim://`` board receives the same bytes a real board does, so it must train from the
program itself, not from the plan files it was compiled from. This module decodes the program's
tensor, op and unit records (layout: ``docs/fragment-format.md``, "Training program (TFTR)") into
the small graph interface :class:`FloatTail` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyfed import ops
from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile import train_blob as tb
from tinyfed.planner import trainable as tfw

_ACTS = {0: "NONE", 1: "RELU", 2: "RELU6"}


@dataclass
class _Tensor:
    index: int
    shape: tuple[int, ...]
    is_constant: bool
    scales: list[float] = field(default_factory=list)
    zero_points: list[int] = field(default_factory=list)
    quantized_dimension: int = 0
    dtype: Any = None
    data: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class _Op:
    index: int
    name: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any]


class ProgramGraph:
    """The parts of :class:`~tinyfed.models.tflite_graph.TfliteGraph` that FloatTail uses."""

    def __init__(self, tensors: list[_Tensor], graph_ops: list[_Op], inputs: list[int], outputs: list[int]) -> None:
        self.tensors, self.ops, self.inputs, self.outputs = tensors, graph_ops, inputs, outputs

    def constant_data(self, t: int) -> np.ndarray:
        data = self.tensors[t].data
        if data is None:
            raise ModelError(f"tensor {t} of the training program is not a constant")
        return data

    def weight_tensor(self, op: _Op) -> _Tensor | None:
        layout = ops.get(op.name).weights
        if layout is not None and len(op.inputs) > layout.weight_input:
            return self.tensors[op.inputs[layout.weight_input]]
        return None

    def bias_tensor(self, op: _Op) -> _Tensor | None:
        layout = ops.get(op.name).weights
        if layout is not None and len(op.inputs) > layout.bias_input:
            return self.tensors[op.inputs[layout.bias_input]]
        return None

    def output_channel_axis(self, op: _Op) -> int | None:
        layout = ops.get(op.name).weights
        return None if layout is None else layout.channel_axis


def program_graph(blob: bytes) -> tuple[ProgramGraph, list[tfw.TrainableUnit], tb.ProgramInfo]:
    """Decode a TFTR program (header checked by :func:`train_blob.parse_program`)."""
    info = tb.parse_program(blob)
    h = tb._HEADER.unpack_from(blob)
    n_tensors, t_off, o_off, u_off, d_off = h[12], h[15], h[16], h[17], h[18]
    in_t, out_t = h[21], h[22]
    data = memoryview(blob)[d_off:]
    tensors: list[_Tensor] = []
    for i in range(n_tensors):
        record = tb._TENSOR.unpack_from(blob, t_off + i * tb.TENSOR_BYTES)
        kind, rank, axis, _r, d0, d1, d2, d3, a, b, c, e, _map = record
        shape = (d0, d1, d2, d3)[:rank]
        if kind == tb.KIND_ACT:
            tensors.append(_Tensor(i, shape, False, dtype=np.int8))
            continue
        ch, q_off, sc_off, zp_off = a, b, c, e
        n = int(np.prod(shape))
        q = np.frombuffer(data, "<i1" if kind == tb.KIND_Q8 else "<i4", n, q_off).reshape(shape)
        scales = np.frombuffer(data, "<f4", ch, sc_off).astype(np.float64).tolist()
        zps = np.frombuffer(data, "<i4", ch, zp_off).astype(int).tolist()
        tensors.append(_Tensor(i, shape, True, scales, zps, axis, q.dtype, q.copy()))
    tensors[in_t].scales = [info.input_scale]
    tensors[in_t].zero_points = [info.input_zero_point]
    graph_ops: list[_Op] = []
    for i in range(info.op_count):
        code, act, _flags, _r, i0, i1, i2, out, *p = tb._OP.unpack_from(blob, o_off + i * tb.OP_BYTES)
        spec = ops.by_code(code)
        if spec is None:
            raise ModelError(f"training program op {i} has unknown code {code}")
        ins = [t for t in (i0, i1, i2) if t != tb.NONE16]
        opts: dict[str, Any] = {"activation": _ACTS.get(act, "NONE")}
        opts.update(spec.read_program(tensors, ins, out, p))
        graph_ops.append(_Op(i, spec.name, ins, [out], opts))
    units = []
    for k in range(info.unit_count):
        op_i, t, kind, axis, n_ch, per, _start, ch_off, val_off = tb._UNIT.unpack_from(blob, u_off + k * tb.UNIT_BYTES)
        channels = tuple(int(c) for c in np.frombuffer(data, "<u2", n_ch, ch_off))
        values = np.frombuffer(data, "<f4", n_ch * per, val_off).reshape(n_ch, per).astype(np.float32)
        units.append(tfw.TrainableUnit(op_i, t, kind, axis, channels, tensors[t].shape[axis], values))
    return ProgramGraph(tensors, graph_ops, [in_t], [out_t]), units, info


def program_tail(blob: bytes):
    """The program as a :class:`FloatTail`, its unit shapes and its RAM bytes on a board."""
    from tinyfed.training.tail import FloatTail

    graph, units, info = program_graph(blob)
    tail = FloatTail(graph, units, loss=info.loss)  # type: ignore[arg-type]
    return tail, [(len(u.channels), u.values_per_channel) for u in units], info.ram_bytes
