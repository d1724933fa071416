"""MAX_POOL_2D: the maximum over each window (rules shared in :mod:`tinyfed.ops.pool_2d`)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from tinyfed.ops import pool_2d, windows
from tinyfed.ops.base import OpSpec

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.models.tflite_graph import OpInfo
    from tinyfed.training.tail import Backward, FloatTail


def _bits(a: np.ndarray) -> np.ndarray:
    """``a`` viewed as unsigned integers of its width (to move float bits exactly)."""
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _select(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` where ``mask`` else ``b``, bit for bit, by integer masking: ``np.where`` on floats
    is several times slower at these sizes and ``np.maximum`` may return either zero of a tie."""
    ab, bb = _bits(a), _bits(b)
    m = mask.astype(ab.dtype)
    np.negative(m, out=m)  # all ones where mask
    out = np.bitwise_xor(ab, bb)
    out &= m
    out ^= bb
    return out.view(a.dtype)


def _keep(mask: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``g`` where ``mask``, +0.0 elsewhere, bit for bit (what ``np.where(mask, g, 0)`` gives)."""
    gb = _bits(g)
    m = mask.astype(gb.dtype)
    np.negative(m, out=m)
    m &= gb
    return m.view(g.dtype)


def _max_pool(taps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Max over the window taps and the first tap that holds it, as ``np.argmax`` over the
    patches picks it (first maximum; a NaN counts as the maximum), on views of the input:
    patches plus ``argmax`` over their middle axis cost several times more."""
    z = taps[0]
    arg = np.zeros(z.shape, dtype=np.uint8 if len(taps) <= 256 else np.intp)
    for k in range(1, len(taps)):
        v = taps[k]
        better = np.less_equal(v, z)
        np.logical_not(better, out=better)  # v > z, or either is NaN ...
        better &= np.equal(z, z)  # ... but a NaN already taken stays
        z = _select(better, v, z)
        arg += better * (k - arg).astype(arg.dtype, copy=False)  # k where better
    return np.ascontiguousarray(z), arg


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    o = op.options
    kh, kw = o["filter"]
    s = tuple(o["stride"])
    xp, oh, ow, geom = windows.padded(xs[0], kh, kw, s, (1, 1), o["padding"], -np.inf)
    z, arg = _max_pool(windows.taps(xp, kh, kw, s, (1, 1), oh, ow))
    return z, (arg, geom)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """The gradient goes to each window's (first) maximum."""
    kh, kw = op.options["filter"]
    arg, geom = step.saved(op)
    grads = [_keep(arg == k, gz) for k in range(kh * kw)]
    step.add_grad(op.inputs[0], windows.scatter_taps(grads, kh, kw, geom, tuple(op.options["stride"]), (1, 1)))


SPEC = OpSpec(
    name="MAX_POOL_2D", code=17, arity=1, options=pool_2d.OPTIONS,
    encode_blob=pool_2d.encode_blob, encode_program=pool_2d.encode_program, read_program=pool_2d.read_program,
    macs=pool_2d.macs, run_int8=functools.partial(pool_2d.run_int8, is_max=True),
    float_forward=float_forward, float_backward=float_backward, tflm_op_data=(32, 0),
)
