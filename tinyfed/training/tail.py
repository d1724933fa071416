"""The tail of a plan as a float32 network: the reference of the on-device training step.

Weights and biases are dequantized from the int8 ``tail.tflite`` (per-channel scales); the
trainable units of ``trainable.tfw`` override the selected channels. Forward and backward are
plain numpy on NHWC batches. The last op must be SOFTMAX; it is trained with cross-entropy.
"""

from __future__ import annotations

import copy
import functools

import numpy as np

from tinyfed.errors import ModelError
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw

SUPPORTED = {
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "ADD",
    "AVERAGE_POOL_2D",
    "MAX_POOL_2D",
    "RESHAPE",
    "SOFTMAX",
}


def _pads(size: int, k: int, s: int, d: int, padding: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) with TensorFlow's SAME/VALID rule."""
    eff = (k - 1) * d + 1
    if padding == "SAME":
        out = -(-size // s)
        total = max((out - 1) * s + eff - size, 0)
        return out, total // 2, total - total // 2
    out = (size - eff) // s + 1
    return out, 0, 0


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


def _window(k: int, step: int, out: int) -> slice:
    """The input positions that tap ``k`` (already times the dilation) reads for ``out`` outputs."""
    return slice(k, k + step * (out - 1) + 1, step)


def _padded(x: np.ndarray, kh: int, kw: int, s: tuple[int, int], d: tuple[int, int], padding: str, fill: float):
    """``x`` padded for the window (itself when no padding is needed), and the geometry."""
    n, h, w, c = x.shape
    oh, pt, pb = _pads(h, kh, s[0], d[0], padding)
    ow, pl, pr = _pads(w, kw, s[1], d[1], padding)
    if pt or pb or pl or pr:
        # np.pad's generic machinery costs more than the copy itself at these sizes.
        xp = np.full((n, h + pt + pb, w + pl + pr, c), fill, dtype=x.dtype)
        xp[:, pt : pt + h, pl : pl + w, :] = x
    else:
        xp = x
    return xp, oh, ow, (xp.shape, pt, pl, h, w)


def _taps(xp: np.ndarray, kh: int, kw: int, s: tuple[int, int], d: tuple[int, int], oh: int, ow: int) -> list[np.ndarray]:
    """The (N, OH, OW, C) input under each kernel tap, row-major over (KH, KW): views of ``xp``."""
    return [xp[:, _window(i * d[0], s[0], oh), _window(j * d[1], s[1], ow), :] for i in range(kh) for j in range(kw)]


def _patches(x: np.ndarray, kh: int, kw: int, s: tuple[int, int], d: tuple[int, int], padding: str, fill: float = 0.0):
    """im2col: (N, OH, OW, KH, KW, C) patches of a padded NHWC input, and the geometry."""
    xp, oh, ow, geom = _padded(x, kh, kw, s, d, padding, fill)
    n, c = x.shape[0], x.shape[3]
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    if kh == 1 and d[1] == 1 and xp.flags.c_contiguous:
        # A one-row kernel reads KW*C consecutive values of a contiguous input per output:
        # copy those runs at once (one tap at a time copies runs of only C values).
        st = xp.strides
        rows = np.lib.stride_tricks.as_strided(xp, (n, oh, ow, kw * c), (st[0], st[1] * s[0], st[2] * s[1], st[3]),
                                               writeable=False)
        cols.reshape(n, oh, ow, kw * c)[...] = rows
        return cols, geom
    for k, tap in enumerate(_taps(xp, kh, kw, s, d, oh, ow)):
        cols[:, :, :, k // kw, k % kw, :] = tap
    return cols, geom


def _scatter_taps(taps, kh: int, kw: int, geom, s, d) -> np.ndarray:
    """Adjoint of :func:`_taps`: add each tap's (N, OH, OW, C) gradient back to the input,
    taps in row-major order (the order fixes the float sums)."""
    xp_shape, pt, pl, h, w = geom
    dxp = np.zeros(xp_shape, dtype=taps[0].dtype)
    oh, ow = taps[0].shape[1:3]
    for k, g in enumerate(taps):
        i, j = divmod(k, kw)
        dxp[:, _window(i * d[0], s[0], oh), _window(j * d[1], s[1], ow), :] += g
    return dxp[:, pt : pt + h, pl : pl + w, :]


def _unpatch(dcols: np.ndarray, geom, s, d) -> np.ndarray:
    """Adjoint of :func:`_patches`: scatter-add patch gradients back to the input."""
    _, _, _, kh, kw, _ = dcols.shape
    # Tap-major first (one copy), so each tap's add runs over contiguous (OW, C) blocks.
    by_tap = np.ascontiguousarray(dcols.transpose(3, 4, 0, 1, 2, 5))
    return _scatter_taps([by_tap[i, j] for i in range(kh) for j in range(kw)], kh, kw, geom, s, d)


@functools.lru_cache(maxsize=64)
def _pool_counts(h: int, w: int, kh: int, kw: int, s: tuple[int, int], padding: str, dtype: np.dtype) -> np.ndarray:
    """Inputs under each average-pool window (padding excluded): fixed by the geometry, so
    computed once per shape instead of per forward pass. Read-only: it is shared."""
    ones = np.ones((1, h, w, 1), dtype=dtype)
    cols = _patches(ones, kh, kw, s, (1, 1), padding)[0]
    cnt = cols.reshape(1, cols.shape[1], cols.shape[2], kh * kw, 1).sum(axis=3)
    cnt.flags.writeable = False
    return cnt


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
        bad = [(o.index, o.name) for o in graph.ops if o.name not in SUPPORTED]
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
        return ((np.asarray(x_int8, np.int32) - self.input_zero_point) * np.float32(self.input_scale)).astype(self.dtype)

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
        aux: dict[int, tuple] = {}
        for op in g.ops:
            o = op.options
            act = o.get("activation", "NONE")
            xin = self._value(vals, op.inputs[0])
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w = self.params[op.inputs[1]]
                b = self.params[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
                s, d = tuple(o["stride"]), tuple(o.get("dilation", (1, 1)))
                kh, kw = (w.shape[1], w.shape[2])
                cols, geom = _patches(xin, kh, kw, s, d, o["padding"])
                if op.name == "CONV_2D":
                    z = cols.reshape(-1, kh * kw * w.shape[3]) @ w.reshape(w.shape[0], -1).T
                    z = z.reshape(cols.shape[:3] + (w.shape[0],))
                else:
                    m = w.shape[3] // xin.shape[3]
                    colr = np.repeat(cols, m, axis=-1) if m > 1 else cols
                    z = np.einsum("nhwijc,ijc->nhwc", colr, w[0], optimize=True)
                if b is not None:
                    z += b  # z is the fresh product: no second array
                aux[op.index] = (cols, geom, z)
            elif op.name == "FULLY_CONNECTED":
                w = self.params[op.inputs[1]]
                b = self.params[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
                x2 = xin.reshape(-1, w.shape[1])
                z = x2 @ w.T
                if b is not None:
                    z += b
                aux[op.index] = (x2, xin.shape, z)
            elif op.name == "ADD":
                z = xin + self._value(vals, op.inputs[1])
                aux[op.index] = (z,)
            elif op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
                kh, kw = o["filter"]
                s = tuple(o["stride"])
                if op.name == "MAX_POOL_2D":
                    xp, oh, ow, geom = _padded(xin, kh, kw, s, (1, 1), o["padding"], -np.inf)
                    z, arg = _max_pool(_taps(xp, kh, kw, s, (1, 1), oh, ow))
                    aux[op.index] = (arg, geom, z)
                else:
                    cols, geom = _patches(xin, kh, kw, s, (1, 1), o["padding"])
                    c5 = cols.reshape(cols.shape[:3] + (kh * kw, cols.shape[-1]))
                    cnt = _pool_counts(xin.shape[1], xin.shape[2], kh, kw, s, o["padding"], self.dtype)
                    z = c5.sum(axis=3) / cnt
                    aux[op.index] = (cnt, geom, z)
            elif op.name == "RESHAPE":
                z = xin.reshape((n,) + tuple(g.tensors[op.outputs[0]].shape[1:]))
                aux[op.index] = (xin.shape, z)
                act = "NONE"
            elif op.name == "SOFTMAX":
                beta = float(o.get("beta", 1.0))
                zz = xin.reshape(n, -1)
                if beta != 1.0:  # x * 1.0 is x
                    zz = zz * beta
                zz = zz - zz.max(axis=1, keepdims=True)
                e = np.exp(zz)
                z = (e / e.sum(axis=1, keepdims=True)).reshape(xin.shape)
                aux[op.index] = (beta,)
                act = "NONE"
            vals[op.outputs[0]] = _act_forward(z, act)
            if fake_quant:
                vals[op.outputs[0]] = self._fake_quant(vals[op.outputs[0]], op.outputs[0])
        out = vals[g.outputs[0]]
        self._cache = {"vals": vals, "aux": aux} if keep else None
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
        vals, aux = self._cache["vals"], self._cache["aux"]
        grads: dict[int, np.ndarray] = {}
        dv: dict[int, np.ndarray] = {}

        def add_grad(t: int, gr: np.ndarray) -> None:
            if t in vals or t == g.inputs[0]:
                dv[t] = dv[t] + gr if t in dv else gr

        for op in reversed(g.ops):
            if op.index < self.first_trainable:
                break
            gout = dv.pop(op.outputs[0], None)
            o = op.options
            if op.name == "SOFTMAX":
                beta = aux[op.index][0]
                diff = p2.copy()  # p - onehot: p - 0 is p, bit for bit
                diff[np.arange(n), y] -= 1
                if beta != 1.0:  # x * 1.0 is x
                    diff = beta * diff
                add_grad(op.inputs[0], (diff / n).reshape(p.shape).astype(self.dtype, copy=False))
                continue
            if gout is None:
                continue
            act = o.get("activation", "NONE")
            need_dx = op.index > self.first_trainable
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                cols, geom, z = aux[op.index]
                gz = _act_backward(z, gout, act)
                w = self.params[op.inputs[1]]
                s, d = tuple(o["stride"]), tuple(o.get("dilation", (1, 1)))
                kh, kw = w.shape[1], w.shape[2]
                if op.name == "CONV_2D":
                    g2 = gz.reshape(-1, w.shape[0])
                    grads[op.inputs[1]] = (g2.T @ cols.reshape(-1, kh * kw * w.shape[3])).reshape(w.shape)
                    if need_dx:
                        dcols = (g2 @ w.reshape(w.shape[0], -1)).reshape(cols.shape)
                else:
                    c = cols.shape[-1]
                    m = w.shape[3] // c
                    colr = np.repeat(cols, m, axis=-1) if m > 1 else cols
                    grads[op.inputs[1]] = np.einsum("nhwc,nhwijc->ijc", gz, colr, optimize=True)[None]
                    if need_dx:
                        dcr = np.einsum("nhwc,ijc->nhwijc", gz, w[0], optimize=True)
                        dcols = dcr.reshape(dcr.shape[:5] + (c, m)).sum(axis=-1)
                if len(op.inputs) > 2 and op.inputs[2] >= 0:
                    grads[op.inputs[2]] = gz.sum(axis=(0, 1, 2))
                if need_dx:
                    add_grad(op.inputs[0], _unpatch(dcols, geom, s, d))
            elif op.name == "FULLY_CONNECTED":
                x2, xshape, z = aux[op.index]
                gz = _act_backward(z, gout, act).reshape(z.shape)
                w = self.params[op.inputs[1]]
                grads[op.inputs[1]] = gz.T @ x2
                if len(op.inputs) > 2 and op.inputs[2] >= 0:
                    grads[op.inputs[2]] = gz.sum(axis=0)
                if need_dx:
                    add_grad(op.inputs[0], (gz @ w).reshape(xshape))
            elif op.name == "ADD":
                (z,) = aux[op.index]
                gz = _act_backward(z, gout, act)
                for t in op.inputs[:2]:
                    if t in vals:
                        shp = vals[t].shape
                        gr = gz
                        while gr.ndim > len(shp):
                            gr = gr.sum(axis=0)
                        axes = tuple(i for i, (a, b) in enumerate(zip(gr.shape, shp)) if b == 1 and a != 1)
                        if axes:
                            gr = gr.sum(axis=axes, keepdims=True)
                        add_grad(t, gr)
            elif op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
                kh, kw = o["filter"]
                s = tuple(o["stride"])
                arg_or_cnt, geom, z = aux[op.index]
                gz = _act_backward(z, gout, act)
                if op.name == "MAX_POOL_2D":  # the gradient goes to each window's (first) maximum
                    taps = [_keep(arg_or_cnt == k, gz) for k in range(kh * kw)]
                else:  # spread evenly over the window
                    taps = [gz / arg_or_cnt] * (kh * kw)
                add_grad(op.inputs[0], _scatter_taps(taps, kh, kw, geom, s, (1, 1)))
            elif op.name == "RESHAPE":
                xshape, _ = aux[op.index]
                add_grad(op.inputs[0], gout.reshape(xshape))
        for t in list(grads):
            mask = self.masks[t]
            if mask is not self._full_masks.get(t):  # x * True is x, bit for bit: skip those
                grads[t] = grads[t] * mask
            grads[t] = grads[t].astype(self.dtype, copy=False)
        return loss, grads
