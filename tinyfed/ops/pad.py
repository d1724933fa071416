"""PAD (and PADV2, :mod:`tinyfed.ops.padv2`): constant padding of an int8 tensor of rank <= 4.

TFLM copies the int8 bytes and fills the border with the output zero point (PAD) or the
scalar constant (PADV2, whose quantization must equal the output's). Negative paddings are
refused: TFLM's reference kernel reads its input sequentially and does not crop. In the
float32 tail the border holds 0.0 (PAD) or the constant's real value (PADV2).
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.layout import FragmentBuilder
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

log = logging.getLogger(__name__)


def paddings(b: FragmentBuilder, op: OpInfo) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(before, after) per dim of the 4-D record (zeros past the rank); checked as TFLM's Prepare."""
    g = b.graph
    x, y = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    if len(op.inputs) < 2 or op.inputs[1] < 0 or not g.tensors[op.inputs[1]].is_constant:
        raise b.fail(op, "the paddings are not a constant tensor (TFLM requires one)")
    pads = np.asarray(g.constant_data(op.inputs[1])).reshape(-1).astype(np.int64)
    rank = len(y.shape)
    if pads.size != 2 * rank or len(x.shape) != rank:
        raise b.fail(op, f"{pads.size} padding values for an output of rank {rank} (TFLM needs two per dim)")
    if (pads < 0).any():
        raise b.fail(op, f"negative paddings {pads.reshape(-1, 2).tolist()}: TFLM's PAD does not crop",
                     "crop with a STRIDED_SLICE (Keras Cropping2D) instead")
    before, after = pads[0::2].tolist(), pads[1::2].tolist()
    if any(x.shape[k] + before[k] + after[k] != y.shape[k] for k in range(rank)):
        raise b.fail(op, f"output {list(y.shape)} is not input {list(x.shape)} padded by "
                     f"{pads.reshape(-1, 2).tolist()}")
    return tuple(before) + (0,) * (4 - rank), tuple(after) + (0,) * (4 - rank)


def _pad_value_q(b: FragmentBuilder, op: OpInfo, out: TensorInfo) -> int:
    """The int8 fill: the output zero point, or PADV2's constant (same quantization as the output)."""
    g = b.graph
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return int(out.zero_points[0])
    c = g.tensors[op.inputs[2]]
    if not c.is_constant or c.type_name != "INT8" or c.size != 1:
        raise b.fail(op, f"the pad value tensor {c.index} is not a constant int8 scalar")
    if list(c.zero_points) != list(out.zero_points) or [float(s) for s in c.scales] != [float(s) for s in out.scales]:
        raise b.fail(op, "the pad value's quantization differs from the output's (TFLM requires equal)")
    return int(np.asarray(g.constant_data(op.inputs[2])).reshape(-1)[0])


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    x, x_id = b.activation_input(op)
    before, after = paddings(b, op)
    if x.scales != out.scales or x.zero_points != out.zero_points:
        log.warning("op %d %s: input tensor %d and output tensor %d are quantized differently; "
                    "TFLM copies the int8 values unchanged, and so does the engine", op.index, op.name,
                    op.inputs[0], op.outputs[0])
    return BlobRecord((x_id,), (*before, *after, _pad_value_q(b, op, out)))


def _pad_value_real(g: Any, op: OpInfo) -> float:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return 0.0
    c = g.tensors[op.inputs[2]]
    q = int(np.asarray(g.constant_data(op.inputs[2])).reshape(-1)[0])
    return float(np.float32((q - int(c.zero_points[0])) * np.float32(c.scales[0]))) if c.scales else float(q)


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    before, after = paddings(b, op)
    if before[0] or after[0]:
        raise b.fail(op, "pads the batch axis; the engine trains one sample at a time")
    fill = struct.unpack("<i", struct.pack("<f", _pad_value_real(b.graph, op)))[0]
    return ProgramRecord((), (*before, fill))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {"pad_before": tuple(p[:4]), "pad_value": struct.unpack("<f", struct.pack("<i", p[4]))[0]}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return 0


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    before, value = op.params[:4], op.params[8]
    x = xs[0]
    in_shape = info.tensors[op.inputs[0]].shape
    dims = tuple(in_shape) + (1,) * (4 - len(in_shape))
    odims = tuple(out_shape) + (1,) * (4 - len(out_shape))
    y = np.full((x.shape[0], *odims), value, dtype=np.int8)
    y[(slice(None), *(slice(s, s + n) for s, n in zip(before, dims, strict=True)))] = x.reshape(x.shape[0], *dims)
    return y.reshape(x.shape[0], *out_shape)


def _float_pads(tail: FloatTail, op: OpInfo) -> tuple[tuple[int, ...], float]:
    if "pad_before" in op.options:
        return tuple(op.options["pad_before"]), float(op.options["pad_value"])
    g = tail.graph
    pads = np.asarray(g.constant_data(op.inputs[1])).reshape(-1)
    return tuple(int(v) for v in pads[0::2]), _pad_value_real(g, op)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    x = xs[0]
    before, value = _float_pads(tail, op)
    oshape = (batch,) + tuple(tail.graph.tensors[op.outputs[0]].shape[1:])
    y = np.full(oshape, value, dtype=tail.dtype)
    window = tuple(slice(s, s + n) for s, n in zip(before[1:], x.shape[1:], strict=False))
    y[(slice(None), *window)] = x
    return y, (window,)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """The input's gradient is the output gradient's interior."""
    (window,) = step.saved(op)
    step.add_grad(op.inputs[0], np.ascontiguousarray(gz[(slice(None), *window)]))


SPEC = OpSpec(
    name="PAD", code=34, arity=1, options=(),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(64, 0), fused_activation=False,
)
