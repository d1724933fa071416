"""Nothing lost across a host crash: checkpoints after every step, ``tinyfed run --resume``.

The end-to-end test SIGKILLs a real ``tinyfed run`` mid-run and resumes it; the in-process tests
show that a resumed engine continues exactly where the checkpoint left it, and that resume
errors say what to do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.twin.sim import forget_sim_boards
from tinyfed.host.checkpoint import read_checkpoint
from tinyfed.host.engine import (
    HOST_RESTARTED,
    PRIVACY_BUDGET,
    Engine,
    Limits,
    LocalTraining,
    latest_checkpoint,
)
from tinyfed.host.events import EventLog, read_events, summarize
from tinyfed.host.runs import load as load_run
from tinyfed.host.setup import DeviceSpec, prepare_run
from tinyfed.host.strategies import get_strategy
from tinyfed.training.privacy import DPConfig, PrivacyAccountant

ROOT = Path(__file__).resolve().parents[1]


def _tinyfed_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tinyfed.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def _aggregations(log_path: Path) -> int:
    """Aggregation events written so far (the writer may be mid-line: a torn tail is skipped)."""
    try:
        data = log_path.read_bytes()
    except FileNotFoundError:
        return 0
    lines = data.split(b"\n")[:-1]  # the last piece is empty or a torn line
    return sum(1 for line in lines if b'"kind":"aggregation"' in line)


def _check_nothing_lost_or_applied_twice(run: Path, versions: int) -> list[dict]:
    events = list(read_events(run))
    steps = [e for e in events if e["kind"] == "aggregation"]
    # one step per version, in order: no step was taken twice, none is missing
    assert [e["version"] for e in steps] == list(range(1, versions + 1))
    applied = [t for e in steps for t in e["tasks"]]
    assert len(applied) == len(set(applied)), "an update was applied twice"
    arrived = {e["task"] for e in events if e["kind"] == "arrival"}
    assert set(applied) <= arrived
    # every accepted update is either in a step or still buffered at the end: none lost
    final = read_checkpoint(run)
    assert final is not None and final.version == versions
    buffered = {u["task_id"] for u in final.strategy_state["strategy"]["buffer"]}
    assert arrived == set(applied) | buffered and not (buffered & set(applied))
    assert sorted(final.accepted_update_ids) == sorted(
        f"{e['device']}:{e['task']}" for e in events if e["kind"] == "arrival")
    summary = summarize(events)
    assert summary["all_tasks_accounted"] and not summary["tasks_unknown"], summary
    assert summary["versions"] == versions
    return events


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_version_count_without_losing_or_repeating_updates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tmp_path / "run.toml"
    # K = 2 of 4 boards: every checkpoint after a step has tasks in flight, which the resume must account for
    config.write_text("target_accuracy = 1.0\n[strategy_params]\nbuffer_size = 2\n")
    args = ["run", "--simulate", "4", "--config", str(config), "--max-versions", "8", "--max-windows", "16",
            "--out", str(run), "--json"]
    proc = subprocess.Popen(_tinyfed_cmd(*args), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 900  # a hang bound, not a margin: the run plans har_cnn first
        while _aggregations(run / "events.jsonl") < 2:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = read_checkpoint(run)
    assert killed_at is not None and 1 <= killed_at.version < 8
    killed = load_run(run)  # `tinyfed runs` sees a run that can go on
    assert killed.status == "interrupted" and killed.resumable and not (run / "accuracy_vs_time.png").exists()

    done = subprocess.run(_tinyfed_cmd("run", "--resume", str(run), "--json"), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 1, done.stderr[-3000:]  # it stops at 8 versions, short of its target 1.0
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["versions"] == 8 and summary["resumed_from"] == killed_at.version
    # the charts, drawn at the end of the resumed run, cover the whole run: every version from 0
    assert summary["plots"] == [str(run / "accuracy_vs_time.png"), str(run / "bytes_vs_time.png")]
    resumed = load_run(run)
    assert resumed.status == "finished" and resumed.curves[0].version == list(range(9))

    events = _check_nothing_lost_or_applied_twice(run, 8)
    resumes = [e for e in events if e["kind"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["version"] == killed_at.version
    restarted = resumes[0]["in_flight"]
    assert restarted, "a checkpoint after a step with K=2 of 4 boards has tasks in flight"
    lost_by_restart = [e["task"] for e in events if e["kind"] == "lost" and e["reason"] == HOST_RESTARTED]
    assert sorted(lost_by_restart) == sorted(restarted)
    summary_log = summarize(events)
    assert summary["updates_accepted"] == summary_log["updates_accepted"]
    assert summary["bytes_up"] == summary_log["bytes_up"] and summary["bytes_down"] == summary_log["bytes_down"]


# -- in process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_board(tmp_path_factory: pytest.TempPathFactory):
    devices = [DeviceSpec("solo", "sim://mps2-an386?name=solo", "mps2-an386")]
    setup = prepare_run("har_cnn", devices, "subset", work_dir=tmp_path_factory.mktemp("setup"), max_windows=16)
    return setup, devices


def _engine(setup, devices, events: EventLog, versions: int, **kw) -> Engine:
    # one board and K = 1: a strictly sequential run, so the result is reproducible
    return Engine(setup, devices, get_strategy("ftte", buffer_size=1), events,
                  training=LocalTraining(epochs=1, lr=0.005), limits=Limits(max_versions=versions), seed=11, **kw)


def test_a_resumed_engine_continues_exactly_where_the_checkpoint_left_it(one_board, tmp_path: Path) -> None:
    setup, devices = one_board
    forget_sim_boards()
    with EventLog(tmp_path / "straight") as events:
        straight = _engine(setup, devices, events, 4).run()

    forget_sim_boards()
    run = tmp_path / "split"
    with EventLog(run) as events:
        first = _engine(setup, devices, events, 2).run()
    ck = latest_checkpoint(run)
    assert ck.version == 2 and first.versions == 2
    np.testing.assert_array_equal(ck.globals["w"], first.vector)
    assert len(ck.accepted_update_ids) == first.updates_accepted == 2
    engine_state = ck.strategy_state["engine"]
    assert engine_state["next_task"] == 2 and engine_state["in_flight"] == []
    assert [row["version"] for row in engine_state["history"]] == [0, 1, 2]

    forget_sim_boards()
    with EventLog(run) as events:
        resumed = _engine(setup, devices, events, 4, resume_from=ck)
        # the restored state is the checkpoint's, and the run_end of the first part is cut away
        rounds = resumed.rounds
        assert rounds.version == 2 and rounds.next_task == 2 and rounds.accepted == 2
        assert rounds.seen == {("solo", 0), ("solo", 1)}
        assert rounds.rng.bit_generator.state == ck.rng_state
        second = resumed.run()
    assert second.versions == 4 and second.updates_accepted == straight.updates_accepted
    np.testing.assert_array_equal(second.vector, straight.vector)
    assert [row["version"] for row in second.history] == [0, 1, 2, 3, 4]
    kinds = [e["kind"] for e in read_events(run)]
    assert kinds.count("run_start") == 1 and kinds.count("resume") == 1 and kinds.count("run_end") == 1
    _check_nothing_lost_or_applied_twice(run, 4)


def test_resume_refuses_another_strategy_and_leaves_the_log_alone(one_board, tmp_path: Path) -> None:
    setup, devices = one_board
    forget_sim_boards()
    with EventLog(tmp_path) as events:
        _engine(setup, devices, events, 1).run()
    ck = latest_checkpoint(tmp_path)
    before = (tmp_path / "events.jsonl").read_bytes()
    with EventLog(tmp_path) as events, pytest.raises(TinyfedError, match="buffer_size|parameters"):
        Engine(setup, devices, get_strategy("ftte", buffer_size=3), events, resume_from=ck)
    with EventLog(tmp_path) as events, pytest.raises(TinyfedError, match="devices"):
        Engine(setup, [DeviceSpec("other", "sim://mps2-an386?name=other", "mps2-an386")],
               get_strategy("ftte", buffer_size=1), events, resume_from=ck)
    assert (tmp_path / "events.jsonl").read_bytes() == before


def test_resume_errors_name_the_directory_or_file_and_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(TinyfedError, match="no checkpoint") as info:
        latest_checkpoint(tmp_path)
    assert info.value.fix and info.value.source == str(tmp_path)

    proc = subprocess.run(_tinyfed_cmd("run", "--resume", str(tmp_path / "nowhere")), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0 and "no such run directory" in proc.stderr and "Traceback" not in proc.stderr

    proc = subprocess.run(_tinyfed_cmd("run", "--resume", str(tmp_path), "--simulate", "2"), cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0 and "--simulate" in proc.stderr


def test_resume_of_a_damaged_checkpoint_names_the_file(one_board, tmp_path: Path) -> None:
    setup, devices = one_board
    forget_sim_boards()
    with EventLog(tmp_path) as events:
        _engine(setup, devices, events, 1).run()
    newest = max(tmp_path.glob("checkpoint-*.json"))
    newest.write_text(newest.read_text()[:40])
    (tmp_path / "config.toml").write_text("")
    (tmp_path / "devices.json").write_text(json.dumps({
        "format": 1, "source": "simulate", "count": 1, "board": "mps2-an386", "fleet": None, "max_windows": 16,
        "devices": [{"name": d.name, "url": d.url, "board": d.board} for d in devices]}))
    proc = subprocess.run(_tinyfed_cmd("run", "--resume", str(tmp_path)), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert newest.name in proc.stderr and "damaged checkpoint" in proc.stderr


def _dp_engine(setup, devices, events: EventLog, versions: int, dp: DPConfig, **kw) -> Engine:
    return Engine(setup, devices, get_strategy("ftte", buffer_size=1), events,
                  training=LocalTraining(epochs=1, lr=0.005, dp=dp), limits=Limits(max_versions=versions), seed=3,
                  norm_bound=1e4, **kw)


def test_dp_budget_stops_the_run_and_resume_keeps_epsilon(one_board, tmp_path: Path) -> None:
    """Differential privacy (docs/privacy.md): the epsilon budget ends the run, and a resume keeps
    every participation, also one dispatched after the checkpoint."""
    setup, devices = one_board
    dp = DPConfig(clip=0.05, noise=1.0, delta=1e-5)
    eps = PrivacyAccountant(dp).epsilon_of
    # a budget that allows 3 participations of the one board: the run stops at version 3 of 10
    forget_sim_boards()
    with EventLog(tmp_path / "budget") as events:
        result = _dp_engine(setup, devices, events, 10, DPConfig(0.05, 1.0, 1e-5, epsilon_budget=eps(3) + 1e-9)).run()
    assert result.versions == 3 and result.stop_reason == PRIVACY_BUDGET
    assert result.epsilon == pytest.approx(eps(3)) and result.to_dict()["delta"] == 1e-5
    evs = list(read_events(tmp_path / "budget"))
    privacy = [e for e in evs if e["kind"] == "privacy"]
    assert [e["max_participations"] for e in privacy] == [1, 2, 3]
    assert evs[-1]["kind"] == "run_end" and evs[-1]["stop_reason"] == PRIVACY_BUDGET
    arrivals = [e for e in evs if e["kind"] == "arrival"]
    assert all(e["loss"] == 0.0 and e["variance"] > 0 for e in arrivals)  # the host's variance of the noised delta

    # two versions, then a dispatch the crash lost after the checkpoint: the resume counts all three
    forget_sim_boards()
    run = tmp_path / "resume"
    with EventLog(run) as events:
        first = _dp_engine(setup, devices, events, 2, dp).run()
        events.append("dispatch", task=99, device="solo", version=2)
    assert first.epsilon == pytest.approx(eps(2))
    ck = latest_checkpoint(run)
    assert ck.strategy_state["engine"]["privacy"] == {"counts": {"solo": 2}}
    forget_sim_boards()
    with EventLog(run) as events:
        resumed = _dp_engine(setup, devices, events, 4, dp, resume_from=ck)
        assert resumed.privacy is not None and resumed.privacy.counts == {"solo": 3}
        second = resumed.run()
    assert second.versions == 4 and second.epsilon == pytest.approx(eps(5))
    # a DP run resumes only with DP
    with EventLog(run) as events, pytest.raises(TinyfedError, match="differential privacy"):
        Engine(setup, devices, get_strategy("ftte", buffer_size=1), events, norm_bound=1e4,
               resume_from=latest_checkpoint(run))
    assert np.isfinite(second.vector).all()
