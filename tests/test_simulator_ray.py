"""The Ray backend gives the local backend's run: same events, same final model, for a seed."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tinyfed.cli import cli
from tinyfed.host.config import StrategyParams
from tinyfed.host.simulator import Study, StudyConfig

ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install 'tinyfed[ray]'` (make test installs it)")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    cfg = StudyConfig(model="digits_cnn", clients=24, partition="iid", board_mix="nrf52840:0.5,apollo3:0.5",
                      stragglers=0.5, seed=3, target_accuracy=None, max_versions=5, eval_samples=120,
                      strategy_params=StrategyParams(buffer_size=4, clients_per_round=4))
    return Study(cfg, work_dir=tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def backend():
    from tinyfed.host.ray_backend import RayBackend

    with RayBackend(num_cpus=2) as b:
        yield b


@pytest.mark.parametrize("strategy", ["ftte", "fedbuff", "fedavg"])
def test_ray_and_local_backends_give_the_same_run(study: Study, backend, strategy: str) -> None:
    local = study.run(strategy)
    before = backend.submitted
    remote = study.run(strategy, backend=backend)
    # Ray trains only a window of next arrivals ahead, not every task at its dispatch
    assert backend.submitted - before <= remote.board_steps + backend.lookahead
    if strategy != "fedavg":  # the buffered strategies keep every board busy: most tasks are never collected
        assert remote.tasks > remote.board_steps + backend.lookahead
    assert remote.event_digest == local.event_digest
    assert np.array_equal(remote.vector, local.vector)
    assert (remote.versions, remote.sim_seconds, remote.board_steps) == (local.versions, local.sim_seconds,
                                                                        local.board_steps)
    assert [r["accuracy"] for r in remote.history] == [r["accuracy"] for r in local.history]
    assert remote.versions == 5


def test_address_without_the_ray_backend_is_refused() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--address", "10.0.0.1:6379", "--count", "4"])
    assert result.exit_code != 0 and "--backend ray" in result.output
