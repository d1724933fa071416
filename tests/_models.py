"""Tiny Keras models converted to .tflite for the model-file and TFLM tests.

TensorFlow is imported lazily (inside the builders) so that importing this module costs
nothing; the test files cache the built bytes in session-scoped fixtures.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

INPUT_SHAPE = (1, 32, 3)  # (height, width, channels): a 32-sample, 3-axis window


def _tf():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def _representative(shape: tuple[int, ...], n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, size=(n, 1, *shape)).astype(np.float32)

    def gen():
        for sample in data:
            yield [sample]

    return gen


def _convert(model, shape: tuple[int, ...], *, int8: bool = True) -> bytes:
    tf = _tf()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative(shape)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected ..."
        return bytes(conv.convert())


def _chain_cnn():
    """Conv(1x5) -> MaxPool -> Conv(1x3) -> AvgPool -> Flatten -> Dense -> Softmax."""
    tf = _tf()
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=INPUT_SHAPE, batch_size=1, name="window")
    bias = keras.initializers.RandomNormal(stddev=0.1, seed=0)
    x = keras.layers.Conv2D(8, (1, 5), padding="same", activation="relu", bias_initializer=bias, name="conv1")(inp)
    x = keras.layers.MaxPooling2D((1, 2), name="pool1")(x)
    x = keras.layers.Conv2D(16, (1, 3), padding="valid", activation="relu", bias_initializer=bias, name="conv2")(x)
    x = keras.layers.AveragePooling2D((1, 2), name="pool2")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(6, bias_initializer=bias, name="dense")(x)
    out = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inp, out)


@functools.cache
def chain_cnn_int8() -> bytes:
    """Full-int8 version of the 1-D-style CNN (the main test model)."""
    return _convert(_chain_cnn(), INPUT_SHAPE)


@functools.cache
def chain_cnn_float() -> bytes:
    """The same CNN converted without quantization (float32 activations)."""
    return _convert(_chain_cnn(), INPUT_SHAPE, int8=False)


@functools.cache
def residual_int8() -> bytes:
    """Conv -> DepthwiseConv -> Add(skip from the conv) -> Conv -> GAP -> Dense.

    The skip connection makes the ops between the first conv and the add unsplittable, so
    ``cut_points()`` must leave them out. The zero-initialised biases of the stem and the
    depthwise conv are equal, so the converter stores them in one shared buffer.
    """
    tf = _tf()
    keras = tf.keras
    keras.utils.set_random_seed(1)
    inp = keras.Input(shape=(8, 8, 2), batch_size=1, name="image")
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inp)
    b = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="dw")(a)
    b = keras.layers.ReLU(name="dw_relu")(b)
    c = keras.layers.Add(name="skip")([a, b])
    d = keras.layers.Conv2D(6, 1, activation="relu", name="pw")(c)
    e = keras.layers.GlobalAveragePooling2D(name="gap")(d)
    out = keras.layers.Dense(3, name="head")(e)
    return _convert(keras.Model(inp, out), (8, 8, 2))


def with_offset_buffers(model_bytes: bytes) -> bytes:
    """Re-pack a model with its constant buffers stored *after* the flatbuffer.

    This is the layout TFLiteConverter uses for models over 2 GB: each ``Buffer`` has no
    ``data`` but an ``offset``/``size`` pair counted from the start of the file.
    """
    from ai_edge_litert import schema_py_generated as schema_fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(model_bytes)
    blobs: dict[int, bytes] = {}
    for i, b in enumerate(model.buffers):
        if b.data is not None and len(b.data):
            blobs[i] = np.asarray(b.data, dtype=np.uint8).tobytes()
            b.data = None
            b.offset = 1  # placeholders, so that the fields get space in the table
            b.size = len(blobs[i])
    out = bytearray(flatbuffer_utils.convert_object_to_bytearray(model))
    root = schema_fb.Model.GetRootAs(out, 0)
    for i, blob in blobs.items():
        out += bytes(-len(out) % 16)
        offset = len(out)
        out += blob
        flatbuffer_utils.update_packed_buffer(root.Buffers(i), offset=offset)
    return bytes(out)
