"""Synchronous FedAvg (McMahan et al., 2017), the baseline FTTE's speed-up is measured against.

A round samples m devices, sends them the dense model (or w*, with ``payload = "subset"``) and
waits for all of them (the barrier: nobody else gets work meanwhile). A device that vanishes is
no longer waited for, so one lost board cannot stall the run; a round that loses every device is
dropped and sampled again.

As production systems run it (Bonawitz et al., 2019), a round may over-select and have a deadline:
``overselect_factor`` f samples ceil(f * m) devices and closes the round as soon as m of them
have arrived; ``round_deadline_s`` closes it that many seconds after its dispatch with whatever
arrived (a round with no arrival at its deadline is dropped and sampled again). Updates that come
in after their round closed are ignored (counted in ``counters["ignored"]``). The strategy owns no
clock: the loop calls :meth:`FedAvg.on_deadline` when the deadline passes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyfed.host.strategies.base import (
    Aggregate,
    ServerParams,
    Strategy,
    sample_counts,
    sample_devices,
    stack_deltas,
    staleness_of,
    store_float,
    store_int,
    update_to_state,
    updates_from_state,
)
from tinyfed.host.updates import Update

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FedAvgParams(ServerParams):
    """m = ``clients_per_round``, eta_g = ``server_lr`` (1 is plain FedAvg); ``round_deadline_s``
    (None: wait for every sampled device) and ``overselect_factor`` f >= 1 (ceil(f * m) sampled,
    the round closes at m arrivals). The shared knobs are :class:`ServerParams`'."""

    clients_per_round: int = 10
    server_lr: float = 1.0
    round_deadline_s: float | None = None
    overselect_factor: float = 1.0

    def __post_init__(self) -> None:
        store_int(self, "clients_per_round", 1)
        if self.round_deadline_s is not None:
            store_float(self, "round_deadline_s", low=0.0, low_open=True)
        store_float(self, "overselect_factor", low=1.0)
        self.check_server()


class FedAvg(Strategy):
    """w_i = n_i over the round's arrivals; step = eta_g * sum(w_i * delta_i) / sum(w_i)."""

    name = "fedavg"
    listing_order = 2
    samples_the_fleet = True
    default_payload = "dense"
    Params = FedAvgParams

    def __init__(self, params: FedAvgParams | None = None, *, fleet_size: int | None = None) -> None:
        super().__init__(params, fleet_size=fleet_size)
        self.round_version: int | None = None  # None: no round in flight
        self.sampled: list[str] = []
        self.pending: list[str] = []  # sampled devices not yet in and not lost
        self.arrived: list[Update] = []

    @property
    def in_flight(self) -> bool:
        return self.round_version is not None

    @property
    def sample_size(self) -> int:
        """Devices a round samples (before capping by the idle ones): ceil(f * m), with f * m rounded to
        9 decimals first so that 1.3 * 10 (13.000000000000002 in binary) samples 13, not 14."""
        p = self.params
        return math.ceil(round(p.overselect_factor * p.clients_per_round, 9))

    def select(self, idle: list[str], busy: list[str], version: int, rng: np.random.Generator) -> list[str]:
        if self.in_flight or not idle:
            return []
        self.sampled = sample_devices(idle, self.sample_size, rng)
        self.pending = list(self.sampled)
        self.arrived = []
        self.round_version = int(version)
        return list(self.sampled)

    def _outside_round(self, device_id: str, base_version: int) -> bool:
        return not self.in_flight or device_id not in self.pending or base_version != self.round_version

    def will_ignore(self, device_id: str, base_version: int) -> bool:
        """A straggler of a round that closed without it (e.g. one of an over-selected round's late ones)."""
        return self._outside_round(device_id, base_version)

    def on_update(self, update: Update, version: int) -> Aggregate | None:
        if self._outside_round(update.device_id, update.base_version):
            # A straggler from a round that already closed without it: FedAvg has no place for it.
            log.info("fedavg: update %s (version %d) is not part of the round in flight; ignored",
                     update.key, update.base_version)
            self.counters["ignored"] += 1
            return None
        self.pending.remove(update.device_id)
        self.arrived.append(update)
        self.counters["received"] += 1
        if not self.pending or len(self.arrived) >= self.params.clients_per_round:
            return self._close(version)
        return None

    def on_lost(self, device_id: str, task_id: int) -> Aggregate | None:
        self.counters["lost"] += 1
        if not self.in_flight or device_id not in self.pending:
            return None
        self.pending.remove(device_id)
        if self.pending:
            return None
        if not self.arrived:
            log.info("fedavg: every device of the round at version %d was lost; sampling again", self.round_version)
            self._clear()
            return None
        # The barrier keeps the global version at the round's while the round is in flight.
        assert self.round_version is not None
        return self._close(self.round_version)

    def deadline(self) -> float | None:
        return self.params.round_deadline_s

    def on_deadline(self, version: int) -> Aggregate | None:
        """Close the round dispatched at ``version`` with its arrivals, or drop it when none came."""
        if not self.in_flight or version != self.round_version:
            return None  # that round closed before its deadline
        if not self.arrived:
            log.info("fedavg: no update of the round at version %d arrived by its deadline; sampling again",
                     self.round_version)
            self._clear()
            return None
        return self._close(version)

    def _close(self, version: int) -> Aggregate:
        updates = self.arrived
        self._clear()
        return self._step(updates, sample_counts(updates), staleness_of(updates, version), version)

    def _clear(self) -> None:
        self.round_version, self.sampled, self.pending, self.arrived = None, [], [], []

    def _state(self) -> dict[str, Any]:
        return {"round_version": self.round_version, "sampled": list(self.sampled), "pending": list(self.pending),
                "buffer": [update_to_state(u) for u in self.arrived], "deltas": stack_deltas(self.arrived)}

    def _load_state(self, state: dict[str, Any]) -> None:
        rv = state["round_version"]
        self.round_version = None if rv is None else int(rv)
        self.sampled = [str(d) for d in state["sampled"]]
        self.pending = [str(d) for d in state["pending"]]
        self.arrived = updates_from_state(state["buffer"], state["deltas"])
