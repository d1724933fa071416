"""The trained vector w* as one flat float32 array, and back to per-unit values.

The host, the ``sim://`` board and the fleet simulator all move w* as one flat vector (the
layout of TRAIN_SET and of the update image) and hand it to a :class:`FloatTail` unit by unit;
the split and the test-split evaluator live here once so the three cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tinyfed.training.metrics import score
from tinyfed.training.task import Task

if TYPE_CHECKING:
    from tinyfed.training.tail import FloatTail

log = logging.getLogger(__name__)

__all__ = ["split_units", "tail_evaluator"]


def split_units(flat: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """``flat`` cut into one ``(channels, per_channel)`` array per unit (views, not copies).

    A size mismatch is an error rather than a silent truncation: it means the vector and the
    unit layout come from different plans.
    """
    flat = np.asarray(flat)
    need = sum(int(c) * int(per) for c, per in shapes)
    if flat.ndim != 1 or flat.size != need:
        raise ValueError(f"the vector has {flat.size} values (shape {flat.shape}), but the {len(shapes)} units "
                         f"hold {need}")
    out, k = [], 0
    for c, per in shapes:
        out.append(flat[k:k + c * per].reshape(c, per))
        k += c * per
    return out


def tail_evaluator(tail: FloatTail, shapes: Sequence[tuple[int, int]], inputs: np.ndarray, targets: np.ndarray,
                   chunk: int | None = 256, *, task: Task = Task.CLASSIFY,
                   anomaly: np.ndarray | None = None) -> Callable[[np.ndarray], tuple[float, float]]:
    """vector -> (the task's metric, its mean loss) of ``tail`` with those unit values on ``inputs``.

    ``inputs`` are what the tail takes (the frozen fragment's output, dequantized); ``targets``
    and ``anomaly`` are those of :func:`tinyfed.training.metrics.score` (for classification the
    metric is the accuracy and the loss the cross-entropy). The forward pass runs ``chunk``
    samples at a time so a large test split does not hold every layer's activations at once;
    ``chunk=None`` runs it in one pass. The chunking can move the loss in the last float32 bits
    (matrix products of another height round differently), so a caller whose numbers are on
    record keeps its chunking. ``tail`` itself is never modified.
    """
    y = np.asarray(targets, np.int64) if task is Task.CLASSIFY else np.asarray(targets, np.float32)
    shapes = [(int(c), int(per)) for c, per in shapes]
    n = len(inputs)
    if n != len(y):
        raise ValueError(f"{n} inputs but {len(y)} {'labels' if task is Task.CLASSIFY else 'targets'}")
    if anomaly is not None and len(anomaly) != n:
        raise ValueError(f"{n} inputs but {len(anomaly)} anomaly labels")
    if chunk is None:
        chunk = max(1, n)
    elif chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")

    def evaluate(w: np.ndarray) -> tuple[float, float]:
        t = tail.copy()
        t.set_unit_values(split_units(w, shapes))
        out = np.concatenate([t.forward(inputs[k:k + chunk], keep=False).reshape(min(chunk, n - k), -1)
                              for k in range(0, n, chunk)])
        return score(task, out, y, anomaly)

    return evaluate
