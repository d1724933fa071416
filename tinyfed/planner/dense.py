"""Fit planning for the dense baselines: what training every layer of a model asks of a board.

FedAvg and FedBuff train the whole int8 model in float32 (the "dense" payload). FTTE's plan
(:func:`tinyfed.planner.plan.make_plan`) chooses w* under the fleet's smallest budget; the dense
plan has nothing to choose, only a need to check before anything is booted: the RAM of the
whole-model training program's state and the program's size, against each board's fragment RAM
budget and program store. It also carries the planner's memory model of the same state (plan.json's
``full_training_memory``), the figure a study compares FTTE's subset with.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tinyfed.boards import Board
from tinyfed.errors import PlanError
from tinyfed.models.tflite_graph import TfliteGraph, read_model_bytes
from tinyfed.planner import trainable as tfw
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.memory import (
    FirmwareLayout,
    StepMemory,
    TrainingMemory,
    firmware_arena_bytes,
    layer_facts,
    whole_model_memory,
)
from tinyfed.training.task import Task

log = logging.getLogger(__name__)

#: What a refusal suggests first: the strategy that trains only the plan's subset.
_WAY_OUT = ("run --strategy ftte (it trains the plan's subset) or a baseline on that subset (e.g. --strategy "
            "fedavg@subset), use a smaller model, or boards with more RAM")


@functools.lru_cache(maxsize=4)
def training_program(model: bytes, trainable: bytes, task: Task | None = None) -> bytes:
    """The TFTR program training ``trainable``'s units of ``model`` for ``task`` (None: the one the
    last op implies), compiled once per set of inputs: ``tinyfed run --emulate`` sizes the
    whole-model program before booting (:func:`plan_dense_model`) and ``prepare_run`` then sends
    that program, compiled for the run's task."""
    from tinyfed.firmware_bridge.compile.train_blob import compile_program

    if task is None:
        return compile_program(model, trainable)  # the program's own default: the task the last op implies
    return compile_program(model, trainable, task=task)


def program_ram_need(program: bytes, rows: int) -> int:
    """RAM a board needs to train every unit of ``program`` (``rows`` output channels in all), with no
    fragment: the raw sample buffer, the TFTR state and the update scales, as ``train.c`` places them."""
    from tinyfed.firmware_bridge.compile.train_blob import parse_program

    info = parse_program(program)
    return firmware_arena_bytes(info.input_elems, info.ram_bytes, rows)


@dataclass(frozen=True, eq=False)
class DensePlan:
    """Every layer of a model as the trained vector: its units, program, and what a board needs for it."""

    model: str
    units: tuple[tfw.TrainableUnit, ...]  # every weight and bias, all channels, at the model's values
    program: bytes  # the whole-model TFTR program of ``units``
    ram_bytes: int  # RAM of the program's training state on a board
    training: TrainingMemory  # the planner's memory model of the same state
    front: int = 0  # the arena's front: one raw int8 sample (nothing is frozen), 8-aligned

    @property
    def step_memory(self) -> StepMemory:
        """One training step's RAM in the line items FTTE's plan reports (:meth:`Plan.step_memory`)."""
        return StepMemory(self.front, self.training)

    @property
    def program_bytes(self) -> int:
        return len(self.program)

    def fits(self, board: Board) -> bool:
        """Whether ``board`` holds the whole model's training state and its training program."""
        return self.ram_bytes <= board.fragment_ram_budget_bytes and self.program_bytes <= board.program_store_bytes

    def misfit(self, board: Board) -> PlanError:
        """The refusal for a ``board`` that does not hold the state, with the numbers and the way out."""
        base = board.emulator.baseline_profile if board.emulator is not None else None
        fix = _WAY_OUT
        if base is not None:
            fix += (f"; on emulated boards `tinyfed run --emulate N --board {board.name}` boots its emulator-only "
                    f"baseline profile {base} for the baselines by itself")
        return PlanError(
            f"{self.model}: training every layer (the dense baselines) needs {self.ram_bytes:,} bytes of RAM and a "
            f"{self.program_bytes:,}-byte training program; {board.name} offers {board.fragment_ram_budget_bytes:,} "
            f"bytes of RAM and a {board.program_store_bytes:,}-byte program store",
            fix=fix, source=board.name)

    def check_fits(self, boards: Iterable[Board]) -> None:
        """Refuse up front (the first misfit, by name) when a board of the run cannot hold the state."""
        for board in sorted(boards, key=lambda b: b.name):
            if not self.fits(board):
                raise self.misfit(board)

    def emulated_board(self, board: Board, boards_dirs: tuple[Path, ...] = ()) -> Board:
        """The profile an emulated run boots: ``board``, or its ``[emulator].baseline_profile`` when the
        state does not fit ``board``; refuses (with the numbers) when neither fits."""
        from tinyfed.boards import get_board

        if self.fits(board):
            return board
        base_name = board.emulator.baseline_profile if board.emulator is not None else None
        if base_name is None:
            raise self.misfit(board)
        base = get_board(base_name, boards_dirs)
        if not self.fits(base):
            raise self.misfit(base)
        log.info("%s: training every layer needs %d bytes of RAM and a %d-byte program; %s offers %d and %d, so the "
                 "emulated boards use its baseline profile %s", self.model, self.ram_bytes, self.program_bytes,
                 board.name, board.fragment_ram_budget_bytes, board.program_store_bytes, base.name)
        return base


def plan_dense(model_bytes: bytes, source: str, cfg: TrainingConfig | None = None) -> DensePlan:
    """The dense plan of an int8 model: every layer trained, sized from the model alone.

    The start values do not change the sizes, so a run that starts from a fresh head needs the
    same (its program, with other values, is compiled by ``prepare_run``).
    """
    graph = TfliteGraph.from_bytes(model_bytes, source=source)
    units = tuple(tfw.whole_model_units(graph))
    program = training_program(model_bytes, tfw.encode(list(units)))
    ram = program_ram_need(program, sum(len(u.channels) for u in units))
    layout = FirmwareLayout(graph)
    memory = whole_model_memory(layer_facts(graph), cfg or TrainingConfig(), layout)
    return DensePlan(source, units, program, ram, memory, layout.front(0))


def plan_dense_model(model: str, cfg: TrainingConfig | None = None) -> DensePlan:
    """:func:`plan_dense` of a model named as a run config names it (a zoo name or an int8 ``.tflite`` path)."""
    from tinyfed.models.zoo import ZOO_NAMES, get_zoo_model

    model_bytes = get_zoo_model(model).int8_tflite() if model in ZOO_NAMES else read_model_bytes(model)
    return plan_dense(model_bytes, model, cfg)
