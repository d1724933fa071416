"""Hand-built int8 ``.tflite`` graphs for the shape ops (tests/test_ops_shape.py).

The converter folds or avoids some edge cases (a QUANTIZE between two int8 scales, a
CONCATENATION of inputs with different scales, a strided slice with masks and negative
strides, squeeze and expand_dims): :class:`GraphBuilder` writes them directly with the
TFLite schema's object API, so each case is exactly the op under test. TFLM is the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils

_TYPES = {"INT8": fb.TensorType.INT8, "INT32": fb.TensorType.INT32, "FLOAT32": fb.TensorType.FLOAT32}
_DTYPES = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32}


class GraphBuilder:
    """A single-subgraph model: int8 activations, constant inputs, builtin ops with options."""

    def __init__(self) -> None:
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [fb.BufferT()]
        self.ops: list[Any] = []
        self.codes: list[int] = []

    def _tensor(self, shape: tuple[int, ...], type_name: str, scale: float | None, zp: int | None,
                buffer: int = 0) -> int:
        t = fb.TensorT()
        t.shape = np.asarray(shape, np.int32)
        t.type = _TYPES[type_name]
        t.buffer = buffer
        t.name = f"t{len(self.tensors)}".encode()
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(scale)]
            q.zeroPoint = [int(zp or 0)]
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def act(self, shape: tuple[int, ...], scale: float, zp: int) -> int:
        """An int8 activation tensor."""
        return self._tensor(shape, "INT8", scale, zp)

    def const(self, values: Any, type_name: str = "INT32", scale: float | None = None, zp: int | None = None) -> int:
        """A constant tensor holding ``values``."""
        arr = np.asarray(values, _DTYPES[type_name])
        buf = fb.BufferT()
        buf.data = np.frombuffer(arr.astype(arr.dtype.newbyteorder("<")).tobytes(), np.uint8)
        self.buffers.append(buf)
        return self._tensor(arr.shape, type_name, scale, zp, len(self.buffers) - 1)

    def op(self, name: str, inputs: list[int], outputs: list[int], options: Any = None) -> None:
        """A builtin op; ``options`` is a schema ``...OptionsT`` object (its union type is derived)."""
        code = getattr(fb.BuiltinOperator, name)
        if code not in self.codes:
            self.codes.append(code)
        o = fb.OperatorT()
        o.opcodeIndex = self.codes.index(code)
        o.inputs = inputs
        o.outputs = outputs
        if options is not None:
            o.builtinOptionsType = getattr(fb.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.ops.append(o)

    def build(self, inputs: list[int], outputs: list[int]) -> bytes:
        sg = fb.SubGraphT()
        sg.tensors, sg.operators, sg.inputs, sg.outputs = self.tensors, self.ops, inputs, outputs
        model = fb.ModelT()
        model.version = 3
        codes = []
        for c in self.codes:
            oc = fb.OperatorCodeT()
            oc.builtinCode = c
            oc.deprecatedBuiltinCode = min(c, 127)
            oc.version = 1
            codes.append(oc)
        model.operatorCodes = codes
        model.subgraphs = [sg]
        model.buffers = self.buffers
        model.description = b"tinyfed test"
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def options(kind: str, **fields: Any) -> Any:
    """A schema options object, e.g. ``options("ReducerOptions", keepDims=True)``."""
    o = getattr(fb, kind + "T")()
    for k, v in fields.items():
        setattr(o, k, v)
    return o
