"""Keras -> full-int8 TFLite conversion, user model intake, and small graph/TFLM helpers.

TensorFlow/Keras are imported inside the functions that need them; :func:`op_names` and
:func:`tflm_predict` work without TensorFlow (LiteRT flatbuffer utilities and the
tflite-micro Python interpreter).
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.errors import ModelError
from tinyfed.models.tfimport import native_stderr_to_log
from tinyfed.ops.fixed_point import dequantize, quantize

if TYPE_CHECKING:  # pragma: no cover
    import keras

__all__ = [
    "convert_keras_to_int8",
    "ensure_batch_one",
    "io_types",
    "load_user_keras",
    "op_names",
    "tflm_predict",
]

def _import_tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ModelError(
            "TensorFlow is needed to convert Keras models but is not installed",
            fix="pip install 'tinyfed[convert]' (tensorflow-cpu)",
        ) from exc
    return tf


def _static_input_shape(model: keras.Model, source: str | None = None) -> tuple[int | None, ...]:
    inputs = list(getattr(model, "inputs", None) or [])
    outputs = list(getattr(model, "outputs", None) or [])
    if not inputs:
        raise ModelError(
            "the model has no defined input (an unbuilt Sequential model?)",
            fix="start the model with keras.Input(shape=...) so its input shape is known",
            source=source,
        )
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"the model has {len(inputs)} inputs and {len(outputs)} outputs; tinyfed needs exactly one of each",
            fix="wrap the model so it takes one input tensor and returns one output tensor",
            source=source,
        )
    shape = tuple(inputs[0].shape)
    if any(d is None for d in shape[1:]):
        raise ModelError(
            f"the model input shape {shape} has unknown dimensions; a microcontroller needs a fixed shape",
            fix="declare the input with a fixed shape, e.g. keras.Input(shape=(1, 128, 6))",
            source=source,
        )
    return shape


def ensure_batch_one(model: keras.Model) -> keras.Model:
    """``model`` itself if its input batch size is 1, else a batch-1 copy with the same weights.

    A fixed batch keeps shape computations (SHAPE/PACK/STRIDED_SLICE around RESHAPE) out of
    the converted graph.
    """
    import keras

    shape = _static_input_shape(model)
    if shape[0] == 1:
        return model
    new_input = keras.Input(batch_shape=(1, *shape[1:]), dtype=model.inputs[0].dtype)
    try:
        clone = keras.models.clone_model(model, input_tensors=new_input)
    except Exception:  # noqa: BLE001 - fall back to rebuilding from the config
        clone = _rebuild_with_batch_one(model)
    clone.set_weights(model.get_weights())
    return clone


def _rebuild_with_batch_one(model: keras.Model) -> keras.Model:
    cfg = model.get_config()
    changed = 0
    for layer in cfg.get("layers", []):
        if layer.get("class_name") == "InputLayer":
            bs = layer["config"].get("batch_shape")
            if bs is not None:
                layer["config"]["batch_shape"] = [1, *list(bs)[1:]]
                changed += 1
    if not changed:
        raise ModelError(
            "cannot give the model a batch size of 1 (no Input layer in its config)",
            fix="build the model with keras.Input(shape=..., batch_size=1)",
        )
    try:
        return type(model).from_config(cfg)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"cannot rebuild the model with batch size 1: {exc}",
            fix="build the model with keras.Input(shape=..., batch_size=1)",
        ) from exc


def convert_keras_to_int8(model: keras.Model, representative: np.ndarray) -> bytes:
    """Full-integer (int8 weights, activations, input and output) TFLite flatbuffer.

    ``representative`` holds calibration samples shaped ``(N, *input_shape)``; they are fed
    one at a time (batch 1) in order, so the result is deterministic.
    """
    tf = _import_tf()
    model = ensure_batch_one(model)
    in_shape = tuple(model.inputs[0].shape[1:])
    rep = np.asarray(representative, dtype=np.float32)
    if rep.ndim != len(in_shape) + 1 or tuple(rep.shape[1:]) != in_shape:
        raise ModelError(
            f"representative data has shape {rep.shape}, expected (N, {', '.join(map(str, in_shape))})",
            fix="pass samples shaped like the model input, with the sample axis first",
        )
    if len(rep) == 0:
        raise ModelError("representative data is empty", fix="pass at least a few dozen typical input samples")
    if not np.all(np.isfinite(rep)):
        raise ModelError("representative data contains NaN or infinite values", fix="clean the calibration samples")

    def gen() -> Iterator[list[np.ndarray]]:
        for sample in rep:
            yield [sample[None, ...]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = gen
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        # The converter prints the exported signature to stdout and warns about input
        # statistics it does not need; keep the caller's output clean.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), native_stderr_to_log("converter"):
            warnings.simplefilter("ignore")
            data = converter.convert()
    except Exception as exc:  # noqa: BLE001 - converter errors are many and untyped
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"int8 conversion failed: {first}",
            fix="use layers with int8 TFLite builtins (Conv2D, DepthwiseConv2D, pooling, Dense, Softmax, Reshape)",
        ) from exc
    return bytes(data)


# --------------------------------------------------------------------------------------
# User models
# --------------------------------------------------------------------------------------


def load_user_keras(path: str | Path, representative_npy_path: str | Path) -> tuple[keras.Model, np.ndarray]:
    """Load a user ``.keras`` model (as batch 1) and its ``.npy`` representative dataset.

    The ``.npy`` must hold ``(N, *input_shape)`` numbers (a single sample shaped like the
    input is accepted as N=1).  Problems raise :class:`ModelError` saying what to do.
    """
    path = Path(path)
    rep_path = Path(representative_npy_path)
    src = str(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}", fix="check the path", source=src)
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        raise ModelError(
            "this is a .tflite file, not a Keras model",
            fix="pass the .tflite file directly (it must already be full-int8); no conversion is needed",
            source=src,
        )
    if suffix in (".h5", ".hdf5") or path.is_dir():
        raise ModelError(
            "legacy HDF5 / SavedModel formats are not supported",
            fix="re-save with model.save('model.keras') in Keras 3",
            source=src,
        )
    if suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ModelError(
            "not a Keras 3 '.keras' file",
            fix="save the model with model.save('model.keras')",
            source=src,
        )
    with zipfile.ZipFile(path) as zf:
        if "config.json" not in zf.namelist():
            raise ModelError("the .keras archive has no config.json", fix="re-save with model.save('model.keras')",
                             source=src)

    _import_tf()
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load the Keras model: {first}",
            fix="make sure custom layers are registered (keras.saving.register_keras_serializable) "
            "and the file was saved by Keras 3",
            source=src,
        ) from exc
    shape = _static_input_shape(model, source=src)
    in_shape = tuple(int(d) for d in shape[1:] if d is not None)  # every one is known (checked above)

    if not rep_path.is_file():
        raise ModelError(
            f"representative dataset not found: {rep_path}",
            fix=f"save typical inputs with numpy.save('{rep_path.name}', x) with x shaped "
            f"(N, {', '.join(map(str, in_shape))})",
            source=str(rep_path),
        )
    from tinyfed.models.arrays import ArrayFileError, read_array

    try:
        rep = read_array(rep_path, key="x")  # an .npy, or an .npz's x (or its only array)
    except ArrayFileError as exc:
        raise ModelError(f"cannot read the representative dataset: {exc.problem}", fix=exc.fix,
                         source=str(rep_path)) from None
    if not (np.issubdtype(rep.dtype, np.floating) or np.issubdtype(rep.dtype, np.integer)):
        raise ModelError(
            f"representative dataset has dtype {rep.dtype}, expected numbers",
            fix="save a float32 array",
            source=str(rep_path),
        )
    if tuple(rep.shape) == in_shape:
        rep = rep[None, ...]
    if rep.ndim != len(in_shape) + 1 or tuple(rep.shape[1:]) != in_shape:
        raise ModelError(
            f"representative dataset has shape {tuple(rep.shape)} but the model input is {in_shape}",
            fix=f"save samples shaped (N, {', '.join(map(str, in_shape))})",
            source=str(rep_path),
        )
    if len(rep) == 0:
        raise ModelError("representative dataset is empty", fix="save at least a few dozen samples",
                         source=str(rep_path))
    rep = rep.astype(np.float32)
    if not np.all(np.isfinite(rep)):
        raise ModelError("representative dataset contains NaN or infinite values", fix="clean it", source=str(rep_path))
    return ensure_batch_one(model), rep


# --------------------------------------------------------------------------------------
# Graph inspection and TFLM execution (no TensorFlow)
# --------------------------------------------------------------------------------------


def _read_flatbuffer(model_bytes: bytes) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        return flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"not a TFLite flatbuffer: {exc}", fix="pass a .tflite file") from exc


def op_names(model_bytes: bytes) -> list[str]:
    """Builtin op names of every operator in every subgraph, in execution order."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read_flatbuffer(model_bytes)
    names = []
    for sg in model.subgraphs:
        for op in sg.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            names.append(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) if code is not None else "?")
    return names


def io_types(model_bytes: bytes) -> tuple[list[str], list[str]]:
    """Type names (e.g. ``INT8``) of the main subgraph's inputs and outputs."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read_flatbuffer(model_bytes)
    sg = model.subgraphs[0]
    ins = [flatbuffer_utils.type_to_name(sg.tensors[i].type) for i in sg.inputs]
    outs = [flatbuffer_utils.type_to_name(sg.tensors[i].type) for i in sg.outputs]
    return ins, outs


def tflm_predict(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Run an int8 model sample by sample in the tflite-micro reference interpreter.

    ``x`` is float ``(N, *input_shape)``; it is quantized with the input scale/zero point
    and the int8 outputs are dequantized (TFLM's QUANTIZE and DEQUANTIZE rules), giving float
    ``(N, *output_shape)``.
    """
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(bytes(model_bytes))
    ind = interp.get_input_details(0)
    outd = interp.get_output_details(0)
    in_scale, in_zp = _quant(ind)
    out_scale, out_zp = _quant(outd)
    in_dtype = np.dtype(ind["dtype"])
    shape = tuple(int(d) for d in ind["shape"])
    outs = []
    for sample in np.asarray(x, dtype=np.float32):
        integer = np.issubdtype(in_dtype, np.integer)
        q = quantize(sample, in_scale, in_zp, in_dtype) if integer else sample.astype(in_dtype)
        interp.set_input(q.reshape(shape), 0)
        interp.invoke()
        o = np.asarray(interp.get_output(0))
        outs.append(dequantize(o, out_scale, out_zp) if np.issubdtype(o.dtype, np.integer) else o)
    return np.concatenate([o.reshape(1, -1) for o in outs]) if outs else np.zeros((0, 0), np.float32)


def _quant(details: dict[str, Any]) -> tuple[float, int]:
    qp = details.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []), dtype=np.float64).ravel()
    zps = np.asarray(qp.get("zero_points", []), dtype=np.int64).ravel()
    if scales.size:
        return float(scales[0]), int(zps[0]) if zps.size else 0
    q = details.get("quantization")
    if q and q[0]:
        return float(q[0]), int(q[1])
    return 1.0, 0
