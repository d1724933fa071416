"""A user's own int8 .tflite with an NPZ of samples: sharding (by user, IID, Dirichlet), the
held-out split, every kind of bad file named with its fix, and a run end to end on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyfed.errors import DatasetError
from tinyfed.host.rundata import user_run_data


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The digits model as a user would hold it: a .tflite file and an NPZ of their data."""
    from tinyfed.models.zoo import get_zoo_model

    zm = get_zoo_model("digits_cnn")
    d = tmp_path_factory.mktemp("user")
    model = d / "my_model_int8.tflite"
    model.write_bytes(zm.int8_tflite())
    c, t = zm.client_split(), zm.test_split()
    arrays = {"x": c.x, "y": c.y, "x_test": t.x, "y_test": t.y}
    np.savez(d / "data.npz", **arrays)
    return {"dir": d, "model": str(model), "npz": d / "data.npz", "arrays": arrays}


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_user_data_is_checked_against_the_model_and_sharded(digits: dict) -> None:
    data = user_run_data(digits["model"], digits["npz"])
    a = digits["arrays"]
    assert data.num_classes == 10 and data.x.shape == a["x"].shape and len(data.y_test) == len(a["y_test"])
    assert data.groups is None
    iid = data.shares("iid", 8, 0.5, seed=3)
    assert sorted(np.concatenate(iid).tolist()) == list(range(len(data.y)))  # every sample once
    assert max(map(len, iid)) - min(map(len, iid)) <= 1
    skew = data.shares("dirichlet", 8, 0.1, seed=3)
    assert [p.tolist() for p in skew] == [p.tolist() for p in data.shares("dirichlet", 8, 0.1, seed=3)]
    classes_held = [len(np.unique(data.y[p])) for p in skew]
    assert np.mean(classes_held) < np.mean([len(np.unique(data.y[p])) for p in iid])  # label skew
    with pytest.raises(DatasetError, match="no `user` array") as info:
        data.shares("natural", 8, 0.5, seed=0)
    assert "--partition iid" in info.value.fix


def test_a_user_array_gives_the_natural_partition(digits: dict, tmp_path: Path) -> None:
    a = digits["arrays"]
    users = np.arange(len(a["y"])) % 5
    data = user_run_data(digits["model"], _npz(tmp_path / "u.npz", **a, user=users))
    parts = data.shares("natural", 5, 0.5, seed=0)
    assert [set(users[p]) for p in parts] == [{u} for u in range(5)]
    assert sum(map(len, data.shares("natural", 12, 0.5, seed=0))) == len(users)  # users split for more devices


def _grouped(groups: list[int]):
    from tinyfed.host.rundata import RunData

    n = len(groups)
    return RunData("pinned", b"", 3, np.zeros((n, 1), np.float32), np.zeros(n, np.int64), np.array(groups),
                   np.zeros((1, 1), np.float32), np.zeros(1, np.int64))


def test_natural_shares_give_extra_devices_parts_of_users_as_pinned() -> None:
    """Pinned: fewer devices than users take the first users; more split each user (seeded), the
    first ``devices % users`` users into one more part. A change here reshuffles every run's data."""
    data = _grouped([2, 0, 1, 0, 2, 2, 1, 0, 0, 2, 1, 0, 2])  # user 0: 5 samples, user 1: 3, user 2: 5
    shares = {n: [p.tolist() for p in data.shares("natural", n, 0.5, 4)] for n in (2, 3, 5, 7)}
    assert shares == {
        2: [[1, 3, 7, 8, 11], [2, 6, 10]],
        3: [[1, 3, 7, 8, 11], [2, 6, 10], [0, 4, 5, 9, 12]],
        5: [[1, 7, 11], [3, 8], [6, 10], [2], [0, 4, 5, 9, 12]],
        7: [[7, 11], [1, 3], [8], [6, 10], [2], [0, 5, 12], [4, 9]],
    }


def test_a_zoo_model_and_its_users_as_plain_data_shard_alike() -> None:
    """The zoo's natural partition (``ZooModel.client_partitions``) and a user's NPZ with the
    same ``user`` array divide users among extra devices the same way."""
    from tinyfed.models.zoo import get_zoo_model

    zm = get_zoo_model("har_cnn")
    data = _grouped(zm.client_split().groups.tolist())
    users = len(np.unique(data.groups))
    for n, seed in ((users, 0), (users + 1, 3), (2 * users + 5, 1)):
        zoo = zm.client_partitions("natural", n_clients=n, seed=seed)
        assert [p.tolist() for p in data.shares("natural", n, 0.5, seed)] == [p.tolist() for p in zoo]


def test_a_separate_test_file_is_the_held_out_split(digits: dict, tmp_path: Path) -> None:
    a = digits["arrays"]
    train = _npz(tmp_path / "train.npz", x=a["x"], y=a["y"])
    with pytest.raises(DatasetError, match="no held-out split") as info:
        user_run_data(digits["model"], train)
    assert "--test-data" in info.value.fix
    test = _npz(tmp_path / "test.npz", x_test=a["x_test"][:50], y_test=a["y_test"][:50])
    assert len(user_run_data(digits["model"], train, test).y_test) == 50


@pytest.mark.parametrize(("arrays", "problem"), [
    (lambda a: {"x": a["x"], "x_test": a["x_test"], "y_test": a["y_test"]}, "has no y"),
    (lambda a: {**a, "y": a["y"][:-1]}, "needs one label per sample"),
    (lambda a: {**a, "y": np.where(a["y"] == 3, 10, a["y"])}, "outside 0..9"),
    (lambda a: {**a, "y": a["y"] + 0.5}, "outside 0..9"),
    (lambda a: {**a, "x": a["x"].reshape(len(a["x"]), -1)[:, :60]}, "the model takes"),
    (lambda a: {**a, "x": np.where(np.arange(a["x"].size).reshape(a["x"].shape) == 7, np.nan, a["x"])},
     "1 sample\\(s\\) with NaN"),
    (lambda a: {**a, "user": np.zeros(3, np.int64)}, "`user` has shape"),
])
def test_bad_data_is_named_with_the_fix(digits: dict, tmp_path: Path, arrays, problem: str) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays(digits["arrays"]))
    with pytest.raises(DatasetError, match=problem) as info:
        user_run_data(digits["model"], path)
    assert info.value.source == str(path) and info.value.fix


def test_a_corrupt_npz_or_a_missing_model_is_named(digits: dict, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(digits["npz"].read_bytes()[:500])
    with pytest.raises(DatasetError, match="cannot read corrupt.npz"):
        user_run_data(digits["model"], bad)
    with pytest.raises(DatasetError, match="no such model file"):
        user_run_data(str(tmp_path / "gone.tflite"), digits["npz"])


def test_one_hot_labels_are_taken_as_class_indices(digits: dict, tmp_path: Path) -> None:
    a = digits["arrays"]
    path = _npz(tmp_path / "onehot.npz", **{**a, "y": np.eye(10, dtype=np.float32)[a["y"]]})
    assert np.array_equal(user_run_data(digits["model"], path).y, a["y"])


def test_the_whole_model_program_is_compiled_once_for_sizing_and_for_the_run(digits: dict, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``--emulate`` sizes a dense baseline's program before booting; prepare_run sends that one."""
    from tinyfed.firmware_bridge.compile import train_blob
    from tinyfed.host.setup import DeviceSpec, prepare_run
    from tinyfed.planner.dense import plan_dense_model, training_program

    compiled: list[int] = []
    real = train_blob.compile_program

    def counting(model: bytes, trainable: bytes) -> bytes:
        compiled.append(len(model))
        return real(model, trainable)

    monkeypatch.setattr(train_blob, "compile_program", counting)
    training_program.cache_clear()
    need = plan_dense_model(digits["model"])
    devices = [DeviceSpec(f"d{i}", f"sim://mps2-an386?name=d{i}", "mps2-an386") for i in range(2)]
    setup = prepare_run(digits["model"], devices, "dense", work_dir=tmp_path, partition="iid", npz=str(digits["npz"]))
    assert len(compiled) == 1 and len(setup.program) == need.program_bytes
    assert setup.plan is not None and setup.plan.ram_bytes == need.ram_bytes


def test_data_without_users_is_shared_iid_unless_a_partition_is_chosen(tmp_path: Path) -> None:
    """The zoo's digits have no users: `run --model digits_cnn` shares them out iid (and records it)
    rather than failing on the default natural partition; a chosen natural partition names the option."""
    from click.testing import CliRunner

    from tinyfed.cli import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--simulate", "2", "--model", "digits_cnn", "--max-versions", "1",
                                      "--max-windows", "16", "--target-accuracy", "0.5", "--seed", "3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no users to partition by, so each board gets an iid share" in result.output
    recorded = (out / "config.toml").read_text()
    assert 'partition = "iid"' in recorded and "seed = 3" in recorded  # run takes --seed like simulate and demo
    chosen = CliRunner().invoke(cli, ["run", "--simulate", "2", "--model", "digits_cnn", "--partition", "natural",
                                      "--max-versions", "1", "--out", str(tmp_path / "natural")])
    assert chosen.exit_code == 2 and "--partition iid" in chosen.output and "kind=" not in chosen.output


@pytest.mark.parametrize("fleet", [["--simulate", "2"], ["--emulate", "2"]])
def test_natural_partition_on_data_without_users_fails_before_any_board_is_opened(
        digits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet: list[str]) -> None:
    from click.testing import CliRunner

    from tinyfed.cli import cli
    from tinyfed.commands import run as run_command

    opened: list[dict] = []

    def no_devices(*args, **kwargs):
        opened.append(kwargs)
        raise AssertionError("devices opened before the data was checked")

    monkeypatch.setattr(run_command, "open_devices", no_devices)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", *fleet, "--model", digits["model"], "--data", str(digits["npz"]),
                                      "--partition", "natural", "--max-versions", "1", "--out", str(out)])
    assert not opened
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert "no `user` array" in result.output and "--partition iid" in result.output
    assert not out.exists()  # nor a run directory made for it


def test_tinyfed_run_trains_a_users_tflite_on_their_npz(digits: dict, tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", "run", "--simulate", "4", "--model", digits["model"],
                           "--data", str(digits["npz"]), "--partition", "dirichlet", "--alpha", "0.5",
                           "--max-versions", "2", "--target-accuracy", "0.999", "--out", str(out), "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]  # 2 versions stop short of the 0.999 target
    assert "the run stopped before its target accuracy 0.999" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["versions"] == 2 and summary["updates_accepted"] >= 8 and 0.8 < summary["final_accuracy"] <= 1
    assert Path(summary["export"]["final"]).is_file()
    recorded = (out / "config.toml").read_text()
    assert f'model = "{digits["model"]}"' in recorded and 'partition = "dirichlet"' in recorded
    assert str(digits["npz"]) in recorded


def test_a_program_or_local_data_beyond_the_boards_stores_is_refused_before_provisioning() -> None:
    from tinyfed.boards import get_board
    from tinyfed.errors import DatasetError, PlanError
    from tinyfed.firmware_bridge.compile import local_data
    from tinyfed.host.setup import DeviceSpec, check_stores

    board = get_board("nrf52840")
    devices = [DeviceSpec("b0", "sim://nrf52840", "nrf52840")]
    per = 3072  # one 32x32x3 int8 sample
    n = board.data_store_bytes // per + 1
    image = local_data.pack(np.zeros((n, per), np.int8), np.zeros(n, int), classes=10)
    with pytest.raises(DatasetError, match=r"data store of 389,120 bytes") as info:  # 3/8 of 1 MiB less the key page
        check_stores(devices, b"p" * 100, {"b0": image}, {"b0": n})
    assert f"--max-windows {(board.data_store_bytes - 36) // per}" in info.value.fix
    fits = local_data.pack(np.zeros(((board.data_store_bytes - 36) // per, per), np.int8),
                           np.zeros((board.data_store_bytes - 36) // per, int), classes=10)
    check_stores(devices, b"p" * board.program_store_bytes, {"b0": fits}, {"b0": 1})
    with pytest.raises(PlanError, match=r"program store of 65,536 bytes"):
        check_stores(devices, b"p" * (board.program_store_bytes + 1), {"b0": fits}, {"b0": 1})
