"""RESHAPE: the same int8 bytes under another shape; its output aliases its input's memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    x, x_id = b.activation_input(op)
    if x.size != out.size:
        raise b.fail(op, "input and output sizes differ")
    if x.scales != out.scales or x.zero_points != out.zero_points:
        raise b.fail(op, "input and output quantization differ")
    b.alias(op.outputs[0], op.inputs[0])
    return BlobRecord((x_id,), ())


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    if b.graph.tensors[op.inputs[0]].size != b.graph.tensors[op.outputs[0]].size:
        raise b.fail(op, "reshape changes the element count")
    return ProgramRecord()


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return 0


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    return xs[0].reshape(xs[0].shape[0], *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    xin = xs[0]
    return xin.reshape((batch,) + tuple(tail.graph.tensors[op.outputs[0]].shape[1:])), (xin.shape,)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    (xshape,) = step.saved(op)
    step.add_grad(op.inputs[0], gz.reshape(xshape))


SPEC = OpSpec(
    name="RESHAPE", code=22, arity=1, options=(),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(0, 0), fused_activation=False, alias=True,
)
