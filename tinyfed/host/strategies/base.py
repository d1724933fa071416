"""The one interface every aggregation strategy implements, and the buffered pattern two of them share.

The engine owns time, devices, the model and its version; a strategy owns only the decisions:
who gets a task now, when the updates received are enough for a global step, and what that
step is. Strategies are pure and deterministic (no I/O, no clocks, randomness only from the
generator the engine passes in), so a run replays exactly and a checkpoint resumes exactly.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tinyfed.errors import TinyfedError
from tinyfed.host.updates import Update

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

STATE_FORMAT = 1


class StrategyError(TinyfedError):
    """A strategy cannot be built or resumed as asked."""


class StrategyParamError(StrategyError, ValueError):
    """A strategy parameter is out of range (also a ValueError, for callers that validate generically)."""


def check_int(name: str, value: Any, low: int) -> None:
    """Reject non-integers (bool included) and integers below ``low``, naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise StrategyParamError(f"{name} = {value!r} is out of range", fix=f"use an integer >= {low}")


def check_float(name: str, value: Any, *, low: float, low_open: bool = False) -> None:
    """Reject non-numbers, non-finite numbers and numbers below ``low`` (or at it, if open)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value)) and (value > low if low_open else value >= low)
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        raise StrategyParamError(f"{name} = {value!r} is out of range", fix=f"use a finite number {bound}")


def store_int(params: Any, name: str, low: int) -> None:
    """Check field ``name`` of a frozen params dataclass (:func:`check_int`) and store it back as a plain int."""
    value = getattr(params, name)
    check_int(name, value, low)
    object.__setattr__(params, name, int(value))


def store_float(params: Any, name: str, *, low: float, low_open: bool = False) -> None:
    """Check field ``name`` of a frozen params dataclass (:func:`check_float`) and store it back as a float."""
    value = getattr(params, name)
    check_float(name, value, low=low, low_open=low_open)
    object.__setattr__(params, name, float(value))


@dataclass(frozen=True, eq=False)
class Aggregate:
    """One global step: the engine adds ``step`` to the payload vector and moves to ``new_version``.

    ``weights`` are the raw per-update weights in the order of ``updates`` (``shares`` normalizes
    them); ``staleness`` is each update's version lag when the step was computed.
    """

    step: np.ndarray  # float32, same length as every delta
    weights: np.ndarray  # float64, one per update
    staleness: np.ndarray  # int64, one per update
    updates: tuple[Update, ...]
    version: int  # the version the step applies to
    new_version: int

    @property
    def shares(self) -> np.ndarray:
        return self.weights / self.weights.sum()


def weighted_step(updates: list[Update], weights: np.ndarray, server_lr: float, size: int | None = None) -> np.ndarray:
    """server_lr * sum(w_i * delta_i) / sum(w_i), summed in float64 in buffer order (deterministic).

    Updates that carry an ``index`` (nested subsets) hold only part of the vector of ``size`` values
    (default: the length of the first whole-vector update, else one past the largest index): each
    parameter j is then averaged over the updates that carry it, step_j = server_lr * sum_i w_i d_ij /
    sum_{i carries j} w_i, so a parameter only the big boards train is not shrunk by the small boards'
    absence; one that no update carries gets 0. Without indices the result is bit for bit the plain mean.
    """
    if all(u.index is None for u in updates):
        shares = weights / weights.sum()
        acc = np.zeros(updates[0].delta.size, dtype=np.float64)
        for share, u in zip(shares, updates, strict=True):
            acc += share * u.delta.astype(np.float64)
        return (server_lr * acc).astype(np.float32)
    n = size if size is not None else nested_size(updates)
    acc = np.zeros(n, dtype=np.float64)
    mass = np.zeros(n, dtype=np.float64)
    for w, u in zip(weights.astype(np.float64), updates, strict=True):
        if u.index is None:
            acc += w * u.delta.astype(np.float64)
            mass += w
        else:
            acc[u.index] += w * u.delta.astype(np.float64)
            mass[u.index] += w
    carried = mass > 0
    acc[carried] /= mass[carried]
    return (server_lr * acc).astype(np.float32)


def nested_size(updates: list[Update]) -> int:
    """The global vector's length as the updates tell it: a whole-vector delta's, else one past the largest index."""
    for u in updates:
        if u.index is None:
            return int(u.delta.size)
    return max(int(u.index.max()) + 1 if u.index is not None and u.index.size else 0 for u in updates)


def sample_counts(updates: list[Update]) -> np.ndarray:
    """Each update's sample count n_i as float64: the factor every strategy's weight starts from."""
    return np.array([u.n for u in updates], dtype=np.float64)


def staleness_of(updates: list[Update], version: int) -> np.ndarray:
    """Each update's version lag tau_i at ``version`` (int64)."""
    return np.array([version - u.base_version for u in updates], dtype=np.int64)


def update_to_state(u: Update) -> dict[str, Any]:
    """Everything of an update except its delta (and index), as JSON-able values."""
    return {"device_id": u.device_id, "task_id": int(u.task_id), "base_version": int(u.base_version),
            "n": int(u.n), "loss": float(u.loss), "variance": float(u.variance), "wire_bytes": int(u.wire_bytes)}


def updates_from_state(meta: list[dict[str, Any]], deltas: np.ndarray | dict[str, np.ndarray]) -> list[Update]:
    """The buffered updates back from :func:`update_to_state` rows and :func:`stack_deltas`' arrays."""
    if isinstance(deltas, dict):  # nested: flat values, lengths, and each update's index (-1 rows: none)
        values, lengths, index = (np.asarray(deltas[k]) for k in ("values", "lengths", "index"))
        if len(meta) != len(lengths) or int(lengths.sum()) != values.size or values.size != index.size:
            raise StrategyError(f"checkpoint lists {len(meta)} buffered updates but its nested deltas do not match",
                                fix="the checkpoint is damaged; resume from an earlier one")
        bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out = []
        for m, a, b in zip(meta, bounds[:-1], bounds[1:], strict=True):
            idx = index[a:b].astype(np.int64)
            out.append(Update(delta=np.array(values[a:b], dtype=np.float32), index=None if (idx < 0).all() else idx,
                              **m))
        return out
    if len(meta) != len(deltas):
        raise StrategyError(f"checkpoint lists {len(meta)} buffered updates but holds {len(deltas)} deltas",
                            fix="the checkpoint is damaged; resume from an earlier one")
    return [Update(delta=np.array(d, dtype=np.float32), **m) for m, d in zip(meta, deltas, strict=True)]


def stack_deltas(updates: list[Update]) -> np.ndarray | dict[str, np.ndarray]:
    """Buffered deltas as one (count, size) float32 array: one array per strategy in a checkpoint.

    When any update carries an index (nested subsets: deltas of different lengths), the values one
    after another with each update's length and index (-1 for an update of the whole vector)."""
    if not updates:
        return np.zeros((0, 0), dtype=np.float32)
    if all(u.index is None for u in updates):
        return np.stack([u.delta for u in updates]).astype(np.float32)
    return {"values": np.concatenate([u.delta for u in updates]).astype(np.float32),
            "lengths": np.array([u.delta.size for u in updates], dtype=np.int64),
            "index": np.concatenate([u.index if u.index is not None else np.full(u.delta.size, -1, np.int64)
                                     for u in updates]).astype(np.int64)}


class Strategy(ABC):
    """One aggregation strategy; see ``docs/strategies.md`` for the contract with the engine.

    ``payload`` tells the engine what to send and expect back: ``"subset"`` (only w*) or
    ``"dense"`` (the whole model in float32). ``fleet_size`` is the number of devices the engine
    runs; it may be set after construction and changed when the fleet changes.
    """

    name: ClassVar[str]
    payload: ClassVar[str]
    Params: ClassVar[type[DataclassInstance]]  # the dataclass of the strategy's knobs
    #: Where the strategy stands in listings and in a study's default set: the method under test
    #: first, then its baselines; a new strategy without one comes after them, by name.
    listing_order: ClassVar[int] = 100
    #: the global vector's length (the round state sets it): a step's length when updates carry an index
    vector_size: int | None = None

    def __init__(self, params: Any = None, *, fleet_size: int | None = None) -> None:
        self.params: Any = self.Params() if params is None else params  # an instance of the subclass's Params
        if not isinstance(self.params, self.Params):
            raise StrategyError(f"{self.name} takes {self.Params.__name__}, got {type(self.params).__name__}")
        self._fleet_size: int | None = None
        self.fleet_size = fleet_size
        self.counters: dict[str, int] = {"received": 0, "aggregations": 0, "consumed": 0, "lost": 0, "ignored": 0}

    @property
    def fleet_size(self) -> int | None:
        return self._fleet_size

    @fleet_size.setter
    def fleet_size(self, value: int | None) -> None:
        if value is not None:
            check_int("fleet_size", value, 1)
            value = int(value)
        self._fleet_size = value

    @abstractmethod
    def select(self, idle: list[str], busy: list[str], version: int, rng: np.random.Generator) -> list[str]:
        """The idle devices that get a task now (in a deterministic order)."""

    @abstractmethod
    def on_update(self, update: Update, version: int) -> Aggregate | None:
        """Take one update that passed ``check_update``; return a step once ready, else None.

        ``version`` is the global version now; a returned step applies to it."""

    @abstractmethod
    def on_lost(self, device_id: str, task_id: int) -> Aggregate | None:
        """A device vanished with its task; a strategy waiting for it may complete a step now."""

    def _step(self, updates: list[Update], weights: np.ndarray, staleness: np.ndarray, version: int) -> Aggregate:
        """The global step at ``version`` from ``updates`` weighted by ``weights``, counted as one aggregation."""
        self.counters["aggregations"] += 1
        self.counters["consumed"] += len(updates)
        return Aggregate(weighted_step(updates, weights, self.params.server_lr, self.vector_size), weights,
                         staleness, tuple(updates), version, version + 1)

    def poll(self, version: int) -> Aggregate | None:
        """A step that became due without a new update (e.g. ``fleet_size`` shrank below K), else None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: JSON-able values, plus numpy arrays under ``"deltas"`` only."""
        return {"format": STATE_FORMAT, "strategy": self.name, "params": asdict(self.params),
                "fleet_size": self._fleet_size, "counters": dict(self.counters), **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict``; refuses a state written by another strategy or other parameters."""
        if state.get("format") != STATE_FORMAT or state.get("strategy") != self.name:
            raise StrategyError(f"checkpoint holds strategy state {state.get('strategy')!r} "
                                f"(format {state.get('format')!r}), this run uses {self.name!r}",
                                fix="resume with the strategy and parameters the run was started with")
        mine = asdict(self.params)
        theirs = {f.name: state["params"].get(f.name) for f in fields(self.params)}
        if mine != theirs:
            raise StrategyError(f"checkpoint was written with {self.name} parameters {theirs}, this run has {mine}",
                                fix="resume with the parameters the run was started with")
        self.fleet_size = state["fleet_size"]
        self.counters = {k: int(v) for k, v in state["counters"].items()}
        self._load_state(state)

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None: ...


class BufferedStrategy(Strategy):
    """Semi-asynchronous: every idle device trains; a step is taken once K updates are buffered.

    K = min(buffer_size, fleet_size), so a fleet smaller than the buffer still makes progress.
    Subclasses only say how buffered updates are weighted.
    """

    def __init__(self, params: Any = None, *, fleet_size: int | None = None) -> None:
        super().__init__(params, fleet_size=fleet_size)
        self.buffer: list[Update] = []

    @property
    def k(self) -> int:
        size = self.params.buffer_size
        return size if self.fleet_size is None else min(size, self.fleet_size)

    def select(self, idle: list[str], busy: list[str], version: int, rng: np.random.Generator) -> list[str]:
        return list(idle)

    @abstractmethod
    def weights(self, updates: list[Update], staleness: np.ndarray) -> np.ndarray:
        """Raw weight per update (float64, all >= 0, sum > 0)."""

    def on_update(self, update: Update, version: int) -> Aggregate | None:
        if any(u.key == update.key for u in self.buffer):
            # The engine's replay check should stop this; refusing here keeps a step from applying it twice.
            log.warning("%s: update %s is already buffered; ignored", self.name, update.key)
            self.counters["ignored"] += 1
            return None
        if self.buffer and update.index is None and self.buffer[0].index is None \
                and update.delta.size != self.buffer[0].delta.size:
            raise StrategyError(f"update from {update.device_id!r} has {update.delta.size} values, the buffered "
                                f"ones {self.buffer[0].delta.size}", fix="run check_update before on_update")
        self.buffer.append(update)
        self.counters["received"] += 1
        return self.poll(version)

    def poll(self, version: int) -> Aggregate | None:
        if len(self.buffer) < self.k:
            return None
        # Consume everything buffered: more than K only happens after fleet_size shrank, and keeping
        # the surplus for later would only make it staler.
        updates, self.buffer = self.buffer, []
        staleness = staleness_of(updates, version)
        if (staleness < 0).any():
            raise StrategyError(f"{self.name}: an update is from a version after {version}",
                                fix="run check_update before on_update")
        return self._step(updates, np.asarray(self.weights(updates, staleness), dtype=np.float64), staleness, version)

    def on_lost(self, device_id: str, task_id: int) -> Aggregate | None:
        # Nothing waits on a particular device; an update it sent before vanishing stays buffered.
        self.counters["lost"] += 1
        return None

    def _state(self) -> dict[str, Any]:
        return {"buffer": [update_to_state(u) for u in self.buffer], "deltas": stack_deltas(self.buffer)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.buffer = updates_from_state(state["buffer"], state["deltas"])
