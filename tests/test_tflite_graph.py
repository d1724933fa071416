"""TfliteGraph: validation, introspection, surgery and weight write-back on tiny int8 models."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import _models
import numpy as np
import pytest

from tinyfed.errors import ModelError
from tinyfed.models.tflite_graph import FLOAT_FIX, TfliteGraph
from tinyfed.models.tflm import TflmModel, chain

REPO = Path(__file__).resolve().parents[1]
CNN_OPS = ["CONV_2D", "MAX_POOL_2D", "CONV_2D", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]


@pytest.fixture(scope="session")
def cnn_bytes() -> bytes:
    return _models.chain_cnn_int8()


@pytest.fixture(scope="session")
def residual_bytes() -> bytes:
    return _models.residual_int8()


@pytest.fixture(scope="session")
def float_bytes() -> bytes:
    return _models.chain_cnn_float()


@pytest.fixture(scope="session")
def cnn(cnn_bytes) -> TfliteGraph:
    return TfliteGraph.from_bytes(cnn_bytes, source="cnn.tflite")


@pytest.fixture(scope="session")
def residual(residual_bytes) -> TfliteGraph:
    return TfliteGraph.from_bytes(residual_bytes, source="residual.tflite")


def random_inputs(graph: TfliteGraph, n: int, seed: int = 0) -> np.ndarray:
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *shape), dtype=np.int8)


# ---- introspection --------------------------------------------------------------------


def test_op_listing(cnn):
    assert cnn.op_names() == CNN_OPS
    assert [op.index for op in cnn.ops] == list(range(7))
    conv1, pool1 = cnn.ops[0], cnn.ops[1]
    assert conv1.options["filter"] == (1, 5)
    assert conv1.options["stride"] == (1, 1)
    assert conv1.options["padding"] == "SAME"
    assert conv1.options["activation"] == "RELU"
    assert pool1.options["filter"] == (1, 2) and pool1.options["stride"] == (1, 2)
    assert pool1.options["padding"] == "VALID"
    assert cnn.ops[2].options["filter"] == (1, 3)
    assert cnn.ops[5].options["activation"] == "NONE"
    assert cnn.ops[6].options["beta"] == 1.0
    inp = cnn.tensors[cnn.inputs[0]]
    out = cnn.tensors[cnn.outputs[0]]
    assert inp.shape == (1, 1, 32, 3) and inp.dtype == np.int8 and len(inp.scales) == 1
    assert out.shape == (1, 6) and out.dtype == np.int8
    assert inp.nbytes == 96
    assert all(not t.is_constant for t in cnn.activation_tensors())
    assert {t.index for t in cnn.activation_tensors()} >= set(cnn.inputs) | set(cnn.outputs)


def test_weight_helpers(cnn, residual):
    convs = [op for op in cnn.ops if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(convs) == 3
    for op in convs:
        w = cnn.weight_tensor(op)
        b = cnn.bias_tensor(op)
        axis = cnn.output_channel_axis(op)
        assert axis == 0
        assert w.dtype == np.int8 and w.is_constant and w.is_per_channel
        assert w.quantized_dimension == axis and len(w.scales) == w.shape[axis]
        assert b is not None and b.dtype == np.int32 and b.shape == (w.shape[axis],)
        data = cnn.constant_data(w.index)
        assert data.shape == w.shape and data.dtype == np.int8
        assert cnn.constant_data(b.index).shape == b.shape
    assert cnn.weight_tensor(cnn.ops[0]).shape == (8, 1, 5, 3)  # OHWI
    assert cnn.weight_tensor(cnn.ops[5]).shape == (6, 112)  # (out, in)
    assert cnn.weight_tensor(1) is None and cnn.output_channel_axis(1) is None  # MAX_POOL_2D

    dw = residual.ops[1]
    assert dw.name == "DEPTHWISE_CONV_2D"
    w = residual.weight_tensor(dw)
    assert w.shape == (1, 3, 3, 4)  # 1HWC
    assert residual.output_channel_axis(dw) == 3 == w.quantized_dimension
    assert dw.options["depth_multiplier"] == 1


def test_constant_data_rejects_activations(cnn):
    with pytest.raises(ModelError, match="not a constant"):
        cnn.constant_data(cnn.inputs[0])


def test_unsupported_ops(cnn):
    supported = {"CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
    assert cnn.unsupported_ops(supported) == []
    assert cnn.unsupported_ops(supported - {"SOFTMAX", "MAX_POOL_2D"}) == [(1, "MAX_POOL_2D"), (6, "SOFTMAX")]


def test_lifetimes_and_peak(cnn, residual):
    life = cnn.tensor_lifetimes()
    assert life[cnn.inputs[0]] == (0, 0)
    assert life[cnn.outputs[0]] == (6, 6)
    assert set(life) == {t.index for t in cnn.activation_tensors()}
    # conv1 output (1x32x8 = 256 B) and pool1 output (128 B) are live together at op 1.
    assert cnn.peak_activation_bytes() == 384
    # The skip connection keeps the stem output alive until the ADD.
    stem_out = residual.ops[0].outputs[0]
    assert residual.tensor_lifetimes()[stem_out] == (0, 2)


# ---- surgery --------------------------------------------------------------------------


def test_cut_points(cnn, residual):
    assert cnn.cut_points() == [1, 2, 3, 4, 5, 6]
    # Cutting before the ADD (op 2) would need both the stem and the depthwise output.
    assert residual.cut_points() == [1, 3, 4, 5]
    with pytest.raises(ModelError, match="not a clean single-tensor cut point"):
        residual.split(2)


@pytest.mark.parametrize("which", ["cnn", "residual"])
def test_split_chains_bit_exactly(which, cnn, residual):
    graph = cnn if which == "cnn" else residual
    x = random_inputs(graph, 300, seed=1)
    full = TflmModel(graph.data).run(x)
    assert full.shape == (300, graph.tensors[graph.outputs[0]].shape[1])
    assert len(np.unique(full, axis=0)) > 10  # the model does not collapse to a constant
    for k in graph.cut_points():
        head, tail = graph.split(k)
        y = chain([head, tail], x)
        np.testing.assert_array_equal(y, full, err_msg=f"cut {k}")


def test_fragments_are_pruned_valid_models(cnn, residual):
    for graph in (cnn, residual):
        for k in graph.cut_points():
            for frag, n_ops in zip(graph.split(k), (k, len(graph.ops) - k), strict=True):
                g = TfliteGraph.from_bytes(frag)
                assert len(frag) < len(graph.data)
                assert len(g.ops) == n_ops
                assert len(g.tensors) < len(graph.tensors)
                assert len(g.inputs) == 1 and len(g.outputs) == 1
                model = g.model_object
                assert model.buffers[0].data is None or len(model.buffers[0].data) == 0
                assert model.signatureDefs is None
                # no unused tensors, buffers or operator codes survive
                used_t = set(g.inputs) | set(g.outputs)
                for op in g.ops:
                    used_t.update(t for t in op.inputs if t >= 0)
                    used_t.update(op.outputs)
                assert used_t == set(range(len(g.tensors)))
                used_b = {t.buffer for t in g.tensors if t.is_constant} | {m.buffer for m in model.metadata or []}
                assert used_b | {0} == set(range(len(model.buffers)))
                assert len(model.operatorCodes) == len(set(g.op_names()))
                assert [m.name for m in model.metadata] == [b"min_runtime_version", b"CONVERSION_METADATA"]


def test_fragment_boundary_keeps_quantization(cnn):
    head, tail = cnn.split(3)
    h, t = TfliteGraph.from_bytes(head), TfliteGraph.from_bytes(tail)
    boundary = cnn.ops[2].outputs[0]
    for g, idx in ((h, h.outputs[0]), (t, t.inputs[0])):
        info = g.tensors[idx]
        orig = cnn.tensors[boundary]
        assert (info.name, info.shape, info.scales, info.zero_points) == (
            orig.name, orig.shape, orig.scales, orig.zero_points,
        )
    # weights survive byte for byte
    np.testing.assert_array_equal(h.constant_data(h.weight_tensor(2).index),
                                  cnn.constant_data(cnn.weight_tensor(2).index))


def test_fragment_buffers_are_16_byte_aligned(cnn):
    from ai_edge_litert import schema_py_generated as schema_fb

    head, _ = cnn.split(5)
    lazy = schema_fb.Model.GetRootAs(head, 0)
    starts = [lazy.Buffers(i)._tab.Vector(4) for i in range(lazy.BuffersLength()) if lazy.Buffers(i).DataLength()]
    assert starts and all(s % 16 == 0 for s in starts)


def test_fragments_load_in_litert(cnn):
    from ai_edge_litert.interpreter import Interpreter

    x = random_inputs(cnn, 20, seed=3)
    ref = TflmModel(cnn.data).run(x)
    head, tail = cnn.split(2)
    y = x
    for frag in (head, tail):
        it = Interpreter(model_content=frag)
        it.allocate_tensors()
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
        outs = []
        for sample in y:
            it.set_tensor(i, sample[None])
            it.invoke()
            outs.append(it.get_tensor(o)[0].copy())
        y = np.stack(outs)
    # LiteRT's optimized kernels may differ from TFLM's reference ones by one LSB.
    assert np.abs(y.astype(int) - ref.astype(int)).max() <= 1


def test_extract_general(cnn, residual):
    mid = TfliteGraph.from_bytes(cnn.extract(1, 3))
    assert mid.op_names() == ["MAX_POOL_2D", "CONV_2D"]
    assert mid.tensors[mid.inputs[0]].name == cnn.tensors[cnn.ops[0].outputs[0]].name
    x = random_inputs(cnn, 50, seed=4)
    a = TflmModel(cnn.extract(0, 1)).run(x)
    b = TflmModel(cnn.extract(1, 3)).run(a)
    c = TflmModel(cnn.extract(3, 7)).run(b)
    np.testing.assert_array_equal(c, TflmModel(cnn.data).run(x))
    # The ADD alone reads two activations and hands one on.
    add = TfliteGraph.from_bytes(residual.extract(2, 3))
    assert add.op_names() == ["ADD"] and len(add.inputs) == 2 and len(add.outputs) == 1
    # Inside the skip the range hands two tensors on.
    stem = TfliteGraph.from_bytes(residual.extract(0, 2))
    assert len(stem.outputs) == 2
    for bad in ((0, 0), (3, 2), (-1, 2), (0, 8)):
        with pytest.raises(ModelError, match="op range"):
            cnn.extract(*bad)


# ---- weight write-back ------------------------------------------------------------------


def test_with_updated_constant_round_trips(cnn):
    w = cnn.weight_tensor(0)
    old = cnn.constant_data(w.index)
    new = np.clip(old.astype(np.int16) * -1, -128, 127).astype(np.int8)
    updated = TfliteGraph.from_bytes(cnn.with_updated_constant(w.index, new))
    np.testing.assert_array_equal(updated.constant_data(w.index), new)
    assert updated.op_names() == cnn.op_names()
    for t in cnn.tensors:
        if t.is_constant and t.index != w.index:
            np.testing.assert_array_equal(updated.constant_data(t.index), cnn.constant_data(t.index))
        assert updated.tensors[t.index].scales == t.scales
    x = random_inputs(cnn, 50, seed=5)
    assert not np.array_equal(TflmModel(updated.data).run(x), TflmModel(cnn.data).run(x))
    restored = updated.with_updated_constant(w.index, old)
    np.testing.assert_array_equal(TflmModel(restored).run(x), TflmModel(cnn.data).run(x))
    # int32 bias, given as int64 values in range
    b = cnn.bias_tensor(0)
    bias = cnn.constant_data(b.index).astype(np.int64) + 7
    np.testing.assert_array_equal(
        TfliteGraph.from_bytes(cnn.with_updated_constant(b.index, bias)).constant_data(b.index), bias
    )


def test_with_updated_constant_unshares_buffers(residual):
    # The stem's and the depthwise conv's zero biases share one buffer.
    stem_b, dw_b = residual.bias_tensor(0), residual.bias_tensor(1)
    assert stem_b.buffer == dw_b.buffer
    updated = TfliteGraph.from_bytes(residual.with_updated_constant(stem_b.index, np.arange(4, dtype=np.int32)))
    np.testing.assert_array_equal(updated.constant_data(stem_b.index), np.arange(4))
    np.testing.assert_array_equal(updated.constant_data(dw_b.index), residual.constant_data(dw_b.index))


def test_with_updated_constant_errors(cnn):
    w = cnn.weight_tensor(0)
    with pytest.raises(ModelError, match="shape"):
        cnn.with_updated_constant(w.index, np.zeros((8, 15), np.int8))
    with pytest.raises(ModelError, match="outside INT8"):
        cnn.with_updated_constant(w.index, np.full(w.shape, 200, np.int16))
    with pytest.raises(ModelError, match="quantize"):
        cnn.with_updated_constant(w.index, np.zeros(w.shape, np.float32))
    with pytest.raises(ModelError, match="not a writable constant"):
        cnn.with_updated_constant(cnn.inputs[0], np.zeros((1, 1, 32, 3), np.int8))


# ---- bad inputs -------------------------------------------------------------------------


def test_empty_short_and_foreign_files(tmp_path):
    with pytest.raises(ModelError, match=r"empty model file \(0 bytes\)"):
        TfliteGraph.from_bytes(b"")
    with pytest.raises(ModelError, match=r"too short .*\(5 bytes\)"):
        TfliteGraph.from_bytes(b"TFL3\x00")
    with pytest.raises(ModelError, match="not a TFLite flatbuffer") as e:
        TfliteGraph.from_bytes(b"PK\x03\x04" + bytes(200), source="model.keras")
    assert e.value.fix and e.value.source == "model.keras"
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        TfliteGraph.from_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(ModelError, match="not found"):
        TfliteGraph.from_file(tmp_path / "missing.tflite")
    with pytest.raises(ModelError, match="directory"):
        TfliteGraph.from_file(tmp_path)


def test_from_file(tmp_path, cnn_bytes):
    p = tmp_path / "m.tflite"
    p.write_bytes(cnn_bytes)
    g = TfliteGraph.from_file(p)
    assert g.source == str(p) and g.op_names() == CNN_OPS


@pytest.mark.parametrize("which", ["cnn", "residual"])
def test_truncations_are_reported(which, cnn_bytes, residual_bytes):
    data = cnn_bytes if which == "cnn" else residual_bytes
    n = len(data)
    cuts = sorted(
        {8, 9, 12, 16, 24, 32, 64, 100, 257, n // 4, n // 3, n // 2, 2 * n // 3, n - 64, n - 16, n - 4, n - 1}
    )
    for cut in cuts:
        with pytest.raises(ModelError) as e:
            TfliteGraph.from_bytes(data[:cut])
        assert e.value.problem.startswith(f"corrupt or truncated .tflite ({cut} bytes)"), (cut, e.value.problem)
        assert e.value.fix


def test_every_truncation_is_reported(cnn_bytes):
    for cut in range(8, len(cnn_bytes)):
        with pytest.raises(ModelError, match="corrupt or truncated"):
            TfliteGraph.from_bytes(cnn_bytes[:cut])


def test_random_byte_flips_never_escape(cnn_bytes):
    """Damaged files either load or raise ModelError; nothing else escapes the parser."""
    rng = np.random.default_rng(7)
    loaded = rejected = 0
    for _ in range(400):
        b = bytearray(cnn_bytes)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        try:
            TfliteGraph.from_bytes(bytes(b))
            loaded += 1  # a flip inside weight bytes is undetectable (no checksum)
        except ModelError as e:
            assert e.fix, e.problem
            rejected += 1
    assert rejected > 50 and loaded > 50


def test_byte_flips_never_crash_the_process(cnn_bytes, residual_bytes, tmp_path):
    """Crash-safety in a separate process: parse many damaged files, and run the ones that
    pass validation through TFLM, whose kernels trust the flatbuffer (a negative scale, a
    wrong shape or a swapped opcode can crash them; validation must catch those first)."""
    for name, data in (("cnn", cnn_bytes), ("residual", residual_bytes)):
        (tmp_path / f"{name}.tflite").write_bytes(data)
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from tinyfed.errors import ModelError
        from tinyfed.models.tflite_graph import TfliteGraph
        from tinyfed.models.tflm import TflmModel
        counts = {"rejected": 0, "ran": 0, "tflm_refused": 0}
        for name, seed in (("cnn", 11), ("residual", 12)):
            data = open(sys.argv[1] + "/" + name + ".tflite", "rb").read()
            rng = np.random.default_rng(seed)
            for _ in range(250):
                b = bytearray(data)
                b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
                try:
                    g = TfliteGraph.from_bytes(bytes(b))
                except ModelError:
                    counts["rejected"] += 1
                    continue
                try:
                    m = TflmModel(g.data)
                    m.run(np.zeros((1, *m.input_details[0]["shape"][1:]), np.int8))
                    counts["ran"] += 1
                except ModelError:
                    counts["tflm_refused"] += 1
        print(counts)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert "'rejected'" in proc.stdout


def test_float_model_rejected(float_bytes):
    with pytest.raises(ModelError) as e:
        TfliteGraph.from_bytes(float_bytes, source="float.tflite")
    assert e.value.problem.startswith("float (not full-int8) model: tensor '")
    assert e.value.problem.endswith("' is FLOAT32")
    assert "serving_default_window" in e.value.problem  # the graph input is named first
    assert e.value.fix == FLOAT_FIX
    assert "--representative" in e.value.fix and "inference_input_type=int8" in e.value.fix


def _repack(graph: TfliteGraph, edit) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    model = graph.model_object
    edit(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def test_multiple_subgraphs_rejected(cnn):
    data = _repack(cnn, lambda m: m.subgraphs.append(copy.deepcopy(m.subgraphs[0])))
    with pytest.raises(ModelError, match="model has 2 subgraphs"):
        TfliteGraph.from_bytes(data)


def test_index_out_of_range_is_corrupt(cnn):
    def bad_buffer(m):
        m.subgraphs[0].tensors[3].buffer = 999

    def bad_input(m):
        m.subgraphs[0].operators[2].inputs = [m.subgraphs[0].operators[1].outputs[0], 99, 3]

    def bad_opcode(m):
        m.subgraphs[0].operators[0].opcodeIndex = 42

    for edit, msg in ((bad_buffer, "buffer 999"), (bad_input, "tensor 99"), (bad_opcode, "operator code 42")):
        with pytest.raises(ModelError, match=f"corrupt or truncated .*{msg}"):
            TfliteGraph.from_bytes(_repack(cnn, edit))


def test_semantic_damage_is_corrupt(cnn):
    fc_out = cnn.ops[5].outputs[0]
    pool_out = cnn.ops[1].outputs[0]

    def neg_scale(m):
        m.subgraphs[0].tensors[fc_out].quantization.scale = np.array([-1.0], np.float32)

    def wrong_shape(m):
        m.subgraphs[0].tensors[pool_out].shape = np.array([1, 1, 16, 9], np.int32)

    def no_quant(m):
        m.subgraphs[0].tensors[fc_out].quantization = None

    for edit, msg in ((neg_scale, "scale -1"), (wrong_shape, "MAX_POOL_2D"), (no_quant, "no quantization")):
        with pytest.raises(ModelError, match=msg):
            TfliteGraph.from_bytes(_repack(cnn, edit))


def test_offset_buffers_outside_the_flatbuffer(cnn):
    """Weights stored after the flatbuffer (the >2 GB layout) are read and bounds-checked."""
    data = _models.with_offset_buffers(cnn.data)
    g = TfliteGraph.from_bytes(data)
    for t in cnn.tensors:
        if t.is_constant:
            np.testing.assert_array_equal(g.constant_data(t.index), cnn.constant_data(t.index))
    # Fragments of it carry their weights inline again and run like the original.
    x = random_inputs(cnn, 30, seed=6)
    np.testing.assert_array_equal(chain(list(g.split(4)), x), TflmModel(cnn.data).run(x))
    with pytest.raises(ModelError, match="corrupt or truncated .*outside the file"):
        TfliteGraph.from_bytes(data[:-10])
