"""``tinyfed runs list|show|compare|export`` over one real run (made once for the module, then resumed)
and synthetic run directories for the edge cases: a finished run with unknown event kinds and fields,
an interrupted one, one still being written, a torn last line, a damaged middle line, a simulate
output and directories that are not runs. Also: ``run`` writes its charts, covering the whole run
after a resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from tinyfed.cli import cli
from tinyfed.commands.simulate import HISTORY_FIELDS, SUMMARY_FIELDS
from tinyfed.host.events import EventLog
from tinyfed.host.runs import load

PNG = b"\x89PNG\r\n\x1a\n"


def _tinyfed(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "tinyfed.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def _runs(*args: str) -> Any:
    return CliRunner().invoke(cli, ["runs", *args])


def _write_log(run_dir: Path, events: list[tuple[str, dict[str, Any]]], t0: float = 1_800_000_000.0) -> Path:
    """A log as a host writes one, but free to hold kinds this tinyfed does not know (a newer writer's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "events.jsonl"
    with open(path, "w") as f:
        for seq, (kind, fields) in enumerate(events):
            t = float(fields.pop("t", seq))
            f.write(json.dumps({"seq": seq, "t": t, "wall": t0 + t, "kind": kind, **fields}) + "\n")
    return path


def _synthetic_run(run_dir: Path, *, end: bool = True, strategy: str = "fedbuff", seed: int = 3) -> Path:
    """A two-device run reaching 0.9 at version 2 (t = 20 s) against a target of 0.8, with a rejection,
    and what a newer writer adds: an unknown kind, aggregation weights and staleness, new device states."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(f'model = "har_cnn"\nstrategy = "{strategy}"\nseed = {seed}\n'
                                         "target_accuracy = 0.8\n\n[limits]\nmax_versions = 3\n")
    (run_dir / "devices.json").write_text(json.dumps({
        "format": 1, "source": "simulate", "count": 2, "board": "nrf52840", "baseline_board": None, "fleet": None,
        "max_windows": 2, "devices": [{"name": f"d{i}", "url": f"sim://nrf52840?name=d{i}", "board": "nrf52840"}
                                      for i in range(2)]}))
    ev: list[tuple[str, dict[str, Any]]] = [
        ("run_start", {"t": 0, "strategy": strategy, "label": strategy, "devices": ["d0", "d1"]}),
        ("device_state", {"t": 0.5, "device": "d0", "state": "provisioning"}),
        ("bytes", {"t": 1, "direction": "down", "n": 5000, "device": "d0", "what": "provision"}),
        ("evaluation", {"t": 2, "version": 0, "metric": "accuracy", "accuracy": 0.5, "loss": 2.0,
                        "int8_accuracy": 0.49}),
        ("dispatch", {"t": 3, "task": 0, "device": "d0", "version": 0}),
        ("dispatch", {"t": 3, "task": 1, "device": "d1", "version": 0}),
        ("bytes", {"t": 4, "direction": "down", "n": 100, "device": "d0", "task": 0}),
        ("bytes", {"t": 5, "direction": "up", "n": 40, "device": "d0", "task": 0}),
        ("arrival", {"t": 5, "task": 0, "device": "d0", "staleness": 0}),
        ("rejection", {"t": 6, "task": 1, "device": "d1", "reason": "norm", "message": "too big"}),
        ("aggregation", {"t": 7, "version": 1, "updates": 1, "tasks": [0], "weights": [1.0]}),
        ("evaluation", {"t": 10, "version": 1, "metric": "accuracy", "accuracy": 0.7, "loss": 1.0}),
        ("dispatch", {"t": 11, "task": 2, "device": "d1", "version": 1}),
        ("bytes", {"t": 12, "direction": "up", "n": 60, "device": "d1", "task": 2}),
        ("arrival", {"t": 12, "task": 2, "device": "d1", "staleness": 1}),
        ("device_state", {"t": 13, "device": "d1", "state": "uploading"}),
        ("a_kind_from_the_future", {"t": 14, "payload": {"x": 1}}),
        ("aggregation", {"t": 15, "version": 2, "updates": 1, "tasks": [2], "staleness": [3]}),
        ("evaluation", {"t": 20, "version": 2, "metric": "accuracy", "accuracy": 0.9, "loss": 0.5}),
    ]
    if end:
        ev.append(("run_end", {"t": 21, "version": 2, "metric": "accuracy", "accuracy": 0.9, "reached_target": True}))
    _write_log(run_dir, ev)
    return run_dir


def _simulate_output(out: Path, history_text: str | None = None) -> Path:
    """The files `tinyfed simulate --out` writes, with its own column names: ftte reaches 0.8 at 100 s."""
    out.mkdir(parents=True)
    hist = {"ftte": [(0, 0.0, 0.2, 0), (1, 100.0, 0.82, 5000), (2, 150.0, 0.84, 9000)],
            "fedavg": [(0, 0.0, 0.2, 0), (1, 400.0, 0.6, 50000)]}
    results = {name: {"strategy": name, "versions": rows[-1][0], "sim_seconds": rows[-1][1] + 10,
                      "final_accuracy": rows[-1][2], "best_accuracy": max(r[2] for r in rows), "wall_seconds": 1.5}
               for name, rows in hist.items()}
    (out / "study.json").write_text(json.dumps({
        "config": {"model": "har_cnn", "clients": 20, "seed": 7, "target_accuracy": 0.8},
        "study": {"fleet": "20 devices (10 x nrf52840, 10 x apollo3); 18 stragglers"}, "results": results}))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(results.values())
    if history_text is not None:
        (out / "history.csv").write_text(history_text)
        return out
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        for name, rows in hist.items():
            for v, t, acc, b in rows:
                w.writerow({"strategy": name, "version": v, "sim_time_s": t, "accuracy": acc, "loss": 1.0,
                            "bytes_down": b // 2, "bytes_up": b - b // 2, "bytes_total": b, "updates_accepted": v,
                            "wall_s": 0.1 * v})
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ with one real run (digits_cnn, the cheaper zoo model to plan) and synthetic neighbours.

    (That a resumed run's charts cover the whole run is checked in test_resume.py, on its killed run.)"""
    base = tmp_path_factory.mktemp("runs")
    top = base / "runs"
    top.mkdir()
    real = _tinyfed("run", "--simulate", "2", "--model", "digits_cnn", "--max-versions", "2", "--max-windows", "2",
                    "--target-accuracy", "0.99", "--seed", "1", "--out", str(top / "real"), "--json", cwd=base)
    assert real.returncode in (0, 1), real.stderr
    assert json.loads(real.stdout.strip().splitlines()[-1])["plots"] == [
        str(top / "real" / "accuracy_vs_time.png"), str(top / "real" / "bytes_vs_time.png")]
    _synthetic_run(top / "synth")
    _synthetic_run(top / "stopped", end=False, strategy="ftte", seed=4)
    (top / "stopped" / "checkpoint-00000001.json").write_text("{}")
    torn = _synthetic_run(top / "torn")
    with open(torn / "events.jsonl", "a") as f:
        f.write('{"seq": 20, "t": 22.0, "kind": "dispa')  # the host died mid-line
    corrupt = _synthetic_run(top / "corrupt")
    lines = (corrupt / "events.jsonl").read_text().splitlines(keepends=True)
    lines[1] = "{not json\n"
    (corrupt / "events.jsonl").write_text("".join(lines))
    _simulate_output(top / "sim")
    (top / "notes").mkdir()  # not a run: passed over by `runs list`
    (top / "notes" / "todo.txt").write_text("x")
    return top


# -- run writes its charts ---------------------------------------------------------------------


def test_run_writes_its_charts_from_its_event_log(root: Path) -> None:
    real = root / "real"
    for name in ("accuracy_vs_time.png", "bytes_vs_time.png"):
        assert (real / name).read_bytes().startswith(PNG) and (real / name).stat().st_size > 5000
    rec = load(real)
    assert rec.status == "finished" and rec.versions == 2
    assert rec.curves[0].version == [0, 1, 2] and rec.curves[0].value == [h["value"] for h in rec.history]
    # drawn after the run's last event
    assert (real / "accuracy_vs_time.png").stat().st_mtime >= (real / "events.jsonl").stat().st_mtime


# -- list --------------------------------------------------------------------------------------


def test_list_shows_every_run_with_its_facts_status_and_problems(root: Path) -> None:
    result = _runs("list", str(root), "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["runs"]}
    assert set(rows) == {"real", "synth", "stopped", "torn", "corrupt", "sim"}  # notes/ is not a run
    real = rows["real"]
    assert (real["kind"], real["model"], real["strategy"], real["seed"], real["versions"]) == \
        ("run", "digits_cnn", "ftte", 1, 2)
    assert real["fleet"] == "2 x sim mps2-an386" and real["status"] == "finished" and real["target"] == 0.99
    assert real["started"] is not None and real["duration_s"] > 0 and 0 < real["final"] <= 1
    synth = rows["synth"]
    assert synth["final"] == 0.9 and synth["best"] == 0.9 and synth["reached"] is True
    assert synth["time_to_target_s"] == 20.0 and synth["bytes_to_target"] == 200 and synth["duration_s"] == 21.0
    assert synth["started"] == 1_800_000_000.0 and synth["fleet"] == "2 x sim nrf52840"
    assert rows["stopped"]["status"] == "interrupted" and rows["stopped"]["resumable"] is True
    assert rows["torn"]["status"] == "finished" and "torn last event line" in rows["torn"]["notes"][0]
    assert rows["corrupt"]["status"] == "damaged" and "line 2" in rows["corrupt"]["problem"]
    assert "Fix:" in rows["corrupt"]["problem"]
    sim = rows["sim"]
    assert sim["kind"] == "simulate" and sim["strategy"] == "ftte, fedavg" and sim["seed"] == 7
    assert sim["strategies"]["ftte"]["time_to_target_s"] == 100.0 and sim["strategies"]["fedavg"]["reached"] is False


def test_list_on_a_pipe_prints_whole_rows(root: Path) -> None:
    result = _runs("list", str(root))
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "interrupted, resumable" in lines["stopped"] and "damaged" in lines["corrupt"]
    assert "ftte 0.8400, fedavg 0.6000" in lines["sim"] and "yes (0.8)" in lines["synth"]
    assert all(line == line.rstrip() for line in result.stdout.splitlines())


def test_a_run_being_written_is_running_and_interrupted_once_its_writer_is_gone(tmp_path: Path) -> None:
    run_dir = tmp_path / "live"
    log = EventLog(run_dir)
    try:
        log.append("run_start", strategy="ftte")
        log.append("evaluation", version=0, metric="accuracy", accuracy=0.5, loss=1.0)
        assert load(run_dir).status == "running"
    finally:
        log.close()
    rec = load(run_dir)
    assert rec.status == "interrupted" and not rec.resumable


def test_list_of_a_missing_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _runs("list", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "no such directory" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.output


# -- show --------------------------------------------------------------------------------------


def test_show_gives_the_summary_config_devices_reasons_and_history(root: Path) -> None:
    result = _runs("show", str(root / "synth"), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"]["rejection_reasons"] == {"norm": 1} and doc["summary"]["updates_accepted"] == 2
    assert doc["config"]["strategy"] == "fedbuff" and doc["config"]["limits"] == {"max_versions": 3}
    assert [d["name"] for d in doc["devices"]["devices"]] == ["d0", "d1"]
    assert [(h["version"], h["value"]) for h in doc["history"]] == [(0, 0.5), (1, 0.7), (2, 0.9)]
    text = _runs("show", str(root / "synth")).stdout
    assert "rejection reasons" in text and "norm 1" in text and "config [limits]" in text and "max_versions=3" in text
    assert "0.9000" in text and "20.0" in text


def test_show_of_a_simulate_output_lists_its_strategies(root: Path) -> None:
    result = _runs("show", str(root / "sim"))
    assert result.exit_code == 0, result.output
    assert "strategies" in result.stdout and "fedavg" in result.stdout and "100.0" in result.stdout


def test_a_torn_last_line_is_tolerated_and_reported(root: Path) -> None:
    result = _runs("show", str(root / "torn"))
    assert result.exit_code == 0, result.output
    assert "torn last event line" in result.stderr and "0.9000" in result.stdout


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such run directory"),
    ("notes", "not a run directory"),
    ("corrupt", "line 2 (byte"),
    ("bad_history", "history.csv lacks the column(s) accuracy"),
    ("bad_config", "config.toml is not valid TOML"),
    ("no_study", "summary.csv without study.json"),
    ("no_events", "no event log"),
])
def test_bad_input_to_show_is_one_clear_line_and_exit_2(root: Path, tmp_path: Path, case: str, needle: str) -> None:
    target = root / case if case in ("notes", "corrupt") else tmp_path / case
    if case == "bad_history":
        _simulate_output(target, history_text="strategy,version,sim_time_s,bytes_total\nftte,0,0.0,0\n")
    elif case == "bad_config":
        _synthetic_run(target)
        (target / "config.toml").write_text("model = [unclosed\n")
    elif case == "no_study":
        _simulate_output(target)
        (target / "study.json").unlink()
    elif case == "no_events":
        _synthetic_run(target)
        (target / "events.jsonl").unlink()
    result = _runs("show", str(target))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "Fix:" in errors[0], result.stderr
    assert "Traceback" not in result.output


# -- compare -----------------------------------------------------------------------------------


def test_compare_draws_every_curve_and_puts_time_and_bytes_to_target_side_by_side(root: Path, tmp_path: Path) -> None:
    chart = tmp_path / "cmp.png"
    result = _runs("compare", str(root / "synth"), str(root / "stopped"), str(root / "sim"), "--png", str(chart),
                   "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert chart.read_bytes().startswith(PNG) and doc["chart"] == str(chart)
    assert doc["title"].splitlines() == [
        "har_cnn: fedbuff, ftte, fedavg",
        "fleet 2 x sim nrf52840, 20 devices (10 x nrf52840, 10 x apollo3); 18 stragglers; seed 3, 4, 7"]
    curves = {c["curve"]: c for c in doc["curves"]}
    assert list(curves) == ["synth: fedbuff", "stopped: ftte", "sim: ftte", "sim: fedavg"]
    assert (curves["synth: fedbuff"]["time_to_target_s"], curves["synth: fedbuff"]["bytes_to_target"],
            curves["synth: fedbuff"]["versions_to_target"]) == (20.0, 200, 2)
    assert curves["sim: ftte"]["time_to_target_s"] == 100.0 and curves["sim: ftte"]["simulated"] is True
    assert curves["sim: fedavg"]["reached"] is False and curves["sim: fedavg"]["time_to_target_s"] is None
    text = _runs("compare", str(root / "synth"), str(root / "sim"), "--png", str(chart), "--x", "bytes")
    assert text.exit_code == 0 and "100.0 sim" in text.stdout and "synth: fedbuff" in text.stdout


def test_compare_of_a_damaged_run_is_exit_2(root: Path, tmp_path: Path) -> None:
    result = _runs("compare", str(root / "synth"), str(root / "corrupt"), "--png", str(tmp_path / "c.png"))
    assert result.exit_code == 2 and "line 2" in result.stderr and not (tmp_path / "c.png").exists()


# -- export ------------------------------------------------------------------------------------


def test_export_csv_writes_history_and_per_device_tallies(root: Path, tmp_path: Path) -> None:
    result = _runs("export", str(root / "synth"), str(root / "sim"), "--format", "csv", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    with open(tmp_path / "synth" / "devices.csv", newline="") as f:
        devices = {r["device"]: r for r in csv.DictReader(f)}
    assert (devices["d0"]["tasks"], devices["d0"]["accepted"], devices["d0"]["bytes_down"],
            devices["d0"]["provision_bytes_down"], devices["d0"]["state"]) == ("1", "1", "100", "5000", "provisioning")
    assert (devices["d1"]["rejected"], devices["d1"]["accepted"], devices["d1"]["state"]) == ("1", "1", "uploading")
    with open(tmp_path / "synth" / "aggregations.csv", newline="") as f:
        aggs = list(csv.DictReader(f))
    assert [(a["version"], a["staleness_max"]) for a in aggs] == [("1", "0.0"), ("2", "3.0")]
    with open(tmp_path / "sim" / "strategies.csv", newline="") as f:
        assert [r["strategy"] for r in csv.DictReader(f)] == ["ftte", "fedavg"]
    assert (tmp_path / "synth" / "history.csv").read_text().startswith("version,t_s,wall,metric,value")


def _read_tensorboard(directory: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, float, float]]]:
    """The scalars of ``directory`` as TensorBoard loads them (its EventAccumulator, as `tensorboard --logdir`
    runs it), on its TensorFlow-free path: importing TensorFlow would cost seconds and prove nothing more."""
    monkeypatch.setitem(sys.modules, "tensorboard.compat.notf", ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_export_tensorboard_writes_event_files_tensorboard_reads(root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    result = _runs("export", str(root / "synth"), str(root / "sim"), "--format", "tensorboard", "--out",
                   str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["files"]) == 3  # synth, sim/ftte, sim/fedavg
    s = _read_tensorboard(tmp_path / "synth", monkeypatch)
    t0 = 1_800_000_000.0
    assert s["test/accuracy"] == [(0, 0.5, t0 + 2), (1, pytest.approx(0.7), t0 + 10), (2, pytest.approx(0.9), t0 + 20)]
    assert s["test/int8_accuracy"] == [(0, pytest.approx(0.49), t0 + 2)]
    assert [x[:2] for x in s["bytes/total"]] == [(0, 0.0), (1, 140.0), (2, 200.0)]
    assert [x[:2] for x in s["aggregation/staleness_max"]] == [(1, 0.0), (2, 3.0)]
    sim = _read_tensorboard(tmp_path / "sim" / "ftte", monkeypatch)
    assert [x[:2] for x in sim["test/accuracy"]] == [(0, pytest.approx(0.2)), (1, pytest.approx(0.82)),
                                                     (2, pytest.approx(0.84))]
    again = _runs("export", str(root / "synth"), "--format", "tensorboard", "--out", str(tmp_path))
    assert again.exit_code == 0 and len(list((tmp_path / "synth").glob("events.out.tfevents.*"))) == 1


def test_export_tensorboard_without_the_package_says_how_to_install_it(root: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)  # as if not installed
    result = _runs("export", str(root / "synth"), "--format", "tensorboard", "--out", str(tmp_path / "tb"))
    assert result.exit_code == 2 and "pip install 'tinyfed[tensorboard]'" in result.stderr
    assert not (tmp_path / "tb").exists()


def test_a_live_simulate_log_without_outputs_yet_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    """A study still running (or killed) has only its live events.jsonl: kinds this tinyfed's run log lacks."""
    out = tmp_path / "study"
    _write_log(out, [
        ("study_start", {"config": {"model": "har_cnn", "clients": 50, "seed": 2, "target_accuracy": 0.8}}),
        ("leg", {"strategy": "ftte", "text": "to target"}),
        ("evaluation", {"strategy": "ftte", "version": 0, "sim_time_s": 0.0, "metric": "accuracy",
                        "accuracy": 0.3, "bytes_total": 0}),
        ("evaluation", {"strategy": "ftte", "version": 1, "sim_time_s": 60.0, "metric": "accuracy",
                        "accuracy": 0.85, "bytes_total": 700}),
    ])
    result = _runs("list", str(out), "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["runs"]
    assert (row["kind"], row["status"], row["model"], row["seed"], row["fleet"]) == \
        ("simulate", "interrupted", "har_cnn", 2, "50 simulated boards")
    assert row["strategies"]["ftte"]["time_to_target_s"] == 60.0 and row["strategies"]["ftte"]["best"] == 0.85


def test_errors_under_json_are_one_json_object(tmp_path: Path) -> None:
    result = _runs("show", str(tmp_path / "gone"), "--json")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["error"] == "RunsError" and doc["problem"] == "no such run directory" and doc["fix"]
