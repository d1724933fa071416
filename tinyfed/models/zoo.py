"""The model zoo: MCU-sized Keras models, their datasets, splits and committed weights.

Importing this module does not import TensorFlow/Keras; only :meth:`ZooModel.build`,
:meth:`ZooModel.load_pretrained` and :meth:`ZooModel.convert_int8` (on a cache miss) do:
:meth:`ZooModel.int8_tflite` reads the int8 model shipped prebuilt (``prebuilt_zoo``).

Splits
------
``har_cnn`` (HAPT, 30 users):
    * **proxy**: users :data:`HAR_PROXY_USERS`, held by the server (pretraining, int8
      calibration data, Fisher proxy batch).  They never act as clients.
    * the other 27 users are the clients.  Inside each (user, activity) the windows are
      ordered in time; the first 80 % go to that client's training part (``client_split``),
      the last 20 % to the global ``test_split``.  The test window that overlaps the last
      training window (50 % window overlap) is dropped, so no sample is in both.
``digits_cnn`` (sklearn digits): stratified, seeded: proxy 15 %, test 20 %, rest clients.

All accessors return standardized inputs (per-channel mean/std of the proxy split, stored
with the committed weights) shaped like the model input.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.errors import DatasetError, ModelError
from tinyfed.models import partition
from tinyfed.models.datasets import Dataset, cache_dir, load_digits, load_hapt, write_cache_file

if TYPE_CHECKING:  # pragma: no cover
    import keras

__all__ = [
    "DIGITS_PROXY_FRACTION",
    "DIGITS_TEST_FRACTION",
    "HAR_PROXY_USERS",
    "HAR_TEST_FRACTION",
    "WEIGHTS_DIR",
    "ZOO_NAMES",
    "ZooModel",
    "get_zoo_model",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Chosen once, before any training, as sorted(np.random.default_rng(0).choice(range(1, 31), 3)).
HAR_PROXY_USERS: tuple[int, ...] = (16, 19, 24)
HAR_TEST_FRACTION = 0.2
DIGITS_PROXY_FRACTION = 0.15
DIGITS_TEST_FRACTION = 0.20
DIGITS_SPLIT_SEED = 0
_INT8_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------
# Architectures (Keras imported lazily)
# --------------------------------------------------------------------------------------


def _build_har_cnn(batch_size: int | None) -> keras.Model:
    """1-D CNN for 2.56 s of 6-axis IMU data, written with (1, k) Conv2D kernels on a
    (1, 128, 6) input so the int8 graph uses only CONV_2D / pooling / RESHAPE / FC ops."""
    import keras
    from keras import layers

    inp = keras.Input(shape=(1, 128, 6), batch_size=batch_size, name="imu")
    x = layers.Conv2D(32, (1, 5), padding="same", activation="relu", name="conv1")(inp)
    x = layers.Conv2D(64, (1, 5), padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D((1, 2), name="pool1")(x)
    x = layers.Conv2D(64, (1, 5), padding="same", activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D((1, 2), name="pool2")(x)
    x = layers.Conv2D(64, (1, 3), padding="same", activation="relu", name="conv4")(x)
    x = layers.AveragePooling2D((1, 32), name="time_avg")(x)  # fixed-size, not GlobalAvg (MEAN)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    x = layers.Dense(6, name="logits")(x)
    out = layers.Softmax(name="probs")(x)
    return keras.Model(inp, out, name="har_cnn")


def _build_digits_cnn(batch_size: int | None) -> keras.Model:
    """Small CNN with a depthwise layer for 8x8 grey digits."""
    import keras
    from keras import layers

    inp = keras.Input(shape=(8, 8, 1), batch_size=batch_size, name="image")
    x = layers.Conv2D(8, (3, 3), padding="same", activation="relu", name="conv1")(inp)
    x = layers.DepthwiseConv2D((3, 3), padding="same", activation="relu", name="dwconv")(x)
    x = layers.Conv2D(16, (1, 1), activation="relu", name="pwconv")(x)
    x = layers.MaxPooling2D((2, 2), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(32, activation="relu", name="fc1")(x)
    x = layers.Dense(10, name="logits")(x)
    out = layers.Softmax(name="probs")(x)
    return keras.Model(inp, out, name="digits_cnn")


# --------------------------------------------------------------------------------------
# Splits (numpy only)
# --------------------------------------------------------------------------------------


@dataclass
class _Splits:
    """Unstandardized splits, ``x`` already shaped like the model input."""

    proxy: Dataset
    test: Dataset
    clients: Dataset


def _time_split_indices(
    ds: Dataset, users: list[int], test_fraction: float, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per (user, class): first (1 - f) of the windows in time -> train, the rest -> test,
    minus test windows overlapping the last training window of the same recording."""
    assert ds.groups is not None and ds.position is not None
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for u in users:
        for c in range(ds.num_classes):
            idx = np.flatnonzero((ds.groups == u) & (ds.y == c))
            if len(idx) == 0:
                continue
            pos = ds.position[idx]
            idx = idx[np.lexsort((pos[:, 1], pos[:, 0]))]
            n_train = int(round(len(idx) * (1.0 - test_fraction)))
            n_train = min(max(n_train, 1), len(idx))
            tr, te = idx[:n_train], idx[n_train:]
            last_rec, last_start = ds.position[tr[-1]]
            overlap = (ds.position[te, 0] == last_rec) & (ds.position[te, 1] < last_start + window)
            train.append(tr)
            test.append(te[~overlap])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _har_splits() -> _Splits:
    ds = load_hapt()
    ds.x = ds.x.reshape(len(ds.x), 1, ds.x.shape[1], ds.x.shape[2])
    users = ds.users()
    missing = [u for u in HAR_PROXY_USERS if u not in users]
    if missing or ds.groups is None:  # no groups means no users: every proxy user is missing
        raise DatasetError(f"HAPT data lacks the proxy users {missing}", source="hapt")
    proxy_idx = np.flatnonzero(np.isin(ds.groups, HAR_PROXY_USERS))
    client_users = [u for u in users if u not in HAR_PROXY_USERS]
    train_idx, test_idx = _time_split_indices(ds, client_users, HAR_TEST_FRACTION, window=ds.x.shape[2])
    return _Splits(
        proxy=ds.subset(proxy_idx, "hapt/proxy"),
        test=ds.subset(test_idx, "hapt/test"),
        clients=ds.subset(train_idx, "hapt/clients"),
    )


def _stratified_three_way(y: np.ndarray, f_a: float, f_b: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    a: list[np.ndarray] = []
    b: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        na = int(round(len(idx) * f_a))
        nb = int(round(len(idx) * f_b))
        a.append(idx[:na])
        b.append(idx[na : na + nb])
        rest.append(idx[na + nb :])
    return tuple(np.sort(np.concatenate(p)) for p in (a, b, rest))


def _digits_splits() -> _Splits:
    ds = load_digits()
    proxy, test, clients = _stratified_three_way(ds.y, DIGITS_PROXY_FRACTION, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return _Splits(
        proxy=ds.subset(proxy, "digits/proxy"),
        test=ds.subset(test, "digits/test"),
        clients=ds.subset(clients, "digits/clients"),
    )


# --------------------------------------------------------------------------------------
# ZooModel
# --------------------------------------------------------------------------------------


def _weight_key(i: int) -> str:
    return f"w{i:03d}"


class ZooModel:
    """One zoo entry: architecture, dataset, splits, committed weights and int8 model."""

    def __init__(
        self,
        name: str,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        dataset: str,
        description: str,
        builder: Callable[[int | None], Any],
        splitter: Callable[[], _Splits],
        standardize: bool,
        default_partition: str,
        default_clients: int,
        train_config: dict[str, Any],
    ) -> None:
        self.name = name
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.dataset = dataset
        self.description = description
        self.standardize = standardize
        self.default_partition = default_partition
        self.default_clients = default_clients
        self.train_config = dict(train_config)
        self._builder = builder
        self._splitter = splitter
        self._int8: bytes | None = None

    def __repr__(self) -> str:
        return f"ZooModel({self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes})"

    # -- files ---------------------------------------------------------------------------

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.npz"

    def _read_weights_file(self, path: Path | None = None) -> dict[str, np.ndarray]:
        path = path or self.weights_path
        if not path.is_file():
            raise ModelError(
                f"no pretrained weights for {self.name!r} at {path}",
                fix=f"python -m tinyfed.models.pretrain --model {self.name}",
                source=self.name,
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ModelError(
                f"cannot read the weights file {path}: {exc}",
                fix=f"restore it with git or run python -m tinyfed.models.pretrain --model {self.name}",
                source=self.name,
            ) from exc

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata stored with the weights (epochs, seed, accuracies, ...)."""
        arrs = self._read_weights_file()
        return json.loads(str(arrs["meta"]))

    # -- architecture ----------------------------------------------------------------------

    def build(self, batch_size: int | None = None) -> keras.Model:
        """The untrained Keras architecture (TensorFlow/Keras is imported here, quietly)."""
        from tinyfed.models.tfimport import import_tensorflow

        import_tensorflow()  # keeps TensorFlow's C++ start-up banners off the user's terminal
        return self._builder(batch_size)

    def load_pretrained(self, batch_size: int | None = 1) -> keras.Model:
        """The architecture with the committed weights loaded (batch 1 by default, for MCUs)."""
        arrs = self._read_weights_file()
        n = sum(1 for k in arrs if k.startswith("w") and k[1:].isdigit())
        weights = [arrs[_weight_key(i)] for i in range(n)]
        model = self.build(batch_size)
        expected = [tuple(w.shape) for w in model.get_weights()]
        got = [tuple(w.shape) for w in weights]
        if expected != got:
            raise ModelError(
                f"committed weights for {self.name!r} do not match its architecture "
                f"({len(got)} arrays vs {len(expected)})",
                fix=f"python -m tinyfed.models.pretrain --model {self.name}",
                source=str(self.weights_path),
            )
        model.set_weights(weights)
        return model

    def parameter_count(self) -> int:
        """Number of weights (from the committed file if present, else from the architecture)."""
        if self.weights_path.is_file():
            arrs = self._read_weights_file()
            return int(sum(v.size for k, v in arrs.items() if k.startswith("w") and k[1:].isdigit()))
        return int(self.build(1).count_params())

    # -- data ------------------------------------------------------------------------------

    @cached_property
    def _raw_splits(self) -> _Splits:
        return self._splitter()

    def raw_proxy_split(self) -> Dataset:
        """The proxy split before standardization (used to compute the statistics)."""
        return self._raw_splits.proxy

    def raw_test_split(self) -> Dataset:
        """The test split before standardization."""
        return self._raw_splits.test

    def compute_normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (last axis) mean and std of the raw proxy split."""
        c = self.input_shape[-1]
        if not self.standardize:
            return np.zeros(c, np.float32), np.ones(c, np.float32)
        x = self._raw_splits.proxy.x.reshape(-1, c).astype(np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std < 1e-8, 1.0, std)
        return mean.astype(np.float32), std.astype(np.float32)

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) per input channel: the ones stored with the weights if present."""
        if self.weights_path.is_file():
            arrs = self._read_weights_file()
            return arrs["norm_mean"].astype(np.float32), arrs["norm_std"].astype(np.float32)
        return self.compute_normalization()

    def _standardized(self, ds: Dataset) -> Dataset:
        mean, std = self.normalization()
        out = ds.subset(np.arange(len(ds)), ds.name)
        out.x = ((out.x - mean) / std).astype(np.float32)
        return out

    def proxy_split(self) -> Dataset:
        """Server-held data: pretraining, int8 calibration, Fisher proxy batch."""
        return self._standardized(self._raw_splits.proxy)

    def test_split(self) -> Dataset:
        """Global test set (HAPT: last 20 % in time of each client's windows per activity)."""
        return self._standardized(self._raw_splits.test)

    def client_split(self) -> Dataset:
        """All clients' training data; index it with :meth:`client_partitions`."""
        return self._standardized(self._raw_splits.clients)

    def client_partitions(
        self, kind: str = "natural", n_clients: int | None = None, alpha: float = 0.5, seed: int = 0
    ) -> list[np.ndarray]:
        """Indices into :meth:`client_split`, one array per simulated device.

        ``natural``: one client per user; with ``n_clients`` larger than the number of users
        each user is split (seeded, at random) into near-equal sub-clients, the first
        ``n_clients % users`` users getting one more.  ``iid``: random equal shares.
        ``dirichlet``: label skew with concentration ``alpha``.
        """
        clients = self._raw_splits.clients
        if kind == "natural":
            if clients.groups is None:
                raise ModelError(
                    f"the {self.dataset} dataset has no natural users to partition by",
                    fix="partition it 'iid' or 'dirichlet' (`--partition iid` on the command line)",
                    source=self.name,
                )
            parts = partition.natural(clients.groups)
            if n_clients is None or n_clients == len(parts):
                return parts
            if n_clients < len(parts):
                raise ModelError(
                    f"{self.name}: {n_clients} clients requested but the natural partition has {len(parts)} users",
                    fix=f"use {len(parts)} or more clients (users are split), or partition 'iid' (`--partition iid`)",
                    source=self.name,
                )
            return partition.spread_clients(parts, int(n_clients), seed=seed)
        n = self.default_clients if n_clients is None else int(n_clients)
        if kind == "iid":
            return partition.iid(len(clients), n, seed)
        if kind == "dirichlet":
            return partition.dirichlet(clients.y, n, alpha=alpha, seed=seed)
        raise ModelError(
            f"unknown partition kind {kind!r}", fix="use 'natural', 'iid' or 'dirichlet'", source=self.name
        )

    def representative_data(self, n: int = 200, seed: int = 0) -> np.ndarray:
        """``n`` standardized proxy samples (all if fewer), shaped ``(n, *input_shape)``."""
        proxy = self.proxy_split()
        k = min(int(n), len(proxy))
        idx = np.sort(np.random.default_rng(seed).choice(len(proxy), size=k, replace=False))
        return np.ascontiguousarray(proxy.x[idx], dtype=np.float32)

    # -- int8 ------------------------------------------------------------------------------

    def int8_tflite(self) -> bytes:
        """Full-int8 TFLite flatbuffer of :meth:`load_pretrained` (batch 1).

        The one shipped in ``tinyfed/models/prebuilt/`` (no TensorFlow needed; a test proves it equals
        :meth:`convert_int8`), else a conversion. Cached in memory.
        """
        if self._int8 is None:
            from tinyfed.models.prebuilt_zoo import int8_path

            shipped = int8_path(self.name)
            self._int8 = shipped.read_bytes() if shipped.is_file() else self.convert_int8()
        return self._int8

    def convert_int8(self) -> bytes:
        """A conversion of the committed weights to full int8 (needs the ``[convert]`` extra).

        Cached in the user cache dir (keyed by the weights file and the installed TensorFlow
        version), so TensorFlow is imported only on a cache miss.
        """
        cfile = self._int8_cache_file()
        if cfile is not None and cfile.is_file():
            return cfile.read_bytes()
        from tinyfed.models.convert import convert_keras_to_int8

        data = convert_keras_to_int8(self.load_pretrained(batch_size=1), self.representative_data())
        if cfile is not None:
            write_cache_file(cfile, data)
        return data

    def _int8_cache_file(self) -> Path | None:
        if not self.weights_path.is_file():
            return None
        try:
            from importlib.metadata import PackageNotFoundError, version

            try:
                tf_version = version("tensorflow-cpu")
            except PackageNotFoundError:
                tf_version = version("tensorflow")
        except Exception:  # noqa: BLE001 - no TF metadata: no disk cache
            return None
        h = hashlib.sha256(self.weights_path.read_bytes())
        h.update(json.dumps([tf_version, _INT8_CACHE_VERSION, 200, 0]).encode())
        return cache_dir() / "int8" / f"{self.name}-{h.hexdigest()[:16]}.tflite"


def weights_to_npz_bytes(
    weights: list[np.ndarray], mean: np.ndarray, std: np.ndarray, meta: dict[str, Any]
) -> bytes:
    """Serialize weights + normalization + JSON metadata in the committed ``.npz`` layout."""
    arrs: dict[str, np.ndarray] = {_weight_key(i): np.asarray(w) for i, w in enumerate(weights)}
    arrs["norm_mean"] = np.asarray(mean, np.float32)
    arrs["norm_std"] = np.asarray(std, np.float32)
    arrs["meta"] = np.array(json.dumps(meta, sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrs)
    return buf.getvalue()


_ZOO: dict[str, ZooModel] = {}


def _register(model: ZooModel) -> None:
    _ZOO[model.name] = model


_register(
    ZooModel(
        "har_cnn",
        input_shape=(1, 128, 6),
        num_classes=6,
        dataset="hapt",
        description="smartwatch activity recognition: 2.56 s of 50 Hz accelerometer+gyroscope, 6 activities",
        builder=_build_har_cnn,
        splitter=_har_splits,
        standardize=True,
        default_partition="natural",
        default_clients=27,
        train_config={
            "epochs": 30,
            "batch_size": 32,
            "learning_rate": 1e-3,
            "seed": 0,
            "augment": {"rotate_degrees": 5.0, "scale": 0.1, "noise": 0.02},
        },
    )
)
_register(
    ZooModel(
        "digits_cnn",
        input_shape=(8, 8, 1),
        num_classes=10,
        dataset="digits",
        description="8x8 handwritten digits with a depthwise layer",
        builder=_build_digits_cnn,
        splitter=_digits_splits,
        standardize=False,
        default_partition="dirichlet",
        default_clients=10,
        train_config={"epochs": 60, "batch_size": 16, "learning_rate": 3e-3, "seed": 0},
    )
)

ZOO_NAMES: tuple[str, ...] = tuple(_ZOO)


def get_zoo_model(name: str) -> ZooModel:
    """The zoo entry called ``name``; an unknown name raises ModelError with a suggestion."""
    try:
        return _ZOO[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), ZOO_NAMES, n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelError(
            f"unknown zoo model {name!r}",
            fix=f"{hint}available: {', '.join(ZOO_NAMES)} (or pass a .keras / .tflite file)",
            source=str(name),
        ) from None
