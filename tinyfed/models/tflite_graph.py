"""Read, validate, introspect and cut full-int8 ``.tflite`` models.

This is the runtime path: it never imports TensorFlow. Parsing uses the generated flatbuffer
schema of ``ai_edge_litert`` (``schema_py_generated``, the *object API* ``ModelT``) and
writing uses ``ai_edge_litert.tools.flatbuffer_utils``-style packing.

What :meth:`TfliteGraph.from_bytes` guarantees
    The bytes are a single-subgraph TFLite flatbuffer whose every offset, vector, string and
    index is in range, and whose activations (graph inputs/outputs and every non-constant op
    input/output) are not floating point, except a float interface: QUANTIZE ops first that read
    float graph inputs and DEQUANTIZE ops last that write float graph outputs (:attr:`edges`;
    :meth:`int8_graph` is the body without them). Anything else raises
    :class:`~tinyfed.errors.ModelError` with a one-line problem and fix. Validation follows
    TFLM's own checks: quirks TFLM ignores (a 1-D bias's per-channel axis out of range, a bias
    without zero points, non-zero convolution filter zero points) are kept in :attr:`warnings`
    and logged, and the graph records what TFLM uses (axis 0, zero points 0).

    Parsing is pure Python over a bounds-checked view of the bytes, so a damaged file can
    raise but never crash the process; the work done is linear in the file size, so it
    cannot hang either. Buffers stored after the flatbuffer (``offset``/
    ``size``, the >2 GB layout) are checked against the file length and read in.

    Because TFLM's kernels trust the flatbuffer (a negative scale, a wrong shape, a swapped
    opcode or options table, a depth multiplier that disagrees with the filter can make them
    divide by zero, abort, hang or write out of bounds), the graph is also checked for
    consistency: usable quantization scales, quantization on every int8/int16 tensor, input
    counts and options tables of common ops, shape agreement for conv/depthwise/pool/FC/
    reshape/elementwise ops (no grouped convolution: TFLM has none), and no variable tensor
    in a written position. In tests, thousands of single-byte flips of the test models that
    pass these checks all ran in TFLM without crashing. Damage inside weight bytes stays
    undetectable: the format has no checksum.

Surgery
    :meth:`TfliteGraph.extract` copies a contiguous run of operators into a new standalone
    model: unused tensors, buffers and operator codes are pruned and everything re-indexed;
    buffer 0 stays the empty sentinel; quantization parameters are kept; signature defs
    (which name tensor indices of the whole model) are dropped; of the metadata only
    ``min_runtime_version`` and ``CONVERSION_METADATA`` are kept (both stay true for a subset
    of the ops). Constant buffers are written 16-byte aligned, like the converter does, so
    the fragments can be placed in MCU flash and read with aligned loads.
    :meth:`TfliteGraph.split` cuts at a clean single-tensor boundary from :meth:`cut_points`.

Conventions
    Op and tensor indices are those of the file. ``shape`` is the stored shape (batch
    included, e.g. ``(1, 1, 32, 3)``). Weight layouts are TFLite's: CONV_2D filters are OHWI
    (output channels on axis 0), DEPTHWISE_CONV_2D filters 1HWC (axis 3), FULLY_CONNECTED
    weights (out, in) (axis 0).
"""

from __future__ import annotations

import copy
import logging
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, SupportsIndex, overload

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema_fb
from ai_edge_litert.tools import flatbuffer_utils

from tinyfed.errors import ModelError

__all__ = ["FloatEdges", "OpInfo", "TensorInfo", "TfliteGraph", "FLOAT_FIX", "CORRUPT_FIX"]

log = logging.getLogger(__name__)

FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16

FLOAT_FIX = (
    "convert with full-integer quantization: `tinyfed plan model.keras --representative data.npy`, "
    "or pass the .tflite produced by TFLiteConverter with inference_input_type=int8"
)
CORRUPT_FIX = "the file is damaged or cut short: copy or export the .tflite again and compare its size"
NOT_TFLITE_FIX = "pass a .tflite flatbuffer (TFLiteConverter output), not a .keras/.h5/SavedModel file"

# Metadata entries that stay true for any subset of a model's ops.
_SAFE_METADATA = {b"min_runtime_version", b"CONVERSION_METADATA"}

_TYPE_NAMES: dict[int, str] = {v: k for k, v in vars(schema_fb.TensorType).items() if not k.startswith("_")}
_OP_NAMES: dict[int, str] = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
_PADDING_NAMES = {v: k for k, v in vars(schema_fb.Padding).items() if not k.startswith("_")}
_ACTIVATION_NAMES = {v: k for k, v in vars(schema_fb.ActivationFunctionType).items() if not k.startswith("_")}

# TensorType name -> (numpy dtype, bits per element).
_DTYPES: dict[str, tuple[np.dtype | None, int]] = {
    "FLOAT32": (np.dtype(np.float32), 32),
    "FLOAT16": (np.dtype(np.float16), 16),
    "FLOAT64": (np.dtype(np.float64), 64),
    "INT32": (np.dtype(np.int32), 32),
    "UINT8": (np.dtype(np.uint8), 8),
    "INT64": (np.dtype(np.int64), 64),
    "BOOL": (np.dtype(np.bool_), 8),
    "INT16": (np.dtype(np.int16), 16),
    "COMPLEX64": (np.dtype(np.complex64), 64),
    "INT8": (np.dtype(np.int8), 8),
    "COMPLEX128": (np.dtype(np.complex128), 128),
    "UINT64": (np.dtype(np.uint64), 64),
    "UINT32": (np.dtype(np.uint32), 32),
    "UINT16": (np.dtype(np.uint16), 16),
    "INT4": (np.dtype(np.int8), 4),  # packed two per byte
    "UINT4": (np.dtype(np.uint8), 4),
    "INT2": (np.dtype(np.int8), 2),
    "BFLOAT16": (None, 16),
    "FLOAT8_E4M3FN": (None, 8),
    "FLOAT8_E5M2": (None, 8),
    "STRING": (None, 0),
    "RESOURCE": (None, 0),
    "VARIANT": (None, 0),
}
_FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16", "FLOAT8_E4M3FN", "FLOAT8_E5M2"}

# op name -> (weight input position, bias input position or None, output-channel axis of the weights)
_WEIGHT_OPS: dict[str, tuple[int, int | None, int]] = {
    "CONV_2D": (1, 2, 0),  # filter OHWI
    "DEPTHWISE_CONV_2D": (1, 2, 3),  # filter 1HWC
    "FULLY_CONNECTED": (1, 2, 0),  # weights (out, in)
    "TRANSPOSE_CONV": (1, 3, 0),  # inputs: output_shape, filter OHWI, input, bias
}


# Minimum number of input slots of common ops (TFLM reads these without checking).
_MIN_INPUTS: dict[str, int] = {
    "CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3,
    "MAX_POOL_2D": 1, "AVERAGE_POOL_2D": 1, "L2_POOL_2D": 1, "SOFTMAX": 1, "LOG_SOFTMAX": 1,
    "RESHAPE": 1, "ADD": 2, "SUB": 2, "MUL": 2, "MAXIMUM": 2, "MINIMUM": 2, "SQUARED_DIFFERENCE": 2,
    "MEAN": 2, "SUM": 2, "REDUCE_MAX": 2, "REDUCE_MIN": 2, "REDUCE_PROD": 2, "PAD": 2, "PADV2": 2,
    "CONCATENATION": 1, "LOGISTIC": 1, "TANH": 1, "RELU": 1, "RELU6": 1, "RELU_N1_TO_1": 1,
    "HARD_SWISH": 1, "LEAKY_RELU": 1, "QUANTIZE": 1, "DEQUANTIZE": 1, "PRELU": 2,
    "STRIDED_SLICE": 4, "SLICE": 3, "TRANSPOSE": 2, "SQUEEZE": 1, "EXPAND_DIMS": 2,
}
# Of those slots, how many must be present (not -1); default: all.
_REQUIRED_INPUTS: dict[str, int] = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "RESHAPE": 1}
_SAME_SHAPE_OPS = {
    "SOFTMAX", "LOG_SOFTMAX", "LOGISTIC", "TANH", "RELU", "RELU6", "RELU_N1_TO_1", "HARD_SWISH",
    "LEAKY_RELU", "QUANTIZE", "DEQUANTIZE",
}
_BROADCAST_OPS = {"ADD", "SUB", "MUL", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE"}
# Ops that slide a window over NHWC activations: their output size follows from stride, dilation, kernel, padding.
_WINDOW_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"}
_MAX_ACTIVATION_BYTES = 1 << 31
# The builtin-options table each common op must carry (when it carries one).
_OPTIONS_TYPE: dict[str, str] = {
    "CONV_2D": "Conv2DOptionsT", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptionsT",
    "FULLY_CONNECTED": "FullyConnectedOptionsT", "MAX_POOL_2D": "Pool2DOptionsT",
    "AVERAGE_POOL_2D": "Pool2DOptionsT", "L2_POOL_2D": "Pool2DOptionsT", "SOFTMAX": "SoftmaxOptionsT",
    "RESHAPE": "ReshapeOptionsT", "ADD": "AddOptionsT", "SUB": "SubOptionsT", "MUL": "MulOptionsT",
    "MEAN": "ReducerOptionsT", "SUM": "ReducerOptionsT", "REDUCE_MAX": "ReducerOptionsT",
    "REDUCE_MIN": "ReducerOptionsT", "REDUCE_PROD": "ReducerOptionsT",
    "CONCATENATION": "ConcatenationOptionsT", "TRANSPOSE_CONV": "TransposeConvOptionsT",
    "LEAKY_RELU": "LeakyReluOptionsT", "PAD": "PadOptionsT", "SQUEEZE": "SqueezeOptionsT",
    "STRIDED_SLICE": "StridedSliceOptionsT",
}
_QUANTIZED_TYPES = {"INT8", "UINT8", "INT16"}


# --------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the (single) subgraph."""

    index: int
    name: str
    shape: tuple[int, ...]
    type_name: str  # TFLite TensorType name, e.g. "INT8"
    dtype: np.dtype | None  # numpy dtype (None for STRING/RESOURCE/... types)
    scales: tuple[float, ...]  # empty when not quantized; one per channel when per-axis
    zero_points: tuple[int, ...]
    quantized_dimension: int
    is_constant: bool  # has data in a non-empty buffer
    is_variable: bool
    buffer: int
    nbytes: int
    #: False when the file gives scales but no zero points: TFLM then treats the tensor as not quantized
    has_zero_points: bool = True

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_per_channel(self) -> bool:
        return len(self.scales) > 1


@dataclass(frozen=True)
class OpInfo:
    """One operator, in execution order.

    ``options`` holds the builtin options as a snake_case dict (e.g. ``stride_h``,
    ``fused_activation_function``) plus normalised fields where they apply: ``stride``
    ``(h, w)``, ``padding`` ("SAME"/"VALID"), ``activation`` ("NONE", "RELU", ...),
    ``dilation`` ``(h, w)``, ``filter`` ``(h, w)`` (pool window, or conv kernel from the
    weight shape) and ``depth_multiplier``. ``raw_options`` is the schema object itself.
    """

    index: int
    name: str
    builtin_code: int
    version: int
    inputs: tuple[int, ...]  # -1 marks an omitted optional input
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict, compare=False)
    raw_options: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FloatEdges:
    """A float-interface model's edges: the ops that convert float32 data to and from the int8 body.

    ``quantize_ops`` are the first ops (QUANTIZE float32 -> int8, one per float input),
    ``dequantize_ops`` the last (DEQUANTIZE int8 -> float32, one per float output). The host
    does their work (:func:`tinyfed.ops.fixed_point.quantize` / ``dequantize`` with the
    int8 side's scale and zero point); :meth:`TfliteGraph.int8_body` is what boards run.
    """

    quantize_ops: tuple[int, ...] = ()
    dequantize_ops: tuple[int, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.quantize_ops or self.dequantize_ops)


# --------------------------------------------------------------------------------------
# Bounds-checked bytes for the parser
# --------------------------------------------------------------------------------------


class _StrictBytes(bytes):
    """``bytes`` whose slices refuse to run past the end.

    The Python flatbuffers runtime reads scalars with ``struct.unpack_from`` (which raises
    past the end) and vectors with ``np.frombuffer`` (which raises too), but reads strings by
    slicing, which would silently truncate. This closes that gap.
    """

    @overload
    def __getitem__(self, key: SupportsIndex) -> int: ...

    @overload
    def __getitem__(self, key: slice) -> bytes: ...

    def __getitem__(self, key: SupportsIndex | slice) -> int | bytes:
        if isinstance(key, slice):
            start, stop = key.start, key.stop
            if (start is not None and (start < 0 or start > len(self))) or (
                stop is not None and (stop < 0 or stop > len(self))
            ):
                raise IndexError(f"slice [{start}:{stop}] outside {len(self)} bytes")
        return super().__getitem__(key)


class _Corrupt(Exception):
    """Internal: raised by the structural checks, turned into a ModelError."""


def _check_vector(tab: flatbuffers.table.Table, slot: int, elem_size: int, size: int) -> int:
    """Length of the vector at vtable ``slot`` of ``tab`` (0 if absent), checked to fit."""
    o = tab.Offset(slot)
    if o == 0:
        return 0
    n = tab.VectorLen(o)
    start = tab.Vector(o)
    if start + n * elem_size > size:
        raise _Corrupt(f"vector of {n} elements runs past the end")
    return n


def _resolve_buffers(model: schema_fb.ModelT, buf: bytes) -> list[schema_fb.BufferT]:
    """The model's buffers, those stored after the flatbuffer (offset/size) read in; external ones refused."""
    n = len(buf)
    if model.externalBuffers or model.externalBufferGroups:
        raise ModelError(
            "model keeps its weights in external buffer files",
            fix="re-export the model with its weights inside the .tflite",
        )
    buffers = model.buffers or []
    if not buffers:
        raise _Corrupt("no buffers (the empty sentinel buffer 0 is missing)")
    for b_index, b in enumerate(buffers):
        if b.offset or b.size:
            # Weights stored after the flatbuffer (models >2 GB): offset/size from file start.
            if b.offset <= 1 or b.offset + b.size > n:
                raise _Corrupt(f"buffer {b_index} at offset {b.offset} size {b.size} lies outside the file")
            b.data = np.frombuffer(buf, dtype=np.uint8, count=b.size, offset=b.offset)
            b.offset = 0
            b.size = 0
    return buffers


def _resolve_and_check_operator(op_i: int, op: schema_fb.OperatorT, buf: bytes, nop: int, nt: int) -> None:
    """Read in the op's large custom options and check its opcode and tensor indices."""
    n = len(buf)
    if op.largeCustomOptionsOffset or op.largeCustomOptionsSize:
        off, size = op.largeCustomOptionsOffset, op.largeCustomOptionsSize
        if off <= 1 or off + size > n:
            raise _Corrupt(f"op {op_i} custom options outside the file")
        op.customOptions = np.frombuffer(buf, dtype=np.uint8, count=size, offset=off)
        op.largeCustomOptionsOffset = 0
        op.largeCustomOptionsSize = 0
    if not 0 <= op.opcodeIndex < nop:
        raise _Corrupt(f"op {op_i} refers to operator code {op.opcodeIndex} of {nop}")
    for t in _ints(op.inputs) + _ints(op.intermediates):
        if not -1 <= t < nt:
            raise _Corrupt(f"op {op_i} refers to tensor {t} of {nt}")
    outs = _ints(op.outputs)
    if not outs:
        raise _Corrupt(f"op {op_i} has no outputs")
    for t in outs:
        if not 0 <= t < nt:
            raise _Corrupt(f"op {op_i} writes tensor {t} of {nt}")


def _check_tensor(t_i: int, t: schema_fb.TensorT, buffers: list[schema_fb.BufferT]) -> None:
    """A tensor's buffer index, shape, type, data size and quantization parameters."""
    if t.externalBuffer:
        raise ModelError(
            f"tensor {t_i} keeps its data in an external buffer",
            fix="re-export the model with its weights inside the .tflite",
        )
    nbuf = len(buffers)
    if not 0 <= t.buffer < nbuf:
        raise _Corrupt(f"tensor {t_i} refers to buffer {t.buffer} of {nbuf}")
    shape = _ints(t.shape)
    if any(d < 0 for d in shape):
        raise _Corrupt(f"tensor {t_i} has negative dimension in shape {shape}")
    type_name = _TYPE_NAMES.get(t.type)
    if type_name is None:
        raise _Corrupt(f"tensor {t_i} has unknown type {t.type}")
    data = buffers[t.buffer].data
    if t.buffer != 0 and data is not None and len(data) > 0 and _DTYPES[type_name][1] > 0:
        if len(data) != _nbytes(tuple(shape), type_name):
            raise _Corrupt(
                f"tensor {t_i} {type_name}{shape} needs {_nbytes(tuple(shape), type_name)} bytes,"
                f" its buffer has {len(data)}"
            )
    _check_quantization(t_i, t.quantization, shape)


def _check_quantization(t_i: int, q: schema_fb.QuantizationParametersT | None, shape: list[int]) -> None:
    """As many zero points as scales (TFLM reads one zero point per scale).

    The per-channel axis (``quantized_dimension``) is checked where TFLM reads it, by the
    tensor's role (:meth:`TfliteGraph._check_quantized_dimensions`): TFLM ignores it elsewhere.
    """
    if q is not None and q.scale is not None and len(q.scale) > 0:
        zps = q.zeroPoint
        if zps is not None and len(zps) not in (0, len(q.scale)):
            raise _Corrupt(f"tensor {t_i} has {len(q.scale)} scales but {len(zps)} zero points")


def _check_model_references(model: schema_fb.ModelT, nbuf: int, nt: int) -> None:
    """Buffer indices of the metadata and tensor indices of the signature defs."""
    if model.metadataBuffer is not None:
        for b in _ints(model.metadataBuffer):
            if not 0 <= b < nbuf:
                raise _Corrupt(f"metadata refers to buffer {b} of {nbuf}")
    for md in model.metadata or []:
        if not 0 <= md.buffer < nbuf:
            raise _Corrupt(f"metadata refers to buffer {md.buffer} of {nbuf}")
    for sd in model.signatureDefs or []:
        for tm in (sd.inputs or []) + (sd.outputs or []):
            if not 0 <= tm.tensorIndex < nt:
                raise _Corrupt(f"signature refers to tensor {tm.tensorIndex} of {nt}")


def _pool_window(op: OpInfo, c: int) -> tuple[int, int, int] | str:
    """(window height, window width, output channels) of a pool op, or why its window is wrong."""
    kh, kw = op.options.get("filter", (1, 1))
    if min(kh, kw) < 1:
        return f"pool window {(kh, kw)} must be >= 1"
    return kh, kw, c


# --------------------------------------------------------------------------------------
# Packing with aligned buffers
# --------------------------------------------------------------------------------------


class _AlignedBufferT(schema_fb.BufferT):
    """A ``BufferT`` whose data vector is packed 16-byte aligned (the schema's force_align)."""

    def Pack(self, builder):  # noqa: N802 (flatbuffers naming)
        data_off = None
        if self.data is not None:
            payload = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head = builder.head - len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data_off = builder.EndVector()
        schema_fb.BufferStart(builder)
        if data_off is not None:
            schema_fb.BufferAddData(builder, data_off)
        schema_fb.BufferAddOffset(builder, self.offset)
        schema_fb.BufferAddSize(builder, self.size)
        return schema_fb.BufferEnd(builder)


def _aligned_buffer(data: np.ndarray | None) -> _AlignedBufferT:
    b = _AlignedBufferT()
    b.data = None if data is None else np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    b.offset = 0
    b.size = 0
    return b


def _pack(model: schema_fb.ModelT) -> bytes:
    model.buffers = [b if isinstance(b, _AlignedBufferT) else _aligned_buffer(b.data) for b in model.buffers]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _ints(values: Any) -> list[int]:
    if values is None:
        return []
    return [int(v) for v in values]


def _decode(name: Any) -> str:
    if name is None:
        return ""
    if isinstance(name, (bytes, bytearray)):
        return name.decode("utf-8", errors="replace")
    return str(name)


def _nbytes(shape: tuple[int, ...], type_name: str) -> int:
    bits = _DTYPES.get(type_name, (None, 0))[1]
    return (math.prod(shape) * bits + 7) // 8


# --------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------


#: The largest model file tinyfed reads: four times the flash of the biggest board it knows (16 MiB
#: of external QSPI); a bigger file is not a microcontroller model, and parsing it would cost
#: gigabytes of host memory.
MAX_MODEL_BYTES = 64 * 1024 * 1024
_TOO_BIG_FIX = "give the int8 model meant for the boards (microcontroller models are kilobytes to a few MiB)"


def _too_big(n: int) -> str:
    return f"the model file is {n / 1024**2:,.0f} MiB, more than tinyfed reads ({MAX_MODEL_BYTES // 1024**2} MiB)"


def read_model_bytes(path: str | Path) -> bytes:
    """A model file's bytes, its size checked before it is read."""
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ModelError(_too_big(size), fix=_TOO_BIG_FIX, source=str(p))
    return p.read_bytes()


class TfliteGraph:
    """A validated single-subgraph full-int8 TFLite model.

    Build with :meth:`from_bytes` or :meth:`from_file`; the constructor is internal.
    """

    def __init__(self, model: schema_fb.ModelT, data: bytes, source: str) -> None:
        self._model = model
        self._data = data
        self.source = source
        sg = model.subgraphs[0]
        self._sg = sg
        self.inputs: list[int] = _ints(sg.inputs)
        self.outputs: list[int] = _ints(sg.outputs)
        self.tensors: list[TensorInfo] = [self._tensor_info(i, t) for i, t in enumerate(sg.tensors or [])]
        self.ops: list[OpInfo] = [self._op_info(i, op) for i, op in enumerate(sg.operators or [])]
        #: quirks TFLM accepts (each names its tensor or op); logged once when the model is read
        self.warnings: list[str] = []
        #: the float interface: QUANTIZE ops first and DEQUANTIZE ops last, around the int8 body
        self.edges = FloatEdges()

    # ---- loading -------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> TfliteGraph:
        p = Path(path)
        try:
            data = read_model_bytes(p)
        except FileNotFoundError:
            raise ModelError("model file not found", fix="check the path", source=str(p)) from None
        except IsADirectoryError:
            raise ModelError("expected a .tflite file, got a directory", fix=NOT_TFLITE_FIX, source=str(p)) from None
        except OSError as e:
            raise ModelError(
                f"cannot read model file ({e.strerror})", fix="check the file's permissions", source=str(p)
            ) from None
        return cls.from_bytes(data, source=str(p))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, source: str = "<bytes>", *,
                   quiet: bool = False) -> TfliteGraph:
        """Parse and validate; the quirks TFLM accepts are logged (unless ``quiet``) and kept in :attr:`warnings`."""
        data = bytes(data)
        n = len(data)
        if n > MAX_MODEL_BYTES:
            raise ModelError(_too_big(n), fix=_TOO_BIG_FIX, source=source)
        if n == 0:
            raise ModelError("empty model file (0 bytes)", fix=NOT_TFLITE_FIX, source=source)
        if n < 8:
            raise ModelError(f"file too short to be a TFLite model ({n} bytes)", fix=NOT_TFLITE_FIX, source=source)
        if data[4:8] != FILE_IDENTIFIER:
            raise ModelError(
                f"not a TFLite flatbuffer (file identifier {data[4:8]!r}, expected b'TFL3')",
                fix=NOT_TFLITE_FIX,
                source=source,
            )
        strict = _StrictBytes(data)
        try:
            model = cls._parse(strict)
        except _MultiSubgraph as e:
            raise ModelError(
                f"model has {e.count} subgraphs; tinyfed handles single-subgraph models only",
                fix="export a model without control flow (no tf.cond/tf.while_loop) or signatures beyond one",
                source=source,
            ) from None
        except ModelError as e:
            raise ModelError(e.problem, fix=e.fix, source=source) from None
        except _Corrupt as e:
            raise ModelError(f"corrupt or truncated .tflite ({n} bytes): {e}", fix=CORRUPT_FIX, source=source) from None
        except (struct.error, IndexError, ValueError, TypeError, OverflowError) as e:
            if isinstance(e, (struct.error, IndexError)) or "buffer" in str(e):
                detail = "an offset or length points past the end of the file"
            else:
                detail = f"malformed flatbuffer ({type(e).__name__})"
            raise ModelError(
                f"corrupt or truncated .tflite ({n} bytes): {detail}", fix=CORRUPT_FIX, source=source
            ) from None
        except Exception as e:  # noqa: BLE001 - any other parser failure means a damaged file too
            detail = f"malformed flatbuffer ({type(e).__name__})"
            raise ModelError(
                f"corrupt or truncated .tflite ({n} bytes): {detail}", fix=CORRUPT_FIX, source=source
            ) from None
        try:
            graph = cls(model, data, source)
            graph._check_semantics()
        except _Corrupt as e:
            raise ModelError(f"corrupt or truncated .tflite ({n} bytes): {e}", fix=CORRUPT_FIX, source=source) from None
        except Exception as e:  # noqa: BLE001 - inconsistent tables also mean a damaged file
            detail = f"inconsistent model tables ({type(e).__name__})"
            raise ModelError(
                f"corrupt or truncated .tflite ({n} bytes): {detail}", fix=CORRUPT_FIX, source=source
            ) from None
        graph._check_activations()
        graph._check_quantized_dimensions()
        graph._check_zero_points()
        graph._check_filter_zero_points()
        if not quiet:
            for w in graph.warnings:
                log.warning("%s: %s", source, w)
        return graph

    @staticmethod
    def _parse(buf: _StrictBytes) -> schema_fb.ModelT:
        n = len(buf)
        root = struct.unpack_from("<I", buf, 0)[0]
        if root < 8 or root + 4 > n:
            raise _Corrupt(f"root table offset {root} outside the file")
        lazy = schema_fb.Model.GetRootAs(buf, 0)
        tab = lazy._tab
        # Bound every top-level vector before the object API walks it, so a flipped length
        # cannot make it loop for long. Field slots from the schema: operator_codes 6,
        # subgraphs 8, buffers 12, metadata_buffer 14, metadata 16, signature_defs 18.
        for slot, size in ((6, 4), (8, 4), (12, 4), (14, 4), (16, 4), (18, 4)):
            _check_vector(tab, slot, size, n)
        nsub = lazy.SubgraphsLength()
        if nsub != 1:
            if nsub == 0:
                raise _Corrupt("no subgraph")
            raise _MultiSubgraph(nsub)
        sub = lazy.Subgraphs(0)
        # tensors 4, inputs 6, outputs 8, operators 10
        for slot in (4, 6, 8, 10):
            _check_vector(sub._tab, slot, 4, n)
        nested = 0
        for i in range(lazy.SignatureDefsLength()):
            sd = lazy.SignatureDefs(i)
            nested += _check_vector(sd._tab, 4, 4, n) + _check_vector(sd._tab, 6, 4, n)
            if nested > n // 4:
                raise _Corrupt("signature defs larger than the file")

        model = schema_fb.ModelT.InitFromObj(lazy)
        TfliteGraph._resolve_and_check(model, buf)
        return model

    @staticmethod
    def _resolve_and_check(model: schema_fb.ModelT, buf: bytes) -> None:
        """Resolve offset-stored buffers and check every index against its table."""
        buffers = _resolve_buffers(model, buf)
        sg = model.subgraphs[0]
        tensors = sg.tensors or []
        nt = len(tensors)
        nop = len(model.operatorCodes or [])
        for op_i, op in enumerate(sg.operators or []):
            _resolve_and_check_operator(op_i, op, buf, nop, nt)
        for t in _ints(sg.inputs) + _ints(sg.outputs):
            if not 0 <= t < nt:
                raise _Corrupt(f"graph input/output tensor {t} of {nt}")
        for t_i, t in enumerate(tensors):
            _check_tensor(t_i, t, buffers)
        _check_model_references(model, len(buffers), nt)

    def _check_semantics(self) -> None:
        """Consistency checks that catch damage TFLM itself would crash on.

        TFLM's kernels trust the flatbuffer: a flipped byte in a shape, a scale or an opcode
        can make them divide by zero or write out of bounds. So check that quantization
        scales are usable, that activations have plausible sizes, that known ops have their
        inputs, and that the shapes of the common ops agree with each other.
        """
        for t in self.tensors:
            bad = [s for s in t.scales if not math.isfinite(s) or s < 0 or (s == 0 and not t.is_constant)]
            if bad:
                raise _Corrupt(f"tensor {t.index} has quantization scale {bad[0]}")
            if not t.is_constant and t.nbytes > _MAX_ACTIVATION_BYTES:
                raise _Corrupt(f"tensor {t.index} has implausible shape {list(t.shape)}")
        written = set(self.inputs) | set(self.outputs)
        for op in self.ops:
            written.update(op.outputs)
        for i in sorted(written):
            if self.tensors[i].is_variable:
                raise _Corrupt(f"tensor {i} is marked variable but is a graph input/output or an op output")
        for op in self.ops:
            want = _OPTIONS_TYPE.get(op.name)
            if want and op.raw_options is not None and type(op.raw_options).__name__ != want:
                raise _Corrupt(f"op {op.index} ({op.name}) carries {type(op.raw_options).__name__[:-1]}")
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D") and (
                op.raw_options is None
            ):
                raise _Corrupt(f"op {op.index} ({op.name}) has no options")
            beta = op.options.get("beta", 1.0)
            if op.name == "SOFTMAX" and not (math.isfinite(beta) and beta > 0):
                raise _Corrupt(f"op {op.index} (SOFTMAX) has beta {op.options.get('beta')}")
            need = _MIN_INPUTS.get(op.name, 0)
            present = [i for i in op.inputs if i >= 0]
            if len(op.inputs) < need or len(present) < min(need, _REQUIRED_INPUTS.get(op.name, need)):
                raise _Corrupt(f"op {op.index} ({op.name}) has {len(op.inputs)} inputs, needs {need}")
            msg = self._shape_problem(op)
            if msg:
                raise _Corrupt(f"op {op.index} ({op.name}): {msg}")

    def _shape_problem(self, op: OpInfo) -> str | None:
        """Why the shapes around ``op`` disagree (None when they agree or the op is not checked)."""
        name = op.name
        if name in _WINDOW_OPS:
            return self._window_shape_problem(op)
        if name == "FULLY_CONNECTED":
            return self._fully_connected_shape_problem(op)
        shape_in = self._input_shape(op)
        shape_out = self.tensors[op.outputs[0]].shape
        if name in _SAME_SHAPE_OPS:
            if shape_in is not None and tuple(shape_in) != tuple(shape_out):
                return f"output shape {list(shape_out)} differs from input shape {list(shape_in)}"
        elif name == "RESHAPE":
            if shape_in is not None and self.tensors[op.inputs[0]].size != self.tensors[op.outputs[0]].size:
                return f"reshape from {list(shape_in)} to {list(shape_out)} changes the element count"
        elif name in _BROADCAST_OPS:
            a, b = self.tensors[op.inputs[0]].shape, self.tensors[op.inputs[1]].shape
            try:
                expected = tuple(np.broadcast_shapes(a, b))
            except ValueError:
                return f"input shapes {list(a)} and {list(b)} do not broadcast"
            if tuple(shape_out) != expected:
                return f"output shape {list(shape_out)} does not match broadcast shape {list(expected)}"
        return None

    def _input_shape(self, op: OpInfo) -> tuple[int, ...] | None:
        """Shape of the op's first input, None when it has none (or it is omitted)."""
        return self.tensors[op.inputs[0]].shape if op.inputs and op.inputs[0] >= 0 else None

    def _window_shape_problem(self, op: OpInfo) -> str | None:
        """Conv, depthwise and pool ops: NHWC tensors, strides, kernel, and the output size they give."""
        shape_in = self._input_shape(op)
        shape_out = self.tensors[op.outputs[0]].shape
        if shape_in is None or len(shape_in) != 4 or len(shape_out) != 4:
            return "input and output must be 4-D (NHWC)"
        n, h, w, c = shape_in
        o = op.options
        stride = o.get("stride", (1, 1))
        dil = o.get("dilation", (1, 1))
        if min(stride) < 1 or min(dil) < 1:
            return f"stride {stride} / dilation {dil} must be >= 1"
        kernel = self._conv_kernel(op, c) if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") else _pool_window(op, c)
        if isinstance(kernel, str):
            return kernel
        kh, kw, cout = kernel
        pad = o.get("padding", "SAME")
        dims = []
        for size, k, st, d in ((h, kh, stride[0], dil[0]), (w, kw, stride[1], dil[1])):
            eff = (k - 1) * d + 1
            dims.append(-(-size // st) if pad == "SAME" else max(0, (size - eff) // st + 1 if size >= eff else 0))
        expected = (n, dims[0], dims[1], cout)
        if tuple(shape_out) != expected:
            return f"output shape {list(shape_out)} does not match input/filter (expected {list(expected)})"
        return None

    def _conv_kernel(self, op: OpInfo, c: int) -> tuple[int, int, int] | str:
        """(kernel height, kernel width, output channels) of a conv/depthwise op, or why its filter is wrong."""
        tensors = self.tensors
        f = tensors[op.inputs[1]].shape
        if len(f) != 4:
            return f"filter shape {list(f)} is not 4-D"
        kh, kw = f[1], f[2]
        if op.name == "CONV_2D":
            cout = f[0]
            if f[3] != c:  # TFLM has no grouped convolution
                return f"filter depth {f[3]} does not match input channels {c}"
        else:
            cout = f[3]
            if f[0] != 1 or c < 1 or cout % c:
                return f"depthwise filter {list(f)} does not match input channels {c}"
            if op.options.get("depth_multiplier") != cout // c:  # TFLM's reference kernel uses it
                return f"depth_multiplier {op.options.get('depth_multiplier')} != {cout} / {c} channels"
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and tensors[op.inputs[2]].size != cout:
            return f"bias has {tensors[op.inputs[2]].size} values for {cout} output channels"
        return kh, kw, cout

    def _fully_connected_shape_problem(self, op: OpInfo) -> str | None:
        """FULLY_CONNECTED: (out, in) weights that divide the input, an output and a bias that match."""
        tensors = self.tensors
        shape_out = tensors[op.outputs[0]].shape
        wshape = tensors[op.inputs[1]].shape
        if len(wshape) != 2 or wshape[1] < 1:
            return f"weights shape {list(wshape)} is not (out, in)"
        cout, cin = wshape
        n_in = tensors[op.inputs[0]].size
        if n_in % cin:
            return f"input of {n_in} values is not a multiple of the weights' {cin} inputs"
        if tensors[op.outputs[0]].size != n_in // cin * cout:
            return f"output shape {list(shape_out)} does not match input/weights"
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and tensors[op.inputs[2]].size != cout:
            return f"bias has {tensors[op.inputs[2]].size} values for {cout} outputs"
        return None

    def _check_activations(self) -> None:
        if not self.ops:
            raise ModelError("model has no operators", fix="export a model with at least one layer", source=self.source)
        for i in sorted(self._used_tensors()):
            t = self.tensors[i]
            if t.type_name in _QUANTIZED_TYPES and not t.scales:
                raise ModelError(
                    f"{t.type_name} tensor '{t.name}' ({i}) has no quantization parameters",
                    fix=FLOAT_FIX,
                    source=self.source,
                )
        self.edges = self._float_edges()
        edge_tensors = set()
        for k in self.edges.quantize_ops:
            edge_tensors.add(self.ops[k].inputs[0])
        for k in self.edges.dequantize_ops:
            edge_tensors.add(self.ops[k].outputs[0])
        for t in self.activation_tensors():
            if t.type_name in _FLOAT_TYPES and t.index not in edge_tensors:
                raise ModelError(
                    f"float (not full-int8) model: tensor '{t.name}' is {t.type_name}",
                    fix=FLOAT_FIX,
                    source=self.source,
                )

    def _float_edges(self) -> FloatEdges:
        """QUANTIZE (float32 -> per-tensor int8) ops reading graph inputs, first; DEQUANTIZE (the
        reverse) ops writing graph outputs, last: the float interface a converter adds."""
        def is_edge(op: OpInfo, name: str, outer: int, inner: int, ends: list[int]) -> bool:
            if op.name != name or len(op.inputs) < 1 or op.inputs[0] < 0:
                return False
            f, q = self.tensors[outer], self.tensors[inner]
            return (outer in ends and f.type_name == "FLOAT32" and q.type_name == "INT8"
                    and len(q.scales) == 1 and q.has_zero_points)

        first = 0
        while first < len(self.ops):
            op = self.ops[first]
            if not is_edge(op, "QUANTIZE", op.inputs[0], op.outputs[0], self.inputs):
                break
            first += 1
        last = len(self.ops)
        while last > first:
            op = self.ops[last - 1]
            if not is_edge(op, "DEQUANTIZE", op.outputs[0], op.inputs[0], self.outputs):
                break
            last -= 1
        if first == last:
            return FloatEdges()
        edges = FloatEdges(tuple(range(first)), tuple(range(last, len(self.ops))))
        for k in edges.quantize_ops:  # the float input must feed its QUANTIZE only
            t = self.ops[k].inputs[0]
            if any(t in op.inputs for op in self.ops if op.index != k):
                return FloatEdges()
        return edges

    def int8_body(self) -> bytes:
        """The model without its float edges (the bytes themselves when it has none): int8 in, int8 out."""
        if not self.edges.any:
            return self.data
        return self.extract(len(self.edges.quantize_ops), len(self.ops) - len(self.edges.dequantize_ops))

    def int8_graph(self) -> TfliteGraph:
        """This graph without its float edges (itself when it has none), keeping the whole model's warnings.

        What tinyfed plans, cuts and runs on boards; the host quantizes inputs with its input's
        scale and zero point (TFLM's QUANTIZE rule) and dequantizes outputs as DEQUANTIZE does.
        """
        if not self.edges.any:
            return self
        body = TfliteGraph.from_bytes(self.int8_body(), source=self.source, quiet=True)  # logged once, above
        names = ", ".join(f"op {k} {self.ops[k].name}" for k in self.edges.quantize_ops + self.edges.dequantize_ops)
        note = (f"float interface: {names} run on the host (TFLM's arithmetic); "
                "the int8 body between them is planned and runs on the boards")
        log.info("%s: %s", self.source, note)
        body.warnings = [*self.warnings, note]
        return body

    def _check_quantized_dimensions(self) -> None:
        """Per-channel scales along ``quantized_dimension``, checked where TFLM reads that axis.

        TFLM reads it for the weights of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED (it
        requires as many scales as output channels, and that many entries along the axis) and
        ignores it everywhere else (biases, activations): an axis out of range there is a
        quirk of older converters (1-D biases with ``quantized_dimension`` 3), warned about.
        """
        weights: dict[int, tuple[OpInfo, int]] = {}
        for op in self.ops:
            spec = _WEIGHT_OPS.get(op.name)
            if spec is not None and len(op.inputs) > spec[0] and op.inputs[spec[0]] >= 0:
                weights.setdefault(op.inputs[spec[0]], (op, spec[2]))
        for t in self.tensors:
            n = len(t.scales)
            if n <= 1:
                continue
            qdim = t.quantized_dimension
            fits = 0 <= qdim < len(t.shape) and t.shape[qdim] == n
            if t.index in weights:
                op, axis = weights[t.index]
                channels = t.shape[axis] if axis < len(t.shape) else -1
                if not fits or n != channels:
                    raise ModelError(
                        f"op {op.index} {op.name}: weights '{t.name}' ({t.index}) {list(t.shape)} carry {n} scales "
                        f"along quantized_dimension {qdim}; TFLM needs one per output channel ({channels}) there",
                        fix="convert again with per-channel quantization (the converter's default)",
                        source=self.source,
                    )
                if qdim != axis:
                    self.warnings.append(
                        f"weights '{t.name}' ({t.index}) of op {op.index} {op.name} name quantized_dimension {qdim}, "
                        f"not the output-channel axis {axis}; TFLM applies the scales per output channel, "
                        "so does tinyfed"
                    )
                    self.tensors[t.index] = replace(t, quantized_dimension=axis)
            elif not fits:
                self.warnings.append(
                    f"tensor '{t.name}' ({t.index}) {list(t.shape)} has {n} scales but quantized_dimension {qdim} "
                    f"does not index a dimension of {n}; TFLM ignores it there (an older converter's quirk)"
                )
                axes = [a for a, d in enumerate(t.shape) if d == n]
                if len(axes) == 1:  # the only axis the scales can run along (a 1-D bias: 0)
                    self.tensors[t.index] = replace(t, quantized_dimension=axes[0])

    def _check_filter_zero_points(self) -> None:
        """Filters with non-zero zero points where TFLM's int8 kernels never read them.

        Convolutions, and FULLY_CONNECTED with per-channel weights (per-tensor weights keep
        theirs: TFLM's kernel subtracts it). TFLM only asserts 0 in debug builds; the release
        kernels run as if they were 0. The graph records them as 0, so the engine, the trainer
        and the exporter all agree with TFLM.
        """
        for op in self.ops:
            if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2 \
                    or op.inputs[1] < 0:
                continue
            t = self.tensors[op.inputs[1]]
            ignored = op.name != "FULLY_CONNECTED" or len(t.scales) > 1
            if t.type_name == "INT8" and ignored and any(t.zero_points):
                self.warnings.append(f"filter '{t.name}' ({t.index}) of op {op.index} {op.name} has zero points "
                                     f"{sorted(set(t.zero_points))}; TFLM's int8 kernels ignore them, so does tinyfed")
                self.tensors[t.index] = replace(t, zero_points=(0,) * len(t.zero_points))

    def _check_zero_points(self) -> None:
        """Scales without zero points: TFLM treats the tensor as not quantized.

        Harmless for a bias (TFLM's int8 kernels never read a bias's quantization), refused
        elsewhere: TFLM would refuse the op or compute with a scale of 0.
        """
        biases: set[int] = set()
        for op in self.ops:
            spec = _WEIGHT_OPS.get(op.name)
            if spec is not None and spec[1] is not None and len(op.inputs) > spec[1] and op.inputs[spec[1]] >= 0:
                biases.add(op.inputs[spec[1]])
        for i in sorted(self._used_tensors()):
            t = self.tensors[i]
            if t.has_zero_points:
                continue
            if i in biases:
                self.warnings.append(f"bias '{t.name}' ({i}) has scales but no zero points; TFLM ignores its "
                                     "quantization, so does tinyfed")
                continue
            raise ModelError(
                f"tensor '{t.name}' ({i}) has {len(t.scales)} scale(s) but no zero points: TFLM treats it as "
                "not quantized and cannot run its op",
                fix="convert the model again (the converter writes one zero point per scale)",
                source=self.source,
            )

    # ---- records -------------------------------------------------------------------

    def _tensor_info(self, index: int, t: schema_fb.TensorT) -> TensorInfo:
        shape = tuple(_ints(t.shape))
        type_name = _TYPE_NAMES[t.type]
        data = self._model.buffers[t.buffer].data
        is_constant = t.buffer != 0 and data is not None and len(data) > 0
        q = t.quantization
        scales: tuple[float, ...] = ()
        zps: tuple[int, ...] = ()
        qdim = 0
        if q is not None and q.scale is not None and len(q.scale) > 0:
            scales = tuple(float(s) for s in q.scale)
            has_zero_points = q.zeroPoint is not None and len(q.zeroPoint)
            zps = tuple(int(z) for z in q.zeroPoint) if has_zero_points else (0,) * len(scales)
            qdim = int(q.quantizedDimension)
        return TensorInfo(
            index=index,
            name=_decode(t.name),
            shape=shape,
            type_name=type_name,
            dtype=_DTYPES[type_name][0],
            scales=scales,
            zero_points=zps,
            quantized_dimension=qdim,
            is_constant=bool(is_constant),
            is_variable=bool(t.isVariable),
            buffer=int(t.buffer),
            nbytes=len(data) if is_constant else _nbytes(shape, type_name),
            has_zero_points=not scales or bool(q is not None and q.zeroPoint is not None and len(q.zeroPoint)),
        )

    def _op_info(self, index: int, op: schema_fb.OperatorT) -> OpInfo:
        oc = self._model.operatorCodes[op.opcodeIndex]
        code = flatbuffer_utils.get_builtin_code_from_operator_code(oc)
        if code == schema_fb.BuiltinOperator.CUSTOM:
            name = f"CUSTOM:{_decode(oc.customCode)}"
        else:
            name = _OP_NAMES.get(code, f"BUILTIN_{code}")
        inputs = tuple(_ints(op.inputs))
        raw = op.builtinOptions
        options: dict[str, Any] = {}
        if raw is not None:
            options = {_snake(k): _plain(v) for k, v in vars(raw).items()}
            if "padding" in options:
                options["padding"] = _PADDING_NAMES.get(options["padding"], options["padding"])
            if "fused_activation_function" in options:
                options["activation"] = _ACTIVATION_NAMES.get(
                    options["fused_activation_function"], options["fused_activation_function"]
                )
            if "stride_h" in options and "stride_w" in options:
                options["stride"] = (options["stride_h"], options["stride_w"])
            if "dilation_h_factor" in options and "dilation_w_factor" in options:
                options["dilation"] = (options["dilation_h_factor"], options["dilation_w_factor"])
            if "filter_height" in options and "filter_width" in options:
                options["filter"] = (options["filter_height"], options["filter_width"])
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"):
            w_pos = _WEIGHT_OPS[name][0]
            if len(inputs) > w_pos and inputs[w_pos] >= 0:
                wshape = _ints(self._sg.tensors[inputs[w_pos]].shape)
                if len(wshape) == 4:
                    options["filter"] = (wshape[1], wshape[2])
        return OpInfo(
            index=index,
            name=name,
            builtin_code=int(code),
            version=int(oc.version),
            inputs=inputs,
            outputs=tuple(_ints(op.outputs)),
            options=options,
            raw_options=raw,
        )

    # ---- introspection -------------------------------------------------------------

    @property
    def data(self) -> bytes:
        """The model bytes this graph was read from."""
        return self._data

    @property
    def model_object(self) -> schema_fb.ModelT:
        """A deep copy of the parsed object-API model (safe to modify)."""
        return copy.deepcopy(self._model)

    def op_names(self) -> list[str]:
        return [op.name for op in self.ops]

    def unsupported_ops(self, supported: Iterable[str]) -> list[tuple[int, str]]:
        allowed = set(supported)
        return [(op.index, op.name) for op in self.ops if op.name not in allowed]

    def _op(self, op: OpInfo | int) -> OpInfo:
        return self.ops[op] if isinstance(op, int) else op

    def weight_tensor(self, op: OpInfo | int) -> TensorInfo | None:
        """The constant weight tensor of a CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED/TRANSPOSE_CONV op.

        None for ops without weights, or whose weight input is not a constant.
        """
        o = self._op(op)
        spec = _WEIGHT_OPS.get(o.name)
        if spec is None or len(o.inputs) <= spec[0] or o.inputs[spec[0]] < 0:
            return None
        t = self.tensors[o.inputs[spec[0]]]
        return t if t.is_constant else None

    def bias_tensor(self, op: OpInfo | int) -> TensorInfo | None:
        """The constant bias tensor of a weight op, or None (no bias, or not a weight op)."""
        o = self._op(op)
        spec = _WEIGHT_OPS.get(o.name)
        if spec is None or spec[1] is None or len(o.inputs) <= spec[1] or o.inputs[spec[1]] < 0:
            return None
        t = self.tensors[o.inputs[spec[1]]]
        return t if t.is_constant else None

    def output_channel_axis(self, op: OpInfo | int) -> int | None:
        """Axis of the weight tensor that indexes output channels (OHWI: 0, 1HWC: 3, FC: 0)."""
        spec = _WEIGHT_OPS.get(self._op(op).name)
        return None if spec is None else spec[2]

    def constant_data(self, tensor_index: int) -> np.ndarray:
        """A (writable) copy of a constant tensor's values, shaped."""
        t = self.tensors[tensor_index]
        if not t.is_constant:
            raise ModelError(
                f"tensor {tensor_index} ('{t.name}') is not a constant",
                fix="ask for a weight or bias tensor (see weight_tensor()/bias_tensor())",
                source=self.source,
            )
        if t.dtype is None or _DTYPES[t.type_name][1] < 8:
            raise ModelError(
                f"tensor {tensor_index} ('{t.name}') has type {t.type_name}, which tinyfed cannot unpack",
                fix="convert with int8 weights",
                source=self.source,
            )
        raw = np.asarray(self._model.buffers[t.buffer].data, dtype=np.uint8)
        return np.frombuffer(raw.tobytes(), dtype=t.dtype.newbyteorder("<")).astype(t.dtype).reshape(t.shape)

    def _used_tensors(self) -> set[int]:
        used = set(self.inputs) | set(self.outputs)
        for op in self.ops:
            used.update(t for t in op.inputs if t >= 0)
            used.update(op.outputs)
        return used

    def activation_tensors(self) -> list[TensorInfo]:
        """Non-constant tensors the graph reads or writes (graph inputs/outputs, op inputs/outputs)."""
        return [self.tensors[i] for i in sorted(self._used_tensors()) if not self.tensors[i].is_constant]

    def tensor_lifetimes(self) -> dict[int, tuple[int, int]]:
        """``{tensor: (first_op, last_op)}`` for every non-constant, non-variable tensor.

        Graph inputs live from op 0, graph outputs until the last op. A tensor is live at op
        ``i`` when ``first <= i <= last``; summing ``nbytes`` of the live tensors per op gives
        the peak of live int8 activations (see :meth:`peak_activation_bytes`).
        """
        last_op = len(self.ops) - 1
        life: dict[int, list[int]] = {}

        def touch(t: int, i: int) -> None:
            info = self.tensors[t]
            if info.is_constant or info.is_variable:
                return
            if t in life:
                life[t][0] = min(life[t][0], i)
                life[t][1] = max(life[t][1], i)
            else:
                life[t] = [i, i]

        for t in self.inputs:
            touch(t, 0)
        for op in self.ops:
            for t in op.inputs:
                if t >= 0:
                    touch(t, op.index)
            for t in op.outputs:
                touch(t, op.index)
        for t in self.outputs:
            touch(t, last_op)
        return {t: (a, b) for t, (a, b) in sorted(life.items())}

    def peak_activation_bytes(self, align: int = 16) -> int:
        """Largest sum of live activation bytes at any op (each tensor rounded up to ``align``).

        A lower bound for TFLM's planned (non-persistent) arena, which also holds scratch
        buffers and may leave gaps; it equals it for simple chains.
        """
        life = self.tensor_lifetimes()
        peak = 0
        for i in range(len(self.ops)):
            live = sum(
                -(-self.tensors[t].nbytes // align) * align for t, (a, b) in life.items() if a <= i <= b
            )
            peak = max(peak, live)
        return peak

    # ---- surgery -------------------------------------------------------------------

    def _producers(self) -> dict[int, int]:
        prod: dict[int, int] = {}
        for op in self.ops:
            for t in op.outputs:
                prod.setdefault(t, op.index)
        return prod

    def _is_activation(self, t: int) -> bool:
        info = self.tensors[t]
        return not info.is_constant and not info.is_variable

    def _boundary(self, k: int) -> list[int]:
        """Non-constant tensors that ops[:k] (or the graph inputs) hand over to ops[k:] or the outputs."""
        head_side: set[int] = set(self.inputs)
        for op in self.ops[:k]:
            head_side.update(t for t in op.inputs if t >= 0)
            head_side.update(op.outputs)
        tail_side: set[int] = set(self.outputs)
        for op in self.ops[k:]:
            tail_side.update(t for t in op.inputs if t >= 0)
        return sorted(t for t in head_side & tail_side if not self.tensors[t].is_constant)

    def cut_points(self) -> list[int]:
        """Op indices ``k`` where ops[:k] hand exactly one tensor, which they produce, to ops[k:]."""
        prod = self._producers()
        points = []
        for k in range(1, len(self.ops)):
            crossing = self._boundary(k)
            if len(crossing) == 1 and prod.get(crossing[0], len(self.ops)) < k:
                points.append(k)
        return points

    def split(self, k: int) -> tuple[bytes, bytes]:
        """Cut before op ``k`` (a member of :meth:`cut_points`) into head and tail models."""
        if k not in self.cut_points():
            raise ModelError(
                f"op {k} is not a clean single-tensor cut point of this model",
                fix=f"choose one of {self.cut_points()}",
                source=self.source,
            )
        return self.extract(0, k), self.extract(k, len(self.ops))

    def extract(self, first_op: int, stop_op: int) -> bytes:
        """A standalone model running ``ops[first_op:stop_op]``.

        Its inputs are the activations those ops read but do not produce (graph inputs first,
        in their original order, then in order of first use); its outputs the activations they
        produce that later ops or the graph outputs need (graph outputs first).
        """
        nops = len(self.ops)
        if not (0 <= first_op < stop_op <= nops):
            raise ModelError(
                f"op range [{first_op}, {stop_op}) is empty or outside 0..{nops}",
                fix=f"pass 0 <= first_op < stop_op <= {nops}",
                source=self.source,
            )
        ops = self.ops[first_op:stop_op]
        produced: set[int] = set()
        consumed_order: list[int] = []
        for op in ops:
            for t in op.inputs:
                if t >= 0 and t not in produced and self._is_activation(t) and t not in consumed_order:
                    consumed_order.append(t)
            produced.update(op.outputs)
        later: set[int] = set(self.outputs)
        for op in self.ops[stop_op:]:
            later.update(t for t in op.inputs if t >= 0)
        inputs = [t for t in self.inputs if t in consumed_order]
        inputs += [t for t in consumed_order if t not in inputs]
        outputs = [t for t in self.outputs if t in produced]
        outputs += sorted(t for t in produced & later if t not in outputs and self._is_activation(t))
        if not outputs:
            raise ModelError(
                f"ops {first_op}..{stop_op - 1} produce nothing that later ops or the outputs use",
                fix="extract a range that ends at a tensor the rest of the model reads",
                source=self.source,
            )
        return self._build(range(first_op, stop_op), inputs, outputs)

    def _build(self, op_indices: Iterable[int], inputs: list[int], outputs: list[int]) -> bytes:
        src = self._model
        sg = self._sg
        op_indices = list(op_indices)
        keep: set[int] = set(inputs) | set(outputs)
        for i in op_indices:
            op = sg.operators[i]
            keep.update(t for t in _ints(op.inputs) + _ints(op.intermediates) if t >= 0)
            keep.update(_ints(op.outputs))
        tensor_map = {old: new for new, old in enumerate(sorted(keep))}

        def remap(ts: Any) -> list[int]:
            return [tensor_map[t] if t >= 0 else -1 for t in _ints(ts)]

        new_buffers: list[_AlignedBufferT] = [_aligned_buffer(None)]
        buffer_map: dict[int, int] = {}

        def keep_buffer(old: int) -> int:
            data = src.buffers[old].data
            if old == 0 or data is None or len(data) == 0:
                return 0
            if old not in buffer_map:
                buffer_map[old] = len(new_buffers)
                new_buffers.append(_aligned_buffer(np.array(data, dtype=np.uint8)))
            return buffer_map[old]

        new_tensors = []
        for old in sorted(keep):
            t = copy.deepcopy(sg.tensors[old])
            t.buffer = keep_buffer(int(t.buffer))
            new_tensors.append(t)

        opcode_map: dict[int, int] = {}
        new_opcodes: list[schema_fb.OperatorCodeT] = []
        new_ops = []
        for i in op_indices:
            op = copy.deepcopy(sg.operators[i])
            if op.opcodeIndex not in opcode_map:
                opcode_map[op.opcodeIndex] = len(new_opcodes)
                new_opcodes.append(copy.deepcopy(src.operatorCodes[op.opcodeIndex]))
            op.opcodeIndex = opcode_map[op.opcodeIndex]
            op.inputs = remap(op.inputs)
            op.outputs = remap(op.outputs)
            if op.intermediates is not None:
                op.intermediates = remap(op.intermediates)
            if op.mutatingVariableInputs is not None and len(op.mutatingVariableInputs) == 0:
                op.mutatingVariableInputs = None
            new_ops.append(op)

        new_sg = schema_fb.SubGraphT()
        new_sg.tensors = new_tensors
        new_sg.inputs = [tensor_map[t] for t in inputs]
        new_sg.outputs = [tensor_map[t] for t in outputs]
        new_sg.operators = new_ops
        new_sg.name = sg.name

        model = schema_fb.ModelT()
        model.version = src.version
        model.description = src.description
        model.operatorCodes = new_opcodes
        model.subgraphs = [new_sg]
        metadata = []
        for md in src.metadata or []:
            if md.name in _SAFE_METADATA:
                m = copy.deepcopy(md)
                data = src.buffers[md.buffer].data
                m.buffer = len(new_buffers)
                new_buffers.append(_aligned_buffer(None if data is None else np.array(data, dtype=np.uint8)))
                metadata.append(m)
        model.metadata = metadata or None
        model.buffers = new_buffers
        model.signatureDefs = None
        model.metadataBuffer = None
        return _pack(model)

    # ---- weight write-back ----------------------------------------------------------

    def with_updated_constant(self, tensor_index: int, new_values: np.ndarray) -> bytes:
        """The whole model with one constant tensor's values replaced (same dtype and shape).

        Integer values are accepted in any integer dtype as long as they fit the tensor's type
        (e.g. int8 weights in [-128, 127]). If the buffer is shared with another tensor (the
        converter de-duplicates equal constants), this tensor gets a buffer of its own and
        the other tensor keeps the old values.
        """
        if not 0 <= tensor_index < len(self.tensors):
            raise ModelError(f"no tensor {tensor_index} (model has {len(self.tensors)})", source=self.source)
        t = self.tensors[tensor_index]
        if not t.is_constant or t.dtype is None or _DTYPES[t.type_name][1] < 8:
            raise ModelError(
                f"tensor {tensor_index} ('{t.name}') is not a writable constant ({t.type_name})",
                fix="pass the index of a weight or bias tensor",
                source=self.source,
            )
        values = np.asarray(new_values)
        if values.shape != t.shape:
            raise ModelError(
                f"new values for tensor {tensor_index} ('{t.name}') have shape {values.shape}, expected {t.shape}",
                fix="reshape the values to the tensor's shape",
                source=self.source,
            )
        if values.dtype != t.dtype:
            if t.dtype.kind in "iu" and values.dtype.kind in "iub":
                info = np.iinfo(t.dtype)
                if values.size and (values.min() < info.min or values.max() > info.max):
                    raise ModelError(
                        f"new values for tensor {tensor_index} ('{t.name}') fall outside {t.type_name}"
                        f" [{info.min}, {info.max}]",
                        fix="clip the quantized values to the tensor's range",
                        source=self.source,
                    )
            elif not (t.dtype.kind == "f" and values.dtype.kind == "f"):
                raise ModelError(
                    f"new values for tensor {tensor_index} ('{t.name}') are {values.dtype}, tensor is {t.type_name}",
                    fix="quantize the values to the tensor's integer type first",
                    source=self.source,
                )
        raw = np.ascontiguousarray(values.astype(t.dtype.newbyteorder("<"))).view(np.uint8).reshape(-1)
        model = copy.deepcopy(self._model)
        tensors = model.subgraphs[0].tensors
        shared = any(i != tensor_index and int(x.buffer) == t.buffer for i, x in enumerate(tensors))
        if shared:
            tensors[tensor_index].buffer = len(model.buffers)
            model.buffers.append(_aligned_buffer(raw))
        else:
            model.buffers[t.buffer] = _aligned_buffer(raw)
        return _pack(model)


class _MultiSubgraph(Exception):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count
