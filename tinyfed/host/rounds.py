"""The bookkeeping of a run's rounds, kept once for the engine and the simulator.

Both loops (:mod:`tinyfed.host.engine`: real links, wall clock, a thread per device;
:mod:`tinyfed.host.simulator`: virtual time, an event queue) drive a strategy the same way:
offer it the idle devices, give each chosen one a task at the current version, judge each update
that comes back, hand accepted ones to the strategy, tell it about the rest, and apply the global
steps it returns. :class:`RoundState` is that part, pure: no clock, no threads, no I/O, randomness
only from the generator it is given. The loops own time, links, devices' availability, event
logs and evaluation, and call it.

Every dispatched task ends exactly once: accepted, rejected (with a :class:`Reason`), lost (with
the caller's reason) or unfinished (still in flight when a run ends). A task leaves
``in_flight`` with its outcome, so a second outcome for it raises instead of counting twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from tinyfed.host.strategies.base import Aggregate, Strategy
from tinyfed.host.updates import Reason, Rejection, Update, check_update

log = logging.getLogger(__name__)


class Task:
    """One device's task: train from ``version`` with ``seed``.

    ``context`` is what the driving loop attaches for its own use (the simulator: the device's
    index and the bytes of its upload); the round state never reads it. ``seed`` is None for a
    task restored from a checkpoint, whose seed the old host did not keep.
    """

    __slots__ = ("context", "device", "seed", "task_id", "version")

    def __init__(self, task_id: int, device: str, version: int, seed: int | None, context: Any = None) -> None:
        self.task_id, self.device, self.version, self.seed, self.context = task_id, device, version, seed, context

    def __repr__(self) -> str:
        return f"Task({self.task_id}, {self.device!r}, version={self.version})"


class TaskEnd(StrEnum):
    """How a task ended (each task ends once)."""

    ACCEPTED = "accepted"  # its update passed the checks and went to the strategy
    REJECTED = "rejected"  # its update came back and was refused (the strategy hears on_lost)
    LOST = "lost"  # no update came back (the strategy hears on_lost)
    UNFINISHED = "unfinished"  # still in flight when the run ended (the strategy is not told)


@dataclass(frozen=True, eq=False)
class Outcome:
    """A task's end, and the global step the strategy asked for in answer to it (if any)."""

    task: Task
    end: TaskEnd
    aggregate: Aggregate | None = None
    rejection: Rejection | None = None
    staleness: int = 0  # versions between the task's and the global one when its update arrived


class RoundError(RuntimeError):
    """The round state was asked for something that would break its bookkeeping (a bug in a loop)."""


class RoundState:
    """The global vector and version, the tasks in flight, the accepted update ids and the counters.

    ``rng`` is the run's generator: the strategy's sampling and every task's seed come from it,
    in dispatch order, so a seed gives the same tasks in the engine and in the simulator. The
    global vector is never changed in place (:meth:`apply` makes a new array), so a task may hold
    the vector it was dispatched with without copying it.
    """

    def __init__(self, strategy: Strategy, vector: np.ndarray, rng: np.random.Generator, *, fleet_size: int,
                 norm_bound: float | None, max_staleness: int | None,
                 samples: Mapping[str, int] | None = None, check_variance: bool = False) -> None:
        self.strategy, self.rng = strategy, rng
        #: hold each reported variance to its delta's (real boards; the simulator's are its own)
        self.check_variance = check_variance
        self.norm_bound, self.max_staleness = norm_bound, max_staleness
        #: the samples the host gave each device: an update claiming more is refused (None: unknown)
        self.samples = dict(samples) if samples is not None else None
        strategy.fleet_size = fleet_size
        self.vector = np.asarray(vector, np.float32).copy()
        strategy.vector_size = int(self.vector.size)
        self.version = 0
        self.in_flight: dict[int, Task] = {}  # dispatch order
        self.next_task = 0
        self.seen: set[tuple[str, int]] = set()  # (device, task) of every accepted update
        self.bytes_down = self.bytes_up = 0  # the tasks' link bytes (the caller measures or models them)
        self.accepted = self.rejected = self.lost = self.unfinished = 0
        self.rejections: dict[str, int] = {}  # by Reason
        self.losses: dict[str, int] = {}  # by the caller's reason

    # -- dispatch ----------------------------------------------------------------------------

    @property
    def busy(self) -> list[str]:
        """The devices with a task in flight, in dispatch order."""
        return [t.device for t in self.in_flight.values()]

    def dispatch(self, idle: list[str]) -> list[Task]:
        """Ask the strategy whom of ``idle`` to give a task now; each chosen device gets one at the
        current version, with a seed drawn from the run's generator (after the strategy's draws)."""
        tasks: list[Task] = []
        for device in self.strategy.select(idle, self.busy, self.version, self.rng):
            task = Task(self.next_task, device, self.version, int(self.rng.integers(0, 2**31 - 1)))
            self.next_task += 1
            self.in_flight[task.task_id] = task
            tasks.append(task)
        return tasks

    def count_bytes(self, *, down: int = 0, up: int = 0) -> None:
        """Add a task's link bytes (host -> board, board -> host) to the run's totals."""
        self.bytes_down += down
        self.bytes_up += up

    # -- outcomes ----------------------------------------------------------------------------

    def _end(self, task_id: int) -> Task:
        task = self.in_flight.pop(task_id, None)
        if task is None:
            raise RoundError(f"task {task_id} is not in flight: it never started or has already ended")
        return task

    def too_stale(self, task: Task) -> bool:
        """Whether ``task``'s update, arriving now, will be refused as too stale whatever it holds
        (:func:`check_update` looks at the versions before the delta)."""
        return self.max_staleness is not None and self.version - task.version > self.max_staleness

    def arrive(self, task_id: int, update: Update) -> Outcome:
        """The task's update came back: judge it (its task's version, then :func:`check_update`),
        and hand an accepted one to the strategy or tell it a refused one is lost."""
        task = self._end(task_id)
        rejection = answers_task(update, task) or check_update(
            update, global_version=self.version, size=self.vector.size, norm_bound=self.norm_bound,
            max_staleness=self.max_staleness, seen_tasks=self.seen,
            max_n=self.samples.get(task.device) if self.samples is not None else None,
            check_variance=self.check_variance)
        if rejection is not None:
            self.count_rejection(rejection.reason)
            return Outcome(task, TaskEnd.REJECTED, self.strategy.on_lost(task.device, task_id), rejection)
        self.seen.add(update.key)
        self.accepted += 1
        staleness = self.version - update.base_version
        return Outcome(task, TaskEnd.ACCEPTED, self.strategy.on_update(update, self.version), staleness=staleness)

    def reject(self, task_id: int, rejection: Rejection) -> Outcome:
        """The task's device failed authentication (a bad MAC, a replayed counter, an update bound to
        another device or version): counted as a rejection by ``rejection.reason``; nothing reaches the
        strategy but the loss of the task."""
        task = self._end(task_id)
        self.count_rejection(rejection.reason)
        return Outcome(task, TaskEnd.REJECTED, self.strategy.on_lost(task.device, task_id), rejection)

    def count_rejection(self, reason: str) -> None:
        """Count a rejection by ``reason`` (also one that ended no task: a board refused at connection)."""
        self.rejected += 1
        self.rejections[str(reason)] = self.rejections.get(str(reason), 0) + 1

    def lose(self, task_id: int, reason: str) -> Outcome:
        """No update will come back for the task (``reason``: a short code the losses are counted by)."""
        task = self._end(task_id)
        self.lost += 1
        self.losses[reason] = self.losses.get(reason, 0) + 1
        return Outcome(task, TaskEnd.LOST, self.strategy.on_lost(task.device, task_id))

    def abandon(self) -> list[Outcome]:
        """The run ends: every task still in flight is unfinished (the strategy is not told)."""
        tasks = list(self.in_flight.values())
        self.in_flight.clear()
        self.unfinished += len(tasks)
        return [Outcome(t, TaskEnd.UNFINISHED) for t in tasks]

    # -- global steps ------------------------------------------------------------------------

    def poll(self) -> Aggregate | None:
        """A step that became due without a new update (the strategy's :meth:`~Strategy.poll`)."""
        return self.strategy.poll(self.version)

    def deadline(self, version: int) -> Aggregate | None:
        """The deadline of the dispatch made at ``version`` passed (the strategy's
        :meth:`~Strategy.on_deadline`; the loop keeps the time, see :meth:`~Strategy.deadline`)."""
        return self.strategy.on_deadline(version)

    def apply(self, aggregate: Aggregate) -> None:
        """Add the step to the global vector (a new array) and move to the step's version."""
        self.vector = (self.vector + aggregate.step).astype(np.float32)
        self.version = aggregate.new_version

    # -- resume ------------------------------------------------------------------------------

    def restore(self, *, vector: np.ndarray, version: int, rng: np.random.Generator | None,
                seen: Iterable[tuple[str, int]], next_task: int, in_flight: Iterable[tuple[int, str, int]],
                bytes_down: int, bytes_up: int, accepted: int, rejected: int, lost: int,
                rejections: Mapping[str, int] | None = None) -> None:
        """Take over a checkpointed run's state. ``in_flight`` is (task, device, version) of each task
        the old host had out: they are in flight again until the caller ends them (their seeds are gone)."""
        self.vector = np.asarray(vector, np.float32).copy()
        self.version = int(version)
        if rng is not None:
            self.rng = rng
        self.seen = set(seen)
        self.next_task = int(next_task)
        self.in_flight = {int(t): Task(int(t), str(d), int(v), None) for t, d, v in in_flight}
        self.bytes_down, self.bytes_up = int(bytes_down), int(bytes_up)
        self.accepted, self.rejected, self.lost = int(accepted), int(rejected), int(lost)
        if rejections is not None:
            self.rejections = {str(k): int(v) for k, v in rejections.items()}


def answers_task(update: Update, task: Task) -> Rejection | None:
    """A board trains from the weights its task set, so its update must carry the task's version:
    an older one is an earlier update sent again (replayed), a newer one cannot exist."""
    if update.base_version == task.version:
        return None
    who = f"update from {update.device_id!r} (task {update.task_id})"
    if update.base_version < task.version:
        return Rejection(Reason.REPLAY, f"{who} carries version {update.base_version}, but its task sent version "
                                        f"{task.version}: an earlier update sent again")
    return Rejection(Reason.FUTURE_VERSION, f"{who} claims version {update.base_version}, but its task sent "
                                            f"version {task.version}")
