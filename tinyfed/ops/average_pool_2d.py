"""AVERAGE_POOL_2D: the mean over each window, padding excluded (rules shared in :mod:`tinyfed.ops.pool_2d`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tinyfed.ops import pool_2d, windows
from tinyfed.ops.base import OpSpec

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.models.tflite_graph import OpInfo
    from tinyfed.training.tail import Backward, FloatTail


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    xin, o = xs[0], op.options
    kh, kw = o["filter"]
    s = tuple(o["stride"])
    cols, geom = windows.patches(xin, kh, kw, s, (1, 1), o["padding"])
    c5 = cols.reshape(cols.shape[:3] + (kh * kw, cols.shape[-1]))
    cnt = windows.pool_counts(xin.shape[1], xin.shape[2], kh, kw, s, o["padding"], tail.dtype)
    return c5.sum(axis=3) / cnt, (cnt, geom)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """The gradient spread evenly over each window."""
    kh, kw = op.options["filter"]
    cnt, geom = step.saved(op)
    grads = [gz / cnt] * (kh * kw)
    step.add_grad(op.inputs[0], windows.scatter_taps(grads, kh, kw, geom, tuple(op.options["stride"]), (1, 1)))


SPEC = OpSpec(
    name="AVERAGE_POOL_2D", code=1, arity=1, options=pool_2d.OPTIONS,
    encode_blob=pool_2d.encode_blob, encode_program=pool_2d.encode_program, read_program=pool_2d.read_program,
    macs=pool_2d.macs, run_int8=pool_2d.run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(32, 0),
)
