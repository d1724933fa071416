"""What the one-input elementwise ops (LOGISTIC, TANH, RELU, RELU6, LEAKY_RELU, HARD_SWISH) share:
the input check of their TFMB encoders, their TFTR record, their MAC count."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tinyfed.ops.base import ProgramRecord

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo

__all__ = ["elementwise_input", "encode_program", "macs", "read_program"]


def elementwise_input(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> tuple[TensorInfo, int]:
    """The op's int8 input and its blob id, checked to have the output's element count."""
    x, x_id = b.activation_input(op)
    if x.size != out.size:
        raise b.fail(op, f"input {list(x.shape)} and output {list(out.shape)} sizes differ",
                     "convert the model again: an elementwise op keeps its input's shape")
    return x, x_id


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    """No parameters: the float32 kernel needs only the input and output."""
    g = b.graph
    if g.tensors[op.inputs[0]].size != g.tensors[op.outputs[0]].size:
        raise b.fail(op, "input and output sizes differ", "convert the model again")
    return ProgramRecord()


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    """One operation per output element."""
    return out
