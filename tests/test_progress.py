"""Progress on the long steps and the event stream: ``run``'s per-board upload progress and
``--jsonl``, the richer events (device states, aggregation weights), ``simulate``'s live
``events.jsonl`` and ``--jsonl``.

One ``run`` (har_cnn on 2 sim:// boards, 2 versions) and one ``simulate`` (digits_cnn, 20 clients,
3 versions) are shared by the module's tests: planning is the cost (about 10 s each).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from tinyfed.cli import cli
from tinyfed.commands.console import RunView, StudyProgress, UploadProgress
from tinyfed.host.events import STUDY_KINDS, StudyLog, read_events, summarize


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``tinyfed run --simulate 2 --jsonl`` on a pipe (CliRunner), with the upload rows the view got."""
    from tinyfed.firmware_bridge.twin.sim import forget_sim_boards

    rows: list[dict[str, Any]] = []
    original = UploadProgress.update

    def record(self: UploadProgress, row: dict[str, Any]) -> None:
        rows.append(dict(row))
        original(self, row)

    out = tmp_path_factory.mktemp("run") / "r"
    forget_sim_boards()
    mp = pytest.MonkeyPatch()
    mp.setattr(UploadProgress, "update", record)
    try:
        result = CliRunner().invoke(cli, ["run", "--simulate", "2", "--max-versions", "2", "--max-windows", "16",
                                          "--out", str(out), "--jsonl"])
    finally:
        mp.undo()
    return {"result": result, "out": out, "rows": rows}


def test_run_on_a_pipe_says_each_boards_provisioning_with_its_bytes_and_rate(jsonl_run) -> None:
    result, out, rows = jsonl_run["result"], jsonl_run["out"], jsonl_run["rows"]
    assert result.exit_code in (0, 1), result.output
    provisioned = {e["device"]: e["n"] for e in read_events(out)
                   if e["kind"] == "bytes" and e.get("what") == "provision" and e["direction"] == "down"}
    assert sorted(provisioned) == ["sim0", "sim1"]
    assert "provisioning the boards (fragment, training program, local data) ..." in result.stderr
    for device, n in provisioned.items():
        line = next(ln for ln in result.stderr.splitlines() if ln.startswith(f"provisioned {device}: "))
        assert f"{n:,} B in " in line and "/s)" in line, line
    # the link's chunk callback reached the view: per board, bytes rising to the board's whole upload
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_device[row["device"]].append(row)
    for device, seen in by_device.items():
        uploads = [r for r in seen if r["kind"] == "provision"]
        assert uploads and {r["what"] for r in uploads} == {"fragment", "program", "data"}, device
        done = [r["done"] for r in uploads]
        assert done == sorted(done) and done[-1] == uploads[-1]["total"]
        assert uploads[-1]["total"] <= provisioned[device]  # the payload; the wire adds framing
        assert seen[-1]["kind"] == "provisioned" and seen[-1]["error"] is None


def test_run_jsonl_streams_the_event_log_from_run_start_to_run_end(jsonl_run) -> None:
    result, out = jsonl_run["result"], jsonl_run["out"]
    streamed = [json.loads(line) for line in result.stdout.splitlines()]
    assert streamed[0]["kind"] == "run_start" and streamed[-1]["kind"] == "run_end"
    seqs = [e["seq"] for e in streamed]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0
    assert streamed == list(read_events(out))  # the same objects as events.jsonl, nothing else on stdout
    assert f"run directory {out}" in result.stderr


def test_device_states_follow_each_board_through_provisioning_training_and_upload(jsonl_run) -> None:
    events = list(read_events(jsonl_run["out"]))
    for device in ("sim0", "sim1"):
        states = [e["state"] for e in events if e["kind"] == "device_state" and e["device"] == device]
        assert states[:2] == ["provisioning", "idle"], states
        # then each task: training, uploading (the host reads the update), idle again
        rest = states[2:]
        assert rest, states
        for i in range(0, len(rest), 3):  # the last task may still run when the run stops
            chunk = rest[i:i + 3]
            assert chunk == ["training", "uploading", "idle"][:len(chunk)], rest
    # a dispatch comes before its board's "training", an arrival after its "uploading"
    for e in events:
        if e["kind"] == "arrival":
            before = [x for x in events if x["seq"] < e["seq"] and x.get("device") == e["device"]
                      and x["kind"] == "device_state"]
            assert before[-1]["state"] == "uploading"
    summary = summarize(events)
    assert summary["all_tasks_accounted"] and summary["versions"] == 2


def test_aggregations_carry_normalised_weights_staleness_and_the_buffer_size(jsonl_run) -> None:
    events = list(read_events(jsonl_run["out"]))
    steps = [e for e in events if e["kind"] == "aggregation"]
    assert [e["version"] for e in steps] == [1, 2]
    arrivals = {e["task"]: e for e in events if e["kind"] == "arrival"}
    for step in steps:
        assert len(step["weights"]) == len(step["staleness"]) == step["updates"] == len(step["tasks"])
        assert sum(step["weights"]) == pytest.approx(1.0, abs=1e-5)
        assert all(w == round(w, 6) and w > 0 for w in step["weights"])
        assert all(isinstance(s, int) and s >= 0 for s in step["staleness"])
        assert step["buffer_size"] == 2  # FTTE's K = min(10, 2 boards)
        # each update's staleness at the step is at least its staleness when it arrived
        for task, s in zip(step["tasks"], step["staleness"], strict=True):
            assert s >= arrivals[task]["staleness"]


def test_json_and_jsonl_together_are_a_usage_error() -> None:
    for command in (["run", "--simulate", "2"], ["simulate"], ["demo", "--simulate"]):
        result = CliRunner().invoke(cli, [*command, "--json", "--jsonl"])
        assert result.exit_code == 2, (command, result.output)
        assert "--json" in result.stderr and "--jsonl" in result.stderr


def test_upload_bars_on_a_terminal_show_bytes_and_rate() -> None:
    view = UploadProgress()
    buf = io.StringIO()
    view.err = Console(file=buf, force_terminal=True, width=120)
    view.update({"kind": "provision", "device": "sim0", "what": "data", "done": 600_000, "total": 1_200_000})
    view.update({"kind": "provision", "device": "sim0", "what": "data", "done": 1_200_000, "total": 1_200_000})
    view.update({"kind": "provisioned", "device": "sim0", "bytes": 1_230_000, "seconds": 2.0, "error": None})
    view.close()
    text = buf.getvalue()
    assert "provisioning sim0" in text and "1.2/1.2 MB" in text, text
    assert UploadProgress.line({"device": "d", "bytes": 2 * 1024 * 1024, "seconds": 2.0, "error": None}) == \
        "provisioned d: 2,097,152 B in 2.0 s (1.00 MiB/s)"


def test_the_live_view_waits_for_the_boards_and_never_shows_a_frozen_nan() -> None:
    """While boards are provisioned the view shows their bars, not a live view stuck at version 0."""
    from tinyfed.host.dashboard import Dashboard

    board = Dashboard("ftte", 0.85, 2)
    console = Console(record=True, width=110)
    console.print(board.render())
    assert "nan" not in console.export_text()
    with RunView(board, stream=True) as view:
        view.progress({"kind": "provision", "device": "sim0", "what": "data", "done": 1, "total": 2})
        assert view.provisioning
        view.progress({"kind": "tick", "version": 0, "t": 1.0, "devices": {"idle": 1, "provisioning": 1}})
        assert view.provisioning  # one board trains while the other still loads: the bars stay
        view.progress({"kind": "tick", "version": 0, "t": 1.0, "devices": {"idle": 2}, "provisioned": True})
        assert not view.provisioning and view.live is None  # --jsonl: no live view on stdout


@pytest.fixture(scope="module")
def jsonl_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sim") / "s"
    result = CliRunner().invoke(cli, ["simulate", "--model", "digits_cnn", "--count", "20", "--max-versions", "3",
                                      "--strategies", "ftte,fedbuff@subset", "--out", str(out), "--jsonl"])
    return {"result": result, "out": out}


def test_simulate_streams_its_events_and_writes_them_live_to_out(jsonl_study) -> None:
    result, out = jsonl_study["result"], jsonl_study["out"]
    assert result.exit_code == 0, result.output
    streamed = [json.loads(line) for line in result.stdout.splitlines()]
    assert streamed == list(read_events(out))  # stdout and DIR/events.jsonl: the same objects
    kinds = [e["kind"] for e in streamed]
    assert kinds[0] == "study_start" and kinds[-1] == "study_end" and set(kinds) <= set(STUDY_KINDS)
    assert [e["seq"] for e in streamed] == list(range(len(streamed)))
    start = streamed[0]
    assert start["strategies"] == ["ftte", "fedbuff@subset"] and start["clients"] == 20
    assert start["model"] == "digits_cnn" and start["seed"] == 0 and start["target_accuracy"] == 0.75
    legs = [e for e in streamed if e["kind"] == "leg"]
    assert [e["name"] for e in legs] == ["target", "horizon"]
    for strategy in ("ftte", "fedbuff@subset"):
        evaluations = [e for e in streamed if e["kind"] == "evaluation" and e["strategy"] == strategy]
        assert [e["version"] for e in evaluations[:4]] == [0, 1, 2, 3]
        assert all(0 <= e["accuracy"] <= 1 and "bytes_total" in e for e in evaluations)
        ends = [e for e in streamed if e["kind"] == "strategy_end" and e["strategy"] == strategy]
        assert ends and ends[-1]["result"]["versions"] >= 3
    files = streamed[-1]["files"]
    assert str(out / "summary.csv") in files and str(out / "events.jsonl") in files
    # progress and phases on stderr: each slow step and each leg said
    assert "building the study" in result.stderr and "planning digits_cnn (subset payload)" in result.stderr
    assert "-- to the target" in result.stderr and "-- to the common horizon" in result.stderr


def test_study_log_refuses_unknown_kinds_and_missing_fields(tmp_path: Path) -> None:
    heard: list[dict[str, Any]] = []
    with StudyLog(tmp_path) as log:
        log.listeners.append(heard.append)
        log.append("leg", name="target", text="to the target")
        with pytest.raises(ValueError, match="unknown study event kind"):
            log.append("arrival", task=1)
        with pytest.raises(ValueError, match="needs files"):
            log.append("study_end")
        with pytest.raises(ValueError, match="set by the log"):  # the checks a run's EventLog makes too
            log.append("leg", name="target", text="again", t=0.0)
    assert [e["kind"] for e in read_events(tmp_path)] == ["leg"] and heard[0]["seq"] == 0
    with StudyLog(None) as log:  # no --out: the listeners still hear every event
        assert log.append("study_end", files=[])["kind"] == "study_end" and log.path is None


def test_study_bars_on_a_terminal_show_version_time_and_accuracy() -> None:
    bars = StudyProgress(["ftte", "fedavg"], 10)
    buf = io.StringIO()
    bars.err = Console(file=buf, force_terminal=True, width=140)
    bars.leg("target", "to the target")
    bars.update({"strategy": "ftte", "version": 4, "sim_time_s": 1234.0, "accuracy": 0.5})
    bars.done("fedavg", "fedavg: 10 versions, 99 simulated s")
    bars.close()  # the last frame is drawn as the bars come down
    text = buf.getvalue()
    assert "-- to the target" in text and "version 4  1,234 simulated s  accuracy 0.5000" in text, text
    assert "fedavg: 10 versions, 99 simulated s" in text and "done" in text


def test_booting_qemu_boards_says_each_board_as_it_answers(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``--emulate N``: the boot is a phase, and each board is named when it answers ping (no QEMU
    here: the fleet is a stand-in that calls ``on_ready`` as the real one does after each ping)."""
    from contextlib import ExitStack
    from types import SimpleNamespace

    from tinyfed.commands.run import boot_boards
    from tinyfed.firmware_bridge.emulate import emulator

    class Fleet:
        def __init__(self, board: Any, count: int, *, on_ready: Any = None) -> None:
            self.boards = [SimpleNamespace(name=f"{board.name}#{i}", url=f"socket://127.0.0.1:{4000 + i}")
                           for i in range(count)]
            self.on_ready = on_ready

        def __enter__(self) -> Fleet:
            for i, b in enumerate(self.boards):
                self.on_ready(b, 0.5 * (i + 1))
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(emulator, "EmulatorFleet", Fleet)
    with ExitStack() as stack:
        fleet = boot_boards(stack, SimpleNamespace(name="mps2-an386"), 2)
    err = capsys.readouterr().err
    assert len(fleet.boards) == 2
    assert "booting 2 QEMU mps2-an386 boards" in err
    assert "mps2-an386#0 answers ping after 0.5 s" in err and "mps2-an386#1 answers ping after 1.0 s" in err
    assert err.index("#1 answers") < err.index("boards (and building their firmware if needed): done in")
