"""Small int8 models that exercise the engine's less common paths (tests/test_engine.py).

``kernel_zoo_int8(per_channel)``: strided SAME conv with odd padding and RELU6, a depthwise
conv with depth multiplier 2 and dilation 2, two 1x1 branches joined by ADD (different
scales), SAME average pooling (edge windows count fewer elements), SAME max pooling, a
reshape, per-channel or per-tensor FULLY_CONNECTED, and softmax with beta != 1.
``with_logistic_int8()``: a model with LOGISTIC, which the engine refuses.
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
def with_logistic_int8() -> bytes:
    tf = _tf()
    keras = tf.keras
    keras.utils.set_random_seed(4)
    inp = keras.Input(shape=(4,), batch_size=1, name="x")
    out = keras.layers.Dense(3, activation="sigmoid", name="fc")(inp)
    return _convert(keras.Model(inp, out), (4,))
