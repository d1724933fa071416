"""Trainable tails through the shape ops (tests/test_ops_shape.py): int8 models whose every op
is in the tail, built with Keras (ZeroPadding2D, Concatenate, GlobalAveragePooling2D) or by hand
(QUANTIZE, PADV2, a three-input CONCATENATION, a MEAN that keeps its dims)."""

from __future__ import annotations

import functools

import numpy as np
from _op_models import GraphBuilder, options


@functools.cache
def keras_tail_int8() -> bytes:
    """Conv -> ZeroPadding2D -> (Conv 1x1 | DepthwiseConv) -> Concatenate -> GAP -> Dense -> Softmax."""
    from engine_models import _convert, _tf

    keras = _tf().keras
    keras.utils.set_random_seed(11)
    inp = keras.Input(shape=(6, 5, 3), batch_size=1, name="x")
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    a = keras.layers.ZeroPadding2D(((1, 0), (0, 2)), name="pad")(a)
    b1 = keras.layers.Conv2D(3, 1, name="p1")(a)
    b2 = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(a)
    s = keras.layers.Concatenate(axis=-1, name="cat")([b1, b2])
    s = keras.layers.GlobalAveragePooling2D(name="gap")(s)
    s = keras.layers.Dense(5, name="fc")(s)
    out = keras.layers.Softmax(name="probs")(s)
    return _convert(keras.Model(inp, out), (6, 5, 3))


@functools.cache
def hand_tail_int8() -> bytes:
    """FC(8 -> 12) -> reshape (1, 2, 3, 2) -> QUANTIZE / PADV2 / itself -> CONCATENATION of three
    along axis 2 -> MEAN over axis 2 keeping dims -> SQUEEZE -> STRIDED_SLICE (a reversal) ->
    EXPAND_DIMS -> FC -> SOFTMAX."""
    rng = np.random.default_rng(3)
    g = GraphBuilder()
    s_x, s_h = 0.05, 0.04
    x = g.act((1, 8), s_x, 3)
    w_s = 0.02
    w = g.const(rng.integers(-100, 100, size=(12, 8)), "INT8", w_s, 0)
    b = g.const(rng.integers(-2000, 2000, size=(12,)), "INT32", s_x * w_s, 0)
    h = g.act((1, 12), s_h, -5)
    g.op("FULLY_CONNECTED", [x, w, b], [h], options("FullyConnectedOptions"))
    r = g.act((1, 2, 3, 2), s_h, -5)
    g.op("RESHAPE", [h, g.const([1, 2, 3, 2])], [r], options("ReshapeOptions", newShape=[1, 2, 3, 2]))
    q = g.act((1, 2, 3, 2), s_h, -5)  # a requantization to the same scale: an identity, as a converter leaves it
    g.op("QUANTIZE", [r], [q])
    p = g.act((1, 2, 5, 2), s_h, -5)
    g.op("PADV2", [r, g.const([[0, 0], [0, 0], [1, 1], [0, 0]]), g.const(np.int8(20), "INT8", s_h, -5)], [p])
    c = g.act((1, 2, 11, 2), s_h, -5)
    g.op("CONCATENATION", [q, p, r], [c], options("ConcatenationOptions", axis=2))
    m = g.act((1, 2, 1, 2), 0.03, 0)
    g.op("MEAN", [c, g.const([2])], [m], options("ReducerOptions", keepDims=True))
    sq = g.act((1, 2, 2), 0.03, 0)
    g.op("SQUEEZE", [m], [sq], options("SqueezeOptions", squeezeDims=[2]))
    sl = g.act((1, 2, 2), 0.03, 0)  # axis 2 reversed
    g.op("STRIDED_SLICE", [sq, g.const([0, 0, 0]), g.const([1, 2, 0]), g.const([1, 1, -1])], [sl],
         options("StridedSliceOptions", beginMask=4, endMask=4))
    ex = g.act((1, 1, 2, 2), 0.03, 0)
    g.op("EXPAND_DIMS", [sl, g.const(np.array([1], np.int32))], [ex])
    w2 = g.const(rng.integers(-100, 100, size=(4, 4)), "INT8", w_s, 0)
    b2 = g.const(rng.integers(-500, 500, size=(4,)), "INT32", 0.03 * w_s, 0)
    z = g.act((1, 4), 0.1, 0)
    g.op("FULLY_CONNECTED", [ex, w2, b2], [z], options("FullyConnectedOptions"))
    y = g.act((1, 4), 1.0 / 256, -128)
    g.op("SOFTMAX", [z], [y], options("SoftmaxOptions", beta=1.0))
    return g.build([x], [y])
