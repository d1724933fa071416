"""Model zoo: splits, committed weights, int8 conversion, TFLM accuracy, reproducible pretraining."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tinyfed.errors import DatasetError, ModelError
from tinyfed.models import zoo
from tinyfed.models.zoo import HAR_PROXY_USERS, ZOO_NAMES, get_zoo_model

REPO = Path(__file__).resolve().parents[1]
MCU_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
FORBIDDEN_OPS = {"EXPAND_DIMS", "SQUEEZE", "MEAN", "SHAPE", "PACK", "STRIDED_SLICE", "QUANTIZE", "DEQUANTIZE"}
MIN_FLOAT_ACCURACY = {"har_cnn": 0.80, "digits_cnn": 0.90}


def _hapt_installed() -> bool:
    from tinyfed.models.datasets import hapt_source_path

    try:
        hapt_source_path()
    except DatasetError:
        return False
    return True


HAPT = _hapt_installed()
ZOO_PARAMS = [
    pytest.param(n, marks=pytest.mark.skipif(not HAPT, reason="HAPT not installed")) if n == "har_cnn" else n
    for n in ZOO_NAMES
]


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Hermetic cache for the windowed HAPT arrays and the int8 flatbuffers."""
    path = tmp_path_factory.mktemp("tinyfed-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYFED_CACHE_DIR", str(path))
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
        yield path


def _subprocess_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TINYFED_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ----------------------------------------------------------------------------- fast: API and splits


def test_names_and_unknown_model() -> None:
    assert ZOO_NAMES == ("har_cnn", "digits_cnn")
    with pytest.raises(ModelError) as info:
        get_zoo_model("har-cnn")
    assert "har_cnn" in (info.value.fix or "")


def test_importing_the_zoo_does_not_import_tensorflow(_cache_dir: Path) -> None:
    code = (
        "import sys, tinyfed.models, tinyfed.models.zoo, tinyfed.models.datasets, tinyfed.models.partition, "
        "tinyfed.models.convert, tinyfed.models.pretrain\n"
        "from tinyfed.models import get_zoo_model\n"
        "z = get_zoo_model('digits_cnn'); z.client_partitions('iid'); z.representative_data()\n"
        "bad = [m for m in ('tensorflow', 'keras', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_subprocess_env(_cache_dir), timeout=120)


@pytest.mark.skipif(not HAPT, reason="HAPT not installed")
def test_har_proxy_users_are_never_clients() -> None:
    zm = get_zoo_model("har_cnn")
    proxy, test, clients = zm.proxy_split(), zm.test_split(), zm.client_split()
    assert proxy.users() == sorted(HAR_PROXY_USERS)
    assert len(clients.users()) == 27 and clients.users() == test.users()
    assert not set(proxy.users()) & set(clients.users())
    assert proxy.x.shape[1:] == zm.input_shape == (1, 128, 6)
    parts = zm.client_partitions("natural")
    assert len(parts) == 27
    for p in parts:
        assert len(np.unique(clients.groups[p])) == 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(clients)))


@pytest.mark.skipif(not HAPT, reason="HAPT not installed")
def test_har_time_split_has_no_overlapping_windows() -> None:
    zm = get_zoo_model("har_cnn")
    test, clients = zm.test_split(), zm.client_split()
    assert 0.15 < len(test) / (len(test) + len(clients)) < 0.25
    assert set(np.unique(test.y)) == set(range(6))
    for u in clients.users():
        a = clients.position[clients.groups == u]
        b = test.position[test.groups == u]
        same_rec = a[:, None, 0] == b[None, :, 0]
        close = np.abs(a[:, None, 1] - b[None, :, 1]) < 128
        assert not np.any(same_rec & close), f"user {u}: a test window overlaps a training window"


@pytest.mark.skipif(not HAPT, reason="HAPT not installed")
def test_har_standardization_is_stored_and_applied() -> None:
    zm = get_zoo_model("har_cnn")
    mean, std = zm.normalization()
    fresh_mean, fresh_std = zm.compute_normalization()
    np.testing.assert_allclose(mean, fresh_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, fresh_std, rtol=1e-6)
    x = zm.proxy_split().x.reshape(-1, 6)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-3)


@pytest.mark.skipif(not HAPT, reason="HAPT not installed")
def test_har_scaled_natural_partition() -> None:
    zm = get_zoo_model("har_cnn")
    clients = zm.client_split()
    parts = zm.client_partitions("natural", n_clients=300, seed=1)
    assert len(parts) == 300
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(clients)))
    assert all(len(np.unique(clients.groups[p])) == 1 for p in parts)
    with pytest.raises(ModelError):
        zm.client_partitions("natural", n_clients=10)


def test_digits_splits_and_partitions() -> None:
    zm = get_zoo_model("digits_cnn")
    proxy, test, clients = zm.proxy_split(), zm.test_split(), zm.client_split()
    assert len(proxy) + len(test) + len(clients) == 1797
    assert abs(len(proxy) / 1797 - 0.15) < 0.01 and abs(len(test) / 1797 - 0.20) < 0.01
    for split in (proxy, test, clients):
        assert set(np.unique(split.y)) == set(range(10))
    parts = zm.client_partitions("dirichlet", n_clients=10, alpha=0.3, seed=2)
    assert len(parts) == 10
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(clients)))
    assert len(zm.client_partitions("iid", n_clients=25)) == 25
    with pytest.raises(ModelError, match="natural users"):
        zm.client_partitions("natural")
    with pytest.raises(ModelError):
        zm.client_partitions("bogus")


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_representative_data_is_deterministic(name: str) -> None:
    zm = get_zoo_model(name)
    rep = zm.representative_data(64, seed=5)
    assert rep.shape == (64, *zm.input_shape) and rep.dtype == np.float32
    np.testing.assert_array_equal(rep, zm.representative_data(64, seed=5))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_committed_weights_file(name: str) -> None:
    zm = get_zoo_model(name)
    assert zm.weights_path.is_file()
    meta = zm.metadata()
    assert {"epochs", "seed", "proxy_users", "proxy_accuracy", "test_accuracy"} <= set(meta)
    assert meta["test_accuracy"] >= MIN_FLOAT_ACCURACY[name]
    if name == "har_cnn":
        assert meta["proxy_users"] == list(HAR_PROXY_USERS)


# ----------------------------------------------------------------------------- slow: TensorFlow


@pytest.fixture(scope="module")
def int8_models() -> dict[str, bytes]:
    return {}


def _int8(name: str, cache: dict[str, bytes]) -> bytes:
    """A fresh conversion of the committed weights (the rest of the suite uses the shipped prebuilt model,
    which test_prebuilt_files_equal_a_fresh_conversion proves equal to this)."""
    if name not in cache:
        cache[name] = get_zoo_model(name).convert_int8()
    return cache[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_pretrained_weights_reach_recorded_accuracy(name: str) -> None:
    zm = get_zoo_model(name)
    model = zm.load_pretrained(batch_size=None)
    assert model.count_params() == zm.parameter_count()
    test = zm.test_split()
    acc = float(np.mean(np.argmax(model.predict(test.x, batch_size=256, verbose=0), axis=1) == test.y))
    assert acc == pytest.approx(zm.metadata()["test_accuracy"], abs=0.003)
    assert acc >= MIN_FLOAT_ACCURACY[name]
    assert tuple(zm.load_pretrained().inputs[0].shape) == (1, *zm.input_shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_int8_graph_uses_only_mcu_ops(name: str, int8_models: dict[str, bytes]) -> None:
    from tinyfed.models.convert import io_types, op_names

    data = _int8(name, int8_models)
    ops = op_names(data)
    assert set(ops) <= MCU_OPS, ops
    assert not set(ops) & FORBIDDEN_OPS
    assert ops[-1] == "SOFTMAX" and "FULLY_CONNECTED" in ops and "CONV_2D" in ops
    assert io_types(data) == (["INT8"], ["INT8"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_int8_tflm_accuracy_close_to_float(name: str, int8_models: dict[str, bytes]) -> None:
    from tinyfed.models.convert import tflm_predict

    zm = get_zoo_model(name)
    test = zm.test_split()
    probs = tflm_predict(_int8(name, int8_models), test.x)
    acc = float(np.mean(np.argmax(probs, axis=1) == test.y))
    assert abs(acc - zm.metadata()["test_accuracy"]) < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_prebuilt_files_equal_a_fresh_conversion(name: str, int8_models: dict[str, bytes]) -> None:
    """The int8 model and Fisher ranking the wheel ships are what the committed weights give today, byte for
    byte (regenerate with `make prebuilt` after retraining); the running path reads them without TensorFlow."""
    from tinyfed.models import prebuilt_zoo
    from tinyfed.planner.config import TrainingConfig

    fresh = _int8(name, int8_models)
    assert prebuilt_zoo.int8_path(name).read_bytes() == fresh, "stale int8 model: run `make prebuilt`"
    assert get_zoo_model(name).int8_tflite() == fresh
    n = TrainingConfig().proxy_samples
    doc = prebuilt_zoo.fisher_document(name, prebuilt_zoo.fresh_fisher(name, fresh, n), fresh, n)
    assert doc["method"] == "fisher" and doc["layers"]
    assert prebuilt_zoo.fisher_path(name).read_text() == prebuilt_zoo.fisher_json(doc), "stale ranking: make prebuilt"
    shipped = prebuilt_zoo.load_fisher(name, fresh, n)
    assert shipped is not None and prebuilt_zoo.load_fisher(name, fresh, n + 1) is None  # other batch: measured
    assert prebuilt_zoo.load_fisher(name, fresh + b"\0", n) is None  # another graph: never its ranking


@pytest.mark.slow
def test_user_keras_model_round_trip(tmp_path: Path) -> None:
    from tinyfed.models.convert import convert_keras_to_int8, load_user_keras, op_names

    zm = get_zoo_model("digits_cnn")
    model = zm.load_pretrained(batch_size=None)  # batch None: load_user_keras must fix it
    path = tmp_path / "digits.keras"
    model.save(path)
    rep_path = tmp_path / "rep.npy"
    np.save(rep_path, zm.representative_data(32))
    loaded, rep = load_user_keras(path, rep_path)
    assert tuple(loaded.inputs[0].shape) == (1, 8, 8, 1) and rep.shape == (32, 8, 8, 1)
    assert set(op_names(convert_keras_to_int8(loaded, rep))) <= MCU_OPS

    with pytest.raises(ModelError, match="not found"):
        load_user_keras(tmp_path / "missing.keras", rep_path)
    bogus = tmp_path / "bogus.keras"
    bogus.write_text("not a zip")
    with pytest.raises(ModelError, match="Keras"):
        load_user_keras(bogus, rep_path)
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"TFL3")
    with pytest.raises(ModelError, match=".tflite"):
        load_user_keras(tfl, rep_path)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 1, 128, 6), np.float32))
    with pytest.raises(ModelError, match="shape"):
        load_user_keras(path, wrong)
    with pytest.raises(ModelError, match="not found"):
        load_user_keras(path, tmp_path / "nope.npy")
    with pytest.raises(ModelError, match="shape"):
        convert_keras_to_int8(loaded, np.zeros((3, 4), np.float32))


@pytest.mark.slow
def test_pretrain_check_reproduces_committed_weights(_cache_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tinyfed.models.pretrain", "--check"],
        cwd=REPO,
        env=_subprocess_env(_cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    for name in ZOO_NAMES:
        assert f"{name}: ok" in proc.stdout
    # Each model says which comparison it got: bit-exact on a machine with the committed file's
    # numeric fingerprint, the cross-CPU closeness-and-accuracy check anywhere else.
    assert proc.stdout.count("bit-exact (tolerance") + proc.stdout.count("cross-CPU comparison") == len(ZOO_NAMES)


def _weights_file(path: Path, weights: list[np.ndarray], meta: dict[str, object]) -> Path:
    path.write_bytes(zoo.weights_to_npz_bytes(weights, np.zeros(1), np.ones(1), meta))
    return path


def test_pretrain_cross_cpu_comparison(tmp_path: Path) -> None:
    from tinyfed.models.pretrain import CROSS_CPU_ACCURACY, CROSS_CPU_REL_L2, compare_close, compare_weight_files

    rng = np.random.default_rng(0)
    w = [rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    ref = _weights_file(tmp_path / "ref.npz", w, {"test_accuracy": 0.84})
    # Another CPU's rounding: a few per cent off, same accuracy within the margin -> ok.
    near = [a * np.float32(1.05) for a in w]
    close = _weights_file(tmp_path / "close.npz", near, {"test_accuracy": 0.84 - CROSS_CPU_ACCURACY / 2})
    problems, summary = compare_close(ref, close)
    assert problems == [] and "0.05" in summary
    assert compare_weight_files(ref, close)  # but not bit-exact
    # Another training run (independent weights) or a lost accuracy -> a mismatch.
    other = _weights_file(tmp_path / "other.npz", [rng.normal(size=a.shape).astype(np.float32) for a in w],
                          {"test_accuracy": 0.84})
    assert any(f"> {CROSS_CPU_REL_L2:g}" in p for p in compare_close(ref, other)[0])
    worse = _weights_file(tmp_path / "worse.npz", w, {"test_accuracy": 0.84 - 2 * CROSS_CPU_ACCURACY})
    assert any("test accuracy" in p for p in compare_close(ref, worse)[0])


def test_numeric_fingerprint_differences() -> None:
    from tinyfed.models.pretrain import fingerprint_differences, numeric_fingerprint

    here = numeric_fingerprint()
    assert here["numpy"] == np.__version__ and "numpy_simd" in here
    assert fingerprint_differences(dict(here), here) == []
    assert fingerprint_differences(None, here) == ["the committed file records no numeric fingerprint"]
    assert fingerprint_differences({**here, "cpu_model": "elsewhere"}, here)[0].startswith("cpu_model:")


def test_weights_dir_is_package_data() -> None:
    assert zoo.WEIGHTS_DIR == Path(zoo.__file__).resolve().parent / "weights"
