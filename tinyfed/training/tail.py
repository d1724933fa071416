"""The tail of a plan as a float32 network: the reference of the on-device training step.

Weights and biases are dequantized from the int8 ``tail.tflite`` (per-channel scales); the
trainable units of ``trainable.tfw`` override the selected channels. Forward and backward are
plain numpy on NHWC batches: each op's are its op module's ``float_forward`` and ``float_backward``
(:mod:`tinyfed.ops`); this driver applies the fused activations and the loss head
(:class:`~tinyfed.training.task.Loss`): softmax cross-entropy (the last op is SOFTMAX; the
gradient enters below it), sigmoid binary cross-entropy (the last op is LOGISTIC; the gradient
enters below it, so LOGISTIC's own backward is never needed) or the mean squared error (any last
op; the gradient enters at the output and runs through the last op's backward). The C engine
(``firmware/engine/tftr_loss.c``) computes the same per sample.
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
from tinyfed.training.task import Loss, implied_task, loss_of

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

    def __init__(self, graph: TfliteGraph, units: list[tfw.TrainableUnit], dtype=np.float32,
                 loss: Loss | None = None) -> None:
        self.graph = graph
        self.dtype = np.dtype(dtype)
        self.units = units
        bad = [(o.index, o.name) for o in graph.ops if ops.find(o.name) is None]
        if bad:
            raise ModelError(f"the float tail cannot train ops {bad}", fix="cut the plan after them")
        if not graph.ops:
            raise ModelError("the tail has no ops", fix="cut the plan before the model's last op")
        self.loss_kind = check_loss(graph.ops[-1].name, loss)
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
    def from_fragments(cls, tail_tflite: bytes, trainable_tfw: bytes, dtype=np.float32,
                       loss: Loss | None = None) -> FloatTail:
        return cls(TfliteGraph.from_bytes(tail_tflite, source="tail.tflite"), tfw.decode(trainable_tfw), dtype, loss)

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
        """The tail's output (probabilities or real values) for a float batch ``x`` shaped like the
        tail input (batch first).

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

    def loss(self, x: np.ndarray, targets: np.ndarray) -> float:
        """The mean loss over the batch (targets as :meth:`loss_and_grads` takes them)."""
        return float(self.sample_losses(x, targets)[0].mean())

    def sample_losses(self, x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each sample's loss (an autoencoder's anomaly score: its reconstruction error) and the
        tail's outputs, forward only."""
        out = self.forward(x, keep=True)
        assert self._cache is not None
        logits = self._cache["vals"].get(self.graph.ops[-1].inputs[0]) if self.loss_kind is Loss.SIGMOID_BCE else None
        self._cache = None
        return head_loss(self.loss_kind, out, logits, self._targets(targets, out)), out

    def _targets(self, targets: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Targets checked against the output: (n,) ints, (n, k) 0/1 or (n, *output) reals."""
        t = np.asarray(targets)
        n = out.shape[0]
        if self.loss_kind is Loss.SOFTMAX_CE:
            if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer):
                raise ModelError(f"softmax cross-entropy takes one integer class per sample, got {t.dtype} "
                                 f"{list(t.shape)} for {n} samples", fix="pass labels of shape (n,)")
            return t
        if t.size != out.size or len(t) != n:
            raise ModelError(f"{self.loss_kind.value} takes targets of {out[0].size} values per sample, got "
                             f"{list(t.shape)} for {n} samples", fix=f"pass targets shaped {list(out.shape)}")
        return t.reshape(out.shape).astype(self.dtype, copy=False)

    def loss_and_grads(self, x: np.ndarray, targets: np.ndarray) -> tuple[float, dict[int, np.ndarray]]:
        """Mean loss over the batch and its gradients for every parameter tensor from the first
        trainable op on, masked to the trainable elements.

        ``targets``: int labels (n,) for SOFTMAX_CE, a (n, k) 0/1 array for SIGMOID_BCE, a
        (n, *output) float array for MSE (the model's dequantized input when autoencoding)."""
        g = self.graph
        out = self.forward(x, keep=True)
        t = self._targets(targets, out)
        assert self._cache is not None
        last = g.ops[-1]
        vals = self._cache["vals"]
        logits = vals.get(last.inputs[0]) if self.loss_kind is Loss.SIGMOID_BCE else None
        losses = head_loss(self.loss_kind, out, logits, t)
        step = Backward(self, vals, self._cache["saved"], out, t)
        if self.first_trainable < len(g.ops):
            entry = head_gradient(self.loss_kind, last, step)
            for op in reversed(g.ops):
                if op.index < self.first_trainable:
                    break
                if op is last and self.loss_kind is not Loss.MSE:  # the gradient entered below the head
                    continue
                gout = entry if op is last else step.pending.pop(op.outputs[0], None)
                if gout is None:
                    continue
                spec = ops.get(op.name)
                if spec.fused_activation:
                    gout = _act_backward(step.saved_output[op.index][0], gout, op.options.get("activation", "NONE"))
                spec.float_backward(step, op, gout)
        grads = step.grads
        for ti in list(grads):
            mask = self.masks[ti]
            if mask is not self._full_masks.get(ti):  # x * True is x, bit for bit: skip those
                grads[ti] = grads[ti] * mask
            grads[ti] = grads[ti].astype(self.dtype, copy=False)
        return float(losses.mean()), grads


def check_loss(last_op: str, loss: Loss | None) -> Loss:
    """The loss a tail ending in ``last_op`` trains with (None: the one its last op implies),
    refused when the head cannot compute it."""
    implied = loss_of(implied_task(last_op))
    loss = implied if loss is None else Loss(loss)
    need = {Loss.SOFTMAX_CE: "SOFTMAX", Loss.SIGMOID_BCE: "LOGISTIC"}.get(loss)
    if need is not None and last_op != need:
        raise ModelError(f"{loss.value} needs a tail whose last op is {need}; this tail ends with {last_op}",
                         fix=f"train it with the mse loss (task regress or autoencode), or plan a model ending in "
                             f"{need}")
    return loss


def head_loss(loss: Loss, out: np.ndarray, logits: np.ndarray | None, targets: np.ndarray) -> np.ndarray:
    """Each sample's loss: -log p[label] (p clamped at 1e-30); the mean over outputs of the
    binary cross-entropy from the logits, max(z, 0) - z y + log(1 + exp(-|z|)) (stable); the
    mean over outputs of (out - target)^2."""
    n = out.shape[0]
    if loss is Loss.SOFTMAX_CE:
        p = out.reshape(n, -1)
        return -np.log(np.maximum(p[np.arange(n), targets], 1e-30))
    if loss is Loss.SIGMOID_BCE:
        assert logits is not None
        z = logits.reshape(n, -1)
        y = targets.reshape(n, -1)
        return (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean(axis=1)
    d = (out - targets).reshape(n, -1)
    return (d * d).mean(axis=1)


def head_gradient(loss: Loss, last: OpInfo | Any, step: Backward) -> np.ndarray | None:
    """The batch-mean loss's gradient where it enters the tail. Cross-entropies: added below the
    head (at the SOFTMAX / LOGISTIC input): beta (p - onehot) / n and (p - y) / (k n); the
    result is None. MSE: returned for the output, 2 (out - target) / (size n)."""
    out, t = step.probs, step.labels
    n = out.shape[0]
    dtype = step.tail.dtype
    if loss is Loss.MSE:
        return (2 * (out - t) / (out[0].size * n)).astype(dtype, copy=False)
    if loss is Loss.SOFTMAX_CE:
        diff = out.reshape(n, -1).copy()  # p - onehot: p - 0 is p, bit for bit
        diff[np.arange(n), t] -= 1
        beta = float(last.options.get("beta", 1.0))
        if beta != 1.0:  # x * 1.0 is x
            diff = beta * diff
        g = diff / n
    else:
        g = (out - t).reshape(n, -1) / (out[0].size * n)
    step.add_grad(last.inputs[0], g.reshape(out.shape).astype(dtype, copy=False))
    return None


@dataclass
class Backward:
    """One backward pass through a :class:`FloatTail`: what the op modules' ``float_backward`` read
    (the forward's values and each op's saved state) and write (parameter gradients, and activation
    gradients through :meth:`add_grad`); the loss head reads the output and the targets."""

    tail: FloatTail
    vals: dict[int, np.ndarray]
    saved_output: dict[int, tuple[np.ndarray, tuple]]
    probs: np.ndarray  # the tail's output (probabilities or real values)
    labels: np.ndarray  # the targets (see FloatTail.loss_and_grads)
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
