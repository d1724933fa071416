"""Nested subsets: on a fleet of unequal boards, each board class trains the largest superset of the
common core w* that fits its own budget.

The smallest board (or the core memory cap, :func:`core_budget_bytes`) sets the core, as FTTE's
plan always did; every other board profile grows its own selection from the core with the same
greedy and the same ranking, under its own RAM budget and program store, so the extra units go
where they buy the most importance per byte. A class's first trainable op may move earlier than
the core's, which moves its cut: it gets its own frozen fragment, tail and training program.

The global vector the server keeps is the union of the classes' selections, unit by unit in op
order (a layer's weights, then its bias), a weight unit's channels in ascending order. Each class
carries ``index``: the position in the global vector of each value of its own vector, so an update
from a board of that class lands where it belongs (``Update.index``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed.errors import PlanError
from tinyfed.planner.memory import LayerFacts, LayerSelection, Selection, TrainingMemory

log = logging.getLogger(__name__)

KIND_WEIGHTS, KIND_BIAS = "weights", "bias"


def core_budget_bytes(core_budget: float | None, whole_model_training: int) -> int | None:
    """The core's training-memory cap: a fraction of whole-model training memory (a value up to 1), or
    bytes (a larger value); None: no cap (the smallest board's budget alone sets the core)."""
    if core_budget is None:
        return None
    if not core_budget > 0:
        raise PlanError(f"core budget {core_budget!r} is not positive",
                        fix="give a fraction of whole-model training memory (e.g. 0.1) or bytes (e.g. 70000)")
    if core_budget <= 1.0:
        return int(core_budget * whole_model_training)
    return int(core_budget)


@dataclass(frozen=True)
class GlobalUnit:
    """One unit of the global vector: a layer's weights on some channels, or its bias."""

    op: int
    kind: str
    channels: tuple[int, ...]
    per_channel: int
    offset: int

    @property
    def size(self) -> int:
        return len(self.channels) * self.per_channel


def union(selections: list[Selection]) -> Selection:
    """Every unit any of ``selections`` trains (a layer's channels: the union of theirs)."""
    out = Selection()
    for sel in selections:
        for op, layer in sel.layers.items():
            have = out.layers.get(op, LayerSelection())
            channels = tuple(sorted(set(have.channels) | set(layer.channels)))
            out.layers[op] = LayerSelection(have.bias or layer.bias, channels)
    return out


def global_units(facts: list[LayerFacts], sel: Selection) -> list[GlobalUnit]:
    """The layout of ``sel`` as a flat vector, in the order the plan's ``trainable.tfw`` lists units."""
    units, offset = [], 0
    for op, layer in sorted(sel.layers.items()):
        f = facts[op]
        if layer.channels:
            units.append(GlobalUnit(op, KIND_WEIGHTS, tuple(layer.channels), f.params_per_channel, offset))
            offset += units[-1].size
        if layer.bias and f.bias_params:
            units.append(GlobalUnit(op, KIND_BIAS, tuple(range(f.bias_params)), 1, offset))
            offset += units[-1].size
    return units


def index_in(units: list[GlobalUnit], facts: list[LayerFacts], sel: Selection) -> np.ndarray:
    """Where each value of ``sel``'s own vector sits in the global vector of ``units`` (int64)."""
    by_key = {(u.op, u.kind): u for u in units}
    parts: list[np.ndarray] = []
    for op, layer in sorted(sel.layers.items()):
        f = facts[op]
        if layer.channels:
            g = by_key.get((op, KIND_WEIGHTS))
            if g is None or not set(layer.channels) <= set(g.channels):
                raise PlanError(f"op {op}'s channels are not in the global vector", fix="report this bug")
            rows = np.searchsorted(np.array(g.channels), np.array(sorted(layer.channels)))
            parts.append((g.offset + rows[:, None] * g.per_channel + np.arange(g.per_channel)[None, :]).ravel())
        if layer.bias and f.bias_params:
            g = by_key.get((op, KIND_BIAS))
            if g is None:
                raise PlanError(f"op {op}'s bias is not in the global vector", fix="report this bug")
            parts.append(g.offset + np.arange(g.size))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def is_superset(big: Selection, small: Selection) -> bool:
    """Whether ``big`` trains every unit ``small`` does."""
    for op, layer in small.layers.items():
        have = big.layers.get(op, LayerSelection())
        if (layer.bias and not have.bias) or not set(layer.channels) <= set(have.channels):
            return False
    return True


@dataclass
class SubsetClass:
    """The boards of one profile: what they train (a superset of the core), where it sits in the
    global vector, their cut, memory and files (``frozen``, ``tail``, ``trainable``)."""

    board: str
    count: int
    selection: Selection
    cut: int
    arena: int
    training: TrainingMemory
    program_bytes: int
    index: np.ndarray  # int64, one global position per value of the class's vector
    params: int
    ram_used: int = 0
    problems: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def values(self) -> int:
        return int(self.index.size)

    def as_dict(self, whole_model_training: int) -> dict[str, Any]:
        return {
            "board": self.board, "count": self.count, "values": self.values, "cut_op": self.cut,
            "arena_bytes": self.arena, "training_memory": self.training.as_dict(),
            "training_memory_ratio": self.training.total / whole_model_training if whole_model_training else 0.0,
            "program_bytes": self.program_bytes, "ram_bytes_used": self.ram_used,
            "fits": not self.problems, "problems": list(self.problems),
            "index_ranges": index_ranges(self.index),
            "files": {k: str(p) for k, p in self.files.items()},
        }


def index_ranges(index: np.ndarray) -> list[list[int]]:
    """``index`` as [start, stop) runs (short in plan.json: classes take whole units and channel blocks)."""
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [index.size]])
    return [[int(index[a]), int(index[b - 1]) + 1] for a, b in zip(starts, stops, strict=True)]


@dataclass
class NestedPlan:
    """The global vector (the union of the classes) and every board class's subset of it."""

    core_budget_bytes: int | None
    core_board: str
    union: Selection
    cut: int  # the union's cut: where the global model's float evaluation starts
    units: list[GlobalUnit]
    classes: dict[str, SubsetClass]
    files: dict[str, Path] = field(default_factory=dict)  # the union's frozen, tail and trainable

    @property
    def size(self) -> int:
        return sum(u.size for u in self.units)

    def class_of(self, board: str) -> SubsetClass:
        if board not in self.classes:
            raise PlanError(f"board {board!r} has no class in the nested plan ({', '.join(self.classes)})",
                            fix="plan for the fleet the run uses")
        return self.classes[board]

    def as_dict(self, whole_model_training: int) -> dict[str, Any]:
        return {
            "core_budget_bytes": self.core_budget_bytes, "core_board": self.core_board,
            "global_values": self.size, "global_cut_op": self.cut,
            "global_units": [{"op": u.op, "kind": u.kind, "channels": len(u.channels), "offset": u.offset,
                              "values": u.size} for u in self.units],
            "classes": {name: c.as_dict(whole_model_training) for name, c in self.classes.items()},
            "files": {k: str(p) for k, p in self.files.items()},
        }
