"""The round loop on in-process simulated boards: every strategy runs, every dispatched task is
accounted for in the event log, and hostile updates are rejected without moving the model."""

from __future__ import annotations

import dataclasses
import struct
import threading
from collections import Counter

import numpy as np
import pytest
from _har_setup import har_subset_setup

from tinyfed.firmware_bridge.link.train_link import (
    TRAIN_RESPONSE,
    pack_update,
    unpack_update,
)
from tinyfed.firmware_bridge.twin.sim import forget_sim_boards, get_sim_board
from tinyfed.host.engine import Engine, Limits, LocalTraining
from tinyfed.host.events import EventLog, read_events, summarize
from tinyfed.host.setup import DeviceSpec, prepare_run
from tinyfed.host.strategies import get_strategy

DEVICES = 4


def _devices(tag: str) -> list[DeviceSpec]:
    return [DeviceSpec(f"{tag}{i}", f"sim://mps2-an386?name={tag}{i}", "mps2-an386") for i in range(DEVICES)]


@pytest.fixture(scope="module")
def setups(tmp_path_factory: pytest.TempPathFactory):
    devs = _devices("dev")
    # FTTE trains har_cnn's w*; the dense baselines train every layer of digits_cnn (har_cnn's
    # whole training state, 12 B per weight, does not fit a 256 KiB board)
    return {"subset": har_subset_setup(tmp_path_factory, devs),
            "dense": prepare_run("digits_cnn", devs, "dense", work_dir=tmp_path_factory.mktemp("d"), partition="iid")}


@pytest.mark.parametrize("name", ["ftte", "fedbuff", "fedavg"])
def test_every_strategy_runs_and_accounts_for_every_task(setups, name: str, tmp_path) -> None:
    forget_sim_boards()
    setup = setups["subset" if name == "ftte" else "dense"]
    strategy = get_strategy(name, ignore_extra=True, buffer_size=2, clients_per_round=DEVICES)
    with EventLog(tmp_path) as events:
        result = Engine(setup, _devices("dev"), strategy, events, training=LocalTraining(epochs=1, lr=0.005),
                        limits=Limits(max_versions=3), seed=3).run()
    summary = summarize(read_events(tmp_path))
    assert result.versions == summary["versions"] == 3
    assert summary["all_tasks_accounted"] and not summary["tasks_unknown"]
    assert not summary["tasks_with_several_outcomes"]
    assert summary["updates_accepted"] == result.updates_accepted >= (3 * 2 if name != "fedavg" else 3 * DEVICES)
    assert result.bytes_up == summary["bytes_up"] > 0 and result.bytes_down == summary["bytes_down"] > 0
    # provisioning (fragment, program, local data) is recorded once per board, apart from the tasks' bytes
    sent = len(setup.program) + sum(len(i) for i in setup.images.values()) / DEVICES + len(setup.frozen_blob or b"")
    assert result.provision_bytes_down == summary["provision_bytes_down"] > DEVICES * sent
    assert result.provision_bytes_up == summary["provision_bytes_up"] > 0
    assert np.isfinite(result.final_metric) and 0 < result.final_metric <= 1
    # FTTE moves w* (int8 updates); the baselines move every weight (float32 updates)
    assert result.vector.size == (setup.plan.trainable_params if name == "ftte" else 8858)
    per_update_up = result.bytes_up / max(1, result.updates_accepted)
    if name == "ftte":  # int8 w* against har_cnn's dense float32 update
        assert per_update_up < 0.31 * 4 * 48742
    else:  # float32, every weight
        assert per_update_up > 4 * 8858


def test_prepare_run_counts_the_windows_it_packs_for_each_device(setups) -> None:
    """``facts["local_windows"]`` (what ``tinyfed demo`` reports) is each image's sample count."""
    from tinyfed.firmware_bridge.compile.local_data import unpack

    for setup in setups.values():
        assert setup.facts["local_windows"] == {name: len(unpack(img).y) for name, img in setup.images.items()}
    assert set(setups["subset"].facts["local_windows"].values()) == {48}  # max_windows caps each user's share


def _poison(board_name: str, how: str) -> None:
    """Make one simulated board hostile: a NaN or huge scale in its int8 update, an update of the
    wrong size, or its first update sent again for every later task (replayed)."""
    board = get_sim_board("mps2-an386", board_name)
    trainer = board.trainer
    original = trainer.train
    first: list[bytes] = []

    def train(p: bytes, fragment):
        out = original(p, fragment)
        image = bytearray(trainer.update_image)
        if how in ("nan", "huge"):
            image[24:28] = struct.pack("<f", float("nan") if how == "nan" else 1e9)
        elif how == "shape":  # ten int8 values short of w*, header and length consistent
            u = unpack_update(bytes(image))
            image = bytearray(pack_update(u.version, u.n, u.loss, u.variance, u.q[:-10], u.scales, u.per_channel))
        elif how == "replay":
            first.append(bytes(image))
            image = bytearray(first[0])
        elif how == "many":  # claims 2^32 - 1 samples and no variance: the weight of the whole fleet
            image[4:8] = struct.pack("<I", 0xFFFFFFFF)
            image[12:16] = struct.pack("<f", 0.0)
        trainer.update_image = bytes(image)
        fields = list(TRAIN_RESPONSE.unpack(out))
        fields[5] = len(image)  # update_bytes: what UPDATE_READ will serve
        return TRAIN_RESPONSE.pack(*fields)

    trainer.train = train


class _AnsweredLog(EventLog):
    """The event log, counting each device's answered tasks (an arrival or a rejection) as they are recorded."""

    def __init__(self, run_dir) -> None:
        super().__init__(run_dir)
        self.answered: Counter[str] = Counter()

    def append(self, kind: str, **fields):
        if kind in ("arrival", "rejection"):
            self.answered[fields["device"]] += 1
        return super().append(kind, **fields)


#: Hostile runs stop once the hostile board has answered this many tasks (a replay needs a second
#: one: its first update is a true one). A version count guarantees nothing: the other boards may
#: make any number of versions while it trains.
HOSTILE_ANSWERS = 2


@pytest.mark.parametrize("how,reason", [("nan", "non_finite"), ("huge", "norm_too_large"), ("shape", "bad_shape"),
                                        ("replay", "replay"), ("many", "too_many_samples")])
def test_hostile_updates_are_rejected_and_do_not_move_the_model(setups, tmp_path, how: str, reason: str) -> None:
    forget_sim_boards()
    devs = _devices("dev")
    # connect once so the board exists, then poison it
    get_sim_board("mps2-an386", devs[0].name)
    _poison(devs[0].name, how)
    strategy = get_strategy("ftte", buffer_size=1)

    def progress(row: dict) -> None:  # called after every handled outcome: stop once the hostile board answered twice
        if events.answered[devs[0].name] >= HOSTILE_ANSWERS:
            engine.limits = dataclasses.replace(engine.limits, max_versions=engine.rounds.version)

    with _AnsweredLog(tmp_path) as events:
        # max_versions only bounds a run whose hostile board never answers (it is not reached otherwise)
        engine = Engine(setups["subset"], devs, strategy, events, training=LocalTraining(epochs=1, lr=0.005),
                        limits=Limits(max_versions=60), seed=5, progress=progress)
        result = engine.run()
    evs = list(read_events(tmp_path))
    assert result.versions < 60, "the hostile board did not answer two tasks"
    rejected = [e for e in evs if e["kind"] == "rejection"]
    assert rejected and all(e["device"] == devs[0].name and e["reason"] == reason for e in rejected)
    hostile = {e["task"] for e in evs if e["kind"] in ("arrival", "rejection") and e["device"] == devs[0].name}
    assert len(hostile) >= HOSTILE_ANSWERS
    if how == "replay":  # its first update is a true one; every later copy is refused
        assert len(hostile) == len(rejected) + 1
    else:
        assert {e["task"] for e in rejected} == hostile
    steps = [e for e in evs if e["kind"] == "aggregation"]
    assert all(t not in {e["task"] for e in rejected} for s in steps for t in s["tasks"])
    assert np.all(np.isfinite(result.vector))
    assert summarize(evs)["all_tasks_accounted"]


def test_an_update_older_than_the_staleness_bound_is_rejected(setups, tmp_path) -> None:
    """A slow board's update arrives after the model moved on: beyond max_staleness it is refused."""
    forget_sim_boards()
    devs = _devices("dev")
    slow = get_sim_board("mps2-an386", devs[0].name)
    moved_on, trained = threading.Event(), threading.Event()
    original = slow.trainer.train

    def train(p: bytes, fragment):
        assert moved_on.wait(timeout=300)  # held until the others have made two versions (the bound: a hang)
        try:
            return original(p, fragment)
        finally:
            trained.set()

    slow.trainer.train = train

    def progress(row: dict) -> None:
        if row.get("kind", "evaluation") == "evaluation" and row["version"] >= 2 and not moved_on.is_set():
            moved_on.set()
            assert trained.wait(timeout=300)  # the engine steps no further until the slow update is on its way

    with EventLog(tmp_path) as events:
        Engine(setups["subset"], devs, get_strategy("ftte", buffer_size=1), events,
               training=LocalTraining(epochs=1, lr=0.005), limits=Limits(max_versions=10), seed=5, max_staleness=1,
               progress=progress).run()
    evs = list(read_events(tmp_path))
    late = [e for e in evs if e["kind"] == "rejection" and e["device"] == devs[0].name]
    assert late and late[0]["reason"] == "too_stale"
    assert summarize(evs)["all_tasks_accounted"]


def test_an_unexpected_error_in_a_worker_is_a_lost_task_and_the_device_comes_back(setups, tmp_path,
                                                                                 monkeypatch) -> None:
    """A bug-shaped error (not a link error) while provisioning or mid-task must not kill the
    device's worker thread: the engine would wait on it forever, or keep the device busy with a
    task that never ends. It is recorded like any failure: lost or backoff, with the reason."""
    import threading

    from tinyfed.firmware_bridge.link.client import BoardClient

    forget_sim_boards()
    devs = _devices("dev")
    faults = {"load_data": devs[1].name, "read_update": devs[2].name}
    fired: set[str] = set()

    def failing(method: str):
        original = getattr(BoardClient, method)

        def wrapper(self, *args, **kwargs):
            if self.name == faults[method] and method not in fired:
                fired.add(method)
                raise RuntimeError(f"injected fault in {method}")
            return original(self, *args, **kwargs)

        return wrapper

    for method in faults:
        monkeypatch.setattr(BoardClient, method, failing(method))
    result = {}
    with EventLog(tmp_path) as events:
        engine = Engine(setups["subset"], devs, get_strategy("ftte", buffer_size=2), events,
                        training=LocalTraining(epochs=1, lr=0.005), limits=Limits(max_versions=6), seed=3,
                        backoff_s=0.01)
        runner = threading.Thread(target=lambda: result.update(run=engine.run()), daemon=True)
        runner.start()
        runner.join(timeout=600)  # a hang bound: the run takes seconds
        assert not runner.is_alive(), "the engine waits for a worker that died"
    assert fired == set(faults)
    evs = list(read_events(tmp_path))
    summary = summarize(evs)
    assert result["run"].versions == 6
    assert summary["all_tasks_accounted"] and not summary["tasks_unknown"]
    provision = next(e for e in evs if e["kind"] == "device_state" and e["device"] == devs[1].name
                     and e["state"] != "provisioning")
    assert provision["state"] == "backoff" and "injected fault in load_data" in provision["reason"]
    lost = next(e for e in evs if e["kind"] == "lost" and e["device"] == devs[2].name)
    assert lost["reason"] == "RuntimeError: injected fault in read_update"
    # the board said it was uploading when the read failed, and its next task provisions it again first
    states = [(e["seq"], e["state"]) for e in evs if e["kind"] == "device_state" and e["device"] == devs[2].name]
    assert [s for q, s in states if q < lost["seq"]][-1] == "uploading"
    after = [s for q, s in states if q > lost["seq"]]
    assert after[:5] == ["backoff", "idle", "training", "provisioning", "training"], after
    for name, since in ((devs[1].name, provision["seq"]), (devs[2].name, lost["seq"])):
        assert any(e["kind"] == "arrival" and e["device"] == name and e["seq"] > since for e in evs), name


def test_a_fedavg_deadline_closes_the_round_on_the_wall_clock(setups, tmp_path) -> None:
    """One board never answers: without a deadline the round would wait for it; with one the engine
    closes the round at the deadline with the other boards' updates and goes on."""
    forget_sim_boards()
    devs = _devices("dev")
    held = get_sim_board("mps2-an386", devs[0].name)  # the board exists before the engine connects to it
    original, release = held.trainer.train, threading.Event()

    def train(p: bytes, fragment):
        release.wait(timeout=600)
        return original(p, fragment)

    held.trainer.train = train
    strategy = get_strategy("fedavg", clients_per_round=DEVICES, round_deadline_s=2.0)
    result: dict = {}
    try:
        with EventLog(tmp_path) as events:
            engine = Engine(setups["dense"], devs, strategy, events, training=LocalTraining(epochs=1, lr=0.005),
                            limits=Limits(max_versions=2), seed=3)
            runner = threading.Thread(target=lambda: result.update(run=engine.run()), daemon=True)
            runner.start()
            runner.join(timeout=600)  # a hang bound: without the deadline the run would wait for the held board
            assert not runner.is_alive(), "the round waited for the board that never answers"
    finally:
        release.set()
    evs = list(read_events(tmp_path))
    assert result["run"].versions == 2
    deadlines = [e for e in evs if e["kind"] == "deadline"]
    assert deadlines and deadlines[0]["version"] == 0
    first = next(e for e in evs if e["kind"] == "aggregation")
    assert first["seq"] > deadlines[0]["seq"] and 1 <= first["updates"] < DEVICES  # closed with what arrived
    gap = first["t"] - next(e for e in evs if e["kind"] == "dispatch")["t"]
    assert 2.0 <= gap < 30.0
    assert not any(e["kind"] == "arrival" and e["device"] == devs[0].name for e in evs)
    assert summarize(evs)["all_tasks_accounted"]


def _mute_board_url() -> tuple[object, str]:
    """A TCP listener that accepts a link and never answers: a board that hangs before HELLO."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    return server, f"socket://127.0.0.1:{server.getsockname()[1]}"


def test_a_mute_board_delays_no_other_boards_first_task(setups, tmp_path) -> None:
    """Boards are taken as each finishes provisioning: the others train while a mute one still
    waits for its HELLO (it used to hold every board's first task until its link gave up)."""
    forget_sim_boards()
    server, url = _mute_board_url()
    devices = _devices("dev")
    devices[0] = DeviceSpec("dev0", url, "mps2-an386")  # first in line, as the old in-order wait met it
    try:
        with EventLog(tmp_path) as events:
            result = Engine(setups["subset"], devices, get_strategy("ftte", ignore_extra=True, buffer_size=2),
                            events, training=LocalTraining(epochs=1, lr=0.005), limits=Limits(max_versions=2),
                            seed=3, retries=0).run()
    finally:
        server.close()  # type: ignore[attr-defined]
    log = list(read_events(tmp_path))
    first_dispatch = next(e["seq"] for e in log if e["kind"] == "dispatch")
    mute_done = [e["seq"] for e in log if e["kind"] == "device_state" and e["device"] == "dev0"
                 and e["state"] != "provisioning"]
    assert result.versions == 2 and all(first_dispatch < seq for seq in mute_done), (first_dispatch, mute_done)
    assert all(e["device"] != "dev0" for e in log if e["kind"] == "dispatch")


def test_the_time_limit_holds_while_boards_are_still_provisioning(setups, tmp_path) -> None:
    forget_sim_boards()
    server, url = _mute_board_url()
    devices = [DeviceSpec("dev0", url, "mps2-an386")]
    try:
        with EventLog(tmp_path) as events:
            result = Engine(setups["subset"], devices, get_strategy("ftte", ignore_extra=True, buffer_size=1),
                            events, limits=Limits(max_seconds=0.5), retries=0).run()
    finally:
        server.close()  # type: ignore[attr-defined]
    log = list(read_events(tmp_path))
    assert result.versions == 0 and log[-1]["kind"] == "run_end"
    # the run ended on its limit while the board was still loading, not when its link gave up
    assert [e["state"] for e in log if e["kind"] == "device_state"] == ["provisioning"]


def test_an_update_header_claiming_gigabytes_is_refused_before_it_is_read(setups, tmp_path) -> None:
    """A board whose update header claims 3e9 values: the host reads no further, the task is lost
    with the reason, the board backs off, and the run goes on with the others."""
    forget_sim_boards()
    devs = _devices("dev")
    board = get_sim_board("mps2-an386", devs[0].name)
    trainer = board.trainer
    original = trainer.train

    def train(p: bytes, fragment):
        out = original(p, fragment)
        image = bytearray(trainer.update_image)
        image[16:20] = struct.pack("<I", 3_000_000_000)  # elements
        trainer.update_image = bytes(image)
        fields = list(TRAIN_RESPONSE.unpack(out))
        fields[5] = 20 + 3_000_000_000 + 4 * int(struct.unpack_from("<H", image, 20)[0])  # consistent with TRAIN
        return TRAIN_RESPONSE.pack(*fields)

    trainer.train = train

    class _WatchedLog(EventLog):  # the run stops once the hostile board's task has ended, not on a count
        def append(self, kind: str, **fields):
            if kind == "lost" and fields.get("device") == devs[0].name:
                engine.limits = dataclasses.replace(engine.limits, max_versions=engine.rounds.version)
            return super().append(kind, **fields)

    with _WatchedLog(tmp_path) as events:
        # max_versions only bounds a run whose hostile board never gets a task
        engine = Engine(setups["subset"], devs, get_strategy("ftte", buffer_size=2), events,
                        training=LocalTraining(epochs=1, lr=0.005), limits=Limits(max_versions=60), seed=5)
        result = engine.run()
    lost = [e for e in read_events(tmp_path) if e["kind"] == "lost" and e["device"] == devs[0].name
            and e["reason"] != "run ended"]
    assert lost and "claims 3,000,000,000 values" in lost[0]["reason"], lost
    assert result.versions < 60 and np.all(np.isfinite(result.vector))


#: A hang bound on the authentication runs below, which stop on their own once they have shown their point.
AUTH_RUN_BOUND_S = 600.0


def test_a_board_failing_authentication_is_rejected_by_reason_and_dropped(setups, tmp_path, monkeypatch) -> None:
    """Issue 18: a board that fails authentication is a ``rejection`` event with its reason, backs off
    and is dropped like any failing board, and nothing it sent is aggregated; the result and the
    summary count rejections by reason. dev1 is never in the key store (every HELLO: unknown_device);
    dev2's first update carries a bad update tag (bad_update_mac), after which it delivers. The run goes
    on with the others."""
    from tinyfed.firmware_bridge.link.client import BoardClient
    from tinyfed.firmware_bridge.link.errors import AuthenticationFailed, UnknownDevice

    forget_sim_boards()
    devs = _devices("dev")
    # an earlier test's run may still have a worker finishing a task on its dev2: it must not meet the
    # patched methods below (it would take the one forged update)
    for thread in threading.enumerate():
        if thread.name.startswith("tinyfed-dev"):
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{thread.name} of an earlier run never ended"
    hello, read_update = BoardClient.hello, BoardClient.read_update
    forged: list[str] = []

    def fake_hello(self, *args, **kwargs):
        if self.name == devs[1].name:
            raise UnknownDevice("00" * 16, device=self.name, key_store="the test's store")
        return hello(self, *args, **kwargs)

    def fake_read_update(self, *args, **kwargs):
        if self.name == devs[2].name and not forged:
            forged.append(self.name)
            raise AuthenticationFailed("bad_update_mac", "the update tag does not match", device=self.name,
                                       command="UPDATE_READ")
        return read_update(self, *args, **kwargs)

    monkeypatch.setattr(BoardClient, "hello", fake_hello)
    monkeypatch.setattr(BoardClient, "read_update", fake_read_update)
    result = {}

    def progress(row: dict) -> None:  # stop once dev1 is dropped and dev2 delivered after its forged update
        if engine.state[devs[1].name].state == "dropped" and events.answered[devs[2].name] >= 2:
            engine.limits = dataclasses.replace(engine.limits, max_versions=engine.rounds.version)

    with _AnsweredLog(tmp_path) as events:
        # max_seconds only bounds a run that never meets the stop above (a busy host may provision a board late)
        engine = Engine(setups["subset"], devs, get_strategy("ftte", buffer_size=1), events,
                        training=LocalTraining(epochs=1, lr=0.005), limits=Limits(max_seconds=AUTH_RUN_BOUND_S),
                        seed=3, backoff_s=0.01, retries=2, progress=progress)
        runner = threading.Thread(target=lambda: result.update(run=engine.run()), daemon=True)
        runner.start()
        runner.join(timeout=600)  # a hang bound: the run takes seconds
        assert not runner.is_alive()
    evs = list(read_events(tmp_path))
    rejected = [e for e in evs if e["kind"] == "rejection"]
    unknown = [e for e in rejected if e["device"] == devs[1].name]
    assert unknown and all(e["reason"] == "unknown_device" for e in unknown)
    assert "task" not in unknown[0]  # refused at its first connection: no task was dispatched to it yet
    states = [e["state"] for e in evs if e["kind"] == "device_state" and e["device"] == devs[1].name]
    assert states[-1] == "dropped" and "training" in states  # retried with a task, then dropped
    assert not any(e["kind"] == "arrival" and e["device"] == devs[1].name for e in evs)
    bad = [e for e in rejected if e["device"] == devs[2].name]
    assert [e["reason"] for e in bad] == ["bad_update_mac"] and "task" in bad[0], \
        [e for e in evs if e.get("device") == devs[2].name and e["kind"] != "bytes"]
    assert "AuthenticationFailed" in bad[0]["message"]
    aggregated = {t for e in evs if e["kind"] == "aggregation" for t in e["tasks"]}
    assert not aggregated & {e.get("task") for e in rejected}
    assert any(e["kind"] == "arrival" and e["device"] == devs[2].name for e in evs)  # it delivered afterwards
    run = result["run"]
    assert run.wall_seconds < AUTH_RUN_BOUND_S
    assert run.rejections == {"unknown_device": len(unknown), "bad_update_mac": 1}
    assert run.to_dict()["rejection_reasons"] == run.rejections
    summary = summarize(evs)
    assert summary["rejection_reasons"] == run.rejections and summary["updates_rejected"] == run.updates_rejected
    assert summary["all_tasks_accounted"] and not summary["tasks_unknown"]


def test_a_program_pretending_to_be_a_board_gets_nothing_accepted(setups, tmp_path) -> None:
    """Two programs on the link answer HELLO as boards (issue 18): one with the device id of a board this
    host provisioned but without its key (it speaks the protocol perfectly, under a key of its own), one
    with an id the host never provisioned. The host sends neither anything but HELLO and the one request
    that confirms a session, records each refusal as a ``rejection`` with its reason, drops them, and
    trains on with the real boards."""
    from fake_board import FakeBoard

    from tinyfed.firmware_bridge.link.keys import DeviceKey, KeyStore

    forget_sim_boards()
    victim = KeyStore().provision("victim")  # a real board's identity, known to the host
    real = _devices("dev")[:2]
    impostor = DeviceKey(victim.device_id, DeviceKey.generate().key, "impostor")
    with FakeBoard("honest", key=impostor) as known_id, FakeBoard("honest", key=DeviceKey.generate()) as made_up:
        devs = [*real, DeviceSpec("dev2", known_id.url, "mps2-an386"), DeviceSpec("dev3", made_up.url, "mps2-an386")]

        def progress(row: dict) -> None:  # stop once both impostors are dropped and the real boards trained on
            if all(engine.state[n].state == "dropped" for n in ("dev2", "dev3")) and engine.rounds.version >= 2:
                engine.limits = dataclasses.replace(engine.limits, max_versions=engine.rounds.version)

        with EventLog(tmp_path) as events:
            # max_seconds only bounds a run that never meets the stop above
            engine = Engine(setups["subset"], devs, get_strategy("ftte", buffer_size=1), events,
                            training=LocalTraining(epochs=1, lr=0.005), limits=Limits(max_seconds=AUTH_RUN_BOUND_S),
                            seed=3, backoff_s=0.01, retries=1, progress=progress)
            result = engine.run()
        asked = known_id.requests + made_up.requests
    evs = list(read_events(tmp_path))
    reasons = {name: {e["reason"] for e in evs if e["kind"] == "rejection" and e["device"] == name}
               for name in ("dev2", "dev3")}
    assert reasons == {"dev2": {"bad_mac"}, "dev3": {"unknown_device"}}
    states = {name: [e["state"] for e in evs if e["kind"] == "device_state" and e["device"] == name]
              for name in ("dev2", "dev3")}
    assert all(s[-1] == "dropped" for s in states.values()), states
    assert not any(e["kind"] == "arrival" and e["device"] in ("dev2", "dev3") for e in evs)
    assert set(asked) <= {"HELLO", "STATS"}, asked  # no weights, program, data or command reached them
    assert result.versions >= 2 and result.wall_seconds < AUTH_RUN_BOUND_S
    assert result.updates_accepted >= result.versions
    assert set(result.rejections) == {"bad_mac", "unknown_device"}
    assert summarize(evs)["all_tasks_accounted"]
    from tinyfed.web.reader import DirReader  # the web dashboard shows them like the update checks' rejections

    page = DirReader(tmp_path)
    page.refresh()
    assert page.snapshot()["rejection_reasons"] == result.rejections
    rows = {row["name"]: row for row in page.boards()["rows"]}
    assert rows["dev2"]["reasons"] == {"bad_mac": result.rejections["bad_mac"]} and rows["dev2"]["accepted"] == 0
