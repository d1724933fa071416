"""The FTTE memory model: what each layer stores in flash and what training needs in RAM.

Flash holds the int8 fragments and the firmware. RAM holds the firmware reserve, the int8
inference arena of the frozen head, the link buffers, and for the trainable subset S its
float32 weights, gradients, optimizer state, the float32 activations kept for the backward pass
from the cut on, a gradient ping-pong scratch and the int8 update buffer. See ``docs/planner.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinyfed import ops
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner.config import TrainingConfig

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


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of RAM that on-device training of S needs, line by line."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    scratch: int
    update: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.scratch + self.update

    def as_dict(self) -> dict[str, int]:
        return {
            "float32_weights": self.weights,
            "gradients": self.gradients,
            "optimizer_state": self.optimizer,
            "saved_activations": self.activations,
            "backward_scratch": self.scratch,
            "int8_update_buffer": self.update,
            "total": self.total,
        }


def cut_for(first_trainable: int | None, cut_points: list[int], n_ops: int) -> int:
    """The op index where the frozen head ends: the last clean cut at or before the first trainable op."""
    if first_trainable is None:
        return n_ops
    eligible = [k for k in cut_points if k <= first_trainable]
    return max(eligible) if eligible else 0


def training_memory(facts: list[LayerFacts], sel: Selection, cut: int, cfg: TrainingConfig) -> TrainingMemory:
    """The training state of S when ops[cut:] run in float32 on the board."""
    n_params = sel.params(facts)
    tail = facts[cut:]
    if n_params == 0 or not tail:
        return TrainingMemory(0, 0, 0, 0, 0, 0)
    b = cfg.batch_size
    saved = sum(f.input_elems for f in tail if f.name not in ops.alias_ops()) + tail[-1].output_elems
    widest = max(max(f.input_elems, f.output_elems) for f in tail)
    return TrainingMemory(
        weights=4 * n_params,
        gradients=4 * n_params,
        optimizer=cfg.optimizer_state_bytes * n_params,
        activations=4 * b * saved,
        scratch=2 * 4 * b * widest,
        update=n_params + 4 * sel.unit_tensors(),
    )


def whole_model_memory(facts: list[LayerFacts], cfg: TrainingConfig) -> TrainingMemory:
    """The training state of every layer, no frozen head: the dense baselines' payload on a board
    (plan.json's ``full_training_memory``, what FTTE's subset is compared with)."""
    return training_memory(facts, Selection.everything(facts), 0, cfg)


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
