"""The round loop: one engine for every strategy and every kind of board.

Each device gets a worker thread that owns its link (:class:`BoardClient`, any URL: ``sim://``,
``socket://`` for emulators, a tty), provisions the board once (fragment, training program,
local data) and then runs tasks: send the global vector at a version, train, read the update.
The main thread alone holds the round (:class:`~tinyfed.host.rounds.RoundState`, shared with the
simulator): it asks the strategy whom to dispatch to, checks every arriving update
(:func:`~tinyfed.host.updates.check_update`), feeds accepted ones to the strategy, applies global
steps to the float32 master, evaluates, and writes every dispatch, arrival, rejection, loss, step
and byte to the event log. A slow board never holds up a fast one except where the strategy says so
(FedAvg's barrier). A board that fails is marked, retried with exponential backoff and given
work again; its task is recorded as lost, never silently dropped.

Nothing lost across a host crash: after the start and after every global step the engine
writes a checkpoint (:mod:`tinyfed.host.checkpoint`) holding the master vector, the version,
the strategy's state (its buffer of accepted but not yet applied updates), the per-device
state, the RNG, the event-log position, the ids of every accepted update and the tasks still
in flight. A resumed engine (``resume_from=``) cuts the event log back to that position, so
events after it (work the crash threw away) vanish with the state they described, restores
everything, and records each task that was in flight at the checkpoint as ``lost`` ("host
restarted"): those devices' results died with the old host's links. An update is applied at
most once because it is either in the checkpoint's buffer or in a step before it, never both,
and the accepted ids keep a replayed update out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.errors import AuthenticationFailed
from tinyfed.firmware_bridge.link.train_link import TrainParams, delta_variance
from tinyfed.firmware_bridge.link.transport import serial_settings
from tinyfed.host.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from tinyfed.host.events import RUN_ENDED, EventLog
from tinyfed.host.rounds import RoundState, Task
from tinyfed.host.setup import DeviceSpec, RunSetup
from tinyfed.host.strategies.base import Aggregate, Strategy
from tinyfed.host.updates import Rejection, Update
from tinyfed.training.privacy import DPConfig, PrivacyAccountant, check_norm_bound

log = logging.getLogger(__name__)

#: Version of the engine's own part of a checkpoint (``strategy_state["engine"]``).
ENGINE_STATE_FORMAT = 1
HOST_RESTARTED = "host restarted"
#: The loss reason a round state counts a task under when its device or link failed.
DEVICE_FAILED = "device failed"
#: Least seconds between two upload-progress rows of one board (the last chunk's always goes).
PROGRESS_INTERVAL_S = 0.1
#: ``stop_reason`` of a run that stopped because no device may take another task within its epsilon budget.
PRIVACY_BUDGET = "privacy_budget"


@dataclass(frozen=True)
class LocalTraining:
    """The device step every task runs (the run config's [training] table)."""

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 16
    per_channel: bool = False
    head_cache: bool = True
    #: on-device differential privacy (docs/privacy.md), None: off
    dp: DPConfig | None = None


@dataclass(frozen=True)
class Limits:
    # stop once the task's metric (the setup's ``metric``) reaches this, on the float global model and, where
    # the setup scores it, on its requantized int8 form (the model a user deploys)
    target_metric: float | None = None
    max_versions: int | None = None
    max_seconds: float | None = None
    max_bytes: int | None = None


@dataclass
class _Outcome:
    task: Task
    update: Update | None = None
    error: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    provisioned: tuple[int, int] = (0, 0)  # (down, up) of a re-provisioning before the task
    #: the board failed authentication (AuthenticationFailed.reason: bad_mac, unknown_device, bad_update_mac ...)
    auth_reason: str | None = None


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
    final_metric: float  # the task's metric (``metric``) of the final version
    final_loss: float
    reached_target: bool
    wall_seconds: float
    bytes_up: int
    bytes_down: int
    updates_accepted: int
    updates_rejected: int
    updates_lost: int  # tasks a device failed (timeout, reset, link gone, host restart)
    vector: np.ndarray = field(repr=False)
    #: rejections by reason: the update checks' (norm_too_large ...) and authentication's (bad_mac, unknown_device ...)
    rejections: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    tasks_unfinished: int = 0  # tasks still running when the run stopped (logged "lost", reason "run ended")
    provision_bytes_down: int = 0  # fragment, program and local data sent to boards at (re)connection
    provision_bytes_up: int = 0
    export: dict[str, str] = field(default_factory=dict)  # files of the deployable result (tinyfed run)
    plots: list[str] = field(default_factory=list)  # the run's charts (tinyfed run)
    task: str = "classify"
    metric: str = "accuracy"  # accuracy, micro_f1, r2 or auc (training.metrics)
    #: nested subsets: per board class, its values, training memory and the bytes of its last update
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: differential privacy: epsilon spent at ``delta`` (the largest over devices); None without DP
    epsilon: float | None = None
    delta: float | None = None
    #: why the run stopped when it was not a limit or the target (``privacy_budget``), else None
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as the run's JSON: ``final_<metric>`` (``final_accuracy`` for a classifier)."""
        return {
            "strategy": self.strategy, "task": self.task, "metric": self.metric, "versions": self.versions,
            f"final_{self.metric}": self.final_metric,
            "final_loss": self.final_loss, "reached_target": self.reached_target, "wall_seconds": self.wall_seconds,
            "bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "updates_accepted": self.updates_accepted,
            "updates_rejected": self.updates_rejected, "updates_lost": self.updates_lost,
            "rejection_reasons": dict(self.rejections),
            "tasks_unfinished": self.tasks_unfinished,
            "provision_bytes_down": self.provision_bytes_down, "provision_bytes_up": self.provision_bytes_up,
            f"final_int8_{self.metric}": self.history[-1].get(f"int8_{self.metric}") if self.history else None,
            "epsilon": self.epsilon, "delta": self.delta,
            **({"stop_reason": self.stop_reason} if self.stop_reason else {}),
            **({"classes": {k: dict(v) for k, v in self.classes.items()}} if self.classes else {}),
        }


#: What a worker tells the main thread between outcomes (the main thread alone writes the event log):
#: ``("state", device, state)`` for the event log, ``("progress", row)`` for the command's view.
Note = tuple[str, Any, Any]


class _Worker(threading.Thread):
    """One device's link: provisions the board, then runs tasks one at a time.

    It writes nothing itself: what the run should record or show (a board being provisioned, an
    upload's bytes, an update being read) goes to the main thread through ``notes``."""

    def __init__(self, spec: DeviceSpec, setup: RunSetup, training: LocalTraining, outcomes: queue.Queue,
                 payload_float: bool, timeout: float, notes: queue.Queue[Note] | None = None) -> None:
        super().__init__(name=f"tinyfed-{spec.name}", daemon=True)
        self.spec, self.setup, self.training = spec, setup, training
        self.outcomes, self.payload_float, self.timeout = outcomes, payload_float, timeout
        self.notes: queue.Queue[Note] = notes if notes is not None else queue.Queue()
        self.tasks: queue.Queue[tuple[Task, np.ndarray] | None] = queue.Queue()  # a task and its start vector
        self.client: BoardClient | None = None
        self.board_version: int | None = None
        self.ready = threading.Event()
        self.provision_error: str | None = None
        self.provision_auth: str | None = None  # the reason, when provisioning failed authentication
        #: bytes (down, up) of the last provisioning (fragment, program, local data), for the records
        self.provisioned: tuple[int, int] = (0, 0)
        # what this board trains: its class's fragment, program and slice under nested subsets, else the run's
        self.nested = setup.classes.get(spec.board) if setup.classes else None
        self.frozen_blob = self.nested.frozen_blob if self.nested is not None else setup.frozen_blob
        self.program = self.nested.program if self.nested is not None else setup.program
        self.unit_shapes = self.nested.unit_shapes if self.nested is not None else setup.unit_shapes
        self.index = self.nested.index if self.nested is not None else None

    def _connect(self) -> BoardClient:
        """Open the link and provision the board; a half-provisioned link is closed at once, not
        whenever it is garbage-collected (a QEMU UART serves one connection at a time)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.setup.classes and self.nested is None:
            raise TinyfedError(f"{self.spec.name}: the nested plan has no class for board {self.spec.board!r}",
                               fix="plan the run for the boards of its devices")
        client = BoardClient(self.spec.url, name=self.spec.name, timeout=2.0,
                             serial=serial_settings(self.spec.board))
        started = time.monotonic()
        parts = [(what, blob) for what, blob in (("fragment", self.frozen_blob), ("program", self.program),
                                                 ("data", self.setup.images[self.spec.name])) if blob is not None]
        total = sum(len(blob) for _, blob in parts)
        try:
            client.open()
            client.hello()
            before = 0
            for what, blob in parts:
                load = {"fragment": client.load_fragment, "program": client.load_program,
                        "data": client.load_data}[what]
                load(blob, self._upload_progress(what, before, total))
                before += len(blob)
        except BaseException as exc:
            client.close()
            self._note_progress({"kind": "provisioned", "device": self.spec.name, "bytes": 0,
                                 "seconds": time.monotonic() - started, "error": str(exc) or type(exc).__name__})
            raise
        self.client, self.board_version = client, 0
        self.provisioned = (client.stats.bytes_sent, client.stats.bytes_received)
        self._note_progress({"kind": "provisioned", "device": self.spec.name, "bytes": client.stats.bytes_sent,
                             "seconds": time.monotonic() - started, "error": None})
        return client

    def _note_progress(self, row: dict[str, Any]) -> None:
        self.notes.put(("progress", row, None))

    def _upload_progress(self, what: str, before: int, total: int) -> Callable[[int, int], None]:
        """The link's chunk callback for one part of the provisioning, as a row over the whole board:
        ``done`` of ``total`` bytes (fragment, program and local data together)."""

        last = [0.0]

        def progress(done: int, size: int) -> None:
            now = time.monotonic()
            if done < size and now - last[0] < PROGRESS_INTERVAL_S:  # a chunk is a few hundred bytes: thin them
                return
            last[0] = now
            self._note_progress({"kind": "provision", "device": self.spec.name, "what": what,
                                 "done": before + done, "total": total})

        return progress

    def _update_values(self) -> int:
        """How many values this board's update carries: its slice of w* (nested subsets) or all of it."""
        return int(self.index.size) if self.index is not None else int(self.setup.w0.size)

    def run(self) -> None:
        try:
            self._connect()
        except Exception as exc:  # any failure is reported: the engine waits on ``ready``
            if not isinstance(exc, (TinyfedError, ValueError)):
                log.exception("%s: unexpected error while provisioning", self.spec.name)
            self.provision_error = str(exc) or type(exc).__name__
            self.provision_auth = exc.reason if isinstance(exc, AuthenticationFailed) else None
        finally:
            self.ready.set()
        while True:
            item = self.tasks.get()
            if item is None:
                break
            self.outcomes.put(self._run_task(*item))
        if self.client is not None:
            self.client.close()

    def _run_task(self, task: Task, vector: np.ndarray) -> _Outcome:
        started = time.monotonic()
        provisioned = (0, 0)
        assert task.seed is not None, "a task restored from a checkpoint is never run again"
        try:
            client = self.client
            if client is None:
                self.notes.put(("state", self.spec.name, "provisioning"))
                client = self._connect()
                provisioned = self.provisioned
                self.notes.put(("state", self.spec.name, "training"))
            sent0, recv0 = client.stats.bytes_sent, client.stats.bytes_received
            if self.board_version != task.version:
                self.board_version = None
                client.set_weights(task.version, vector[self.index] if self.index is not None else vector)
                self.board_version = task.version
            sent1, recv1 = client.stats.bytes_sent, client.stats.bytes_received
            t = self.training
            dp = t.dp
            report = client.train(TrainParams(version=task.version, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                                              seed=task.seed, per_channel=t.per_channel, head_cache=t.head_cache,
                                              float_update=self.payload_float, dp_clip=dp.clip if dp else 0.0,
                                              dp_noise=dp.noise if dp else 0.0), timeout=self.timeout)
            self.notes.put(("state", self.spec.name, "uploading"))
            upd = client.read_update(report.update_bytes, values=self._update_values(), version=task.version)
            try:
                delta = upd.dense(self.unit_shapes)
            except ValueError:  # sizes that do not match w*: the raw values go to the check (bad_shape)
                delta = (upd.values if upd.values is not None else upd.q).astype(np.float32).ravel()
            loss, variance = upd.loss, upd.variance
            if dp is not None:  # the board withholds both; FTTE's variance is the noised delta's (post-processing)
                loss = 0.0
                variance = delta_variance(delta)
            update = Update(self.spec.name, task.task_id, upd.version, upd.n, loss, variance, delta,
                            upd.wire_bytes, self.index)
            down = (sent1 - sent0) + (client.stats.bytes_sent - sent1)
            up = (recv1 - recv0) + (client.stats.bytes_received - recv1)
            return _Outcome(task, update, None, up, down, time.monotonic() - started, provisioned)
        except Exception as exc:  # a task always ends in an outcome, or the engine waits for it forever
            if not isinstance(exc, (TinyfedError, ValueError)):
                log.exception("%s: unexpected error in task %d", self.spec.name, task.task_id)
            if self.client is not None:
                self.client.close()
            self.client, self.board_version = None, None  # reconnect and provision again next time
            return _Outcome(task, None, f"{type(exc).__name__}: {exc}", 0, 0, time.monotonic() - started,
                            auth_reason=exc.reason if isinstance(exc, AuthenticationFailed) else None)


class Engine:
    """Drives one run to its end; see the module docstring."""

    def __init__(self, setup: RunSetup, devices: list[DeviceSpec], strategy: Strategy, events: EventLog, *,
                 training: LocalTraining = LocalTraining(), limits: Limits = Limits(), seed: int = 0,
                 norm_bound: float | None = 100.0, max_staleness: int | None = 20, retries: int = 3,
                 backoff_s: float = 1.0, device_timeout_s: float = 600.0, evaluate_every: int = 1,
                 progress: Callable[[dict[str, Any]], None] | None = None, checkpoint_dir: str | Path | None = None,
                 checkpoints: bool = True, resume_from: Checkpoint | None = None) -> None:
        """``checkpoint_dir`` defaults to the event log's directory (the run directory);
        ``checkpoints=False`` turns checkpointing off (throwaway runs). ``resume_from`` continues
        the run that wrote that checkpoint: the event log is cut back to it and the state restored."""
        if not devices:
            raise TinyfedError("a run needs at least one device", fix="give a fleet, --emulate N or --simulate N")
        self.setup, self.devices, self.strategy, self.events = setup, devices, strategy, events
        self._board_of = {d.name: d.board for d in devices}
        self._class_update_bytes: dict[str, int] = {}  # nested subsets: the last update's bytes, per board class
        self.training, self.limits = training, limits
        self.seed = seed
        #: the global vector and version, the tasks in flight, the accepted update ids and the counters
        windows = setup.facts.get("local_windows") if isinstance(setup.facts, dict) else None
        self.rounds = RoundState(strategy, setup.w0, np.random.default_rng(seed), fleet_size=len(devices),
                                 norm_bound=norm_bound, max_staleness=max_staleness,
                                 samples=dict(windows) if windows else None, check_variance=True)
        self.retries, self.backoff_s, self.device_timeout_s = retries, backoff_s, device_timeout_s
        self.evaluate_every = evaluate_every
        self.progress = progress
        self._notes: queue.Queue[Note] = queue.Queue()  # the workers' device states and upload progress
        self._provisioning: set[str] = set()  # boards whose first provisioning has not ended yet
        self.state = {d.name: DeviceState() for d in devices}
        self.provision_down = self.provision_up = 0  # fragment, program and data sent at (re)connection
        self.history: list[dict[str, Any]] = []
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else events.path.parent
        self.checkpoints = checkpoints
        self.elapsed_before = 0.0  # run seconds spent before a resume (counts against max_seconds)
        self.resumed_from: int | None = None
        #: differential privacy: each device's participations and the epsilon they spent (None: DP off)
        check_norm_bound(training.dp, norm_bound, int(setup.w0.size))
        self.privacy = PrivacyAccountant(training.dp) if training.dp is not None else None
        self.stop_reason: str | None = None
        #: (wall-clock time, version) of the pending deadline of the strategy's last dispatch (None: none)
        self.deadline: tuple[float, int] | None = None
        if resume_from is not None:
            self._restore(resume_from)

    @classmethod
    def resume(cls, run_dir: str | Path, setup: RunSetup, devices: list[DeviceSpec], strategy: Strategy,
               events: EventLog, **kwargs: Any) -> Engine:
        """An engine that continues the run in ``run_dir`` from its newest checkpoint."""
        return cls(setup, devices, strategy, events, checkpoint_dir=run_dir, resume_from=latest_checkpoint(run_dir),
                   **kwargs)

    # -- checkpoints -----------------------------------------------------------------------

    def _engine_state(self, started: float) -> dict[str, Any]:
        rounds = self.rounds
        return {
            "format": ENGINE_STATE_FORMAT,
            "task": self.setup.task.value, "metric": self.setup.metric,
            "devices": [d.name for d in self.devices],
            "next_task": rounds.next_task,
            "in_flight": [{"task": t.task_id, "device": t.device, "version": t.version}
                          for t in sorted(rounds.in_flight.values(), key=lambda t: t.task_id)],
            "bytes_up": rounds.bytes_up, "bytes_down": rounds.bytes_down,
            "provision_bytes": [self.provision_down, self.provision_up],
            "accepted": rounds.accepted, "rejected": rounds.rejected, "lost": rounds.lost,
            "rejections": dict(rounds.rejections),
            "elapsed": self.elapsed_before + (time.monotonic() - started),
            "history": [dict(row) for row in self.history],
            **({"privacy": {"counts": dict(self.privacy.counts)}} if self.privacy is not None else {}),
        }

    def _checkpoint(self, started: float) -> None:
        """Record the whole state after a step; the ``checkpoint`` event goes first so the
        checkpoint's event position covers it (a crash mid-write leaves an event that the
        resume from the previous checkpoint cuts away with everything else after it)."""
        if not self.checkpoints:
            return
        rounds = self.rounds
        self.events.append("checkpoint", version=rounds.version, in_flight=len(rounds.in_flight))
        self.events.sync()
        state = Checkpoint(
            version=rounds.version,
            globals={"w": rounds.vector.astype(np.float32).copy()},
            strategy_state={"strategy": self.strategy.state_dict(), "engine": self._engine_state(started)},
            devices={name: {"state": st.state, "failures": st.failures, "tasks": st.tasks}
                     for name, st in self.state.items()},
            rng_state=dict(rounds.rng.bit_generator.state),
            event_position=self.events.position(),
            accepted_update_ids=sorted(f"{device}:{task}" for device, task in rounds.seen),
        )
        try:
            write_checkpoint(self.checkpoint_dir, state)
        except OSError as exc:
            raise TinyfedError(f"cannot write the checkpoint of version {rounds.version} ({exc.strerror or exc})",
                               fix="free disk space or fix the permissions of the run directory, then "
                                   "`tinyfed run --resume` it", source=str(self.checkpoint_dir)) from exc

    def _restore(self, ck: Checkpoint) -> None:
        """Take over the checkpoint's state; everything is checked before the event log is touched."""
        where = str(self.checkpoint_dir)
        fix = "resume with the devices, model and strategy the run was started with"
        engine = ck.strategy_state.get("engine") if isinstance(ck.strategy_state, dict) else None
        strat = ck.strategy_state.get("strategy") if isinstance(ck.strategy_state, dict) else None
        if not isinstance(engine, dict) or not isinstance(strat, dict) or engine.get("format") != ENGINE_STATE_FORMAT:
            raise TinyfedError(f"checkpoint generation {ck.generation} holds no engine state this tinyfed reads",
                               fix="start the run again", source=where)
        # a checkpoint written before tasks other than classification existed holds a classifier's run
        recorded = (engine.get("task", "classify"), engine.get("metric", "accuracy"))
        if recorded != (self.setup.task.value, self.setup.metric):
            raise TinyfedError(f"the checkpoint's run trained task {recorded[0]} scored by {recorded[1]}, this one "
                               f"{self.setup.task.value} scored by {self.setup.metric}",
                               fix="resume with the task and test data the run was started with", source=where)
        names = [d.name for d in self.devices]
        if engine["devices"] != names:
            raise TinyfedError(f"the checkpoint's run used devices {engine['devices']}, this one has {names}", fix=fix,
                               source=where)
        w = ck.globals.get("w")
        shape = self.rounds.vector.shape
        if w is None or w.shape != shape:
            got = None if w is None else w.shape
            raise TinyfedError(f"the checkpoint's global vector has shape {got}, this run's model {shape}",
                               fix=fix, source=where)
        self.strategy.load_state_dict(strat)  # refuses another strategy or other parameters
        self.strategy.fleet_size = len(self.devices)
        for name, st in ck.devices.items():
            if name in self.state:
                # Links are new after a restart: a dropped device stays dropped, the rest are provisioned again.
                self.state[name] = DeviceState(state="dropped" if st["state"] == "dropped" else "provisioning",
                                               failures=int(st["failures"]), tasks=int(st["tasks"]))
        seen = set()
        for uid in ck.accepted_update_ids:
            device, _, task = str(uid).rpartition(":")
            seen.add((device, int(task)))
        self.rounds.restore(
            vector=w, version=int(ck.version), rng=ck.rng() if ck.rng_state else None, seen=seen,
            next_task=int(engine["next_task"]),
            in_flight=[(int(t["task"]), str(t["device"]), int(t["version"])) for t in engine["in_flight"]],
            bytes_down=int(engine["bytes_down"]), bytes_up=int(engine["bytes_up"]), accepted=int(engine["accepted"]),
            rejected=int(engine["rejected"]), lost=int(engine["lost"]), rejections=engine.get("rejections"))
        self.provision_down, self.provision_up = (int(n) for n in engine.get("provision_bytes", (0, 0)))
        self._restore_privacy(engine.get("privacy"), ck.event_position, where)
        self.elapsed_before = float(engine["elapsed"])
        self.history = [dict(row) for row in engine["history"]]
        self.resumed_from = self.rounds.version
        self.events.truncate_to(ck.event_position)
        self.events.append("resume", version=self.rounds.version, generation=ck.generation,
                           in_flight=list(self.rounds.in_flight))
        log.info("resuming at version %d from checkpoint generation %d (%d tasks were in flight)", self.rounds.version,
                 ck.generation, len(self.rounds.in_flight))

    def _restore_privacy(self, recorded: Any, position: int, where: str) -> None:
        """Take over the participations of the checkpoint, plus those dispatched after it (the
        boards trained and sent those updates even though the crash lost them): epsilon never
        goes back. A DP run resumes only as a DP run."""
        if recorded is None and self.privacy is None:
            return
        if self.privacy is None:
            raise TinyfedError("the checkpoint's run trained with differential privacy, this one does not",
                               fix="resume with the run's own config (its [privacy] table)", source=where)
        counts = dict(recorded.get("counts", {})) if isinstance(recorded, dict) else {}
        for device in _dispatched_after(self.events.path, position):
            counts[device] = int(counts.get(device, 0)) + 1
        self.privacy = PrivacyAccountant(self.privacy.config, counts)

    def _account_restart(self, started: float) -> None:
        """Tasks in flight at the checkpoint died with the old host: record each as lost, once."""
        for task_id in list(self.rounds.in_flight):
            outcome = self.rounds.lose(task_id, HOST_RESTARTED)
            self.events.append("lost", task=task_id, device=outcome.task.device, reason=HOST_RESTARTED)
            if outcome.aggregate is not None:
                self._step(outcome.aggregate, started)
        self._checkpoint(started)

    def _step(self, agg: Aggregate, started: float) -> None:
        """Apply a step, evaluate when due, checkpoint: the unit a crash can never split."""
        self._apply(agg)
        if self.rounds.version % self.evaluate_every == 0:
            self._evaluate()
        self._checkpoint(started)

    # -- helpers -------------------------------------------------------------------------

    def _evaluate(self) -> tuple[float, float]:
        """The task's metric and loss of the global model, recorded under the metric's name
        (``accuracy`` for a classifier; ``metric`` names it in the event and the history row)."""
        rounds, name = self.rounds, self.setup.metric
        value, loss = self.setup.evaluate(rounds.vector)
        extra: dict[str, Any] = {}
        if self.setup.int8_score is not None:  # the deployable model, requantized, through LiteRT
            s = self.setup.int8_score(rounds.vector)
            extra = {f"int8_{name}": s.metric, "int8_loss": s.loss, "clipped": s.clipped}
        if self.privacy is not None:
            extra["epsilon"] = round(self.privacy.epsilon, 6)
        self.events.append("evaluation", version=rounds.version, metric=name, **{name: value}, loss=loss, **extra)
        row = {"kind": "evaluation", "version": rounds.version, "metric": name, name: value, "loss": loss,
               "t": self.events.now(), "bytes_up": rounds.bytes_up, "bytes_down": rounds.bytes_down,
               "devices": self._device_counts(), **self._rejection_counts(), **extra}
        self.history.append(row)
        if self.progress is not None:
            self.progress(row)
        log.info("version %d: test %s %.4f, loss %.4f", rounds.version, name, value, loss)
        return value, loss

    def _rejection_counts(self) -> dict[str, Any]:
        """The rejections so far, for a live view: in all and by reason."""
        return {"rejected": self.rounds.rejected, "rejections": dict(self.rounds.rejections)}

    def _device_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for st in self.state.values():
            counts[st.state] = counts.get(st.state, 0) + 1
        return counts

    def _tick(self, *, provisioned: bool = False) -> None:
        """A progress row between evaluations (a live view refreshes devices and bytes from it);
        ``provisioned``: the first one after every board's first provisioning ended."""
        if self.progress is not None:
            rounds = self.rounds
            self.progress({"kind": "tick", "version": rounds.version, "t": self.events.now(),
                           "bytes_up": rounds.bytes_up, "bytes_down": rounds.bytes_down,
                           "devices": self._device_counts(), **self._rejection_counts(),
                           **({"provisioned": True} if provisioned else {})})

    def _apply(self, agg: Aggregate) -> None:
        self.rounds.apply(agg)
        k = getattr(self.strategy, "k", None)  # buffered strategies' K; FedAvg's rounds have none
        self.events.append("aggregation", version=self.rounds.version, updates=len(agg.updates),
                           tasks=[u.task_id for u in agg.updates],
                           weights=[round(float(w), 6) for w in agg.shares],
                           staleness=[int(s) for s in agg.staleness], buffer_size=k if isinstance(k, int) else None,
                           robust=agg.robust)
        if self.privacy is not None:
            self.events.append("privacy", version=self.rounds.version, **self.privacy.summary())

    def _dispatch(self, workers: dict[str, _Worker]) -> None:
        now = time.monotonic()
        for name, st in self.state.items():
            if st.state == "backoff" and now >= st.retry_at:
                st.state = "idle"
                self.events.append("device_state", device=name, state="idle")
        if self._provisioning and self.strategy.samples_the_fleet:
            return  # a fleet-wide sample waits for the fleet (each board's provisioning is bounded)
        idle = [n for n, s in self.state.items() if s.state == "idle"]
        if self.privacy is not None:  # a device whose next participation would pass the budget trains no more
            idle = [n for n in idle if self.privacy.allows(n)]
        tasks = self.rounds.dispatch(idle)
        for task in tasks:
            if self.privacy is not None:
                self.privacy.participate(task.device)
            st = self.state[task.device]
            st.state = "busy"
            st.tasks += 1
            self.events.append("dispatch", task=task.task_id, device=task.device, version=task.version)
            self.events.append("device_state", device=task.device, state="training", task=task.task_id)
            workers[task.device].tasks.put((task, self.rounds.vector))
        seconds = self.strategy.deadline() if tasks else None
        if seconds is not None:  # the strategy owns no clock: the engine watches it (a later dispatch replaces it)
            # counted from the round's last dispatch record: no task of it has had less than its time
            self.deadline = (time.monotonic() + seconds, self.rounds.version)

    def _wait_timeout(self) -> float:
        """How long the loop may wait for an outcome: 0.2 s, or less when a deadline falls sooner."""
        if self.deadline is None:
            return 0.2
        return min(0.2, max(0.0, self.deadline[0] - time.monotonic()))

    def _next_step(self, outcomes: queue.Queue[_Outcome]) -> Aggregate | None:
        """Wait for the next outcome (at most until the pending deadline) and handle it; the step it
        brings, one that became due meanwhile, or the strategy's answer to a passed deadline."""
        self._drain_notes()
        try:
            out = outcomes.get(timeout=self._wait_timeout())
        except queue.Empty:
            agg = self.rounds.poll()
        else:
            self._drain_notes()  # a worker's notes precede its outcome: "uploading" before the arrival
            agg = self._handle(out)
            self._tick()
        return agg if agg is not None else self._deadline_due()

    def _deadline_due(self) -> Aggregate | None:
        """Tell the strategy when its pending deadline has passed (once); its answer, else None."""
        if self.deadline is None or time.monotonic() < self.deadline[0]:
            return None
        version = self.deadline[1]
        self.deadline = None
        self.events.append("deadline", version=version)
        return self.rounds.deadline(version)

    def _drain_notes(self) -> None:
        """What the workers said since the last call: device states into the event log (written
        here, by the main thread alone), upload progress to the command's ``progress``."""
        while True:
            try:
                what, a, b = self._notes.get_nowait()
            except queue.Empty:
                return
            if what == "state":
                self.events.append("device_state", device=a, state=b)
            elif self.progress is not None:
                self.progress(a)

    def _provisioned(self, device: str, sizes: tuple[int, int]) -> None:
        """Record a (re-)provisioning's bytes apart from the tasks' (``what: provision``): they are
        paid once per link, not per update, so the per-update figures leave them out."""
        down, up = sizes
        self.provision_down += down
        self.provision_up += up
        for direction, n in (("down", down), ("up", up)):
            if n:
                self.events.append("bytes", direction=direction, n=n, device=device, what="provision")

    def _handle(self, out: _Outcome) -> Aggregate | None:
        task = out.task
        st = self.state[task.device]
        self._provisioned(task.device, out.provisioned)
        self.rounds.count_bytes(down=out.bytes_down, up=out.bytes_up)
        if out.bytes_down:
            self.events.append("bytes", direction="down", n=out.bytes_down, device=task.device, task=task.task_id)
        if out.bytes_up:
            self.events.append("bytes", direction="up", n=out.bytes_up, device=task.device, task=task.task_id)
        if out.update is None:
            if out.auth_reason is not None:  # not the board this host provisioned, or not its update
                outcome = self.rounds.reject(task.task_id, Rejection(out.auth_reason, out.error or out.auth_reason))
                self.events.append("rejection", task=task.task_id, device=task.device, reason=out.auth_reason,
                                   message=out.error)
            else:
                outcome = self.rounds.lose(task.task_id, DEVICE_FAILED)
                self.events.append("lost", task=task.task_id, device=task.device, reason=out.error)
            st.failures += 1
            if st.failures > self.retries:
                st.state = "dropped"
            else:
                st.state = "backoff"
                st.retry_at = time.monotonic() + self.backoff_s * 2 ** (st.failures - 1)
            self.events.append("device_state", device=task.device, state=st.state, reason=out.error)
            log.warning("%s: task %d %s (%s); %s", task.device, task.task_id,
                        "rejected" if out.auth_reason is not None else "lost", out.error, st.state)
            return outcome.aggregate
        st.state = "idle"
        st.failures = 0
        update = out.update
        outcome = self.rounds.arrive(task.task_id, update)
        rejection = outcome.rejection
        if rejection is not None:
            self.events.append("rejection", task=task.task_id, device=task.device, reason=rejection.reason,
                               message=rejection.message)
            log.warning("%s: update of task %d rejected: %s", task.device, task.task_id, rejection.message)
        else:
            nested = {"values": int(update.delta.size)} if update.index is not None else {}
            self.events.append("arrival", task=task.task_id, device=task.device, version=update.base_version,
                               staleness=outcome.staleness, n=update.n, loss=update.loss, variance=update.variance,
                               seconds=round(out.seconds, 3), **nested)
            if update.index is not None:
                self._class_update_bytes[self._board_of[task.device]] = int(update.wire_bytes)
        self.events.append("device_state", device=task.device, state="idle")
        return outcome.aggregate

    def _target_reached(self) -> bool:
        """The last evaluation met the target on the float model and on its int8 form: a run never
        stops on a float figure its deployable model misses (requantizing a young head can cost points)."""
        target, name = self.limits.target_metric, self.setup.metric
        if target is None or not self.history:
            return False
        row = self.history[-1]
        return all(row[key] >= target for key in (name, f"int8_{name}") if row.get(key) is not None)

    def _budget_spent(self) -> bool:
        """No device may take another task within the epsilon budget and none is still training."""
        if self.privacy is None or self.privacy.config.epsilon_budget is None or self.rounds.in_flight:
            return False
        if any(self.privacy.allows(n) for n, s in self.state.items() if s.state != "dropped"):
            return False
        if self.stop_reason is None:
            self.stop_reason = PRIVACY_BUDGET
            log.info("stopping: every device's next task would pass the epsilon budget %g",
                     self.privacy.config.epsilon_budget)
        return True

    def _should_stop(self, started: float) -> bool:
        lim, rounds = self.limits, self.rounds
        return bool(
            self._budget_spent() or
            self._target_reached()
            or (lim.max_versions is not None and rounds.version >= lim.max_versions)
            or (lim.max_seconds is not None
                and self.elapsed_before + time.monotonic() - started >= lim.max_seconds)
            or (lim.max_bytes is not None and rounds.bytes_up + rounds.bytes_down >= lim.max_bytes)
            or all(s.state == "dropped" for s in self.state.values())
        )

    def _provision(self, workers: dict[str, _Worker]) -> None:
        """Start the workers: each provisions its board on its own thread. The loop takes each board
        as it becomes ready (:meth:`_collect_provisioned`), so a mute or slow board delays no other
        board's first task, and the run's limits hold while boards are still loading."""
        for name, st in self.state.items():
            if st.state != "dropped":
                self.events.append("device_state", device=name, state="provisioning")
        self._provisioning = {name for name, st in self.state.items() if st.state != "dropped"}
        for w in workers.values():
            w.start()

    def _collect_provisioned(self, workers: dict[str, _Worker]) -> None:
        """Boards whose provisioning ended since the last call become idle (or back off on an error);
        when the last one is done, a tick row tells a view to leave its upload bars."""
        if not self._provisioning:
            return
        done = [name for name in self._provisioning if workers[name].ready.is_set()]
        if not done:
            return
        self._drain_notes()  # their upload rows and "provisioned" lines first
        for name in sorted(done):
            self._provisioning.discard(name)
            w, st = workers[name], self.state[name]
            if w.provision_error is not None:
                if w.provision_auth is not None:  # refused at connection: a rejection with no task
                    self.rounds.count_rejection(w.provision_auth)
                    self.events.append("rejection", device=name, reason=w.provision_auth, message=w.provision_error)
                    log.warning("%s: refused at connection (%s): %s", name, w.provision_auth, w.provision_error)
                st.state, st.failures, st.retry_at = "backoff", st.failures + 1, time.monotonic() + self.backoff_s
                self.events.append("device_state", device=name, state="backoff", reason=w.provision_error)
            else:
                self._provisioned(name, w.provisioned)
                st.state = "idle"
                self.events.append("device_state", device=name, state="idle")
        if not self._provisioning:
            self._tick(provisioned=True)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train to the limits, BLAS held to one thread (:mod:`tinyfed.host.blas`: a fork beside a
        multi-threaded OpenBLAS call left the engine spinning in ``exec_blas``)."""
        from tinyfed.host.blas import one_blas_thread

        with one_blas_thread():
            return self._run()

    def _run(self) -> RunResult:
        outcomes: queue.Queue[_Outcome] = queue.Queue()
        payload_float = self.strategy.payload == "dense"
        workers = {d.name: _Worker(d, self.setup, self.training, outcomes, payload_float, self.device_timeout_s,
                                   self._notes)
                   for d in self.devices}
        started = time.monotonic()
        rounds = self.rounds
        resuming = self.resumed_from is not None
        if not resuming:
            nested = {"classes": {b: c.values for b, c in self.setup.classes.items()}} if self.setup.classes else {}
            self.events.append("run_start", strategy=self.strategy.name, label=self.strategy.label,
                               devices=[d.name for d in self.devices], payload=self.strategy.payload,
                               vector=int(rounds.vector.size), **nested)
        self._provision(workers)
        metric_name = self.setup.metric
        if resuming and self.history and self.history[-1]["version"] == rounds.version:
            value = float(self.history[-1][metric_name])
            loss = float(self.history[-1]["loss"])
        else:
            value, loss = self._evaluate()
        try:
            if resuming:
                self._account_restart(started)
                value, loss = float(self.history[-1][metric_name]), float(self.history[-1]["loss"])
            else:
                self._checkpoint(started)  # version 0: a crash before the first step resumes from here
            while not self._should_stop(started):
                self._collect_provisioned(workers)
                self._dispatch(workers)
                agg = self._next_step(outcomes)
                if agg is not None:
                    self._step(agg, started)
                    value, loss = float(self.history[-1][metric_name]), float(self.history[-1]["loss"])
        finally:
            for w in workers.values():
                w.tasks.put(None)
            # tasks still running when the run ends are accounted for, not silently dropped
            for outcome in rounds.abandon():
                self.events.append("lost", task=outcome.task.task_id, device=outcome.task.device, reason=RUN_ENDED)
        if self.history[-1]["version"] != rounds.version:
            value, loss = self._evaluate()
        wall = self.elapsed_before + time.monotonic() - started
        reached = self._target_reached()
        privacy = ({"epsilon": round(self.privacy.epsilon, 6), "delta": self.privacy.config.delta}
                   if self.privacy is not None else {})
        self.events.append("run_end", version=rounds.version, metric=metric_name, **{metric_name: value},
                           reached_target=reached, **privacy,
                           **({"stop_reason": self.stop_reason} if self.stop_reason else {}))
        return RunResult(self.strategy.label, rounds.version, value, loss, reached, wall, rounds.bytes_up,
                         rounds.bytes_down, rounds.accepted, rounds.rejected, rounds.lost, rounds.vector.copy(),
                         dict(rounds.rejections), self.history, tasks_unfinished=rounds.unfinished,
                         provision_bytes_down=self.provision_down,
                         provision_bytes_up=self.provision_up, task=self.setup.task.value, metric=metric_name,
                         classes={b: {"values": c.values, "training_memory_bytes": c.training_memory_bytes,
                                      "bytes_per_update": self._class_update_bytes.get(b, 0)}
                                  for b, c in (self.setup.classes or {}).items()},
                         epsilon=self.privacy.epsilon if self.privacy is not None else None,
                         delta=self.privacy.config.delta if self.privacy is not None else None,
                         stop_reason=self.stop_reason)


def _dispatched_after(path: Path, position: int) -> list[str]:
    """The devices of the ``dispatch`` events after byte ``position`` of the event log (one entry per
    dispatch), read before a resume cuts them away; a torn last line is skipped."""
    import json

    try:
        with open(path, "rb") as fh:
            fh.seek(position)
            tail = fh.read()
    except OSError:
        return []
    devices = []
    for line in tail.split(b"\n"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("kind") == "dispatch" and isinstance(event.get("device"), str):
            devices.append(event["device"])
    return devices


def latest_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The newest checkpoint of ``run_dir``; a clear error when there is none (damage raises CheckpointError)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise TinyfedError("no such run directory", fix="give the --out directory of an earlier `tinyfed run`",
                           source=str(run))
    ck = read_checkpoint(run)
    if ck is None:
        raise TinyfedError("this run directory holds no checkpoint (checkpoint-*.json) to resume from",
                           fix="give the --out directory of a `tinyfed run` that got past provisioning, "
                               "or start the run again", source=str(run))
    return ck
