"""numpy twin of the firmware's int8 engine: runs a TFMB blob on a batch, bit-exact.

Same integer arithmetic as ``firmware/engine/`` and TFLM's reference int8 kernels
(``MultiplyByQuantizedMultiplier`` = SaturatingRoundingDoublingHighMul + RoundingDivideByPOT,
gemmlowp fixed point for softmax), evaluated on int64 arrays and vectorized over the batch.
Each op's kernel is its op module's ``run_int8`` (:mod:`tinyfed.ops`); the fixed-point
primitives are in :mod:`tinyfed.ops.fixed_point`.

This backs the in-process simulated board (``sim://``).
"""

from __future__ import annotations

import numpy as np

from tinyfed import ops
from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import BlobInfo, parse_blob

__all__ = ["run_blob", "run_info"]


def _batch_input(info: BlobInfo, x_int8: np.ndarray) -> np.ndarray:
    """The input as (batch, *input shape), or ModelError for a wrong dtype or sample shape."""
    x = np.asarray(x_int8)
    if x.dtype != np.int8:
        raise ModelError(f"input is {x.dtype}, the blob takes int8", fix="quantize the input first")
    in_shape = info.input_shape
    per = int(np.prod(in_shape)) if in_shape else 1
    sample = in_shape[1:] if in_shape and in_shape[0] == 1 else in_shape
    if x.ndim == len(sample) and tuple(x.shape) == tuple(sample) and len(sample) < len(in_shape):
        x = x[None]
    if x.size % per or tuple(x.shape[1:]) != tuple(sample):
        raise ModelError(f"input has shape {x.shape}, expected (batch, {', '.join(map(str, sample))})",
                         fix="pass a batch-first int8 array whose samples have the blob's input shape")
    return x.reshape(x.shape[0], *in_shape)


def run_info(info: BlobInfo, x_int8: np.ndarray) -> np.ndarray:
    """Run a parsed blob on a batch (see :func:`run_blob`)."""
    x = _batch_input(info, x_int8)
    batch = x.shape[0]
    values: dict[int, np.ndarray] = {info.input_tensor: x}
    for op in info.ops:
        spec = ops.by_code(op.code)
        if spec is None or not spec.firmware:
            raise ModelError(f"op {op.index} has code {op.code}, which the engine does not run")
        ids = spec.blob_inputs(info, op) if spec.blob_inputs else op.inputs[: spec.arity]
        # an operand may be a constant (MUL's): its values without a batch axis
        inputs = [values[t] if t in values else info.constant(t) for t in ids]
        values[op.output] = spec.run_int8(info, op, inputs, info.tensors[op.output].shape)
    out = values[info.output_tensor]
    out_shape = info.output_shape
    if out_shape and out_shape[0] == 1:
        return out.reshape(batch, *out_shape[1:]) if len(out_shape) > 1 else out.reshape(batch)
    return out


def run_blob(blob_bytes: bytes, x_int8_batch: np.ndarray) -> np.ndarray:
    """Run a TFMB blob on a batch of int8 inputs; returns the int8 outputs, batch first.

    Shapes follow :meth:`tinyfed.models.tflm.TflmModel.run`: a blob whose input has shape
    ``(1, H, W, C)`` takes ``(batch, H, W, C)`` and returns ``(batch, *output_shape[1:])``.
    """
    return run_info(parse_blob(blob_bytes), x_int8_batch)
