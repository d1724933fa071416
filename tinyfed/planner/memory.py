"""The FTTE memory model: what each layer stores in flash and what training needs in RAM.

Flash holds the int8 fragments and the firmware. RAM holds the firmware reserve, the link
buffers, and the firmware's arena as ``firmware/src/train.c`` fills it: the frozen head's
planned int8 arena, then for the trainable subset S its float32 values, start values and
accumulated gradient, the work area of ONE sample (activations and gradient buffers from the
cut on, placed by lifetime, and a dequantized weight row) and one update scale per trained
channel. The batch size costs no RAM: the firmware accumulates gradients sample by sample.
See ``docs/planner.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tinyfed import ops
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner.config import TrainingConfig
from tinyfed.training.task import Task, implied_task

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.train_blob import WorkArea

#: TFLite Micro aligns every arena buffer to this many bytes.
ARENA_ALIGNMENT = 16


def _align(n: int, to: int = ARENA_ALIGNMENT) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class LayerFacts:
    """Static facts about one op of the int8 graph."""

    index: int
    name: str
    weight_params: int
    bias_params: int
    out_channels: int
    flash_bytes: int
    input_elems: int
    output_elems: int

    @property
    def trainable(self) -> bool:
        return self.name in ops.trainable_ops() and self.weight_params > 0

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params

    @property
    def params_per_channel(self) -> int:
        return self.weight_params // max(self.out_channels, 1)


def layer_facts(graph: TfliteGraph) -> list[LayerFacts]:
    """One row per op: parameters, flash bytes and activation sizes."""
    rows = []
    for op in graph.ops:
        weights = bias = channels = flash = 0
        for t in op.inputs:
            if t < 0:
                continue
            info = graph.tensors[t]
            if info.is_constant:
                flash += info.nbytes
        if op.name in ops.trainable_ops():
            w = graph.weight_tensor(op)
            if w is not None:
                weights = w.size
                axis = graph.output_channel_axis(op)
                assert axis is not None  # an op with a weight tensor has an output-channel axis
                channels = int(w.shape[axis])
                b = graph.bias_tensor(op)
                bias = b.size if b is not None else 0
        inputs = [t for t in op.inputs if t >= 0 and not graph.tensors[t].is_constant]
        rows.append(
            LayerFacts(
                index=op.index,
                name=op.name,
                weight_params=weights,
                bias_params=bias,
                out_channels=channels,
                flash_bytes=flash,
                input_elems=sum(int(np.prod(graph.tensors[t].shape)) for t in inputs),
                output_elems=sum(int(np.prod(graph.tensors[t].shape)) for t in op.outputs),
            )
        )
    return rows


@dataclass
class LayerSelection:
    """The units of one layer in S: its bias, and its weights on some output channels."""

    bias: bool = False
    channels: tuple[int, ...] = ()


@dataclass
class Selection:
    """A trainable subset S: op index -> which units of that op are trained."""

    layers: dict[int, LayerSelection] = field(default_factory=dict)

    def copy(self) -> Selection:
        return Selection({k: LayerSelection(v.bias, v.channels) for k, v in self.layers.items()})

    def first_op(self) -> int | None:
        active = [k for k, v in self.layers.items() if v.bias or v.channels]
        return min(active) if active else None

    def params(self, facts: list[LayerFacts]) -> int:
        total = 0
        for k, sel in self.layers.items():
            total += len(sel.channels) * facts[k].params_per_channel
            total += facts[k].bias_params if sel.bias else 0
        return total

    def unit_tensors(self) -> int:
        return sum(int(v.bias) + int(bool(v.channels)) for v in self.layers.values())

    @classmethod
    def everything(cls, facts: list[LayerFacts]) -> Selection:
        return cls({f.index: LayerSelection(True, tuple(range(f.out_channels))) for f in facts if f.trainable})


#: The firmware places its arena regions on 8-byte boundaries (``align8`` in firmware/src/train.c).
FIRMWARE_ALIGNMENT = 8


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of RAM that on-device training of S needs, line by line, as the firmware lays them out.

    ``tftr_bind`` places w* three times (current values, values as set at the model version, the
    accumulated gradient) and then ONE sample's work area: gradients are accumulated sample by
    sample, so the batch size costs no activation RAM. ``train.c`` rounds the state to 8 bytes and
    keeps one float32 update scale per trained channel above it.
    """

    weights: int
    start: int
    gradients: int
    optimizer: int
    activations: int
    scratch: int
    update_scales: int
    padding: int
    head_cache: int = 0  # the head's outputs and targets of cfg.head_cache_samples samples, above the target
    target: int = 0  # one sample's target above the update scales (4-aligned), read by the loss

    @property
    def total(self) -> int:
        return (self.weights + self.start + self.gradients + self.optimizer + self.activations + self.scratch
                + self.update_scales + self.padding + self.target + self.head_cache)

    def as_dict(self) -> dict[str, int]:
        return {
            "float32_weights": self.weights,
            "start_weights": self.start,
            "gradients": self.gradients,
            "optimizer_state": self.optimizer,
            "saved_activations": self.activations,
            "backward_scratch": self.scratch,
            "update_scales": self.update_scales,
            "alignment_padding": self.padding,
            "target": self.target,
            "head_cache": self.head_cache,
            "total": self.total,
        }


NO_TRAINING = TrainingMemory(0, 0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class StepMemory:
    """RAM of one training step on a board, as ``bind_state`` in firmware/src/train.c lays the arena out:
    its front (the frozen head's planned int8 arena; with nothing frozen, the raw int8 sample the
    tail reads), then the training state (:class:`TrainingMemory`: w* three times, ONE sample's work
    area, update scales, the target, a budgeted head cache).

    The same line items for every payload, so the ratio of two payloads' figures compares like with
    like: FTTE's subset counts its frozen head's arena, the whole-model baselines their raw sample,
    and neither counts a batch of activations (the firmware accumulates gradients sample by sample).
    What a board adds around it (firmware reserve, link buffers) is the same for both and left out.
    """

    front: int
    training: TrainingMemory

    @property
    def total(self) -> int:
        return self.front + self.training.total

    def as_dict(self) -> dict[str, int]:
        """The line items (``arena_front`` then :meth:`TrainingMemory.as_dict`'s), ``total`` last."""
        lines = {"arena_front": self.front}
        lines.update((k, v) for k, v in self.training.as_dict().items() if k != "total")
        lines["total"] = self.total
        return lines


def memory_ratio(part: StepMemory, whole: StepMemory) -> float:
    """``part.total / whole.total``: two training steps' RAM, counted in the same line items."""
    return part.total / whole.total if whole.total else 0.0


def cut_for(first_trainable: int | None, cut_points: list[int], n_ops: int) -> int:
    """The op index where the frozen head ends: the last clean cut at or before the first trainable op."""
    if first_trainable is None:
        return n_ops
    eligible = [k for k in cut_points if k <= first_trainable]
    return max(eligible) if eligible else 0


def trained_rows(facts: list[LayerFacts], sel: Selection) -> int:
    """Channels of every unit of S (a bias unit has all of its layer's): one update scale each."""
    return sum(len(v.channels) + (facts[k].bias_params if v.bias else 0) for k, v in sel.layers.items())


def target_bytes(facts: list[LayerFacts]) -> int:
    """One sample's target as the firmware keeps it (``tftr_target_bytes``) for the task the model's
    last op implies: a class byte after SOFTMAX, a byte per label after LOGISTIC, else the larger of a
    regression target (float32 per output) and an autoencoder's (the int8 model input)."""
    from tinyfed.firmware_bridge.compile import local_data

    last = facts[-1]
    task = implied_task(last.name)
    size = local_data.target_bytes(local_data.target_kind(task), last.output_elems)
    return max(size, facts[0].input_elems) if task is Task.REGRESS else size  # or an autoencoder's input


def training_memory(
    facts: list[LayerFacts], sel: Selection, cfg: TrainingConfig, work: WorkArea | None, head_out: int = 0
) -> TrainingMemory:
    """The training state of S with the tail's one-sample ``work`` area (``train_blob.work_area`` of the
    tail from the cut, for S's first trainable op), and room for the firmware's head cache of
    ``cfg.head_cache_samples`` samples when a frozen head hands ``head_out`` int8 bytes to the tail."""
    n_params = sel.params(facts)
    if n_params == 0 or work is None:
        return NO_TRAINING
    program = 12 * n_params + work.work_bytes  # tftr_ram_bytes
    return TrainingMemory(
        weights=4 * n_params,
        start=4 * n_params,
        gradients=4 * n_params,
        optimizer=cfg.optimizer_state_bytes * n_params,
        activations=work.work_bytes - work.scratch_bytes,
        scratch=work.scratch_bytes,
        update_scales=4 * trained_rows(facts, sel),
        padding=_align(program, FIRMWARE_ALIGNMENT) - program,
        target=_align(target_bytes(facts), 4),
        head_cache=cfg.head_cache_samples * (target_bytes(facts) + head_out) if head_out else 0,
    )


def program_bytes(facts: list[LayerFacts], sel: Selection, work: WorkArea) -> int:
    """Bytes of S's TFTR training program (the board's program store must hold it)."""
    from tinyfed.firmware_bridge.compile.train_blob import program_bytes_with

    units = []
    for k, v in sel.layers.items():
        if v.channels:
            units.append((len(v.channels), facts[k].params_per_channel))
        if v.bias and facts[k].bias_params:
            units.append((facts[k].bias_params, 1))
    return program_bytes_with(work, units)


class MemoryLayout(Protocol):
    """Where the firmware's arena goes for a model cut at ``cut``: what the selection sizes against."""

    def front(self, cut: int) -> int:
        """Bytes at the arena's start: the head's planned int8 arena (or one raw sample at cut 0), 8-aligned."""
        ...

    def work(self, cut: int, first_op: int) -> WorkArea | None:
        """The tail's one-sample work area when ``first_op`` is the first trainable op; None when the
        training engine cannot run the tail from ``cut``."""
        ...


class FirmwareLayout:
    """The tinyfed firmware's arena for one int8 model, from the compilers that make what a board receives.

    The head's arena is the TFMB blob's planned arena (``compile_blob``), the tail's work area the TFTR
    program's (``train_blob.work_area``): the same numbers ``tfmb_open`` and ``tftr_bind`` use, computed
    once per cut and first trainable op.
    """

    def __init__(self, graph: TfliteGraph) -> None:
        self.graph = graph
        self._fronts: dict[int, int] = {}
        self._works: dict[tuple[int, int], WorkArea | None] = {}
        self._parts: dict[int, tuple[bytes | None, bytes]] = {}
        #: why the training engine cannot run a tail, by cut (a refusal to name when nothing fits)
        self.refusals: dict[int, str] = {}

    def parts(self, cut: int) -> tuple[bytes | None, bytes]:
        """The int8 head ``ops[:cut]`` (None at cut 0) and tail ``ops[cut:]`` (empty when the cut is the end)."""
        if cut not in self._parts:
            n = len(self.graph.ops)
            if cut <= 0:
                self._parts[cut] = (None, self.graph.data)
            elif cut >= n:
                self._parts[cut] = (self.graph.data, b"")
            else:
                self._parts[cut] = self.graph.split(cut)
        return self._parts[cut]

    def front(self, cut: int) -> int:
        if cut not in self._fronts:
            head, _ = self.parts(cut)
            if head is None:
                nbytes = sum(self.graph.tensors[t].nbytes for t in self.graph.inputs)
            else:
                from tinyfed.firmware_bridge.compile.blob import compile_blob, parse_blob

                nbytes = parse_blob(compile_blob(head, source=f"head[:{cut}]")).arena_bytes
            self._fronts[cut] = _align(nbytes, FIRMWARE_ALIGNMENT)
        return self._fronts[cut]

    def work(self, cut: int, first_op: int) -> WorkArea | None:
        key = (cut, first_op)
        if key not in self._works:
            from tinyfed.errors import ModelError
            from tinyfed.firmware_bridge.compile.train_blob import work_area

            _, tail = self.parts(cut)
            try:
                self._works[key] = work_area(tail, first_op - cut, source=f"tail[{cut}:]") if tail else None
            except ModelError as e:
                self.refusals[cut] = str(e)
                self._works[key] = None
        return self._works[key]


def whole_model_memory(facts: list[LayerFacts], cfg: TrainingConfig, layout: MemoryLayout) -> TrainingMemory:
    """The training state of every layer, no frozen head: the dense baselines' payload on a board
    (plan.json's ``full_training_memory``, what FTTE's subset is compared with)."""
    sel = Selection.everything(facts)
    first = sel.first_op()
    return training_memory(facts, sel, cfg, layout.work(0, first) if first is not None else None)


def firmware_arena_bytes(front: int, program_ram: int, rows: int) -> int:
    """The arena a bound training program occupies (``bind_state`` in firmware/src/train.c): the fragment
    arena or raw sample, then the TFTR state (``tftr_ram_bytes``), each 8-aligned, then one update scale
    per trained channel."""
    return _align(front, FIRMWARE_ALIGNMENT) + _align(program_ram, FIRMWARE_ALIGNMENT) + 4 * rows


@dataclass(frozen=True)
class ArenaModel:
    """Estimated TFLite Micro arena of an int8 fragment: planned activations plus bookkeeping.

    Constants are fitted to ``print_allocations()`` of the 64-bit host build of TFLM that the
    ``tflite-micro`` package runs (the measured reference): one ``TfLiteEvalTensor`` per tensor,
    a node and registration per op, persistent ``TfLiteTensor`` and quantization structs for
    the graph input and output, interpreter objects, and each kernel's op data (per-channel
    multipliers and shifts for convolutions and fully connected layers). A 32-bit MCU needs less.
    """

    fixed: int = 700
    per_tensor: int = 24
    per_op: int = 96
    #: (op, base bytes, bytes per output channel): each op module's ``tflm_op_data``
    op_data: tuple[tuple[str, int, int], ...] = tuple((s.name, *s.tflm_op_data) for s in ops.all_ops())

    def op_bytes(self, name: str, out_channels: int) -> int:
        for op, base, per_channel in self.op_data:
            if op == name:
                return base + per_channel * out_channels
        return 64


HOST_ARENA = ArenaModel()


def estimate_arena(fragment: TfliteGraph, model: ArenaModel = HOST_ARENA) -> int:
    """Estimated arena bytes for running ``fragment`` (a whole int8 graph) under TFLite Micro.

    Activations are placed as TFLM's greedy planner does: largest first, each at the lowest
    16-byte-aligned offset that does not overlap a buffer alive at the same time.
    """
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first op, last op
    peak = 0
    lifetimes = fragment.tensor_lifetimes()
    for t, (first, last) in sorted(lifetimes.items(), key=lambda kv: -fragment.tensors[kv[0]].nbytes):
        size = _align(fragment.tensors[t].nbytes)
        offset = 0
        for other_offset, other_size, other_first, other_last in sorted(placed):
            alive_together = not (last < other_first or first > other_last)
            if alive_together and offset + size > other_offset and offset < other_offset + other_size:
                offset = _align(other_offset + other_size)
        placed.append((offset, size, first, last))
        peak = max(peak, offset + size)
    op_data = 0
    for op in fragment.ops:
        w = fragment.weight_tensor(op) if op.name in ops.trainable_ops() else None
        axis = fragment.output_channel_axis(op)
        channels = int(w.shape[axis]) if w is not None and axis is not None else 0
        op_data += model.op_bytes(op.name, channels)
    bookkeeping = model.fixed + model.per_tensor * len(fragment.tensors) + model.per_op * len(fragment.ops)
    return peak + bookkeeping + op_data
