"""Nested subsets on the server: updates that carry part of the global vector (``Update.index``),
the per-parameter weighted mean, the update gate, and checkpoints of such a buffer."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfed.host.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from tinyfed.host.rounds import RoundState
from tinyfed.host.strategies import FedAvg, FedAvgParams, FedBuff, FedBuffParams
from tinyfed.host.strategies.base import weighted_step
from tinyfed.host.updates import Reason, Update, check_update


def upd(device: str, task: int, n: int, delta, index=None, base: int = 0) -> Update:
    return Update(device, task, base, n, 0.5, 1.0, np.asarray(delta, np.float32), 0,
                  None if index is None else np.asarray(index, np.int64))


def test_each_parameter_is_averaged_over_the_updates_that_carry_it() -> None:
    # the core (positions 0, 1) is carried by all three, position 2 by b and c, 3 by c only, 4 by none
    a = upd("a", 0, 10, [1.0, 2.0], [0, 1])
    b = upd("b", 1, 20, [3.0, 4.0, 5.0], [0, 1, 2])
    c = upd("c", 2, 30, [6.0, 7.0, 8.0, 9.0], [3, 2, 1, 0])
    w = np.array([1.0, 2.0, 3.0])
    step = weighted_step([a, b, c], w, 0.5, size=5)
    expect = 0.5 * np.array([(1 + 2 * 3 + 3 * 9) / 6, (2 + 2 * 4 + 3 * 8) / 6, (2 * 5 + 3 * 7) / 5, 6.0, 0.0])
    np.testing.assert_allclose(step, expect, rtol=1e-6)
    assert step.dtype == np.float32 and step.size == 5


def test_whole_vector_updates_keep_the_plain_mean_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    ups = [upd(f"d{i}", i, 5, rng.normal(size=7)) for i in range(4)]
    w = rng.uniform(0.1, 2.0, 4)
    indexed = [upd(u.device_id, u.task_id, u.n, u.delta, np.arange(7)) for u in ups]
    plain = weighted_step(ups, w, 0.7)
    shares = w / w.sum()
    acc = np.zeros(7)
    for s, u in zip(shares, ups, strict=True):
        acc += s * u.delta.astype(np.float64)
    assert np.array_equal(plain, (0.7 * acc).astype(np.float32))
    np.testing.assert_allclose(weighted_step(indexed, w, 0.7, size=7), plain, rtol=1e-6)


def test_the_mean_is_unbiased_when_every_update_agrees() -> None:
    """If every board moves every parameter it trains by the same amount, the step is that amount
    wherever some board trains it, whatever the classes' weights."""
    true = np.linspace(-1, 1, 12).astype(np.float32)
    rng = np.random.default_rng(0)
    ups = []
    for i, size in enumerate([4, 4, 9, 12, 9]):
        idx = np.sort(rng.permutation(12)[:size])
        ups.append(upd(f"d{i}", i, int(rng.integers(1, 50)), true[idx], idx))
    step = weighted_step(ups, rng.uniform(0.1, 3.0, len(ups)), 1.0, size=12)
    np.testing.assert_allclose(step, true, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("delta,index,ok", [
    ([1.0, 2.0], [0, 4], True),
    ([1.0, 2.0], [0], False),  # one index per value
    ([1.0, 2.0], [0, 5], False),  # outside the vector
    ([1.0, 2.0], [-1, 2], False),
    ([1.0, 2.0], [3, 3], False),  # a position twice
])
def test_the_gate_checks_an_index(delta, index, ok: bool) -> None:
    u = upd("a", 0, 4, delta, index)
    rejection = check_update(u, global_version=0, size=5, norm_bound=None, max_staleness=None, seen_tasks=set())
    assert (rejection is None) == ok
    if not ok:
        assert rejection is not None and rejection.reason == Reason.BAD_SHAPE


def test_a_buffer_takes_updates_of_different_sizes_and_steps_the_whole_vector() -> None:
    s = FedBuff(FedBuffParams(buffer_size=2))
    rounds = RoundState(s, np.zeros(6, np.float32), np.random.default_rng(0), fleet_size=4, norm_bound=None,
                        max_staleness=None)
    tasks = rounds.dispatch(["a", "b"])
    first = rounds.arrive(tasks[0].task_id, upd("a", tasks[0].task_id, 10, [1.0, 1.0], [0, 1]))
    assert first.aggregate is None
    out = rounds.arrive(tasks[1].task_id, upd("b", tasks[1].task_id, 10, [3.0, 3.0, 3.0, 3.0], [0, 1, 2, 3]))
    assert out.aggregate is not None
    rounds.apply(out.aggregate)
    np.testing.assert_allclose(rounds.vector, [2.0, 2.0, 3.0, 3.0, 0.0, 0.0])


def test_fedavg_takes_nested_updates() -> None:
    s = FedAvg(FedAvgParams(clients_per_round=2))
    s.vector_size = 3
    rng = np.random.default_rng(0)
    picked = s.select(["a", "b"], [], 0, rng)
    assert s.on_update(upd(picked[0], 0, 1, [2.0], [2]), 0) is None
    agg = s.on_update(upd(picked[1], 1, 1, [4.0, 4.0], [0, 2]), 0)
    assert agg is not None
    np.testing.assert_allclose(agg.step, [4.0, 0.0, 3.0])


def test_a_nested_buffer_survives_a_checkpoint(tmp_path) -> None:
    a = FedBuff(FedBuffParams(buffer_size=4))
    a.vector_size = 6
    ups = [upd("a", 0, 3, [1.0, 2.0], [4, 5]), upd("b", 1, 5, np.arange(6.0)), upd("c", 2, 7, [9.0], [0])]
    for u in ups:
        assert a.on_update(u, 0) is None
    write_checkpoint(tmp_path, Checkpoint(version=0, globals={"w": np.zeros(6, np.float32)},
                                          strategy_state=a.state_dict()))
    restored = read_checkpoint(tmp_path)
    assert restored is not None
    b = FedBuff(FedBuffParams(buffer_size=4))
    b.vector_size = 6
    b.load_state_dict(restored.strategy_state)
    for x, y in zip(a.buffer, b.buffer, strict=True):
        assert np.array_equal(x.delta, y.delta)
        assert (x.index is None and y.index is None) or np.array_equal(x.index, y.index)
    last = upd("d", 3, 1, [1.0], [3])
    np.testing.assert_array_equal(a.on_update(last, 0).step, b.on_update(last, 0).step)
