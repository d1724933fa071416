"""Nested subsets through the engine on in-process simulated boards of two memory classes: each board
is provisioned with its class's fragment and program, trains its slice of the global vector, and the
event log and the summary show each class's update size."""

from __future__ import annotations

import numpy as np
import pytest
from _har_setup import har_subset_setup

from tinyfed.firmware_bridge.twin.sim import forget_sim_boards
from tinyfed.host.engine import Engine, Limits, LocalTraining
from tinyfed.host.events import EventLog, read_events, summarize
from tinyfed.host.setup import DeviceSpec
from tinyfed.host.strategies import get_strategy

pytestmark = pytest.mark.slow


def _devices() -> list[DeviceSpec]:
    boards = ["mps2-an386", "mps2-an386", "mps2-an386-large", "mps2-an386-large"]
    return [DeviceSpec(f"n{i}", f"sim://{b}?name=n{i}", b) for i, b in enumerate(boards)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    return har_subset_setup(tmp_path_factory, _devices(), start="fresh-head", core_budget=0.1, nested=True)


def test_a_nested_run_on_two_memory_classes(setup, tmp_path) -> None:
    assert setup.classes is not None and set(setup.classes) == {"mps2-an386", "mps2-an386-large"}
    small, large = setup.classes["mps2-an386"], setup.classes["mps2-an386-large"]
    assert small.values < large.values <= setup.w0.size
    forget_sim_boards()
    strategy = get_strategy("ftte", buffer_size=2)
    with EventLog(tmp_path) as events:
        result = Engine(setup, _devices(), strategy, events, training=LocalTraining(epochs=1, lr=0.01),
                        limits=Limits(max_versions=4), seed=1).run()
    rows = list(read_events(tmp_path))
    summary = summarize(rows)
    assert result.versions == 4 and summary["all_tasks_accounted"]
    start = next(r for r in rows if r["kind"] == "run_start")
    assert start["classes"] == {"mps2-an386": small.values, "mps2-an386-large": large.values}
    sizes = {r["device"]: r["values"] for r in rows if r["kind"] == "arrival"}
    assert {sizes[d] for d in sizes if d in ("n0", "n1")} <= {small.values}
    assert {sizes[d] for d in sizes if d in ("n2", "n3")} <= {large.values}
    assert set(sizes.values()) == {small.values, large.values}
    assert result.vector.size == setup.w0.size
    moved = np.flatnonzero(result.vector != setup.w0)
    assert np.setdiff1d(moved, large.index).size == 0  # nothing moves outside what some class trains
    assert np.intersect1d(moved, np.setdiff1d(large.index, small.index)).size > 0
    classes = result.to_dict()["classes"]
    assert classes["mps2-an386"]["bytes_per_update"] < classes["mps2-an386-large"]["bytes_per_update"]
    assert classes["mps2-an386"]["training_memory_bytes"] < classes["mps2-an386-large"]["training_memory_bytes"]
