"""STRIDED_SLICE on int8 tensors of rank <= 4: constant begin / end / strides with begin, end
and shrink-axis masks, negative indices and negative strides.

The host resolves every axis as TFLM's ``StartForAxis`` / ``StopForAxis`` do (masks, negative
indices, clamping; TFLM ignores the ellipsis and new-axis masks) into a start, a stride and a
count per dim of the 4-D record; the kernels then gather. The values are copied, never
rescaled (TFLM's int8 kernel copies them too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.layout import FragmentBuilder
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

_LOWEST, _MAX = -(1 << 31), (1 << 31) - 1


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def _axis(begin: int, end: int, stride: int, size: int, masks: tuple[int, int, int], k: int) -> tuple[int, int]:
    """(start, count) of axis ``k`` as TFLM's StartForAxis / StopForAxis and its loop give them."""
    begin_mask, end_mask, shrink_mask = masks
    start = (_LOWEST if stride > 0 else _MAX) if begin_mask >> k & 1 else begin
    start += size if start < 0 else 0
    start = _clamp(start, 0, size) if stride > 0 else _clamp(start, -1, size - 1)
    if shrink_mask >> k & 1:
        stop = start + 1
    else:
        stop = (_MAX if stride > 0 else _LOWEST) if end_mask >> k & 1 else end
        stop += size if stop < 0 else 0
        stop = _clamp(stop, 0, size) if stride > 0 else _clamp(stop, -1, size - 1)
    return start, len(range(start, stop, stride))


def resolve(b: FragmentBuilder, op: OpInfo) -> tuple[int, ...]:
    """Start x4, stride x4, count x4 over the 4-D record; checks what TFLM's Prepare checks."""
    g = b.graph
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    if len(op.inputs) != 4 or any(t < 0 or not g.tensors[t].is_constant for t in op.inputs[1:]):
        raise b.fail(op, "begin, end and strides must be constant tensors (TFLM requires them at Prepare)")
    rank = len(x.shape)
    begin, end, strides = (np.asarray(g.constant_data(t)).reshape(-1).astype(int).tolist() for t in op.inputs[1:])
    if not (len(begin) == len(end) == len(strides) == rank):
        raise b.fail(op, f"begin/end/strides of {len(begin)}/{len(end)}/{len(strides)} values for rank {rank}")
    if 0 in strides:
        raise b.fail(op, "a stride is zero (TFLM: stride value has to be non-zero)")
    o = op.options
    masks = (int(o.get("begin_mask", 0)), int(o.get("end_mask", 0)), int(o.get("shrink_axis_mask", 0)))
    starts, counts = [], []
    for k in range(rank):
        s, n = _axis(begin[k], end[k], strides[k], x.shape[k], masks, k)
        starts.append(s)
        counts.append(n)
    kept = [n for k, n in enumerate(counts) if not masks[2] >> k & 1]
    if kept != list(y.shape):
        raise b.fail(op, f"output {list(y.shape)} disagrees with the slice, which gives {kept}")
    if 0 in counts:
        raise b.fail(op, "the slice is empty")
    pad = 4 - rank
    return (*starts, *(0,) * pad, *strides, *(1,) * pad, *counts, *(1,) * pad)


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    x, x_id = b.activation_input(op)
    if x.scales != out.scales or x.zero_points != out.zero_points:
        raise b.fail(op, "input and output quantization differ (TFLM copies the int8 values unchanged)",
                     "give the slice's output the input's quantization, as converters do")
    return BlobRecord((x_id,), resolve(b, op))


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    p = resolve(b, op)
    if p[0] != 0 or p[8] != 1:
        raise b.fail(op, "slices the batch axis; the engine trains one sample at a time")
    return ProgramRecord((), p)


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {"slice": tuple(p[:12])}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return 0


def _index(p: tuple[int, ...] | list[int]) -> tuple[Any, ...]:
    """Open-mesh indices of dims 0..3 of the record."""
    return tuple(np.ix_(*(p[k] + p[4 + k] * np.arange(p[8 + k]) for k in range(4))))


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    x = xs[0]
    in_shape = info.tensors[op.inputs[0]].shape
    v = x.reshape(x.shape[0], *in_shape, *(1,) * (4 - len(in_shape)))
    return v[(slice(None), *_index(op.params))].reshape(x.shape[0], *out_shape)


def _params(tail: FloatTail, op: OpInfo) -> tuple[int, ...]:
    if "slice" in op.options:
        return tuple(op.options["slice"])
    from tinyfed.firmware_bridge.compile.layout import FragmentBuilder

    return resolve(FragmentBuilder(tail.graph, "tail", 4), op)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    x = xs[0]
    p = _params(tail, op)
    v = x.reshape(batch, *x.shape[1:], *(1,) * (5 - x.ndim))
    idx = (slice(None), *_index(p)[1:])
    z = v[idx]
    return z.reshape((batch,) + tuple(tail.graph.tensors[op.outputs[0]].shape[1:])), (x.shape, v.shape, idx)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """The output gradient scattered back to the elements sliced (each taken once)."""
    xshape, vshape, idx = step.saved(op)
    g = np.zeros(vshape, gz.dtype)
    g[idx] = gz.reshape(g[idx].shape)
    step.add_grad(op.inputs[0], g.reshape(xshape))


SPEC = OpSpec(
    name="STRIDED_SLICE", code=45, arity=1, options=("begin_mask", "end_mask", "shrink_axis_mask"),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(88, 0), fused_activation=False,
)
