"""Importance of each trainable parameter, in the int8 graph's own layout.

Default: the diagonal Fisher information, the mean squared per-sample gradient of the log
likelihood, measured on a small proxy batch that the server holds. With labels it is the
empirical Fisher; without labels the label is drawn from the model's own prediction (the true
Fisher), so any user model with a representative ``.npy`` works. Without a float model (a bare
``.tflite``) the documented fallback ranks layers nearest the output first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyfed import ops
from tinyfed.models.tflite_graph import OpInfo, TensorInfo, TfliteGraph

log = logging.getLogger(__name__)


@dataclass
class LayerImportance:
    """Per output channel importance of a layer's weights, and of its whole bias."""

    channel: np.ndarray  # shape (out_channels,)
    bias: float


@dataclass(frozen=True)
class Importance:
    """The ranking of every weighted op's units, and which method made it: the one a plan reports."""

    layers: dict[int, LayerImportance]
    method: str  # "fisher" or "depth"
    note: str = ""  # why the method is not the one asked for ("" when it is)


def depth_importance(graph: TfliteGraph, note: str = "") -> Importance:
    """Fallback without proxy data: the nearer the output, the more important, lexicographically.

    Each step away from the output divides importance by 1e6, so the greedy takes every unit of
    a later layer before any unit of an earlier one; within a layer, biases (few bytes) go first.
    """
    result: dict[int, LayerImportance] = {}
    for rank, (op, w, axis) in enumerate(reversed(_weighted_ops(graph))):
        scale = 1e-6**rank
        channels = int(w.shape[axis])
        per_channel_params = w.size // channels
        b = graph.bias_tensor(op)
        bias_params = b.size if b is not None else 0
        result[op.index] = LayerImportance(
            channel=np.full(channels, scale * per_channel_params, dtype=np.float64),
            bias=scale * bias_params * 1e3,
        )
    return Importance(result, "depth", note)


def _weighted_ops(graph: TfliteGraph) -> list[tuple[OpInfo, TensorInfo, int]]:
    """The trainable ops with constant weights, each with its weight tensor and output-channel axis."""
    weighted = []
    for op in graph.ops:
        if op.name not in ops.trainable_ops():
            continue
        weights, axis = graph.weight_tensor(op), graph.output_channel_axis(op)
        if weights is not None and axis is not None:  # an op with weights always has an axis
            weighted.append((op, weights, axis))
    return weighted


def fisher_importance(
    graph: TfliteGraph, keras_model: Any, x: np.ndarray, y: np.ndarray | None, seed: int = 0
) -> Importance:
    """Diagonal Fisher of the float model on ``x``, mapped onto the int8 graph's weighted ops.

    Falls back to :func:`depth_importance` (with a warning) when the Keras layers cannot be
    matched one to one, by kind and shape, with the graph's weighted ops.
    """
    import tensorflow as tf  # lazy: conversion-side dependency only

    kinds = ops.keras_kinds()
    layers = [layer for layer in keras_model.layers if type(layer).__name__ in kinds]
    weighted = _weighted_ops(graph)
    if len(layers) != len(weighted) or any(
        kinds[type(layer).__name__] != op.name for layer, (op, _, _) in zip(layers, weighted, strict=False)
    ):
        note = (f"the float model's {len(layers)} weighted Keras layers do not match the int8 graph's "
                f"{len(weighted)} weighted ops one to one, so its Fisher cannot be mapped")
        log.warning("%s; using depth importance", note)
        return depth_importance(graph, note)

    variables = []
    for layer in layers:
        kernel = layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel
        variables.append(kernel)
        variables.append(layer.bias if getattr(layer, "use_bias", False) else None)
    watched = [v for v in variables if v is not None]
    sums = [np.zeros(v.shape, dtype=np.float64) for v in watched]
    rng = np.random.default_rng(seed)
    for i in range(len(x)):
        xi = tf.convert_to_tensor(x[i : i + 1], dtype=tf.float32)
        with tf.GradientTape() as tape:
            probs = keras_model(xi, training=False)
            probs = tf.clip_by_value(probs, 1e-12, 1.0)
            if y is not None:
                label = int(y[i])
            else:
                p = np.asarray(probs[0], dtype=np.float64)
                label = int(rng.choice(len(p), p=p / p.sum()))
            log_likelihood = tf.math.log(probs[0, label])
        grads = tape.gradient(log_likelihood, watched)
        for acc, g in zip(sums, grads, strict=True):  # one gradient per watched variable
            if g is not None:
                acc += np.square(np.asarray(g, dtype=np.float64))
    means = [s / max(len(x), 1) for s in sums]

    result: dict[int, LayerImportance] = {}
    it = iter(means)
    for layer, (op, weights, axis), bias_var in zip(layers, weighted, variables[1::2], strict=True):
        to_tflite = ops.get(op.name).keras_kernel
        assert to_tflite is not None  # every op a Keras layer maps to has one
        kernel_f = to_tflite(next(it))
        bias_f = next(it) if bias_var is not None else np.zeros(0)
        w_shape = tuple(weights.shape)
        if tuple(kernel_f.shape) != w_shape:
            note = f"layer {layer.name}: Keras kernel {tuple(kernel_f.shape)} does not map onto TFLite's {w_shape}"
            log.warning("%s; using depth importance", note)
            return depth_importance(graph, note)
        other = tuple(a for a in range(kernel_f.ndim) if a != axis)
        result[op.index] = LayerImportance(channel=kernel_f.sum(axis=other), bias=float(bias_f.sum()))
    return Importance(result, "fisher")
