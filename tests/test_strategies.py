"""Aggregation strategies (tinyfed.host.strategies) and the update gate (tinyfed.host.updates)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinyfed.errors import TinyfedError
from tinyfed.host.strategies import (
    FTTE,
    STRATEGIES,
    Aggregate,
    FedAvg,
    FedAvgParams,
    FedBuff,
    FedBuffParams,
    FTTEParams,
    Strategy,
    StrategyError,
    Variant,
    build_variant,
    get_strategy,
    parse_variant,
)
from tinyfed.host.strategies.base import weighted_step
from tinyfed.host.updates import MAX_LOSS, Reason, Update, check_update, variance_problem


def upd(device: str, task: int, base: int, n: int, delta, variance: float = 1.0, loss: float = 0.5) -> Update:
    return Update(device, task, base, n, loss, variance, np.asarray(delta, dtype=np.float32), 4 * len(delta))


def random_updates(rng: np.random.Generator, count: int, size: int, version: int) -> list[Update]:
    return [upd(f"d{i}", i, version - int(rng.integers(0, 4)), int(rng.integers(1, 100)),
                rng.normal(size=size), variance=float(rng.uniform(0.0, 3.0))) for i in range(count)]


def feed(strategy: Strategy, updates: list[Update], version: int) -> list[Aggregate | None]:
    return [strategy.on_update(u, version) for u in updates]


def through_json(state: dict) -> dict:
    """What a checkpoint does: JSON for everything but the numpy arrays, which go to a side file
    (the buffered deltas, and a server optimizer's moments under "optimizer")."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    assert set(arrays) <= {"deltas"}
    moments = {k: v for k, v in state.get("optimizer", {}).items() if isinstance(v, np.ndarray)}
    assert set(moments) <= {"m", "v"}
    rest = {k: v for k, v in state.items() if k not in arrays}
    if "optimizer" in rest:
        rest["optimizer"] = {k: v for k, v in rest["optimizer"].items() if k not in moments}
    meta = json.loads(json.dumps(rest))
    if moments:
        meta["optimizer"] |= {k: np.array(v) for k, v in moments.items()}
    return meta | {k: np.array(v) for k, v in arrays.items()}


# ---------------------------------------------------------------- FTTE weighting, by hand

def test_ftte_weights_staleness_and_variance_by_hand() -> None:
    s = FTTE(FTTEParams(buffer_size=3, server_lr=2.0, variance_floor=0.0))  # no floor: before issue 15
    version = 3
    a = upd("a", 1, 3, 10, [1, 0], variance=1.0)  # tau 0: s = 1; var = median: g = 1
    b = upd("b", 2, 2, 20, [0, 1], variance=4.0)  # tau 1: s = 1/sqrt(2); g = 1/4
    c = upd("c", 3, 0, 30, [1, 1], variance=0.0)  # tau 3: s = 1/2; var 0: g = 1
    assert feed(s, [a, b], version) == [None, None]
    agg = s.on_update(c, version)
    assert agg is not None
    w = [10.0, 20 / math.sqrt(2) / 4, 15.0]  # 10, 3.5355339, 15
    np.testing.assert_allclose(agg.weights, w, rtol=1e-12)
    np.testing.assert_array_equal(agg.staleness, [0, 1, 3])
    total = sum(w)  # 28.5355339
    expect = [2 * (w[0] + w[2]) / total, 2 * (w[1] + w[2]) / total]  # 1.7522013, 1.2991195
    np.testing.assert_allclose(agg.step, expect, rtol=1e-6)
    np.testing.assert_allclose(agg.step, [1.7522013, 1.2991195], rtol=1e-6)
    assert agg.step.dtype == np.float32
    assert (agg.version, agg.new_version) == (3, 4)
    assert [u.device_id for u in agg.updates] == ["a", "b", "c"]
    assert s.buffer == []


def test_ftte_variance_gamma_and_even_median() -> None:
    s = FTTE(FTTEParams(buffer_size=4, variance_gamma=2.0, staleness_exponent=0.0, variance_floor=0.0))
    # variances 1, 2, 3, 8: median 2.5; g = 1, 1, (2.5/3)^2, (2.5/8)^2
    ups = [upd(f"d{i}", i, 0, 1, [1.0], variance=v) for i, v in enumerate([1.0, 2.0, 3.0, 8.0])]
    agg = feed(s, ups, 0)[-1]
    np.testing.assert_allclose(agg.weights, [1, 1, (2.5 / 3) ** 2, (2.5 / 8) ** 2], rtol=1e-12)


def test_ftte_all_zero_variance_leaves_n_and_staleness() -> None:
    s = FTTE(FTTEParams(buffer_size=2))
    agg = feed(s, [upd("a", 1, 1, 4, [1.0], variance=0.0), upd("b", 2, 0, 4, [3.0], variance=0.0)], 1)[-1]
    np.testing.assert_allclose(agg.weights, [4.0, 4 / math.sqrt(2)], rtol=1e-12)
    assert np.isfinite(agg.step).all()


def test_ftte_variance_floor_by_hand() -> None:
    # variances 1, 2, 3, 8: median 2.5; ratios 1, 1, 2.5/3, 2.5/8 = 0.3125, floored at 0.5
    ups = [upd(f"d{i}", i, 0, 1, [1.0], variance=v) for i, v in enumerate([1.0, 2.0, 3.0, 8.0])]
    one = feed(FTTE(FTTEParams(buffer_size=4, staleness_exponent=0.0, variance_gamma=1.0, variance_floor=0.5)),
               ups, 0)[-1]
    np.testing.assert_allclose(one.weights, [1, 1, 2.5 / 3, 0.5], rtol=1e-12)
    two = feed(FTTE(FTTEParams(buffer_size=4, staleness_exponent=0.0, variance_gamma=2.0, variance_floor=0.5)),
               ups, 0)[-1]
    np.testing.assert_allclose(two.weights, [1, 1, (2.5 / 3) ** 2, 0.25], rtol=1e-12)
    # A floor of 1 switches the variance term off whatever gamma is.
    off = feed(FTTE(FTTEParams(buffer_size=4, staleness_exponent=0.0, variance_gamma=3.0, variance_floor=1.0)),
               ups, 0)[-1]
    np.testing.assert_allclose(off.weights, [1, 1, 1, 1], rtol=0)


def test_ftte_floor_halves_at_most() -> None:
    # gamma 1, floor 0.5: an update 4x the median variance gets 1/2, not 1/4 (no floor: 1/4).
    ups = [upd("a", 1, 0, 2, [1.0], variance=1.0), upd("b", 2, 0, 2, [1.0], variance=4.0),
           upd("c", 3, 0, 2, [1.0], variance=1.0)]
    floored = feed(FTTE(FTTEParams(buffer_size=3)), ups, 0)[-1]  # the default floor
    np.testing.assert_allclose(floored.weights, [2.0, 1.0, 2.0], rtol=1e-12)
    plain = feed(FTTE(FTTEParams(buffer_size=3, variance_floor=0.0)), ups, 0)[-1]
    np.testing.assert_allclose(plain.weights, [2.0, 0.5, 2.0], rtol=1e-12)


def test_ftte_agreement_by_hand() -> None:
    # n 1, 1, 2, no staleness or variance term: buffer mean m = ([1,0] + [0,1] + 2 [-1,0]) / 4 = [-1/4, 1/4];
    # cos(a, m) = -1/sqrt(2) -> 0, cos(b, m) = cos(c, m) = 1/sqrt(2).
    ups = [upd("a", 1, 0, 1, [1, 0]), upd("b", 2, 0, 1, [0, 1]), upd("c", 3, 0, 2, [-1, 0])]
    p = {"buffer_size": 3, "staleness_exponent": 0.0, "variance_gamma": 0.0}
    one = feed(FTTE(FTTEParams(**p, agreement_exponent=1.0)), ups, 0)[-1]
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(one.weights, [0, r, 2 * r], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(one.step, [-2 / 3, 1 / 3], rtol=1e-6)  # (r [0,1] + 2r [-1,0]) / 3r
    two = feed(FTTE(FTTEParams(**p, agreement_exponent=2.0)), ups, 0)[-1]
    np.testing.assert_allclose(two.weights, [0, 0.5, 1.0], rtol=1e-12, atol=1e-15)
    # The staleness discount is in the weights the mean is taken with: a at tau 3 (s = 1/2) changes m.
    stale = [upd("a", 1, 0, 4, [1, 0]), upd("b", 2, 3, 1, [0, 1])]  # m = (2 [1,0] + [0,1]) / 3
    agg = feed(FTTE(FTTEParams(buffer_size=2, variance_gamma=0.0, agreement_exponent=1.0)), stale, 3)[-1]
    np.testing.assert_allclose(agg.weights, [2 * 2 / math.sqrt(5), 1 / math.sqrt(5)], rtol=1e-12)


def test_ftte_agreement_without_direction_keeps_weights() -> None:
    # All-zero deltas, or deltas that cancel exactly: no mean direction, every factor 1.
    zero = feed(FTTE(FTTEParams(buffer_size=2, variance_gamma=0.0, agreement_exponent=1.0)),
                [upd("a", 1, 0, 3, [0.0, 0.0]), upd("b", 2, 0, 1, [0.0, 0.0])], 0)[-1]
    np.testing.assert_allclose(zero.weights, [3, 1], rtol=0)
    cancel = feed(FTTE(FTTEParams(buffer_size=2, variance_gamma=0.0, agreement_exponent=1.0)),
                  [upd("a", 1, 0, 1, [1.0, -2.0]), upd("b", 2, 0, 1, [-1.0, 2.0])], 0)[-1]
    np.testing.assert_allclose(cancel.weights, [1, 1], rtol=0)
    # A zero delta among others gets 0 (it has no direction), the others keep theirs.
    mixed = feed(FTTE(FTTEParams(buffer_size=2, variance_gamma=0.0, staleness_exponent=0.0,
                                 agreement_exponent=1.0)),
                 [upd("a", 1, 0, 1, [0.0, 0.0]), upd("b", 2, 0, 1, [0.0, 2.0])], 0)[-1]
    np.testing.assert_allclose(mixed.weights, [0, 1], rtol=1e-12)


def test_ftte_weighting_knobs_are_checkpointed() -> None:
    # A resume with another floor or agreement exponent would silently change the weighting: refused.
    s = FTTE(FTTEParams(buffer_size=3, variance_floor=0.5, agreement_exponent=1.0))
    feed(s, [upd("a", 1, 0, 2, [1.0, 0.0]), upd("b", 2, 0, 1, [0.0, 1.0])], 0)
    state = through_json(s.state_dict())
    again = FTTE(FTTEParams(buffer_size=3, variance_floor=0.5, agreement_exponent=1.0))
    again.load_state_dict(state)
    last = upd("c", 3, 0, 1, [1.0, 1.0], variance=4.0)
    np.testing.assert_array_equal(again.on_update(last, 0).weights, s.on_update(last, 0).weights)
    for other in (FTTEParams(buffer_size=3, variance_floor=0.5),
                  FTTEParams(buffer_size=3, agreement_exponent=1.0, variance_floor=0.0)):
        with pytest.raises(StrategyError, match="parameters"):
            FTTE(other).load_state_dict(state)


def test_fedbuff_is_ftte_without_variance() -> None:
    rng = np.random.default_rng(3)
    ups = random_updates(rng, 6, 50, version=9)
    fb = FedBuff(FedBuffParams(buffer_size=6, server_lr=0.7))
    ft = FTTE(FTTEParams(buffer_size=6, staleness_exponent=0.5, variance_gamma=0.0, server_lr=0.7))
    a, b = feed(fb, ups, 9)[-1], feed(ft, ups, 9)[-1]
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-14)
    np.testing.assert_allclose(a.weights, [u.n / math.sqrt(1 + 9 - u.base_version) for u in ups], rtol=1e-14)
    np.testing.assert_allclose(a.step, b.step, rtol=1e-6, atol=1e-7)
    # ... and the variance term does change FTTE's step on the same buffer.
    ftte = feed(FTTE(FTTEParams(buffer_size=6, server_lr=0.7)), ups, 9)[-1]
    assert not np.allclose(ftte.step, a.step)
    assert (fb.payload, ft.payload) == ("dense", "subset")


def test_buffered_k_smaller_than_fleet_and_fleet_smaller_than_k() -> None:
    s = FTTE(FTTEParams(buffer_size=3), fleet_size=10)
    out = feed(s, [upd(f"d{i}", i, 0, 1, [float(i)]) for i in range(7)], 0)
    assert [o is not None for o in out] == [False, False, True, False, False, True, False]
    assert len(s.buffer) == 1
    small = FedBuff(FedBuffParams(buffer_size=10), fleet_size=2)
    assert small.k == 2
    assert feed(small, [upd("a", 1, 0, 1, [1.0]), upd("b", 2, 0, 1, [3.0])], 0)[-1].step.tolist() == [2.0]
    # Every idle device gets work (semi-asynchronous), in the engine's order.
    assert s.select(["z", "a"], ["b"], 0, np.random.default_rng(0)) == ["z", "a"]


def test_buffered_fleet_shrink_and_duplicate() -> None:
    s = FTTE(FTTEParams(buffer_size=4))
    u = upd("a", 1, 0, 1, [1.0])
    assert feed(s, [u, u, upd("b", 2, 0, 1, [1.0])], 0) == [None, None, None]
    assert len(s.buffer) == 2 and s.counters["ignored"] == 1  # the same (device, task) is never applied twice
    assert s.on_lost("c", 3) is None and len(s.buffer) == 2  # a lost device does not touch the buffer
    s.fleet_size = 3
    agg = s.on_update(upd("c", 4, 0, 1, [4.0]), 0)
    assert agg is not None and len(agg.updates) == 3
    assert feed(s, [upd("d", 5, 1, 1, [1.0]), upd("e", 6, 1, 1, [2.0])], 1) == [None, None]
    assert s.poll(1) is None
    s.fleet_size = 2  # the fleet lost a device: the two buffered updates are now a full buffer
    agg = s.poll(1)
    assert agg is not None and agg.step.tolist() == [1.5] and s.buffer == []


# ---------------------------------------------------------------- FedAvg barrier

def test_fedavg_barrier_and_lost_device() -> None:
    s = FedAvg(FedAvgParams(clients_per_round=3))
    rng = np.random.default_rng(1)
    fleet = [f"d{i}" for i in range(6)]
    chosen = s.select(fleet, [], 5, rng)
    assert len(chosen) == 3 and set(chosen) <= set(fleet)
    rest = [d for d in fleet if d not in chosen]
    assert s.select(rest, chosen, 5, rng) == []  # barrier: nobody else while the round is in flight
    first, second, third = chosen
    assert s.on_update(upd(first, 1, 5, 10, [1.0, 0.0]), 5) is None
    assert s.on_update(upd("outsider", 9, 5, 10, [9.0, 9.0]), 5) is None  # not sampled: ignored
    assert s.on_update(upd(second, 2, 5, 30, [0.0, 1.0]), 5) is None
    assert s.select(rest + [first, second], [third], 5, rng) == []  # still waiting for the third
    agg = s.on_lost(third, 3)
    assert agg is not None and (agg.version, agg.new_version) == (5, 6)
    np.testing.assert_allclose(agg.step, [0.25, 0.75])
    np.testing.assert_array_equal(agg.weights, [10, 30])
    assert s.counters["ignored"] == 1
    # The round is over: the next select samples a new round; the lost device's late update is refused.
    assert s.on_update(upd(third, 3, 5, 10, [1.0, 1.0]), 6) is None
    assert len(s.select(fleet, [], 6, rng)) == 3


def test_fedavg_round_completes_on_last_arrival_and_resamples_when_all_lost() -> None:
    s = FedAvg(FedAvgParams(clients_per_round=8, server_lr=0.5))
    rng = np.random.default_rng(2)
    chosen = s.select(["b", "a"], [], 0, rng)
    assert chosen == ["a", "b"]  # fewer idle than m: all of them
    assert s.on_update(upd("a", 1, 0, 1, [2.0]), 0) is None
    agg = s.on_update(upd("b", 2, 0, 3, [6.0]), 0)
    assert agg.step.tolist() == [0.5 * (2.0 + 18.0) / 4]
    assert s.select(["a", "b"], [], 1, rng) == ["a", "b"]
    assert s.on_lost("a", 3) is None and s.on_lost("b", 4) is None
    assert not s.in_flight
    assert s.select(["a"], ["b"], 1, rng) == ["a"]  # re-sampled


def test_fedavg_ignores_an_old_update_from_a_device_sampled_again() -> None:
    s = FedAvg(FedAvgParams(clients_per_round=2))
    rng = np.random.default_rng(0)
    assert s.select(["a", "b"], [], 5, rng) == ["a", "b"]
    assert s.on_lost("a", 1) is None
    assert s.on_update(upd("b", 2, 5, 4, [1.0]), 5).new_version == 6
    assert s.select(["a", "b"], [], 6, rng) == ["a", "b"]
    assert s.on_update(upd("a", 1, 5, 4, [9.0]), 6) is None  # a's task from version 5 came back late
    assert s.pending == ["a", "b"] and s.counters["ignored"] == 1


def test_fedavg_selection_is_deterministic_for_a_seed() -> None:
    fleet = [f"dev{i:02d}" for i in range(20)]

    def picks(seed: int, order: list[str]) -> list[list[str]]:
        s, rng, out = FedAvg(), np.random.default_rng(seed), []
        for v in range(4):
            out.append(s.select(order, [], v, rng))
            for d in out[-1]:
                s.on_lost(d, 0)
        return out

    a = picks(42, fleet)
    assert a == picks(42, fleet[::-1])  # independent of the order the engine lists devices in
    assert a != picks(43, fleet)
    assert all(len(p) == 10 for p in a)


def test_semi_async_run_is_deterministic() -> None:
    """A toy engine loop: same seed, same steps bit for bit."""

    def run(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        s, model, version = get_strategy("ftte", fleet_size=5, buffer_size=3), np.zeros(8, np.float32), 0
        in_flight: list[tuple[str, int]] = []
        for task in range(30):
            for d in s.select([f"d{i}" for i in range(5) if all(f"d{i}" != x for x, _ in in_flight)],
                              [x for x, _ in in_flight], version, rng):
                in_flight.append((d, version))
            d, base = in_flight.pop(int(rng.integers(len(in_flight))))
            agg = s.on_update(upd(d, task, base, int(rng.integers(1, 50)), rng.normal(size=8),
                                  variance=float(rng.uniform(0.1, 2))), version)
            if agg is not None:
                model, version = model + agg.step, agg.new_version
        return model

    assert run(7).tobytes() == run(7).tobytes()
    assert run(7).tobytes() != run(8).tobytes()


# ---------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("name", ["ftte", "fedbuff"])
def test_buffered_checkpoint_round_trip(name: str) -> None:
    rng = np.random.default_rng(11)
    ups = random_updates(rng, 5, 33, version=4)
    a = get_strategy(name, fleet_size=9, buffer_size=5)
    feed(a, ups[:3], 4)
    b = get_strategy(name, buffer_size=5)
    b.load_state_dict(through_json(a.state_dict()))
    assert b.fleet_size == 9 and b.counters == a.counters
    ra, rb = feed(a, ups[3:], 4)[-1], feed(b, ups[3:], 4)[-1]
    assert ra.step.tobytes() == rb.step.tobytes()
    assert ra.weights.tobytes() == rb.weights.tobytes()
    assert [u.key for u in ra.updates] == [u.key for u in rb.updates]


def test_fedavg_checkpoint_round_trip_mid_round() -> None:
    a = FedAvg(FedAvgParams(clients_per_round=3))
    chosen = a.select(["a", "b", "c", "d"], [], 2, np.random.default_rng(0))
    a.on_update(upd(chosen[0], 1, 2, 7, [0.1, 0.2, 0.3]), 2)
    b = FedAvg(FedAvgParams(clients_per_round=3))
    b.load_state_dict(through_json(a.state_dict()))
    assert b.select(["d"], chosen, 2, np.random.default_rng(0)) == []  # the barrier survives the restart
    last = [upd(chosen[1], 2, 2, 5, [1.0, -1.0, 0.5]), upd(chosen[2], 3, 2, 9, [0.3, 0.3, 0.3])]
    ra, rb = feed(a, last, 2)[-1], feed(b, last, 2)[-1]
    assert rb is not None and ra.step.tobytes() == rb.step.tobytes() and len(rb.updates) == 3


def test_checkpoint_from_other_strategy_or_params_is_refused() -> None:
    state = through_json(FTTE(FTTEParams(buffer_size=4)).state_dict())
    with pytest.raises(StrategyError, match="fedbuff"):
        FedBuff().load_state_dict(state)
    with pytest.raises(StrategyError, match="parameters"):
        FTTE(FTTEParams(buffer_size=5)).load_state_dict(state)


# ---------------------------------------------------------------- parameters and registry

@pytest.mark.parametrize("cls, field, value", [
    (FTTEParams, "buffer_size", 0), (FTTEParams, "buffer_size", 2.5), (FTTEParams, "buffer_size", True),
    (FTTEParams, "staleness_exponent", -0.1), (FTTEParams, "variance_gamma", math.nan),
    (FTTEParams, "server_lr", 0.0), (FTTEParams, "variance_floor", -0.1), (FTTEParams, "variance_floor", 1.5),
    (FTTEParams, "agreement_exponent", -1.0), (FTTEParams, "agreement_exponent", math.inf),
    (FedBuffParams, "server_lr", math.inf), (FedAvgParams, "clients_per_round", 0),
])
def test_params_are_validated(cls, field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_defaults_and_registry() -> None:
    assert FTTEParams() == FTTEParams(buffer_size=10, staleness_exponent=0.5, variance_gamma=1.0, variance_floor=0.5,
                                      agreement_exponent=0.0, server_lr=1.0, concurrency=None, payload=None,
                                      server_optimizer="sgd")
    assert FedAvgParams().clients_per_round == 10 and FedBuffParams().buffer_size == 10
    assert set(STRATEGIES) == {"ftte", "fedbuff", "fedavg"}
    assert isinstance(get_strategy("fedavg", clients_per_round=2), FedAvg)
    with pytest.raises(TinyfedError, match="fedavg, fedbuff, ftte") as err:
        get_strategy("fedprox")
    assert err.value.fix
    with pytest.raises(TinyfedError, match="buffer_size"):
        get_strategy("fedavg", buffer_size=3)
    table = {"buffer_size": 3, "clients_per_round": 2, "variance_gamma": 0.0, "epochs": 4}  # a whole config table
    assert get_strategy("fedavg", ignore_extra=True, **table).params == FedAvgParams(clients_per_round=2)
    assert get_strategy("ftte", ignore_extra=True, **table).params == FTTEParams(buffer_size=3, variance_gamma=0.0)
    with pytest.raises(ValueError, match="fleet_size"):
        get_strategy("ftte", fleet_size=0)


# ---------------------------------------------------------------- payload, variants, shared knobs

def test_payload_is_a_parameter_with_the_strategy_default() -> None:
    assert (FTTE().payload, FedBuff().payload, FedAvg().payload) == ("subset", "dense", "dense")
    assert FedBuff(FedBuffParams(payload="subset")).payload == "subset"
    assert FTTE(FTTEParams(payload="dense")).payload == "dense"
    assert get_strategy("fedavg", payload="subset").payload == "subset"
    with pytest.raises(ValueError, match="payload"):
        FedAvgParams(payload="sparse")


@pytest.mark.parametrize("label, expect", [
    ("ftte", Variant("ftte", None, False, "ftte")),
    ("fedbuff@subset", Variant("fedbuff", "subset", False, "fedbuff@subset")),
    ("ftte@dense", Variant("ftte", "dense", False, "ftte@dense")),
    ("fedavg+overselect", Variant("fedavg", None, True, "fedavg+overselect")),
    (" fedavg@subset+overselect ", Variant("fedavg", "subset", True, "fedavg@subset+overselect")),
])
def test_parse_variant(label: str, expect: Variant) -> None:
    assert parse_variant(label) == expect


@pytest.mark.parametrize("label, problem, fix", [
    ("fedbuf@subset", "'fedbuf' (in label 'fedbuf@subset') is not a strategy", "did you mean 'fedbuff'?"),
    ("fedbuff@sub", "names payload 'sub'", "@subset"),
    ("fedavg+over", "unknown modifier +over", "+overselect"),
    ("fedavg+overselect+overselect", "+overselect more than once", "given once"),
    ("fedavg+overselect@subset", "unknown modifier +overselect@subset", "after the payload"),
    ("ftte+overselect", "ftte does not sample rounds", "+overselect is for fedavg"),
    ("@subset", "names no strategy", "NAME[@subset|@dense][+overselect]"),
])
def test_parse_variant_errors_say_what_to_write(label: str, problem: str, fix: str) -> None:
    with pytest.raises(StrategyError) as err:
        parse_variant(label)
    assert problem in err.value.problem and fix in (err.value.fix or "")


def test_build_variant_sets_payload_overselect_and_label() -> None:
    # a config table ([strategy_params]): its overselect_factor is the factor of +overselect labels
    table = {"buffer_size": 4, "clients_per_round": 3, "variance_gamma": 0.0, "overselect_factor": 1.5,
             "payload": "dense"}
    fb = build_variant(parse_variant("fedbuff@subset"), fleet_size=20, **table)
    assert isinstance(fb, FedBuff) and fb.payload == "subset" and fb.label == "fedbuff@subset" and fb.k == 4
    fa = build_variant("fedavg@subset+overselect", fleet_size=20, **table)
    assert fa.params.overselect_factor == 1.5 and fa.payload == "subset" and fa.sample_size == 5  # ceil(4.5)
    plain = build_variant("fedavg", **table)
    assert plain.params.overselect_factor == 1.0 and plain.label == "fedavg" and plain.sample_size == 3
    assert build_variant("fedavg+overselect").params.overselect_factor == 2.0  # the default factor
    assert FedAvg(FedAvgParams(clients_per_round=10, overselect_factor=1.3)).sample_size == 13  # not 14
    with pytest.raises(TinyfedError, match="overselect_factor"):
        build_variant("fedavg+overselect", overselect_factor=0.5)


def test_fedbuff_staleness_exponent() -> None:
    ups = [upd("a", 1, 3, 10, [1.0]), upd("b", 2, 0, 10, [0.0])]  # tau 0 and 3
    agg = feed(FedBuff(FedBuffParams(buffer_size=2, staleness_exponent=1.0)), ups, 3)[-1]
    np.testing.assert_allclose(agg.weights, [10.0, 10.0 / 4], rtol=1e-15)
    flat = feed(FedBuff(FedBuffParams(buffer_size=2, staleness_exponent=0.0)), ups, 3)[-1]
    assert flat.step.tolist() == [0.5]


def test_concurrency_caps_devices_in_training() -> None:
    s = FedBuff(FedBuffParams(buffer_size=2, concurrency=3))
    idle = [f"d{i}" for i in range(8)]
    a = s.select(idle, [], 0, np.random.default_rng(5))
    assert len(a) == 3 and a == sorted(a) and set(a) <= set(idle)
    assert a == s.select(idle[::-1], [], 0, np.random.default_rng(5))  # the seed decides, not the listing order
    assert len(s.select(idle[3:], ["d0", "d1"], 0, np.random.default_rng(5))) == 1
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    assert s.select(idle, ["d0", "d1", "d2"], 0, rng) == [] and rng.bit_generator.state == before
    assert s.select(["d7"], ["d0"], 0, rng) == ["d7"]
    assert FTTE(FTTEParams()).select(idle, ["x"] * 50, 0, rng) == idle  # None: every idle device
    with pytest.raises(ValueError, match="concurrency"):
        FTTEParams(concurrency=0)


def test_fedavg_overselection_closes_at_m_and_ignores_the_rest() -> None:
    s = FedAvg(FedAvgParams(clients_per_round=2, overselect_factor=2.0))
    chosen = s.select([f"d{i}" for i in range(7)], [], 4, np.random.default_rng(3))
    assert len(chosen) == 4  # ceil(2 * 2)
    assert s.on_update(upd(chosen[2], 1, 4, 10, [1.0]), 4) is None
    agg = s.on_update(upd(chosen[0], 2, 4, 30, [3.0]), 4)
    assert agg is not None and len(agg.updates) == 2 and agg.step.tolist() == [2.5]  # (10 * 1 + 30 * 3) / 40
    assert not s.in_flight
    assert s.on_update(upd(chosen[1], 3, 4, 10, [9.0]), 5) is None  # late: its round closed at m arrivals
    assert s.counters["ignored"] == 1 and s.counters["received"] == 2
    # idle devices capped: with 3 idle, 3 are sampled and all of them are waited for
    s2 = FedAvg(FedAvgParams(clients_per_round=2, overselect_factor=3.0))
    assert s2.select(["a", "b", "c"], [], 0, np.random.default_rng(0)) == ["a", "b", "c"]
    assert s2.on_lost("a", 1) is None and s2.on_update(upd("b", 2, 0, 1, [1.0]), 0) is None
    assert s2.on_update(upd("c", 3, 0, 1, [3.0]), 0).step.tolist() == [2.0]


def test_fedavg_deadline_closes_with_arrivals_or_drops_the_round() -> None:
    s = FedAvg(FedAvgParams(clients_per_round=3, round_deadline_s=60.0))
    assert s.deadline() == 60.0 and FedAvg().deadline() is None and FTTE().deadline() is None
    rng = np.random.default_rng(0)
    chosen = s.select([f"d{i}" for i in range(5)], [], 2, rng)
    assert s.on_update(upd(chosen[1], 1, 2, 8, [2.0, -2.0]), 2) is None
    assert s.on_deadline(1) is None and s.in_flight  # another round's deadline: nothing happens
    agg = s.on_deadline(2)
    assert agg is not None and [u.device_id for u in agg.updates] == [chosen[1]] and agg.new_version == 3
    assert agg.step.tolist() == [2.0, -2.0] and not s.in_flight
    assert s.on_update(upd(chosen[0], 2, 2, 8, [1.0, 1.0]), 3) is None and s.counters["ignored"] == 1
    assert s.on_deadline(2) is None  # fired twice: the round is long closed
    # nothing in by the deadline: the round is dropped and the next select samples a new one
    again = s.select(["d0", "d1", "d2", "d3"], [], 3, rng)
    assert len(again) == 3 and s.on_deadline(3) is None and not s.in_flight
    assert len(s.select(["d4"], again, 3, rng)) == 1


def test_sgd_is_the_plain_step_bit_for_bit() -> None:
    rng = np.random.default_rng(4)
    ups = random_updates(rng, 5, 40, version=6)
    for lr in (1.0, 0.3):
        agg = feed(FTTE(FTTEParams(buffer_size=5, server_lr=lr, server_optimizer="sgd")), ups, 6)[-1]
        assert agg.step.tobytes() == weighted_step(ups, agg.weights, lr).tobytes()


def _single(strategy: Strategy, deltas: list[list[float]]) -> list[list[float]]:
    """Steps of a K = 1 buffer fed one update per version: each pseudo-gradient is that update's delta."""
    return [feed(strategy, [upd("a", v, v, 1, d)], v)[-1].step.tolist() for v, d in enumerate(deltas)]


def test_server_momentum_by_hand() -> None:
    s = FedBuff(FedBuffParams(buffer_size=1, server_lr=2.0, server_optimizer="momentum", server_momentum=0.5))
    # m1 = g1 = (1, -2): step 2 * m1; m2 = 0.5 * m1 + (3, 0) = (3.5, -1): step (7, -2)
    assert _single(s, [[1.0, -2.0], [3.0, 0.0]]) == [[2.0, -4.0], [7.0, -2.0]]


def test_server_adam_by_hand() -> None:
    s = FTTE(FTTEParams(buffer_size=1, server_optimizer="adam", server_momentum=0.5, server_beta2=0.75,
                        server_tau=0.1))
    steps = _single(s, [[1.0, -2.0], [0.0, 2.0]])
    # v0 = tau^2 = 0.01, m0 = 0. Step 1: m = 0.5 * g = (0.5, -1); v = 0.75 * 0.01 + 0.25 * g^2 = (0.2575, 1.0075)
    np.testing.assert_allclose(steps[0], [0.5 / (math.sqrt(0.2575) + 0.1), -1 / (math.sqrt(1.0075) + 0.1)], rtol=1e-6)
    np.testing.assert_allclose(steps[0], [0.8231204, -0.9060080], rtol=1e-6)
    # Step 2: m = (0.25, -0.5 + 1) = (0.25, 0.5); v = (0.193125, 0.755625 + 1) = (0.193125, 1.755625)
    np.testing.assert_allclose(steps[1], [0.25 / (math.sqrt(0.193125) + 0.1), 0.5 / (math.sqrt(1.755625) + 0.1)],
                               rtol=1e-6)


def test_server_yogi_by_hand() -> None:
    s = FedAvg(FedAvgParams(clients_per_round=1, server_lr=0.5, server_optimizer="yogi", server_momentum=0.5,
                            server_beta2=0.75, server_tau=0.1))
    steps = []
    for v, d in enumerate([[1.0, -2.0], [0.1, 0.0]]):
        (dev,) = s.select(["a"], [], v, np.random.default_rng(v))
        steps.append(s.on_update(upd(dev, v, v, 1, d), v).step.tolist())
    # Step 1: v = 0.01 - 0.25 * g^2 * sign(0.01 - g^2) = (0.26, 1.01); m = (0.5, -1)
    np.testing.assert_allclose(steps[0], [0.5 * 0.5 / (math.sqrt(0.26) + 0.1), 0.5 * -1 / (math.sqrt(1.01) + 0.1)],
                               rtol=1e-6)
    # Step 2: g^2 = (0.01, 0): v = (0.26 - 0.0025, 1.01) (Adam would shrink it to (0.1975, 0.7575)); m = (0.3, -0.5)
    np.testing.assert_allclose(steps[1], [0.5 * 0.3 / (math.sqrt(0.2575) + 0.1), 0.5 * -0.5 / (math.sqrt(1.01) + 0.1)],
                               rtol=1e-6)
    np.testing.assert_allclose(s.optimizer.v, [0.2575, 1.01], rtol=1e-6)


@pytest.mark.parametrize("kind", ["momentum", "adam", "yogi"])
def test_server_optimizer_state_round_trips_through_a_checkpoint(kind: str, tmp_path) -> None:
    from tinyfed.host.checkpoint import Checkpoint, read_checkpoint, write_checkpoint

    rng = np.random.default_rng(8)
    ups = random_updates(rng, 7, 21, version=2)
    a = get_strategy("ftte", buffer_size=2, server_optimizer=kind, server_lr=0.1)
    assert feed(a, ups[:3], 2)[1] is not None  # one step taken, one update buffered
    write_checkpoint(tmp_path, Checkpoint(version=3, globals={"w": np.zeros(21, np.float32)},
                                          strategy_state={"strategy": a.state_dict()}))
    state = read_checkpoint(tmp_path).strategy_state["strategy"]
    assert state["optimizer"]["m"].dtype == np.float32 and state["optimizer"]["steps"] == 1
    b = get_strategy("ftte", buffer_size=2, server_optimizer=kind, server_lr=0.1)
    b.load_state_dict(state)
    for u in ups[3:]:
        ra, rb = a.on_update(u, 3), b.on_update(u, 3)
        assert (ra is None) == (rb is None)
        if ra is not None:
            assert ra.step.tobytes() == rb.step.tobytes()
    assert a.optimizer.m.tobytes() == b.optimizer.m.tobytes()
    with pytest.raises(StrategyError, match="parameters"):
        get_strategy("ftte", buffer_size=2, server_optimizer="sgd", server_lr=0.1).load_state_dict(state)


def test_a_checkpoint_from_before_the_shared_knobs_resumes_with_their_defaults() -> None:
    state = through_json(FedBuff(FedBuffParams(buffer_size=3)).state_dict())
    for key in ("payload", "server_optimizer", "server_momentum", "server_beta2", "server_tau", "concurrency",
                "staleness_exponent"):
        del state["params"][key]
    FedBuff(FedBuffParams(buffer_size=3)).load_state_dict(state)
    with pytest.raises(StrategyError, match="parameters"):
        FedBuff(FedBuffParams(buffer_size=3, payload="subset")).load_state_dict(state)


@pytest.mark.parametrize("cls, field, value", [
    (FTTEParams, "server_optimizer", "adagrad"), (FedBuffParams, "server_momentum", 1.0),
    (FedAvgParams, "server_beta2", -0.1), (FTTEParams, "server_tau", 0.0), (FedAvgParams, "overselect_factor", 0.9),
    (FedAvgParams, "round_deadline_s", 0.0), (FedBuffParams, "concurrency", 1.5),
])
def test_shared_params_are_validated(cls, field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


# ---------------------------------------------------------------- check_update

def _check(u: Update, **kw):
    args = {"global_version": 5, "size": 4, "norm_bound": 10.0, "max_staleness": 3, "seen_tasks": {("old", 1)}}
    return check_update(u, **(args | kw))


def test_check_update_accepts_a_good_update() -> None:
    assert _check(upd("a", 1, 2, 10, [1.0, -2.0, 0.5, 0.0])) is None  # staleness 3 == bound
    assert _check(upd("a", 1, 5, 10, [100.0] * 4), norm_bound=None, max_staleness=None) is None


@pytest.mark.parametrize("update, reason", [
    (upd("a", 1, 5, 10, [1.0, math.nan, 0.0, 0.0]), Reason.NON_FINITE),
    (upd("a", 1, 5, 10, [1.0, math.inf, 0.0, 0.0]), Reason.NON_FINITE),
    (Update("a", 1, 5, 10, math.nan, 0.1, np.zeros(4, np.float32)), Reason.NON_FINITE),
    (upd("a", 1, 5, 10, [0.0] * 4, variance=math.inf), Reason.NON_FINITE),
    (upd("a", 1, 5, 10, [0.0] * 5), Reason.BAD_SHAPE),
    (Update("a", 1, 5, 10, 0.1, 0.1, np.zeros((2, 2), np.float32)), Reason.BAD_SHAPE),
    (upd("a", 1, 5, 10, [6.0, 6.0, 6.0, 6.0]), Reason.NORM_TOO_LARGE),  # norm 12 > 10
    (upd("a", 1, 5, 10, [3e38] * 4), Reason.NORM_TOO_LARGE),  # norm overflows float32, not float64
    (upd("a", 1, 6, 10, [0.0] * 4), Reason.FUTURE_VERSION),
    (upd("a", 1, 1, 10, [0.0] * 4), Reason.TOO_STALE),
    (upd("old", 1, 5, 10, [0.0] * 4), Reason.REPLAY),
    (upd("a", 1, 5, 0, [0.0] * 4), Reason.BAD_N),
    (upd("a", 1, 5, 10, [0.0] * 4, variance=-1.0), Reason.BAD_VARIANCE),
    (upd("a", 1, 5, 10, [0.0] * 4, loss=-0.5), Reason.BAD_LOSS),
    (upd("a", 1, 5, 10, [0.0] * 4, loss=2 * MAX_LOSS), Reason.BAD_LOSS),
])
def test_check_update_rejects(update: Update, reason: Reason) -> None:
    r = _check(update)
    assert r is not None and r.reason == reason and r.reason == reason.value
    assert "'a'" in r.message or "'old'" in r.message


def test_update_delta_is_read_only_float32_and_caller_array_untouched() -> None:
    raw = np.array([1.0, 2.0], dtype=np.float64)
    u = upd("a", 1, 0, 1, raw)
    assert u.delta.dtype == np.float32 and not u.delta.flags.writeable
    own = np.array([1.0, 2.0], dtype=np.float32)
    u2 = Update("a", 1, 0, 1, 0.0, 0.0, own)
    assert own.flags.writeable and not u2.delta.flags.writeable


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", ["normal", "heavy", "one_spike", "constant"])
def test_an_honest_boards_variance_always_fits_its_int8_delta(kind: str, per_channel: bool) -> None:
    """The board reports the variance of its float delta and sends it rounded to int8: the check
    must accept every such pair, however the values are spread (the bound is a proof, this its test)."""
    from tinyfed.firmware_bridge.link.train_link import quantize_flat

    rng = np.random.default_rng(7)
    shapes = [(8, 75), (16, 40), (4, 1)]
    size = sum(c * p for c, p in shapes)
    for _ in range(20):
        d = {"normal": lambda: rng.normal(0, 1e-3, size), "heavy": lambda: rng.standard_cauchy(size) * 1e-4,
             "one_spike": lambda: np.where(np.arange(size) == rng.integers(size), 5.0, rng.normal(0, 1e-3, size)),
             "constant": lambda: np.full(size, 0.25)}[kind]().astype(np.float32)
        q, scales = quantize_flat(d, shapes, per_channel)
        received, k, s = [], 0, 0
        for c, p in shapes:
            block = q[k:k + c * p].astype(np.float32).reshape(c, p)
            received.append(block * (scales[s:s + c, None] if per_channel else scales[s]))
            k, s = k + c * p, s + (c if per_channel else 1)
        delta = np.concatenate([r.ravel() for r in received])
        claimed = float(np.float32(d.astype(np.float64).var()))
        assert variance_problem(claimed, delta) is None, (kind, claimed, float(delta.var()))


def test_a_variance_that_cannot_be_the_deltas_is_refused() -> None:
    """Variance 0 with a delta of norm 99 (FTTE would give it the median update's full weight), or a
    variance far above what the delta holds."""
    rng = np.random.default_rng(3)
    d = rng.normal(size=5000)
    d *= 99.0 / np.linalg.norm(d)
    for claimed in (0.0, 100.0 * float(d.var()), float(d.var()) / 100.0):
        u = upd("a", 1, 5, 10, d, variance=claimed)
        r = check_update(u, global_version=5, size=d.size, norm_bound=100.0, max_staleness=3, seen_tasks=set(),
                         check_variance=True)
        assert r is not None and r.reason == Reason.BAD_VARIANCE and "variance" in r.message
        assert check_update(u, global_version=5, size=d.size, norm_bound=100.0, max_staleness=3,
                            seen_tasks=set()) is None  # off unless asked for (made-up variances in unit tests)
    good = upd("a", 1, 5, 10, d, variance=float(np.float32(d.var())))
    assert check_update(good, global_version=5, size=d.size, norm_bound=100.0, max_staleness=3, seen_tasks=set(),
                        check_variance=True) is None
