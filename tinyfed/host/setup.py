"""What a run sends to its boards and how it scores the global model, built from a run config.

FTTE trains the plan's subset w* behind the frozen int8 fragment ("subset" payload); the FedAvg
and FedBuff baselines train every layer of the int8 model, with no frozen fragment ("dense"
payload), from the same pretrained start. Both are compiled into the board formats (TFMB
fragment, TFTR training program, one TFDS local-data image per device) and come with an
evaluator of the float master on the held-out test split.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.errors import TinyfedError
from tinyfed.planner.memory import StepMemory
from tinyfed.planner.trainable import KIND_WEIGHTS
from tinyfed.training.task import Task, loss_of

if TYPE_CHECKING:
    from tinyfed.host.rundata import RunData
    from tinyfed.planner.dense import DensePlan
    from tinyfed.planner.plan import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    """One device of a run: a name for the records, its link URL and its board profile."""

    name: str
    url: str
    board: str


@dataclass
class SubsetSetup:
    """What the boards of one class receive under nested subsets: their frozen fragment, their
    training program, the shapes of their units and where their values sit in the global vector."""

    board: str
    frozen_blob: bytes | None
    program: bytes
    unit_shapes: list[tuple[int, int]]
    index: np.ndarray  # int64
    training_memory_bytes: int
    frozen_tflite: bytes = b""  # the frozen fragment as the planner cut it (empty: none)
    #: where the class's frozen fragment ends in the whole int8 model (0: none), its tail and
    #: units as provisioned: what a refresh re-cuts from the global vector (simulator.nested_refresh)
    cut: int = 0
    tail_tflite: bytes = b""
    trainable_tfw: bytes = b""
    #: one training step's RAM on the class's boards, in the line items every payload's figure has
    step_memory: StepMemory | None = None

    @property
    def values(self) -> int:
        return int(self.index.size)


@dataclass
class RunSetup:
    model: str
    payload: str  # "subset" (FTTE: w* behind a frozen fragment) or "dense" (every layer)
    frozen_blob: bytes | None
    program: bytes
    w0: np.ndarray  # float32 start of the trained vector
    unit_shapes: list[tuple[int, int]]
    images: dict[str, bytes]  # device name -> TFDS image of its local data
    evaluate: Callable[[np.ndarray], tuple[float, float]]  # vector -> (the task's test metric, test loss)
    facts: dict = field(default_factory=dict)
    #: the int8 model the vector writes back into (plan fragments, or the whole model's bytes)
    source: Any = None
    #: vector -> the deployable int8 model's test score through LiteRT (export.int8_evaluator)
    int8_score: Callable[[np.ndarray], Any] | None = None
    #: what the planner decided: FTTE's plan of w* (subset) or the whole model's need (dense)
    plan: Plan | DensePlan | None = None
    task: Task = Task.CLASSIFY
    #: the name of the task's metric (``evaluate``'s first value): accuracy, micro_f1, r2 or auc
    metric: str = "accuracy"
    #: nested subsets: per board profile, what its boards train (the vector above is the global one)
    classes: dict[str, SubsetSetup] | None = None


def fresh_head(units: list, graph, seed: int) -> list:
    """The units with the model's classifier head (its trailing FULLY_CONNECTED layers) drawn anew.

    Weights are Glorot-uniform from a generator keyed by the run seed and the layer's place
    from the end of the graph, biases zero, so the FTTE tail and the whole model of the
    baselines start from the same values. Every channel of the head must be among the units:
    a head half trained and half frozen at its pretrained values would be neither start.
    """
    head: list[int] = []
    for op in reversed(graph.ops):
        if op.name == "FULLY_CONNECTED":
            head.append(op.index)
        elif graph.weight_tensor(op) is not None:
            break
    if not head:
        raise TinyfedError("the model has no FULLY_CONNECTED classifier head to start fresh",
                           fix='use start = "pretrained" in the run config')
    out, found = [], set()
    for u in units:
        if u.op_index not in head:
            out.append(u)
            continue
        if len(u.channels) != u.tensor_channels:
            raise TinyfedError(f"the plan trains {len(u.channels)} of {u.tensor_channels} channels of head layer op "
                               f"{u.op_index}; a fresh head needs all of them",
                               fix='use start = "pretrained", or boards with room for the whole head')
        place = head.index(u.op_index)
        found.add(place)
        if u.kind == KIND_WEIGHTS:
            fan_out, fan_in = u.values.shape
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            rng = np.random.default_rng([seed, 0x4EAD, place])
            values = rng.uniform(-limit, limit, size=u.values.shape).astype(np.float32)
        else:
            values = np.zeros_like(u.values)
        out.append(dataclasses.replace(u, values=values))
    if len(found) != len(head):
        raise TinyfedError("the trainable subset does not hold the whole classifier head",
                           fix='use start = "pretrained", or boards with room for the whole head')
    return out


def prepare_run(model: str, devices: list[DeviceSpec], payload: str, *, work_dir: Path, partition: str = "natural",
                alpha: float = 0.5, seed: int = 0, batch_size: int = 16, max_windows: int | None = None,
                start: str = "pretrained", npz: str | None = None, test_npz: str | None = None,
                data: RunData | None = None, task: str | None = None, core_budget: float | None = None,
                nested: bool = False) -> RunSetup:
    """Plan (subset) or take the whole model (dense), compile for the boards, shard the data.

    The returned setup carries the planner's decision (``plan``): callers read figures from it, not
    from the ``plan.json`` the subset plan also writes under ``work_dir``.

    ``model`` is a zoo name (its own dataset unless ``npz`` is given) or a full-int8 ``.tflite``
    path with ``npz`` (see :mod:`tinyfed.host.rundata`). ``data``, when the caller loaded and
    checked it already (``tinyfed run`` does, before booting boards), is used instead of loading
    ``model``/``npz``/``test_npz`` (for ``task``: None, the one they imply) again.

    ``core_budget`` caps w*'s training memory (:func:`~tinyfed.planner.plan.make_plan`); ``nested``
    (subset payload only) gives each board profile its superset of w*: the setup's vector, fragment
    and evaluator are then the global model's (the union), and ``classes`` holds each class's own.
    """
    from tinyfed.boards import get_board
    from tinyfed.boards.fleet import ResolvedFleet
    from tinyfed.firmware_bridge.compile import local_data
    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.firmware_bridge.compile.train_blob import compile_program
    from tinyfed.firmware_bridge.twin.kernels_np import run_blob
    from tinyfed.host.rundata import load_run_data
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.planner import trainable as tfw
    from tinyfed.planner.config import TrainingConfig
    from tinyfed.training import FloatTail
    from tinyfed.training.vector import tail_evaluator

    if payload not in ("subset", "dense"):
        raise TinyfedError(f"unknown payload {payload!r}", fix="use 'subset' (ftte) or 'dense' (fedavg, fedbuff)")
    if nested and payload != "subset":
        raise TinyfedError("nested subsets grow from w*: they need the subset payload", fix="use payload 'subset'")
    if data is None:
        data = load_run_data(model, npz, test_npz, task)
    model_bytes = data.model_bytes
    graph = TfliteGraph.from_bytes(model_bytes, source=model)
    t_in = graph.tensors[graph.inputs[0]]
    scale, zp = float(t_in.scales[0]), int(t_in.zero_points[0])
    facts: dict = {}
    classes: dict[str, SubsetSetup] | None = None
    plan: Plan | DensePlan
    if payload == "subset":
        from tinyfed.planner.plan import make_plan
        from tinyfed.planner.sources import load_model_source

        counts: dict[str, int] = {}
        for d in devices:
            counts[d.board] = counts.get(d.board, 0) + 1
        fleet = ResolvedFleet(name="run", entries=[(get_board(b), n) for b, n in sorted(counts.items())],
                              description=", ".join(f"{n} x {b}" for b, n in sorted(counts.items())))
        cfg = TrainingConfig(batch_size=batch_size)
        plan = make_plan(load_model_source(model, None, cfg), fleet, cfg, work_dir / "plan", measure=False,
                         core_budget=core_budget, nested=nested)
        if not plan.fits:
            raise TinyfedError("the plan does not fit the fleet: " + "; ".join(plan.problems),
                               fix="use boards with more RAM or flash, or a smaller model")
        where = plan.nested.files if plan.nested is not None else plan.files
        files = {k: Path(where[k]).read_bytes() for k in ("frozen", "tail", "trainable") if k in where}
        # a board with room for every layer gets no frozen fragment: the tail is the whole model
        frozen = compile_blob(files["frozen"]) if "frozen" in files else None
        units = tfw.decode(files["trainable"])
        if start == "fresh-head":
            units = fresh_head(units, TfliteGraph.from_bytes(files["tail"], source="tail"), seed)
            files["trainable"] = tfw.encode(units)
        program = compile_program(files["tail"], files["trainable"], task=data.task, model_input=(scale, zp))
        tail = FloatTail.from_fragments(files["tail"], files["trainable"], loss=loss_of(data.task))
        test_q = local_data.quantize_inputs(data.x_test, scale, zp)
        test_in = tail.dequantize_input(run_blob(frozen, test_q) if frozen is not None else test_q)
        facts.update(trainable_params=plan.trainable_params)
        if plan.nested is not None:
            w_global = np.concatenate([u.values.ravel() for u in units]).astype(np.float32)
            classes = _class_setups(plan, w_global, data.task, (scale, zp))
            facts.update(classes={b: c.values for b, c in classes.items()})
        from tinyfed.host.export import PlanFragments

        # nested: the global model's fragments (the union's), which the global vector writes back into
        source: Any = PlanFragments.from_dir(work_dir / "plan" / ("nested/global" if plan.nested else ""))
    else:
        from tinyfed.planner.dense import plan_dense, training_program

        plan = plan_dense(model_bytes, model, TrainingConfig(batch_size=batch_size))
        from tinyfed.firmware_bridge.compile.train_blob import parse_program

        units, program = list(plan.units), plan.program
        if start == "fresh-head":
            units = fresh_head(units, graph, seed)
        blob = tfw.encode(units)
        # the sizing compiled the program for the task the last op implies; another task's (or
        # another start's) is compiled here
        if start == "fresh-head" or parse_program(program).target_kind != local_data.target_kind(data.task):
            program = training_program(model_bytes, blob, data.task)
        frozen = None
        tail = FloatTail.from_fragments(model_bytes, blob, loss=loss_of(data.task))
        test_in = tail.dequantize_input(local_data.quantize_inputs(data.x_test, scale, zp))
        source = model_bytes
    test_y = test_targets(data, scale, zp)
    shapes = [(len(u.channels), u.values_per_channel) for u in units]
    w0 = np.concatenate([u.values.ravel() for u in units]).astype(np.float32)

    # one pass, as runs always scored
    evaluate = tail_evaluator(tail, shapes, test_in, test_y, chunk=None, task=data.task, anomaly=data.anomaly_test)
    images, windows = {}, {}
    for d, idx in zip(devices, data.shares(partition, len(devices), alpha, seed), strict=True):
        idx = np.sort(idx)
        if max_windows is not None and len(idx) > max_windows:
            idx = idx[np.linspace(0, len(idx) - 1, max_windows).astype(int)]
        x = local_data.quantize_inputs(data.x[idx], scale, zp)
        y = data.y[idx] if data.y is not None else None  # an autoencoder's target is its input
        images[d.name] = local_data.pack(x, y, classes=data.num_classes, kind=local_data.target_kind(data.task))
        windows[d.name] = len(idx)
    # local_windows: samples in each device's image, so a report need not unpack the images to count
    facts.update(vector=int(w0.size), units=len(units), program_bytes=len(program),
                 frozen_bytes=len(frozen) if frozen else 0, local_windows=windows)
    from tinyfed.host.export import int8_evaluator

    int8_score = int8_evaluator(source, data.x_test, test_y, task=data.task, anomaly=data.anomaly_test)
    setup = RunSetup(model, payload, frozen, program, w0, shapes, images, evaluate, facts, source, int8_score, plan,
                     data.task, data.metric)
    setup.classes = classes
    return setup


def _class_setups(plan: Plan, w_global: np.ndarray, task: Task,
                  model_input: tuple[float, int]) -> dict[str, SubsetSetup]:
    """Each board class's fragment and training program, its units starting at the global vector's values."""
    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.firmware_bridge.compile.train_blob import compile_program
    from tinyfed.planner import trainable as tfw

    assert plan.nested is not None
    out = {}
    for board, c in plan.nested.classes.items():
        files = {k: Path(p).read_bytes() for k, p in c.files.items()}
        units, values, at = [], w_global[c.index], 0
        for u in tfw.decode(files["trainable"]):
            n = u.values.size
            units.append(dataclasses.replace(u, values=values[at:at + n].reshape(u.values.shape).astype(np.float32)))
            at += n
        program = compile_program(files["tail"], tfw.encode(units), task=task, model_input=model_input)
        frozen = compile_blob(files["frozen"]) if "frozen" in files else None
        out[board] = SubsetSetup(board, frozen, program, [(len(u.channels), u.values_per_channel) for u in units],
                                 c.index, c.training.total, files.get("frozen", b""), cut=c.cut,
                                 tail_tflite=files["tail"], trainable_tfw=tfw.encode(units),
                                 step_memory=StepMemory(c.arena, c.training))
    return out


def check_stores(devices: list[DeviceSpec], program: bytes, images: dict[str, bytes], windows: dict[str, int],
                 boards_dirs: tuple[Path, ...] = ()) -> None:
    """Refuse, before any board is provisioned, what a board's flash stores cannot hold: the training
    program's store and the local-data store of its profile. A board would refuse each load, and a
    run would lose every task on it."""
    from tinyfed.boards import get_board
    from tinyfed.errors import DatasetError, PlanError
    from tinyfed.firmware_bridge.compile import local_data

    for d in devices:
        try:
            board = get_board(d.board, boards_dirs)
        except TinyfedError:
            continue  # a board without a profile: its HELLO tells the limits at load time
        if len(program) > board.program_store_bytes:
            raise PlanError(f"{d.name} ({board.name}): the training program of {len(program):,} bytes exceeds the "
                            f"board's program store of {board.program_store_bytes:,} bytes",
                            fix="plan for this board so w* fits its program store, or use a board with more flash")
        image = images.get(d.name, b"")
        if len(image) > board.data_store_bytes:
            per_sample = (len(image) - local_data.HEADER_BYTES) / max(windows.get(d.name, 1), 1)
            fits = int((board.data_store_bytes - local_data.HEADER_BYTES - 4) // max(per_sample, 1))
            raise DatasetError(f"{d.name} ({board.name}): its local data of {windows.get(d.name, 0):,} samples "
                               f"({len(image):,} bytes) exceeds the board's data store of "
                               f"{board.data_store_bytes:,} bytes",
                               fix=f"give each board at most {fits:,} samples (--max-windows {fits}) or more boards")


def test_targets(data: RunData, scale: float, zero_point: int) -> np.ndarray:
    """What the test split's outputs are scored against: ``y_test``, or for an autoencoder its own
    input as the board sees it (quantized to the model's int8 input, dequantized), one row per sample."""
    from tinyfed.firmware_bridge.compile import local_data

    if data.task is not Task.AUTOENCODE:
        assert data.y_test is not None
        return data.y_test
    q = local_data.quantize_inputs(data.x_test, scale, zero_point).reshape(len(data.x_test), -1)
    return (q.astype(np.int32) - zero_point).astype(np.float32) * np.float32(scale)
