"""Bad input gets one line naming the problem and the fix (exit 2), never an internal error or a
huge allocation: forged array headers, empty files, out-of-range options and device URLs."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinyfed.cli import cli
from tinyfed.models.arrays import ArrayFileError, read_array, read_arrays


def _forged_npz(path: Path, shape: tuple[int, ...]) -> Path:
    """An NPZ whose x header claims ``shape`` but stores two 8x8 samples."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", head.getvalue() + np.zeros(2 * 64, np.float32).tobytes())
    return path


def test_a_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path: Path) -> None:
    with pytest.raises(ArrayFileError, match=r"238\.4 GiB\), more than tinyfed loads"):
        read_arrays(_forged_npz(tmp_path / "huge.npz", (10**9, 8, 8, 1)))
    with pytest.raises(ArrayFileError, match="truncated or its header is wrong"):
        read_arrays(_forged_npz(tmp_path / "short.npz", (1000, 8, 8, 1)))
    assert read_arrays(_forged_npz(tmp_path / "ok.npz", (2, 8, 8, 1)))["x"].shape == (2, 8, 8, 1)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"PK\x03\x04 not really a zip", "archive is truncated or damaged"),
    (b"\x93NUMPY garbage", "no valid .npy header"),
])
def test_damaged_files_are_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.npy"
    path.write_bytes(content)
    with pytest.raises(ArrayFileError, match=message):
        read_array(path)


def test_objects_empty_archives_and_npz_for_npy(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([1, None], dtype=object))
    with pytest.raises(ArrayFileError, match="never unpickles"):
        read_arrays(tmp_path / "obj.npz")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ArrayFileError, match="holds no arrays"):
        read_arrays(tmp_path / "empty.npz")
    np.savez(tmp_path / "rep.npz", calib=np.ones((3, 4), np.float32))  # an .npz where an .npy was expected
    assert read_array(tmp_path / "rep.npz").shape == (3, 4)
    np.savez(tmp_path / "two.npz", a=np.ones(2), b=np.ones(2))
    with pytest.raises(ArrayFileError, match="none is named 'x'"):
        read_array(tmp_path / "two.npz")


def _fails_cleanly(args: list[str], *needles: str) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (args, result.output)
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    return result.output


def test_check_refuses_forged_empty_and_nan_inputs(tmp_path: Path) -> None:
    _fails_cleanly(["check", "digits_cnn", "--url", "sim://mps2-an386", "--data",
                    str(_forged_npz(tmp_path / "huge.npz", (10**9, 8, 8, 1)))], "more than tinyfed loads")
    (tmp_path / "empty.npz").write_bytes(b"")
    _fails_cleanly(["check", "digits_cnn", "--url", "sim://mps2-an386", "--data", str(tmp_path / "empty.npz")],
                   "is empty")
    x = np.zeros((3, 8, 8, 1), np.float32)
    x[1, 2, 3, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    _fails_cleanly(["check", "digits_cnn", "--url", "sim://mps2-an386", "--data", str(tmp_path / "nan.npz")],
                   "1 of 3 input(s) hold NaN")
    _fails_cleanly(["check", "model.keras", "--url", "sim://mps2-an386"], "is a Keras model", "tinyfed plan")


def test_run_refuses_a_forged_data_file_before_naming_a_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _fails_cleanly(["run", "--simulate", "2", "--model", "digits_cnn", "--max-versions", "1", "--out", str(out),
                    "--data", str(_forged_npz(tmp_path / "huge.npz", (10**9, 8, 8, 1)))], "more than tinyfed loads")
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["plan", "digits_cnn", "--board", "nrf52840", "--batch-size", "0"],
    ["plan", "digits_cnn", "--board", "nrf52840", "--batch-size", "1000000000"],
    ["plan", "digits_cnn", "--board", "nrf52840", "--head-cache-samples", "-1"],
    ["devices", "--url", "sim://mps2-an386", "--timeout", "0"],
    ["devices", "--url", "sim://mps2-an386", "--retries", "-1"],
    ["check", "digits_cnn", "--url", "sim://mps2-an386", "--timeout", "0"],
    ["emulate", "--board", "mps2-an386", "--ready-timeout", "-1"],
    ["demo", "--simulate", "--max-seconds", "nan"],
])
def test_out_of_range_options_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    if args[0] == "demo":
        args = [*args, "--out", str(tmp_path / "demo")]
    _fails_cleanly(args)


@pytest.mark.parametrize(("url", "needle"), [
    ("socket://127.0.0.1:notaport", "the port 'notaport' is not a number from 1 to 65535"),
    ("socket://localhost", "has no HOST:PORT"),
    ("sim://nrf52840?arena_bytes=-1", "arena_bytes must be 1..67,108,864, got -1"),
    ("sim://nrf52840?slot_bytes=1000000000000", "slot_bytes must be 1..67,108,864"),
])
def test_bad_device_urls_say_what_is_wrong(url: str, needle: str) -> None:
    result = CliRunner().invoke(cli, ["devices", "--url", url])
    assert result.exit_code == 1 and needle in result.output and "internal error" not in result.output, result.output


def test_boards_dir_reaches_every_board_lookup(tmp_path: Path) -> None:
    """A board defined only in --boards-dir is found by the planner and the simulator too, not only
    by the command's own lookups; and the directory is forgotten when the command ends."""
    from tinyfed.boards import registry

    boards = tmp_path / "boards"
    boards.mkdir()
    for builtin, mine in (("mps2-an386", "lab-qemu"), ("nrf52840", "lab-watch")):
        text = (registry.BUILTIN_DIR / f"{builtin}.toml").read_text()
        (boards / f"{mine}.toml").write_text(text.replace(f'name = "{builtin}"', f'name = "{mine}"', 1))
    run = CliRunner().invoke(cli, ["run", "--simulate", "2", "--board", "lab-qemu", "--boards-dir", str(boards),
                                   "--model", "digits_cnn", "--max-versions", "1", "--out", str(tmp_path / "r")])
    assert run.exit_code in (0, 1) and "unknown board" not in run.output, run.output
    study = CliRunner().invoke(cli, ["simulate", "--count", "6", "--board-mix", "lab-watch:1", "--boards-dir",
                                     str(boards), "--model", "digits_cnn", "--max-versions", "1",
                                     "--strategies", "ftte", "--json"])
    assert study.exit_code == 0 and "unknown board" not in study.output, study.output
    assert registry._command_dirs == ()


@pytest.mark.parametrize(("args", "needle"), [
    (["simulate", "--seed", "-1"], "--seed"),
    (["simulate", "--eval-samples", "-1"], "--eval-samples"),
    (["simulate", "--lr", "1e9"], "1000000000.0 is not in the range 0<x<=10"),
    (["simulate", "--lr", "nan"], "'nan' is not a finite number"),
    (["simulate", "--epochs", "100000"], "100000 is not in the range 1<=x<=1000"),
    (["simulate", "--norm-bound", "-1"], "--norm-bound"),
    (["simulate", "--max-sim-seconds", "-1"], "--max-sim-seconds"),
    (["simulate", "--max-versions", str(2**64)], "--max-versions"),
    (["simulate", "--workers", "0"], "--workers"),
    (["simulate", "--clients", "100000000"], "100000000 is not in the range 1<=x<=100000"),
    (["demo", "--simulate", "--max-seconds", "inf"], "'inf' is not a finite number"),
    (["emulate", "--board", "mps2-an386", "--count", "257"], "257 is not in the range 1<=x<=256"),
    (["emulate", "--board", "mps2-an386", "--ready-timeout", "nan"], "'nan' is not a finite number in the range x>0"),
    (["run", "--emulate", "257"], "257 boards: give at most 256"),
    (["run", "--simulate", "100001"], "100001 boards: give at most 100,000"),
    (["run", "--simulate", "2", "--max-seconds", "nan"], "--max-seconds"),
    (["devices", "--url", ""], "--url"),
    (["check", "digits_cnn", "--url", "sim://mps2-an386", "--samples", str(2**64)], "--samples"),
])
def test_issue_17_option_cases_are_usage_errors(args: list[str], needle: str) -> None:
    """The issue's list (and the fuzz's finds), kept by name: refused by the option's type before any work."""
    _fails_cleanly(args, needle)


def test_representative_is_checked_before_conversion_and_refused_where_ignored(tmp_path: Path) -> None:
    """`plan x.keras --representative x.npz` (an .npz where a .npy is expected, here a forged one) is one
    line, not `'NpzFile' object has no attribute 'dtype'`; with a zoo model it would be ignored: refused."""
    keras = tmp_path / "x.keras"
    keras.write_bytes(b"not a zip")
    forged = _forged_npz(tmp_path / "x.npz", (10**9, 8, 8, 1))
    _fails_cleanly(["plan", str(keras), "--board", "nrf52840", "--representative", str(forged)],
                   "more than tinyfed loads")
    np.save(tmp_path / "rep.npy", np.zeros((4, 8, 8, 1), np.float32))
    _fails_cleanly(["plan", "digits_cnn", "--board", "nrf52840", "--representative", str(tmp_path / "rep.npy")],
                   "--representative", "drop it")


def test_run_data_shape_and_pairing_are_checked(tmp_path: Path) -> None:
    """A scalar `x` was a TypeError (exit 3); --test-data without --data was silently ignored."""
    np.savez(tmp_path / "scalar.npz", x=np.float32(1.0), y=np.int64(0))
    base = ["run", "--simulate", "2", "--model", "digits_cnn", "--max-versions", "1", "--out", str(tmp_path / "r")]
    _fails_cleanly([*base, "--data", str(tmp_path / "scalar.npz")], "x is a single value of shape ()")
    _fails_cleanly([*base, "--test-data", str(tmp_path / "scalar.npz")], "no --data is given")
    assert not (tmp_path / "r").exists()


def test_option_bounds_are_the_config_bounds() -> None:
    """simulate's options take their ranges from the config fields they set (one place for a bound), and
    options.py restates the fleet bound without importing pydantic."""
    import click

    from tinyfed.boards.schema import MAX_FLEET_DEVICES
    from tinyfed.commands import options
    from tinyfed.commands.simulate import simulate
    from tinyfed.host.config import Training

    assert options.MAX_FLEET_DEVICES == MAX_FLEET_DEVICES
    lr = next(p for p in simulate.params if p.name == "lr").type
    assert isinstance(lr, options.FiniteFloatRange) and (lr.min, lr.max, lr.min_open) == (0, 10, True)
    epochs = options.field_range(Training, "epochs")
    assert isinstance(epochs, click.IntRange) and (epochs.min, epochs.max) == (1, 1000)
