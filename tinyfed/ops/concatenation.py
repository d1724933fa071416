"""CONCATENATION: int8 tensors joined along one axis (any axis, negative ones resolved), up to
TFLM's ten inputs.

TFLM's int8 kernel copies the input bytes without rescaling, and its Prepare refuses an input
quantized unlike the output: converters insert a QUANTIZE (requantization) before such an
input, and so must any other producer; tinyfed refuses the same inputs. A TFMB record has
three input slots, so the blob lists every input in its data section: per input its tensor id,
arena offset and elements per outer row (``docs/fragment-format.md``). The training engine
takes up to three inputs (its record's slots).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import VARIADIC, BlobRecord, OpSpec, ProgramRecord

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.layout import FragmentBuilder
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

MAX_INPUTS = 10  # TFLM's kMaxInputNum
MAX_TRAIN_INPUTS = 3  # the TFTR record's input slots


def concat_axis(b: FragmentBuilder, op: OpInfo) -> int:
    """The positive axis; checks shapes and options as TFLM's Prepare and reference kernel do."""
    g = b.graph
    out = g.tensors[op.outputs[0]]
    rank = len(out.shape)
    if op.options.get("activation", "NONE") not in ("NONE", None):
        raise b.fail(op, f"fused activation {op.options.get('activation')} (TFLM's CONCATENATION requires NONE)")
    if not 1 <= len(op.inputs) <= MAX_INPUTS:
        raise b.fail(op, f"has {len(op.inputs)} inputs; TFLM concatenates at most {MAX_INPUTS}",
                     "concatenate in several steps")
    axis = int(op.options.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise b.fail(op, f"axis {op.options.get('axis')} is out of range for rank {rank}")
    total = 0
    for t in op.inputs:
        shp = g.tensors[t].shape
        if len(shp) != rank or any(shp[k] != out.shape[k] for k in range(rank) if k != axis):
            raise b.fail(op, f"input tensor {t} {list(shp)} does not fit output {list(out.shape)} along axis {axis}")
        total += shp[axis]
    if total != out.shape[axis]:
        raise b.fail(op, f"inputs add up to {total} along axis {axis}, the output has {out.shape[axis]}")
    return axis


def _ids(info: BlobInfo, op: BlobOp) -> tuple[int, ...]:
    """The blob ids of every input, from the op's list in the data section."""
    n, _axis, offset = op.params[:3]
    return tuple(int(v) for v in info.int32_array(offset, 3 * n)[0::3])


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    axis = concat_axis(b, op)
    ids, entries = [], []
    for k, t in enumerate(op.inputs):
        x, x_id = b.activation_input(op, k, f"input {k}")
        if float(np.float32(x.scales[0])) != float(np.float32(out.scales[0])) or x.zero_points != out.zero_points:
            raise b.fail(op, f"input tensor {t} is quantized (scale {x.scales[0]:.6g}, zero point {x.zero_points[0]}) "
                         f"unlike the output ({out.scales[0]:.6g}, {out.zero_points[0]}); TFLM's int8 "
                         "CONCATENATION does not rescale and refuses it",
                         "requantize that input to the output's scale with a QUANTIZE op, as converters do")
        ids.append(x_id)
        entries.append((x_id, 0, math.prod(x.shape[axis:])))  # arena offset: filled in once planned
    outer = math.prod(out.shape[:axis])
    listing = b.int32s([v for e in entries for v in e])
    for k, t in enumerate(op.inputs):
        b.arena_offset_at(listing + 12 * k + 4, t)
    return BlobRecord(tuple(ids[:3]), (len(ids), axis, listing, outer))


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    axis = concat_axis(b, op)
    if not 1 <= len(op.inputs) <= MAX_TRAIN_INPUTS:
        raise b.fail(op, f"has {len(op.inputs)} inputs; the training engine concatenates at most {MAX_TRAIN_INPUTS}",
                     "cut the plan after this op")
    if axis == 0:
        raise b.fail(op, "concatenates along the batch axis; the engine trains one sample at a time")
    rest = tuple(b.activation(op, t, f"input {k + 1}") for k, t in enumerate(op.inputs[1:]))
    return ProgramRecord(rest, (axis,))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {"axis": p[0]}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return 0


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    axis = op.params[1]
    batch = xs[0].shape[0]
    parts = [x.reshape(batch, *info.tensors[t].shape) for x, t in zip(xs, _ids(info, op), strict=True)]
    return np.concatenate(parts, axis=1 + axis).reshape(batch, *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    rank = len(tail.graph.tensors[op.outputs[0]].shape)
    axis = int(op.options.get("axis", 0)) % rank
    sizes = [x.shape[axis] for x in xs]
    return np.concatenate(xs, axis=axis), (axis, sizes)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """Each input gets its slice of the output gradient."""
    axis, sizes = step.saved(op)
    start = 0
    for t, n in zip(op.inputs, sizes, strict=True):
        idx = [slice(None)] * gz.ndim
        idx[axis] = slice(start, start + n)
        step.add_grad(t, np.ascontiguousarray(gz[tuple(idx)]))
        start += n


SPEC = OpSpec(
    name="CONCATENATION", code=2, arity=VARIADIC, options=("axis", "activation"),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(80, 0), fused_activation=False, blob_inputs=_ids,
)
