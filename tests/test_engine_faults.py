"""Boards that die mid-run (issue 5): two of eight QEMU boards are SIGKILLed at seeded random
moments while FTTE trains har_cnn from a fresh classifier head, and are restarted at the same
URL, as a re-plugged board keeps its tty. Half the fleet is reached through pseudo-terminals
(plain tty paths the host opens with pyserial's POSIX serial class, issue 20), half through
QEMU's TCP UART, and one victim is of each kind: the tty stays open on the host while its
board dies and comes back behind it. The run must still reach its target accuracy, and the
event log must account for every dispatched task: the killed boards' tasks are logged lost with
a reason, the boards back off, are provisioned again (fragment, program, local data) and deliver
accepted updates afterwards; no update is aggregated twice or silently dropped.

The kills are timed by the engine's own record, not by sleeps: the engine writes into an event
log that also hands each event to the test as it is written, and a kill fires on the n-th
arrival (n drawn from a seeded RNG) once the victim holds a task.
"""

from __future__ import annotations

import logging
import queue
import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
    pytest.skip("needs qemu-system-arm and gcc-arm-none-eabi (make test installs both)", allow_module_level=True)

from _run_shared import run_firmware

from tinyfed.boards import Board, get_board
from tinyfed.firmware_bridge.emulate.emulator import EmulatedBoard, start_qemu, wait_ready
from tinyfed.firmware_bridge.emulate.pty import PtyLink
from tinyfed.host.engine import Engine, Limits, LocalTraining, RunResult
from tinyfed.host.events import EventLog, read_events, summarize
from tinyfed.host.setup import DeviceSpec, prepare_run
from tinyfed.host.strategies import get_strategy

log = logging.getLogger(__name__)

BOARDS = 8
SEED = 5  # seeds the kills; the run itself uses seed 0 like a default run config
TARGET = 0.75  # a fresh head starts at 0.19; on sim boards these settings reach 0.77-0.82 at v7, then stay ~0.80
MAX_VERSIONS = 30  # a run that cannot reach the target ends here instead of hanging
# A hang bound, not a margin: MAX_VERSIONS ends a run that cannot reach the target. The test took 180-350 s
# on a busy 2-core host (a parallel suite, other emulators), a fraction of that on an idle one.
MAX_SECONDS = 1800.0
MAX_STALENESS = 20  # the run config default: older updates are rejected (none is expected here)
MAX_WINDOWS = 32  # local windows per board: a task is ~1 s of one core for QEMU (half of it the link)
EPOCHS, LR = 2, 0.0075  # the second epoch is nearly free (head cache), so more progress per task
# the engine's n-th arrival after which each kill fires, both in the first version (8 arrivals):
# a victim needs ~3 versions to be provisioned again and deliver, the run ~6-7 to reach the target
KILL_WINDOWS = ((0, 3), (3, 7))
TTY_BOARDS = frozenset(range(1, BOARDS, 2))  # these boards' UARTs are pseudo-terminals; the rest TCP sockets


class _TappedLog(EventLog):
    """The run's event log that also hands every event to the test the moment it is written."""

    def __init__(self, run_dir: Path, sink: queue.Queue[dict[str, Any]]) -> None:
        super().__init__(run_dir)
        self.sink = sink

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = super().append(kind, **fields)
        self.sink.put(event)
        return event


def _sigkill(emu: EmulatedBoard) -> None:
    """Crash the board: SIGKILL its QEMU (no shutdown, the socket just dies), then tidy up."""
    emu.process.kill()
    emu.process.wait()
    emu.stop()


class _Saboteur:
    """Kills each victim board once the engine has logged enough arrivals and the victim holds a task,
    and plugs it back in at the same URL once the engine has logged the loss; driven by the events."""

    def __init__(self, pending: list[tuple[int, int]], names: list[str], emus: list[EmulatedBoard], board: Board,
                 elf: Path) -> None:
        self.pending = pending  # (board index, arrivals after which to kill it), in kill order
        self.names, self.emus, self.board, self.elf = names, emus, board, elf
        self.holding: dict[str, int] = {}  # device -> task it holds now (dispatched, no outcome yet)
        self.arrivals = 0
        self.waiting_loss: dict[str, int] = {}  # killed device -> its board index, until the engine logs a loss
        self.kills: list[dict[str, Any]] = []

    def see(self, ev: dict[str, Any]) -> None:
        kind = ev["kind"]
        if kind == "dispatch":
            self.holding[ev["device"]] = ev["task"]
        elif kind in ("arrival", "rejection", "lost"):
            if self.holding.get(ev.get("device")) == ev.get("task"):
                del self.holding[ev["device"]]
            self.arrivals += kind == "arrival"
        if kind == "lost" and ev["device"] in self.waiting_loss:
            # the engine has recorded the crash: plug the board back in at the same URL (an
            # update read just before the kill can still arrive; then the next task is lost)
            i = self.waiting_loss.pop(ev["device"])
            old = self.emus[i]
            self.emus[i] = start_qemu(self.board, self.elf, name=self.names[i], port=old.port, tty=old.tty)
        if self.pending and self.arrivals >= self.pending[0][1] and self.names[self.pending[0][0]] in self.holding:
            self._kill(ev)

    def _kill(self, ev: dict[str, Any]) -> None:
        i, _ = self.pending.pop(0)
        name = self.names[i]
        task = self.holding[name]
        _sigkill(self.emus[i])
        self.kills.append({"device": name, "task": task, "after_arrivals": self.arrivals, "seq": ev["seq"],
                           "t": ev["t"], "link": "tty" if self.emus[i].tty is not None else "socket"})
        self.waiting_loss[name] = i
        log.info("killed %s holding task %d after %d arrivals (t %.2f s)", name, task, self.arrivals, ev["t"])


def test_two_of_eight_killed_boards_rejoin_and_the_run_still_reaches_its_target(tmp_path: Path,
                                                                               tmp_path_factory) -> None:
    test_started = time.monotonic()
    rng = random.Random(SEED)
    # one victim reached through a tty, one through a socket, in a seeded order
    victims = [rng.choice(sorted(TTY_BOARDS)), rng.choice(sorted(set(range(BOARDS)) - TTY_BOARDS))]
    rng.shuffle(victims)
    kill_after = [rng.randint(lo, hi) for lo, hi in KILL_WINDOWS]
    board = get_board("mps2-an386")
    names = [f"fault{i}" for i in range(BOARDS)]
    emus: list[EmulatedBoard] = []
    # native-USB boards: a board that dies takes its tty with it (the host reads a hangup at once)
    ttys = {i: PtyLink(names[i], link=tmp_path / "ttys" / names[i], hangup=True) for i in sorted(TTY_BOARDS)}
    prepared: dict[str, Any] = {}

    def prepare() -> None:
        """Plan and shard the run while the main thread builds the firmware (make)."""
        try:
            prepared["setup"] = prepare_run("har_cnn", [DeviceSpec(n, "", board.name) for n in names], "subset",
                                            work_dir=tmp_path / "run", max_windows=MAX_WINDOWS, start="fresh-head",
                                            seed=0)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            prepared["error"] = exc

    sink: queue.Queue[dict[str, Any]] = queue.Queue()
    run_dir = tmp_path / "events"
    outcome: dict[str, Any] = {}
    preparer = threading.Thread(target=prepare, name="prepare")
    preparer.start()
    try:
        elf = run_firmware(tmp_path_factory, board.name).elf
        preparer.join()
        if "error" in prepared:
            raise prepared["error"]
        setup = prepared["setup"]
        # Boot only now, from the main thread: start_qemu forks with a preexec_fn, which deadlocked
        # (once in ~10 runs) while the preparing thread was inside TensorFlow/numpy; and QEMU's
        # PR_SET_PDEATHSIG ties each board to the thread that started it, so not from a helper thread.
        for i, n in enumerate(names):
            emus.append(start_qemu(board, elf, name=n, tty=ttys.get(i)))
        for e in emus:
            wait_ready(e)
        # the target is on the float master; the deployable model's LiteRT score is not what this
        # test is about, and it would hold the engine's thread (no dispatching) for it every version
        setup.int8_score = None
        devices = [DeviceSpec(e.name, e.url, board.name) for e in emus]
        events = _TappedLog(run_dir, sink)
        engine = Engine(setup, devices, get_strategy("ftte", buffer_size=BOARDS), events,
                        training=LocalTraining(epochs=EPOCHS, lr=LR), seed=0,
                        limits=Limits(target_metric=TARGET, max_versions=MAX_VERSIONS, max_seconds=MAX_SECONDS),
                        max_staleness=MAX_STALENESS, backoff_s=0.25, retries=5, device_timeout_s=600.0)

        def train() -> None:
            try:
                outcome["run"] = engine.run()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                outcome["error"] = exc
            finally:
                events.close()
                sink.put({"kind": "_done"})

        setup_seconds = time.monotonic() - test_started
        runner = threading.Thread(target=train, name="engine", daemon=True)
        runner.start()
        saboteur = _Saboteur(list(zip(victims, kill_after, strict=True)), names, emus, board, elf)
        while True:
            ev = sink.get(timeout=MAX_SECONDS + 60)
            if ev["kind"] == "_done":
                break
            saboteur.see(ev)
        runner.join(timeout=300)
        assert not runner.is_alive()
    finally:
        preparer.join()
        for e in emus:
            e.stop()
        for tty in ttys.values():
            tty.close()
    if "error" in outcome:
        raise outcome["error"]
    run: RunResult = outcome["run"]
    evs = list(read_events(run_dir))
    summary = summarize(evs, target_metric=TARGET)

    # the run reached its target, with both kills inside it
    assert run.reached_target and summary["reached_target"], (run.final_metric, run.versions)
    kills = saboteur.kills
    assert len(kills) == 2 and not saboteur.pending and not saboteur.waiting_loss, kills
    assert sorted(k["link"] for k in kills) == ["socket", "tty"], kills
    assert all(d.url.startswith("socket://") != (i in TTY_BOARDS) for i, d in enumerate(devices)), devices

    _assert_every_task_accounted_once(evs, summary, run, engine)
    _assert_killed_boards_came_back(evs, kills)

    figures = {"versions": run.versions, "final_accuracy": round(run.final_metric, 4),
               "setup_seconds": round(setup_seconds, 1), "run_seconds": round(run.wall_seconds, 1),
               "provisioned_at": next(e["t"] for e in evs if e["kind"] == "evaluation"),
               "dispatched": summary["tasks_dispatched"],
               "arrived": summary["tasks_arrived"], "lost": summary["tasks_lost"],
               "lost_reasons": dict(Counter(str(e["reason"]).split(":")[0] for e in evs if e["kind"] == "lost")),
               "kills": kills}
    log.info("fault run: %s", figures)
    print(figures)


def _assert_every_task_accounted_once(evs: list[dict[str, Any]], summary: dict[str, Any], run: RunResult,
                                      engine: Engine) -> None:
    """Task accounting of the fault run: one outcome per task, each accepted update used once, stalenesses."""
    # every dispatched task has exactly one outcome, and no outcome names a task never dispatched
    dispatched = [e["task"] for e in evs if e["kind"] == "dispatch"]
    outcomes = Counter(e["task"] for e in evs if e["kind"] in ("arrival", "rejection", "lost"))
    assert len(set(dispatched)) == len(dispatched)
    assert outcomes == Counter(set(dispatched)), "a task without exactly one outcome"
    assert summary["all_tasks_accounted"] and not summary["tasks_unknown"]
    assert not summary["tasks_with_several_outcomes"]
    assert summary["tasks_dispatched"] == summary["tasks_arrived"] + summary["tasks_rejected"] + summary["tasks_lost"]
    assert summary["tasks_arrived"] == run.updates_accepted
    assert summary["tasks_lost"] == run.updates_lost + run.tasks_unfinished

    # every accepted update is in exactly one step or still in the buffer: none twice, none dropped
    arrived = {e["task"] for e in evs if e["kind"] == "arrival"}
    aggregated = [t for e in evs if e["kind"] == "aggregation" for t in e["tasks"]]
    buffered = [u.task_id for u in engine.strategy.buffer]
    assert len(aggregated) == len(set(aggregated)), "a task aggregated twice"
    assert set(aggregated) <= arrived and not set(aggregated) & set(buffered)
    assert run.updates_accepted == len(aggregated) + len(buffered)

    # a late update (a rejoined board's first, trained on an old version) is accepted with its
    # staleness, which is the global version at arrival minus the version it was trained from
    version = 0
    for e in evs:
        if e["kind"] == "aggregation":
            version = e["version"]
        elif e["kind"] == "arrival":
            assert e["staleness"] == version - e["version"] and 0 <= e["staleness"] <= MAX_STALENESS, e

    # only tasks still running when the run stopped are lost without a fault behind them
    last_work = max(e["seq"] for e in evs if e["kind"] in ("dispatch", "arrival", "aggregation"))
    assert all(e["seq"] > last_work for e in evs if e["kind"] == "lost" and e["reason"] == "run ended")


def _assert_killed_boards_came_back(evs: list[dict[str, Any]], kills: list[dict[str, Any]]) -> None:
    """Each killed board's task is lost with a reason, then it backs off, rejoins and delivers again.

    Adds to each kill record what happened after it (reason of the loss, when the board was back).
    """
    for k in kills:
        name = k["device"]
        after_kill = [e for e in evs if e.get("device") == name and e["seq"] > k["seq"]]
        lost = next(e for e in after_kill if e["kind"] == "lost")
        assert lost["reason"] and lost["reason"] != "run ended", lost
        after = [e for e in after_kill if e["seq"] > lost["seq"]]
        backoff = next(e for e in after if e["kind"] == "device_state")
        assert backoff["state"] == "backoff" and backoff["reason"], backoff
        assert any(e["kind"] == "device_state" and e["state"] == "idle" for e in after), name
        # back after the restart: provisioned again from scratch and delivering accepted updates
        back = [e for e in after if e["kind"] == "arrival"]
        assert back, f"{name} never delivered after its restart"
        k.update(lost_reason=lost["reason"].split(" (")[0], back_at_version=back[0]["version"],
                 back_staleness=back[0]["staleness"], back_t=back[0]["t"])
