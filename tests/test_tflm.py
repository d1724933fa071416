"""TFLM on the host: running int8 models and fragments, quantization, arena measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import _models
import numpy as np
import pytest

from tinyfed.errors import ModelError
from tinyfed.models import tflm
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import ArenaMeasurement, TflmModel, chain, measure_arena, quantize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cnn_bytes() -> bytes:
    return _models.chain_cnn_int8()


@pytest.fixture(scope="session")
def cnn(cnn_bytes) -> TfliteGraph:
    return TfliteGraph.from_bytes(cnn_bytes)


@pytest.fixture(scope="session")
def cnn_arena(cnn_bytes) -> ArenaMeasurement:
    return measure_arena(cnn_bytes)


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, size=(n, 1, 32, 3), dtype=np.int8)


# ---- running --------------------------------------------------------------------------


def test_run_batches_sample_by_sample(cnn_bytes):
    m = TflmModel(cnn_bytes)
    assert tuple(m.input_details[0]["shape"]) == (1, 1, 32, 3)
    assert m.input_details[0]["dtype"] == np.int8
    x = _x(40)
    y = m.run(x)
    assert y.shape == (40, 6) and y.dtype == np.int8
    one_by_one = np.concatenate([m.run(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(y, one_by_one)
    assert m.run(x[:0]).shape == (0, 6)
    # same bits from a fresh interpreter (no state carried between samples)
    np.testing.assert_array_equal(TflmModel(cnn_bytes).run(x[::-1])[::-1], y)


def test_run_rejects_wrong_inputs(cnn_bytes):
    m = TflmModel(cnn_bytes)
    with pytest.raises(ModelError, match="float32, the model wants int8"):
        m.run(np.zeros((2, 1, 32, 3), np.float32))
    with pytest.raises(ModelError, match=r"expected \(batch, 1, 32, 3\)"):
        m.run(np.zeros((2, 32, 3), np.int8))
    with pytest.raises(ModelError, match="shape"):
        m.run(np.zeros((2, 1, 31, 3), np.int8))


def test_quantize_uses_tflite_rounding():
    # halves round away from zero (std::round), not to even (np.round)
    x = np.array([0.25, -0.25, 0.75, -0.75, 1.25, 0.2499999, 1000.0, -1000.0], np.float32)
    np.testing.assert_array_equal(quantize(x, 0.5, 0), [1, -1, 2, -2, 3, 0, 127, -128])
    np.testing.assert_array_equal(quantize(np.array([0.0, 0.05]), 0.1, -128), [-128, -127])
    assert quantize(np.array([1.0]), 0.1, 0).dtype == np.int8


def test_run_float_quantizes_with_input_params(cnn_bytes):
    m = TflmModel(cnn_bytes)
    q = m.input_details[0]["quantization_parameters"]
    scale, zp = float(q["scales"][0]), int(q["zero_points"][0])
    xf = np.random.default_rng(2).normal(size=(30, 1, 32, 3)).astype(np.float32)
    expected = np.clip(np.trunc(xf / np.float32(scale) + np.copysign(0.5, xf)) + zp, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(m.run_float(xf), m.run(expected))
    qp = m.output_details[0]["quantization_parameters"]
    y = tflm.dequantize(m.run_float(xf), *[qp[k][0] for k in ("scales", "zero_points")])
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=0.05)  # softmax probabilities


def test_chain_checks_fragment_boundaries(cnn):
    h1, t1 = cnn.split(1)
    h3, t3 = cnn.split(3)
    x = _x(10)
    np.testing.assert_array_equal(chain([h1, t1], x), chain([h3, t3], x))
    np.testing.assert_array_equal(chain([cnn.data], x), TflmModel(cnn.data).run(x))
    with pytest.raises(ModelError, match="does not match fragment 0 output"):
        chain([h1, t3], x)
    with pytest.raises(ModelError, match="no models"):
        chain([], x)


def test_too_small_arena_raises_model_error(cnn_bytes, cnn_arena):
    # cnn_arena.bytes - 16 fails with an exception, not a crash, for this model (see the
    # subprocess test below for the general case).
    with pytest.raises(ModelError, match=rf"{cnn_arena.bytes - 16}-byte arena"):
        TflmModel(cnn_bytes, arena_size=cnn_arena.bytes - 16)
    TflmModel(cnn_bytes, arena_size=cnn_arena.bytes).run(_x(3))


def _unsupported_op_model(graph: TfliteGraph) -> bytes:
    """The CNN with SOFTMAX's opcode swapped for HASHTABLE_LOOKUP, which TFLM lacks."""
    from ai_edge_litert import schema_py_generated as schema_fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = graph.model_object
    sg = model.subgraphs[0]
    op = sg.operators[6]
    code = schema_fb.BuiltinOperator.HASHTABLE_LOOKUP
    model.operatorCodes[op.opcodeIndex].builtinCode = code
    model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode = code
    op.builtinOptionsType = 0
    op.builtinOptions = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def test_unsupported_op_is_a_model_error(cnn):
    data = _unsupported_op_model(cnn)
    g = TfliteGraph.from_bytes(data)
    assert g.unsupported_ops({"CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED"}) == [
        (6, "HASHTABLE_LOOKUP")
    ]
    with pytest.raises(ModelError, match="HASHTABLE_LOOKUP"):
        TflmModel(data)
    with pytest.raises(ModelError, match="even with a 16384-byte arena.*HASHTABLE_LOOKUP"):
        measure_arena(data, cap=16384)


def test_corrupt_model_never_reaches_tflm(cnn_bytes):
    with pytest.raises(ModelError, match="corrupt or truncated"):
        TflmModel(cnn_bytes[: len(cnn_bytes) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        measure_arena(cnn_bytes[:100])


# ---- arena measurement ----------------------------------------------------------------


def test_measure_arena_cnn(cnn, cnn_arena):
    m = cnn_arena
    assert m.bytes % 16 == 0 and 1024 < m.bytes < 16384
    assert m.probes == len(m.history) and m.probes < 20
    assert m.seconds < 10
    assert m.history[-1] == (m.bytes, "ok") or (m.bytes, "ok") in m.history
    assert (m.bytes - 16, "fail") in m.history or (m.bytes - 16, "crash") in m.history
    # head = planned activations: for this chain it equals the peak of live tensors
    assert m.tensor_bytes == cnn.peak_activation_bytes() == 384
    assert m.persistent_bytes > m.tensor_bytes
    assert m.transient_bytes >= 0
    assert m.breakdown["TfLiteEvalTensor data"] == 24 * len(cnn.tensors)  # 64-bit host
    assert m.breakdown["NodeAndRegistration struct"] == 64 * len(cnn.ops)


def test_measure_arena_is_deterministic(cnn_bytes, cnn_arena):
    again = measure_arena(cnn_bytes)
    assert (again.bytes, again.history, again.tensor_bytes, again.persistent_bytes) == (
        cnn_arena.bytes, cnn_arena.history, cnn_arena.tensor_bytes, cnn_arena.persistent_bytes,
    )


def test_fragment_arenas(cnn, cnn_arena):
    head, tail = cnn.split(2)
    mh, mt = measure_arena(head), measure_arena(tail)
    assert mh.bytes <= cnn_arena.bytes and mt.bytes <= cnn_arena.bytes
    assert mh.tensor_bytes <= cnn_arena.tensor_bytes


def test_measure_arena_other_resolution(cnn_bytes, cnn_arena):
    m = measure_arena(cnn_bytes, resolution=64)
    assert m.bytes % 64 == 0
    assert cnn_arena.bytes <= m.bytes < cnn_arena.bytes + 64


def _try_arena(model_path: Path, size: int) -> tuple[int, str]:
    """Allocate + invoke in a fresh process: (exit code, last stdout line)."""
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from tflite_micro.python.tflite_micro import runtime
        data = open(sys.argv[1], "rb").read()
        try:
            it = runtime.Interpreter.from_bytes(data, arena_size=int(sys.argv[2]))
            d = it.get_input_details(0)
            it.set_input(np.zeros(tuple(d["shape"]), d["dtype"]), 0)
            it.invoke()
            print("OK")
        except RuntimeError as e:
            print("FAIL", e)
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", script, str(model_path), str(size)], capture_output=True, text=True, timeout=120
    )
    lines = p.stdout.strip().splitlines()
    return p.returncode, lines[-1] if lines else ""


def test_measured_arena_is_tight_in_a_fresh_process(cnn, cnn_arena, tmp_path):
    head, _ = cnn.split(2)
    for name, data, m in (("full", cnn.data, cnn_arena), ("head", head, measure_arena(head))):
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(data)
        assert _try_arena(path, m.bytes) == (0, "OK"), name
        rc, last = _try_arena(path, m.bytes - m.resolution)
        assert last != "OK", (name, rc, last)  # an exception or a crash, never success


def test_probe_worker_survives_crashes(cnn_bytes, tmp_path):
    """Tiny arenas segfault TFLM; the prober records a crash and starts a new worker."""
    model = tmp_path / "m.tflite"
    model.write_bytes(cnn_bytes)
    prober = tflm._Prober(str(model), str(tmp_path / "log"), timeout=300)  # a hang bound: a hung worker is a crash
    try:
        crashed = prober.probe(64)
        assert crashed["ok"] is False and crashed.get("crash") is True
        ok = prober.probe(8192)
        assert ok["ok"] is True and ok["allocations"]["head"] == 384
        failed = prober.probe(1024)  # an ordinary allocation failure: the worker lives on
        assert failed["ok"] is False and not failed.get("crash")
        assert "allocate" in failed["error"] or "Failed" in failed["error"]
        assert prober.probe(8192)["ok"] is True
        assert prober.starts == 2
    finally:
        prober.stop()


def test_probe_worker_protocol(cnn_bytes, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(cnn_bytes)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [sys.executable, "-m", "tinyfed.models.tflm", "--probe-worker", str(model), str(tmp_path / "log")],
        input="8192\n\n4096\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    answers = [json.loads(line) for line in p.stdout.splitlines()]
    assert [a["size"] for a in answers] == [8192, 4096] and all(a["ok"] for a in answers)
    assert answers[0]["allocations"]["tail"] > 0
    bad = subprocess.run([sys.executable, "-m", "tinyfed.models.tflm"], capture_output=True, env=env, timeout=300)
    assert bad.returncode == 2
