"""The round state both loops share: dispatch, judge, count and apply, each task ending once."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfed.host.rounds import RoundError, RoundState, TaskEnd
from tinyfed.host.strategies import get_strategy
from tinyfed.host.updates import Reason, Update

SIZE = 4


def _rounds(name: str = "fedbuff", devices: int = 3, max_staleness: int | None = 20, **params: int) -> RoundState:
    strategy = get_strategy(name, **params)
    return RoundState(strategy, np.zeros(SIZE, np.float32), np.random.default_rng(7), fleet_size=devices,
                      norm_bound=100.0, max_staleness=max_staleness)


def _update(rounds: RoundState, task_id: int, value: float = 0.5, version: int | None = None) -> Update:
    task = rounds.in_flight[task_id]
    return Update(task.device, task_id, task.version if version is None else version, 10, 0.1, 0.01,
                  np.full(SIZE, value, np.float32))


def test_dispatch_draws_seeds_in_order_and_tracks_tasks() -> None:
    rounds = _rounds()
    assert rounds.strategy.fleet_size == 3
    tasks = rounds.dispatch(["a", "b", "c"])
    rng = np.random.default_rng(7)
    assert [t.seed for t in tasks] == [int(rng.integers(0, 2**31 - 1)) for _ in range(3)]
    assert [(t.task_id, t.device, t.version) for t in tasks] == [(0, "a", 0), (1, "b", 0), (2, "c", 0)]
    assert rounds.busy == ["a", "b", "c"] and rounds.next_task == 3


def test_each_task_ends_once_and_the_step_moves_the_version() -> None:
    rounds = _rounds(buffer_size=2)
    rounds.dispatch(["a", "b", "c"])
    first = rounds.arrive(0, _update(rounds, 0))
    assert first.end is TaskEnd.ACCEPTED and first.aggregate is None
    with pytest.raises(RoundError):
        rounds.lose(0, "dropout")
    lost = rounds.lose(2, "dropout")
    assert lost.end is TaskEnd.LOST and rounds.losses == {"dropout": 1}
    second = rounds.arrive(1, _update(rounds, 1))
    assert second.aggregate is not None
    before = rounds.vector
    rounds.apply(second.aggregate)
    assert rounds.version == 1 and np.all(before == 0), "the old vector is left as it was"
    assert rounds.vector.dtype == np.float32 and np.allclose(rounds.vector, 0.5)
    assert (rounds.accepted, rounds.rejected, rounds.lost, len(rounds.in_flight)) == (2, 0, 1, 0)
    assert rounds.seen == {("a", 0), ("b", 1)}


def test_rejections_are_counted_by_reason() -> None:
    rounds = _rounds(max_staleness=0)
    rounds.dispatch(["a", "b", "c"])
    bad = rounds.arrive(0, _update(rounds, 0, value=np.nan))
    assert bad.end is TaskEnd.REJECTED and bad.rejection is not None and bad.rejection.reason == Reason.NON_FINITE
    replay = rounds.arrive(1, _update(rounds, 1, version=-1))  # not the version its task sent
    assert replay.rejection is not None and replay.rejection.reason == Reason.REPLAY
    rounds.version = 1  # as after a step: task 2 (version 0) is now too stale
    assert rounds.too_stale(rounds.in_flight[2])
    stale = rounds.arrive(2, _update(rounds, 2))
    assert stale.rejection is not None and stale.rejection.reason == Reason.TOO_STALE
    assert rounds.rejections == {"non_finite": 1, "replay": 1, "too_stale": 1} and rounds.rejected == 3


def test_restored_tasks_are_in_flight_until_lost_and_abandon_ends_the_rest() -> None:
    rounds = _rounds("fedavg", clients_per_round=2)
    rounds.restore(vector=np.ones(SIZE, np.float32), version=3, rng=None, seen=[("a", 1)], next_task=9,
                   in_flight=[(7, "a", 3), (8, "b", 3)], bytes_down=10, bytes_up=20, accepted=1, rejected=0, lost=0)
    assert list(rounds.in_flight) == [7, 8] and rounds.in_flight[7].seed is None
    assert rounds.lose(7, "host restarted").end is TaskEnd.LOST
    ended = rounds.abandon()
    assert [(o.task.task_id, o.end) for o in ended] == [(8, TaskEnd.UNFINISHED)]
    assert (rounds.lost, rounds.unfinished, rounds.in_flight, rounds.next_task) == (1, 1, {}, 9)
