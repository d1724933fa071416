"""Compile a plan's tail (``tail.tflite`` + ``trainable.tfw``) into the firmware's TFTR training program.

The firmware trains w* in float32 without parsing flatbuffers: this compiler resolves every
shape, stride, dilation, padding offset (TensorFlow's SAME/VALID rule), depth multiplier,
fused activation, softmax beta and pool window, keeps the tail's weights int8 (biases int32)
with per-channel float32 scales and zero points, lays out w* (the units of ``trainable.tfw``,
in record order) and plans the float32 work area of ONE sample: activation values and
gradient buffers placed by lifetime over the forward + backward timeline. The C engine
(``firmware/engine/tftr.c``) validates and runs it; ``tinyfed.training.FloatTail`` is the
numpy reference of the same computation. Layout: ``docs/fragment-format.md`` ("Training
program (TFTR)").
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

import numpy as np

from tinyfed.errors import ModelError, PlanError
from tinyfed.planner import trainable as tfw

__all__ = [
    "MAGIC",
    "VERSION",
    "ProgramInfo",
    "compile_program",
    "parse_program",
    "program_ram_bytes",
]

MAGIC = b"TFTR"
VERSION = 1
HEADER_BYTES = 96
TENSOR_BYTES = 48
OP_BYTES = 64
UNIT_BYTES = 24
N_PARAMS = 13
NONE16 = 0xFFFF
NONE32 = 0xFFFFFFFF
ALIGN = 4

KIND_ACT, KIND_Q8, KIND_Q32 = 0, 1, 2
ACT_CODES = {"NONE": 0, None: 0, "RELU": 1, "RELU6": 2}
FLAG_ZERO_IN0, FLAG_ZERO_IN1 = 1, 2

# TFLite BuiltinOperator codes (as the TFMB blob).
OP_CODES = {
    "ADD": 0, "AVERAGE_POOL_2D": 1, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 4,
    "FULLY_CONNECTED": 9, "MAX_POOL_2D": 17, "RESHAPE": 22, "SOFTMAX": 25,
}

# magic, version, header bytes, total, ram, work, trainable, input elems, classes, input scale,
# input zp, op count, tensor count, unit count, first trainable op, tensors/ops/units/data offsets,
# data bytes, flops, input tensor, output tensor, scratch offset, scratch floats, 12 reserved
_HEADER = struct.Struct("<4sHHIIIIIIfiHHHHIIIIIIHHII12x")
_TENSOR = struct.Struct("<BBBB4iIIIII8x")
_OP = struct.Struct("<BBBBHHHH13i")
_UNIT = struct.Struct("<HHBBHIIII")
assert _HEADER.size == HEADER_BYTES and _TENSOR.size == TENSOR_BYTES and _OP.size == OP_BYTES
assert _UNIT.size == UNIT_BYTES

_FIX_OPS = (
    "the training engine runs CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, AVERAGE_POOL_2D, "
    "MAX_POOL_2D, RESHAPE and a final SOFTMAX: plan a tail (cut) that uses only those"
)
_FIX_PLAN = "re-run `tinyfed plan` so that tail.tflite and trainable.tfw come from the same plan"


@dataclass(frozen=True)
class ProgramInfo:
    """What the host needs to know about a compiled training program."""

    ram_bytes: int  # 12 * trainable_count + work_bytes: the RAM tftr_bind needs
    work_bytes: int  # float32 activations and gradient buffers of one sample, planned
    trainable_count: int  # floats of w*
    input_elems: int  # int8 elements of the tail input
    classes: int  # softmax outputs
    flops: int  # multiply-accumulates of one training sample (forward + backward)
    op_count: int
    unit_count: int
    first_trainable_op: int
    input_scale: float
    input_zero_point: int
    total_size: int


def _pads(size: int, k: int, s: int, d: int, padding: str) -> tuple[int, int]:
    """(output size, pad before) with TensorFlow's SAME/VALID rule (odd pixel after)."""
    eff = (k - 1) * d + 1
    if padding == "SAME":
        out = -(-size // s)
        return out, max((out - 1) * s + eff - size, 0) // 2
    return (size - eff) // s + 1, 0


def _plan(sizes: dict[object, int], life: dict[object, tuple[int, int]]) -> tuple[dict[object, int], int]:
    """Greedy by size: each buffer at the lowest 4-aligned offset that overlaps no placed
    buffer whose lifetime intersects its own (as blob.py's arena plan, on the training timeline)."""
    order = sorted(sizes, key=lambda k: (-sizes[k], life[k][0], str(k)))
    placed: list[tuple[int, int, int, int]] = []
    offsets: dict[object, int] = {}
    for key in order:
        size = -(-sizes[key] // ALIGN) * ALIGN
        first, last = life[key]
        cand = 0
        for o, e in sorted((o, e) for o, e, a, b in placed if a <= last and first <= b):
            if cand + size <= o:
                break
            cand = max(cand, e)
        offsets[key] = cand
        placed.append((cand, cand + size, first, last))
    return offsets, max((e for _, e, _, _ in placed), default=0)


class _Data:
    """The data section: every array 4-byte aligned (16 for the int8/int32 weight arrays)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def add(self, payload: bytes, align: int = ALIGN) -> int:
        self.buf += b"\0" * ((-len(self.buf)) % align)
        off = len(self.buf)
        self.buf += payload
        return off


def compile_program(tail_tflite: bytes, trainable_tfw: bytes, *, source: str = "tail.tflite") -> bytes:
    """Compile a plan's tail and its trainable units into a TFTR training program.

    Raises :class:`ModelError` for ops or shapes the engine cannot train (unsupported ops, no
    final SOFTMAX, broadcasting ADD, batch > 1 ...) and :class:`PlanError` when the units do
    not address weights/biases of the tail.
    """
    from tinyfed.models.tflite_graph import TfliteGraph

    g = TfliteGraph.from_bytes(bytes(tail_tflite), source=source)
    units = tfw.decode(bytes(trainable_tfw))
    bad = g.unsupported_ops(OP_CODES)
    if bad:
        listing = ", ".join(f"op {i} {n}" for i, n in bad)
        raise ModelError(f"the training engine has no kernel for {listing}", fix=_FIX_OPS, source=source)
    n = len(g.ops)
    if n == 0 or g.ops[-1].name != "SOFTMAX":
        raise ModelError("the tail must end with SOFTMAX (trained with cross-entropy)",
                         fix="plan a model whose last op is SOFTMAX", source=source)
    if any(op.name == "SOFTMAX" for op in g.ops[:-1]):
        raise ModelError("SOFTMAX is only supported as the tail's last op", fix=_FIX_OPS, source=source)
    if len(g.inputs) != 1 or len(g.outputs) != 1 or g.outputs[0] != g.ops[-1].outputs[0]:
        raise ModelError("the tail must have one input and the softmax output as its one output",
                         fix="cut at a single-tensor boundary (TfliteGraph.cut_points())", source=source)
    if n >= NONE16 or len(units) >= NONE16:
        raise ModelError("too many ops or units for the training program format", source=source)

    def fail(op, problem: str, fix: str | None = None) -> ModelError:
        return ModelError(f"op {op.index} {op.name}: {problem}", fix=fix or _FIX_OPS, source=source)

    # ---- units ---------------------------------------------------------------------
    first_trainable = min((u.op_index for u in units), default=n)
    unit_of: dict[int, int] = {}
    for k, u in enumerate(units):
        if not 0 <= u.op_index < n:
            raise PlanError(f"trainable unit {k} names op {u.op_index}; the tail has {n} ops", fix=_FIX_PLAN)
        op = g.ops[u.op_index]
        want = g.weight_tensor(op) if u.kind == tfw.KIND_WEIGHTS else g.bias_tensor(op)
        if want is None or want.index != u.tensor_index:
            raise PlanError(f"trainable unit {k} addresses tensor {u.tensor_index}, not the "
                            f"{'weights' if u.kind == tfw.KIND_WEIGHTS else 'bias'} of op {u.op_index} {op.name}",
                            fix=_FIX_PLAN)
        if u.tensor_index in unit_of:
            raise PlanError(f"tensor {u.tensor_index} is addressed by two trainable units", fix=_FIX_PLAN)
        unit_of[u.tensor_index] = k

    # ---- tensors ---------------------------------------------------------------------
    ids: dict[int, int] = {}

    def bid(t: int) -> int:
        if t not in ids:
            ids[t] = len(ids)
        return ids[t]

    producer: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    for op in g.ops:
        for t in op.inputs:
            if t >= 0 and not g.tensors[t].is_constant:
                consumers.setdefault(t, []).append(op.index)
        producer[op.outputs[0]] = op.index
    bid(g.inputs[0])

    data = _Data()
    params: dict[int, dict] = {}  # tail tensor -> record fields
    value_start = 0
    unit_start: dict[int, int] = {}
    for k, u in enumerate(units):
        unit_start[k] = value_start
        value_start += len(u.channels) * u.values_per_channel
    trainable_count = value_start

    def param(op, t: int, axis: int, want_type: str, what: str) -> int:
        info = g.tensors[t]
        if not info.is_constant or info.type_name != want_type:
            raise fail(op, f"{what} tensor {t} must be a constant {want_type} tensor (is {info.type_name})",
                       "convert the model with int8 weights and int32 biases")
        if t in params:
            return bid(t)
        shape = tuple(info.shape)
        if not 1 <= len(shape) <= 4:
            raise fail(op, f"{what} tensor {t} has rank {len(shape)}")
        ch = int(shape[axis])
        elems = int(np.prod(shape))
        per = elems // ch
        if info.scales:
            if len(info.scales) not in (1, ch):
                raise fail(op, f"{what} tensor {t} has {len(info.scales)} scales for {ch} channels")
            if len(info.scales) > 1 and info.quantized_dimension != axis:
                raise fail(op, f"{what} tensor {t} is quantized along axis {info.quantized_dimension}, not its "
                           f"output-channel axis {axis}")
            scales = np.broadcast_to(np.asarray(info.scales, np.float32), (ch,))
            zps = np.broadcast_to(np.asarray(info.zero_points, np.int32), (ch,))
        else:
            scales, zps = np.ones(ch, np.float32), np.zeros(ch, np.int32)
        q = g.constant_data(t)
        cmap = np.full(ch, -1, np.int32)
        if t in unit_of:
            k = unit_of[t]
            u = units[k]
            if u.axis != axis or u.tensor_channels != ch or u.values_per_channel != per:
                raise PlanError(f"trainable unit {k} (tensor {t}) has axis {u.axis}, {u.tensor_channels} channels x "
                                f"{u.values_per_channel} values; the tensor has axis {axis}, {ch} x {per}", fix=_FIX_PLAN)
            chs = list(u.channels)
            if any(not 0 <= c < ch for c in chs) or any(b <= a for a, b in itertools.pairwise(chs)):
                raise PlanError(f"trainable unit {k} channels must be ascending and below {ch}", fix=_FIX_PLAN)
            for i, c in enumerate(chs):
                cmap[c] = unit_start[k] + i * per
        qtype = "<i1" if want_type == "INT8" else "<i4"
        params[t] = {
            "kind": KIND_Q8 if want_type == "INT8" else KIND_Q32,
            "shape": shape, "axis": axis, "channels": ch,
            "q": data.add(np.ascontiguousarray(q, dtype=qtype).tobytes(), 16),
            "scales": data.add(np.ascontiguousarray(scales, "<f4").tobytes()),
            "zps": data.add(np.ascontiguousarray(zps, "<i4").tobytes()),
            "map": data.add(cmap.astype("<i4").tobytes()),
        }
        return bid(t)

    def act(op, t: int, what: str) -> int:
        info = g.tensors[t]
        if info.is_constant:
            raise fail(op, f"{what} tensor {t} is a constant; the training engine needs activations here")
        if not 1 <= len(info.shape) <= 4:
            raise fail(op, f"{what} tensor {t} has rank {len(info.shape)}")
        return bid(t)

    def batch1(op, t: int) -> tuple[int, ...]:
        shape = tuple(g.tensors[t].shape)
        if len(shape) != 4 or shape[0] != 1:
            raise fail(op, f"tensor {t} {list(shape)} is not (1, H, W, C); the engine trains one sample at a time")
        return shape

    # ---- ops -----------------------------------------------------------------------------
    records = []
    flops = 0
    for op in g.ops:
        o = op.options
        ins = list(op.inputs)
        if len(op.outputs) != 1:
            raise fail(op, f"has {len(op.outputs)} outputs")
        out_t = op.outputs[0]
        a = o.get("activation", "NONE")
        if op.name in ("RESHAPE", "SOFTMAX"):
            a = "NONE"
        if a not in ACT_CODES:
            raise fail(op, f"fused activation {a} is not supported", "use NONE, RELU or RELU6")
        p = [0] * N_PARAMS
        in3 = [NONE16, NONE16, NONE16]
        in3[0] = act(op, ins[0], "input")
        out_id = act(op, out_t, "output")
        train_here = op.index >= first_trainable
        fwd = bwd = 0
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            dw = op.name == "DEPTHWISE_CONV_2D"
            _, h, w, c = batch1(op, ins[0])
            _, oh, ow, oc = batch1(op, out_t)
            axis = 3 if dw else 0
            in3[1] = param(op, ins[1], axis, "INT8", "filter")
            if len(ins) > 2 and ins[2] >= 0:
                in3[2] = param(op, ins[2], 0, "INT32", "bias")
            f = g.tensors[ins[1]].shape
            if len(f) != 4:
                raise fail(op, f"filter {list(f)} is not 4-D")
            mult = 0
            if dw:
                if f[0] != 1 or f[3] != oc or oc % c:
                    raise fail(op, f"depthwise filter {list(f)} does not map {c} to {oc} channels")
                mult = oc // c
            elif f[0] != oc or f[3] != c:
                raise fail(op, f"filter {list(f)} does not map {c} to {oc} channels (grouped convolution?)")
            if in3[2] != NONE16 and g.tensors[ins[2]].size != oc:
                raise fail(op, "bias size differs from the output channels")
            sh, sw = o.get("stride", (1, 1))
            dh, dwl = o.get("dilation", (1, 1))
            pad = o.get("padding", "VALID")
            eh, pt = _pads(h, f[1], sh, dh, pad)
            ew, pl = _pads(w, f[2], sw, dwl, pad)
            if (eh, ew) != (oh, ow):
                raise fail(op, f"output {oh}x{ow} disagrees with the {pad} padding rule ({eh}x{ew})")
            p[:7] = [sh, sw, dh, dwl, pt, pl, mult]
            fwd = oh * ow * oc * f[1] * f[2] * (1 if dw else c)
        elif op.name == "FULLY_CONNECTED":
            in3[1] = param(op, ins[1], 0, "INT8", "weights")
            if len(ins) > 2 and ins[2] >= 0:
                in3[2] = param(op, ins[2], 0, "INT32", "bias")
            wshape = g.tensors[ins[1]].shape
            if len(wshape) != 2:
                raise fail(op, "weights must be 2-D")
            if o.get("weights_format", 0) != 0:
                raise fail(op, "shuffled weights are not supported")
            nout, depth = wshape
            xo, yo = g.tensors[ins[0]].size, g.tensors[out_t].size
            if yo % nout or xo != yo // nout * depth:
                raise fail(op, "input/output sizes disagree with the weights")
            if in3[2] != NONE16 and g.tensors[ins[2]].size != nout:
                raise fail(op, "bias size differs from the outputs")
            fwd = yo * depth
        elif op.name == "ADD":
            in3[1] = act(op, ins[1], "second input")
            sizes = {g.tensors[t].size for t in (ins[0], ins[1], out_t)}
            if len(sizes) != 1 or tuple(g.tensors[ins[0]].shape) != tuple(g.tensors[ins[1]].shape):
                raise fail(op, f"broadcasting ADD ({list(g.tensors[ins[0]].shape)} + {list(g.tensors[ins[1]].shape)})"
                           " is not supported", "use inputs of the same shape")
            fwd = g.tensors[out_t].size
        elif op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            _, h, w, c = batch1(op, ins[0])
            _, oh, ow, oc = batch1(op, out_t)
            kh, kw = o["filter"]
            sh, sw = o.get("stride", (1, 1))
            pad = o.get("padding", "VALID")
            eh, pt = _pads(h, kh, sh, 1, pad)
            ew, pl = _pads(w, kw, sw, 1, pad)
            if (eh, ew, c) != (oh, ow, oc):
                raise fail(op, f"output {oh}x{ow}x{oc} disagrees with the {pad} padding rule")
            p[:6] = [sh, sw, kh, kw, pt, pl]
            fwd = oh * ow * oc * kh * kw
        elif op.name == "RESHAPE":
            if g.tensors[ins[0]].size != g.tensors[out_t].size:
                raise fail(op, "reshape changes the element count")
        elif op.name == "SOFTMAX":
            beta = float(o.get("beta", 1.0))
            p[0] = struct.unpack("<i", struct.pack("<f", beta))[0]
            fwd = g.tensors[out_t].size
        flops += fwd
        if train_here:
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                # weight gradient of the trainable channels, plus the input gradient past the first op
                wt = ins[1] in unit_of
                frac = len(units[unit_of[ins[1]]].channels) / params[ins[1]]["channels"] if wt else 0.0
                bwd += int(fwd * frac) + (fwd if op.index > first_trainable else 0)
            else:
                bwd += fwd
        flops += bwd
        records.append([OP_CODES[op.name], ACT_CODES[a], 0, in3, out_id, p])

    # ---- memory plan over the training timeline --------------------------------------
    # forward of op i at time i, backward of op i at time 2n-1-i
    def tb(i: int) -> int:
        return 2 * n - 1 - i

    alias: dict[int, int] = {}
    for op in g.ops:
        if op.name == "RESHAPE":
            alias[op.outputs[0]] = op.inputs[0]

    def root(t: int) -> int:
        while t in alias:
            t = alias[t]
        return t

    acts = [t for t in ids if not g.tensors[t].is_constant]
    v_life: dict[object, tuple[int, int]] = {}
    v_size: dict[object, int] = {}
    for t in acts:
        start = producer.get(t, 0)
        end = max(consumers.get(t, [start]) + [start])
        readers = [c for c in consumers.get(t, []) if c >= first_trainable]
        if t in producer and producer[t] >= first_trainable:
            readers.append(producer[t])
        if readers:
            end = max(end, max(tb(c) for c in readers))
        if t == g.outputs[0]:
            end = max(end, n - 1)
        key = ("v", root(t))
        a0, b0 = v_life.get(key, (start, end))
        v_life[key] = (min(a0, start), max(b0, end))
        v_size[key] = max(v_size.get(key, 0), 4 * g.tensors[t].size)

    has_grad = {t for t in acts if t in producer and producer[t] >= first_trainable and consumers.get(t)}
    g_alias: dict[int, int] = {}
    for op in g.ops:
        if op.name == "RESHAPE":
            i, o_ = op.inputs[0], op.outputs[0]
            if i in has_grad and o_ in has_grad and consumers.get(i) == [op.index]:
                g_alias[o_] = i

    def groot(t: int) -> int:
        while t in g_alias:
            t = g_alias[t]
        return t

    for t in sorted(has_grad):
        start, end = tb(max(consumers[t])), tb(producer[t])
        key = ("g", groot(t))
        a0, b0 = v_life.get(key, (start, end))
        v_life[key] = (min(a0, start), max(b0, end))
        v_size[key] = max(v_size.get(key, 0), 4 * g.tensors[t].size)
    scratch_floats = max((int(np.prod(pr["shape"])) // pr["channels"] for pr in params.values()), default=0)
    if scratch_floats:
        v_life[("s", 0)] = (0, 2 * n - 1)
        v_size[("s", 0)] = 4 * scratch_floats
    offsets, work_bytes = _plan(v_size, v_life)
    scratch_offset = offsets.get(("s", 0), 0)

    # zero-before-backward flags: the last consumer's first slot zeroes an input's gradient
    for rec, op in zip(records, g.ops):
        seen = set()
        for k in (0, 1):
            t = op.inputs[k] if k < len(op.inputs) else -1
            if k == 1 and op.name != "ADD":
                continue
            if t < 0 or t not in has_grad or t in seen:
                continue
            seen.add(t)
            if op.name == "RESHAPE" and op.outputs[0] in g_alias:
                continue
            if max(consumers[t]) == op.index:
                rec[2] |= FLAG_ZERO_IN0 if k == 0 else FLAG_ZERO_IN1

    # ---- serialise -------------------------------------------------------------------------
    order = sorted(ids, key=ids.get)
    if len(order) >= NONE16:
        raise ModelError("too many tensors for the training program format", source=source)
    tensor_recs = bytearray()
    for t in order:
        info = g.tensors[t]
        if t in params:
            pr = params[t]
            dims = list(pr["shape"]) + [1] * (4 - len(pr["shape"]))
            tensor_recs += _TENSOR.pack(pr["kind"], len(pr["shape"]), pr["axis"], 0, *dims, pr["channels"], pr["q"],
                                        pr["scales"], pr["zps"], pr["map"])
        else:
            dims = list(info.shape) + [1] * (4 - len(info.shape))
            goff = offsets[("g", groot(t))] if t in has_grad else NONE32
            tensor_recs += _TENSOR.pack(KIND_ACT, len(info.shape), 0, 0, *dims, offsets[("v", root(t))], goff, 0, 0, 0)
    op_recs = bytearray()
    for code, a, flags, in3, out_id, p in records:
        op_recs += _OP.pack(code, a, flags, 0, *in3, out_id, *[int(v) for v in p])
    unit_recs = bytearray()
    for k, u in enumerate(units):
        ch_off = data.add(struct.pack(f"<{len(u.channels)}H", *u.channels))
        val_off = data.add(np.ascontiguousarray(u.values, "<f4").tobytes())
        unit_recs += _UNIT.pack(u.op_index, ids[u.tensor_index], u.kind, u.axis, len(u.channels), u.values_per_channel,
                                unit_start[k], ch_off, val_off)

    tensors_offset = HEADER_BYTES
    ops_offset = tensors_offset + len(tensor_recs)
    units_offset = ops_offset + len(op_recs)
    data_offset = -(-(units_offset + len(unit_recs)) // 16) * 16
    body = bytes(tensor_recs) + bytes(op_recs) + bytes(unit_recs)
    body += b"\0" * (data_offset - HEADER_BYTES - len(body)) + bytes(data.buf)
    total = HEADER_BYTES + len(body)
    t_in = g.tensors[g.inputs[0]]
    in_scale = float(t_in.scales[0]) if t_in.scales else 1.0
    in_zp = int(t_in.zero_points[0]) if t_in.zero_points else 0
    ram = 12 * trainable_count + work_bytes
    header = _HEADER.pack(MAGIC, VERSION, HEADER_BYTES, total, ram, work_bytes, trainable_count, t_in.size,
                          g.tensors[g.outputs[0]].size, in_scale, in_zp, n, len(order), len(units), first_trainable,
                          tensors_offset, ops_offset, units_offset, data_offset, len(data.buf), min(flops, NONE32),
                          ids[g.inputs[0]], ids[g.outputs[0]], scratch_offset, scratch_floats)
    return header + body


def parse_program(blob: bytes) -> ProgramInfo:
    """Read a TFTR program's header (framing only; ``tftr_open`` validates everything)."""
    blob = bytes(blob)
    fix = "compile the plan again with tinyfed.firmware_bridge.compile.train_blob.compile_program"
    if len(blob) < HEADER_BYTES:
        raise ModelError(f"training program of {len(blob)} bytes is shorter than its header", fix=fix)
    (magic, version, hdr, total, ram, work, count, in_elems, classes, in_scale, in_zp, n_ops, _n_t, n_units, first,
     *_rest) = _HEADER.unpack_from(blob)
    flops = _rest[5]
    if magic != MAGIC:
        raise ModelError("not a TFTR training program (bad magic)", fix=fix)
    if version != VERSION:
        raise ModelError(f"training program version {version}, this host reads version {VERSION}", fix=fix)
    if hdr != HEADER_BYTES or total != len(blob):
        raise ModelError(f"training program size {len(blob)} disagrees with its header ({total})", fix=fix)
    if ram != 12 * count + work:
        raise ModelError("training program RAM size disagrees with its work area and w*", fix=fix)
    return ProgramInfo(ram_bytes=ram, work_bytes=work, trainable_count=count, input_elems=in_elems, classes=classes,
                       flops=flops, op_count=n_ops, unit_count=n_units, first_trainable_op=first,
                       input_scale=float(in_scale), input_zero_point=in_zp, total_size=total)


def program_ram_bytes(blob: bytes) -> int:
    """RAM (bytes) that ``tftr_bind`` needs for this program: 3 * 4 * trainable_count + work_bytes."""
    return parse_program(blob).ram_bytes
