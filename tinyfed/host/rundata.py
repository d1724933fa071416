"""The model and the data a run trains on: a zoo model with its dataset, or a user's own int8
``.tflite`` with an NPZ of samples.

A user's NPZ holds ``x`` (samples, any shape whose size matches the model's input) and ``y``
(integer labels below the model's class count), optionally ``user`` (one id per sample, for the
natural partition) and ``x_test``/``y_test`` (the held-out split; a separate ``test_npz`` wins).
Everything is checked when the run is prepared, before a board is provisioned: a wrong key, a
length mismatch, a NaN, a label out of range or a shape the model cannot take is one error
naming the file and the fix.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinyfed.errors import DatasetError
from tinyfed.models import partition

if TYPE_CHECKING:
    from tinyfed.models.zoo import ZooModel

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """What :func:`~tinyfed.host.setup.prepare_run` needs from a model and its data."""

    name: str  # the zoo name or the .tflite path (what the planner loads)
    model_bytes: bytes  # the full-int8 model
    num_classes: int
    x: np.ndarray  # float32 training samples, shaped like the model's input without the batch
    y: np.ndarray  # int64 labels
    groups: np.ndarray | None  # user id per sample (natural partition), or None
    x_test: np.ndarray
    y_test: np.ndarray
    zoo: ZooModel | None = None  # the ZooModel, whose partitions keep their documented behaviour

    def check_partition(self, kind: str, n_devices: int | None, alpha: float, seed: int) -> None:
        """Raise the error :meth:`shares` would, before any board is booted or provisioned.

        With ``n_devices`` unknown (a fleet file not read yet) only what does not depend on the
        count is checked: a natural partition needs users.
        """
        self.shares(kind, n_devices if n_devices is not None else 1, alpha, seed)

    def shares(self, kind: str, n_devices: int, alpha: float, seed: int) -> list[np.ndarray]:
        """Indices into ``x`` for each device: ``natural`` (by user), ``iid`` or ``dirichlet``."""
        if self.zoo is not None:
            zm = self.zoo
            if kind == "natural":
                parts = zm.client_partitions("natural")
                if n_devices <= len(parts):
                    return parts[:n_devices]
                return zm.client_partitions("natural", n_clients=n_devices, seed=seed)
            return zm.client_partitions(kind, n_clients=n_devices, alpha=alpha, seed=seed)
        if kind == "natural":
            if self.groups is None:
                raise DatasetError(f"{self.name}: the data has no `user` array to partition by user",
                                   fix="shard it with --partition iid or --partition dirichlet "
                                       "(or add an integer `user` array, one id per sample, to the NPZ)")
            parts = partition.natural(self.groups)
            if n_devices <= len(parts):
                return parts[:n_devices]
            return partition.spread_clients(parts, n_devices, seed=seed)
        if kind == "iid":
            return partition.iid(len(self.y), n_devices, seed=seed)
        return partition.dirichlet(self.y, n_devices, alpha=alpha, seed=seed)


def load_run_data(model: str, npz: str | Path | None = None, test_npz: str | Path | None = None) -> RunData:
    """The run's model and data: a user's NPZ when ``npz`` is given, else the zoo model's own dataset."""
    return user_run_data(model, npz, test_npz) if npz is not None else zoo_run_data(model)


def zoo_run_data(name: str) -> RunData:
    """A zoo model: its int8 model, its client split for training and its test split."""
    from tinyfed.models.zoo import get_zoo_model

    zm = get_zoo_model(name)
    clients, test = zm.client_split(), zm.test_split()
    return RunData(name, zm.int8_tflite(), zm.num_classes, clients.x, clients.y, clients.groups,
                   test.x, test.y.astype(np.int64), zoo=zm)


def user_run_data(model: str, npz: str | Path, test_npz: str | Path | None = None) -> RunData:
    """A user's NPZ data for ``model`` (a full-int8 ``.tflite`` path or a zoo name), checked against it."""
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.models.zoo import ZOO_NAMES, get_zoo_model

    path = Path(model)
    if model in ZOO_NAMES:
        graph = TfliteGraph.from_bytes(get_zoo_model(model).int8_tflite(), source=model)
    elif not path.is_file():
        raise DatasetError(f"no such model file {path}", fix="give the path of a full-int8 .tflite", source=str(path))
    else:
        graph = TfliteGraph.from_file(path).int8_graph()  # float data meets the int8 body's input
    in_shape = tuple(graph.tensors[graph.inputs[0]].shape[1:])
    out_shape = graph.tensors[graph.outputs[0]].shape
    classes = int(np.prod(out_shape[1:]))
    if classes < 2:
        raise DatasetError(f"{path.name}: the output has {classes} value(s); tinyfed trains classifiers",
                           fix="give a model whose output is one score per class", source=str(path))
    train = _load_npz(Path(npz))
    x, y = _checked(train, "x", "y", Path(npz), in_shape, classes)
    groups = None
    if "user" in train:
        groups = np.asarray(train["user"])
        if groups.shape != y.shape or not np.issubdtype(groups.dtype, np.integer):
            raise DatasetError(f"`user` has shape {groups.shape} and type {groups.dtype}; it must be integers, "
                               f"one per sample ({len(y)})", fix="fix or drop the `user` array", source=str(npz))
        groups = groups.astype(np.int64)
    source = Path(test_npz) if test_npz is not None else Path(npz)
    test = _load_npz(source) if test_npz is not None else train
    if "x_test" not in test or "y_test" not in test:
        raise DatasetError(f"no held-out split: {source.name} has no x_test and y_test",
                           fix="add x_test/y_test to the NPZ, or give --test-data NPZ (config: data.test_npz)",
                           source=str(source))
    x_test, y_test = _checked(test, "x_test", "y_test", source, in_shape, classes)
    log.info("%s: %d training and %d test samples of shape %s, %d classes", path.name, len(y), len(y_test),
             in_shape, classes)
    return RunData(model, graph.data, classes, x, y, groups, x_test, y_test)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DatasetError(f"no such data file {path}", fix="check the --data / --test-data path",
                           source=str(path)) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"cannot read {path.name} as an NPZ of arrays ({exc})",
                           fix="write it with numpy.savez(path, x=..., y=..., x_test=..., y_test=...)",
                           source=str(path)) from None


def _checked(arrays: dict[str, np.ndarray], xk: str, yk: str, path: Path, in_shape: tuple[int, ...],
             classes: int) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 in the model's input shape and y as int64 labels, or a DatasetError."""
    missing = [k for k in (xk, yk) if k not in arrays]
    if missing:
        present = ", ".join(sorted(arrays)) or "nothing"
        raise DatasetError(f"{path.name} has no {' or '.join(missing)} (it has {present})",
                           fix=f"save the arrays as {xk}= and {yk}= (numpy.savez)", source=str(path))
    x, y = np.asarray(arrays[xk]), np.asarray(arrays[yk])
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise DatasetError(f"{xk} and {yk} must be numeric arrays (got {x.dtype}, {y.dtype})", source=str(path))
    if y.ndim == 2 and y.shape[1] == classes:  # one-hot labels
        y = y.argmax(axis=1)
    if y.ndim != 1 or len(y) != len(x) or len(y) == 0:
        raise DatasetError(f"{xk} has {len(x)} samples and {yk} has shape {y.shape}; {yk} needs one label per sample",
                           fix=f"give {yk} as a 1-D array of integer labels as long as {xk}", source=str(path))
    if not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)) or y.min() < 0 or y.max() >= classes:
        raise DatasetError(f"{yk} holds labels outside 0..{classes - 1} (the model has {classes} outputs)",
                           fix="labels must be integer class indices the model's output can score", source=str(path))
    want = int(np.prod(in_shape))
    if int(np.prod(x.shape[1:])) != want:
        raise DatasetError(f"{xk} samples have shape {x.shape[1:]} ({int(np.prod(x.shape[1:]))} values); the model "
                           f"takes {in_shape} ({want})", fix="reshape the samples to the model's input",
                           source=str(path))
    x = x.astype(np.float32).reshape((len(x), *in_shape))
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        raise DatasetError(f"{xk} has {bad} sample(s) with NaN or infinite values",
                           fix="clean or drop those samples", source=str(path))
    return x, y.astype(np.int64)
