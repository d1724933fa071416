"""``tinyfed run`` end to end on simulated boards: the JSON summary, the run directory, and the
refusal of a baseline whose whole-model training state does not fit the boards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tinyfed.host.events import read_events, summarize

KEYS = ("strategy", "versions", "final_accuracy", "reached_target", "wall_seconds", "bytes_up", "bytes_down",
        "updates_accepted", "updates_rejected")


def _tinyfed(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "tinyfed.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.mark.slow
def test_run_on_simulated_boards_prints_a_json_summary_and_keeps_its_records(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _tinyfed("run", "--simulate", "4", "--max-versions", "2", "--max-windows", "32", "--out", str(out),
                    "--json", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(k in summary for k in KEYS)
    # 2 versions rarely reach the default target; a run that stops short of it exits 1
    assert proc.returncode == (0 if summary["reached_target"] else 1)
    # no interpreter or TensorFlow chatter: LiteRT's XNNPACK INFO line, absl's pre-init warning
    assert "XNNPACK" not in proc.stderr and "absl" not in proc.stderr and "oneDNN" not in proc.stderr
    assert summary["strategy"] == "ftte" and summary["versions"] >= 1 and isinstance(summary["reached_target"], bool)
    assert (out / "config.toml").is_file()
    # the deployable int8 model, evaluated through LiteRT after every version, is exported
    assert 0 < summary["final_int8_accuracy"] <= 1
    assert Path(summary["export"]["final"]).is_file() and (out / "export" / "tail.tflite").is_file()
    records = summarize(read_events(out))
    assert records["all_tasks_accounted"] and records["versions"] == summary["versions"]
    # history.csv: one row per evaluated version (0 included), bytes cumulative, the last = the summary's
    import csv

    with open(out / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert [int(r["version"]) for r in history] == list(range(summary["versions"] + 1))
    assert history[-1]["metric"] == "accuracy" and float(history[-1]["value"]) == summary["final_accuracy"]
    assert 0 < int(history[-1]["bytes_up"]) <= summary["bytes_up"]  # the summary also counts the tasks after it
    assert records["bytes_up"] == summary["bytes_up"] > 0


@pytest.mark.slow
def test_a_baseline_that_cannot_train_the_whole_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    proc = _tinyfed("run", "--simulate", "2", "--strategy", "fedavg", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "training every layer" in proc.stderr and "--strategy ftte" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_live_view_shows_version_accuracy_devices_bytes_and_eta() -> None:
    from rich.console import Console

    from tinyfed.host.dashboard import Dashboard

    board = Dashboard("ftte", 0.85, 8)
    for v, acc, t in ((0, 0.80, 0.0), (1, 0.82, 10.0), (2, 0.84, 20.0)):
        board.update({"kind": "evaluation", "version": v, "accuracy": acc, "loss": 0.5, "t": t, "int8_accuracy": acc,
                      "bytes_up": 5000 * v, "bytes_down": 20000 * v, "devices": {"busy": 5, "idle": 2, "backoff": 1}})
    board.update({"kind": "tick", "version": 2, "t": 21.0, "bytes_up": 12000, "bytes_down": 41000,
                  "devices": {"busy": 6, "idle": 1, "backoff": 1}})
    assert board.eta_seconds() == pytest.approx(5.0)  # 0.01 to go at 0.002 per second
    console = Console(record=True, width=110)
    console.print(board.render())
    text = console.export_text()
    for needle in ("ftte", "version 2", "accuracy 0.8400", "busy 6", "late 1", "up 11.7 KiB", "ETA 5 s", "0.8200"):
        assert needle in text, text
    assert "rejected" not in text  # none yet
    board.update({"kind": "tick", "version": 2, "t": 22.0, "rejected": 3, "rejections": {"bad_mac": 2, "too_stale": 1},
                  "devices": {"busy": 6, "idle": 1, "backoff": 1}})
    console = Console(record=True, width=110)
    console.print(board.render())
    text = console.export_text()
    assert "rejected 3" in text and "bad_mac 2, too_stale 1" in text, text
    board.update({"kind": "evaluation", "version": 3, "accuracy": 0.83, "loss": 0.5, "t": 30.0})
    assert board.eta_seconds() is not None  # still rising over the last five evaluations
    board.rows = board.rows[-2:]
    assert board.eta_seconds() is None  # falling: no estimate
    # the last frame after the stop says how the run ended, with no estimate left on screen
    board.rows = board.rows[:1]
    board.update({"kind": "evaluation", "version": 4, "accuracy": 0.84, "loss": 0.5, "t": 40.0})
    board.finish(reached_target=False)
    console = Console(record=True, width=110)
    console.print(board.render())
    text = console.export_text()
    assert "stopped before the target" in text and "ETA" not in text, text


def test_run_takes_a_strategy_label_and_its_payload(tmp_path: Path) -> None:
    """``--strategy fedbuff@subset`` trains the plan's subset: no whole-model board is needed for it."""
    from tinyfed.boards import get_board
    from tinyfed.commands.run import emulated_board_for, run_strategy, strategy_payload
    from tinyfed.host.config import RunConfig, StrategyParams, load_run_config

    assert [strategy_payload(s) for s in ("ftte", "fedbuff", "fedbuff@subset", "fedavg@subset+overselect")] == [
        "subset", "dense", "subset", "subset"]
    board = get_board("mps2-an386")
    assert emulated_board_for(board, "fedbuff@subset", "har_cnn") is board  # decided without planning every layer
    cfg = RunConfig(strategy="fedavg@subset+overselect", strategy_params=StrategyParams(overselect_factor=1.5))
    strategy = run_strategy(cfg.strategy, cfg.strategy_params)
    assert (strategy.label, strategy.payload, strategy.params.overselect_factor) == (
        "fedavg@subset+overselect", "subset", 1.5)
    assert load_run_config(cfg.dump(tmp_path)) == cfg  # config.toml keeps the label (a resume builds the same)


@pytest.mark.slow
def test_ctrl_c_exits_130_with_the_resume_command_and_keeps_the_run(tmp_path: Path) -> None:
    """Ctrl-C is not click's "Aborted!" with exit 1: the run directory is named first, the interrupt
    says how to continue, and the exit code is 130."""
    import signal

    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "tinyfed.cli", "run", "--simulate", "4", "--max-versions", "500",
                             "--max-windows", "32", "--out", str(out)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        first = proc.stderr.readline()  # the run directory comes first, and no TensorFlow banner before it
        assert first.strip() == f"run directory {out}", first
        while "version" not in (line := proc.stdout.readline()):  # wait for the first evaluation
            assert line, "the run ended before its first version"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert f"interrupted; continue with `tinyfed run --resume {out}`" in stderr
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    # no silent stretch before the first version: each long step says what it does and how long it took
    assert "loading har_cnn and its data: done in" in stderr
    assert ("planning har_cnn for 4 boards and preparing their fragment, training program and local data: done in"
            in stderr)
    assert (out / "config.toml").is_file() and (out / "events.jsonl").is_file()


def test_a_run_whose_boards_all_failed_authentication_says_which_key_store_to_pass(tmp_path: Path, capsys) -> None:
    """Every board dropped after refusing authentication (issue 18): the closing error names the reasons and
    the --key-store fix, not "check that each board is powered"."""
    from tinyfed.commands.run import _fail_no_boards, _record_devices, failed_boards
    from tinyfed.host.events import EventLog
    from tinyfed.host.setup import DeviceSpec

    devices = [DeviceSpec(f"b{i}", f"socket://127.0.0.1:{4000 + i}", "mps2-an386") for i in range(2)]
    _record_devices(tmp_path, "fleet", 2, "mps2-an386", None, None, devices)
    with EventLog(tmp_path) as events:
        for d, reason in zip(devices, ("unknown_device", "bad_mac"), strict=True):
            events.append("rejection", device=d.name, reason=reason, message="refused")
            events.append("device_state", device=d.name, state="dropped", reason=f"{d.url}: HELLO: refused")
    failed = failed_boards(tmp_path)
    assert [(b["device"], b.get("rejection")) for b in failed] == [("b0", "unknown_device"), ("b1", "bad_mac")]
    with pytest.raises(SystemExit):
        _fail_no_boards(failed, 0)
    said = capsys.readouterr().err
    assert "refused authentication (bad_mac, unknown_device)" in said and "--key-store" in said, said
    assert "powered" not in said


def test_run_fleet_reads_the_fleet_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --fleet` checks the file before naming a run directory and opens its devices from that one
    reading (the file could change in between); stopped where training would start."""
    from click.testing import CliRunner

    from tinyfed.cli import cli
    from tinyfed.commands import run as run_command
    from tinyfed.errors import TinyfedError
    from tinyfed.firmware_bridge.link import devices as link_devices

    urls = [f"sim://mps2-an386?name=once{i}" for i in range(2)]
    fleet = link_devices.write_device_fleet(tmp_path / "fleet.toml", "once", [("mps2-an386", urls)])
    reads: list[Path] = []
    real = link_devices.load_device_fleet

    def counted(path: Path | str, *args: object, **kwargs: object) -> object:
        reads.append(Path(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    trained: list[list[str]] = []

    def stop(stack: object, cfg: object, out: Path, devices: list, *args: object, **kwargs: object) -> None:
        trained.append([d.url for d in devices])
        raise TinyfedError("stopped before training")

    def no_data(cfg: object, *args: object, **kwargs: object) -> tuple[object, object]:
        return cfg, SimpleNamespace(task=SimpleNamespace(value="classify"))  # the model and data are not the point

    monkeypatch.setattr(link_devices, "load_device_fleet", counted)
    monkeypatch.setattr(run_command, "checked_run_data", no_data)
    monkeypatch.setattr(run_command, "train_run", stop)
    result = CliRunner().invoke(cli, ["run", "--fleet", str(fleet), "--model", "digits_cnn", "--max-versions", "1",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "stopped before training" in result.output, result.output
    assert reads == [fleet] and trained == [urls]
