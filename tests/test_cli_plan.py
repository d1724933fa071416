"""`tinyfed plan` as a user types it: JSON output, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import _models

pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a child, as a user would (stderr is what they see)."""
    import os

    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "tinyfed.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Fix:" in errors[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def cache_env() -> dict[str, str]:
    """The run's shared, content-keyed cache (conftest): har_cnn is converted once per run, not per module."""
    import os

    return {"TINYFED_CACHE_DIR": os.environ["TINYFED_CACHE_DIR"]}


def test_plan_json_on_a_board(work: Path, cache_env: dict[str, str]) -> None:
    proc = _run("plan", "har_cnn", "--board", "nrf52840", "--out", str(work / "p"), "--json", cwd=work,
                env_extra=cache_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["fits"] is True
    assert doc["m_min_bytes"] > 0
    assert 0 < doc["trainable_params"] < doc["total_params"]
    board = doc["boards"]["nrf52840"]
    assert board["ram_bytes_used"] <= board["ram_bytes_budget"] == 256 * 1024
    assert board["flash_bytes_used"] <= board["flash_bytes_budget"] == 1024 * 1024
    names = [Path(p).name for p in doc["fragments"]]
    assert names == (["frozen.tflite"] if doc["cut_op"] > 0 else []) + ["tail.tflite", "trainable.tfw"]
    assert doc["fits"] == board["fits"] and not board["problems"]
    assert doc["importance"] == doc["training_config"]["importance"] == "fisher"


def test_plan_table_on_the_default_fleet(work: Path, cache_env: dict[str, str]) -> None:
    proc = _run("plan", "har_cnn", "--fleet", "smartwatch", "--out", str(work / "f"), "--no-measure", cwd=work,
                env_extra=cache_env)
    assert proc.returncode == 0, proc.stderr
    for name in ("nrf52840", "apollo3", "stm32l4r9", "rp2040"):
        assert name in proc.stdout
    assert "M_min" in proc.stdout
    assert "loading har_cnn" in proc.stderr and "planning for smartwatch: done in" in proc.stderr  # not silent
    written = sorted(p.name for p in (work / "f").iterdir())
    assert len(written) == 5  # every file the plan wrote is named, with what it is for
    assert sorted(line.split()[1].rsplit("/", 1)[-1] for line in proc.stdout.splitlines()
                  if line.startswith("wrote ")) == written


def test_plan_fleet_shows_nested_subsets_per_class(work: Path, cache_env: dict[str, str]) -> None:
    proc = _run("plan", "har_cnn", "--fleet", "smartwatch", "--nested", "--core-budget", "0.1", "--out",
                str(work / "n"), "--no-measure", cwd=work, env_extra=cache_env)
    assert proc.returncode == 0, proc.stderr
    assert "nested subsets: global vector" in proc.stdout and "core set by rp2040" in proc.stdout
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│")}
    assert {"nrf52840", "apollo3", "stm32l4r9", "rp2040"} <= set(rows)
    doc = json.loads((work / "n" / "plan.json").read_text())
    classes = doc["nested"]["classes"]
    assert classes["rp2040"]["training_memory_ratio"] <= 0.1 < classes["stm32l4r9"]["training_memory_ratio"]
    assert f"{classes['stm32l4r9']['values']:,}" in rows["stm32l4r9"]
    assert (work / "n" / "nested" / "stm32l4r9" / "trainable.tfw").is_file()


def test_full_training_exits_1_with_the_reason(work: Path, cache_env: dict[str, str]) -> None:
    proc = _run("plan", "har_cnn", "--board", "nrf52840", "--trainable", "full", "--no-measure", "--json",
                "--out", str(work / "full"), cwd=work, env_extra=cache_env)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["fits"] is False
    assert any("nrf52840: RAM" in p for p in doc["problems"])


def test_corrupt_tflite(work: Path) -> None:
    path = work / "corrupt.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 3)
    _assert_one_line_error(_run("plan", str(path), "--board", "nrf52840", cwd=work), "corrupt.tflite")


def test_truncated_tflite(work: Path) -> None:
    whole = _models.chain_cnn_int8()
    path = work / "truncated.tflite"
    path.write_bytes(whole[: len(whole) // 2])
    _assert_one_line_error(_run("plan", str(path), "--board", "nrf52840", cwd=work), "truncated.tflite")


def test_float_tflite(work: Path) -> None:
    path = work / "float.tflite"
    path.write_bytes(_models.chain_cnn_float())
    _assert_one_line_error(_run("plan", str(path), "--board", "nrf52840", cwd=work), "FLOAT32")


def test_unsupported_op(work: Path) -> None:
    import numpy as np

    from tinyfed.models.convert import convert_keras_to_int8

    keras = _models._tf().keras
    inputs = keras.Input((8, 8, 1), batch_size=1)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Activation("gelu")(x)  # GELU: no firmware kernel
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    data = convert_keras_to_int8(model, np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32))
    path = work / "gelu.tflite"
    path.write_bytes(data)
    _assert_one_line_error(_run("plan", str(path), "--board", "nrf52840", cwd=work), "GELU")


def test_unknown_board(work: Path) -> None:
    _assert_one_line_error(_run("plan", "har_cnn", "--board", "nrf5284", cwd=work), "nrf5284", "nrf52840")


def test_board_file_with_a_typo(work: Path) -> None:
    boards = work / "myboards"
    boards.mkdir()
    text = (Path(__file__).parents[1] / "tinyfed/boards/data/nrf52840.toml").read_text()
    renamed = text.replace('name = "nrf52840"', 'name = "mywatch"').replace("ram_kib", "ram_kb", 1)
    (boards / "mywatch.toml").write_text(renamed)
    proc = _run("plan", "har_cnn", "--board", "mywatch", "--boards-dir", str(boards), cwd=work)
    _assert_one_line_error(proc, "mywatch.toml", "ram_kb", "ram_kib")


def test_fleet_naming_a_missing_board(work: Path) -> None:
    fleet = work / "fleet.toml"
    fleet.write_text('name = "f"\n[[boards]]\nboard = "nrf52840"\ncount = 2\n[[boards]]\nboard = "apolo3"\ncount = 1\n')
    _assert_one_line_error(_run("plan", "har_cnn", "--fleet", str(fleet), cwd=work), "fleet.toml", "apolo3", "apollo3")


def test_unknown_model(work: Path) -> None:
    _assert_one_line_error(_run("plan", "har_cn", "--board", "nrf52840", cwd=work), "har_cn", "har_cnn")


def test_verbose_shows_the_traceback(work: Path) -> None:
    proc = _run("-v", "plan", "har_cn", "--board", "nrf52840", cwd=work)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_json_error_is_one_object_on_stdout(work: Path) -> None:
    proc = _run("plan", "har_cnn", "--board", "nrf5284", "--json", cwd=work)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["error"] == "BoardError" and "nrf52840" in doc["problem"] and doc["fix"]


def test_unwritable_out_dir_fails_before_planning(work: Path) -> None:
    blocker = work / "a_file"
    blocker.write_text("")
    proc = _run("plan", "har_cnn", "--board", "nrf52840", "--out", str(blocker / "plan"), cwd=work)
    _assert_one_line_error(proc, "a_file")


def test_user_keras_model_with_representative_data(work: Path, cache_env: dict[str, str]) -> None:
    import numpy as np

    keras = _models._tf().keras
    inputs = keras.Input((1, 32, 3))
    x = keras.layers.Conv2D(8, (1, 5), activation="relu")(inputs)
    x = keras.layers.MaxPooling2D((1, 2))(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(4)(x)))
    model_path, data_path = work / "user.keras", work / "calib.npy"
    model.save(model_path)
    np.save(data_path, np.random.default_rng(1).normal(size=(40, 1, 32, 3)).astype(np.float32))
    out = work / "user_plan"
    proc = _run("plan", str(model_path), "--representative", str(data_path), "--board", "apollo3", "--out", str(out),
                "--json", cwd=work, env_extra=cache_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["fits"] and doc["importance"] == "fisher" and doc["trainable_params"] > 0
    assert (out / "plan.json").is_file()
    missing = _run("plan", str(model_path), "--board", "apollo3", cwd=work)
    _assert_one_line_error(missing, "representative")
