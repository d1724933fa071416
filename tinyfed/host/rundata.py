"""The model and the data a run trains on: a zoo model with its dataset, or a user's own int8
``.tflite`` with an NPZ of samples.

A user's NPZ holds ``x`` (samples, any shape whose size matches the model's input) and ``y``,
optionally ``user`` (one id per sample, for the natural partition) and ``x_test``/``y_test`` (the
held-out split; a separate ``test_npz`` wins). What ``y`` holds follows the run's task
(:mod:`tinyfed.training.task`; named with ``--task`` or implied by the model's last op and the data):

- classify: one integer label per sample below the model's class count (or one-hot rows);
- multilabel: one 0/1 row per sample, a bit per output (a model with one output may take a 0/1 vector);
- regress: real values, one row per sample with as many values as the model's output;
- autoencode: no ``y`` (the target is the input itself; a ``y`` in the file is ignored). The test
  split may carry ``y_test_anomaly`` (:data:`ANOMALY_KEY`: 1 for an anomalous sample, 0 for a
  normal one); the run's metric is then the ROC AUC of the reconstruction error.

Everything is checked when the run is prepared, before a board is provisioned: a wrong key, a
length mismatch, a NaN, a label out of range or a shape the model cannot take is one error
naming the file and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinyfed.errors import DatasetError
from tinyfed.models import partition
from tinyfed.training.metrics import metric_name
from tinyfed.training.task import Task, default_task

if TYPE_CHECKING:
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.models.zoo import ZooModel

log = logging.getLogger(__name__)

#: Key of the test split's anomaly labels (autoencode): 1 for an anomalous sample, 0 for a normal one.
ANOMALY_KEY = "y_test_anomaly"
#: Ops that pass their input's values through unchanged: a model's task is read from the op before them.
_VALUE_PRESERVING = frozenset({"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"})


@dataclass
class RunData:
    """What :func:`~tinyfed.host.setup.prepare_run` needs from a model and its data."""

    name: str  # the zoo name or the .tflite path (what the planner loads)
    model_bytes: bytes  # the full-int8 model
    num_classes: int  # values of the model's output (the class count of a classifier)
    x: np.ndarray  # float32 training samples, shaped like the model's input without the batch
    #: the targets: int64 labels (classify), float32 0/1 rows (multilabel), float32 rows of the output's
    #: size (regress), None (autoencode: the input is the target)
    y: np.ndarray | None
    groups: np.ndarray | None  # user id per sample (natural partition), or None
    x_test: np.ndarray
    y_test: np.ndarray | None
    zoo: ZooModel | None = None  # the ZooModel, whose partitions keep their documented behaviour
    task: Task = Task.CLASSIFY
    anomaly_test: np.ndarray | None = None  # autoencode: 1 per anomalous test sample, 0 per normal one

    @property
    def metric(self) -> str:
        """The name of the run's metric (:func:`tinyfed.training.metrics.metric_name`)."""
        return metric_name(self.task, has_anomaly_labels=self.anomaly_test is not None)

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
            return partition.iid(len(self.x), n_devices, seed=seed)
        if self.task is not Task.CLASSIFY:
            raise DatasetError(f"{self.name}: the dirichlet partition skews classes, and a {self.task.value} "
                               "run has none", fix="shard it with --partition iid (or natural, with a `user` array)")
        assert self.y is not None
        return partition.dirichlet(self.y, n_devices, alpha=alpha, seed=seed)


def load_run_data(model: str, npz: str | Path | None = None, test_npz: str | Path | None = None,
                  task: Task | str | None = None) -> RunData:
    """The run's model and data: a user's NPZ when ``npz`` is given, else the zoo model's own dataset.

    ``task`` is the run's task (None: the one the model and the data imply, see :func:`resolve_task`).
    """
    if npz is None and test_npz is not None:  # a zoo model's own test split would be used: say so, do not ignore it
        raise DatasetError("--test-data (data.test_npz) is the held-out split of --data (data.npz), and no --data "
                           "is given", fix="add --data NPZ, or drop --test-data to use the zoo model's own data",
                           source=str(test_npz))
    return user_run_data(model, npz, test_npz, task) if npz is not None else zoo_run_data(model, task)


def zoo_run_data(name: str, task: Task | str | None = None) -> RunData:
    """A zoo model: its int8 model, its client split for training and its test split (classification)."""
    from tinyfed.models.zoo import get_zoo_model

    if task is not None and Task(task) is not Task.CLASSIFY:
        raise DatasetError(f"{name}'s own dataset is labelled for classification, not for --task {Task(task).value}",
                           fix="give the data of that task with --data NPZ (config: data.npz)")
    zm = get_zoo_model(name)
    clients, test = zm.client_split(), zm.test_split()
    return RunData(name, zm.int8_tflite(), zm.num_classes, clients.x, clients.y, clients.groups,
                   test.x, test.y.astype(np.int64), zoo=zm)


def last_op(graph: TfliteGraph) -> str:
    """The op that makes the model's output values: the last one, skipping reshapes and (de)quantizations."""
    names = [op.name for op in graph.ops]
    while len(names) > 1 and names[-1] in _VALUE_PRESERVING:
        names.pop()
    return names[-1] if names else "NONE"


def resolve_task(graph: TfliteGraph, requested: Task | str | None, *, has_targets: bool,
                 source: str = "the model") -> Task:
    """The run's task: ``requested`` checked against the model, or the one its last op and the data imply.

    Softmax cross-entropy needs the model to end in SOFTMAX and sigmoid cross-entropy in LOGISTIC
    (their gradients enter below those ops); an autoencoder's output has as many values as its input.
    """
    out_size = int(np.prod(graph.tensors[graph.outputs[0]].shape[1:]))
    in_size = int(np.prod(graph.tensors[graph.inputs[0]].shape[1:]))
    last = last_op(graph)
    if requested is None:
        return default_task(last, has_targets=has_targets, output_size=out_size, input_size=in_size)
    try:
        task = Task(requested)
    except ValueError:
        raise DatasetError(f"unknown task {requested!r}",
                           fix=f"use one of: {', '.join(t.value for t in Task)}") from None
    needs = {Task.CLASSIFY: "SOFTMAX", Task.MULTILABEL: "LOGISTIC"}.get(task)
    if needs is not None and last != needs:
        raise DatasetError(f"--task {task.value} trains through {needs}, but {source} ends in {last}",
                           fix=f"use --task regress (mean squared error on the output), or a model ending in {needs}",
                           source=source)
    if task is Task.AUTOENCODE and out_size != in_size:
        raise DatasetError(f"--task autoencode reconstructs the input, but {source} has {in_size} input values "
                           f"and {out_size} output values", fix="use --task regress with a `y` of the output's size",
                           source=source)
    if task is Task.REGRESS and not has_targets:
        raise DatasetError("--task regress needs targets: the data has no `y`",
                           fix="add y (one row of the output's size per sample), or use --task autoencode")
    return task


def user_run_data(model: str, npz: str | Path, test_npz: str | Path | None = None,
                  task: Task | str | None = None) -> RunData:
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
    out_shape = tuple(graph.tensors[graph.outputs[0]].shape[1:])
    classes = int(np.prod(out_shape))
    train = _load_npz(Path(npz))
    run_task = resolve_task(graph, task, has_targets="y" in train, source=path.name)
    if run_task is Task.CLASSIFY and classes < 2:
        raise DatasetError(f"{path.name}: the output has {classes} value(s); a classifier scores 2 classes or more",
                           fix="give a model whose output is one score per class, or use --task regress",
                           source=str(path))
    x, y = _checked(train, "x", "y", Path(npz), in_shape, classes, run_task)
    groups = None
    if "user" in train:
        groups = np.asarray(train["user"])
        if groups.shape != (len(x),) or not np.issubdtype(groups.dtype, np.integer):
            raise DatasetError(f"`user` has shape {groups.shape} and type {groups.dtype}; it must be integers, "
                               f"one per sample ({len(x)})", fix="fix or drop the `user` array", source=str(npz))
        groups = groups.astype(np.int64)
    source = Path(test_npz) if test_npz is not None else Path(npz)
    test = _load_npz(source) if test_npz is not None else train
    need = ("x_test",) if run_task is Task.AUTOENCODE else ("x_test", "y_test")
    if any(k not in test for k in need):
        raise DatasetError(f"no held-out split: {source.name} has no {' and '.join(need)}",
                           fix=f"add {'/'.join(need)} to the NPZ, or give --test-data NPZ (config: data.test_npz)",
                           source=str(source))
    x_test, y_test = _checked(test, "x_test", "y_test", source, in_shape, classes, run_task)
    anomaly = _anomaly_labels(test, len(x_test), source) if run_task is Task.AUTOENCODE else None
    log.info("%s: %s, %d training and %d test samples of shape %s, %d output values%s", path.name, run_task.value,
             len(x), len(x_test), in_shape, classes, ", anomaly labels" if anomaly is not None else "")
    return RunData(model, graph.data, classes, x, y, groups, x_test, y_test, task=run_task, anomaly_test=anomaly)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The NPZ's arrays, each header checked before anything is allocated (:mod:`tinyfed.models.arrays`)."""
    from tinyfed.models.arrays import read_arrays

    if not path.exists():
        raise DatasetError(f"no such data file {path}", fix="check the --data / --test-data path", source=str(path))
    return read_arrays(path)


def _checked(arrays: dict[str, np.ndarray], xk: str, yk: str, path: Path, in_shape: tuple[int, ...],
             classes: int, task: Task = Task.CLASSIFY) -> tuple[np.ndarray, np.ndarray | None]:
    """x as float32 in the model's input shape and y as the task's targets (see :class:`RunData`), or a DatasetError."""
    need = (xk,) if task is Task.AUTOENCODE else (xk, yk)
    missing = [k for k in need if k not in arrays]
    if missing:
        present = ", ".join(sorted(arrays)) or "nothing"
        raise DatasetError(f"{path.name} has no {' or '.join(missing)} (it has {present})",
                           fix=f"save the arrays as {'= and '.join(need)}= (numpy.savez)", source=str(path))
    x = np.asarray(arrays[xk])
    for key in need:
        if np.ndim(arrays[key]) == 0:
            raise DatasetError(f"{key} is a single value of shape (); it must be an array with one row per sample",
                               fix=f"save {key} with the samples along its first axis (numpy.savez)",
                               source=str(path))
    if task is Task.AUTOENCODE:
        if yk in arrays:
            log.info("%s: %s ignored: an autoencoder's target is its input", path.name, yk)
        y = None
    else:
        y = _targets(np.asarray(arrays[yk]), len(x), yk, xk, path, classes, task)
    if not np.issubdtype(x.dtype, np.number):
        raise DatasetError(f"{xk} must be a numeric array (got {x.dtype})", source=str(path))
    if len(x) == 0:
        raise DatasetError(f"{xk} holds no samples", fix=f"give {xk} at least one sample", source=str(path))
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
    return x, y


def _targets(y: np.ndarray, n: int, yk: str, xk: str, path: Path, outputs: int, task: Task) -> np.ndarray:
    """``y`` as the task's targets: int64 labels (classify), else float32 rows of ``outputs`` values."""
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise DatasetError(f"{yk} must be a numeric array (got {y.dtype})", source=str(path))
    if task is Task.CLASSIFY:
        if y.ndim == 2 and y.shape[1] == outputs:  # one-hot labels
            y = y.argmax(axis=1)
        if y.ndim != 1 or len(y) != n or n == 0:
            raise DatasetError(f"{xk} has {n} samples and {yk} has shape {y.shape}; {yk} needs one label per sample",
                               fix=f"give {yk} as a 1-D array of integer labels as long as {xk}", source=str(path))
        if not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)) or y.min() < 0 or y.max() >= outputs:
            raise DatasetError(f"{yk} holds labels outside 0..{outputs - 1} (the model has {outputs} outputs)",
                               fix="labels must be integer class indices the model's output can score",
                               source=str(path))
        return y.astype(np.int64)
    row = "a 0/1 row" if task is Task.MULTILABEL else "a row of real values"
    if len(y) != n or n == 0 or (int(np.prod(y.shape[1:])) if y.ndim > 1 else 1) != outputs:
        raise DatasetError(f"{xk} has {n} samples and {yk} has shape {y.shape}; --task {task.value} needs {row} of "
                           f"{outputs} value(s) (the model's output) per sample",
                           fix=f"give {yk} shaped ({n}, {outputs})", source=str(path))
    y = y.astype(np.float32).reshape(n, outputs)
    if not np.all(np.isfinite(y)):
        raise DatasetError(f"{yk} holds NaN or infinite values", fix="clean or drop those samples", source=str(path))
    if task is Task.MULTILABEL and not np.all((y == 0) | (y == 1)):
        raise DatasetError(f"{yk} holds values other than 0 and 1; --task multilabel needs one bit per output",
                           fix="threshold the labels to 0/1, or use --task regress for real-valued targets",
                           source=str(path))
    return y


def _anomaly_labels(arrays: dict[str, np.ndarray], n: int, path: Path) -> np.ndarray | None:
    """The test split's anomaly labels (bool, one per sample), None when the file has none."""
    if ANOMALY_KEY not in arrays:
        return None
    a = np.asarray(arrays[ANOMALY_KEY])
    ok = a.shape == (n,) and (a.dtype == np.bool_ or np.issubdtype(a.dtype, np.number)) and np.all((a == 0) | (a == 1))
    if not ok:
        raise DatasetError(f"{ANOMALY_KEY} has shape {a.shape} and type {a.dtype}; it needs one 0/1 per test sample "
                           f"({n}), 1 for an anomaly", fix=f"fix or drop {ANOMALY_KEY}", source=str(path))
    labels = a.astype(bool)
    if labels.all() or not labels.any():
        raise DatasetError(f"{ANOMALY_KEY} marks {int(labels.sum())} of {n} test samples as anomalies; ROC AUC needs "
                           "both normal and anomalous samples", fix=f"add samples of both kinds, or drop {ANOMALY_KEY}",
                           source=str(path))
    return labels
