"""Make a plan: what each board of a fleet stores, runs and trains, and whether it fits.

The plan is the contract every later stage consumes: the frozen int8 head (``frozen.tflite``),
the int8 tail from the cut on (``tail.tflite``, which the board runs in float32 to train), the
float32 initial values of w* (``trainable.tfw``) and ``plan.json``, which records every unit,
every budget line per board, and the fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed import ops
from tinyfed.boards import Board, ResolvedFleet, list_boards
from tinyfed.errors import ModelError, PlanError
from tinyfed.models.tflite_graph import TensorInfo, TfliteGraph
from tinyfed.planner import trainable as tfw
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.importance import Importance, depth_importance, fisher_importance
from tinyfed.planner.memory import (
    NO_TRAINING,
    FirmwareLayout,
    LayerFacts,
    LayerSelection,
    Selection,
    StepMemory,
    TrainingMemory,
    cut_for,
    estimate_arena,
    layer_facts,
    target_bytes,
    whole_model_memory,
)
from tinyfed.planner.nested import NestedPlan, SubsetClass, core_budget_bytes, global_units, index_in, union
from tinyfed.planner.selection import RamCost, Step, ram_cost, select

log = logging.getLogger(__name__)

PLAN_FORMAT_VERSION = 1


@dataclass
class ModelSource:
    """A model to plan: its int8 graph and, when known, the float model and proxy data."""

    name: str
    kind: str  # "zoo", "keras" or "tflite"
    tflite: bytes
    keras_model: Any = None
    proxy_x: np.ndarray | None = None
    proxy_y: np.ndarray | None = None
    fisher: Importance | None = None  # a Fisher ranking measured before (a zoo model's, shipped prebuilt)
    warnings: list[str] = field(default_factory=list)  # the model's quirks TFLM accepts (TfliteGraph.warnings)


def link_buffer_bytes(board: Board) -> int:
    """Receive and transmit frame buffers of the serial link, where the reserve does not hold them.

    A reserve read from the firmware's linker map already contains its static frame buffers;
    an estimated reserve does not, so they are counted on their own line.
    """
    if board.firmware_reserve.source == "linker-map":
        return 0
    return 2 * board.link.max_frame_bytes


def model_ram_budget(board: Board) -> int:
    """RAM left for the model (head arena plus training state) once firmware and link take theirs."""
    return board.ram_bytes - board.reserve_ram_bytes - link_buffer_bytes(board)


def check_supported(graph: TfliteGraph, source: str) -> None:
    """Refuse a graph with an op the firmware has no int8 kernel for."""
    bad = graph.unsupported_ops(ops.firmware_ops())
    if bad:
        listing = ", ".join(f"{name} (op {index})" for index, name in bad)
        raise ModelError(
            f"the tinyfed firmware has no kernel for {listing}",
            fix=f"rebuild the model with supported ops only ({', '.join(sorted(ops.firmware_ops()))}); "
            "e.g. AveragePooling2D of the full size instead of GlobalAveragePooling (MEAN), "
            "Conv2D with (1, k) kernels instead of Conv1D (EXPAND_DIMS/SQUEEZE)",
            source=source,
        )


@dataclass
class BoardFit:
    """One board's budget lines, used bytes and margins, and why it does not fit (empty when it does)."""

    board: Board
    count: int
    ram_lines: dict[str, int]
    flash_lines: dict[str, int]
    head_cache_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ram_used(self) -> int:
        return sum(self.ram_lines.values())

    @property
    def flash_used(self) -> int:
        return sum(self.flash_lines.values())

    @property
    def fits(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "core": self.board.core,
            "fits": self.fits,
            "problems": list(self.problems),
            "ram_bytes_used": self.ram_used,
            "ram_bytes_budget": self.board.ram_bytes,
            "ram_margin_bytes": self.board.ram_bytes - self.ram_used,
            "flash_bytes_used": self.flash_used,
            "flash_bytes_budget": self.board.flash_bytes,
            "flash_margin_bytes": self.board.flash_bytes - self.flash_used,
            "head_cache_samples": self.head_cache_samples,
            "ram_lines": dict(self.ram_lines),
            "flash_lines": dict(self.flash_lines),
        }


@dataclass
class Plan:
    """Everything ``tinyfed plan`` decided and measured."""

    model: str
    fleet: str
    config: TrainingConfig
    facts: list[LayerFacts]
    selection: Selection
    steps: list[Step]
    cut: int
    m_min_bytes: int
    m_min_board: str
    arena: int  # the firmware's: the head's planned int8 arena (one raw sample at cut 0), 8-aligned
    tflm_arena_estimated: int  # what the head would need under TFLite Micro, estimated ...
    tflm_arena_measured: int | None  # ... and measured with the tflite-micro interpreter
    training: TrainingMemory
    program_bytes: int  # the TFTR training program of w* (at most this many bytes)
    full_training: TrainingMemory
    fits_by_board: dict[str, BoardFit]
    files: dict[str, Path] = field(default_factory=dict)
    file_bytes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trainable_mode: str = "auto"
    model_warnings: list[str] = field(default_factory=list)
    #: the core's training-memory cap in bytes (None: the smallest board's budget alone sets w*)
    core_budget_bytes: int | None = None
    #: per board class, a superset of w* (``--nested``); None: every board trains w*
    nested: NestedPlan | None = None

    @property
    def fits(self) -> bool:
        """Every board fits (a plan-level problem, such as an empty w*, is every board's problem)."""
        return bool(self.fits_by_board) and all(f.fits for f in self.fits_by_board.values())

    @property
    def importance_method(self) -> str:
        """The ranking actually used (``config.importance`` says the same)."""
        return self.config.importance

    @property
    def trainable_params(self) -> int:
        return self.selection.params(self.facts)

    @property
    def total_params(self) -> int:
        return sum(f.params for f in self.facts)

    @property
    def step_memory(self) -> StepMemory:
        """One training step of w* on a board: the frozen head's arena and w*'s training state, in the
        line items the whole model's figure has (:meth:`DensePlan.step_memory`)."""
        return StepMemory(self.arena, self.training)

    @property
    def training_ratio(self) -> float:
        return self.training.total / self.full_training.total if self.full_training.total else 0.0

    def units(self) -> list[dict[str, Any]]:
        rows = []
        for op, sel in sorted(self.selection.layers.items()):
            f = self.facts[op]
            if sel.bias:
                rows.append({"op": op, "layer": f.name, "kind": "bias", "params": f.bias_params,
                             "float32_bytes": 4 * f.bias_params})
            if sel.channels:
                n = len(sel.channels) * f.params_per_channel
                rows.append(
                    {
                        "op": op,
                        "layer": f.name,
                        "kind": "weights",
                        "fraction": len(sel.channels) / f.out_channels,
                        "channels": list(sel.channels),
                        "params": n,
                        "float32_bytes": 4 * n,
                    }
                )
        return rows

    def as_dict(self) -> dict[str, Any]:
        trainable_ops = {op for op, s in self.selection.layers.items() if s.bias or s.channels}
        layers = []
        for f in self.facts:
            sel = self.selection.layers.get(f.index)
            layers.append(
                {
                    "op": f.index,
                    "name": f.name,
                    "part": "frozen" if f.index < self.cut else "tail",
                    "params": f.params,
                    "flash_bytes": f.flash_bytes,
                    "activation_in_bytes_int8": f.input_elems,
                    "activation_out_bytes_int8": f.output_elems,
                    "trainable_params": (
                        len(sel.channels) * f.params_per_channel + (f.bias_params if sel.bias else 0) if sel else 0
                    ),
                    # one sample's float32 input (the work area places these by lifetime)
                    "saved_activation_bytes_float32": (
                        4 * f.input_elems
                        if trainable_ops and f.index >= self.cut and f.name not in ops.alias_ops()
                        else 0
                    ),
                }
            )
        doc = {
            "format_version": PLAN_FORMAT_VERSION,
            "model": self.model,
            "fleet": self.fleet,
            "fits": self.fits,
            "problems": self.problems,
            "suggestions": self.suggestions,
            "model_warnings": self.model_warnings,
            "notes": self.notes,
            "m_min_bytes": self.m_min_bytes,
            "m_min_board": self.m_min_board,
            "trainable_mode": self.trainable_mode,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_fraction": self.trainable_params / self.total_params if self.total_params else 0.0,
            "importance": self.importance_method,
            "training_config": self.config.model_dump(mode="json"),
            "cut_op": self.cut,
            "arena_bytes": self.arena,
            "tflm_arena_bytes_estimated": self.tflm_arena_estimated,
            "tflm_arena_bytes_measured": self.tflm_arena_measured,
            "training_memory": self.training.as_dict(),
            "full_training_memory": self.full_training.as_dict(),
            "training_memory_ratio": self.training_ratio,
            "program_bytes": self.program_bytes,
            "boards": {name: fit.as_dict() for name, fit in self.fits_by_board.items()},
            "fragments": [str(self.files[k]) for k in ("frozen", "tail", "trainable") if k in self.files],
            "files": {k: {"path": str(p), "bytes": self.file_bytes.get(k, 0)} for k, p in self.files.items()},
            "units": self.units(),
            "greedy_steps": [s.__dict__ for s in self.steps],
            "layers": layers,
            "core_budget_bytes": self.core_budget_bytes,
        }
        if self.nested is not None:
            doc["nested"] = self.nested.as_dict(self.full_training.total)
        return doc


def _importance(source: ModelSource, graph: TfliteGraph, cfg: TrainingConfig) -> Importance:
    if cfg.importance == "fisher" and source.fisher is not None:
        return source.fisher
    if cfg.importance == "fisher" and source.keras_model is not None and source.proxy_x is not None:
        x = source.proxy_x[: cfg.proxy_samples]
        y = source.proxy_y[: cfg.proxy_samples] if source.proxy_y is not None else None
        return fisher_importance(graph, source.keras_model, x, y)
    if cfg.importance == "fisher":
        log.info("no float model or proxy data for %s: ranking units nearest the output first", source.name)
        return depth_importance(graph, f"the Fisher ranking needs the float model and proxy data; {source.name} "
                                       f"({source.kind}) brings no float model with proxy data")
    return depth_importance(graph)


def _units_of(graph: TfliteGraph, sel: Selection, cut: int, tail: TfliteGraph) -> list[tfw.TrainableUnit]:
    """Dequantized initial values of S, addressed by op and tensor index in the tail fragment."""
    units = []
    for op_index, layer in sorted(sel.layers.items()):
        op = graph.ops[op_index]
        tail_op = tail.ops[op_index - cut]
        if tail_op.name != op.name:
            raise PlanError(f"tail op {op_index - cut} is {tail_op.name}, expected {op.name}", fix="report this bug")
        if layer.channels:
            values, axis = _dequantized(graph, graph.weight_tensor(op), graph.output_channel_axis(op))
            chosen = list(layer.channels)
            tail_weights = _present(tail.weight_tensor(tail_op), "weight", tail_op.index)
            units.append(tfw.TrainableUnit(op_index - cut, tail_weights.index, tfw.KIND_WEIGHTS, axis, tuple(chosen),
                                           values.shape[0], values[chosen]))
        info = graph.bias_tensor(op)
        if layer.bias and info is not None:
            values, _ = _dequantized(graph, info, 0)
            everything = tuple(range(values.shape[0]))
            tail_bias = _present(tail.bias_tensor(tail_op), "bias", tail_op.index)
            units.append(tfw.TrainableUnit(op_index - cut, tail_bias.index, tfw.KIND_BIAS, 0, everything,
                                           values.shape[0], values))
    return units


def _present(info: TensorInfo | None, what: str, op_index: int) -> TensorInfo:
    """``info``, which a selected unit's op must have (the selection only names ops with weights)."""
    if info is None:
        raise PlanError(f"op {op_index} has no {what} tensor to train", fix="report this bug")
    return info


def _dequantized(graph: TfliteGraph, info: TensorInfo | None, axis: int | None) -> tuple[np.ndarray, int]:
    """The float values of a selected unit's constant tensor, channels on ``axis``, and that axis."""
    if info is None or axis is None:
        raise PlanError("a selected unit's op has no constant weights", fix="report this bug")
    data = graph.constant_data(info.index)
    return tfw.dequantize_channels(data, np.array(info.scales), np.array(info.zero_points), axis), axis


def make_plan(
    source: ModelSource,
    fleet: ResolvedFleet,
    cfg: TrainingConfig,
    out_dir: Path | None,
    *,
    measure: bool = True,
    trainable: str = "auto",
    extra_board_dirs: tuple[Path, ...] = (),
    core_budget: float | None = None,
    nested: bool = False,
) -> Plan:
    """Plan ``source`` onto ``fleet``: choose w*, cut fragments, size the firmware's arena, check every board.

    ``measure`` also runs the head under the tflite-micro interpreter to report the arena TFLM would
    need (the firmware's own arena, the RAM line, is computed exactly either way). ``core_budget``
    caps w*'s training memory (a fraction of whole-model training memory up to 1, else bytes);
    ``nested`` gives every other board class the largest superset of w* its own budget holds
    (:mod:`tinyfed.planner.nested`).
    """
    graph = TfliteGraph.from_bytes(source.tflite, source=source.name)
    check_supported(graph, source.name)
    facts = layer_facts(graph)
    if not any(f.trainable for f in facts):
        raise ModelError(f"the model has no {ops.listing(sorted(ops.trainable_ops()))} layer to train",
                         source=source.name)
    cut_points = sorted(set(graph.cut_points()) | {0})
    budgets = {b.name: model_ram_budget(b) for b in fleet.boards}
    m_min_board = min(budgets, key=lambda n: budgets[n])
    m_min = budgets[m_min_board]
    program_store = min(b.program_store_bytes for b in fleet.boards)
    importance = _importance(source, graph, cfg)
    layout = FirmwareLayout(graph)

    full_training = whole_model_memory(facts, cfg, layout)
    cap = core_budget_bytes(core_budget, full_training.total)
    steps: list[Step] = []
    if trainable == "full":
        if nested:
            raise PlanError("nested subsets grow from FTTE's w*", fix="use --trainable auto with --nested")
        selection = Selection.everything(facts)
    elif trainable == "auto":
        selection, steps = select(facts, importance.layers, m_min, cfg, cut_points, layout, program_store,
                                  training_budget=cap)
    else:
        raise PlanError(f"unknown trainable mode {trainable!r}", fix="use 'auto' or 'full'")

    cost = ram_cost(facts, selection, cfg, cut_points, layout)
    plan_problems: list[str] = []
    if cost is None:  # --trainable full on a tail the training engine refuses
        cut = cut_for(selection.first_op(), cut_points, len(facts))
        plan_problems.append(f"the training engine cannot train ops {cut}.. of this model: {layout.refusals.get(cut)}")
        cost = RamCost(cut, layout.front(cut), NO_TRAINING)
    head, tail_bytes = layout.parts(cost.cut)
    plan = Plan(
        model=source.name,
        fleet=fleet.name,
        config=cfg.model_copy(update={"importance": importance.method}),
        facts=facts,
        selection=selection,
        steps=steps,
        cut=cost.cut,
        m_min_bytes=m_min,
        m_min_board=m_min_board,
        arena=cost.arena,
        tflm_arena_estimated=estimate_arena(TfliteGraph.from_bytes(head, source="head")) if head else 0,
        tflm_arena_measured=_tflm_arena(head) if measure and head else None,
        training=cost.training,
        program_bytes=cost.program,
        full_training=full_training,
        fits_by_board={},
        trainable_mode=trainable,
        model_warnings=list(source.warnings),
        core_budget_bytes=cap,
    )
    if importance.note:
        plan.notes.append(f"importance: {importance.method} is used, not {cfg.importance}: {importance.note}")
    if selection.params(facts) == 0:
        plan_problems.append(_empty_selection_problem(facts, importance, cfg, cut_points, layout, m_min, m_min_board,
                                                      program_store))

    flash_model = (len(head) if head else 0) + len(tail_bytes)
    plan.problems.extend(plan_problems)
    for board, count in fleet.entries:
        fit = _board_fit(board, count, plan, flash_model, plan_problems)
        plan.fits_by_board[board.name] = fit
        plan.problems.extend(p for p in fit.problems if p not in plan_problems)
    if nested and selection.params(facts):
        plan.nested = _nest(plan, fleet, importance, cut_points, layout, plan_problems)
        for c in plan.nested.classes.values():
            plan.problems.extend(p for p in c.problems if p not in plan.problems)
    if not plan.fits:
        _suggest(plan, facts, importance, cfg, cut_points, layout, flash_model, extra_board_dirs)

    if out_dir is not None:
        if plan.nested is not None:
            _write_nested(plan.nested, out_dir, graph, layout)
        _write(plan, out_dir, graph, head, tail_bytes)
    return plan


def _nest(plan: Plan, fleet: ResolvedFleet, importance: Importance, cut_points: list[int], layout: FirmwareLayout,
          plan_problems: list[str]) -> NestedPlan:
    """Every board profile's superset of w*: the smallest budget's board (or every board, under a core
    cap, whose budget is the smallest) trains the core; each other grows it under its own budget."""
    facts, cfg = plan.facts, plan.config
    budgets = {b.name: model_ram_budget(b) for b, _ in fleet.entries}
    selections: dict[str, tuple[Selection, Any]] = {}
    for board, _count in fleet.entries:
        if budgets[board.name] <= plan.m_min_bytes:
            sel = plan.selection.copy()
        else:
            sel, _ = select(facts, importance.layers, budgets[board.name], cfg, cut_points, layout,
                            board.program_store_bytes, start=plan.selection)
        cost = ram_cost(facts, sel, cfg, cut_points, layout)
        if cost is None:  # cannot happen for a greedy result; keep the core
            sel = plan.selection.copy()
            cost = ram_cost(facts, sel, cfg, cut_points, layout)
        selections[board.name] = (sel, cost)
    everything = union([s for s, _ in selections.values()])
    units = global_units(facts, everything)
    classes: dict[str, SubsetClass] = {}
    for board, count in fleet.entries:
        sel, cost = selections[board.name]
        head, tail = layout.parts(cost.cut)
        view = dataclasses.replace(plan, selection=sel, cut=cost.cut, arena=cost.arena, training=cost.training,
                                   program_bytes=cost.program, fits_by_board={}, problems=[])
        fit = _board_fit(board, count, view, (len(head) if head else 0) + len(tail), plan_problems)
        classes[board.name] = SubsetClass(board.name, count, sel, cost.cut, cost.arena, cost.training, cost.program,
                                          index_in(units, facts, sel), sel.params(facts), fit.ram_used,
                                          list(fit.problems))
        log.info("nested class %s: %d values (cut %d), training memory %d bytes", board.name,
                 classes[board.name].values, cost.cut, cost.training.total)
    first = everything.first_op()
    cut = min(c.cut for c in classes.values()) if first is not None else plan.cut
    return NestedPlan(plan.core_budget_bytes, plan.m_min_board, everything, cut, units, classes)


def _write_nested(nested: NestedPlan, out_dir: Path, graph: TfliteGraph, layout: FirmwareLayout) -> None:
    """Each class's fragments under ``nested/<board>/`` and the union's (the global model) under ``nested/global/``."""
    parts = [(name, c.selection, c.cut, c.files) for name, c in nested.classes.items()]
    parts.append(("global", nested.union, nested.cut, nested.files))
    for name, sel, cut, files in parts:
        where = out_dir / "nested" / name
        where.mkdir(parents=True, exist_ok=True)
        head, tail = layout.parts(cut)
        blobs = {"tail": ("tail.tflite", tail)}
        if head:
            blobs["frozen"] = ("frozen.tflite", head)
        tail_graph = TfliteGraph.from_bytes(tail, source=f"{name}/tail.tflite")
        blobs["trainable"] = ("trainable.tfw", tfw.encode(_units_of(graph, sel, cut, tail_graph)))
        if name == "global":  # the global vector writes back into the whole int8 model (export)
            blobs["model"] = ("model_int8.tflite", graph.data)
        for key, (file, data) in blobs.items():
            (where / file).write_bytes(data)
            files[key] = where / file



def _tflm_arena(head: bytes) -> int:
    from tinyfed.models.tflm import measure_arena

    return measure_arena(head).bytes


def _empty_selection_problem(facts: list[LayerFacts], importance: Importance, cfg: TrainingConfig,
                             cut_points: list[int], layout: FirmwareLayout, m_min: int, m_min_board: str,
                             program_store: int) -> str:
    """Why w* is empty: the cheapest unit's RAM against M_min, its training program against the
    smallest program store of the fleet, or the training engine's refusal."""
    costs = _single_unit_costs(facts, importance, cfg, cut_points, layout)
    if not costs:
        refusal = next(iter(layout.refusals.values()), "no tail of this model can be trained")
        return f"no unit of this model can be trained on the board: {refusal}"
    in_ram = [c for c in costs if c.total <= m_min]
    if in_ram:  # RAM would do: the program store is what is short
        smallest = min(c.program for c in in_ram)
        return (f"no trainable unit fits the program store of {kib(program_store)} (flash / 16): the smallest "
                f"training program needs {kib(smallest)} (it carries the tail's constants from the cut on); "
                "use a board with more flash, or a model whose last layers are smaller")
    cheapest = min(c.total for c in costs)
    return (f"no trainable unit fits in M_min = {kib(m_min)} ({m_min_board}): the cheapest unit needs "
            f"{kib(cheapest)} of RAM, {kib(cheapest - m_min)} more")


def kib(n: int) -> str:
    """A byte count as the plan's tables print it (KiB, one decimal)."""
    return f"{n / 1024:,.1f} KiB"


def _single_unit_costs(facts: list[LayerFacts], importance: Importance, cfg: TrainingConfig,
                       cut_points: list[int], layout: FirmwareLayout) -> list[RamCost]:
    """The cost of every single-unit subset (a layer's bias, or its first fraction of channels)."""
    costs = []
    for op in importance.layers:
        for bias in (True, False):
            if bias and not facts[op].bias_params:
                continue
            sel = Selection()
            first_fraction = max(1, math.ceil(cfg.fractions[0] * facts[op].out_channels))
            sel.layers[op] = LayerSelection(bias, () if bias else tuple(range(first_fraction)))
            cost = ram_cost(facts, sel, cfg, cut_points, layout)
            if cost is not None:
                costs.append(cost)
    return costs


def _board_fit(board: Board, count: int, plan: Plan, flash_model: int, plan_problems: list[str]) -> BoardFit:
    """The plan's lines on ``board``; its problems are the plan's own and its RAM or flash overruns."""
    ram_lines = {
        "firmware_reserve": board.reserve_ram_bytes,
        "link_buffers": link_buffer_bytes(board),
        "inference_arena": plan.arena,
    }
    for key, value in plan.training.as_dict().items():
        if key != "total":
            ram_lines[key] = value
    flash_lines = {"firmware_reserve": board.reserve_flash_bytes, "model_fragments": flash_model}
    fit = BoardFit(board, count, ram_lines, flash_lines, problems=list(plan_problems))
    fit.head_cache_samples = _head_cache_samples(plan, board, fit.ram_used)
    b = board
    if fit.ram_used > b.ram_bytes:
        worst = max(fit.ram_lines, key=lambda k: fit.ram_lines[k])
        fit.problems.append(
            f"{b.name}: RAM needs {kib(fit.ram_used)} of {kib(b.ram_bytes)}, {kib(fit.ram_used - b.ram_bytes)} over "
            f"(largest line: {worst} {kib(fit.ram_lines[worst])})"
        )
    if plan.program_bytes > b.program_store_bytes:
        fit.problems.append(f"{b.name}: the training program needs {kib(plan.program_bytes)}, its program store "
                            f"holds {kib(b.program_store_bytes)}")
    if fit.flash_used > b.flash_bytes:
        fit.problems.append(
            f"{b.name}: flash needs {kib(fit.flash_used)} of {kib(b.flash_bytes)}, "
            f"{kib(fit.flash_used - b.flash_bytes)} over "
            f"(model fragments {kib(fit.flash_lines['model_fragments'])})"
        )
    return fit


def _head_cache_samples(plan: Plan, board: Board, ram_used: int) -> int:
    """Local samples whose head outputs (and targets) the firmware can cache in the spare arena after
    epoch 1 (``FLAG_HEAD_CACHE`` in firmware/src/train.c): RAM the plan does not need, used if free."""
    if plan.trainable_params == 0 or plan.cut <= 0:
        return 0
    per_sample = target_bytes(plan.facts) + plan.facts[plan.cut].input_elems
    budgeted = plan.training.head_cache // per_sample  # cfg.head_cache_samples, in the plan's lines
    return budgeted + max(board.ram_bytes - ram_used, 0) // per_sample


def _suggest(plan: Plan, facts: list[LayerFacts], importance: Importance, cfg: TrainingConfig, cut_points: list[int],
             layout: FirmwareLayout, flash_model: int, extra_dirs: tuple[Path, ...]) -> None:
    """What would fit: the largest trainable subset on this fleet, and the smallest real board that fits.

    A board is suggested only after the checks a plan for it makes: this plan's lines fit it, or, when
    w* is empty here, its own budget yields a non-empty w* whose lines fit it.
    """
    if plan.trainable_mode != "auto":
        program_store = min(f.board.program_store_bytes for f in plan.fits_by_board.values())
        sel, _ = select(facts, importance.layers, plan.m_min_bytes, cfg, cut_points, layout, program_store)
        n = sel.params(facts)
        if n:
            plan.suggestions.append(
                f"largest trainable subset under M_min = {kib(plan.m_min_bytes)}: {n:,} of {plan.total_params:,} "
                f"parameters ({100 * n / plan.total_params:.1f}%); run with --trainable auto"
            )
    empty = plan.trainable_params == 0
    for board in sorted(list_boards(extra_dirs), key=lambda b: (b.ram_bytes, b.flash_bytes, b.name)):
        if board.emulated:  # a suggestion is a board to buy; emulated budgets (e.g. mps2-an386-large) are not
            continue
        if not empty:
            if _board_fit(board, 1, plan, flash_model, []).fits:
                plan.suggestions.append(f"smallest known real board that fits this plan: {board.name} "
                                        f"({board.ram_bytes // 1024} KiB RAM)")
                return
            continue
        sel, _ = select(facts, importance.layers, model_ram_budget(board), cfg, cut_points, layout,
                               board.program_store_bytes)
        cost = ram_cost(facts, sel, cfg, cut_points, layout)
        if sel.params(facts) == 0 or cost is None:
            continue
        head, tail = layout.parts(cost.cut)
        need_ram = board.reserve_ram_bytes + link_buffer_bytes(board) + cost.total
        need_flash = board.reserve_flash_bytes + (len(head) if head else 0) + len(tail)
        if need_ram <= board.ram_bytes and need_flash <= board.flash_bytes:
            plan.suggestions.append(
                f"smallest known real board on which this model trains a non-empty w*: {board.name} "
                f"({board.ram_bytes // 1024} KiB RAM; {sel.params(facts)} parameters, {need_ram} bytes of RAM)")
            return
    plan.suggestions.append("no known real board fits this plan; shrink the model or train a smaller subset")


def _write(plan: Plan, out_dir: Path, graph: TfliteGraph, head: bytes | None, tail: bytes) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, tuple[str, bytes]] = {}
    if head:
        blobs["frozen"] = ("frozen.tflite", head)
    if tail:
        blobs["tail"] = ("tail.tflite", tail)
        tail_graph = TfliteGraph.from_bytes(tail, source="tail.tflite")
        blobs["trainable"] = ("trainable.tfw", tfw.encode(_units_of(graph, plan.selection, plan.cut, tail_graph)))
    blobs["model"] = ("model_int8.tflite", graph.data)
    for key, (name, data) in blobs.items():
        path = out_dir / name
        path.write_bytes(data)
        plan.files[key] = path
        plan.file_bytes[key] = len(data)
    plan.files["plan"] = out_dir / "plan.json"
    doc = plan.as_dict()
    doc["sha256"] = {k: hashlib.sha256(d).hexdigest() for k, (_, d) in blobs.items()}
    (out_dir / "plan.json").write_text(json.dumps(doc, indent=2) + "\n")
