"""Speed per op on a board: what ``tinyfed profile`` measures (docs/kernels.md).

The model's frozen fragment (the plan's cut for the board, or the whole int8 model) is compiled,
loaded and run once per kernel path with the firmware's PROFILE command: this core's optimised
kernels ("fast") and the plain-C reference kernels, on the same image and the same input, so
the two columns differ only by the kernels (and the outputs must be equal: both are bit-exact).
Where the numbers come from:

- an emulated board (QEMU under ``-icount shift=N``): one instruction advances virtual time by
  2**N ns and SysTick counts virtual cycles at the board's clock, so ``instructions = cycles *
  1e9 / clock_hz / 2**N`` exactly (QEMU's instruction count, not a real core's timing);
- a real board (``url``): its DWT cycle counter (SysTick where it has none): cycles;
- the ``sim://`` twin: no counter at all; it answers with each op's MAC count, reported as an
  estimate (``measure = "estimate"``) and never as instructions.

``with_train`` also loads the plan's training program and a few random local samples and runs
one SGD step (TRAIN, one batch), whose cycles the firmware splits into the frozen head and the
rest (the float tail's forward, backward and the update).

Library code: it logs, the CLI prints.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed.boards.schema import Board
from tinyfed.errors import ModelError, TinyfedError

log = logging.getLogger(__name__)

#: As bench/speed.py and bench/field_models.py: one instruction = 2**4 ns of virtual time.
DEFAULT_ICOUNT_SHIFT = 4
PATHS = ("fast", "reference")
#: Samples (and the batch) of the one training step ``with_train`` runs.
TRAIN_SAMPLES = 16


@dataclass
class Fragment:
    """The int8 model a profile runs: a plan's frozen head or a whole model."""

    model: str
    kind: str  # "plan-cut" or "whole"
    tflite: bytes
    cut_op: int | None  # the plan's cut (ops before it are frozen); None for a whole model
    op_names: list[str]
    op_macs: list[int]
    #: the plan's training files (tail.tflite, trainable.tfw) for ``with_train``
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(self.op_macs)


def op_macs(tflite: bytes) -> tuple[list[str], list[int]]:
    """Each op's name and multiply-accumulates for one sample (``OpSpec.macs``, as the simulator counts)."""
    from tinyfed import ops
    from tinyfed.models.tflite_graph import TfliteGraph

    graph = TfliteGraph.from_bytes(tflite)
    names, macs = [], []
    for op in graph.ops:
        spec = ops.find(op.name)
        out = int(np.prod(graph.tensors[op.outputs[0]].shape[1:]))
        names.append(op.name)
        macs.append(int(spec.macs(graph, op, out)) if spec is not None else 0)
    return names, macs


def load_fragment(model: str, board: Board, *, whole: bool = False, with_train: bool = False,
                  representative: Path | None = None, boards_dirs: tuple[Path, ...] = ()) -> Fragment:
    """The fragment ``board`` runs for ``model`` (a zoo name, .keras or int8 .tflite): the frozen head
    of its plan for that board, or with ``whole`` the whole int8 model."""
    from tinyfed.boards import single_board_fleet
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.planner.config import TrainingConfig
    from tinyfed.planner.plan import make_plan
    from tinyfed.planner.sources import load_model_source

    cfg = TrainingConfig()
    source = load_model_source(model, representative, cfg)
    if whole and not with_train:
        names, macs = op_macs(source.tflite)
        return Fragment(source.name, "whole", source.tflite, None, names, macs)
    with tempfile.TemporaryDirectory(prefix="tinyfed-profile-") as tmp:
        plan = make_plan(source, single_board_fleet(board), cfg, Path(tmp), measure=False,
                         extra_board_dirs=boards_dirs)
        files: dict[str, bytes] = {k: plan.files[k].read_bytes() for k in ("frozen", "tail", "trainable")
                                   if k in plan.files}
    if whole:  # --whole --train: the whole model runs, the plan's program trains after its own head
        names, macs = op_macs(source.tflite)
        return Fragment(source.name, "whole", source.tflite, None, names, macs, files)
    if "frozen" not in files:
        raise ModelError(f"the plan of {source.name} for {board.name} freezes nothing (it trains from op 0)",
                         fix="profile the whole int8 model with --whole", source=source.name)
    head = files["frozen"]
    TfliteGraph.from_bytes(head)  # a clear error if the plan wrote something unreadable
    names, macs = op_macs(head)
    return Fragment(source.name, "plan-cut", head, plan.cut, names, macs, files)


@dataclass
class PathResult:
    """One kernel path's run: the board's figures and each op's."""

    cycles: int
    op_cycles: list[int]
    fast_kernel: list[bool]
    output: bytes


@dataclass
class ProfileReport:
    """Everything ``tinyfed profile`` shows; :meth:`as_dict` is its JSON."""

    fragment: Fragment
    board: str
    url: str
    kernel_path: str
    measure: str  # "instructions" (emulated), "cycles" (a real board), "estimate" (sim://)
    clock_hz: int
    icount_shift: int | None
    paths: dict[str, PathResult]
    train: dict[str, dict[str, Any]] = field(default_factory=dict)

    def scale(self) -> float:
        """Board cycles -> the reported unit (instructions under icount; 1 otherwise)."""
        if self.measure == "instructions" and self.clock_hz and self.icount_shift is not None:
            return 1e9 / self.clock_hz / 2 ** self.icount_shift
        return 1.0

    def value(self, cycles: int) -> float:
        return cycles * self.scale()

    @property
    def outputs_equal(self) -> bool | None:
        outs = [r.output for r in self.paths.values()]
        return None if len(outs) < 2 else all(o == outs[0] for o in outs)

    @property
    def main_path(self) -> str:
        return "fast" if "fast" in self.paths else next(iter(self.paths))

    def int8_macs_per_s(self, path: str = "fast") -> float | None:
        """The fragment's int8 MAC rate on this board's clock (None for an estimate)."""
        r = self.paths.get(path)
        if r is None or self.measure == "estimate" or not self.clock_hz or r.cycles <= 0:
            return None
        return self.fragment.macs * self.clock_hz / r.cycles

    def _figures(self, r: PathResult) -> dict[str, Any]:
        unit = self.measure
        macs = self.fragment.macs
        total = self.value(r.cycles)
        ops_total = self.value(sum(r.op_cycles))
        return {
            "cycles": r.cycles,
            unit: round(total, 3),
            f"op_{unit}": round(ops_total, 3),
            f"overhead_{unit}": round(total - ops_total, 3),
            f"{unit}_per_mac": round(total / macs, 4) if macs else None,
            "fast_ops": sum(r.fast_kernel),
        }

    def as_dict(self) -> dict[str, Any]:
        unit, frag, main = self.measure, self.fragment, self.main_path
        doc: dict[str, Any] = {
            "model": frag.model,
            "board": self.board,
            "url": self.url,
            "fragment": {"kind": frag.kind, "cut_op": frag.cut_op, "ops": len(frag.op_names)},
            "kernel_path": self.kernel_path,
            "measure": unit,
            "estimated": unit == "estimate",
            "clock_hz": self.clock_hz,
            "icount_shift": self.icount_shift,
            "macs": frag.macs,
            "main_path": main,
            "paths": {name: self._figures(r) for name, r in self.paths.items()},
            "outputs_equal": self.outputs_equal,
        }
        figures = doc["paths"][main]
        doc[unit] = figures[unit]
        doc["instructions_per_mac"] = figures[f"{unit}_per_mac"] if unit == "instructions" else None
        doc["cycles_per_mac"] = round(self.paths[main].cycles / frag.macs, 4) if frag.macs else None
        if "fast" in self.paths and "reference" in self.paths and self.paths["fast"].cycles:
            doc["speedup"] = round(self.paths["reference"].cycles / self.paths["fast"].cycles, 3)
        doc["int8_macs_per_s"] = self.int8_macs_per_s(main)
        rows = []
        for i, (name, macs) in enumerate(zip(frag.op_names, frag.op_macs, strict=True)):
            row: dict[str, Any] = {"index": i, "op": name, "macs": macs}
            for path, r in self.paths.items():
                v = self.value(r.op_cycles[i])
                total = self.value(r.cycles)
                row[path] = {"cycles": r.op_cycles[i], unit: round(v, 3),
                             f"{unit}_per_mac": round(v / macs, 4) if macs else None,
                             "share": round(v / total, 4) if total else None,
                             "kernel": self.kernel_path if r.fast_kernel[i] else "c"}
            rows.append(row)
        doc["ops"] = rows
        if self.train:
            doc["train"] = self.train
        return doc


# -- running it --------------------------------------------------------------------------------


@contextlib.contextmanager
def board_url(board: Board, url: str | None, *, icount_shift: int = DEFAULT_ICOUNT_SHIFT,
              elf: Path | None = None) -> Iterator[tuple[str, str]]:
    """``(url, measure)``: the given board URL, or the board's firmware booted in QEMU under icount."""
    if url is not None:
        yield url, ("estimate" if url.lower().startswith("sim://") else "cycles")
        return
    from tinyfed.firmware_bridge.emulate.emulator import launch_qemu, qemu_command

    qemu_command(board, "-", 0)  # fails early, with a fix, for a board without a QEMU machine
    if elf is None:
        from tinyfed.firmware_bridge.emulate.build import build_firmware

        elf = Path(build_firmware(board.name))
    log.info("%s: booting %s under -icount shift=%d", board.name, elf, icount_shift)
    with launch_qemu(board, elf, extra_args=("-icount", f"shift={icount_shift}")) as emu:
        yield emu.url, "instructions"


def profile_input(tflite: bytes, seed: int = 0) -> np.ndarray:
    """A seeded random int8 input of the fragment's input shape (batch 1)."""
    from tinyfed.firmware_bridge.compile.blob import compile_blob, parse_blob

    info = parse_blob(compile_blob(tflite))
    shape = info.tensors[info.input_tensor].shape
    return np.random.default_rng(seed).integers(-128, 128, size=shape, dtype=np.int8)


def profile_model(fragment: Fragment, board: Board, *, url: str | None = None, paths: tuple[str, ...] = PATHS,
                  icount_shift: int = DEFAULT_ICOUNT_SHIFT, elf: Path | None = None, with_train: bool = False,
                  seed: int = 0, timeout: float = 60.0) -> ProfileReport:
    """Profile ``fragment`` on ``board`` (QEMU unless ``url`` names a board) along ``paths``."""
    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.firmware_bridge.link.client import BoardClient

    unknown = set(paths) - set(PATHS)
    if not paths or unknown:
        raise TinyfedError(f"unknown kernel paths {sorted(unknown)}", fix=f"use {', '.join(PATHS)}")
    blob = compile_blob(fragment.tflite)
    x = profile_input(fragment.tflite, seed)
    with board_url(board, url, icount_shift=icount_shift, elf=elf) as (link, measure), \
            BoardClient(link, name=board.name, timeout=timeout) as client:
        client.hello()
        kernels = client.kernels()
        loaded = client.load_fragment(blob)
        if loaded.op_count != len(fragment.op_names):
            raise TinyfedError(f"the board holds {loaded.op_count} ops, the fragment has {len(fragment.op_names)}",
                               fix="rebuild the firmware of this tinyfed version", source=board.name)
        results: dict[str, PathResult] = {}
        clock = 0
        for path in paths:
            run = client.profile(x, reference=path == "reference")
            clock = run.clock_hz
            results[path] = PathResult(run.cycles, [op.cycles for op in run.ops], [op.fast for op in run.ops],
                                       run.output)
            log.info("%s: %s kernels: %d cycles over %d ops", board.name, path, run.cycles, len(run.ops))
        report = ProfileReport(fragment, board.name, link, kernels.path, measure, clock,
                               icount_shift if measure == "instructions" else None, results)
        if with_train:
            report.train = _train_step(client, fragment, paths, report, seed)
        client.kernels(reference=kernels.reference)  # leave the board as it was
    return report


def _train_step(client: Any, fragment: Fragment, paths: tuple[str, ...], report: ProfileReport,
                seed: int) -> dict[str, dict[str, Any]]:
    """One SGD step (TRAIN: one epoch of one batch) per kernel path: cycles, head vs the rest."""
    from tinyfed.firmware_bridge.compile import local_data
    from tinyfed.firmware_bridge.compile.train_blob import compile_program
    from tinyfed.firmware_bridge.link.train_link import TrainParams
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.training.task import implied_task

    if "tail" not in fragment.files or "trainable" not in fragment.files:
        raise ModelError("the plan has no training program for this board", source=fragment.model)
    if fragment.kind == "whole":
        raise TinyfedError("--train runs the plan's training step after the plan's frozen head",
                           fix="drop --whole to profile the training step")
    tail = TfliteGraph.from_bytes(fragment.files["tail"])
    task = implied_task(tail.ops[-1].name)
    out_size = int(np.prod(tail.tensors[tail.outputs[0]].shape[1:]))
    x = np.stack([profile_input(fragment.tflite, seed + 1 + i)[0] for i in range(TRAIN_SAMPLES)])
    rng = np.random.default_rng(seed)
    kind = local_data.target_kind(task)
    if kind == local_data.TARGET_CLASS:
        y: np.ndarray | None = rng.integers(0, out_size, size=TRAIN_SAMPLES)
    elif kind == local_data.TARGET_LABELS:
        y = rng.integers(0, 2, size=(TRAIN_SAMPLES, out_size))
    elif kind == local_data.TARGET_REAL:
        y = rng.standard_normal((TRAIN_SAMPLES, out_size)).astype(np.float32)
    else:
        y = None
    client.load_program(compile_program(fragment.files["tail"], fragment.files["trainable"], task=task))
    client.load_data(local_data.pack(x, y, classes=out_size, kind=kind))
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        client.kernels(reference=path == "reference")
        r = client.train(TrainParams(version=0, epochs=1, batch_size=TRAIN_SAMPLES, lr=0.01, seed=seed))
        row: dict[str, Any] = {"samples": r.n, "steps": r.steps, "cycles": r.cycles, "head_cycles": r.head_cycles,
                               "tail_cycles": None if r.head_cycles is None else r.cycles - r.head_cycles}
        unit = report.measure
        if unit == "estimate":  # the twin counts no cycles: say nothing rather than 0
            row.update(cycles=None, head_cycles=None, tail_cycles=None)
        elif unit != "cycles":
            for key in ("cycles", "head_cycles", "tail_cycles"):
                value = row[key]
                row[key.replace("cycles", unit)] = None if value is None else round(report.value(value), 1)
        out[path] = row
    return out
