"""Compile a plan's tail (``tail.tflite`` + ``trainable.tfw``) into the firmware's TFTR training program.

The firmware trains w* in float32 without parsing flatbuffers: this compiler resolves every
shape, stride, dilation, padding offset (TensorFlow's SAME/VALID rule), depth multiplier,
fused activation, softmax beta and pool window, keeps the tail's weights int8 (biases int32)
with per-channel float32 scales and zero points, lays out w* (the units of ``trainable.tfw``,
in record order) and plans the float32 work area of ONE sample: activation values and
gradient buffers placed by lifetime over the forward + backward timeline. The C engine
(``firmware/engine/tftr.c``) validates and runs it; ``tinyfed.training.FloatTail`` is the
numpy reference of the same computation. Each op's record is its op module's ``encode_program``
(:mod:`tinyfed.ops`). The header names the loss (``LOSS_*``, the task's
:class:`~tinyfed.training.task.Loss`) and the targets the engine reads per sample (``TARGET_*``,
the local data's: a class byte, k label bytes, k float32 values, or the model's own int8 input,
dequantized with the target scale and zero point). Layout: ``docs/fragment-format.md`` ("Training
program (TFTR)").
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed import ops
from tinyfed.errors import ModelError, PlanError
from tinyfed.firmware_bridge.compile.layout import FragmentBuilder, align_up, plan_arena
from tinyfed.firmware_bridge.compile.local_data import (
    TARGET_CLASS,
    TARGET_INPUT,
    TARGET_LABELS,
    TARGET_REAL,
    target_kind,
)
from tinyfed.planner import trainable as tfw
from tinyfed.training.task import Loss, Task, implied_task, loss_of

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo, TfliteGraph

__all__ = [
    "MAGIC",
    "VERSION",
    "ProgramBuilder",
    "ProgramInfo",
    "WorkArea",
    "compile_program",
    "parse_program",
    "program_ram_bytes",
    "program_bytes_with",
    "work_area",
]

MAGIC = b"TFTR"
VERSION = 2  # 2: the loss and target fields (issue 13)
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
FLAG_ZERO_IN0, FLAG_ZERO_IN1, FLAG_ZERO_IN2 = 1, 2, 4
LOSS_SOFTMAX_CE, LOSS_SIGMOID_BCE, LOSS_MSE = 0, 1, 2
LOSS_CODES = {Loss.SOFTMAX_CE: LOSS_SOFTMAX_CE, Loss.SIGMOID_BCE: LOSS_SIGMOID_BCE, Loss.MSE: LOSS_MSE}
#: the targets each loss reads
LOSS_TARGETS = {LOSS_SOFTMAX_CE: (TARGET_CLASS,), LOSS_SIGMOID_BCE: (TARGET_LABELS,),
                LOSS_MSE: (TARGET_REAL, TARGET_INPUT)}

# magic, version, header bytes, total, ram, work, trainable, input elems, classes, input scale,
# input zp, op count, tensor count, unit count, first trainable op, tensors/ops/units/data offsets,
# data bytes, flops, input tensor, output tensor, scratch offset, scratch floats, loss, target kind, 2 reserved,
# target scale, target zero point (TARGET_INPUT: the model input's; else 0 and 0)
_HEADER = struct.Struct("<4sHHIIIIIIfiHHHHIIIIIIHHIIBBxxfi")
_TENSOR = struct.Struct("<BBBB4iIIIII8x")
_OP = struct.Struct("<BBBBHHHH13i")
_UNIT = struct.Struct("<HHBBHIIII")
assert _HEADER.size == HEADER_BYTES and _TENSOR.size == TENSOR_BYTES and _OP.size == OP_BYTES
assert _UNIT.size == UNIT_BYTES

_FIX_PLAN = "re-run `tinyfed plan` so that tail.tflite and trainable.tfw come from the same plan"


@dataclass(frozen=True)
class ProgramInfo:
    """What the host needs to know about a compiled training program."""

    ram_bytes: int  # 12 * trainable_count + work_bytes: the RAM tftr_bind needs
    work_bytes: int  # float32 activations and gradient buffers of one sample, planned
    trainable_count: int  # floats of w*
    input_elems: int  # int8 elements of the tail input
    classes: int  # output elements: softmax classes, labels or real outputs
    flops: int  # multiply-accumulates of one training sample (forward + backward)
    op_count: int
    unit_count: int
    first_trainable_op: int
    input_scale: float
    input_zero_point: int
    total_size: int
    loss: Loss = Loss.SOFTMAX_CE
    target_kind: int = TARGET_CLASS  # local_data.TARGET_*: what the engine reads per sample
    target_scale: float = 0.0  # TARGET_INPUT: the model input's quantization
    target_zero_point: int = 0

    @property
    def target_bytes(self) -> int:
        """Bytes of one sample's target as the engine reads it (TARGET_INPUT: the sample itself)."""
        return {TARGET_CLASS: 1, TARGET_LABELS: self.classes, TARGET_REAL: 4 * self.classes,
                TARGET_INPUT: self.classes}[self.target_kind]


class ProgramBuilder(FragmentBuilder):
    """What an op's TFTR encoder may do while the program is compiled: check activations, number
    tensors and lay out its weights and biases (int8/int32 values, scales, zero points and the map
    of each channel to its place in w*)."""

    def __init__(self, graph: TfliteGraph, units: list[tfw.TrainableUnit], source: str) -> None:
        super().__init__(graph, source, ALIGN)
        self.units = units
        self.params: dict[int, dict[str, Any]] = {}  # tail tensor -> record fields
        self.unit_of: dict[int, int] = {}  # tail tensor -> its unit
        self.unit_start: dict[int, int] = {}  # unit -> first value in w*
        start = 0
        for k, u in enumerate(units):
            self.unit_start[k] = start
            start += len(u.channels) * u.values_per_channel
        self.trainable_count = start

    def default_fix(self) -> str:
        return _fix_ops()

    def activation(self, op: OpInfo, t: int, what: str) -> int:
        """Tensor ``t`` checked as an activation of rank 1..4; its id."""
        info = self.graph.tensors[t]
        if info.is_constant:
            raise self.fail(op, f"{what} tensor {t} is a constant; the training engine needs activations here")
        if not 1 <= len(info.shape) <= 4:
            raise self.fail(op, f"{what} tensor {t} has rank {len(info.shape)}")
        return self.id(t)

    def batch1(self, op: OpInfo, t: int) -> tuple[int, ...]:
        """The shape of ``t``, which must be (1, H, W, C)."""
        shape = tuple(self.graph.tensors[t].shape)
        if len(shape) != 4 or shape[0] != 1:
            raise self.fail(op, f"tensor {t} {list(shape)} is not (1, H, W, C); the engine trains one sample at a time")
        return shape

    def _quantization(self, op: OpInfo, info: TensorInfo, axis: int, ch: int,
                      what: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel float32 scales and int32 zero points (1 and 0 for an unquantized tensor)."""
        t = info.index
        if not info.scales:
            return np.ones(ch, np.float32), np.zeros(ch, np.int32)
        if len(info.scales) not in (1, ch):
            raise self.fail(op, f"{what} tensor {t} has {len(info.scales)} scales for {ch} channels")
        if len(info.scales) > 1 and info.quantized_dimension != axis:
            raise self.fail(op, f"{what} tensor {t} is quantized along axis {info.quantized_dimension}, not its "
                            f"output-channel axis {axis}")
        return (np.broadcast_to(np.asarray(info.scales, np.float32), (ch,)),
                np.broadcast_to(np.asarray(info.zero_points, np.int32), (ch,)))

    def _channel_map(self, t: int, axis: int, ch: int, per: int) -> np.ndarray:
        """Each channel's first value in w* (-1: frozen)."""
        cmap = np.full(ch, -1, np.int32)
        if t in self.unit_of:
            k = self.unit_of[t]
            u = self.units[k]
            if u.axis != axis or u.tensor_channels != ch or u.values_per_channel != per:
                raise PlanError(f"trainable unit {k} (tensor {t}) has axis {u.axis}, {u.tensor_channels} channels x "
                                f"{u.values_per_channel} values; the tensor has axis {axis}, {ch} x {per}",
                                fix=_FIX_PLAN)
            chs = list(u.channels)
            if any(not 0 <= c < ch for c in chs) or any(b <= a for a, b in itertools.pairwise(chs)):
                raise PlanError(f"trainable unit {k} channels must be ascending and below {ch}", fix=_FIX_PLAN)
            for i, c in enumerate(chs):
                cmap[c] = self.unit_start[k] + i * per
        return cmap

    def param(self, op: OpInfo, t: int, axis: int, want_type: str, what: str) -> int:
        """Constant ``t`` (INT8 weights or INT32 bias, channels on ``axis``) laid out once; its id."""
        info = self.graph.tensors[t]
        if not info.is_constant or info.type_name != want_type:
            raise self.fail(op, f"{what} tensor {t} must be a constant {want_type} tensor (is {info.type_name})",
                            "convert the model with int8 weights and int32 biases")
        if t in self.params:
            return self.id(t)
        shape = tuple(info.shape) or (1,)  # a scalar constant (MUL's) is one element of rank 1
        if not 1 <= len(shape) <= 4:
            raise self.fail(op, f"{what} tensor {t} has rank {len(shape)}")
        ch = int(shape[axis])
        per = int(np.prod(shape)) // ch
        scales, zps = self._quantization(op, info, axis, ch, what)
        q = self.graph.constant_data(t)
        cmap = self._channel_map(t, axis, ch, per)
        qtype = "<i1" if want_type == "INT8" else "<i4"
        self.params[t] = {
            "kind": KIND_Q8 if want_type == "INT8" else KIND_Q32,
            "shape": shape, "axis": axis, "channels": ch,
            "q": self.data.add(np.ascontiguousarray(q, dtype=qtype).tobytes(), 16),
            "scales": self.data.add(np.ascontiguousarray(scales, "<f4").tobytes()),
            "zps": self.data.add(np.ascontiguousarray(zps, "<i4").tobytes()),
            "map": self.data.add(cmap.astype("<i4").tobytes()),
        }
        return self.id(t)


def _fix_ops() -> str:
    names = [s.name for s in ops.all_ops() if s.name != "SOFTMAX"]
    return (f"the training engine runs {', '.join(names)} and a final SOFTMAX: "
            "plan a tail (cut) that uses only those")


def _check_tail(g: TfliteGraph, n_units: int, source: str) -> None:
    bad = g.unsupported_ops(s.name for s in ops.all_ops())
    if bad:
        listing = ", ".join(f"op {i} {n}" for i, n in bad)
        raise ModelError(f"the training engine has no kernel for {listing}", fix=_fix_ops(), source=source)
    n = len(g.ops)
    if n == 0:
        raise ModelError("the tail has no ops", fix="cut the plan before the model's last op", source=source)
    if any(op.name == "SOFTMAX" for op in g.ops[:-1]):
        raise ModelError("SOFTMAX is only supported as the tail's last op", fix=_fix_ops(), source=source)
    if len(g.inputs) != 1 or len(g.outputs) != 1 or g.outputs[0] != g.ops[-1].outputs[0]:
        raise ModelError("the tail must have one input and its last op's output as its one output",
                         fix="cut at a single-tensor boundary (TfliteGraph.cut_points())", source=source)
    if n >= NONE16 or n_units >= NONE16:
        raise ModelError("too many ops or units for the training program format", source=source)


def _index_units(b: ProgramBuilder) -> None:
    """Check that every unit addresses the weights or bias of its op, once."""
    g, n = b.graph, len(b.graph.ops)
    for k, u in enumerate(b.units):
        if not 0 <= u.op_index < n:
            raise PlanError(f"trainable unit {k} names op {u.op_index}; the tail has {n} ops", fix=_FIX_PLAN)
        op = g.ops[u.op_index]
        want = g.weight_tensor(op) if u.kind == tfw.KIND_WEIGHTS else g.bias_tensor(op)
        if want is None or want.index != u.tensor_index:
            raise PlanError(f"trainable unit {k} addresses tensor {u.tensor_index}, not the "
                            f"{'weights' if u.kind == tfw.KIND_WEIGHTS else 'bias'} of op {u.op_index} {op.name}",
                            fix=_FIX_PLAN)
        if u.tensor_index in b.unit_of:
            raise PlanError(f"tensor {u.tensor_index} is addressed by two trainable units", fix=_FIX_PLAN)
        b.unit_of[u.tensor_index] = k


def _encode_op(b: ProgramBuilder, op: OpInfo, first_trainable: int) -> tuple[list[Any], int]:
    """One op's record [code, activation, flags, 3 inputs, output, 13 params] and its training MACs
    (forward, plus backward from the first trainable op on)."""
    spec = ops.get(op.name)
    if len(op.outputs) != 1:
        raise b.fail(op, f"has {len(op.outputs)} outputs")
    out_t = op.outputs[0]
    a = op.options.get("activation", "NONE") if spec.fused_activation else "NONE"
    if a not in ACT_CODES:
        raise b.fail(op, f"fused activation {a} is not supported", "use NONE, RELU or RELU6")
    first_input = b.activation(op, op.inputs[0], "input")
    out_id = b.activation(op, out_t, "output")
    rec = spec.encode_program(b, op)
    in3 = [first_input, *(NONE16 if t is None else t for t in rec.inputs)]
    in3 += [NONE16] * (3 - len(in3))
    p = list(rec.params) + [0] * (N_PARAMS - len(rec.params))
    fwd = spec.macs(b.graph, op, b.graph.tensors[out_t].size)
    bwd = 0
    if op.index >= first_trainable:
        if spec.weights is not None:
            # weight gradient of the trainable channels, plus the input gradient past the first op
            w_in = op.inputs[spec.weights.weight_input]
            wt = w_in in b.unit_of
            frac = len(b.units[b.unit_of[w_in]].channels) / b.params[w_in]["channels"] if wt else 0.0
            bwd += int(fwd * frac) + (fwd if op.index > first_trainable else 0)
        else:
            bwd += fwd
    return [spec.code, ACT_CODES[a], 0, in3, out_id, p], fwd + bwd


@dataclass
class _Timeline:
    """Who produces and who reads each activation, and the aliases, over forward + backward:
    the forward of op i runs at time i, its backward at time 2n-1-i."""

    n: int
    first_trainable: int
    producer: dict[int, int]
    consumers: dict[int, list[int]]
    alias: dict[int, int]  # value aliases (an alias op's output -> input)
    has_grad: set[int] = field(default_factory=set)
    g_alias: dict[int, int] = field(default_factory=dict)  # gradient aliases

    def tb(self, i: int) -> int:
        return 2 * self.n - 1 - i

    @staticmethod
    def _root(t: int, alias: dict[int, int]) -> int:
        while t in alias:
            t = alias[t]
        return t

    def root(self, t: int) -> int:
        return self._root(t, self.alias)

    def groot(self, t: int) -> int:
        return self._root(t, self.g_alias)


def _timeline(g: TfliteGraph, first_trainable: int, acts: list[int], output_grad: bool) -> _Timeline:
    """``output_grad``: the loss's gradient enters at the output (MSE), which needs a buffer."""
    producer: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    alias: dict[int, int] = {}
    for op in g.ops:
        for t in op.inputs:
            if t >= 0 and not g.tensors[t].is_constant:
                consumers.setdefault(t, []).append(op.index)
        producer[op.outputs[0]] = op.index
    for op in g.ops:
        if ops.get(op.name).alias:
            alias[op.outputs[0]] = op.inputs[0]
    tl = _Timeline(len(g.ops), first_trainable, producer, consumers, alias)
    tl.has_grad = {t for t in acts if t in producer and producer[t] >= first_trainable
                   and (consumers.get(t) or (output_grad and t == g.outputs[0]))}
    for op in g.ops:
        if ops.get(op.name).alias:
            i, o_ = op.inputs[0], op.outputs[0]
            if i in tl.has_grad and o_ in tl.has_grad and consumers.get(i) == [op.index]:
                tl.g_alias[o_] = i
    return tl


def _grow(life: dict[object, tuple[int, int]], size: dict[object, int], key: object, start: int, end: int,
          nbytes: int) -> None:
    a0, b0 = life.get(key, (start, end))
    life[key] = (min(a0, start), max(b0, end))
    size[key] = max(size.get(key, 0), nbytes)


def _plan_work(b: ProgramBuilder, tl: _Timeline, acts: list[int]) -> tuple[dict[object, int], int, int]:
    """The work area: values ("v"), gradients ("g") and the scratch ("s") placed by lifetime."""
    g = b.graph
    v_life: dict[object, tuple[int, int]] = {}
    v_size: dict[object, int] = {}
    for t in acts:
        start = tl.producer.get(t, 0)
        end = max(tl.consumers.get(t, [start]) + [start])
        readers = [c for c in tl.consumers.get(t, []) if c >= tl.first_trainable]
        if t in tl.producer and tl.producer[t] >= tl.first_trainable:
            readers.append(tl.producer[t])
        if readers:
            end = max(end, max(tl.tb(c) for c in readers))
        if t == g.outputs[0]:
            end = max(end, tl.n - 1)
        _grow(v_life, v_size, ("v", tl.root(t)), start, end, 4 * g.tensors[t].size)
    for t in sorted(tl.has_grad):
        last_reader = max(tl.consumers.get(t, [tl.producer[t]]))  # the output's: the loss, before its producer
        _grow(v_life, v_size, ("g", tl.groot(t)), tl.tb(last_reader), tl.tb(tl.producer[t]), 4 * g.tensors[t].size)
    scratch_floats = max((int(np.prod(pr["shape"])) // pr["channels"] for pr in b.params.values()), default=0)
    if scratch_floats:
        v_life[("s", 0)] = (0, 2 * tl.n - 1)
        v_size[("s", 0)] = 4 * scratch_floats
    offsets, work_bytes = plan_arena(v_size, v_life, ALIGN, tiebreak=str)
    return offsets, work_bytes, scratch_floats


def _zero_flags(g: TfliteGraph, records: list[list[Any]], tl: _Timeline) -> None:
    """Zero-before-backward flags: the last consumer's first slot zeroes an input's gradient."""
    for rec, op in zip(records, g.ops, strict=True):
        spec = ops.get(op.name)
        seen = set()
        n_acts = len(spec.activation_inputs(op.inputs))
        for k in range(3):
            t = op.inputs[k] if k < len(op.inputs) else -1
            if k >= n_acts:
                continue
            if t < 0 or t not in tl.has_grad or t in seen:
                continue
            seen.add(t)
            if spec.alias and op.outputs[0] in tl.g_alias:
                continue
            if max(tl.consumers[t]) == op.index:
                rec[2] |= (FLAG_ZERO_IN0, FLAG_ZERO_IN1, FLAG_ZERO_IN2)[k]


def _tensor_records(b: ProgramBuilder, tl: _Timeline, offsets: dict[object, int]) -> bytes:
    recs = bytearray()
    for t in sorted(b.ids, key=b.ids.__getitem__):
        info = b.graph.tensors[t]
        if t in b.params:
            pr = b.params[t]
            dims = list(pr["shape"]) + [1] * (4 - len(pr["shape"]))
            recs += _TENSOR.pack(pr["kind"], len(pr["shape"]), pr["axis"], 0, *dims, pr["channels"], pr["q"],
                                 pr["scales"], pr["zps"], pr["map"])
        else:
            dims = list(info.shape) + [1] * (4 - len(info.shape))
            goff = offsets[("g", tl.groot(t))] if t in tl.has_grad else NONE32
            recs += _TENSOR.pack(KIND_ACT, len(info.shape), 0, 0, *dims, offsets[("v", tl.root(t))], goff, 0, 0, 0)
    return bytes(recs)


def _unit_records(b: ProgramBuilder) -> bytes:
    recs = bytearray()
    for k, u in enumerate(b.units):
        ch_off = b.data.add(struct.pack(f"<{len(u.channels)}H", *u.channels))
        val_off = b.data.add(np.ascontiguousarray(u.values, "<f4").tobytes())
        recs += _UNIT.pack(u.op_index, b.ids[u.tensor_index], u.kind, u.axis, len(u.channels), u.values_per_channel,
                           b.unit_start[k], ch_off, val_off)
    return bytes(recs)


def _task_fields(g: TfliteGraph, task: Task | None, model_input: tuple[float, int] | None,
                 source: str) -> tuple[int, int, float, int]:
    """The header's loss, target kind, target scale and zero point for ``task`` (None: the
    task the tail's last op implies, regress for a plain output)."""
    from tinyfed.training.tail import check_loss

    last = g.ops[-1].name
    if task is None:
        task = implied_task(last)
    task = Task(task)
    try:
        loss = check_loss(last, loss_of(task))
    except ModelError as exc:
        raise ModelError(f"task {task.value}: {exc.problem}", fix=exc.fix, source=source) from None
    kind = target_kind(task)
    if kind != TARGET_INPUT:
        return LOSS_CODES[loss], kind, 0.0, 0
    if model_input is None:  # the program is the whole model: its input is the model's
        t_in = g.tensors[g.inputs[0]]
        model_input = (float(t_in.scales[0]) if t_in.scales else 1.0,
                       int(t_in.zero_points[0]) if t_in.zero_points else 0)
    scale, zp = float(model_input[0]), int(model_input[1])
    if not (np.isfinite(scale) and scale > 0 and -128 <= zp <= 127):
        raise ModelError(f"task autoencode: the model input's quantization (scale {scale}, zero point {zp}) "
                         "is not int8", fix="convert the model with an int8 input", source=source)
    return LOSS_CODES[loss], kind, scale, zp


def _lay_out(b: ProgramBuilder, first_trainable: int, output_grad: bool) -> tuple[
        list[list[Any]], int, _Timeline, dict[object, int], int, int]:
    """Every op's record and the training MACs, the timeline, and the work area's offsets, bytes and
    scratch row (floats). Which channels the units train does not change the work area: only the
    first trainable op does (the ops from it on keep their inputs and gradients for the backward).
    ``output_grad``: the loss's gradient enters at the output (MSE)."""
    g = b.graph
    b.id(g.inputs[0])
    records, flops = [], 0
    for op in g.ops:
        rec, macs = _encode_op(b, op, first_trainable)
        records.append(rec)
        flops += macs
    acts = [t for t in b.ids if not g.tensors[t].is_constant]
    tl = _timeline(g, first_trainable, acts, output_grad)
    offsets, work_bytes, scratch_floats = _plan_work(b, tl, acts)
    return records, flops, tl, offsets, work_bytes, scratch_floats


@dataclass(frozen=True)
class WorkArea:
    """The float32 work area of one training sample: activation values and gradient buffers placed by
    lifetime over forward + backward, and within it the scratch row (one dequantized weight channel)."""

    work_bytes: int
    scratch_bytes: int
    #: bytes of the program with no unit: header, records and the tail's constants (each unit adds a
    #: record, its channel list and its float32 values: :func:`program_bytes_with`)
    program_bytes: int


def program_bytes_with(base: WorkArea, units: list[tuple[int, int]]) -> int:
    """An upper bound (within the 16-byte data alignment) of the program's size with ``units``
    (channels, values per channel each) on top of ``base.program_bytes``."""
    return base.program_bytes + 16 + sum(UNIT_BYTES + align_up(2 * n, ALIGN) + 4 * n * per for n, per in units)


def work_area(tail_tflite: bytes, first_trainable: int, *, source: str = "tail.tflite") -> WorkArea:
    """The work area ``compile_program`` lays out for this tail when its first trainable op is
    ``first_trainable`` (the planner sizes a candidate w* with it, before any unit exists), with the
    loss the last op implies (mean squared error unless it is SOFTMAX or LOGISTIC).

    Raises :class:`ModelError` for a tail the training engine cannot run.
    """
    from tinyfed.models.tflite_graph import TfliteGraph

    g = TfliteGraph.from_bytes(bytes(tail_tflite), source=source)
    b = ProgramBuilder(g, [], source)
    output_grad = loss_of(implied_task(g.ops[-1].name)) is Loss.MSE
    records, *_, work_bytes, scratch_floats = _lay_out(b, first_trainable, output_grad)
    size = align_up(HEADER_BYTES + TENSOR_BYTES * len(b.ids) + OP_BYTES * len(records), 16) + len(b.data.buf)
    return WorkArea(work_bytes, 4 * scratch_floats, size)


def compile_program(tail_tflite: bytes, trainable_tfw: bytes, *, source: str = "tail.tflite",
                    task: Task | None = None, model_input: tuple[float, int] | None = None) -> bytes:
    """Compile a plan's tail and its trainable units into a TFTR training program.

    ``task`` sets the loss and the targets (None: classify for a final SOFTMAX, multilabel for a
    final LOGISTIC, else regress); ``model_input`` is the (scale, zero point) of the whole
    model's int8 input, the autoencoder's target (None: the tail's own input, right when no
    frozen fragment runs before it). Raises :class:`ModelError` for ops or shapes the engine
    cannot train (unsupported ops, a loss the last op cannot take, broadcasting ADD, batch > 1
    ...) and :class:`PlanError` when the units do not address weights/biases of the tail.
    """
    from tinyfed.models.tflite_graph import TfliteGraph

    g = TfliteGraph.from_bytes(bytes(tail_tflite), source=source)
    units = tfw.decode(bytes(trainable_tfw))
    _check_tail(g, len(units), source)
    loss_code, kind, t_scale, t_zp = _task_fields(g, task, model_input, source)
    n = len(g.ops)
    b = ProgramBuilder(g, units, source)
    first_trainable = min((u.op_index for u in units), default=n)
    _index_units(b)
    records, flops, tl, offsets, work_bytes, scratch_floats = _lay_out(b, first_trainable, loss_code == LOSS_MSE)
    scratch_offset = offsets.get(("s", 0), 0)
    _zero_flags(g, records, tl)

    if len(b.ids) >= NONE16:
        raise ModelError("too many tensors for the training program format", source=source)
    tensor_recs = _tensor_records(b, tl, offsets)
    op_recs = bytearray()
    for code, a, flags, in3, out_id, p in records:
        op_recs += _OP.pack(code, a, flags, 0, *in3, out_id, *[int(v) for v in p])
    unit_recs = _unit_records(b)

    tensors_offset = HEADER_BYTES
    ops_offset = tensors_offset + len(tensor_recs)
    units_offset = ops_offset + len(op_recs)
    data_offset = align_up(units_offset + len(unit_recs), 16)
    body = tensor_recs + bytes(op_recs) + unit_recs
    body += b"\0" * (data_offset - HEADER_BYTES - len(body)) + bytes(b.data.buf)
    total = HEADER_BYTES + len(body)
    t_in = g.tensors[g.inputs[0]]
    in_scale = float(t_in.scales[0]) if t_in.scales else 1.0
    in_zp = int(t_in.zero_points[0]) if t_in.zero_points else 0
    ram = 12 * b.trainable_count + work_bytes
    header = _HEADER.pack(MAGIC, VERSION, HEADER_BYTES, total, ram, work_bytes, b.trainable_count, t_in.size,
                          g.tensors[g.outputs[0]].size, in_scale, in_zp, n, len(b.ids), len(units), first_trainable,
                          tensors_offset, ops_offset, units_offset, data_offset, len(b.data.buf), min(flops, NONE32),
                          b.ids[g.inputs[0]], b.ids[g.outputs[0]], scratch_offset, scratch_floats, loss_code, kind,
                          t_scale, t_zp)
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
    loss_code, kind, t_scale, t_zp = _rest[-4:]
    if magic != MAGIC:
        raise ModelError("not a TFTR training program (bad magic)", fix=fix)
    if version != VERSION:
        raise ModelError(f"training program version {version}, this host reads version {VERSION}", fix=fix)
    if hdr != HEADER_BYTES or total != len(blob):
        raise ModelError(f"training program size {len(blob)} disagrees with its header ({total})", fix=fix)
    if ram != 12 * count + work:
        raise ModelError("training program RAM size disagrees with its work area and w*", fix=fix)
    if kind not in LOSS_TARGETS.get(loss_code, ()):
        raise ModelError(f"training program loss {loss_code} with target kind {kind} is not a valid pair", fix=fix)
    loss = next(k for k, v in LOSS_CODES.items() if v == loss_code)
    return ProgramInfo(ram_bytes=ram, work_bytes=work, trainable_count=count, input_elems=in_elems, classes=classes,
                       flops=flops, op_count=n_ops, unit_count=n_units, first_trainable_op=first,
                       input_scale=float(in_scale), input_zero_point=in_zp, total_size=total, loss=loss,
                       target_kind=kind, target_scale=float(t_scale), target_zero_point=t_zp)


def program_ram_bytes(blob: bytes) -> int:
    """RAM (bytes) that ``tftr_bind`` needs for this program: 3 * 4 * trainable_count + work_bytes."""
    return parse_program(blob).ram_bytes
