"""The op registry: one OpSpec per op module, keyed by the TFLite builtin code, and the views other
modules read from it (blob op codes, trainable/alias sets, the arena model's op data)."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema_fb

from tinyfed import ops
from tinyfed.firmware_bridge.compile import blob
from tinyfed.firmware_bridge.compile.layout import DataSection, plan_arena, window_geometry
from tinyfed.planner.memory import HOST_ARENA


@pytest.mark.parametrize("spec", ops.all_ops(), ids=lambda s: s.name)
def test_op_codes_are_the_tflite_builtin_codes(spec: ops.OpSpec) -> None:
    assert spec.code == getattr(schema_fb.BuiltinOperator, spec.name)
    assert ops.get(spec.name) is spec
    assert ops.by_code(spec.code) is spec


def test_views_come_from_the_specs() -> None:
    assert blob.OP_CODES == {s.name: s.code for s in ops.all_ops() if s.firmware}
    assert blob.SUPPORTED_OPS == ops.firmware_ops() >= {"ADD", "CONV_2D", "SOFTMAX"}
    assert ops.trainable_ops() == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    assert ops.alias_ops() == {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}
    assert ops.keras_kinds() == {"Conv2D": "CONV_2D", "DepthwiseConv2D": "DEPTHWISE_CONV_2D",
                                 "Dense": "FULLY_CONNECTED"}
    assert HOST_ARENA.op_bytes("CONV_2D", 10) == 76 + 8 * 10
    assert HOST_ARENA.op_bytes("GELU", 10) == 64  # unknown ops: the default
    assert ops.find("GELU") is None and ops.by_code(150) is None
    with pytest.raises(KeyError):
        ops.get("GELU")


def test_keras_kernels_map_to_tflite_layouts() -> None:
    k = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert ops.get("CONV_2D").keras_kernel(k).shape == (5, 2, 3, 4)
    assert ops.get("DEPTHWISE_CONV_2D").keras_kernel(k).shape == (1, 2, 3, 20)
    assert ops.get("FULLY_CONNECTED").keras_kernel(k[0, 0]).shape == (5, 4)


@pytest.mark.parametrize(("size", "kernel", "stride", "dil", "padding", "want"), [
    (9, 3, 2, 1, "SAME", (5, 1, 1)),
    (10, 3, 2, 1, "SAME", (5, 0, 1)),  # the odd pixel goes after
    (11, 3, 1, 2, "SAME", (11, 2, 2)),
    (9, 3, 2, 1, "VALID", (4, 0, 0)),
    (11, 3, 1, 2, "VALID", (7, 0, 0)),
])
def test_window_geometry_is_tensorflows_rule(size: int, kernel: int, stride: int, dil: int, padding: str,
                                             want: tuple[int, int, int]) -> None:
    assert window_geometry(size, kernel, stride, dil, padding) == want


def test_plan_arena_reuses_memory_of_dead_buffers() -> None:
    sizes = {"a": 100, "b": 40, "c": 100}
    life = {"a": (0, 1), "b": (1, 2), "c": (2, 3)}
    offsets, total = plan_arena(sizes, life, 16)
    assert offsets == {"a": 0, "c": 0, "b": 112}  # c reuses a's bytes; b overlaps both in time
    assert total == 160
    section = DataSection(16)
    assert section.add(b"abc") == 0 and section.add(b"d") == 16 and section.add(b"e", 4) == 20
