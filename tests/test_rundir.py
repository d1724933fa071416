"""Run-directory and fleet integrity (issue 17): one run per directory, locked before anything is
written; checkpoints covered by one hash; private files; writes that fail name their file; a run
with no reachable board says which boards and why.

The end-to-end tests use digits_cnn on two sim:// boards with 2 windows each (seconds).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinyfed.cli import cli
from tinyfed.errors import WriteError
from tinyfed.host import checkpoint as checkpoint_module
from tinyfed.host import rundir
from tinyfed.host.checkpoint import Checkpoint, CheckpointError, read_checkpoint, write_checkpoint
from tinyfed.host.events import EventLog, EventLogError, read_events, summarize
from tinyfed.host.rundir import LOCK_FILE, RunLock, lock_holder

ROOT = Path(__file__).resolve().parents[1]
#: A run that trains (digits_cnn starts above the default target, so the target is out of reach) and ends fast.
RUN = ["--model", "digits_cnn", "--target-accuracy", "1.0", "--max-windows", "2"]


def _tinyfed(*args: str) -> list[str]:
    return [sys.executable, "-m", "tinyfed.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def _files(run: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of ``run`` with its mtime and content: what a refused run must leave as it was."""
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*"))
            if p.is_file()}


def _wait_for_event(log: Path, kind: str, proc: subprocess.Popen[bytes], seconds: float = 300.0) -> None:
    """Until ``log`` holds an event of ``kind`` (a hang bound, not a margin: the run plans first)."""
    needle = f'"kind":"{kind}"'.encode()
    deadline = time.monotonic() + seconds
    while not (log.is_file() and needle in log.read_bytes()):
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, f"no {kind} event in {log}"
        time.sleep(0.05)


# -- the lock ---------------------------------------------------------------------------------------


def test_two_runs_on_one_out_the_second_is_refused_before_writing_and_the_first_is_intact(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["run", "--simulate", "2", *RUN, "--max-versions", "3", "--out", str(run), "--json"]
    first = subprocess.Popen(_tinyfed(*args), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    stopped = False
    try:
        _wait_for_event(run / "events.jsonl", "run_start", first)
        os.kill(first.pid, signal.SIGSTOP)  # held mid-run: the second run meets a live lock, whatever the timing
        stopped = True
        before = _files(run)
        assert {"config.toml", "devices.json", "events.jsonl", LOCK_FILE} <= set(before)
        assert any(name.startswith("plan/") for name in before)
        assert lock_holder(run) == str(first.pid)
        for second_args in (args, ["run", "--resume", str(run), "--max-versions", "5"]):
            second = subprocess.run(_tinyfed(*second_args), cwd=tmp_path, env=_env(), capture_output=True,
                                    text=True, timeout=300, check=False)
            assert second.returncode == 2, second.stderr
            assert f"{run} is in use by another tinyfed run (pid {first.pid})" in second.stderr
            assert _files(run) == before  # nothing written, not even the lock file's pid
        os.kill(first.pid, signal.SIGCONT)
        stopped = False
        out, err = first.communicate(timeout=300)
    finally:
        if stopped:
            os.kill(first.pid, signal.SIGCONT)
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == 1, err.decode()[-3000:]  # the run ends on --max-versions, short of accuracy 1.0
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["versions"] == 3
    events = list(read_events(run))
    tally = summarize(events)
    assert tally["all_tasks_accounted"] and not tally["tasks_unknown"] and tally["versions"] == 3
    assert [e["kind"] for e in events].count("run_start") == 1 and read_checkpoint(run).version == 3
    assert lock_holder(run) is None  # released at the end

    # a finished run's directory is no --out for a fresh run
    finished = _files(run)
    again = subprocess.run(_tinyfed(*args), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
                           check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr and f"--resume {run}" in again.stderr
    assert _files(run) == finished

    # private: checkpoints hold per-board updates
    assert run.stat().st_mode & 0o777 == 0o700
    loose = [str(p) for p in run.rglob("*") if p.stat().st_mode & 0o077]
    assert not loose, loose


def test_the_lock_names_its_holder_and_is_free_again_once_released(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rundir, "_LOCK_PATIENCE_S", 0.1)  # how long a second taker waits out a probe
    with RunLock(tmp_path) as held:
        assert lock_holder(tmp_path) == str(os.getpid())
        assert (tmp_path / LOCK_FILE).stat().st_mode & 0o777 == 0o600
        with pytest.raises(Exception, match=rf"{tmp_path} is in use by another tinyfed run \(pid {os.getpid()}\)"):
            RunLock(tmp_path)
        held.close()
        assert lock_holder(tmp_path) is None
    with RunLock(tmp_path):  # taken again at once: a stale file is no lock
        pass


# -- checkpoints and the event log -----------------------------------------------------------------


def _checkpoint(run: Path) -> Path:
    state = Checkpoint(version=3, globals={"w": np.arange(6, dtype=np.float32)},
                       strategy_state={"buffer": [np.ones(2, np.float32)], "k": 2}, event_position=0,
                       accepted_update_ids=["d0:1"])
    return write_checkpoint(run, state)


def test_an_edited_checkpoint_is_refused_naming_the_file_and_what_does_not_match(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    assert read_checkpoint(tmp_path).version == 3
    original = path.read_bytes()
    body = json.loads(original)
    body["version"] = 999
    path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    with pytest.raises(CheckpointError, match=r"checkpoint-00000001\.json: .*does not match the SHA-256 it was "
                                              r"written with.*version 999"):
        read_checkpoint(tmp_path)

    # arrays replaced together with the npz's own size and digest: the one hash still catches it
    path.write_bytes(original)
    npz = tmp_path / "checkpoint-00000001.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"checkpoint-00000001\.npz: .*SHA-256 does not match"):
        read_checkpoint(tmp_path)
    import hashlib

    body = json.loads(original)
    body["npz"].update(bytes=len(raw), sha256=hashlib.sha256(bytes(raw)).hexdigest())
    path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    with pytest.raises(CheckpointError, match=r"checkpoint-00000001\.json: .*does not match the SHA-256"):
        read_checkpoint(tmp_path)


def test_a_checkpoint_of_the_format_before_the_hash_is_read_with_a_warning(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = _checkpoint(tmp_path)
    body = json.loads(path.read_bytes())
    del body["sha256"]
    body["format_version"] = 1
    path.write_text(json.dumps(body) + "\n")
    with caplog.at_level(logging.WARNING):
        assert read_checkpoint(tmp_path).version == 3
    assert "has no content hash" in caplog.text
    body["format_version"] = 2  # the current format without its hash is damage, not an old file
    path.write_text(json.dumps(body) + "\n")
    with pytest.raises(CheckpointError, match="'sha256'.*is missing"):
        read_checkpoint(tmp_path)


def _log_with_events(run: Path, n: int) -> int:
    with EventLog(run) as log:
        log.append("run_start")
        for i in range(n):
            log.append("aggregation", version=i + 1)
        return log.position()


def test_a_log_cut_before_the_checkpoint_says_it_is_shorter_than_the_checkpoint_expects(tmp_path: Path) -> None:
    position = _log_with_events(tmp_path, 4)
    log_file = tmp_path / "events.jsonl"
    assert log_file.stat().st_mode & 0o777 == 0o600
    os.truncate(log_file, position - 10)  # cut inside the last event
    with EventLog(tmp_path) as log, pytest.raises(EventLogError) as info:
        log.truncate_to(position)
    message = str(info.value)
    assert f"shorter than the checkpoint expects: it has {log.position()} complete bytes" in message
    assert f"written at byte {position}" in message and "mixes files" not in message and str(log_file) in message


def test_a_damaged_event_line_names_its_line_and_byte(tmp_path: Path) -> None:
    _log_with_events(tmp_path, 3)
    log_file = tmp_path / "events.jsonl"
    lines = log_file.read_bytes().splitlines(keepends=True)
    start = len(lines[0]) + len(lines[1])
    lines[2] = b"{not json\n"
    log_file.write_bytes(b"".join(lines))
    with pytest.raises(EventLogError, match=rf"line 3 \(byte {start}\) of the event log is damaged"):
        list(read_events(tmp_path))


class _FullDisk:
    """A file whose writes fail as a full disk does."""

    def __init__(self, real: object) -> None:
        self.real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_under_the_event_log_names_the_file_and_byte_and_keeps_the_log_whole(tmp_path: Path) -> None:
    position = _log_with_events(tmp_path, 2)
    with EventLog(tmp_path) as log:
        real = log._fh
        log._fh = _FullDisk(real)  # type: ignore[assignment]
        with pytest.raises(EventLogError) as info:
            log.append("aggregation", version=3)
        log._fh = real
    text = str(info.value)
    assert str(tmp_path / "events.jsonl") in text and "No space left on device" in text
    assert f"at byte {position}" in text and f"free space on the disk holding {tmp_path}" in text
    assert isinstance(info.value, WriteError)  # so the command adds the `tinyfed run --resume` to the fix
    assert [e["kind"] for e in read_events(tmp_path)] == ["run_start", "aggregation", "aggregation"]


def test_an_os_error_without_a_file_names_the_run_directory_being_written() -> None:
    from tinyfed.cli import _os_error

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a failed write() raises: no filename
    assert _os_error(full, "runs/lab", "tinyfed run --resume runs/lab").one_line() == (
        "runs/lab: No space left on device while writing the run. Fix: free space on the disk holding runs/lab, "
        "then `tinyfed run --resume runs/lab`")
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), "runs/lab/plan/plan.json")
    assert _os_error(denied, "runs/lab", None).one_line().startswith("runs/lab/plan/plan.json: Permission denied.")


# -- a full disk mid-run, and a fleet that cannot be reached -----------------------------------------


def _summary(output: str) -> dict:
    """The run's JSON summary among the lines the runner caught (stderr's are mixed in)."""
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))


def test_a_full_disk_mid_run_names_the_file_and_the_run_resumes_from_its_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    write = checkpoint_module._write_file

    def full_at_third_generation(tmp: Path, data: bytes) -> None:
        if tmp.name.startswith(".checkpoint-00000003.npz"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(tmp, data)

    monkeypatch.setattr(checkpoint_module, "_write_file", full_at_third_generation)
    runner = CliRunner()
    failed = runner.invoke(cli, ["run", "--simulate", "2", *RUN, "--max-versions", "4", "--out", str(run)])
    assert failed.exit_code == 2, failed.output
    assert (f"{run / 'checkpoint-00000003.npz'}: cannot write checkpoint-00000003.npz (No space left on device). "
            f"Fix: free space on the disk holding {run}, then `tinyfed run --resume {run}`") in failed.output
    kept = read_checkpoint(run)
    assert kept is not None and kept.version == 1 and kept.generation == 2

    monkeypatch.setattr(checkpoint_module, "_write_file", write)  # space freed
    resumed = runner.invoke(cli, ["run", "--resume", str(run), "--json"])
    assert resumed.exit_code == 1, resumed.output  # on to --max-versions 4, short of accuracy 1.0
    assert _summary(resumed.output)["versions"] == 4
    events = list(read_events(run))
    assert [e["version"] for e in events if e["kind"] == "aggregation"] == [1, 2, 3, 4]
    assert summarize(events)["all_tasks_accounted"]


def test_a_run_with_no_reachable_board_names_each_board_and_why(tmp_path: Path) -> None:
    urls = []
    for _ in range(2):
        with socket.socket() as s:  # a port that was free a moment ago: nothing answers there
            s.bind(("127.0.0.1", 0))
            urls.append(f"socket://127.0.0.1:{s.getsockname()[1]}")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('name = "dead"\n[[boards]]\nboard = "mps2-an386"\ncount = 2\n'
                     f'urls = ["{urls[0]}", "{urls[1]}"]\n')
    config = tmp_path / "run.toml"
    config.write_text("[devices]\nretries = 0\nbackoff_s = 0.01\n")
    result = CliRunner().invoke(cli, ["run", "--fleet", str(fleet), "--config", str(config), *RUN,
                                      "--max-versions", "2", "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 1, result.output
    summary = _summary(result.output)
    assert [(b["device"], b["url"]) for b in summary["boards_failed"]] == [("mps2-an386#0", urls[0]),
                                                                           ("mps2-an386#1", urls[1])]
    assert "error: no board could be reached: mps2-an386#0 (" + urls[0] + "): " in result.output
    assert all("refused" in b["reason"].lower() for b in summary["boards_failed"]), summary["boards_failed"]
    assert "--max-versions" not in result.output.split("error:")[-1]  # not the "stopped before its target" advice
