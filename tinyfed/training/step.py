"""The device step of FTTE in float32: local SGD on the trainable units, then an int8 update."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.training.tail import FloatTail


@dataclass
class TrainResult:
    values: list[np.ndarray]  # new values per unit, shaped like TrainableUnit.values
    deltas: list[np.ndarray]  # values - starting values, per unit
    loss: float  # mean train loss (the tail's Loss) over every sample seen in every epoch
    n: int  # local sample count
    tail: FloatTail  # the trained copy


@dataclass
class Update:
    """What a device sends: delta per unit, sample count, model version, train loss, variance."""

    delta: list[np.ndarray]
    n: int
    version: int
    loss: float
    variance: float = field(default=0.0)

    @classmethod
    def from_result(cls, result: TrainResult, version: int) -> Update:
        return cls(result.deltas, result.n, version, result.loss, update_variance(result.deltas))


@dataclass
class QuantizedUpdate:
    q: list[np.ndarray]  # int8, shaped like the deltas
    scales: list[np.ndarray]  # float32, shape (1,) per tensor or (channels,) per channel
    per_channel: bool

    @property
    def nbytes(self) -> int:
        """Payload bytes: one int8 per element plus a float32 per scale."""
        return int(sum(q.size for q in self.q) + 4 * sum(s.size for s in self.scales))


def local_train(tail: FloatTail, x_in_float: np.ndarray, targets: np.ndarray, *, epochs: int, lr: float | np.float32,
                batch_size: int, seed: int, order: Callable[[int, int, int], np.ndarray] | None = None
                ) -> TrainResult:
    """Plain mini-batch SGD on a copy of ``tail``, updating only the trainable elements.

    ``targets`` are one per sample, as :meth:`FloatTail.loss_and_grads` takes them (int labels,
    0/1 label vectors or real vectors shaped like the output).

    ``order(n, seed, epoch)`` gives each epoch's sample order (default: numpy's permutation);
    the ``sim://`` board passes the firmware's (``firmware_bridge.twin.shuffle.epoch_order``)."""
    t = tail.copy()
    start = t.unit_values()
    x = np.asarray(x_in_float, dtype=t.dtype)
    y = np.asarray(targets)
    n = len(y)
    # a Generator costs tens of microseconds: only the default order needs one
    visit_order = order if order is not None else _numpy_order(seed)
    step = np.asarray(lr, t.dtype)
    total, seen = 0.0, 0
    for epoch in range(epochs):
        visit = visit_order(n, seed, epoch)
        for k in range(0, n, batch_size):
            idx = visit[k : k + batch_size]
            loss, grads = t.loss_and_grads(x[idx], y[idx])
            for ti, gr in grads.items():
                t.params[ti] -= (step * gr).astype(t.dtype, copy=False)
            total += loss * len(idx)
            seen += len(idx)
    values = t.unit_values()
    deltas = [v - s for v, s in zip(values, start, strict=True)]
    return TrainResult(values, deltas, total / max(seen, 1), n, t)


def quantize_update(deltas: list[np.ndarray], per_channel: bool = False) -> QuantizedUpdate:
    """Symmetric int8: scale = max|delta| / 127 per tensor (or per row = output channel); 0 -> 0."""
    qs, scales = [], []
    for d in deltas:
        d = np.asarray(d, dtype=np.float32)
        d2 = d.reshape(d.shape[0], -1) if d.ndim else d.reshape(1, 1)
        amax = np.abs(d2).max(axis=1) if per_channel else np.array([np.abs(d2).max(initial=0.0)])
        scale = (amax / 127.0).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
        div = d2 / (safe[:, None] if per_channel else safe[0])
        q = np.clip(np.rint(div), -127, 127).astype(np.int8).reshape(d.shape)
        qs.append(q)
        scales.append(scale)
    return QuantizedUpdate(qs, scales, per_channel)


def dequantize(qu: QuantizedUpdate) -> list[np.ndarray]:
    out = []
    for q, s in zip(qu.q, qu.scales, strict=True):
        q2 = q.reshape(q.shape[0], -1).astype(np.float32) if q.ndim else q.reshape(1, 1).astype(np.float32)
        v = q2 * (s[:, None] if qu.per_channel else s[0])
        out.append(v.reshape(q.shape).astype(np.float32))
    return out


def update_variance(deltas: list[np.ndarray]) -> float:
    """Variance of all delta elements pooled together."""
    flat = np.concatenate([np.asarray(d, np.float64).ravel() for d in deltas]) if deltas else np.zeros(0)
    return float(flat.var()) if flat.size else 0.0


def dense_model_bytes(*fragments: bytes) -> int:
    """Bytes of a dense float32 update of the whole model: 4 per weight and bias element."""
    total = 0
    for frag in fragments:
        g = TfliteGraph.from_bytes(frag)
        for op in g.ops:
            for t in (g.weight_tensor(op), g.bias_tensor(op)):
                if t is not None:
                    total += t.size
    return 4 * total


def _numpy_order(seed: int) -> Callable[[int, int, int], np.ndarray]:
    """The default epoch order: numpy's permutation, each epoch's drawn from one generator seeded once."""
    rng = np.random.default_rng(seed)

    def order(n: int, _seed: int, _epoch: int) -> np.ndarray:
        return rng.permutation(n)

    return order


def average_deltas(deltas: list[list[np.ndarray]], weights: list[float]) -> list[np.ndarray]:
    """Weighted mean of per-unit deltas (e.g. sample-weighted FedAvg of the trainable part)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return [
        sum(wi * d[u].astype(np.float64) for wi, d in zip(w, deltas, strict=False)).astype(np.float32)
        for u in range(len(deltas[0]))
    ]
