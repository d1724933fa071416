"""What one op module tells the host: the :class:`OpSpec` record and the records its encoders return.

An op module (``tinyfed/ops/<op>.py``) defines the functions below for its op and one
``SPEC = OpSpec(...)``; the generic drivers (the TFMB and TFTR compilers, the program reader,
the numpy int8 twin, :class:`~tinyfed.training.FloatTail`, the planner's memory model and the
simulator's MAC count) look the op up in :mod:`tinyfed.ops.registry` and call these entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

__all__ = ["VARIADIC", "BlobRecord", "OpSpec", "ProgramRecord", "WeightLayout"]

VARIADIC = -1  # OpSpec.arity of an op whose inputs are all activations, however many


@dataclass(frozen=True)
class WeightLayout:
    """Where a trainable op keeps its int8 weights and int32 bias, and the weights' channel axis."""

    weight_input: int
    bias_input: int
    channel_axis: int  # axis of the weights that indexes output channels


@dataclass(frozen=True)
class BlobRecord:
    """An op's TFMB record: blob tensor ids of its inputs (None: absent) and its int32 parameters."""

    inputs: tuple[int | None, ...]  # at most 3
    params: tuple[int, ...]  # at most 16; the rest are zero


@dataclass(frozen=True)
class ProgramRecord:
    """An op's TFTR record past input slot 0 (the driver's): input slots 1 and 2 and the parameters."""

    inputs: tuple[int | None, ...] = ()  # slots 1, 2 (None: absent)
    params: tuple[int, ...] = ()  # at most 13; p13/p14 are the op's scratch (blob.py), p15 zero


#: (tensors, input ids, output id, 13 parameters) of a TFTR op record -> builtin options.
ProgramReader = Callable[[list[Any], list[int], int, list[int]], dict[str, Any]]


@dataclass(frozen=True)
class OpSpec:
    """Everything the host knows about one TFLite builtin op.

    ``code`` is the TFLite ``BuiltinOperator`` code: the TFMB and TFTR formats and the C engines
    use it as their op code. ``arity`` counts the activation inputs (the rest are constants);
    ``VARIADIC`` (-1): every input is an activation (CONCATENATION).
    """

    name: str
    code: int
    arity: int
    options: tuple[str, ...]  # builtin options the op reads
    #: TFMB encoder: checks the op as TFLM's Prepare would and returns its record
    encode_blob: Callable[[BlobBuilder, OpInfo, TensorInfo], BlobRecord]
    #: TFTR encoder: checks the op for the training engine and returns its record
    encode_program: Callable[[ProgramBuilder, OpInfo], ProgramRecord]
    #: a TFTR record's parameters back to builtin options (the sim:// board trains from the program)
    read_program: ProgramReader
    #: multiply-accumulates of one sample, given the output's elements per sample
    macs: Callable[[Any, OpInfo, int], int]
    #: numpy int8 kernel of the twin: (blob, op, activation inputs batch first, output shape) -> int8
    run_int8: Callable[[BlobInfo, BlobOp, list[np.ndarray], tuple[int, ...]], np.ndarray]
    #: FloatTail forward: (tail, op, activation inputs, batch) -> (pre-activation output, saved state)
    float_forward: Callable[[FloatTail, OpInfo, list[np.ndarray], int], tuple[np.ndarray, tuple]]
    #: FloatTail backward: (pass, op, gradient of the pre-activation output) -> adds gradients to the pass
    float_backward: Callable[[Backward, OpInfo, Any], None]
    #: TFLM op data bytes on the 64-bit host build: (base, per output channel)
    tflm_op_data: tuple[int, int]
    weights: WeightLayout | None = None  # set for ops whose weights and biases can be trained
    fused_activation: bool = True  # the output passes through the op's fused activation
    alias: bool = False  # the output only reinterprets the input's memory
    firmware: bool = True  # the firmware's int8 engine has a kernel for it
    keras_layer: str | None = None  # the Keras layer class converted to this op (importance mapping)
    #: Keras kernel layout -> this op's TFLite weight layout
    keras_kernel: Callable[[np.ndarray], np.ndarray] | None = None
    #: the blob ids of the op's activation inputs when they are more than its record's three slots
    #: (CONCATENATION lists them in the data section); None: the first ``arity`` slots
    blob_inputs: Callable[[BlobInfo, BlobOp], tuple[int, ...]] | None = None
    #: arena scratch bytes the firmware's optimised kernels use for this op (the blob carries the
    #: planned buffer at p13/p14; the C entry's scratch function computes the same); None: none
    scratch_bytes: Callable[[Any, OpInfo], int] | None = None

    def activation_inputs(self, inputs: Sequence[int]) -> list[int]:
        """The graph tensors among an op's ``inputs`` that are activations (its first ``arity``, or all)."""
        return list(inputs) if self.arity == VARIADIC else list(inputs[: self.arity])

    @property
    def trainable(self) -> bool:
        """Whether the op's weights and bias can be part of the trainable subset w*."""
        return self.weights is not None


def kernel_scratch_bytes(depth: int, columns: int) -> int:
    """Scratch of the firmware's optimised int8 dot-product kernels: ``columns`` int16 copies of a
    ``depth``-long input vector, each padded to 16 elements (the DSP path expands 2 im2col columns to
    int16 with the input offset added; the MVE path gathers 4 int8 columns in the same room).
    firmware/engine/tfmb_internal.h ``tfmb_kernel_scratch`` is the same formula."""
    return 2 * columns * ((depth + 15) // 16 * 16)
