"""Fleet simulator: hundreds to thousands of heterogeneous boards in virtual time.

The engine (:mod:`tinyfed.host.engine`) drives real links in real time; this module drives the
same :class:`~tinyfed.host.strategies.Strategy` objects through the same round state
(:class:`~tinyfed.host.rounds.RoundState`: update checks, tasks in flight, counters) over
simulated boards whose clock is virtual. Each
task really trains, with the ``sim://`` board's numpy step (:func:`tinyfed.training.local_train`
in the firmware's sample order, the board's int8 quantization and update image), but its
*duration* comes from the board profile: compute = multiply-accumulates of the step / the
board's MAC rate, link = framed protocol bytes / the link rate, times the device's straggler
factor. So a study of 500 boards that would take days of board time runs in minutes, and its
time-to-target is in the boards' seconds, not the host's.

Determinism: one event queue ordered by (virtual time, sequence number); every random choice
comes from generators keyed by the seed (fleet draws, the strategy's sampling and task seeds in
dispatch order, drop-outs keyed by task id). A task's training is a pure function of (start
vector, the device's sample indices, the task seed, the training parameters), so a backend may
train tasks in any order or in parallel and the run is the same (:class:`LocalBackend` trains
lazily when a result arrives; a Ray backend can submit at dispatch). See ``docs/simulator.md``.

Memory: a device is a few numbers and a reference to its index array; model vectors live only
in the tasks in flight (tasks dispatched at the same version share one array) and the master.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
import math
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import AfterValidator, Field, field_validator

from tinyfed.boards.schema import MAX_FLEET_DEVICES, check_error
from tinyfed.boards.validation import suggest
from tinyfed.errors import TinyfedError
from tinyfed.host.config import (
    MAX_VERSIONS,
    Checks,
    ConfigTable,
    Evaluation,
    Partition,
    Privacy,
    Start,
    StrategyParams,
    Training,
    VariantLabel,
)
from tinyfed.host.engine import LocalTraining
from tinyfed.host.rounds import RoundState
from tinyfed.host.strategies import DEFAULT_OVERSELECT_FACTOR, STRATEGIES, Strategy, build_variant, parse_variant
from tinyfed.host.strategies.base import Aggregate
from tinyfed.host.updates import Update
from tinyfed.planner.memory import StepMemory
from tinyfed.planner.plan import Plan
from tinyfed.training.privacy import PrivacyAccountant, check_norm_bound, noised_values
from tinyfed.training.task import Task
from tinyfed.training.vector import split_units, tail_evaluator

log = logging.getLogger(__name__)

DEFAULT_MIX = "nrf52840:0.5,apollo3:0.3,stm32l4r9:0.2"
DEFAULT_SLOWDOWN = "uniform:2:10"
#: Targets every strategy reaches in the default study (500 clients, 90% stragglers; measured).
DEFAULT_TARGETS = {"har_cnn": 0.8, "digits_cnn": 0.75}
#: Fewest samples a device holds when a fleet outgrows the data (devices then share shards).
MIN_SAMPLES_PER_DEVICE = 8
_ARRIVE, _LOST, _ONLINE, _DEADLINE = 0, 1, 2, 3
#: Why a simulated task is lost (the round state counts losses by these).
DROPOUT, OFFLINE = "dropout", "offline"
_EVENT = struct.Struct("<dBq")
_KINDS = {"dispatch": 0, "arrive": 1, "lost": 2, "step": 3, "online": 4, "deadline": 5, "refresh": 6}
#: Evaluations past the target, spread evenly up to the study's horizon (the curve for the plots).
HORIZON_EVALUATIONS = 100
#: The share of a run's end over which ``end_accuracy_mean`` averages.
END_WINDOW = 0.1


# -- options --------------------------------------------------------------------------------


def parse_board_mix(text: str) -> dict[str, float]:
    """``"nrf52840:0.5,apollo3:0.3"`` -> shares normalized to sum 1 (a bare name counts 1)."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, _, share = part.partition(":")
        try:
            value = float(share) if share else 1.0
        except ValueError:
            value = float("nan")
        if not name or not math.isfinite(value) or value <= 0 or name in mix:
            raise TinyfedError(f"board mix entry {part!r} is not BOARD:SHARE with a positive share (or repeats a "
                               "board)", fix=f"write it like {DEFAULT_MIX!r}")
        mix[name.strip()] = value
    if not mix:
        raise TinyfedError("the board mix is empty", fix=f"write it like {DEFAULT_MIX!r}")
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items()}


@dataclass(frozen=True)
class Slowdown:
    """How much slower a straggler is than its board profile: a factor >= 1 drawn per device."""

    kind: str  # "uniform" (low, high) or "lognormal" (mu, sigma of log factor, clipped at 1)
    a: float
    b: float

    @classmethod
    def parse(cls, text: str) -> Slowdown:
        """``uniform:LOW:HIGH``, ``lognormal:MU:SIGMA`` or ``fixed:F``."""
        kind, *nums = str(text).strip().split(":")
        fix = "use uniform:LOW:HIGH (1 <= LOW <= HIGH), lognormal:MU:SIGMA (SIGMA >= 0) or fixed:F (F >= 1)"
        try:
            vals = [float(v) for v in nums]
        except ValueError:
            raise TinyfedError(f"straggler slowdown {text!r} has a value that is not a number", fix=fix) from None
        if kind == "fixed" and len(vals) == 1:
            kind, vals = "uniform", [vals[0], vals[0]]
        ok = len(vals) == 2 and all(math.isfinite(v) for v in vals)
        if ok and kind == "uniform":
            ok = 1.0 <= vals[0] <= vals[1]
        elif ok and kind == "lognormal":
            ok = vals[1] >= 0
        else:
            ok = False
        if not ok:
            raise TinyfedError(f"straggler slowdown {text!r} is not understood", fix=fix)
        return cls(kind, vals[0], vals[1])

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b, size)
        return np.maximum(1.0, rng.lognormal(self.a, self.b, size))

    def __str__(self) -> str:
        return f"{self.kind}:{self.a:g}:{self.b:g}"


@dataclass(frozen=True)
class Availability:
    """When a device can work: online ``online`` of every ``period_s`` simulated seconds.

    Each device gets its own phase (seeded), like watches charged at different hours. Only an
    online device is offered to the strategy; a task still running when its device's window
    closes is lost at that moment, and the device is offered again when its next window opens.
    """

    period_s: float = 0.0
    online: float = 1.0

    @property
    def always(self) -> bool:
        return self.online >= 1.0

    @classmethod
    def parse(cls, text: str) -> Availability:
        """``always`` or ``PERIOD:FRACTION`` (e.g. ``3600:0.5``: half of every simulated hour)."""
        fix = "use always, or PERIOD:FRACTION with PERIOD > 0 simulated seconds and 0 < FRACTION <= 1 (e.g. 3600:0.5)"
        if str(text).strip() == "always":
            return cls()
        period, _, fraction = str(text).partition(":")
        try:
            p, f = float(period), float(fraction)
        except ValueError:
            raise TinyfedError(f"availability {text!r} is not PERIOD:FRACTION", fix=fix) from None
        if not (math.isfinite(p) and p > 0 and 0 < f <= 1):
            raise TinyfedError(f"availability {text!r} is out of range", fix=fix)
        return cls(p, f)

    def __str__(self) -> str:
        return "always" if self.always else f"{self.period_s:g}:{self.online:g}"


@dataclass(frozen=True)
class Attack:
    """Poisoning boards of a simulated fleet: a ``fraction`` of the devices (seeded, the same for every
    strategy) train honestly, then send their delta times ``factor`` (-1: sign-flipped; F: scaled by
    F), with the variance of the delta they send, so every check a real host makes still passes."""

    fraction: float = 0.0
    factor: float = 1.0
    spec: str = "none"

    @classmethod
    def parse(cls, text: str, fraction: float = 0.0) -> Attack:
        """``none``, ``sign-flip`` (factor -1) or ``scale:F`` (F finite, not 1)."""
        fix = "use none, sign-flip, or scale:F with F a finite number other than 1 (e.g. scale:10)"
        spec = str(text).strip()
        if spec == "none":
            return cls(0.0, 1.0, spec)
        if spec == "sign-flip":
            return cls(fraction, -1.0, spec)
        kind, _, factor = spec.partition(":")
        try:
            f = float(factor)
        except ValueError:
            raise TinyfedError(f"attack {text!r} is not understood", fix=fix) from None
        if kind != "scale" or not math.isfinite(f) or f == 1.0:
            raise TinyfedError(f"attack {text!r} is not understood", fix=fix)
        return cls(fraction, f, spec)

    def devices(self, count: int, seed: int) -> frozenset[int]:
        """The attacking devices' indices: round(fraction * count) of them, drawn from the seed alone."""
        m = round(self.fraction * count) if self.factor != 1.0 else 0
        if m == 0:
            return frozenset()
        rng = np.random.default_rng([seed, 0xA77AC])
        return frozenset(int(i) for i in rng.choice(count, size=m, replace=False))

    def __str__(self) -> str:
        return self.spec if self.fraction and self.factor != 1.0 else "none"


# -- boards and their clocks ------------------------------------------------------------------


@dataclass(frozen=True)
class BoardSpeed:
    """What the timing model needs from a board profile ([speed], [link])."""

    name: str
    int8_macs_per_s: float
    fp32_macs_per_s: float  # fp32_flops_per_s / 2: a multiply-accumulate is two FLOPs (as BENCH counts)
    link_bytes_per_s: float  # UART 8N1: baud / 10; USB: the profile's rate
    max_payload: int  # protocol payload per frame ([link] max_frame_bytes)
    ram_budget_bytes: int

    @classmethod
    def of(cls, board: Any) -> BoardSpeed:
        return cls(board.name, float(board.speed.int8_macs_per_s), board.speed.fp32_flops_per_s / 2.0,
                   float(board.link_bytes_per_s), int(board.link.max_frame_bytes),
                   int(board.fragment_ram_budget_bytes))


def framed_bytes(payload: int) -> int:
    """Bytes of one protocol frame carrying ``payload`` bytes: header + CRC, COBS (worst case), delimiter."""
    from tinyfed.firmware_bridge.link.framing import max_encoded_bytes

    return max_encoded_bytes(payload) + 1


def task_link_bytes(values: int, update_bytes: int, max_payload: int, download: bool) -> tuple[int, int]:
    """(host -> board, board -> host) bytes of one task, as the client's requests frame them.

    Every request carries a counter and a tag (protocol v2), every answer a tag. TRAIN_SET sends
    the float32 vector in ``(max_payload - 20 - 8) // 4``-value requests (each acknowledged with a
    u32), TRAIN goes out and its report comes back, UPDATE_READ fetches the update image and its
    32-byte tag in ``max_payload - 16`` pieces. ``download=False``: the board already holds the version.
    """
    from tinyfed.firmware_bridge.link.framing import REQUEST_AUTH_BYTES, TAG_BYTES, UPDATE_TAG_BYTES
    from tinyfed.firmware_bridge.link.train_link import TRAIN_REQUEST, TRAIN_RESPONSE

    down = up = 0
    if download:
        per = (max_payload - REQUEST_AUTH_BYTES - 8) // 4
        for offset in range(0, values, per):
            down += framed_bytes(REQUEST_AUTH_BYTES + 8 + 4 * min(per, values - offset))
            up += framed_bytes(TAG_BYTES + 4)
    down += framed_bytes(REQUEST_AUTH_BYTES + TRAIN_REQUEST.size)
    up += framed_bytes(TAG_BYTES + TRAIN_RESPONSE.size)
    served, piece = update_bytes + UPDATE_TAG_BYTES, max_payload - TAG_BYTES
    for offset in range(0, served, piece):
        down += framed_bytes(REQUEST_AUTH_BYTES + 6)
        up += framed_bytes(TAG_BYTES + min(piece, served - offset))
    return down, up


def graph_macs(graph: Any) -> int:
    """Multiply-accumulates of one sample through an int8 graph (pooling, ADD and SOFTMAX count one per element)."""
    from tinyfed import ops

    macs = 0
    for op in graph.ops:
        spec = ops.find(op.name)
        if spec is not None:  # each op module counts its own (RESHAPE: none)
            macs += spec.macs(graph, op, int(np.prod(graph.tensors[op.outputs[0]].shape[1:])))
    return int(macs)


# -- the model the boards train ---------------------------------------------------------------


@dataclass
class SimModel:
    """One payload's trainable part, with every client sample's input to it computed once.

    For FTTE (``subset``) ``features`` are the frozen int8 fragment's outputs (run once per
    run with the bit-exact int8 kernels, as the ``sim://`` board's head cache does); for the
    dense baselines they are the dequantized int8 model inputs and the whole model trains.
    """

    model: str
    payload: str
    tail: Any  # FloatTail of the training program (what the sim:// board trains)
    unit_shapes: list[tuple[int, int]]
    w0: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    evaluate: Callable[[np.ndarray], tuple[float, float]]  # on the evaluation subset (history, time to target)
    evaluate_full: Callable[[np.ndarray], tuple[float, float]]  # on the whole test split (final accuracy)
    frozen_macs: int  # int8 MACs per sample of the frozen fragment (0: none)
    train_macs: int  # fp32 MACs per sample of one training step, forward + backward (TFTR header)
    device_memory: StepMemory  # one training step's RAM on a board, by line item (the same items for every payload)
    update_bytes: int  # the update image as it crosses the link
    #: nested subsets: where this class's values sit in the global vector (None: it is the whole vector)
    index: np.ndarray | None = None
    #: nested subsets (payload "nested", the global model): each board profile's own model, by board name
    classes: dict[str, SimModel] | None = None
    #: nested subsets (the global model): re-cuts the classes' fragments from a global vector
    #: (:class:`~tinyfed.host.nested_refresh.NestedRefresh`; None: not nested)
    refresh: Any = None
    #: nested subsets (the global model): every client sample as the int8 model's input, the frozen
    #: fragments' input when a refresh recomputes a class's features
    inputs: np.ndarray | None = None

    @property
    def device_memory_bytes(self) -> int:
        return self.device_memory.total

    @property
    def size(self) -> int:
        return int(self.w0.size)

    def of_board(self, board: str) -> SimModel:
        """The model a board of profile ``board`` trains: its class's under nested subsets, else this one."""
        if self.classes is None:
            return self
        if board not in self.classes:
            raise TinyfedError(f"the nested plan has no class for board {board!r}",
                               fix="build the nested model for the study's own board mix")
        return self.classes[board]


@dataclass(frozen=True)
class StepResult:
    """What a simulated board hands back for one task (already through its update image)."""

    delta: np.ndarray
    n: int
    loss: float
    variance: float
    wire_bytes: int


def train_step(model: SimModel, vector: np.ndarray, indices: np.ndarray, seed: int, version: int,
               training: LocalTraining, float_update: bool) -> StepResult:
    """One board's task, as the ``sim://`` board runs TRAIN then UPDATE_READ; pure in its arguments.

    Local SGD (firmware sample order) on the device's samples from ``vector``, the delta
    quantized to int8 (or sent as float32 for the dense baselines) in the board's update image,
    which is then read back the way the engine reads it.
    """
    from tinyfed.firmware_bridge.link.train_link import (
        delta_variance,
        pack_update,
        quantize_flat,
        unpack_update,
    )
    from tinyfed.firmware_bridge.twin import shuffle
    from tinyfed.training.step import local_train

    start = np.asarray(vector, np.float32)
    if model.index is not None:  # a nested class trains its own part of the global vector
        start = start[model.index]
    tail = model.tail.copy()
    tail.set_unit_values(split_units(start, model.unit_shapes))
    x, y = model.features[indices], model.labels[indices]
    res = local_train(tail, x, y, epochs=training.epochs, lr=np.float32(training.lr), batch_size=training.batch_size,
                      seed=seed, order=shuffle.epoch_order)
    values = np.concatenate([v.ravel() for v in res.values]).astype(np.float32)
    dp = training.dp
    if dp is not None:  # the board's order: clip, noise, then quantize (docs/privacy.md); noise seeded by the task
        values = noised_values(start, values, dp.clip, dp.noise, np.random.default_rng([seed & 0xFFFFFFFF, 0xD9]))
    delta = (values - start).astype(np.float32)
    q, scales = quantize_flat(delta, model.unit_shapes, training.per_channel)
    variance = delta_variance(delta)
    loss = res.loss
    if dp is not None:  # withheld by the board
        loss = variance = 0.0
    image = pack_update(version, len(y), loss, variance, q, scales, training.per_channel,
                        delta if float_update else None)
    upd = unpack_update(image)
    received = upd.dense(model.unit_shapes)
    if dp is not None:  # the host's variance of the noised delta it received (post-processing), as the engine's
        variance = delta_variance(received)
        return StepResult(received, upd.n, upd.loss, variance, len(image))
    return StepResult(received, upd.n, upd.loss, upd.variance, len(image))


def update_image_bytes(size: int, unit_shapes: list[tuple[int, int]], per_channel: bool, float_update: bool) -> int:
    """Bytes of the update image (fixed by the vector's layout, not its values)."""
    from tinyfed.firmware_bridge.link.train_link import pack_update, quantize_flat

    zeros = np.zeros(size, np.float32)
    q, scales = quantize_flat(zeros, unit_shapes, per_channel)
    return len(pack_update(0, 1, 0.0, 0.0, q, scales, per_channel, zeros if float_update else None))


# -- fleet ------------------------------------------------------------------------------------


class SimDevice:
    """One simulated board: its name, board, straggler factor and sample indices (what a run
    changes, such as the version a board holds, lives in the :class:`Simulation`)."""

    __slots__ = ("board", "factor", "indices", "name")

    def __init__(self, name: str, board: int, factor: float, indices: np.ndarray) -> None:
        self.name, self.board, self.factor, self.indices = name, board, factor, indices


@dataclass
class SimFleet:
    boards: list[BoardSpeed]
    devices: list[SimDevice]
    shared_shards: bool = False  # True: more devices than shards, devices share them cyclically

    def describe(self) -> str:
        counts = np.bincount([d.board for d in self.devices], minlength=len(self.boards))
        slow = sum(1 for d in self.devices if d.factor > 1.0)
        mix = ", ".join(f"{int(c)} x {b.name}" for b, c in zip(self.boards, counts, strict=True))
        return f"{len(self.devices)} devices ({mix}); {slow} stragglers"


def make_fleet(shards: list[np.ndarray], clients: int, mix: dict[str, float], stragglers: float,
               slowdown: Slowdown, seed: int, boards_dirs: tuple[Path, ...] = ()) -> SimFleet:
    """``clients`` devices: boards dealt by ``mix`` (largest remainder, then shuffled), a
    ``stragglers`` fraction slowed by ``slowdown``; device i holds shard ``i % len(shards)``."""
    from tinyfed.boards import get_board

    if int(clients) != clients or clients < 1:
        raise TinyfedError(f"--count {clients!r} must be a positive integer", fix="e.g. --count 500")
    if not 0.0 <= stragglers <= 1.0:
        raise TinyfedError(f"--stragglers {stragglers!r} is not a fraction", fix="give a number from 0 to 1")
    boards = [BoardSpeed.of(get_board(name, boards_dirs)) for name in mix]
    shares = np.array(list(mix.values()))
    raw = shares * clients
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: clients - int(counts.sum())]:
        counts[i] += 1
    rng = np.random.default_rng([seed, 0xF1EE7])
    board_of = rng.permutation(np.repeat(np.arange(len(boards)), counts))
    factors = np.ones(clients)
    k = round(stragglers * clients)
    if k:
        slow = rng.choice(clients, size=k, replace=False)
        factors[np.sort(slow)] = slowdown.draw(rng, k)
    width = len(str(clients - 1))
    devices = [SimDevice(f"d{i:0{width}d}", int(board_of[i]), float(factors[i]), shards[i % len(shards)])
               for i in range(clients)]
    return SimFleet(boards, devices, shared_shards=clients > len(shards))


# -- backends ---------------------------------------------------------------------------------


class Backend(Protocol):
    """Where a simulated board's training step runs: in this process, or elsewhere (Ray)."""

    name: str
    steps: int  # results handed back so far

    def start(self, task_id: int, args: tuple) -> None: ...

    def cancel(self, task_id: int) -> None: ...

    def finish(self, task_id: int) -> StepResult: ...


@runtime_checkable
class TrainsAhead(Protocol):
    """A backend that trains the next arrivals ahead of virtual time (Ray): the simulation tells it which."""

    lookahead: int

    @property
    def outstanding(self) -> int: ...

    def prefetch(self, task_ids: list[int]) -> None: ...


class LocalBackend:
    """Trains a task in this process when its result is due (a task lost or still in flight at
    the end never trains). A parallel backend may train at ``start`` instead: results are the same."""

    name = "local"

    def __init__(self) -> None:
        self._pending: dict[int, tuple] = {}
        self.steps = 0

    def start(self, task_id: int, args: tuple) -> None:
        self._pending[task_id] = args

    def cancel(self, task_id: int) -> None:
        self._pending.pop(task_id, None)

    def finish(self, task_id: int) -> StepResult:
        self.steps += 1
        return train_step(*self._pending.pop(task_id))


# -- the simulation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SimLimits:
    target_accuracy: float | None = None
    stop_at_target: bool = True
    max_versions: int | None = None
    max_sim_seconds: float | None = None
    max_wall_seconds: float | None = None


@dataclass
class SimResult:
    """One strategy's run. ``final_accuracy`` is on the whole test split; the history, ``best_accuracy``
    and the time to target use the evaluation subset when the study sets ``eval_samples``. ``strategy`` is
    the strategy's label (``fedbuff@subset``; its name when run without one)."""

    strategy: str
    payload: str
    versions: int
    sim_seconds: float
    time_to_target_s: float | None
    versions_to_target: int | None
    reached_target: bool
    final_accuracy: float
    final_loss: float
    best_accuracy: float
    device_memory_bytes: int
    bytes_per_update: int
    bytes_down: int
    bytes_up: int
    tasks: int
    board_steps: int  # tasks the boards trained and sent back (accepted or rejected)
    host_trainings: int  # of those, the ones this host computed (a too-stale update's outcome is known untrained)
    updates_accepted: int
    updates_rejected: int
    updates_lost: int  # tasks that never came back (drop-outs and closed availability windows)
    updates_lost_offline: int  # of those, the ones cut off by their device's availability window
    rejections: dict[str, int]
    wall_seconds: float
    event_digest: str
    stop_reason: str
    vector: np.ndarray = field(repr=False)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    trace: list[tuple[float, str, int, str]] | None = field(default=None, repr=False)
    #: nested subsets: per board class, its values, training memory and update bytes (empty otherwise)
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: ``device_memory_bytes`` by line item (:class:`~tinyfed.planner.memory.StepMemory`)
    device_memory_lines: dict[str, int] = field(default_factory=dict)
    #: differential privacy: epsilon spent at ``delta`` (the largest over devices); None without DP
    epsilon: float | None = None
    delta: float | None = None

    @property
    def bytes_total(self) -> int:
        return self.bytes_down + self.bytes_up

    @property
    def bytes_to_target(self) -> int | None:
        """Bytes on the links, both ways, until the target was first reached (None: not reached)."""
        if self.versions_to_target is None:
            return None
        return next(int(h["bytes_total"]) for h in self.history if h["version"] == self.versions_to_target)

    @property
    def end_accuracy_mean(self) -> float:
        """Accuracy averaged over the last :data:`END_WINDOW` of the run's simulated time, each version
        weighted by how long it held: the end of a noisy curve without the luck of its last point."""
        end = self.sim_seconds
        start = end * (1.0 - END_WINDOW)
        rows = self.history
        if end <= 0:
            return float(rows[-1]["accuracy"])
        total = 0.0
        for row, nxt in zip(rows, [*rows[1:], None], strict=True):
            lo, hi = max(row["sim_time_s"], start), min(end if nxt is None else nxt["sim_time_s"], end)
            if hi > lo:
                total += row["accuracy"] * (hi - lo)
        return total / (end - start)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "payload": self.payload, "versions": self.versions,
            "sim_seconds": self.sim_seconds, "time_to_target_s": self.time_to_target_s,
            "versions_to_target": self.versions_to_target, "reached_target": self.reached_target,
            "final_accuracy": self.final_accuracy, "final_loss": self.final_loss, "best_accuracy": self.best_accuracy,
            "device_memory_bytes": self.device_memory_bytes, "device_memory_lines": dict(self.device_memory_lines),
            "bytes_per_update": self.bytes_per_update,
            "bytes_total": self.bytes_total, "bytes_to_target": self.bytes_to_target,
            "end_accuracy_mean": self.end_accuracy_mean,
            "bytes_down": self.bytes_down, "bytes_up": self.bytes_up,
            "tasks": self.tasks, "board_steps": self.board_steps, "host_trainings": self.host_trainings,
            "updates_accepted": self.updates_accepted,
            "updates_rejected": self.updates_rejected, "updates_lost": self.updates_lost,
            "updates_lost_offline": self.updates_lost_offline,
            "rejections": dict(self.rejections), "wall_seconds": self.wall_seconds,
            "board_steps_per_s": self.board_steps / self.wall_seconds if self.wall_seconds > 0 else None,
            "event_digest": self.event_digest, "stop_reason": self.stop_reason,
            "epsilon": self.epsilon, "delta": self.delta,
            **({"classes": {k: dict(v) for k, v in self.classes.items()}} if self.classes else {}),
        }


class Simulation:
    """One strategy on one simulated fleet. :meth:`run` goes to a limit and returns a
    :class:`SimResult`; it may be called again with later limits to continue the same run (a
    study first runs every strategy to its target, then all of them on to a common horizon), and
    a run continued in pieces is event for event the run made in one piece."""

    def __init__(self, model: SimModel, fleet: SimFleet, strategy: Strategy, *,
                 training: LocalTraining | None = None, limits: SimLimits | None = None, seed: int = 0,
                 norm_bound: float | None = 100.0, max_staleness: int | None = 20, dropout: float = 0.0,
                 availability: Availability | None = None, evaluate_every: int = 1,
                 backend: Backend | None = None, record_trace: bool = False,
                 progress: Callable[[dict[str, Any]], None] | None = None,
                 nested_refresh_versions: int | None = None, attack: Attack | None = None) -> None:
        expected = "subset" if strategy.payload == "subset" else "dense"
        if model.payload != expected and not (expected == "subset" and model.payload == "nested"):
            raise TinyfedError(f"{strategy.label} sends the {expected} payload, the model given is {model.payload}",
                               fix="build the SimModel for the strategy's payload (Study.model)")
        limits = limits if limits is not None else SimLimits(max_versions=100)
        if not 0.0 <= dropout < 1.0:
            raise TinyfedError(f"drop-out probability {dropout!r} is out of range", fix="give a number in [0, 1)")
        _check_limits(limits)
        self.model, self.fleet, self.strategy = model, fleet, strategy
        #: the model each board profile trains (by the fleet's board index): one, or a nested class each
        self._models = [model.of_board(b.name) for b in fleet.boards]
        self.training = training if training is not None else LocalTraining()
        self.limits, self.seed = limits, seed
        self.dropout = dropout
        self.availability = availability if availability is not None else Availability()
        self.evaluate_every = max(1, int(evaluate_every))
        #: Once the target is reached, evaluate at the first version at or after each of these
        #: simulated times (None: by version); see :func:`horizon_grid`.
        self.eval_grid: np.ndarray | None = None
        self.backend = backend if backend is not None else LocalBackend()
        self.progress = progress
        self.float_update = strategy.payload == "dense"
        n = len(fleet.devices)
        self.attack = attack if attack is not None else Attack()
        #: the devices that poison their updates (:class:`Attack`; none by default)
        self.attackers = self.attack.devices(n, seed)
        #: the global vector and version, the tasks in flight (each task's context: its device's
        #: index and its upload's bytes), the accepted update ids and the counters, as in the engine
        self.rounds = RoundState(strategy, model.w0, np.random.default_rng(seed), fleet_size=n,
                                 norm_bound=norm_bound, max_staleness=max_staleness)
        self.now = 0.0
        self.held = np.full(n, -1, np.int64)  # the version each board holds (-1: none yet)
        self.queue: list[tuple[float, int, int, int]] = []
        self.seq = 0
        self.idle: set[int] = set(range(n))
        self.history: list[dict[str, Any]] = []
        self._digest = hashlib.sha256()
        self.trace: list[tuple[float, str, int, str]] | None = [] if record_trace else None
        self._link: dict[tuple[int, bool], tuple[int, int, float, float]] = {}
        self._wall = 0.0  # host seconds spent in run() so far
        self._call_started = 0.0
        self._steps0 = self.backend.steps
        self._grid_next = 0  # index of the next grid time to evaluate at
        self.ttt: float | None = None
        self.vtt: int | None = None
        #: the queue sequence number of the pending deadline (a later dispatch's replaces it; -1: none)
        self._deadline_seq = -1
        #: differential privacy: each device's participations and the epsilon they spent (None: DP off)
        check_norm_bound(self.training.dp, norm_bound, model.size)
        self.privacy = PrivacyAccountant(self.training.dp) if self.training.dp is not None else None
        self.window_end = np.full(n, np.inf)  # when each online device's window closes
        self._cut_off: set[int] = set()  # tasks in flight that their device's window will cut off
        self._init_refresh(nested_refresh_versions)
        if not self.availability.always:
            period, on = self.availability.period_s, self.availability.online * self.availability.period_s
            phase = np.random.default_rng([seed, 0xA7A1]).uniform(0.0, period, n)  # place in its cycle at t = 0
            for i in range(n):
                if phase[i] < on:
                    self.window_end[i] = on - phase[i]
                else:
                    self.idle.discard(i)
                    self._push(period - phase[i], _ONLINE, i)

    # -- nested refresh --------------------------------------------------------------------

    def _init_refresh(self, every: int | None) -> None:
        """Nested subsets re-provisioned every ``every`` versions (None: never, the classes keep
        the fragments they were provisioned with)."""
        if every is not None and every < 1:
            raise TinyfedError(f"nested refresh every {every!r} versions", fix="give a whole number >= 1, or None")
        if every is not None and self.model.refresh is None:
            raise TinyfedError("a nested refresh needs the nested model", fix="set nested_subsets in the study")
        self.refresh_every = every
        self.refreshes = 0
        self.refresh_wall_s = 0.0  # host seconds spent re-cutting fragments and recomputing features
        #: bytes the refreshed fragments and programs took down (and their acknowledgements up)
        self.refresh_bytes_down = self.refresh_bytes_up = 0
        nb = len(self.fleet.boards)
        self._gen = np.zeros(len(self.fleet.devices), np.int64)  # the fragment generation each device holds
        self._frozen_gen = np.zeros(nb, np.int64)  # the generation at which each board's fragment last changed
        self._program_gen = np.zeros(nb, np.int64)
        self._board_gen = np.zeros(nb, np.int64)
        self._load_cost: dict[int, tuple[int, int, int, int]] = {}  # board -> fragment and program load bytes
        self._cuts: dict[str, Any] = {}
        if every is None:
            return
        self._cuts = self.model.refresh.cut(self.model.w0)
        rows: dict[int, list[np.ndarray]] = {}
        for dev in self.fleet.devices:
            rows.setdefault(dev.board, []).append(dev.indices)
        #: the samples each board profile's devices hold: a refresh recomputes only those features
        self._rows = {b: np.unique(np.concatenate(r)) for b, r in rows.items()}

    def _refresh(self) -> None:
        """Re-cut every class's fragments from the global vector; a class whose frozen fragment or
        tail constants changed gets its new features / tail, and its devices a download to make."""
        started = time.monotonic()
        refresh, inputs = self.model.refresh, self.model.inputs
        assert inputs is not None
        cuts = refresh.cut(self.rounds.vector)
        self.refreshes += 1
        for b, board in enumerate(self.fleet.boards):
            old, new = self._cuts[board.name], cuts[board.name]
            frozen_changed, tail_changed = old.frozen != new.frozen, old.tail != new.tail
            if not (frozen_changed or tail_changed) or b not in self._rows:
                continue
            m = self._models[b]
            blob = refresh.frozen_blob(new.frozen) if new.frozen is not None else None
            program = refresh.program(board.name, new.tail)
            from tinyfed.firmware_bridge.compile.program_tail import program_tail

            tail, _, _ = program_tail(program)
            features = m.features
            if frozen_changed:
                rows = self._rows[b]
                features = m.features.copy()
                features[rows] = refresh.features(blob, tail, inputs[rows])
            # a new model object: tasks in flight keep the one their device trains with
            self._models[b] = dataclasses.replace(m, tail=tail, features=features)
            self._board_gen[b] += 1
            if frozen_changed:
                self._frozen_gen[b] = self._board_gen[b]
            if tail_changed:
                self._program_gen[b] = self._board_gen[b]
            from tinyfed.host.nested_refresh import load_link_bytes

            fd, fu = load_link_bytes(len(blob), board.max_payload, False) if blob is not None else (0, 0)
            pd, pu = load_link_bytes(len(program), board.max_payload, True)
            self._load_cost[b] = (fd, fu, pd, pu)
            log.debug("refresh %d at version %d: %s fragment %s, tail %s", self.refreshes, self.rounds.version,
                      board.name, "new" if frozen_changed else "same", "new" if tail_changed else "same")
        self._cuts = cuts
        self._record("refresh", self.rounds.version, "")
        self.refresh_wall_s += time.monotonic() - started

    def _refresh_cost(self, i: int) -> tuple[int, int]:
        """(bytes down, bytes up) device ``i`` loads before its next task: the fragment and program
        its class was refreshed to since it last loaded them (0, 0: it holds the current ones)."""
        b = self.fleet.devices[i].board
        have = self._gen[i]  # a fragment, once committed to the board's flash, stays there
        if have >= self._board_gen[b]:
            return 0, 0
        fd, fu, pd, pu = self._load_cost[b]
        down = up = 0
        if have < self._frozen_gen[b]:
            down, up = down + fd, up + fu
        if have < self._program_gen[b]:
            down, up = down + pd, up + pu
        return down, up

    # -- timing ----------------------------------------------------------------------------

    def _link_cost(self, board: int, download: bool) -> tuple[int, int, float, float]:
        """(bytes down, bytes up, link seconds, compute seconds per sample) of a task on ``board``."""
        key = (board, download)
        if key not in self._link:
            b = self.fleet.boards[board]
            m = self._models[board]
            down, up = task_link_bytes(m.size, m.update_bytes, b.max_payload, download)
            t = self.training
            frozen_passes = 1 if t.head_cache else t.epochs
            per_sample = (m.frozen_macs * frozen_passes / b.int8_macs_per_s
                          + m.train_macs * t.epochs / b.fp32_macs_per_s)
            self._link[key] = (down, up, (down + up) / b.link_bytes_per_s, per_sample)
        return self._link[key]

    def task_seconds(self, device: SimDevice, download: bool) -> float:
        """Virtual seconds of one task: (link + compute) x the device's straggler factor."""
        _, _, link_s, per_sample = self._link_cost(device.board, download)
        return device.factor * (link_s + per_sample * len(device.indices))

    # -- events ----------------------------------------------------------------------------

    def _record(self, kind: str, task: int, device: str) -> None:
        self._digest.update(_EVENT.pack(self.now, _KINDS[kind], task) + device.encode() + b"\0")
        if self.trace is not None:
            self.trace.append((self.now, kind, task, device))

    def _push(self, t: float, kind: int, task_id: int) -> None:
        heapq.heappush(self.queue, (t, self.seq, kind, task_id))
        self.seq += 1

    def _dispatch(self) -> None:
        devices = self.fleet.devices
        names = [devices[i].name for i in sorted(self.idle)]
        if self.privacy is not None:  # a device whose next task would pass the epsilon budget trains no more
            names = [name for name in names if self.privacy.allows(name)]
        tasks = self.rounds.dispatch(names)
        if not tasks:
            return
        index = {name: i for i, name in ((i, devices[i].name) for i in self.idle)}
        vector = self.rounds.vector
        for task in tasks:
            task_id, version = task.task_id, task.version
            if self.privacy is not None:
                self.privacy.participate(task.device)
            i = index[task.device]
            dev = devices[i]
            download = self.held[i] != version
            down, up, _, _ = self._link_cost(dev.board, download)
            duration = self.task_seconds(dev, download)
            if self.refresh_every is not None:
                extra_down, extra_up = self._refresh_cost(i)
                if extra_down:  # the refreshed fragment / program go down before the task's vector
                    b = self.fleet.boards[dev.board]
                    duration += dev.factor * (extra_down + extra_up) / b.link_bytes_per_s
                    down, up = down + extra_down, up + extra_up
                    self.refresh_bytes_down += extra_down
                    self.refresh_bytes_up += extra_up
                self._gen[i] = self._board_gen[dev.board]
            self.rounds.count_bytes(down=down)
            task.context = (i, up)
            self.idle.discard(i)
            lost_at = None
            if self.dropout > 0:
                u = np.random.default_rng([self.seed, 0xD0, task_id]).random(2)
                if u[0] < self.dropout:
                    lost_at = self.now + u[1] * duration
            closes = float(self.window_end[i])
            if self.now + duration > closes and (lost_at is None or closes < lost_at):
                lost_at = closes  # its window closes before the task ends: the board goes away
                self._cut_off.add(task_id)
            if lost_at is not None:
                self.held[i] = -1
                self._push(lost_at, _LOST, task_id)
            else:
                self.held[i] = version
                self.backend.start(task_id, (self._models[dev.board], vector, dev.indices, task.seed, version,
                                             self.training, self.float_update))
                self._push(self.now + duration, _ARRIVE, task_id)
            self._record("dispatch", task_id, task.device)
        deadline = self.strategy.deadline()
        if deadline is not None:  # the strategy owns no clock: its deadline is an event at dispatch + deadline
            self._deadline_seq = self.seq
            self._push(self.now + deadline, _DEADLINE, self.rounds.version)

    def _release(self, i: int) -> None:
        """The device is free again: offered at once while its window is open, else when the next opens."""
        if self.now < self.window_end[i]:
            self.idle.add(i)
        else:
            a = self.availability
            self._push(float(self.window_end[i]) + (1.0 - a.online) * a.period_s, _ONLINE, i)

    def _drop_stale_deadlines(self) -> None:
        """Pop deadlines a later dispatch replaced, so they neither fire nor count as the next event."""
        while self.queue and self.queue[0][2] == _DEADLINE and self.queue[0][1] != self._deadline_seq:
            heapq.heappop(self.queue)

    def _handle(self, kind: int, task_id: int) -> Aggregate | None:
        if kind == _DEADLINE:
            version = task_id
            self._deadline_seq = -1
            self._record("deadline", version, "")
            return self.rounds.deadline(version)
        if kind == _ONLINE:
            i = task_id
            self.window_end[i] = self.now + self.availability.online * self.availability.period_s
            self.idle.add(i)
            self._record("online", i, self.fleet.devices[i].name)
            return None
        task = self.rounds.in_flight[task_id]
        i, up = task.context
        dev = self.fleet.devices[i]
        self._release(i)
        if kind == _LOST:
            self._record("lost", task_id, dev.name)
            offline = task_id in self._cut_off
            self._cut_off.discard(task_id)
            return self.rounds.lose(task_id, OFFLINE if offline else DROPOUT).aggregate
        self._record("arrive", task_id, dev.name)
        self.rounds.count_bytes(up=up)
        if self.rounds.too_stale(task):
            # check_update refuses it as too stale before looking at the delta (and n >= 1 always
            # holds here), so the outcome is known without spending host time on the training.
            self.backend.cancel(task_id)
            update = Update(dev.name, task_id, task.version, len(dev.indices), 0.0, 0.0, np.zeros(0, np.float32))
        elif self.strategy.will_ignore(dev.name, task.version):
            # the strategy has no place for it (FedAvg's late arrivals after an over-selected round
            # closed): it passes the gate and is ignored as before, without the host time of training it
            self.backend.cancel(task_id)
            index = self._models[dev.board].index
            size = self.rounds.vector.size if index is None else index.size
            update = Update(dev.name, task_id, task.version, len(dev.indices), 0.0, 0.0, np.zeros(size, np.float32),
                            0, index)
        else:
            res = self.backend.finish(task_id)
            delta, variance = res.delta, res.variance
            if i in self.attackers:
                f = self.attack.factor
                delta, variance = (delta.astype(np.float64) * f).astype(np.float32), variance * f * f
            update = Update(dev.name, task_id, task.version, res.n, res.loss, variance, delta, res.wire_bytes,
                            self._models[dev.board].index)
        return self.rounds.arrive(task_id, update).aggregate

    def _prefetch(self) -> None:
        """Hand a backend that trains ahead (``lookahead``) the tasks whose arrivals come next, when
        fewer than half that many are in its hands (so the heap is scanned once per half window)."""
        backend = self.backend
        if not isinstance(backend, TrainsAhead) or not backend.lookahead:
            return
        window = backend.lookahead
        if backend.outstanding <= window // 2:
            backend.prefetch([tid for _, _, kind, tid in heapq.nsmallest(window, self.queue) if kind == _ARRIVE])

    def _evaluate(self) -> dict[str, Any]:
        rounds = self.rounds
        acc, loss = self.model.evaluate(rounds.vector)
        row = {"version": rounds.version, "sim_time_s": self.now, "accuracy": float(acc), "loss": float(loss),
               "bytes_down": rounds.bytes_down, "bytes_up": rounds.bytes_up,
               "bytes_total": rounds.bytes_down + rounds.bytes_up, "updates_accepted": rounds.accepted,
               "wall_s": self._wall + time.monotonic() - self._call_started,
               **({"epsilon": round(self.privacy.epsilon, 6)} if self.privacy is not None else {})}
        self.history.append(row)
        if self.progress is not None:
            self.progress({"strategy": self.strategy.label, **row})
        return row

    def _evaluation_due(self) -> bool:
        """Every ``evaluate_every``-th version; past the target at the ``eval_grid`` times, if set."""
        if self.ttt is not None and self.eval_grid is not None:
            if self._grid_next >= len(self.eval_grid) or self.now < self.eval_grid[self._grid_next]:
                return False
            self._grid_next = int(np.searchsorted(self.eval_grid, self.now, side="right"))
            return True
        return self.rounds.version % self.evaluate_every == 0

    def _note(self, row: dict[str, Any], target: float | None) -> None:
        if self.ttt is None and target is not None and row["accuracy"] >= target:
            self.ttt, self.vtt = row["sim_time_s"], row["version"]

    def run(self, limits: SimLimits | None = None) -> SimResult:
        """Run to ``limits`` (the constructor's by default), from where the last call stopped.

        BLAS is held to one thread: the steps' matrices are small, and on a busy host several
        BLAS threads per step burn several times the CPU (measured 7x on 2 cores)."""
        lim = limits if limits is not None else self.limits
        _check_limits(lim)
        from tinyfed.host.blas import one_blas_thread

        with one_blas_thread():
            return self._run(lim)

    def close(self) -> None:
        """Drop the tasks still in flight (they are never trained)."""
        for task_id in list(self.rounds.in_flight):
            self.backend.cancel(task_id)

    def _drained(self) -> str:
        """Why no event is left: every device's epsilon budget is spent (nothing may be dispatched), or none came."""
        if self.privacy is not None and self.privacy.config.epsilon_budget is not None:
            return "privacy budget"
        return "no events left"

    def _run(self, lim: SimLimits) -> SimResult:
        self._call_started = time.monotonic()
        rounds = self.rounds
        if not self.history:
            self._note(self._evaluate(), lim.target_accuracy)
        reason = "no events left"
        if self.ttt is not None and lim.stop_at_target:
            reason = "target reached"
        else:
            while True:
                if self.idle:
                    self._dispatch()
                self._prefetch()
                self._drop_stale_deadlines()
                if not self.queue:
                    reason = self._drained()
                    break
                t, _, kind, task_id = self.queue[0]
                if lim.max_sim_seconds is not None and t > lim.max_sim_seconds:
                    self.now = max(self.now, float(lim.max_sim_seconds))
                    reason = "max simulated seconds"
                    break
                heapq.heappop(self.queue)
                self.now = t
                agg = self._handle(kind, task_id)
                if agg is not None:
                    rounds.apply(agg)
                    self._record("step", rounds.version, "")
                    if self.refresh_every is not None and rounds.version % self.refresh_every == 0:
                        self._refresh()
                    if self._evaluation_due():
                        self._note(self._evaluate(), lim.target_accuracy)
                    if self.ttt is not None and lim.stop_at_target:
                        reason = "target reached"
                        break
                    if lim.max_versions is not None and rounds.version >= lim.max_versions:
                        reason = "max versions"
                        break
                if lim.max_wall_seconds is not None and time.monotonic() - self._call_started >= lim.max_wall_seconds:
                    reason = "max wall seconds"
                    break
        if self.history[-1]["version"] != rounds.version:
            self._note(self._evaluate(), lim.target_accuracy)
        self._wall += time.monotonic() - self._call_started
        digest = self._digest.copy()
        digest.update(np.ascontiguousarray(rounds.vector).tobytes())
        final = self.history[-1]
        if self.model.evaluate_full is not self.model.evaluate:
            acc, loss = self.model.evaluate_full(rounds.vector)
            final = {"accuracy": float(acc), "loss": float(loss)}
        return SimResult(
            strategy=self.strategy.label, payload=self.model.payload, versions=rounds.version, sim_seconds=self.now,
            time_to_target_s=self.ttt, versions_to_target=self.vtt, reached_target=self.ttt is not None,
            final_accuracy=final["accuracy"], final_loss=final["loss"],
            best_accuracy=max(r["accuracy"] for r in self.history),
            device_memory_bytes=self.model.device_memory_bytes, device_memory_lines=self.model.device_memory.as_dict(),
            bytes_per_update=self.model.update_bytes,
            bytes_down=rounds.bytes_down, bytes_up=rounds.bytes_up, tasks=rounds.next_task,
            board_steps=rounds.accepted + rounds.rejected, host_trainings=self.backend.steps - self._steps0,
            updates_accepted=rounds.accepted, updates_rejected=rounds.rejected, updates_lost=rounds.lost,
            updates_lost_offline=rounds.losses.get(OFFLINE, 0), rejections=dict(rounds.rejections),
            wall_seconds=self._wall, event_digest=digest.hexdigest(), stop_reason=reason, vector=rounds.vector.copy(),
            history=list(self.history), trace=list(self.trace) if self.trace is not None else None,
            classes={name: {"values": m.size, "device_memory_bytes": m.device_memory_bytes,
                            "bytes_per_update": m.update_bytes} for name, m in (self.model.classes or {}).items()},
            epsilon=self.privacy.epsilon if self.privacy is not None else None,
            delta=self.privacy.config.delta if self.privacy is not None else None)


def auto_horizon(stops: list[float]) -> float:
    """The common horizon ``auto``: the latest first-leg stop divided by ``1 - END_WINDOW``.

    Every run then ends at the same moment and its end window (the last :data:`END_WINDOW` of the
    horizon, where ``end_accuracy_mean`` averages) starts exactly at the latest stop, so it lies after
    every strategy's time to target: a strategy that reaches its target last is not scored on the
    climb to it (with the horizon at the latest stop itself, that strategy's end mean was below its
    own target by construction)."""
    latest = max(stops, default=0.0)
    return latest / (1.0 - END_WINDOW)


def horizon_grid(end_s: float) -> np.ndarray:
    """Simulated times to evaluate at past the target: :data:`HORIZON_EVALUATIONS` evenly up to the
    end window, as many again inside it (the last :data:`END_WINDOW` of the run), so the end-mean
    accuracy averages many versions and a curve that jumps between versions shows its spread."""
    window = end_s * (1.0 - END_WINDOW)
    coarse = np.linspace(0.0, window, HORIZON_EVALUATIONS, endpoint=False)
    return np.concatenate([coarse, np.linspace(window, end_s, HORIZON_EVALUATIONS, endpoint=False)])


def _check_limits(limits: SimLimits) -> None:
    if limits.target_accuracy is None and limits.max_versions is None and limits.max_sim_seconds is None \
            and limits.max_wall_seconds is None:
        raise TinyfedError("a simulation needs a limit", fix="give a target accuracy, max versions or max "
                                                             "simulated seconds")


# -- a study: several strategies on one fleet ---------------------------------------------------


def _parsed_by(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """A field check that ``parse`` accepts the text (its TinyfedError as a config issue with its fix)."""

    def check(text: str) -> str:
        try:
            parse(text)
        except TinyfedError as exc:
            raise check_error(exc.problem, fix=exc.fix or "") from None
        return text

    return check


class StudyConfig(ConfigTable):
    """Everything a study fixes for every strategy: model, data split, fleet, training, limits.

    The tables a run config has ([training], [strategy_params], [checks], [evaluation]) are the run
    config's own, defaults and checks included (:mod:`tinyfed.host.config`); the rest is the study's:
    the simulated fleet, its limits in simulated time and the common horizon. A study starts from a
    fresh head by default, so every strategy starts from the same classifier. Check values given by
    a person with :func:`~tinyfed.host.config.checked` (every problem in one TinyfedError).
    """

    model: str = Field(default="har_cnn", description="zoo model")
    clients: int = Field(default=500, ge=1, le=MAX_FLEET_DEVICES, description="simulated devices")
    strategies: tuple[VariantLabel, ...] = Field(
        default=tuple(STRATEGIES), min_length=1,
        description="strategy labels NAME[@subset|@dense][+overselect] run on the same fleet, in this order")
    overselect_factor: float = Field(default=DEFAULT_OVERSELECT_FACTOR, ge=1,
                                     description="f of the +overselect variants: ceil(f * m) sampled per round")
    round_deadline_s: float | None = Field(
        default=None, gt=0, description="simulated seconds after its dispatch a FedAvg round closes with what "
                                        "arrived; None: no deadline")
    board_mix: Annotated[str, AfterValidator(_parsed_by(parse_board_mix))] = Field(
        default=DEFAULT_MIX, description="fleet mix, BOARD:SHARE,...")
    stragglers: float = Field(default=0.9, ge=0, le=1, description="fraction of straggling devices")
    slowdown: Annotated[str, AfterValidator(_parsed_by(Slowdown.parse))] = Field(
        default=DEFAULT_SLOWDOWN, description="straggler factor: uniform:LOW:HIGH, lognormal:MU:SIGMA or fixed:F")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="probability a task is lost")
    availability: Annotated[str, AfterValidator(_parsed_by(Availability.parse))] = Field(
        default="always", description="always, or PERIOD:FRACTION")
    partition: Partition | None = Field(default=None, description="None: natural when the data has users, else iid")
    alpha: float = Field(default=0.5, gt=0, description="Dirichlet concentration (dirichlet only)")
    seed: int = Field(default=0, ge=0, lt=2**63, description="seed of every random choice of the study")
    start: Start = Field(default="fresh-head", description="'fresh-head' (the head drawn anew, seeded) or 'pretrained'")
    target_accuracy: float | None = Field(default=0.8, gt=0, le=1, description="time to target is taken here")
    stop_at_target: bool = True
    max_versions: int | None = Field(default=400, ge=1, le=MAX_VERSIONS)
    max_sim_seconds: float | None = Field(default=None, gt=0)
    max_wall_seconds: float | None = Field(default=None, gt=0)
    training: Training = Field(default_factory=Training)
    strategy_params: StrategyParams = Field(default_factory=StrategyParams)
    checks: Checks = Field(default_factory=Checks)
    privacy: Privacy = Field(default_factory=Privacy)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    eval_samples: int | None = Field(default=None, ge=1, le=MAX_VERSIONS,
                                     description="None: the whole test split after every version")
    nested_subsets: bool = Field(default=False, description="subset strategies train nested subsets: each board "
                                 "profile the largest superset of the common w* its budget holds")
    nested_refresh_versions: int | None = Field(
        default=None, ge=1, le=MAX_VERSIONS,
        description="nested subsets: every this many versions each class's frozen fragment and tail are re-cut from "
                    "the global vector and sent again; None: never")
    core_budget: float | None = Field(default=None, gt=0, description="cap of w*'s (the common core's) training "
                                      "memory: a fraction of whole-model training memory (<= 1) or bytes")
    attack: Annotated[str, AfterValidator(_parsed_by(Attack.parse))] = Field(
        default="none", description="what the attacking boards send: none, sign-flip or scale:F")
    attackers: float = Field(default=0.0, ge=0, lt=1, description="fraction of the boards that attack (seeded)")
    #: The end every strategy is run to, in simulated seconds, so final accuracies compare at one
    #: moment: "auto" = the latest time any strategy stopped at (its target or a limit) / (1 -
    #: END_WINDOW), so every end window lies after every time to target (:func:`auto_horizon`);
    #: None = each strategy stops at its own target; seconds = that moment (it also caps the first leg).
    horizon: float | Literal["auto"] | None = "auto"

    @field_validator("model")
    @classmethod
    def _zoo_model(cls, value: str) -> str:
        from tinyfed.models.zoo import ZOO_NAMES

        if value not in ZOO_NAMES:
            close = suggest(value, ZOO_NAMES)
            fix = f"did you mean '{close}'?" if close else f"use one of: {', '.join(sorted(ZOO_NAMES))}"
            raise check_error(f"unknown zoo model {value!r}", fix=fix)
        return value

    @field_validator("strategies")
    @classmethod
    def _distinct_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({label for label in value if value.count(label) > 1})
        if repeated:
            raise check_error(f"strategy label(s) {', '.join(repeated)} given more than once",
                              fix="results are keyed by label: give each variant once")
        return value

    @field_validator("horizon")
    @classmethod
    def _positive_horizon(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float) and not value > 0:
            raise check_error(f"horizon {value!r} is not understood",
                              fix="give auto, none, or a positive number of simulated seconds")
        return value

    @field_validator("strategy_params")
    @classmethod
    def _fedavg_knobs_at_the_top(cls, value: StrategyParams) -> StrategyParams:
        """A study sets FedAvg's deadline and over-selection once, at its top level (as its CLI does)."""
        for key in ("round_deadline_s", "overselect_factor"):
            if getattr(value, key) != StrategyParams.model_fields[key].default:
                raise check_error(f"a study sets {key} at its top level, not in [strategy_params]",
                                  fix=f"move {key} to the study's top level", key=(key,))
        return value

    def strategy(self, label: str) -> Strategy:
        """The strategy of ``label`` (a name or a variant such as ``fedavg@subset+overselect``) with the
        study's [strategy_params], its ``round_deadline_s`` and, for ``+overselect``, its
        ``overselect_factor``, for a fleet of ``clients`` devices."""
        params = self.strategy_params.model_dump()
        params.update(round_deadline_s=self.round_deadline_s, overselect_factor=self.overselect_factor)
        return build_variant(parse_variant(label), fleet_size=self.clients, **params)

    def limits(self) -> SimLimits:
        """The first leg's limits: each strategy to its target (or a max), never past a fixed horizon."""
        end = self.max_sim_seconds
        if isinstance(self.horizon, float):
            end = self.horizon if end is None else min(end, self.horizon)
        return SimLimits(self.target_accuracy, self.stop_at_target, self.max_versions, end, self.max_wall_seconds)

    def horizon_limits(self, horizon_s: float) -> SimLimits:
        """The second leg's: on past the target to the common horizon (the version cap does not apply)."""
        return SimLimits(self.target_accuracy, False, None, horizon_s, self.max_wall_seconds)

    def record(self) -> dict[str, Any]:
        """The config as study.json records it: the strategy knobs the first study recorded, checks and
        evaluation step flat, as they have been recorded since; [training] and the whole
        [strategy_params] (every knob of every variant) as tables."""
        doc = self.model_dump(mode="python", exclude={"strategy_params", "checks", "evaluation", "eval_samples",
                                                        "horizon", "nested_subsets", "core_budget",
                                                        "nested_refresh_versions", "attack", "attackers",
                                                        "privacy"})
        if self.attackers and self.attack != "none":  # recorded only when set, as the nested keys are
            doc.update(attack=self.attack, attackers=self.attackers)
        if self.nested_subsets or self.core_budget is not None:  # recorded only when set, as before otherwise
            doc.update(nested_subsets=self.nested_subsets, core_budget=self.core_budget)
        if self.nested_refresh_versions is not None:
            doc.update(nested_refresh_versions=self.nested_refresh_versions)
        if self.privacy.dp_config() is not None:  # recorded only when on, as before otherwise
            doc.update(privacy=self.privacy.model_dump(mode="python"))
        sp = self.strategy_params
        doc.update(strategies=list(self.strategies), buffer_size=sp.buffer_size,
                   clients_per_round=sp.clients_per_round, server_lr=sp.server_lr,
                   norm_bound=self.checks.norm_bound, max_staleness=self.checks.max_staleness,
                   evaluate_every=self.evaluation.every_versions, eval_samples=self.eval_samples,
                   horizon=self.horizon, strategy_params=sp.model_dump(mode="python"))
        return doc


class Study:
    """The data, fleet and per-payload models of one study, built once and shared by its strategies."""

    def __init__(self, cfg: StudyConfig, *, boards_dirs: tuple[Path, ...] = (), work_dir: Path | None = None) -> None:
        from tinyfed.host.rundata import zoo_run_data

        self.cfg, self.boards_dirs = cfg, boards_dirs
        # The plan's files only live as long as the study (removed with it unless work_dir is given).
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tinyfed-sim-")
            work_dir = Path(self._tmp.name)
        self.work_dir = Path(work_dir)
        self.mix = parse_board_mix(cfg.board_mix)
        self.slowdown = Slowdown.parse(cfg.slowdown)
        self.availability = Availability.parse(cfg.availability)
        self.horizon_s: float | None = None  # set by run_all
        self.data = zoo_run_data(cfg.model)
        if self.data.task is not Task.CLASSIFY or self.data.y is None or self.data.y_test is None:
            raise TinyfedError(f"the fleet simulator trains classifiers; {cfg.model} is a {self.data.task.value} model",
                               fix="train it with `tinyfed run --simulate N` instead")
        self.labels, self.test_labels = self.data.y, self.data.y_test
        part = cfg.partition or ("natural" if self.data.groups is not None else "iid")
        if part == "natural" and self.data.groups is None:
            raise TinyfedError(f"{cfg.model}'s data has no users to partition by", fix="use --partition iid or "
                                                                                       "--partition dirichlet")
        self.partition = part
        shards = min(cfg.clients, max(1, len(self.labels) // MIN_SAMPLES_PER_DEVICE))
        self.shards = [np.asarray(s, np.int32) for s in self.data.shares(part, shards, cfg.alpha, cfg.seed)]
        self.fleet = make_fleet(self.shards, cfg.clients, self.mix, cfg.stragglers, self.slowdown, cfg.seed,
                                boards_dirs)
        self._models: dict[str, SimModel] = {}
        self._plan: Plan | None = None

    def subset_plan(self) -> Plan:
        """The FTTE plan for this fleet's boards (w*, its memory lines, per-board fit)."""
        self.model("subset")
        assert self._plan is not None
        return self._plan

    def model(self, payload: str) -> SimModel:
        """The SimModel of ``payload`` ("subset", "nested" or "dense"), built on first use (the subset plans first)."""
        if payload not in self._models:
            self._models[payload] = self._build(payload)
        return self._models[payload]

    def payload_of(self, strategy: Strategy) -> str:
        """The model a strategy trains here: the nested one for a subset strategy when the study nests subsets."""
        return "nested" if strategy.payload == "subset" and self.cfg.nested_subsets else strategy.payload

    def _build(self, payload: str) -> SimModel:
        from tinyfed.firmware_bridge.compile import local_data
        from tinyfed.firmware_bridge.compile.program_tail import program_tail
        from tinyfed.firmware_bridge.compile.train_blob import parse_program
        from tinyfed.firmware_bridge.twin.kernels_np import run_blob
        from tinyfed.host.setup import DeviceSpec, prepare_run
        from tinyfed.models.tflite_graph import TfliteGraph

        cfg = self.cfg
        t0 = time.monotonic()
        specs = [DeviceSpec(f"plan-{b}", f"sim://{b}", b) for b in self.mix]
        work = self.work_dir / payload
        nested = payload == "nested"
        # The devices here only shape the plan (M_min of the mix); their images are not used.
        setup = prepare_run(cfg.model, specs, "subset" if nested else payload, work_dir=work, partition="iid",
                            seed=cfg.seed, batch_size=cfg.training.batch_size, start=cfg.start,
                            core_budget=cfg.core_budget if payload != "dense" else None, nested=nested)
        tail, shapes, _ram = program_tail(setup.program)
        graph = TfliteGraph.from_bytes(self.data.model_bytes, source=cfg.model)
        t_in = graph.tensors[graph.inputs[0]]
        xq = local_data.quantize_inputs(self.data.x, float(t_in.scales[0]), int(t_in.zero_points[0]))
        in_shape = tuple(tail.graph.tensors[tail.graph.inputs[0]].shape[1:])
        frozen_macs = 0
        if nested:  # the global model is only evaluated, never trained: its classes' models train
            features = np.zeros((0, *in_shape), np.float32)
        elif setup.frozen_blob is not None:
            out = np.concatenate([run_blob(setup.frozen_blob, xq[k:k + 512]) for k in range(0, len(xq), 512)])
            features = tail.dequantize_input(out.reshape((len(out), *in_shape)))
        else:  # the dense program, or a plan whose boards hold every layer: the tail is the whole model
            features = tail.dequantize_input(xq.reshape((len(xq), *in_shape)))
        if payload == "subset":
            assert isinstance(setup.plan, Plan)
            self._plan = setup.plan
            if setup.frozen_blob is not None:
                frozen = setup.plan.files["frozen"].read_bytes()
                frozen_macs = graph_macs(TfliteGraph.from_bytes(frozen, source="frozen.tflite"))
        # One training step's RAM on a board in the same line items for both payloads (StepMemory): the
        # frozen head's arena and w*'s state, or the raw sample and every layer's state.
        assert setup.plan is not None
        memory = setup.plan.step_memory
        classes: dict[str, SimModel] | None = None
        if nested:
            assert setup.classes is not None
            classes = {board: self._class_model(c, setup.w0, xq) for board, c in setup.classes.items()}
            # the headline figure: the smallest board's (the core's) training step
            memory = min((c.device_memory for c in classes.values()), key=lambda m: m.total)
        evaluate = setup.evaluate
        n_test = len(self.test_labels)
        if cfg.eval_samples and cfg.eval_samples < n_test:
            # A fixed seeded subset, the same for every strategy: dense evaluations cost seconds each.
            sub = np.sort(np.random.default_rng([cfg.seed, 0xE7A1]).choice(n_test, cfg.eval_samples, replace=False))
            xt = local_data.quantize_inputs(self.data.x_test[sub], float(t_in.scales[0]), int(t_in.zero_points[0]))
            if setup.frozen_blob is not None:
                xt = run_blob(setup.frozen_blob, xt)
            evaluate = tail_evaluator(tail, shapes, tail.dequantize_input(xt.reshape((len(sub), *in_shape))),
                                      self.test_labels[sub])
        dense = payload == "dense"
        model = SimModel(cfg.model, payload, tail, shapes, setup.w0.astype(np.float32), np.ascontiguousarray(features),
                         self.labels.astype(np.int64), evaluate, setup.evaluate, frozen_macs,
                         parse_program(setup.program).flops,
                         memory, update_image_bytes(setup.w0.size, shapes, cfg.training.per_channel, dense),
                         classes=classes)
        if nested:
            from tinyfed.host.nested_refresh import NestedRefresh

            assert setup.classes is not None
            t_in0 = graph.tensors[graph.inputs[0]]
            model.refresh = NestedRefresh(setup.source, setup.classes, self.data.task,
                                          (float(t_in0.scales[0]), int(t_in0.zero_points[0])))
            model.inputs = xq
        log.info("%s %s model: %d values, %d frozen + %d training MACs per sample, built in %.1f s", cfg.model, payload,
                 model.size, frozen_macs, model.train_macs, time.monotonic() - t0)
        return model

    def _class_model(self, c: Any, w_global: np.ndarray, xq: np.ndarray) -> SimModel:
        """One nested class's model: its tail and units, every sample through its own frozen fragment."""
        from tinyfed.firmware_bridge.compile.program_tail import program_tail
        from tinyfed.firmware_bridge.compile.train_blob import parse_program
        from tinyfed.firmware_bridge.twin.kernels_np import run_blob
        from tinyfed.models.tflite_graph import TfliteGraph

        tail, shapes, _ram = program_tail(c.program)
        in_shape = tuple(tail.graph.tensors[tail.graph.inputs[0]].shape[1:])
        frozen_macs = 0
        if c.frozen_blob is not None:
            out = np.concatenate([run_blob(c.frozen_blob, xq[k:k + 512]) for k in range(0, len(xq), 512)])
            features = tail.dequantize_input(out.reshape((len(out), *in_shape)))
            frozen_macs = graph_macs(TfliteGraph.from_bytes(c.frozen_tflite, source=f"{c.board}/frozen.tflite"))
        else:
            features = tail.dequantize_input(xq.reshape((len(xq), *in_shape)))

        def unused(_: np.ndarray) -> tuple[float, float]:  # a class is never evaluated: the global model is
            raise TinyfedError("a nested class's model is not evaluated on its own", fix="evaluate the global model")

        w0 = np.asarray(w_global, np.float32)[c.index]
        return SimModel(self.cfg.model, "subset", tail, shapes, w0, np.ascontiguousarray(features),
                        self.labels.astype(np.int64), unused, unused, frozen_macs, parse_program(c.program).flops,
                        c.step_memory,
                        update_image_bytes(w0.size, shapes, self.cfg.training.per_channel, False), index=c.index)

    def simulation(self, label: str, *, progress: Callable[[dict[str, Any]], None] | None = None,
                   backend: Backend | None = None, record_trace: bool = False) -> Simulation:
        """One strategy (a label: ``ftte``, ``fedbuff@subset``, ...) on this study's fleet, every board
        holding nothing yet, not yet run; it trains the model of its payload."""
        cfg = self.cfg
        strategy = cfg.strategy(label)
        payload = self.payload_of(strategy)
        return Simulation(self.model(payload), self.fleet, strategy,
                          training=dataclasses.replace(cfg.training.local_training(), dp=cfg.privacy.dp_config()),
                          limits=cfg.limits(), seed=cfg.seed, norm_bound=cfg.checks.norm_bound,
                          max_staleness=cfg.checks.max_staleness, dropout=cfg.dropout, availability=self.availability,
                          evaluate_every=cfg.evaluation.every_versions, backend=backend, record_trace=record_trace,
                          progress=progress,
                          nested_refresh_versions=cfg.nested_refresh_versions if payload == "nested" else None,
                          attack=Attack.parse(cfg.attack, cfg.attackers))

    def run(self, label: str, *, progress: Callable[[dict[str, Any]], None] | None = None,
            backend: Backend | None = None, record_trace: bool = False) -> SimResult:
        """One strategy (a label) to its target or a limit (no common horizon: see :meth:`run_all`)."""
        sim = self.simulation(label, progress=progress, backend=backend, record_trace=record_trace)
        try:
            return self._log(sim.run())
        finally:
            sim.close()

    def run_all(self, *, progress: Callable[[dict[str, Any]], None] | None = None,
                backend: Backend | None = None,
                announce: Callable[[str, SimResult], None] | None = None,
                on_leg: Callable[[str], None] | None = None) -> dict[str, SimResult]:
        """Every strategy to its target (time to target), then, with a horizon, every one on to the
        same simulated moment, where their final accuracies are taken; keyed by label. ``on_leg``
        hears what each of the two legs is before its strategies run (``announce`` after each)."""
        sims = {name: self.simulation(name, progress=progress, backend=backend) for name in self.cfg.strategies}
        results: dict[str, SimResult] = {}
        try:
            if on_leg is not None:
                target = self.cfg.target_accuracy
                on_leg("to the target: each strategy until " + (f"test accuracy {target:g}" if target is not None
                                                                 else "its limits") + " (time to target)")
            for name, sim in sims.items():
                results[name] = self._log(sim.run())
                if announce is not None:
                    announce(name, results[name])
            horizon = self.cfg.horizon
            if horizon is None:
                return results
            stops = [r.sim_seconds for r in results.values()]
            end = auto_horizon(stops) if horizon == "auto" else float(horizon)
            self.horizon_s = end
            early = sorted(n for n, r in results.items()
                           # the auto horizon puts the latest stop on the window's start: rounding is not "before"
                           if r.time_to_target_s is not None
                           and r.time_to_target_s > end * (1.0 - END_WINDOW) * (1.0 + 1e-9))
            if early:
                log.warning("horizon %.0f s: the end window (from %.0f s) starts before the time to target of %s, "
                            "whose end mean then counts accuracies below the target", end, end * (1.0 - END_WINDOW),
                            ", ".join(early))
            if on_leg is not None:
                on_leg(f"to the common horizon: every strategy on to {end:,.0f} simulated s (final accuracy and "
                       "end mean are taken there)")
            for name, sim in sims.items():
                if sim.now < end and results[name].stop_reason != "max wall seconds":
                    sim.eval_grid = horizon_grid(end)
                    results[name] = self._log(sim.run(self.cfg.horizon_limits(end)))
                    if announce is not None:
                        announce(name, results[name])
            return results
        finally:
            for sim in sims.values():
                sim.close()

    @staticmethod
    def _log(result: SimResult) -> SimResult:
        log.info("%s: %d versions, %.0f simulated s, accuracy %.4f (%s), %.1f s wall", result.strategy,
                 result.versions, result.sim_seconds, result.final_accuracy, result.stop_reason, result.wall_seconds)
        return result

    def describe(self) -> dict[str, Any]:
        sizes = [len(s) for s in self.shards]
        return {"model": self.cfg.model, "clients": self.cfg.clients, "partition": self.partition,
                "alpha": self.cfg.alpha if self.partition == "dirichlet" else None, "seed": self.cfg.seed,
                "board_mix": {k: round(v, 6) for k, v in self.mix.items()}, "stragglers": self.cfg.stragglers,
                "slowdown": str(self.slowdown), "dropout": self.cfg.dropout, "start": self.cfg.start,
                "availability": str(self.availability), "horizon_s": self.horizon_s,
                "attack": str(Attack.parse(self.cfg.attack, self.cfg.attackers)), "attackers": self.cfg.attackers,
                "samples_per_device": {"min": min(sizes), "max": max(sizes), "mean": float(np.mean(sizes))},
                "shared_shards": self.fleet.shared_shards, "fleet": self.fleet.describe(),
                "smallest_ram_budget": min(b.ram_budget_bytes for b in self.fleet.boards)}


def run_study(cfg: StudyConfig, *, boards_dirs: tuple[Path, ...] = (), work_dir: Path | None = None,
              progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[Study, dict[str, SimResult]]:
    """Every strategy of ``cfg`` on the same fleet, data split and seed."""
    study = Study(cfg, boards_dirs=boards_dirs, work_dir=work_dir)
    return study, study.run_all(progress=progress)

