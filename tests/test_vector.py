"""The flat w* vector and its per-unit values (tinyfed.training.vector): the split the host, the
sim:// board and the fleet simulator share, and the test-split evaluator built on it."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfed.training.vector import split_units, tail_evaluator

SHAPES = [(3, 4), (1, 7), (5, 1), (2, 2)]


def test_split_round_trips_with_concatenate() -> None:
    flat = np.arange(sum(c * p for c, p in SHAPES), dtype=np.float32) * 0.5 - 3
    parts = split_units(flat, SHAPES)
    assert [p.shape for p in parts] == SHAPES
    assert parts[1][0, 0] == flat[12] and parts[3][1, 1] == flat[-1]  # in order, unit after unit
    back = np.concatenate([p.ravel() for p in parts])
    assert back.dtype == flat.dtype and np.array_equal(back, flat)


@pytest.mark.parametrize("size", [0, 27, 29])
def test_a_vector_of_another_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=rf"has {size} values .* hold 28"):
        split_units(np.zeros(size, np.float32), SHAPES)


def test_a_vector_that_is_not_flat_is_refused() -> None:  # the right count, but not one vector
    with pytest.raises(ValueError, match="shape"):
        split_units(np.zeros((4, 7), np.float32), SHAPES)


@pytest.fixture(scope="module")
def digits_tail(tmp_path_factory: pytest.TempPathFactory):
    """digits_cnn's whole model as a float tail, its start vector and 200 test samples."""
    from tinyfed.firmware_bridge.compile.local_data import quantize_inputs
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.models.zoo import get_zoo_model
    from tinyfed.planner import trainable as tfw
    from tinyfed.training import FloatTail

    zm = get_zoo_model("digits_cnn")
    model = zm.int8_tflite()
    graph = TfliteGraph.from_bytes(model, source="digits_cnn")
    units = tfw.whole_model_units(graph)
    tail = FloatTail.from_fragments(model, tfw.encode(units))
    t_in = graph.tensors[graph.inputs[0]]
    test = zm.test_split()
    x = tail.dequantize_input(quantize_inputs(test.x[:200], float(t_in.scales[0]), int(t_in.zero_points[0])))
    w0 = np.concatenate([u.values.ravel() for u in units]).astype(np.float32)
    return tail, [(len(u.channels), u.values_per_channel) for u in units], w0, x, test.y[:200].astype(np.int64)


def test_the_evaluator_scores_the_vector_it_is_given_and_leaves_the_tail_alone(digits_tail) -> None:
    tail, shapes, w0, x, y = digits_tail
    before = [v.copy() for v in tail.unit_values()]
    p = tail.forward(x, keep=False).reshape(len(y), -1)  # the tail as loaded holds w0
    want_acc = float((p.argmax(1) == y).mean())
    want_loss = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-30)).mean())
    one_pass = tail_evaluator(tail, shapes, x, y, chunk=None)
    assert one_pass(w0) == (want_acc, want_loss)
    acc, loss = tail_evaluator(tail, shapes, x, y, chunk=7)(w0)  # 200 = 28 chunks of 7 and one of 4
    assert acc == want_acc and loss == pytest.approx(want_loss, rel=1e-5)
    # another vector scores differently (all-zero weights: every class equally likely)
    acc0, loss0 = one_pass(np.zeros_like(w0))
    assert loss0 == pytest.approx(np.log(p.shape[1]), rel=1e-5) and acc0 < want_acc
    assert all(np.array_equal(a, b) for a, b in zip(before, tail.unit_values(), strict=True))


def test_the_evaluator_refuses_inputs_and_labels_of_different_lengths(digits_tail) -> None:
    tail, shapes, _, x, y = digits_tail
    with pytest.raises(ValueError, match="200 inputs but 199 labels"):
        tail_evaluator(tail, shapes, x, y[:-1])
