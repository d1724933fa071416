"""Models from the oldest and the newest TensorFlow converter (tests/fixtures/converters): each loads,
plans, and runs bit-exact against TFLite Micro on the numpy twin and the host-compiled C engine.

The float-interface models (QUANTIZE first, DEQUANTIZE last) run whole in TFLM on float inputs;
tinyfed runs their int8 body and does the edges on the host (:func:`tinyfed.ops.fixed_point.quantize`
and ``dequantize``): the float outputs must be equal, bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_engine import c_run, engine_lib  # noqa: F401 (the session's host-compiled C engine)

from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.twin.kernels_np import run_blob
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import TflmModel
from tinyfed.ops.fixed_point import dequantize, quantize

FIXTURES = Path(__file__).with_name("fixtures") / "converters"
MODELS = sorted(p.name for p in FIXTURES.glob("*.tflite"))
N = 400


def test_both_converters_are_covered() -> None:
    versions = {name.split("_")[0] for name in MODELS}
    assert versions == {"tf2.12.0", "tf2.21.0"}, versions  # the oldest and newest that install on Python 3.11
    assert len(MODELS) == 8


def _inputs(graph: TfliteGraph, n: int, seed: int) -> np.ndarray:
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    return np.random.default_rng(seed).normal(0.0, 1.5, size=(n, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_runs_bit_exact_with_tflm(engine_lib, name: str) -> None:  # noqa: F811
    data = (FIXTURES / name).read_bytes()
    whole = TfliteGraph.from_bytes(data, source=name)
    body = whole.int8_graph()
    assert whole.edges.any == name.endswith("_float.tflite")
    assert [t.type_name for t in (body.tensors[body.inputs[0]], body.tensors[body.outputs[0]])] == ["INT8", "INT8"]
    x_in, y_out = body.tensors[body.inputs[0]], body.tensors[body.outputs[0]]
    x_float = _inputs(whole, N, seed=len(name))
    xq = quantize(x_float, x_in.scales[0], x_in.zero_points[0])
    blob = compile_blob(body.data, source=name)
    twin, engine = run_blob(blob, xq), c_run(engine_lib, blob, xq)
    reference = TflmModel(data, source=name)
    if whole.edges.any:
        want = reference.run(x_float)  # TFLM runs the whole float-interface model
        assert want.dtype == np.float32
        for what, got in (("twin", twin), ("C engine", engine)):
            got_float = dequantize(got, y_out.scales[0], y_out.zero_points[0]).reshape(want.shape)
            assert np.array_equal(got_float.view(np.int32), want.view(np.int32)), f"{name}: {what} differs from TFLM"
    else:
        want = reference.run(xq)
        for what, got in (("twin", twin), ("C engine", engine)):
            diff = np.count_nonzero(got.reshape(want.shape) != want)
            assert diff == 0, f"{name}: {what} differs from TFLM on {diff} values"


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_plans(tmp_path: Path, name: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", "plan", str(FIXTURES / name), "--board", "nrf52840",
                           "--no-measure", "--json", "--out", str(tmp_path / "plan")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["fits"] is True and doc["trainable_params"] > 0
    assert any("float interface" in w for w in doc["model_warnings"]) == name.endswith("_float.tflite")


def test_run_data_of_a_float_interface_model_meets_its_int8_body(tmp_path: Path) -> None:
    """`tinyfed run --model float_interface.tflite --data x.npz`: float samples, the int8 body trained."""
    from tinyfed.host.rundata import user_run_data

    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=(40, 12, 12, 2)).astype(np.float32)
    y = rng.integers(0, 5, size=40)
    np.savez(tmp_path / "d.npz", x=x[:30], y=y[:30], x_test=x[30:], y_test=y[30:])
    data = user_run_data(str(FIXTURES / "tf2.12.0_classifier_float.tflite"), tmp_path / "d.npz")
    body = TfliteGraph.from_bytes(data.model_bytes)
    assert not body.edges.any and body.op_names()[0] == "CONV_2D"
    assert body.tensors[body.inputs[0]].type_name == "INT8" and data.num_classes == 5
