"""The deployable result of a run: the float32 master of w* written back into the int8 model.

A run trains w* in float32 (the global master), but what a board deploys is a full-int8
``.tflite``. This module closes that loop:

- :func:`requantize` writes a vector of w* into the int8 constants its units name, with the
  quantization parameters the tensors already carry (the rest of the graph, including every
  activation scale, is calibrated for them; changing a scale would silently shift every
  downstream requantization multiplier);
- :func:`deployable_model` produces ONE full int8 model: for FTTE the plan's frozen head
  unchanged plus the tail with the new w*, for the FedAvg/FedBuff baselines (every weight and
  bias trained) the whole model requantized;
- :func:`evaluate_int8` scores such a model through the LiteRT interpreter, which is what the
  engine reports next to the float master after each version (:func:`int8_evaluator`);
- :func:`export_run` writes the final model and, for FTTE, the fragments, atomically.

Quantization rules (TFLite's int8 scheme, see ``docs/training.md``, "Deployable model")::

    weights  q = clip(rint(w / scale[c]) + zero_point[c], -127, 127)   int8, per output channel
    biases   q = clip(rint(b / scale[c]) + zero_point[c], int32 range)  scale[c] = s_in * s_w[c]

(zero points are 0 in TFLite's int8 weights and int32 biases; they are honoured anyway, as
``trainable.dequantize_channels`` does.)

The bias scales are the ones stored in the model (the converter wrote ``s_in * s_w[c]``);
since neither factor changes, neither does the product. Only the channels the units select
are rewritten; every other element keeps its byte.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed.errors import ModelError, TinyfedError
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw
from tinyfed.planner.trainable import TrainableUnit
from tinyfed.training.metrics import PROB_FLOOR, score
from tinyfed.training.task import Task

#: Symmetric int8 range of TFLite weights: -128 is never produced (its negation overflows).
WEIGHT_RANGE = (-127, 127)
BIAS_RANGE = (int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max))


# ---- vectors and units ------------------------------------------------------------------


def split_vector(units: Sequence[TrainableUnit], vector: np.ndarray) -> list[np.ndarray]:
    """The flat vector of w* cut into per-unit arrays shaped like the units' values.

    The flat order is the units' values concatenated in order (``trainable.tfw`` order); a
    length mismatch means the vector belongs to another plan, which must never be written
    silently into a model.
    """
    v = np.asarray(vector, dtype=np.float32).ravel()
    total = sum(int(u.values.size) for u in units)
    if v.size != total:
        raise TinyfedError(f"the vector has {v.size} values but the units hold {total}",
                           fix="pass the vector trained for these units (same plan or model)")
    if not np.all(np.isfinite(v)):
        raise TinyfedError(
            f"the vector holds {int((~np.isfinite(v)).sum())} non-finite values",
            fix="the global model diverged; resume from an earlier checkpoint or lower the learning rate",
        )
    out, k = [], 0
    for u in units:
        n = int(u.values.size)
        out.append(v[k:k + n].reshape(len(u.channels), u.values_per_channel))
        k += n
    return out


def units_with_values(units: Sequence[TrainableUnit], vector: np.ndarray) -> list[TrainableUnit]:
    """Copies of ``units`` holding ``vector``'s values (what ``trainable.tfw`` stores after a run)."""
    parts = split_vector(units, vector)
    return [TrainableUnit(u.op_index, u.tensor_index, u.kind, u.axis, u.channels, u.tensor_channels, p.copy())
            for u, p in zip(units, parts, strict=True)]


def _unit_range(u: TrainableUnit) -> tuple[int, int]:
    return WEIGHT_RANGE if u.kind == tfw.KIND_WEIGHTS else BIAS_RANGE


def _quantized_tensors(graph: TfliteGraph, units: Sequence[TrainableUnit],
                       vector: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
    """New integer contents of every tensor the units touch, and how many values were clipped."""
    parts = split_vector(units, vector)
    new: dict[int, np.ndarray] = {}
    clipped = 0
    for u, part in zip(units, parts, strict=True):
        if not 0 <= u.tensor_index < len(graph.tensors):
            raise ModelError(f"unit of op {u.op_index} names tensor {u.tensor_index}, "
                             f"the model has {len(graph.tensors)}",
                             fix="pass the model the units were made for (the plan's tail.tflite, or the whole model "
                                 "for whole_model_units)", source=graph.source)
        t = graph.tensors[u.tensor_index]
        data = new[u.tensor_index] if u.tensor_index in new else graph.constant_data(u.tensor_index)
        moved = np.moveaxis(data, u.axis, 0)
        if moved.shape[0] != u.tensor_channels or (moved[0].size != u.values_per_channel):
            raise ModelError(f"tensor {u.tensor_index} ('{t.name}') has shape {t.shape}; the unit expects "
                             f"{u.tensor_channels} channels of {u.values_per_channel} values on axis {u.axis}",
                             fix="pass the model the units were made for", source=graph.source)
        n = moved.shape[0]
        scales = np.asarray(t.scales or (1.0,), dtype=np.float64)
        zps = np.asarray(t.zero_points or (0,), dtype=np.float64)
        if len(scales) not in (1, n) or len(zps) not in (1, n) or (len(scales) > 1 and t.quantized_dimension != u.axis):
            raise ModelError(f"tensor {u.tensor_index} ('{t.name}') is not quantized per tensor or per channel on "
                             f"axis {u.axis}", fix="convert the model with per-channel quantization on the output "
                             "channels", source=graph.source)
        if np.any(scales <= 0) or not np.all(np.isfinite(scales)):
            raise ModelError(f"tensor {u.tensor_index} ('{t.name}') has a non-positive scale",
                             fix="re-convert the model", source=graph.source)
        ch = np.asarray(u.channels, dtype=np.int64)
        s = np.broadcast_to(scales, (n,))[ch][:, None]
        z = np.broadcast_to(zps, (n,))[ch][:, None]
        lo, hi = _unit_range(u)
        q = np.rint(part.astype(np.float64) / s) + z
        clipped += int(np.count_nonzero((q < lo) | (q > hi)))
        rows = np.clip(q, lo, hi).astype(data.dtype)
        flat = moved.reshape(n, -1).copy()
        flat[ch] = rows
        new[u.tensor_index] = np.moveaxis(flat.reshape(moved.shape), 0, u.axis).copy()
    return new, clipped


def _write_constants(graph: TfliteGraph, new: dict[int, np.ndarray]) -> bytes:
    data = graph.data
    g = graph
    for index in sorted(new):
        if np.array_equal(g.constant_data(index), new[index]):
            continue  # nothing changed: keep the bytes (and any buffer sharing) as they are
        data = g.with_updated_constant(index, new[index])
        g = TfliteGraph.from_bytes(data, source=graph.source)
    return bytes(data)


# ---- requantize -------------------------------------------------------------------------


@dataclass(frozen=True)
class Requantized:
    """An int8 model with w* written in, and what it cost to get there."""

    model: bytes
    clipped: int  # values of w* outside the int8 (weights) or int32 (biases) range, clipped
    tensors: tuple[int, ...]  # tensor indices the units map to (in the model that was written)


def requantize(model: bytes, units: Sequence[TrainableUnit], vector: np.ndarray, *,
               source: str = "model") -> Requantized:
    """Write the float values of w* into ``model``'s int8/int32 constants (scales unchanged).

    ``model`` is the graph the units index: the plan's ``tail.tflite`` for FTTE, the whole
    int8 model for :func:`~tinyfed.planner.trainable.whole_model_units`. Requantizing the
    start vector reproduces the model's constants bit for bit (``dequantize`` then ``rint`` is
    exact at these magnitudes). ``clipped`` counts values that drifted past the range the
    stored scale can express; a few are harmless, many mean the scales no longer fit the
    trained weights (log it).
    """
    graph = TfliteGraph.from_bytes(model, source=source)
    new, clipped = _quantized_tensors(graph, units, vector)
    return Requantized(_write_constants(graph, new), clipped, tuple(sorted(new)))


# ---- plan fragments and the full deployable model ------------------------------------------


@dataclass(frozen=True)
class PlanFragments:
    """The plan files an FTTE run trains over: the full int8 model, its frozen head, the tail, w*."""

    model: bytes  # model_int8.tflite
    frozen: bytes | None  # frozen.tflite (None when the cut is at op 0: the tail is the whole model)
    tail: bytes  # tail.tflite
    trainable: bytes  # trainable.tfw (the start values of w*)

    @classmethod
    def from_dir(cls, plan_dir: str | Path) -> PlanFragments:
        """Read a plan directory as ``tinyfed plan`` writes it."""
        d = Path(plan_dir)
        need = {"model": "model_int8.tflite", "tail": "tail.tflite", "trainable": "trainable.tfw"}
        missing = [name for name in need.values() if not (d / name).is_file()]
        if missing:
            raise TinyfedError(f"plan directory {d} lacks {', '.join(missing)}",
                               fix="re-run `tinyfed plan ... --out DIR` and pass that directory")
        frozen = d / "frozen.tflite"
        return cls((d / need["model"]).read_bytes(), frozen.read_bytes() if frozen.is_file() else None,
                   (d / need["tail"]).read_bytes(), (d / need["trainable"]).read_bytes())

    def units(self) -> list[TrainableUnit]:
        return tfw.decode(self.trainable)


def tail_tensor_map(model: TfliteGraph, tail: TfliteGraph) -> dict[int, int]:
    """``{tail tensor index: model tensor index}`` for every constant input of the tail's ops.

    The tail is ``model.ops[cut:]`` re-indexed (``TfliteGraph.split``), so tail op ``i`` is model
    op ``cut + i`` with ``cut = len(model.ops) - len(tail.ops)``, and each input slot holds the
    same tensor. Op names, tensor shapes, types and quantization are checked to agree, so a
    tail from another model is refused instead of being written into the wrong weights.
    """
    cut = len(model.ops) - len(tail.ops)
    fix = "pass the plan's own model_int8.tflite and tail.tflite (same `tinyfed plan` run)"
    if cut < 0:
        raise ModelError(f"the tail has {len(tail.ops)} ops, more than the model's {len(model.ops)}", fix=fix,
                         source=tail.source)
    mapping: dict[int, int] = {}
    for top in tail.ops:
        mop = model.ops[cut + top.index]
        if mop.name != top.name or len(mop.inputs) != len(top.inputs):
            raise ModelError(f"tail op {top.index} is {top.name}, model op {mop.index} is {mop.name}", fix=fix,
                             source=tail.source)
        for ti, mi in zip(top.inputs, mop.inputs, strict=True):
            if ti < 0 or not tail.tensors[ti].is_constant:
                continue
            a, b = tail.tensors[ti], model.tensors[mi]
            if (a.shape, a.type_name, a.scales, a.zero_points) != (b.shape, b.type_name, b.scales, b.zero_points):
                raise ModelError(f"tail tensor {ti} ('{a.name}', {a.shape} {a.type_name}) does not match model tensor "
                                 f"{mi} ('{b.name}', {b.shape} {b.type_name})", fix=fix, source=tail.source)
            if mapping.setdefault(ti, mi) != mi:
                raise ModelError(f"tail tensor {ti} maps to model tensors {mapping[ti]} and {mi}", fix=fix,
                                 source=tail.source)
    return mapping


@dataclass(frozen=True)
class Deployable:
    """One full int8 model with the trained w*, plus (FTTE) the fragments that make it up."""

    model: bytes  # the full int8 .tflite to deploy
    clipped: int
    units: list[TrainableUnit]  # w* with the trained values (``tfw.encode`` gives trainable.tfw)
    frozen: bytes | None = None  # FTTE: the plan's frozen head, unchanged
    tail: bytes | None = None  # FTTE: the tail with the new w*
    facts: dict = field(default_factory=dict)


def deployable_model(source: PlanFragments | bytes, vector: np.ndarray) -> Deployable:
    """The full int8 model for a vector of w*.

    ``source`` is a :class:`PlanFragments` (FTTE: w* = the units of ``trainable.tfw`` over the
    tail) or the bytes of the whole int8 model (baselines: w* = ``whole_model_units``). For
    FTTE the quantized constants are computed once on the tail and written, identical, into
    both the tail and the matching tensors of ``model_int8.tflite``; the frozen head is never
    touched, so the deployed model computes exactly what the boards' frozen fragment computes.
    """
    if isinstance(source, PlanFragments):
        units = source.units()
        tail = TfliteGraph.from_bytes(source.tail, source="tail.tflite")
        model = TfliteGraph.from_bytes(source.model, source="model_int8.tflite")
        mapping = tail_tensor_map(model, tail)
        new_tail, clipped = _quantized_tensors(tail, units, vector)
        unmapped = sorted(set(new_tail) - set(mapping))
        if unmapped:
            raise ModelError(f"tail tensors {unmapped} hold w* but feed no op of the model",
                             fix="pass the plan's own model_int8.tflite and tail.tflite", source="tail.tflite")
        tail_bytes = _write_constants(tail, new_tail)
        full = _write_constants(model, {mapping[i]: a for i, a in new_tail.items()})
        return Deployable(full, clipped, units_with_values(units, vector), source.frozen, tail_bytes,
                          {"cut_op": len(model.ops) - len(tail.ops), "tensors": sorted(mapping[i] for i in new_tail)})
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise TinyfedError(f"cannot build a deployable model from {type(source).__name__}",
                           fix="pass PlanFragments (FTTE) or the whole int8 model's bytes (FedAvg/FedBuff)")
    graph = TfliteGraph.from_bytes(bytes(source), source="model")
    units = tfw.whole_model_units(graph)
    new, clipped = _quantized_tensors(graph, units, vector)
    return Deployable(_write_constants(graph, new), clipped, units_with_values(units, vector),
                      facts={"tensors": sorted(new)})


# ---- evaluation through LiteRT ----------------------------------------------------------


def _tflite_quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    from tinyfed.models.tflm import quantize

    return quantize(x, scale, zero_point, dtype)


def _OP_RESOLVER() -> Any:  # noqa: N802 - reads as the constant it returns
    """LiteRT's built-in kernels without its default XNNPACK delegate: the delegate only adds speed
    here, and creating it prints an INFO line on stderr at every run."""
    from ai_edge_litert.interpreter import OpResolverType

    return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def quantize_for(tflite_bytes: bytes, x_float: np.ndarray) -> np.ndarray:
    """Float inputs quantized with the model input's scale and zero point (TFLite's rule).

    Quantize a test split once with this and pass the result to :func:`evaluate_int8` to skip
    doing it at every version (the input tensor's parameters never change in a run).
    """
    from ai_edge_litert.interpreter import Interpreter

    d = Interpreter(model_content=bytes(tflite_bytes),
                    experimental_op_resolver_type=_OP_RESOLVER()).get_input_details()[0]
    q = d["quantization_parameters"]
    if len(q["scales"]) != 1:
        raise ModelError(f"the model input is not quantized per tensor ({len(q['scales'])} scales)",
                         fix="convert the model with an int8 input (per-tensor scale and zero point)")
    return _tflite_quantize(x_float, float(q["scales"][0]), int(q["zero_points"][0]), np.dtype(d["dtype"]))


def evaluate_int8(tflite_bytes: bytes, x_float: np.ndarray, y: np.ndarray, *, task: Task = Task.CLASSIFY,
                  anomaly: np.ndarray | None = None) -> tuple[float, float]:
    """The task's metric and mean loss of an int8 model on ``(x_float, y)``, through LiteRT.

    ``y`` and ``anomaly`` are the targets of :func:`tinyfed.training.metrics.score` (integer
    labels for classification: the metric is then the accuracy, the loss the cross-entropy).
    Inputs are quantized with the input tensor's scale and zero point (already-int8 ``x`` is
    taken as quantized), outputs dequantized. A classifier ending in SOFTMAX (a multi-label
    model in LOGISTIC) outputs probabilities: one the int8 output rounds to 0 counts as half an
    output step in the loss; a classifier without SOFTMAX outputs logits, and a softmax is
    applied. Samples run one at a time at the model's own batch size, so graphs with a
    fixed-batch RESHAPE evaluate correctly too. LiteRT's XNNPACK kernels can differ from TFLite
    Micro by a few LSB: fine for a metric, never a bit-exact reference (that is
    ``tinyfed.models.tflm``).
    """
    model = bytes(tflite_bytes)
    y = np.asarray(y).astype(np.int64).ravel() if task is Task.CLASSIFY else np.asarray(y, np.float32)
    x = np.asarray(x_float)
    if len(x) != len(y) or len(y) == 0:
        what = "labels" if task is Task.CLASSIFY else "targets"
        raise TinyfedError(f"{len(x)} samples but {len(y)} {what}",
                           fix=f"pass one {what[:-1]} per sample, at least one sample")
    out, out_scale = _run_litert(model, x)
    floor = PROB_FLOOR
    last = TfliteGraph.from_bytes(model, source="model").ops[-1].name
    if task is Task.CLASSIFY and last != "SOFTMAX":
        z = out - out.max(axis=1, keepdims=True)
        out = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    elif task in (Task.CLASSIFY, Task.MULTILABEL) and out_scale is not None:
        # An int8 softmax or sigmoid cannot express p < scale / 2 (1/512 for the usual 1/256
        # scale): such a probability reads as 0 and would add -log(1e-30) = 69 to the loss for a
        # merely confident mistake. Taking it as half a step keeps the loss comparable to the float one.
        floor = out_scale / 2
    if task is Task.CLASSIFY and (y.min() < 0 or y.max() >= out.shape[1]):
        raise TinyfedError(f"labels span {y.min()}..{y.max()} but the model has {out.shape[1]} outputs",
                           fix="pass the labels of the model's dataset")
    if task is not Task.CLASSIFY and int(np.prod(y.shape[1:])) != out.shape[1]:
        raise TinyfedError(f"targets of shape {y.shape[1:]} but the model has {out.shape[1]} outputs",
                           fix="pass targets shaped like the model's output")
    return score(task, out, y, anomaly, prob_floor=floor)


def _run_litert(model: bytes, x: np.ndarray) -> tuple[np.ndarray, float | None]:
    """The dequantized outputs (n, values) of ``model`` on ``x``, and the output scale (None: float output)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, experimental_op_resolver_type=_OP_RESOLVER())
    it.allocate_tensors()
    din, dout = it.get_input_details()[0], it.get_output_details()[0]
    shape = tuple(int(s) for s in din["shape"])
    if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
        raise TinyfedError(f"samples of shape {x.shape[1:]} do not fit the model input {shape}",
                           fix="pass the test split of the dataset the model was made for")
    if x.dtype != np.dtype(din["dtype"]):
        x = quantize_for(model, x)
    out = np.empty((len(x), int(np.prod(dout["shape"]))), dtype=np.float32)
    for i in range(len(x)):
        it.set_tensor(din["index"], x[i].reshape(shape))
        it.invoke()
        out[i] = it.get_tensor(dout["index"]).reshape(-1)
    oq = dout["quantization_parameters"]
    if not len(oq["scales"]):
        return out, None
    return (out - float(oq["zero_points"][0])) * np.float32(oq["scales"][0]), float(oq["scales"][0])


@dataclass(frozen=True)
class Int8Score:
    metric: float  # the task's metric (accuracy for classification)
    loss: float
    clipped: int


def int8_evaluator(source: PlanFragments | bytes, x_float: np.ndarray, y: np.ndarray, *, task: Task = Task.CLASSIFY,
                   anomaly: np.ndarray | None = None) -> Callable[[np.ndarray], Int8Score]:
    """What the engine calls after each version: vector -> the deployable model's test score.

    The test inputs are quantized once here. Each call builds the full int8 model from the
    vector (:func:`deployable_model`) and runs it through LiteRT; ``clipped`` is worth logging
    (values of w* the stored scales could not hold). ``y`` and ``anomaly`` as in :func:`evaluate_int8`.
    """
    model = source.model if isinstance(source, PlanFragments) else bytes(source)
    xq = quantize_for(model, x_float)
    y = np.asarray(y)

    def score_vector(vector: np.ndarray) -> Int8Score:
        dep = deployable_model(source, vector)
        metric, loss = evaluate_int8(dep.model, xq, y, task=task, anomaly=anomaly)
        return Int8Score(metric, loss, dep.clipped)

    return score_vector


# ---- export -----------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    """temp file in the same directory, fsync, rename: a reader sees the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ExportResult:
    files: dict[str, Path]  # "final", and for FTTE "frozen", "tail", "trainable"; "manifest"
    clipped: int


def export_run(out_dir: str | Path, source: PlanFragments | bytes, vector: np.ndarray, *,
               facts: dict | None = None) -> ExportResult:
    """Write the run's deployable result into ``out_dir``.

    ``final_int8.tflite`` always; for FTTE also ``frozen.tflite`` (the plan's, byte for
    byte), ``tail.tflite`` (with the new w*) and ``trainable.tfw`` (the final float values, so
    another run can start from them); and ``export.json`` (sizes, sha256, clipped count, plus
    ``facts`` from the caller, e.g. version and accuracy). Each file is written atomically,
    the manifest last, so a crash never leaves a half-written model under its final name.
    """
    import hashlib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dep = deployable_model(source, vector)
    blobs: dict[str, tuple[str, bytes]] = {"final": ("final_int8.tflite", dep.model)}
    if isinstance(source, PlanFragments):
        if dep.frozen is not None:
            blobs["frozen"] = ("frozen.tflite", dep.frozen)
        blobs["tail"] = ("tail.tflite", dep.tail or b"")
        blobs["trainable"] = ("trainable.tfw", tfw.encode(dep.units))
    files: dict[str, Path] = {}
    for key, (name, data) in blobs.items():
        _write_atomic(out / name, data)
        files[key] = out / name
    manifest = {
        "payload": "subset" if isinstance(source, PlanFragments) else "dense",
        "clipped": dep.clipped,
        "values": int(np.asarray(vector).size),
        "files": {
            name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in blobs.values()
        },
        **dep.facts,
        **(facts or {}),
    }
    _write_atomic(out / "export.json", (json.dumps(manifest, indent=2) + "\n").encode())
    files["manifest"] = out / "export.json"
    return ExportResult(files, dep.clipped)
