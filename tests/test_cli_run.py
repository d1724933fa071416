"""``tinyfed run`` end to end on simulated boards: the JSON summary, the run directory, and the
refusal of a baseline whose whole-model training state does not fit the boards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tinyfed.host.events import read_events, summarize

KEYS = ("strategy", "versions", "final_accuracy", "reached_target", "wall_seconds", "bytes_up", "bytes_down",
        "updates_accepted", "updates_rejected")


def _tinyfed(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "tinyfed.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_run_on_simulated_boards_prints_a_json_summary_and_keeps_its_records(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _tinyfed("run", "--simulate", "4", "--max-versions", "2", "--max-windows", "32", "--out", str(out),
                    "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(k in summary for k in KEYS)
    assert summary["strategy"] == "ftte" and summary["versions"] >= 1 and isinstance(summary["reached_target"], bool)
    assert (out / "config.toml").is_file()
    # the deployable int8 model, evaluated through LiteRT after every version, is exported
    assert 0 < summary["final_int8_accuracy"] <= 1
    assert Path(summary["export"]["final"]).is_file() and (out / "export" / "tail.tflite").is_file()
    records = summarize(read_events(out))
    assert records["all_tasks_accounted"] and records["versions"] == summary["versions"]
    assert records["bytes_up"] == summary["bytes_up"] > 0


def test_a_baseline_that_cannot_train_the_whole_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    proc = _tinyfed("run", "--simulate", "2", "--strategy", "fedavg", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "training every layer" in proc.stderr and "--strategy ftte" in proc.stderr
    assert "Traceback" not in proc.stderr
