"""Run config, crash-safe checkpoints and the event log: the host's "nothing lost" foundations."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tinyfed.errors import DataFileError, TinyfedError, WriteError
from tinyfed.host.checkpoint import (
    Checkpoint,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from tinyfed.host.config import RunConfig, load_run_config
from tinyfed.host.events import (
    EventLog,
    EventLogError,
    complete_length,
    read_events,
    summarize,
)
from tinyfed.training.task import Task

# -- run config ---------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_empty_config_is_the_documented_default(tmp_path: Path) -> None:
    cfg = load_run_config(_write(tmp_path, ""))
    assert cfg == RunConfig()
    assert (cfg.model, cfg.strategy, cfg.target_accuracy, cfg.seed) == ("har_cnn", "ftte", None, 0)
    assert cfg.stop_target(Task.CLASSIFY, "accuracy") == 0.85  # a classifier's default target
    sp = cfg.strategy_params
    assert (sp.buffer_size, sp.staleness_exponent, sp.variance_gamma, sp.server_lr, sp.clients_per_round) == (
        10, 0.5, 1.0, 1.0, 10)
    t = cfg.training
    assert (t.epochs, t.lr, t.batch_size, t.per_channel, t.head_cache) == (1, 0.01, 16, False, True)
    assert (cfg.limits.max_seconds, cfg.limits.max_versions, cfg.limits.max_bytes) == (None, None, None)
    assert cfg.data.partition == "natural" and cfg.evaluation.every_versions == 1


def test_every_problem_of_a_config_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        modle = "har_cnn"
        strategy = "fedbuf"
        target_accuracy = 1.5
        [strategy_params]
        buffer_sise = 4
        server_lr = 0
        [limits]
        max_seconds = -1
        max_versions = 2.5
        [training]
        lr = "0.1"
        per_channel = 1
        [data]
        partition = "diriclet"
        [checks]
        max_staleness = -3
    """)
    with pytest.raises(DataFileError) as info:
        load_run_config(path)
    err = info.value
    assert err.path == str(path) and str(path) in str(err)
    by_key = {i.key: i for i in err.issues}
    assert set(by_key) == {
        "modle", "strategy", "target_accuracy", "strategy_params.buffer_sise", "strategy_params.server_lr",
        "limits.max_seconds", "limits.max_versions", "training.lr", "training.per_channel", "data.partition",
        "checks.max_staleness",
    }
    assert "did you mean 'model'" in by_key["modle"].problem
    assert "did you mean 'buffer_size'" in by_key["strategy_params.buffer_sise"].problem
    assert by_key["strategy"].fix == "did you mean 'fedbuff'?"
    assert by_key["data.partition"].fix == "did you mean 'dirichlet'?"
    assert "<= 1" in by_key["target_accuracy"].problem
    assert "integer" in by_key["limits.max_versions"].problem


def test_config_syntax_error_and_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as info:
        load_run_config(_write(tmp_path, "seed = \n"))
    assert info.value.issues[0].key.startswith("line 1")
    with pytest.raises(DataFileError) as info:
        load_run_config(_write(tmp_path, 'model = "har_cn"\n'))
    (issue,) = info.value.issues
    assert issue.key == "model" and issue.fix == "did you mean 'har_cnn'?"


def test_config_paths_resolve_against_the_file_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(b"x")
    (tmp_path / "train.npz").write_bytes(b"x")
    cfg = load_run_config(_write(tmp_path, 'model = "m.tflite"\n[data]\nnpz = "train.npz"\n'))
    assert cfg.model == str((tmp_path / "m.tflite").resolve())
    assert cfg.data.npz == str((tmp_path / "train.npz").resolve())
    with pytest.raises(DataFileError) as info:
        load_run_config(_write(tmp_path, 'model = "gone.tflite"\n[data]\nnpz = "train.npz"\ntest_npz = "no.npz"\n'))
    assert {i.key for i in info.value.issues} == {"model", "data.test_npz"}
    with pytest.raises(DataFileError) as info:
        load_run_config(_write(tmp_path, 'model = "m.tflite"\n'))
    assert [i.key for i in info.value.issues] == ["data.npz"]


def test_config_toml_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig.model_validate({
        "model": "digits_cnn", "strategy": "fedbuff", "target_accuracy": 0.9, "seed": 2**40,
        "start": "fresh-head", "data": {"partition": "dirichlet", "alpha": 0.1},
        "strategy_params": {"buffer_size": 5, "staleness_exponent": 1e-3, "server_lr": 0.7},
        "limits": {"max_seconds": 90.5, "max_versions": 40, "max_bytes": 10_000_000_000},
        "training": {"epochs": 3, "lr": 1e-5, "batch_size": 8, "per_channel": True, "head_cache": False},
        "checks": {"norm_bound": 3.25, "max_staleness": 0},
        "devices": {"device_timeout_s": 5.0, "retries": 0, "backoff_s": 0.0},
    })
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    written = cfg.dump(run_dir)
    assert written == run_dir / "config.toml"
    assert load_run_config(written) == cfg
    assert load_run_config(_write(tmp_path, RunConfig().to_toml(), "d.toml")) == RunConfig()
    # A path with quotes, backslashes and non-ASCII survives the trip.
    odd = tmp_path / 'dir "q" \\ é'
    odd.mkdir()
    (odd / "m.tflite").write_bytes(b"x")
    (odd / "t.npz").write_bytes(b"x")
    cfg2 = RunConfig(model=str(odd / "m.tflite"), data={"npz": str(odd / "t.npz")})  # type: ignore[arg-type]
    assert load_run_config(cfg2.dump(tmp_path / "odd.toml")) == cfg2


# -- checkpoints --------------------------------------------------------------------------------


def _state(version: int = 3, seed: int = 0) -> Checkpoint:
    rng = np.random.default_rng(seed)
    return Checkpoint(
        version=version,
        globals={"w": rng.standard_normal(100).astype(np.float32), "bias": np.zeros(3, np.float32)},
        strategy_state={
            "buffer": [{"delta": rng.integers(-128, 127, 10).astype(np.int8), "scale": 0.5, "n": 4, "v": 2}],
            "median_var": None,
            "a/b": {"c": np.arange(4, dtype=np.int64)},
            "a": {"b/c": np.ones(2, np.float64)},
        },
        devices={"d0": {"state": "busy", "task": "t9", "retries": 1}, "d1": {"state": "idle"}},
        rng_state=rng.bit_generator.state,
        event_position=1234,
        accepted_update_ids=["u1", "u2", 7],
    )


def _same(a: Checkpoint, b: Checkpoint) -> None:
    assert (a.version, a.event_position, a.accepted_update_ids, a.devices, a.rng_state) == (
        b.version, b.event_position, b.accepted_update_ids, b.devices, b.rng_state)
    assert a.globals.keys() == b.globals.keys()
    for k in a.globals:
        np.testing.assert_array_equal(a.globals[k], b.globals[k])
        assert b.globals[k].dtype == np.float32
    buf_a, buf_b = a.strategy_state["buffer"][0], b.strategy_state["buffer"][0]
    np.testing.assert_array_equal(buf_a["delta"], buf_b["delta"])
    assert buf_b["delta"].dtype == np.int8 and buf_b["scale"] == 0.5 and buf_b["n"] == 4
    np.testing.assert_array_equal(b.strategy_state["a/b"]["c"], np.arange(4))
    np.testing.assert_array_equal(b.strategy_state["a"]["b/c"], np.ones(2))
    assert b.strategy_state["median_var"] is None


def test_checkpoint_round_trip_and_generations(tmp_path: Path) -> None:
    assert read_checkpoint(tmp_path) is None
    assert read_checkpoint(tmp_path / "missing") is None
    for v in (1, 2, 3):
        write_checkpoint(tmp_path, _state(v, seed=v))
    back = read_checkpoint(tmp_path)
    assert back is not None and back.generation == 3
    _same(_state(3, seed=3), back)
    # The previous generation is kept; older ones are gone.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-00000002.json", "checkpoint-00000002.npz",
                     "checkpoint-00000003.json", "checkpoint-00000003.npz"]


def test_rng_state_round_trip_gives_the_same_draws(tmp_path: Path) -> None:
    for gen in (np.random.default_rng(11), np.random.Generator(np.random.MT19937(5))):
        gen.standard_normal(17)
        state = Checkpoint(version=0, globals={"w": np.zeros(1, np.float32)}, rng_state=gen.bit_generator.state)
        write_checkpoint(tmp_path, state)
        expected = gen.standard_normal(5), gen.integers(0, 1000, 5)
        back = read_checkpoint(tmp_path)
        assert back is not None
        again = back.rng()
        np.testing.assert_array_equal(again.standard_normal(5), expected[0])
        np.testing.assert_array_equal(again.integers(0, 1000, 5), expected[1])


@pytest.mark.parametrize("failing_call", [1, 2], ids=["npz-rename", "json-rename"])
def test_crash_before_rename_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    write_checkpoint(tmp_path, _state(1, seed=1))
    real_replace = os.replace
    calls = {"n": 0}

    def crashing_replace(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise OSError("simulated crash")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(WriteError, match=r"cannot write checkpoint-00000002\.(npz|json) \(simulated crash\)"):
        write_checkpoint(tmp_path, _state(2, seed=2))
    monkeypatch.setattr(os, "replace", real_replace)
    back = read_checkpoint(tmp_path)
    assert back is not None and back.generation == 1
    _same(_state(1, seed=1), back)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # The next write recovers: the orphan npz (if any) is replaced, and generation 2 reads back.
    write_checkpoint(tmp_path, _state(5, seed=5))
    back = read_checkpoint(tmp_path)
    assert back is not None and back.generation == 2
    _same(_state(5, seed=5), back)


def test_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _state(1, seed=1))
    write_checkpoint(tmp_path, _state(2, seed=2))
    npz = tmp_path / "checkpoint-00000002.npz"
    js = tmp_path / "checkpoint-00000002.json"
    good_npz, good_js = npz.read_bytes(), js.read_bytes()

    npz.write_bytes(good_npz[: len(good_npz) // 2])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path)
    assert info.value.source == str(npz) and "truncated" in info.value.problem
    assert "checkpoint-00000001.json" in (info.value.fix or "")

    # An npz from another generation (same size is not enough: the hash is checked).
    npz.write_bytes(good_npz[:-1] + bytes([good_npz[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_checkpoint(tmp_path)
    npz.write_bytes(good_npz)

    js.write_bytes(good_js[: len(good_js) // 2])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path)
    assert info.value.source == str(js) and "not valid JSON" in info.value.problem
    assert isinstance(info.value, TinyfedError)

    npz.unlink()
    js.write_bytes(good_js)
    with pytest.raises(CheckpointError, match="array file is missing"):
        read_checkpoint(tmp_path)

    # Moving the damaged generation away (the fix) resumes from the previous one.
    js.unlink()
    back = read_checkpoint(tmp_path)
    assert back is not None and back.version == 1


def test_checkpoint_refuses_state_it_could_not_read_back(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="float32"):
        write_checkpoint(tmp_path, Checkpoint(version=1, globals={"w": np.zeros(2)}))
    with pytest.raises(TypeError, match="cannot be checkpointed"):
        write_checkpoint(tmp_path, Checkpoint(version=1, globals={"w": np.zeros(2, np.float32)},
                                              strategy_state={"x": {1, 2}}))
    assert read_checkpoint(tmp_path) is None


# -- event log ----------------------------------------------------------------------------------


def test_events_append_read_and_continue_after_reopen(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append("run_start", strategy="ftte")
        log.append("dispatch", task="t0", device="d0")
        first = log.append("arrival", task="t0", device="d0", n=12)
    events = list(read_events(tmp_path))
    assert [e["seq"] for e in events] == [0, 1, 2]
    assert events[2] == first and events[2]["n"] == 12
    assert all(isinstance(e["wall"], float) for e in events)
    with EventLog(tmp_path) as log:
        assert log.next_seq == 3
        later = log.append("aggregation", version=1)
    assert later["seq"] == 3 and later["t"] >= first["t"]
    with EventLog(tmp_path), pytest.raises(EventLogError, match="another process"):
        EventLog(tmp_path)
    with EventLog(tmp_path) as log, pytest.raises(ValueError, match="unknown event kind"):
        log.append("arival", task="t1")
    with EventLog(tmp_path) as log, pytest.raises(ValueError, match="needs reason"):
        log.append("rejection", task="t1")


def test_torn_last_line_is_tolerated_and_cut(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        for i in range(3):
            log.append("dispatch", task=f"t{i}", device="d0")
        end = log.position()
    path = tmp_path / "events.jsonl"
    assert end == path.stat().st_size
    with path.open("ab") as fh:
        fh.write(b'{"seq":3,"t":1.0,"wall":2.0,"kind":"arr')
    assert [e["task"] for e in read_events(path)] == ["t0", "t1", "t2"]
    assert complete_length(path) == end
    with EventLog(tmp_path) as log:
        assert log.position() == end and path.stat().st_size == end
        assert log.append("arrival", task="t0")["seq"] == 3
    assert len(list(read_events(path))) == 4


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        for i in range(3):
            log.append("dispatch", task=f"t{i}", device="d0")
    path = tmp_path / "events.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:10] + b"#" + lines[1][11:]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(EventLogError) as info:
        list(read_events(path))
    assert info.value.source == str(path) and "line 2" in info.value.problem
    assert f"byte {len(lines[0]) + 1}" in info.value.problem
    with pytest.raises(EventLogError):
        EventLog(tmp_path)
    # A missing event (seq gap) is damage too.
    path.write_bytes(b"\n".join([lines[0], lines[2], b""]))
    with pytest.raises(EventLogError, match="seq 2 where 1"):
        list(read_events(path))
    # So is a line that is not UTF-8 (a flipped high bit), not a crash of the reader.
    path.write_bytes(b"\n".join([lines[0], b"\xff" + lines[1][1:], lines[2], b""]))
    with pytest.raises(EventLogError, match=r"line 2 .*not valid JSON \(invalid start byte\)"):
        list(read_events(path))


def test_position_and_truncate_to(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        assert log.position() == 0
        log.append("dispatch", task="t0", device="d0")
        log.append("arrival", task="t0")
        log.append("aggregation", version=1)
        pos = log.position()
        log.append("dispatch", task="t1", device="d0")
        log.append("dispatch", task="t2", device="d1")
        log.truncate_to(pos)
        assert log.position() == pos and log.next_seq == 3
        assert log.append("checkpoint", version=1)["seq"] == 3
        with pytest.raises(EventLogError, match="complete bytes"):
            log.truncate_to(log.position() + 1)
        with pytest.raises(EventLogError, match="not at the end of an event"):
            log.truncate_to(pos - 1)
        log.truncate_to(0)
        assert log.position() == 0 and log.next_seq == 0
    assert list(read_events(tmp_path)) == []


def test_summarize_accounts_for_every_task(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        for i, dev in enumerate(["d0", "d1", "d2", "d3"]):
            log.append("dispatch", task=f"t{i}", device=dev)
            log.append("bytes", direction="down", n=1000)
        log.append("arrival", task="t0", device="d0")
        log.append("bytes", direction="up", n=40)
        log.append("rejection", task="t1", device="d1", reason="norm 1e9 above bound 100")
        log.append("bytes", direction="up", n=40)
        log.append("device_state", device="d2", state="late")
        log.append("aggregation", version=1)
        log.append("evaluation", version=1, accuracy=0.61)
        log.append("rejection", task="t0", device="d0", reason="replayed")  # replay of an accepted update
        log.append("rejection", task="x9", device="d0", reason="unknown task")
        log.append("evaluation", version=1, accuracy=0.9)
    s = summarize(read_events(tmp_path), target_metric=0.85)
    assert (s["versions"], s["bytes_up"], s["bytes_down"]) == (1, 80, 4000)
    assert (s["updates_accepted"], s["updates_rejected"]) == (1, 3)
    assert s["rejection_reasons"]["replayed"] == 1
    assert s["final_accuracy"] == 0.9 and s["reached_target"] is True
    assert (s["tasks_dispatched"], s["tasks_arrived"], s["tasks_rejected"], s["tasks_lost"]) == (4, 1, 1, 0)
    assert s["tasks_unaccounted"] == ["t2", "t3"] and not s["all_tasks_accounted"]
    assert s["tasks_unknown"] == ["x9"]
    assert s["device_states"] == {"d2": "late"}
    with EventLog(tmp_path) as log:
        log.append("lost", task="t2", device="d2", reason="timeout after 3 retries")
        log.append("lost", task="t3", device="d3", reason="run ended")
    s = summarize(read_events(tmp_path))
    assert s["all_tasks_accounted"] and s["tasks_lost"] == 2
    assert s["tasks_arrived"] + s["tasks_rejected"] + s["tasks_lost"] == s["tasks_dispatched"]
    assert "reached_target" not in s


# -- a real crash -------------------------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from tinyfed.host.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
    from tinyfed.host.events import EventLog

    run = Path(sys.argv[1])
    ck = read_checkpoint(run)
    log = EventLog(run)
    if ck is None:
        version, rng, accepted = 0, np.random.default_rng(7), []
        log.append("run_start")
    else:
        log.truncate_to(ck.event_position)
        version, rng, accepted = ck.version, ck.rng(), list(ck.accepted_update_ids)
        log.append("resume", version=version)
    print("ready", flush=True)
    while True:
        task = f"v{version + 1}"
        log.append("dispatch", task=task, device="d0")
        log.append("bytes", direction="down", n=100)
        log.append("arrival", task=task, device="d0")
        log.append("bytes", direction="up", n=10)
        noise = rng.standard_normal(4).astype(np.float32)
        version += 1
        accepted.append(task)
        log.append("aggregation", version=version)
        log.sync()
        write_checkpoint(run, Checkpoint(
            version=version,
            globals={"w": np.full(20_000, version, np.float32)},
            strategy_state={"last": {"delta": noise, "n": 3}},
            rng_state=rng.bit_generator.state,
            event_position=log.position(),
            accepted_update_ids=accepted,
        ))
""")


def _events_before(path: Path, position: int) -> list[dict]:
    data = path.read_bytes()[:position]
    return [json.loads(line) for line in data.split(b"\n") if line]


def test_sigkill_leaves_a_consistent_checkpoint_and_log(tmp_path: Path) -> None:
    seed = int(time.time())
    chooser = random.Random(seed)
    run = tmp_path / "run"
    log_path = run / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    draws = np.random.default_rng(7)
    expected_noise: list[np.ndarray] = []
    last_version = 0
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(run)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == b"ready\n", proc.stderr.read() if proc.stderr else line
            # wait for a new checkpoint (a poll: the worker writes them as fast as it can); the bound
            # is for a hung worker, never for a slow host
            deadline = time.monotonic() + 300
            while read_checkpoint_version(run) <= last_version:
                assert time.monotonic() < deadline and proc.poll() is None, f"no new checkpoint (attempt {attempt})"
                time.sleep(0.005)
            time.sleep(chooser.uniform(0.0, 0.25))  # not a wait: the kill lands at a random point of the loop
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=300)
        assert proc.returncode == -signal.SIGKILL

        where = f"(attempt {attempt}, random seed {seed})"
        ck = read_checkpoint(run)
        assert ck is not None, where
        events = list(read_events(log_path))
        assert events, where
        assert ck.event_position <= complete_length(log_path), where
        covered = _events_before(log_path, ck.event_position)
        assert [e["seq"] for e in covered] == list(range(len(covered))), where
        aggregations = [e["version"] for e in covered if e["kind"] == "aggregation"]
        assert aggregations == list(range(1, ck.version + 1)), where
        assert ck.version >= last_version, where
        np.testing.assert_array_equal(ck.globals["w"], np.full(20_000, ck.version, np.float32))
        assert ck.accepted_update_ids == [f"v{i}" for i in range(1, ck.version + 1)], where
        while len(expected_noise) < ck.version:
            expected_noise.append(draws.standard_normal(4).astype(np.float32))
        np.testing.assert_array_equal(ck.strategy_state["last"]["delta"], expected_noise[ck.version - 1])
        s = summarize(covered)
        assert s["all_tasks_accounted"] and s["updates_accepted"] == ck.version, where
        last_version = ck.version
    assert last_version >= 4


def read_checkpoint_version(run: Path) -> int:
    """The newest checkpoint's version, or 0 (the writer may be mid-write: retry later)."""
    try:
        ck = read_checkpoint(run)
    except (CheckpointError, FileNotFoundError):
        return 0
    return ck.version if ck is not None else 0


def test_documented_examples_load(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "run-config.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```toml\n")[1:]]
    assert len(blocks) == 2
    assert load_run_config(_write(tmp_path, blocks[0], "defaults.toml")) == RunConfig()
    (tmp_path / "models").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "models" / "kws_int8.tflite").write_bytes(b"x")
    (tmp_path / "data" / "kws.npz").write_bytes(b"x")
    cfg = load_run_config(_write(tmp_path, blocks[1], "fedavg.toml"))
    assert (cfg.strategy, cfg.data.partition, cfg.limits.max_versions) == ("fedavg", "dirichlet", 50)
