"""FTTE's choice of w*: structured units, greedy by importance per byte under M_min.

A unit is a layer's bias or a layer's weights on a fraction (1/8, 1/4, 1/2, 1) of its output
channels, the most important channels first. The trainable tail grows from the output: a layer's
units become candidates once every later weighted layer is wholly in S (the backward pass runs
through those layers anyway, and a classifier head is never half trained, half frozen). Each
greedy step takes the affordable unit with
the highest importance per byte of RAM it adds, where the bytes are the firmware's: the
parameters' float32 values, start values and gradients, their update scales, and the one-sample
work area it forces the board to keep when it moves the first trainable layer earlier (minus
the arena the frozen head gives back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.importance import LayerImportance
from tinyfed.planner.memory import (
    LayerFacts,
    LayerSelection,
    MemoryLayout,
    Selection,
    TrainingMemory,
    cut_for,
    program_bytes,
    training_memory,
)


@dataclass(frozen=True)
class Step:
    """One greedy choice, kept in the plan so users can see why w* is what it is."""

    op: int
    unit: str  # "bias" or "weights@<fraction>"
    params_added: int
    ram_after: int
    importance: float


@dataclass
class RamCost:
    """RAM of a selection that the budget is checked against: head arena plus training state."""

    cut: int
    arena: int
    training: TrainingMemory
    program: int = 0  # bytes of the training program (0: nothing to train)

    @property
    def total(self) -> int:
        return self.arena + self.training.total


def ram_cost(
    facts: list[LayerFacts],
    sel: Selection,
    cfg: TrainingConfig,
    cut_points: list[int],
    layout: MemoryLayout,
) -> RamCost | None:
    """The arena the firmware fills for S, or None when its training engine cannot run the tail S needs."""
    first = sel.first_op()
    cut = cut_for(first, cut_points, len(facts))
    if first is None or sel.params(facts) == 0:
        return RamCost(cut, layout.front(cut), training_memory(facts, sel, cfg, None))
    work = layout.work(cut, first)
    if work is None:
        return None
    head_out = facts[cut].input_elems if 0 < cut < len(facts) else 0  # the tail's int8 input
    return RamCost(cut, layout.front(cut), training_memory(facts, sel, cfg, work, head_out),
                   program_bytes(facts, sel, work))


def _channels_for(fraction: float, order: np.ndarray) -> tuple[int, ...]:
    count = max(1, math.ceil(fraction * len(order)))
    return tuple(sorted(int(c) for c in order[:count]))


def _next_fraction(cfg: TrainingConfig, order: np.ndarray, layer: LayerSelection,
                   level: int) -> tuple[int, tuple[int, ...], list[int]] | None:
    """The next fraction past ``level`` that adds channels (on a layer of few channels, 1/8 and 1/4
    may both round up to one channel): its level, its channels and the channels it adds."""
    for next_level in range(level + 1, len(cfg.fractions)):
        channels = _channels_for(cfg.fractions[next_level], order)
        added = sorted(set(channels) - set(layer.channels))
        if added:
            return next_level, channels, added
    return None


def _complete(facts: list[LayerFacts], sel: Selection, channels: int, op: int) -> bool:
    """Whether every unit of ``op`` (its bias and all of its ``channels`` output channels) is in S."""
    layer = sel.layers.get(op, LayerSelection())
    return len(layer.channels) == channels and (layer.bias or not facts[op].bias_params)


def _level_of(cfg: TrainingConfig, order: np.ndarray, layer: LayerSelection | None) -> int:
    """The fraction level a start selection's channels stand at (index into ``cfg.fractions``, -1: none)."""
    if layer is None or not layer.channels:
        return -1
    levels = [lv for lv, f in enumerate(cfg.fractions) if len(_channels_for(f, order)) <= len(layer.channels)]
    return max(levels) if levels else -1


def greedy_select(
    facts: list[LayerFacts],
    importance: dict[int, LayerImportance],
    budget_bytes: int,
    cfg: TrainingConfig,
    cut_points: list[int],
    layout: MemoryLayout,
    program_budget: int | None = None,
    *,
    start: Selection | None = None,
    training_budget: int | None = None,
) -> tuple[Selection, list[Step]]:
    """Grow S one unit at a time while the RAM cost stays within ``budget_bytes`` (and the training
    program within ``program_budget``, the smallest program store of the fleet; the training state
    within ``training_budget``, the common core's cap, when given).

    ``start``: grow from this selection (a nested class grows from the common core, so its S is a
    superset of the core's); it comes from the same ranking (its channels a prefix of each order)."""
    sel = start.copy() if start is not None else Selection()
    steps: list[Step] = []
    orders = {k: np.argsort(-imp.channel, kind="stable") for k, imp in importance.items()}
    # index into cfg.fractions, -1 = none
    level: dict[int, int] = {k: _level_of(cfg, orders[k], sel.layers.get(k)) for k in importance}
    current = ram_cost(facts, sel, cfg, cut_points, layout)
    if current is None:  # a start the training engine refuses: nothing to grow from
        return sel, steps
    while True:
        best: tuple[float, Selection, Step, RamCost, int] | None = None
        for op, imp in importance.items():
            if not all(_complete(facts, sel, len(orders[k]), k) for k in importance if k > op):
                continue  # the trainable tail grows from the output: later layers first, whole
            layer = sel.layers.get(op, LayerSelection())
            candidates: list[tuple[str, LayerSelection, float, int]] = []
            if not layer.bias and facts[op].bias_params:
                candidates.append(("bias", LayerSelection(True, layer.channels), imp.bias, level[op]))
            grown = _next_fraction(cfg, orders[op], layer, level[op])
            if grown is not None:
                next_level, channels, added = grown
                gain = float(imp.channel[added].sum())
                candidates.append((f"weights@{cfg.fractions[next_level]:g}", LayerSelection(layer.bias, channels), gain,
                                   next_level))
            for unit, new_layer, gain, new_level in candidates:
                trial = sel.copy()
                trial.layers[op] = new_layer
                cost = ram_cost(facts, trial, cfg, cut_points, layout)
                if cost is None or cost.total > budget_bytes or (program_budget is not None
                                                                  and cost.program > program_budget):
                    continue
                if training_budget is not None and cost.training.total > training_budget:
                    continue
                # the scarcer of the two resources a unit spends: RAM, and the program store's flash
                spent = max(cost.total - current.total, 1) / max(budget_bytes, 1)
                if program_budget:
                    spent = max(spent, (cost.program - current.program) / program_budget)
                score = gain / spent
                if best is None or score > best[0]:
                    added_params = trial.params(facts) - sel.params(facts)
                    best = (score, trial, Step(op, unit, added_params, cost.total, gain), cost, new_level)
        if best is None:
            return sel, steps
        _, sel, step, current, level[best[2].op] = best
        steps.append(step)


def select(
    facts: list[LayerFacts],
    importance: dict[int, LayerImportance],
    budget_bytes: int,
    cfg: TrainingConfig,
    cut_points: list[int],
    layout: MemoryLayout,
    program_budget: int | None = None,
    *,
    start: Selection | None = None,
    training_budget: int | None = None,
) -> tuple[Selection, list[Step]]:
    """w*: the greedy run once per cut, on the units from that cut on, and the run that gathers the
    most importance (ties: the later cut, fewer float32 ops to run on the board).

    One greedy over every unit is myopic: a unit early in the model can win a step and move the
    cut there, paying the tail's work area and its constants in the program once, and leave too
    little for what would have followed. Fixing the cut first makes that price a choice.
    """
    best: tuple[float, int, Selection, list[Step]] | None = None
    first = start.first_op() if start is not None else None
    for cut in sorted(set(cut_points)):
        if first is not None and cut > first:
            continue  # a superset of ``start`` keeps every op ``start`` trains
        allowed = {op: imp for op, imp in importance.items() if op >= cut}
        if not allowed:
            continue
        sel, steps = greedy_select(facts, allowed, budget_bytes, cfg, cut_points, layout, program_budget,
                                   start=start, training_budget=training_budget)
        gained = sum(s.importance for s in steps)
        if best is None or (gained, cut) > (best[0], best[1]):
            best = (gained, cut, sel, steps)
    if best is None:
        return (start.copy() if start is not None else Selection()), []
    return best[2], best[3]
