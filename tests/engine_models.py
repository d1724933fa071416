"""Small int8 models that exercise the engine's less common paths (tests/test_engine.py).

``kernel_zoo_int8(per_channel)``: strided SAME conv with odd padding and RELU6, a depthwise
conv with depth multiplier 2 and dilation 2, two 1x1 branches joined by ADD (different
scales), SAME average pooling (edge windows count fewer elements), SAME max pooling, a
reshape, per-channel or per-tensor FULLY_CONNECTED, and softmax with beta != 1.
``with_unsupported_int8()``: a model with GELU, which neither engine runs.
``elementwise_int8(kind)``: one LOGISTIC, TANH, RELU, RELU6, LEAKY_RELU or HARD_SWISH on a
(4, 5, 6) input; ``mul_int8(kind)``: MUL with broadcasting, a fused RELU or a constant operand;
``requantized(model, {tensor: (scale, zero point)})`` rewrites quantization parameters (the
same flatbuffer then feeds TFLM and tinyfed, so any scale combination can be compared).
TensorFlow is imported lazily; results are cached per process.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

KERNEL_ZOO_SHAPE = (9, 11, 3)


def _tf():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def _convert(model, shape, *, per_channel: bool = True) -> bytes:
    tf = _tf()
    rng = np.random.default_rng(7)
    data = rng.normal(0.0, 1.0, size=(64, 1, *shape)).astype(np.float32)

    def gen():
        for sample in data:
            yield [sample]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    if not per_channel:
        conv._experimental_disable_per_channel = True
        conv._experimental_disable_per_channel_quantization_for_dense_layers = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(conv.convert())


@functools.cache
def kernel_zoo_int8(per_channel: bool = True) -> bytes:
    tf = _tf()
    keras = tf.keras
    keras.utils.set_random_seed(3)
    bias = keras.initializers.RandomNormal(stddev=0.2, seed=1)
    inp = keras.Input(shape=KERNEL_ZOO_SHAPE, batch_size=1, name="x")
    a = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu6", bias_initializer=bias, name="c1")(inp)
    b = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, dilation_rate=2, padding="same",
                                     bias_initializer=bias, name="dw")(a)
    p1 = keras.layers.Conv2D(8, 1, bias_initializer=bias, name="p1")(b)
    p2 = keras.layers.Conv2D(8, 1, activation="relu", bias_initializer=bias, name="p2")(b)
    s = keras.layers.Add(name="add")([p1, p2])
    s = keras.layers.AveragePooling2D(3, strides=2, padding="same", name="avg")(s)
    s = keras.layers.MaxPooling2D(2, padding="same", name="max")(s)
    s = keras.layers.Reshape((-1,), name="flat")(s)
    s = keras.layers.Dense(12, activation="relu", bias_initializer=bias, name="fc1")(s)
    s = keras.layers.Dense(5, bias_initializer=bias, name="fc2")(s)
    out = keras.layers.Softmax(name="probs")(s * 1.7)
    return _convert(keras.Model(inp, out), KERNEL_ZOO_SHAPE, per_channel=per_channel)


@functools.cache
def with_unsupported_int8() -> bytes:
    tf = _tf()
    keras = tf.keras
    keras.utils.set_random_seed(4)
    inp = keras.Input(shape=(4,), batch_size=1, name="x")
    out = keras.layers.Dense(3, activation="gelu", name="fc")(inp)
    return _convert(keras.Model(inp, out), (4,))


ELEMENTWISE_SHAPE = (4, 5, 6)
ELEMENTWISE_KINDS = ("LOGISTIC", "TANH", "RELU", "RELU6", "LEAKY_RELU", "HARD_SWISH")


@functools.cache
def elementwise_int8(kind: str) -> bytes:
    """A model of one elementwise op (the converter emits exactly that op)."""
    keras = _tf().keras
    layer = {"LOGISTIC": lambda: keras.layers.Activation("sigmoid"), "TANH": lambda: keras.layers.Activation("tanh"),
             "RELU": keras.layers.ReLU, "RELU6": lambda: keras.layers.ReLU(6.0),
             "LEAKY_RELU": lambda: keras.layers.LeakyReLU(negative_slope=0.3),
             "HARD_SWISH": lambda: keras.layers.Activation("hard_swish")}[kind]()
    inp = keras.Input(shape=ELEMENTWISE_SHAPE, batch_size=1, name="x")
    return _convert(keras.Model(inp, layer(inp)), ELEMENTWISE_SHAPE)


MUL_KINDS = ("broadcast", "fused_relu", "square", "constant", "constant_2d", "constant_scalar", "constant_first")


@functools.cache
def mul_int8(kind: str) -> bytes:
    """MUL of two conv outputs ((1,4,5,6) by (1,1,1,6), or equal shapes with a fused RELU), of a conv
    output by itself (both inputs one tensor), or of
    the input by a constant ((6,), (5, 6) or a scalar; ``constant_first`` swaps the operands in the file)."""
    tf = _tf()
    keras = tf.keras
    keras.utils.set_random_seed(2)
    inp = keras.Input(shape=ELEMENTWISE_SHAPE, batch_size=1, name="x")
    a = keras.layers.Conv2D(6, 1, name="a")(inp)
    if kind == "broadcast":
        out = keras.layers.Multiply()([a, keras.layers.Conv2D(6, (4, 5), name="s")(inp)])
    elif kind == "fused_relu":
        out = keras.layers.ReLU()(keras.layers.Multiply()([a, keras.layers.Conv2D(6, 1, name="b")(inp)]))
    elif kind == "square":
        out = keras.layers.Multiply()([a, a])
    elif kind == "constant_scalar":
        out = keras.layers.Lambda(lambda t: t * 0.37)(inp)
    else:
        c = np.linspace(-1, 1, 30).reshape(5, 6) if kind == "constant_2d" else np.linspace(-2, 3, 6)
        c = c.astype(np.float32)
        out = keras.layers.Lambda(lambda t: t * c)(inp)
    model = _convert(keras.Model(inp, out), ELEMENTWISE_SHAPE)
    if kind != "constant_first":
        return model
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    mul = obj.subgraphs[0].operators[-1]
    mul.inputs = list(mul.inputs)[::-1]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def requantized(model: bytes, quantization: dict[int, tuple[float, int]]) -> bytes:
    """``model`` with the per-tensor (scale, zero point) of the given tensors replaced."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    for t, (scale, zp) in quantization.items():
        q = obj.subgraphs[0].tensors[t].quantization
        q.scale, q.zeroPoint = [float(scale)], [int(zp)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


ELEMENTWISE_TAIL_SHAPE = (4, 4, 3)


@functools.cache
def elementwise_tail_int8() -> bytes:
    """A trainable network through every elementwise op, ending in SOFTMAX: conv, HARD_SWISH, MUL
    by a broadcast (1, 1, 8) conv output, TANH, reshape, standalone RELU6, FC, LEAKY_RELU,
    standalone RELU, FC, LOGISTIC, MUL by a constant with a fused RELU6, FC, SOFTMAX."""
    tf = _tf()
    keras = tf.keras
    keras.utils.set_random_seed(6)
    bias = keras.initializers.RandomNormal(stddev=0.2, seed=1)
    inp = keras.Input(shape=ELEMENTWISE_TAIL_SHAPE, batch_size=1, name="x")
    h = keras.layers.Activation("hard_swish")(keras.layers.Conv2D(8, 3, padding="same", bias_initializer=bias)(inp))
    s = keras.layers.Conv2D(8, 4, bias_initializer=bias)(h)
    t = keras.layers.Activation("tanh")(keras.layers.Multiply()([h, s]))
    r = keras.layers.ReLU(6.0)(keras.layers.Reshape((-1,))(t))
    d = keras.layers.LeakyReLU(negative_slope=0.2)(keras.layers.Dense(16, bias_initializer=bias)(r))
    g = keras.layers.Activation("sigmoid")(keras.layers.Dense(8, bias_initializer=bias)(keras.layers.ReLU()(d)))
    c = np.linspace(2.0, 9.0, 8).astype(np.float32)
    m = keras.layers.ReLU(6.0)(keras.layers.Lambda(lambda v: v * c)(g))
    out = keras.layers.Softmax()(keras.layers.Dense(5, bias_initializer=bias)(m))
    return _convert(keras.Model(inp, out), ELEMENTWISE_TAIL_SHAPE)


@functools.cache
def mul_tail_int8() -> bytes:
    """FC, MUL of the FC output by itself (one tensor in both input slots), LOGISTIC, MUL by a
    scalar constant with a fused RELU, FC, SOFTMAX."""
    keras = _tf().keras
    keras.utils.set_random_seed(9)
    inp = keras.Input(shape=(12,), batch_size=1, name="x")
    a = keras.layers.Dense(10)(inp)
    g = keras.layers.Activation("sigmoid")(keras.layers.Multiply()([a, a]))
    h = keras.layers.ReLU()(keras.layers.Lambda(lambda t: t * 0.37)(g))
    out = keras.layers.Softmax()(keras.layers.Dense(4)(h))
    return _convert(keras.Model(inp, out), (12,))
