"""The round loop: one engine for every strategy and every kind of board.

Each device gets a worker thread that owns its link (:class:`BoardClient`, any URL: ``sim://``,
``socket://`` for emulators, a tty), provisions the board once (fragment, training program,
local data) and then runs tasks: send the global vector at a version, train, read the update.
The main thread alone talks to the strategy: it asks whom to dispatch to, checks every arriving
update (:func:`check_update`), feeds accepted ones to the strategy, applies global steps to the
float32 master, evaluates, and writes every dispatch, arrival, rejection, loss, step and byte to
the event log. A slow board never holds up a fast one except where the strategy says so
(FedAvg's barrier). A board that fails is marked, retried with exponential backoff and given
work again; its task is recorded as lost, never silently dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.client import BoardClient
from tinyfed.firmware_bridge.train_link import TrainParams
from tinyfed.host.events import EventLog
from tinyfed.host.setup import DeviceSpec, RunSetup
from tinyfed.host.strategies.base import Aggregate, Strategy
from tinyfed.host.updates import Update, check_update

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalTraining:
    """The device step every task runs (the run config's [training] table)."""

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 16
    per_channel: bool = False
    head_cache: bool = True


@dataclass(frozen=True)
class Limits:
    target_accuracy: float | None = None
    max_versions: int | None = None
    max_seconds: float | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class _Task:
    task_id: int
    device: str
    version: int
    vector: np.ndarray
    seed: int


@dataclass
class _Outcome:
    task: _Task
    update: Update | None = None
    error: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0


@dataclass
class DeviceState:
    state: str = "provisioning"  # provisioning, idle, busy, backoff, dropped
    failures: int = 0
    retry_at: float = 0.0
    tasks: int = 0


@dataclass
class RunResult:
    strategy: str
    versions: int
    final_accuracy: float
    final_loss: float
    reached_target: bool
    wall_seconds: float
    bytes_up: int
    bytes_down: int
    updates_accepted: int
    updates_rejected: int
    updates_lost: int
    vector: np.ndarray = field(repr=False)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "versions": self.versions, "final_accuracy": self.final_accuracy,
            "final_loss": self.final_loss, "reached_target": self.reached_target, "wall_seconds": self.wall_seconds,
            "bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "updates_accepted": self.updates_accepted,
            "updates_rejected": self.updates_rejected, "updates_lost": self.updates_lost,
        }


class _Worker(threading.Thread):
    """One device's link: provisions the board, then runs tasks one at a time."""

    def __init__(self, spec: DeviceSpec, setup: RunSetup, training: LocalTraining, outcomes: queue.Queue,
                 payload_float: bool, timeout: float) -> None:
        super().__init__(name=f"tinyfed-{spec.name}", daemon=True)
        self.spec, self.setup, self.training = spec, setup, training
        self.outcomes, self.payload_float, self.timeout = outcomes, payload_float, timeout
        self.tasks: queue.Queue[_Task | None] = queue.Queue()
        self.client: BoardClient | None = None
        self.board_version: int | None = None
        self.ready = threading.Event()
        self.provision_error: str | None = None

    def _connect(self) -> BoardClient:
        if self.client is not None:
            self.client.close()
        client = BoardClient(self.spec.url, name=self.spec.name, timeout=2.0)
        client.open()
        client.hello()
        if self.setup.frozen_blob is not None:
            client.load_fragment(self.setup.frozen_blob)
        client.load_program(self.setup.program)
        client.load_data(self.setup.images[self.spec.name])
        self.client, self.board_version = client, 0
        return client

    def run(self) -> None:
        try:
            self._connect()
        except TinyfedError as exc:
            self.provision_error = str(exc)
        self.ready.set()
        while True:
            task = self.tasks.get()
            if task is None:
                break
            self.outcomes.put(self._run_task(task))
        if self.client is not None:
            self.client.close()

    def _run_task(self, task: _Task) -> _Outcome:
        started = time.monotonic()
        try:
            client = self.client if self.client is not None else self._connect()
            sent0, recv0 = client.stats.bytes_sent, client.stats.bytes_received
            if self.board_version != task.version:
                self.board_version = None
                client.set_weights(task.version, task.vector)
                self.board_version = task.version
            sent1, recv1 = client.stats.bytes_sent, client.stats.bytes_received
            t = self.training
            report = client.train(TrainParams(version=task.version, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                                              seed=task.seed, per_channel=t.per_channel, head_cache=t.head_cache,
                                              float_update=self.payload_float), timeout=self.timeout)
            upd = client.read_update(report.update_bytes)
            delta = upd.dense(self.setup.unit_shapes)
            update = Update(self.spec.name, task.task_id, upd.version, upd.n, upd.loss, upd.variance, delta,
                            upd.wire_bytes)
            down = (sent1 - sent0) + (client.stats.bytes_sent - sent1)
            up = (recv1 - recv0) + (client.stats.bytes_received - recv1)
            return _Outcome(task, update, None, up, down, time.monotonic() - started)
        except (TinyfedError, ValueError) as exc:
            if self.client is not None:
                self.client.close()
            self.client, self.board_version = None, None  # reconnect and provision again next time
            return _Outcome(task, None, f"{type(exc).__name__}: {exc}", 0, 0, time.monotonic() - started)


class Engine:
    """Drives one run to its end; see the module docstring."""

    def __init__(self, setup: RunSetup, devices: list[DeviceSpec], strategy: Strategy, events: EventLog, *,
                 training: LocalTraining = LocalTraining(), limits: Limits = Limits(), seed: int = 0,
                 norm_bound: float | None = 100.0, max_staleness: int | None = 20, retries: int = 3,
                 backoff_s: float = 1.0, device_timeout_s: float = 600.0, evaluate_every: int = 1,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        if not devices:
            raise TinyfedError("a run needs at least one device", fix="give a fleet, --emulate N or --simulate N")
        self.setup, self.devices, self.strategy, self.events = setup, devices, strategy, events
        self.training, self.limits = training, limits
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.norm_bound, self.max_staleness = norm_bound, max_staleness
        self.retries, self.backoff_s, self.device_timeout_s = retries, backoff_s, device_timeout_s
        self.evaluate_every = evaluate_every
        self.progress = progress
        self.vector = setup.w0.astype(np.float32).copy()
        self.version = 0
        self.state = {d.name: DeviceState() for d in devices}
        self.seen: set[tuple[str, int]] = set()
        self.in_flight: dict[int, _Task] = {}
        self.next_task = 0
        self.bytes_up = self.bytes_down = 0
        self.accepted = self.rejected = self.lost = 0
        self.history: list[dict[str, Any]] = []
        strategy.fleet_size = len(devices)

    # -- helpers -------------------------------------------------------------------------

    def _evaluate(self) -> tuple[float, float]:
        acc, loss = self.setup.evaluate(self.vector)
        self.events.append("evaluation", version=self.version, accuracy=acc, loss=loss)
        row = {"version": self.version, "accuracy": acc, "loss": loss, "t": self.events.now(),
               "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}
        self.history.append(row)
        if self.progress is not None:
            self.progress(row)
        log.info("version %d: test accuracy %.4f, loss %.4f", self.version, acc, loss)
        return acc, loss

    def _apply(self, agg: Aggregate) -> None:
        self.vector = (self.vector + agg.step).astype(np.float32)
        self.version = agg.new_version
        self.events.append("aggregation", version=self.version, updates=len(agg.updates),
                           tasks=[u.task_id for u in agg.updates])

    def _dispatch(self, workers: dict[str, _Worker]) -> None:
        now = time.monotonic()
        for name, st in self.state.items():
            if st.state == "backoff" and now >= st.retry_at:
                st.state = "idle"
                self.events.append("device_state", device=name, state="idle")
        idle = [n for n, s in self.state.items() if s.state == "idle"]
        busy = [n for n, s in self.state.items() if s.state == "busy"]
        for name in self.strategy.select(idle, busy, self.version, self.rng):
            task = _Task(self.next_task, name, self.version, self.vector.copy(),
                         int(self.rng.integers(0, 2**31 - 1)))
            self.next_task += 1
            self.in_flight[task.task_id] = task
            self.state[name].state = "busy"
            self.state[name].tasks += 1
            self.events.append("dispatch", task=task.task_id, device=name, version=self.version)
            workers[name].tasks.put(task)

    def _handle(self, out: _Outcome) -> Aggregate | None:
        task = out.task
        self.in_flight.pop(task.task_id, None)
        st = self.state[task.device]
        self.bytes_up += out.bytes_up
        self.bytes_down += out.bytes_down
        if out.bytes_down:
            self.events.append("bytes", direction="down", n=out.bytes_down, device=task.device, task=task.task_id)
        if out.bytes_up:
            self.events.append("bytes", direction="up", n=out.bytes_up, device=task.device, task=task.task_id)
        if out.update is None:
            self.lost += 1
            st.failures += 1
            self.events.append("lost", task=task.task_id, device=task.device, reason=out.error)
            if st.failures > self.retries:
                st.state = "dropped"
            else:
                st.state = "backoff"
                st.retry_at = time.monotonic() + self.backoff_s * 2 ** (st.failures - 1)
            self.events.append("device_state", device=task.device, state=st.state, reason=out.error)
            log.warning("%s: task %d lost (%s); %s", task.device, task.task_id, out.error, st.state)
            return self.strategy.on_lost(task.device, task.task_id)
        st.state = "idle"
        st.failures = 0
        rejection = check_update(out.update, global_version=self.version, size=self.vector.size,
                                 norm_bound=self.norm_bound, max_staleness=self.max_staleness, seen_tasks=self.seen)
        if rejection is not None:
            self.rejected += 1
            self.events.append("rejection", task=task.task_id, device=task.device, reason=rejection.reason,
                               message=rejection.message)
            log.warning("%s: update of task %d rejected: %s", task.device, task.task_id, rejection.message)
            return self.strategy.on_lost(task.device, task.task_id)
        self.seen.add(out.update.key)
        self.accepted += 1
        self.events.append("arrival", task=task.task_id, device=task.device, version=out.update.base_version,
                           staleness=self.version - out.update.base_version, n=out.update.n, loss=out.update.loss,
                           variance=out.update.variance, seconds=round(out.seconds, 3))
        return self.strategy.on_update(out.update, self.version)

    def _should_stop(self, accuracy: float, started: float) -> bool:
        lim = self.limits
        return bool(
            (lim.target_accuracy is not None and accuracy >= lim.target_accuracy)
            or (lim.max_versions is not None and self.version >= lim.max_versions)
            or (lim.max_seconds is not None and time.monotonic() - started >= lim.max_seconds)
            or (lim.max_bytes is not None and self.bytes_up + self.bytes_down >= lim.max_bytes)
            or all(s.state == "dropped" for s in self.state.values())
        )

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> RunResult:
        outcomes: queue.Queue[_Outcome] = queue.Queue()
        payload_float = self.strategy.payload == "dense"
        workers = {d.name: _Worker(d, self.setup, self.training, outcomes, payload_float, self.device_timeout_s)
                   for d in self.devices}
        started = time.monotonic()
        self.events.append("run_start", strategy=self.strategy.name, devices=[d.name for d in self.devices],
                           payload=self.strategy.payload, vector=int(self.vector.size))
        for w in workers.values():
            w.start()
        for name, w in workers.items():
            w.ready.wait()
            st = self.state[name]
            if w.provision_error is not None:
                st.state, st.failures, st.retry_at = "backoff", 1, time.monotonic() + self.backoff_s
                self.events.append("device_state", device=name, state="backoff", reason=w.provision_error)
            else:
                st.state = "idle"
                self.events.append("device_state", device=name, state="idle")
        accuracy, loss = self._evaluate()
        try:
            while not self._should_stop(accuracy, started):
                self._dispatch(workers)
                try:
                    out = outcomes.get(timeout=0.2)
                except queue.Empty:
                    agg = self.strategy.poll(self.version)
                else:
                    agg = self._handle(out)
                if agg is not None:
                    self._apply(agg)
                    if self.version % self.evaluate_every == 0:
                        accuracy, loss = self._evaluate()
        finally:
            for w in workers.values():
                w.tasks.put(None)
            # tasks still running when the run ends are accounted for, not silently dropped
            for task in list(self.in_flight.values()):
                self.lost += 1
                self.events.append("lost", task=task.task_id, device=task.device, reason="run ended")
            self.in_flight.clear()
        if self.history[-1]["version"] != self.version:
            accuracy, loss = self._evaluate()
        wall = time.monotonic() - started
        reached = self.limits.target_accuracy is not None and accuracy >= self.limits.target_accuracy
        self.events.append("run_end", version=self.version, accuracy=accuracy, reached_target=reached)
        return RunResult(self.strategy.name, self.version, accuracy, loss, reached, wall, self.bytes_up,
                         self.bytes_down, self.accepted, self.rejected, self.lost, self.vector.copy(), self.history)
