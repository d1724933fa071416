"""Accept what TFLM accepts: converted models carrying one quirk each.

Each quirk is written into a converted model's flatbuffer (``schema_py_generated``). Where TFLM
loads and runs the result, tinyfed loads it (a quirk TFLM ignores gives a warning naming the
tensor, kept on the graph and logged) and runs it bit-exact with TFLM on the numpy twin; where
TFLM refuses, tinyfed refuses with TFLM's reason in one line naming the tensor or op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema_fb

from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.twin.kernels_np import run_blob
from tinyfed.models.tflite_graph import TfliteGraph, _pack
from tinyfed.models.tflm import TflmModel

FIXTURES = Path(__file__).with_name("fixtures") / "converters"
CLASSIFIER = (FIXTURES / "tf2.21.0_classifier_int8.tflite").read_bytes()
REGRESSOR = (FIXTURES / "tf2.21.0_regressor_int8.tflite").read_bytes()


def _mutated(base: bytes, change: Callable[[schema_fb.ModelT, TfliteGraph], None]) -> bytes:
    graph = TfliteGraph.from_bytes(base)
    model = graph.model_object
    change(model, graph)
    return _pack(model)


def _op(graph: TfliteGraph, name: str) -> int:
    return next(op.index for op in graph.ops if op.name == name)


def _assert_runs_like_tflm(data: bytes, n: int = 64) -> None:
    graph = TfliteGraph.from_bytes(data)
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    x = np.random.default_rng(0).integers(-128, 128, size=(n, *shape)).astype(np.int8)
    want = TflmModel(data).run(x)
    got = run_blob(compile_blob(data), x).reshape(want.shape)
    assert np.count_nonzero(got != want) == 0


def _bias_quantized_dimension_3(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """Older converters: a 1-D per-channel bias with quantized_dimension 3."""
    bias = graph.ops[_op(graph, "CONV_2D")].inputs[2]
    model.subgraphs[0].tensors[bias].quantization.quantizedDimension = 3


def _bias_without_zero_points(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    bias = graph.ops[_op(graph, "DEPTHWISE_CONV_2D")].inputs[2]
    model.subgraphs[0].tensors[bias].quantization.zeroPoint = None


def _filter_zero_points(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """Non-zero filter zero points (TFLM's release kernels run as if they were 0)."""
    q = model.subgraphs[0].tensors[graph.ops[_op(graph, "CONV_2D")].inputs[1]].quantization
    q.zeroPoint = np.full(len(q.zeroPoint), 5, np.int64)


def _fc_per_channel_zero_points(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """Per-channel FULLY_CONNECTED weights with zero points (TFLM's per-channel kernel reads none)."""
    q = model.subgraphs[0].tensors[graph.ops[_op(graph, "FULLY_CONNECTED")].inputs[1]].quantization
    q.zeroPoint = np.full(len(q.zeroPoint), -3, np.int64)


def _per_tensor_with_an_axis(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """Per-tensor activations naming a quantized_dimension (TFLM reads it for per-channel weights only)."""
    for t in (graph.inputs[0], graph.ops[0].outputs[0]):
        model.subgraphs[0].tensors[t].quantization.quantizedDimension = 2


def _shape_signature(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """A dynamic batch in the signature (TFLM plans with the static shape)."""
    t = model.subgraphs[0].tensors[graph.inputs[0]]
    t.shapeSignature = [-1, *list(t.shape)[1:]]


def _deprecated_opcodes_only(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """Schema-v3 writers stored the op in deprecated_builtin_code only (builtin_code left 0)."""
    for code in model.operatorCodes:
        if code.builtinCode < 127:
            code.deprecatedBuiltinCode, code.builtinCode = code.builtinCode, 0


def _other_op_versions(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """Operator versions TFLM's resolver does not look at."""
    for i, code in enumerate(model.operatorCodes):
        code.version = 1 + 5 * i


def _pool_scales_within_tolerance(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """TFLM's pooling allows input and output scales 1e-6 apart."""
    out = model.subgraphs[0].tensors[graph.ops[_op(graph, "MAX_POOL_2D")].outputs[0]]
    out.quantization.scale = np.asarray(out.quantization.scale, np.float32) + np.float32(5e-7)


@pytest.mark.parametrize("quirk, warns", [
    (_bias_quantized_dimension_3, "quantized_dimension 3"),
    (_bias_without_zero_points, "no zero points"),
    (_filter_zero_points, "ignore them"),
    (_fc_per_channel_zero_points, "ignore them"),
    (_per_tensor_with_an_axis, None),
    (_shape_signature, None),
    (_deprecated_opcodes_only, None),
    (_other_op_versions, None),
    (_pool_scales_within_tolerance, None),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_quirks_tflm_accepts_load_and_run(caplog: pytest.LogCaptureFixture, quirk, warns: str | None) -> None:
    data = _mutated(CLASSIFIER, quirk)
    with caplog.at_level(logging.WARNING, logger="tinyfed.models.tflite_graph"):
        graph = TfliteGraph.from_bytes(data, source="quirk.tflite")
    assert graph.op_names() == TfliteGraph.from_bytes(CLASSIFIER).op_names()
    if warns is None:
        assert graph.warnings == []
    else:
        assert len(graph.warnings) == 1 and warns in graph.warnings[0]
        named = [t for t in graph.tensors if f"'{t.name}' ({t.index})" in graph.warnings[0]]
        assert len(named) == 1  # the warning names the tensor
        assert any(graph.warnings[0] in r.getMessage() and "quirk.tflite" in r.getMessage() for r in caplog.records)
    _assert_runs_like_tflm(data)


@pytest.mark.slow
def test_plan_json_reports_the_quirk(tmp_path: Path) -> None:
    """`tinyfed plan --json` plans the quirky model and lists the warning, naming the bias."""
    import json
    import subprocess
    import sys

    data = _mutated(CLASSIFIER, _bias_quantized_dimension_3)
    path = tmp_path / "old_converter.tflite"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", "plan", str(path), "--board", "nrf52840",
                           "--no-measure", "--json", "--out", str(tmp_path / "plan")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    graph = TfliteGraph.from_bytes(data)
    bias = graph.tensors[graph.ops[_op(graph, "CONV_2D")].inputs[2]]
    warnings = json.loads(proc.stdout)["model_warnings"]
    assert len(warnings) == 1 and f"'{bias.name}'" in warnings[0] and "quantized_dimension 3" in warnings[0]


def test_the_bias_axis_quirk_trains_on_axis_0() -> None:
    """The 1-D bias's scales run along its only axis, for the trainer and the exporter too."""
    data = _mutated(CLASSIFIER, _bias_quantized_dimension_3)
    graph = TfliteGraph.from_bytes(data)
    bias = graph.tensors[graph.ops[_op(graph, "CONV_2D")].inputs[2]]
    assert bias.quantized_dimension == 0 and len(bias.scales) > 1


def _fc_bias_scale_off(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
    """Per-tensor weights and a bias scale far from input * weight scale."""
    op = graph.ops[_op(graph, "FULLY_CONNECTED")]
    tensors = model.subgraphs[0].tensors
    w = tensors[op.inputs[1]].quantization
    w.scale = np.array([np.max(w.scale)], np.float32)
    w.zeroPoint = np.zeros(1, np.int64)
    w.quantizedDimension = 0
    b = tensors[op.inputs[2]].quantization
    x_scale = np.float32(tensors[op.inputs[0]].quantization.scale[0])
    out_scale = np.float32(tensors[op.outputs[0]].quantization.scale[0])
    b.scale = np.array([x_scale * w.scale[0] + out_scale * np.float32(0.05)], np.float32)
    b.zeroPoint = np.zeros(1, np.int64)


def test_bias_scale_tflm_refuses_is_refused_with_its_reason() -> None:
    data = _mutated(REGRESSOR, _fc_bias_scale_off)
    with pytest.raises(ModelError, match="TFLM cannot load"):
        TflmModel(data)
    with pytest.raises(ModelError) as err:
        compile_blob(data)
    msg = str(err.value)
    assert "op 0 FULLY_CONNECTED" in msg and "bias" in msg and "0.02" in msg and "Fix:" in msg
    assert "\n" not in msg


def test_bias_scale_within_tflm_tolerance_runs() -> None:
    def near(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
        _fc_bias_scale_off(model, graph)
        op = graph.ops[_op(graph, "FULLY_CONNECTED")]
        tensors = model.subgraphs[0].tensors
        x_scale = np.float32(tensors[op.inputs[0]].quantization.scale[0])
        w_scale = np.float32(tensors[op.inputs[1]].quantization.scale[0])
        out_scale = np.float32(tensors[op.outputs[0]].quantization.scale[0])
        tensors[op.inputs[2]].quantization.scale = np.array([x_scale * w_scale + out_scale * np.float32(0.015)],
                                                            np.float32)

    _assert_runs_like_tflm(_mutated(REGRESSOR, near))


def test_softmax_scale_off_one_256th_is_refused_like_tflm() -> None:
    def off(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
        out = model.subgraphs[0].tensors[graph.ops[_op(graph, "SOFTMAX")].outputs[0]]
        out.quantization.scale = np.array([1 / 256 * 1.0005], np.float32)

    data = _mutated(CLASSIFIER, off)
    with pytest.raises(ModelError, match="softmax_common"):
        TflmModel(data)
    with pytest.raises(ModelError, match="op 6 SOFTMAX: output scale .* requires exactly 1/256"):
        compile_blob(data)


def test_weights_scales_off_their_axis_are_refused_naming_the_weights() -> None:
    def wrong_axis(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
        filt = graph.ops[_op(graph, "CONV_2D")].inputs[1]
        model.subgraphs[0].tensors[filt].quantization.quantizedDimension = 3  # OHWI: 2 input channels there

    data = _mutated(CLASSIFIER, wrong_axis)
    with pytest.raises(ModelError) as err:
        TfliteGraph.from_bytes(data)
    filt = TfliteGraph.from_bytes(CLASSIFIER).tensors[TfliteGraph.from_bytes(CLASSIFIER).ops[0].inputs[1]]
    assert f"'{filt.name}'" in str(err.value) and "quantized_dimension 3" in str(err.value)
    assert "corrupt" not in str(err.value)


def test_activation_without_zero_points_is_refused_naming_it() -> None:
    def no_zero_points(model: schema_fb.ModelT, graph: TfliteGraph) -> None:
        model.subgraphs[0].tensors[graph.ops[0].outputs[0]].quantization.zeroPoint = None

    with pytest.raises(ModelError) as err:
        TfliteGraph.from_bytes(_mutated(CLASSIFIER, no_zero_points))
    name = TfliteGraph.from_bytes(CLASSIFIER).tensors[TfliteGraph.from_bytes(CLASSIFIER).ops[0].outputs[0]].name
    assert f"'{name}'" in str(err.value) and "no zero points" in str(err.value)
