"""The dashboard's reader (tinyfed.web.reader): run and study directories folded into snapshots, without a
browser; a live log's torn last line, a resume's truncation, damaged files and 10,000 boards."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tinyfed.host.events import EventLog
from tinyfed.web.reader import DirReader, EventTail


def _write(path: Path, events: list[dict[str, Any]], *, wall: float | None = None) -> None:
    """Events as raw lines with chosen run times (``t``), appended; ``seq`` continues the file's."""
    path.mkdir(parents=True, exist_ok=True)
    log = path / "events.jsonl"
    seq = sum(1 for _ in open(log)) if log.exists() else 0
    with open(log, "a") as f:
        for ev in events:
            f.write(json.dumps({"seq": seq, "wall": wall if wall is not None else time.time(), **ev}) + "\n")
            seq += 1


def _devices(path: Path, names: list[str], board: str = "nrf52840") -> None:
    path.mkdir(parents=True, exist_ok=True)
    body = {"format": 1, "source": "simulate", "count": len(names), "board": board,
            "devices": [{"name": n, "url": f"sim://{board}?name={n}", "board": board} for n in names]}
    (path / "devices.json").write_text(json.dumps(body))


def _states(reader: DirReader) -> dict[str, str]:
    return {r["name"]: r["state"] for r in reader.boards(limit=500)["rows"]}


def test_board_states_from_the_engines_events_and_the_new_ones(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d", "e", "f", "g"]
    _devices(tmp_path, names)
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "plan.json").write_text(json.dumps({"boards": {"nrf52840": {
        "ram_bytes_used": 100, "ram_bytes_budget": 400, "flash_bytes_used": 10, "flash_bytes_budget": 1000}}}))
    evs: list[dict[str, Any]] = [{"t": 0.0, "kind": "run_start", "strategy": "ftte", "devices": names}]
    evs += [{"t": 0.1, "kind": "device_state", "device": n, "state": "provisioning"} for n in names]
    evs += [{"t": 0.2, "kind": "device_state", "device": n, "state": "idle"} for n in names[1:]]
    # three quick tasks set the typical task time (1 s)
    for i, n in enumerate(("b", "c", "d")):
        evs += [{"t": 1.0, "kind": "dispatch", "task": i, "device": n, "version": 0},
                {"t": 2.0, "kind": "bytes", "direction": "up", "n": 500, "device": n, "task": i},
                {"t": 2.0, "kind": "arrival", "task": i, "device": n, "version": 0, "staleness": i % 2}]
    evs += [{"t": 2.5, "kind": "dispatch", "task": 10, "device": "c", "version": 1},
            {"t": 2.6, "kind": "device_state", "device": "c", "state": "uploading"},
            {"t": 3.0, "kind": "dispatch", "task": 11, "device": "d", "version": 1},  # runs on: late by t 20
            {"t": 3.0, "kind": "dispatch", "task": 12, "device": "e", "version": 1},
            {"t": 3.5, "kind": "lost", "task": 12, "device": "e", "reason": "DeviceUnreachable: gone"},
            {"t": 3.5, "kind": "device_state", "device": "e", "state": "backoff", "reason": "DeviceUnreachable: gone"},
            {"t": 4.0, "kind": "dispatch", "task": 13, "device": "f", "version": 1},
            {"t": 4.5, "kind": "lost", "task": 13, "device": "f", "reason": "DeviceError: training failed"},
            {"t": 4.5, "kind": "device_state", "device": "f", "state": "backoff", "reason": "DeviceError: x"},
            {"t": 5.0, "kind": "device_state", "device": "g", "state": "dropped", "reason": "LinkTimeout: x"},
            {"t": 5.0, "kind": "dispatch", "task": 14, "device": "b", "version": 1},
            {"t": 5.5, "kind": "rejection", "task": 14, "device": "b", "reason": "stale", "message": "too old"},
            {"t": 6.0, "kind": "aggregation", "version": 1, "updates": 3, "tasks": [0, 1, 2]},
            {"t": 20.0, "kind": "checkpoint", "version": 1}]
    _write(tmp_path, evs)
    r = DirReader(tmp_path)
    assert r.refresh()
    assert _states(r) == {"a": "provisioning", "b": "idle", "c": "uploading", "d": "late", "e": "offline",
                          "f": "backing off", "g": "offline"}
    snap = r.snapshot()
    assert snap["status"] == "running" and snap["version"] == 1 and snap["boards_total"] == 7
    assert snap["states"] == {"provisioning": 1, "idle": 1, "training": 0, "uploading": 1, "late": 1, "offline": 2,
                              "backing off": 1}
    assert snap["accepted"] == 3 and snap["rejected"] == 1 and snap["lost"] == 2
    assert snap["staleness_histogram"] == {"0": 2, "1": 1}
    # older runs record no weights: the snapshot says so with None, not a guess
    assert snap["last_aggregation"]["weights"] is None and snap["last_aggregation"]["updates"] == 3
    rows = {row["name"]: row for row in r.boards()["rows"]}
    assert rows["b"]["rejected"] == 1 and rows["b"]["reasons"] == {"stale": 1} and rows["b"]["bytes_up"] == 500
    assert rows["e"]["reason"].startswith("DeviceUnreachable") and rows["e"]["link"] == "sim"
    assert rows["a"]["ram_bytes_budget"] == 400 and rows["a"]["kind"] == "nrf52840"
    assert not r.refresh()  # nothing new: no change, no push

    # a new engine's aggregation carries weights, staleness and the buffer's size; a deadline makes tasks late
    _write(tmp_path, [{"t": 21.0, "kind": "dispatch", "task": 15, "device": "b", "version": 1},
                      {"t": 21.0, "kind": "aggregation", "version": 2, "updates": 2, "tasks": [1, 2],
                       "weights": [0.75, 0.25], "staleness": [0, 3], "buffer_size": 2},
                      {"t": 21.5, "kind": "deadline", "version": 1}])
    assert r.refresh()
    snap = r.snapshot()
    assert snap["last_aggregation"]["weights"] == [0.75, 0.25] and snap["last_aggregation"]["staleness"] == [0, 3]
    assert snap["buffer_fill"]["size"] == 2 and _states(r)["b"] == "late"

    _write(tmp_path, [{"t": 22.0, "kind": "run_end", "version": 2, "metric": "accuracy", "accuracy": 0.5,
                       "reached_target": False}])
    r.refresh()
    snap = r.snapshot()
    assert snap["status"] == "finished" and snap["reached_target"] is False
    assert "late" not in _states(r).values() and _states(r)["e"] == "offline"


def test_ten_thousand_boards_are_paged_and_filtered(tmp_path: Path) -> None:
    names = [f"d{i:05d}" for i in range(10_000)]
    start = time.monotonic()
    with EventLog(tmp_path) as log:
        log.append("run_start", strategy="ftte", devices=names)
        for i, n in enumerate(names):
            log.append("device_state", device=n, state="idle")
            if i % 10 == 0:
                log.append("dispatch", task=i, device=n, version=0)
            elif i % 97 == 0:
                log.append("device_state", device=n, state="dropped", reason="LinkTimeout: no answer")
        log.append("evaluation", version=0, metric="accuracy", accuracy=0.2, loss=2.0)
    written = time.monotonic() - start
    r = DirReader(tmp_path)
    t0 = time.monotonic()
    r.refresh()
    snap = r.snapshot()
    page = r.boards(offset=100, limit=50)
    folded = time.monotonic() - t0
    assert snap["boards_total"] == 10_000 and snap["states"]["training"] == 1_000
    assert snap["states"]["offline"] == sum(1 for i in range(10_000) if i % 10 and i % 97 == 0)
    assert [row["name"] for row in page["rows"]] == names[100:150] and page["matched"] == 10_000
    assert page["states"] == snap["states"]  # a page carries the counts of its own moment
    training = r.boards(offset=0, limit=20, state="training")
    assert training["matched"] == 1_000 and all(row["state"] == "training" for row in training["rows"])
    assert r.boards(query="d0999")["matched"] == 10
    # the snapshot pushed on every change carries no board rows: small whatever the fleet
    assert len(json.dumps(snap)) < 5_000
    assert folded < 5.0, (written, folded)


def test_a_torn_last_line_waits_for_its_end(tmp_path: Path) -> None:
    _write(tmp_path, [{"t": 0.0, "kind": "run_start", "devices": ["a"]}])
    line = json.dumps({"seq": 1, "t": 1.0, "wall": time.time(), "kind": "evaluation", "version": 0,
                       "metric": "accuracy", "accuracy": 0.4, "loss": 1.0}) + "\n"
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write(line[:20])
    r = DirReader(tmp_path)
    r.refresh()
    assert r.snapshot()["series"] == [] and r.snapshot()["problems"] == []
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write(line[20:])
    assert r.refresh()
    assert [p["value"] for p in r.snapshot()["series"]] == [0.4]


def test_a_resume_that_cuts_the_log_starts_the_fold_over(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append("run_start", strategy="ftte", devices=["a"])
        log.append("evaluation", version=0, metric="accuracy", accuracy=0.2, loss=2.0)
        log.append("aggregation", version=1, updates=1)
        log.append("evaluation", version=1, metric="accuracy", accuracy=0.3, loss=2.0)
        position = log.position()
        for v in (2, 3, 4):
            log.append("aggregation", version=v, updates=1)
            log.append("evaluation", version=v, metric="accuracy", accuracy=0.3 + v / 100, loss=1.0)
    r = DirReader(tmp_path)
    r.refresh()
    assert r.snapshot()["version"] == 4
    with EventLog(tmp_path) as log:  # what `tinyfed run --resume` does: back to the checkpoint, then on
        log.truncate_to(position)
        log.append("resume", version=1, generation=1)
        log.append("aggregation", version=2, updates=1)
        log.append("evaluation", version=2, metric="accuracy", accuracy=0.9, loss=0.5)
        log.append("aggregation", version=3, updates=1)
        log.append("evaluation", version=3, metric="accuracy", accuracy=0.91, loss=0.5)
        log.append("aggregation", version=4, updates=1)
        log.append("evaluation", version=4, metric="accuracy", accuracy=0.92, loss=0.5)
        log.append("aggregation", version=5, updates=1)
    assert r.refresh()  # the file is longer than before, but it is not the same file
    snap = r.snapshot()
    assert snap["version"] == 5 and snap["resumes"] == 1
    assert [(p["version"], p["value"]) for p in snap["series"]] == [(0, 0.2), (1, 0.3), (2, 0.9), (3, 0.91),
                                                                      (4, 0.92)]


def test_damaged_files_are_named_not_fatal(tmp_path: Path) -> None:
    missing = DirReader(tmp_path / "later")
    missing.refresh()
    snap = missing.snapshot()
    assert snap["status"] == "waiting" and "does not exist (yet)" in snap["problems"][0]
    _write(tmp_path / "later", [{"t": 0.0, "kind": "run_start", "devices": ["a"]}])
    assert missing.refresh() and missing.snapshot()["status"] == "running" and not missing.snapshot()["problems"]

    _write(tmp_path, [{"t": 0.0, "kind": "run_start", "devices": ["a"]}])
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write("{not json\n")
        f.write('["no", "kind"]\n')
    _write(tmp_path, [{"t": 1.0, "kind": "dispatch", "task": 1, "device": "a", "version": 0},
                      {"t": 1.0, "kind": "dispatch", "task": "x", "device": "a", "version": "not a number"}])
    (tmp_path / "devices.json").write_text("{truncated")
    (tmp_path / "config.toml").write_text("model = ")
    r = DirReader(tmp_path)
    r.refresh()
    snap = r.snapshot()
    problems = " | ".join(snap["problems"])
    assert "devices.json cannot be read" in problems and "config.toml cannot be read" in problems
    assert "line 2 of events.jsonl is not valid JSON" in problems and "line 3" in problems
    assert _states(r) == {"a": "training"}


def test_tail_of_a_file_that_comes_and_goes(tmp_path: Path) -> None:
    tail = EventTail(tmp_path / "events.jsonl")
    assert tail.poll() == (False, [])
    _write(tmp_path, [{"t": 0.0, "kind": "run_start"}])
    reset, events = tail.poll()
    assert not reset and [e["kind"] for e in events] == ["run_start"]
    (tmp_path / "events.jsonl").unlink()
    assert tail.poll() == (True, [])


def _study_files(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rows = ["strategy,version,sim_time_s,accuracy,loss,bytes_down,bytes_up,bytes_total,updates_accepted,wall_s"]
    for s, speed in (("ftte", 1.0), ("fedavg", 8.0)):
        for v in range(6):
            rows.append(f"{s},{v},{v * 100 * speed},{0.2 + 0.13 * v},1.0,{v * 900},{v * 100},{v * 1000},{v},0.1")
    (path / "history.csv").write_text("\n".join(rows) + "\n")
    (path / "study.json").write_text(json.dumps({
        "config": {"strategies": ["ftte", "fedavg"], "target_accuracy": 0.8, "clients": 20},
        "results": {"ftte": {"time_to_target_s": 500.0}, "fedavg": {"time_to_target_s": 4000.0}}}))


def test_a_finished_study_renders_from_its_files(tmp_path: Path) -> None:
    _study_files(tmp_path)
    r = DirReader(tmp_path)
    r.refresh()
    snap = r.snapshot()
    assert snap["kind"] == "study" and snap["status"] == "finished" and snap["target"] == 0.8
    assert set(snap["curves"]) == {"ftte", "fedavg"} and len(snap["curves"]["ftte"]) == 6
    assert snap["time_to_target"] == {"ftte": 500.0, "fedavg": 4000.0}
    assert snap["curves"]["fedavg"][-1] == {"version": 5, "t": 4000.0, "value": pytest.approx(0.85), "bytes": 5000}


def test_a_live_study_renders_from_its_events(tmp_path: Path) -> None:
    _write(tmp_path, [{"t": 0.0, "kind": "study_start", "strategies": ["ftte", "fedbuff"], "target_accuracy": 0.5,
                       "clients": 100},
                      {"t": 0.1, "kind": "leg", "text": "ftte to the target"}])
    _write(tmp_path, [{"t": 0.2, "kind": "evaluation", "strategy": "ftte", "version": v, "sim_time_s": 10.0 * v,
                       "accuracy": 0.2 * v, "bytes_total": 100 * v} for v in range(4)])
    r = DirReader(tmp_path)
    r.refresh()
    snap = r.snapshot()
    assert snap["kind"] == "study" and snap["status"] == "running" and snap["clients"] == 100
    assert [p["value"] for p in snap["curves"]["ftte"]] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert snap["time_to_target"] == {"ftte": 30.0} and snap["leg"] == "ftte to the target"
    _write(tmp_path, [{"t": 0.3, "kind": "study_end"}])
    r.refresh()
    assert r.snapshot()["status"] == "finished"


@pytest.mark.parametrize(("config", "metric", "target"), [
    ("", "accuracy", None),  # no config.toml yet: the page shows no target
    ('task = "classify"\n', "accuracy", 0.85),  # a classifier's default (RunConfig's)
    ("target_accuracy = 0.7\n", "accuracy", 0.7),
    ('task = "anomaly"\ntarget_metric = 0.9\n', "auc", 0.9),
    ('task = "anomaly"\n', "auc", None),  # other tasks have no default
])
def test_the_dashboard_and_runs_read_one_target(tmp_path: Path, config: str, metric: str, target: float | None) -> None:
    """The target on the page is `tinyfed runs`' (tinyfed.host.runs.run_target), and its default is RunConfig's."""
    from tinyfed.host.config import DEFAULT_TARGET_ACCURACY
    from tinyfed.host.runs import DEFAULT_TARGET_ACCURACY as runs_default
    from tinyfed.host.runs import load

    assert runs_default == DEFAULT_TARGET_ACCURACY
    _write(tmp_path, [{"t": 0.0, "kind": "run_start", "devices": ["a"]},
                      {"t": 1.0, "kind": "evaluation", "version": 0, "metric": metric, metric: 0.5, "loss": 1.0}])
    if config:
        (tmp_path / "config.toml").write_text(config)
    r = DirReader(tmp_path)
    r.refresh()
    assert r.snapshot()["target"] == target
    if config:
        assert load(tmp_path).target == target
