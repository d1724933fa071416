"""Boards that die mid-run: two of four QEMU boards are killed while the engine trains and are
restarted at the same URL; the run reaches its version count, their lost tasks are in the event
log, and they rejoin (re-provisioned: fragment, program, local data) and deliver updates again."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
    pytest.skip("needs qemu-system-arm and gcc-arm-none-eabi (make test installs both)", allow_module_level=True)

from tinyfed.boards import get_board
from tinyfed.firmware_bridge.build import build_firmware
from tinyfed.firmware_bridge.emulator import start_qemu, wait_ready
from tinyfed.host.engine import Engine, Limits, LocalTraining
from tinyfed.host.events import EventLog, read_events, summarize
from tinyfed.host.setup import DeviceSpec, prepare_run
from tinyfed.host.strategies import get_strategy

BOARDS = 4
KILLED = (1, 2)
VERSIONS = 14


def _wait_for(path: Path, predicate, timeout: float = 300.0) -> list[dict]:
    """Poll the event log until ``predicate(events)`` holds (the engine's own record, no guessing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            events = list(read_events(path))
        except Exception:  # noqa: BLE001 - a line being written is read again next time
            events = []
        if predicate(events):
            return events
        time.sleep(0.05)
    raise AssertionError("the event log never showed what the test waited for")


def test_killed_boards_are_retried_and_rejoin_without_losing_track_of_a_task(tmp_path: Path, monkeypatch) -> None:
    import os

    if "TINYFED_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("TINYFED_CACHE_DIR", str(tmp_path / "cache"))
    board = get_board("mps2-an386")
    fw = build_firmware(board.name, tmp_path / "fw")
    emus = [start_qemu(board, fw.elf, name=f"fault{i}") for i in range(BOARDS)]
    try:
        for e in emus:
            wait_ready(e)
        devices = [DeviceSpec(e.name, e.url, board.name) for e in emus]
        setup = prepare_run("har_cnn", devices, "subset", work_dir=tmp_path / "run", max_windows=12)
        run_dir = tmp_path / "events"
        result: dict = {}

        def train() -> None:
            with EventLog(run_dir) as events:
                engine = Engine(setup, devices, get_strategy("ftte", buffer_size=2), events,
                                training=LocalTraining(epochs=1, lr=0.005, head_cache=False),
                                limits=Limits(max_versions=VERSIONS), seed=2, backoff_s=0.2, retries=5,
                                device_timeout_s=120.0)
                result["run"] = engine.run()

        runner = threading.Thread(target=train)
        runner.start()
        log = run_dir / "events.jsonl"
        for i in KILLED:
            name = emus[i].name
            # kill the board while it has a task, then bring it back at the same URL once the
            # engine has recorded the loss
            _wait_for(log, lambda evs, n=name: any(e["kind"] == "dispatch" and e["device"] == n for e in evs)
                      and any(e["kind"] == "aggregation" for e in evs))
            port = emus[i].port
            emus[i].process.kill()
            emus[i].process.wait()
            emus[i].stop()
            _wait_for(log, lambda evs, n=name: any(e["kind"] == "lost" and e["device"] == n for e in evs))
            emus[i] = start_qemu(board, fw.elf, name=name, port=port)
            wait_ready(emus[i])
        runner.join(timeout=600)
        assert not runner.is_alive()
    finally:
        for e in emus:
            e.stop()
    run = result["run"]
    events = list(read_events(run_dir))
    summary = summarize(events)
    assert run.versions == summary["versions"] == VERSIONS
    assert summary["all_tasks_accounted"] and not summary["tasks_unknown"]
    for i in KILLED:
        name = devices[i].name
        lost_at = min(e["seq"] for e in events if e["kind"] == "lost" and e["device"] == name)
        assert any(e["kind"] == "device_state" and e["device"] == name and e["state"] == "backoff" for e in events)
        # after its restart the board was provisioned again and delivered an accepted update
        assert any(e["kind"] == "arrival" and e["device"] == name and e["seq"] > lost_at for e in events), name
