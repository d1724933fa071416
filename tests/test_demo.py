"""``tinyfed demo``, the README's first command: 8 boards, har_cnn, FTTE from a fresh classifier
head to the documented target, on simulated boards, and the message a machine without QEMU gets.
On 8 QEMU boards the demo is the FTTE run of ``tests/test_strategies_qemu.py``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinyfed.cli import cli
from tinyfed.commands.demo import DEMO_TARGET
from tinyfed.host.events import read_events, summarize


def _demo(*args: str, cwd: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", "demo", *args, "--json"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=2400, check=False)  # a hang bound
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_reached(summary: dict, out: Path, cwd: Path) -> None:
    assert summary["strategy"] == "ftte" and summary["model"] == "har_cnn" and summary["devices"] == 8
    assert summary["reached_target"] is True and summary["target_accuracy"] == DEMO_TARGET
    assert summary["final_accuracy"] >= DEMO_TARGET and summary["final_int8_accuracy"] >= DEMO_TARGET - 0.03
    history = [e for e in read_events(out) if e["kind"] == "evaluation"]
    assert history[0]["version"] == 0 and history[0]["accuracy"] < 0.3  # the fresh head starts near chance
    records = summarize(read_events(out))
    assert records["all_tasks_accounted"] and records["versions"] == summary["versions"]
    assert (cwd / summary["export"]["final"]).is_file()  # a relative path is relative to where the run ran


@pytest.mark.slow
def test_demo_on_simulated_boards_reaches_its_target(tmp_path: Path) -> None:
    # the run stops at its target; its wall-clock limit (900 s by default) is raised to a hang bound, since a
    # busy host stretches the run several times over. No --out: the run directory is the default one.
    summary = _demo("--simulate", "--max-seconds", "1800", cwd=tmp_path)
    (out,) = (tmp_path / "runs").glob("demo-*")
    _check_reached(summary, out, tmp_path)
    assert summary["versions"] <= 12
    # where the README says the deployable model lands
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    said = re.search(r"`final_int8\.tflite` in `([^`]+)`", readme)
    assert said is not None, "the README no longer says where the demo's model lands"
    landed = {p.resolve() for p in tmp_path.glob(said.group(1) + "*")}
    assert (tmp_path / summary["export"]["final"]).resolve() in landed


def test_demo_without_qemu_says_what_is_missing_and_offers_simulate(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither qemu-system-arm nor arm-none-eabi-gcc on it
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "d")])
    assert result.exit_code != 0
    assert "qemu-system-arm" in result.output and "tinyfed demo --simulate" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "d").exists()  # refused before a run directory is made
