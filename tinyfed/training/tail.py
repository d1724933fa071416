"""The tail of a plan as a float32 network: the reference of the on-device training step.

Weights and biases are dequantized from the int8 ``tail.tflite`` (per-channel scales); the
trainable units of ``trainable.tfw`` override the selected channels. Forward and backward are
plain numpy on NHWC batches: each op's are its op module's ``float_forward`` and ``float_backward``
(:mod:`tinyfed.ops`); this driver applies the fused activations. The last op must be SOFTMAX; it
is trained with cross-entropy.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed import ops
from tinyfed.errors import ModelError
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.models.tflite_graph import OpInfo


@functools.lru_cache(maxsize=256)
def _channel_index(channels: tuple[int, ...]) -> slice | np.ndarray:
    """A unit's channels as an index on the channel axis: a slice (a view, no gather) when they
    are consecutive, as they are for every fully trained tensor."""
    if channels and channels == tuple(range(channels[0], channels[0] + len(channels))):
        return slice(channels[0], channels[0] + len(channels))
    return np.array(channels, dtype=np.intp)


def _channels_first(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` with ``axis`` moved first, as a view (``np.moveaxis`` costs microseconds even for axis 0)."""
    return a if axis == 0 else np.moveaxis(a, axis, 0)


def _shallow_copy(obj):
    """``copy.copy`` without its reduce protocol for the plain classes copied per step (a tail
    and its units); anything else goes through ``copy.copy``."""
    if type(obj) not in (tfw.TrainableUnit, FloatTail):
        return copy.copy(obj)
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new


def _act_forward(z: np.ndarray, act: str) -> np.ndarray:
    if act == "RELU":
        return np.maximum(z, 0)
    if act == "RELU6":
        return np.clip(z, 0, 6)
    if act in ("NONE", None):
        return z
    raise ModelError(f"fused activation {act} is not supported by the float tail")


def _act_backward(z: np.ndarray, g: np.ndarray, act: str) -> np.ndarray:
    if act == "RELU":
        return g * (z > 0)
    if act == "RELU6":
        return g * ((z > 0) & (z < 6))
    return g


class FloatTail:
    """A float network over the ops of ``tail.tflite``, with trainable masks from ``trainable.tfw``."""

    def __init__(self, graph: TfliteGraph, units: list[tfw.TrainableUnit], dtype=np.float32) -> None:
        self.graph = graph
        self.dtype = np.dtype(dtype)
        self.units = units
        bad = [(o.index, o.name) for o in graph.ops if ops.find(o.name) is None]
        if bad:
            raise ModelError(f"the float tail cannot train ops {bad}", fix="cut the plan after them")
        if not graph.ops or graph.ops[-1].name != "SOFTMAX":
            raise ModelError("the tail must end with SOFTMAX (trained with cross-entropy)")
        if len(graph.inputs) != 1:
            raise ModelError("the tail must have a single input")
        self.params: dict[int, np.ndarray] = {}
        self.masks: dict[int, np.ndarray] = {}
        for op in graph.ops:
            axis = graph.output_channel_axis(op)
            for t, ax in ((graph.weight_tensor(op), axis), (graph.bias_tensor(op), 0)):
                if t is None or t.index in self.params:
                    continue
                assert ax is not None  # an op with a weight tensor has an output-channel axis
                data = graph.constant_data(t.index)
                if t.scales:
                    qax = t.quantized_dimension if len(t.scales) > 1 else ax
                    flat = tfw.dequantize_channels(data, np.array(t.scales), np.array(t.zero_points), qax)
                    moved_shape = np.moveaxis(np.empty(data.shape, np.int8), qax, 0).shape
                    val = np.moveaxis(flat.reshape(moved_shape), 0, qax)
                else:
                    val = data.astype(np.float32)
                self.params[t.index] = np.ascontiguousarray(val, dtype=self.dtype)
                self.masks[t.index] = np.zeros(val.shape, dtype=bool)
        for u in units:
            if u.tensor_index not in self.params:
                raise ModelError(f"trainable unit addresses tensor {u.tensor_index}, not a weight or bias of the tail")
            p = np.moveaxis(self.params[u.tensor_index], u.axis, 0)
            m = np.moveaxis(self.masks[u.tensor_index], u.axis, 0)
            ch = list(u.channels)
            p[ch] = u.values.reshape((len(ch),) + p.shape[1:]).astype(self.dtype)
            m[ch] = True
        for m in self.masks.values():
            m.flags.writeable = False  # fixed by the units: copies share them
        #: the masks that select every element (multiplying a gradient by them changes nothing)
        self._full_masks = {t: m for t, m in self.masks.items() if m.all()}
        self.first_trainable = min((u.op_index for u in units), default=len(graph.ops))
        t_in = graph.tensors[graph.inputs[0]]
        self.input_scale = float(t_in.scales[0]) if t_in.scales else 1.0
        self.input_zero_point = int(t_in.zero_points[0]) if t_in.zero_points else 0
        self._cache: dict | None = None

    @classmethod
    def from_fragments(cls, tail_tflite: bytes, trainable_tfw: bytes, dtype=np.float32) -> FloatTail:
        return cls(TfliteGraph.from_bytes(tail_tflite, source="tail.tflite"), tfw.decode(trainable_tfw), dtype)

    def copy(self, dtype=None) -> FloatTail:
        """Own parameters and unit records; the graph and the (read-only) masks are shared."""
        new = _shallow_copy(self)
        new.dtype = np.dtype(dtype) if dtype is not None else self.dtype
        new.params = {k: v.astype(new.dtype, copy=True) for k, v in self.params.items()}
        new.masks = dict(self.masks)
        new.units = [_shallow_copy(u) for u in self.units]
        new._cache = None
        return new

    # ---- trainable values -------------------------------------------------------------

    def unit_values(self) -> list[np.ndarray]:
        """Current values of each unit, shaped like ``TrainableUnit.values`` (channels, per channel)."""
        return [self._gather(self.params[u.tensor_index], u) for u in self.units]

    @staticmethod
    def _gather(a: np.ndarray, u: tfw.TrainableUnit) -> np.ndarray:
        """A fresh (channels, per channel) array of ``u``'s channels of ``a``."""
        ch = _channel_index(tuple(u.channels))
        picked = _channels_first(a, u.axis)[ch]
        out = picked.reshape(len(u.channels), -1)
        return out.copy() if isinstance(ch, slice) else out  # a gather by index list is already fresh

    def set_unit_values(self, values: list[np.ndarray]) -> None:
        for u, v in zip(self.units, values, strict=True):
            p = _channels_first(self.params[u.tensor_index], u.axis)
            ch = _channel_index(tuple(u.channels))
            p[ch] = np.asarray(v).reshape((len(u.channels),) + p.shape[1:]).astype(self.dtype, copy=False)

    def unit_grads(self, grads: dict[int, np.ndarray]) -> list[np.ndarray]:
        out = []
        for u in self.units:
            g = grads.get(u.tensor_index)
            if g is None:
                g = np.zeros_like(self.params[u.tensor_index])
            out.append(self._gather(g, u))
        return out

    @property
    def trainable_params(self) -> int:
        return int(sum(m.sum() for m in self.masks.values()))

    # ---- input ------------------------------------------------------------------------

    def dequantize_input(self, x_int8: np.ndarray) -> np.ndarray:
        centred = np.asarray(x_int8, np.int32) - self.input_zero_point
        return (centred * np.float32(self.input_scale)).astype(self.dtype)

    # ---- forward / backward -----------------------------------------------------------

    def _value(self, vals: dict, t: int) -> np.ndarray:
        if t in vals:
            return vals[t]
        if t in self.params:
            return self.params[t]
        info = self.graph.tensors[t]
        data = self.graph.constant_data(t).astype(np.float64)
        if info.scales:
            data = (data - info.zero_points[0]) * info.scales[0]
        return data.astype(self.dtype)

    def _fake_quant(self, v: np.ndarray, t: int) -> np.ndarray:
        info = self.graph.tensors[t]
        if not info.scales or info.dtype is None:
            return v
        s, z = float(info.scales[0]), int(info.zero_points[0])
        lo, hi = np.iinfo(info.dtype).min, np.iinfo(info.dtype).max
        return ((np.clip(np.round(v / s) + z, lo, hi) - z) * s).astype(self.dtype)

    def forward(self, x: np.ndarray, *, keep: bool = True, fake_quant: bool = False) -> np.ndarray:
        """Probabilities for a float batch ``x`` shaped like the tail input (batch first).

        ``fake_quant`` rounds every op output to its int8 grid (scale and zero point of the
        tail's activation tensors), to compare with the int8 graph op by op."""
        g = self.graph
        x = np.asarray(x, dtype=self.dtype)
        n = x.shape[0]
        vals: dict[int, np.ndarray] = {g.inputs[0]: x}
        saved: dict[int, tuple[np.ndarray, tuple]] = {}  # op -> (pre-activation output, the op's own state)
        for op in g.ops:
            spec = ops.get(op.name)
            xs = [self._value(vals, t) for t in spec.activation_inputs(op.inputs)]
            z, state = spec.float_forward(self, op, xs, n)
            saved[op.index] = (z, state)
            act = op.options.get("activation", "NONE") if spec.fused_activation else "NONE"
            vals[op.outputs[0]] = _act_forward(z, act)
            if fake_quant:
                vals[op.outputs[0]] = self._fake_quant(vals[op.outputs[0]], op.outputs[0])
        out = vals[g.outputs[0]]
        self._cache = {"vals": vals, "saved": saved} if keep else None
        return out

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        p = self.forward(x, keep=False).reshape(len(y), -1)
        return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-30))))

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[int, np.ndarray]]:
        """Mean cross-entropy over the batch and its gradients for every parameter tensor
        from the first trainable op on, masked to the trainable elements."""
        g = self.graph
        y = np.asarray(y)
        p = self.forward(x, keep=True)
        n = len(y)
        p2 = p.reshape(n, -1)
        loss = float(-np.mean(np.log(np.maximum(p2[np.arange(n), y], 1e-30))))
        assert self._cache is not None
        step = Backward(self, self._cache["vals"], self._cache["saved"], p, y)
        last = g.ops[-1]
        for op in reversed(g.ops):
            if op.index < self.first_trainable:
                break
            gout = step.pending.pop(op.outputs[0], None)
            if gout is None and op is not last:  # the last op (SOFTMAX) starts from the labels
                continue
            spec = ops.get(op.name)
            if spec.fused_activation and gout is not None:
                gout = _act_backward(step.saved_output[op.index][0], gout, op.options.get("activation", "NONE"))
            spec.float_backward(step, op, gout)
        grads = step.grads
        for t in list(grads):
            mask = self.masks[t]
            if mask is not self._full_masks.get(t):  # x * True is x, bit for bit: skip those
                grads[t] = grads[t] * mask
            grads[t] = grads[t].astype(self.dtype, copy=False)
        return loss, grads


@dataclass
class Backward:
    """One backward pass through a :class:`FloatTail`: what the op modules' ``float_backward`` read
    (the forward's values and each op's saved state, the probabilities and labels) and write
    (parameter gradients, and activation gradients through :meth:`add_grad`)."""

    tail: FloatTail
    vals: dict[int, np.ndarray]
    saved_output: dict[int, tuple[np.ndarray, tuple]]
    probs: np.ndarray
    labels: np.ndarray
    grads: dict[int, np.ndarray] = field(default_factory=dict)
    pending: dict[int, np.ndarray] = field(default_factory=dict)  # activation gradients not yet consumed

    def saved(self, op: OpInfo | Any) -> tuple:
        """The state ``op``'s forward kept for its backward."""
        return self.saved_output[op.index][1]

    def needs_input_grad(self, op: OpInfo | Any) -> bool:
        """Whether an op must pass a gradient to its input (it is past the first trainable op)."""
        return op.index > self.tail.first_trainable

    def add_grad(self, t: int, gr: np.ndarray) -> None:
        """Accumulate a gradient for activation ``t`` (ignored for tensors the forward did not hold)."""
        if t in self.vals or t == self.tail.graph.inputs[0]:
            self.pending[t] = self.pending[t] + gr if t in self.pending else gr
