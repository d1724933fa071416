"""DEPTHWISE_CONV_2D: int8 1HWC filter (channel axis 3), depth multiplier, int32 bias.

Every rule is CONV_2D's with ``depthwise=True`` (:mod:`tinyfed.ops.conv_2d`).
"""

from __future__ import annotations

import functools

import numpy as np

from tinyfed.ops import conv_2d
from tinyfed.ops.base import OpSpec, WeightLayout


def macs(graph, op, out: int) -> int:
    _, kh, kw, _ = graph.tensors[op.inputs[1]].shape
    return out * kh * kw


def _keras_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras (kh, kw, cin, mult) -> TFLite (1, kh, kw, cin * mult)."""
    kh, kw, cin, mult = kernel.shape
    return kernel.reshape(1, kh, kw, cin * mult)


SPEC = OpSpec(
    name="DEPTHWISE_CONV_2D", code=4, arity=1,
    options=("stride", "dilation", "padding", "activation"),
    encode_blob=functools.partial(conv_2d.encode_blob, depthwise=True),
    encode_program=functools.partial(conv_2d.encode_program, depthwise=True),
    read_program=conv_2d.read_program, macs=macs,
    run_int8=functools.partial(conv_2d.run_int8, depthwise=True),
    float_forward=functools.partial(conv_2d.float_forward, depthwise=True),
    float_backward=functools.partial(conv_2d.float_backward, depthwise=True),
    tflm_op_data=(76, 8), weights=WeightLayout(weight_input=1, bias_input=2, channel_axis=3),
    keras_layer="DepthwiseConv2D", keras_kernel=_keras_kernel,
)
