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
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tinyfed.errors import TinyfedError
from tinyfed.host.strategies.robust import (
    DEFAULT_ROBUST_QUANTILE,
    DEFAULT_ROBUST_WINDOW,
    DEFAULT_TRIM_FRACTION,
    ROBUST_RULES,
    RobustRule,
)
from tinyfed.host.updates import Update

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

STATE_FORMAT = 1

#: What a strategy can send and train: only w* behind the frozen fragment (int8 updates, head
#: cache) or the whole model (float32 updates).
PAYLOADS = ("subset", "dense")
#: Server optimizers applied to the aggregated pseudo-gradient (Reddi et al., "Adaptive Federated
#: Optimization"): "sgd" is the plain step, "momentum" FedAvgM, "adam" FedAdam, "yogi" FedYogi.
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi")
DEFAULT_SERVER_MOMENTUM = 0.9
DEFAULT_SERVER_BETA2 = 0.99
DEFAULT_SERVER_TAU = 1e-3


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


def store_optional_int(params: Any, name: str, low: int) -> None:
    """As :func:`store_int`, with None allowed (and kept)."""
    if getattr(params, name) is not None:
        store_int(params, name, low)


def check_unit(name: str, value: Any) -> None:
    """Reject anything but a finite number in [0, 1) (a decay rate)."""
    check_float(name, value, low=0.0)
    if float(value) >= 1.0:
        raise StrategyParamError(f"{name} = {value!r} is out of range", fix="use a number >= 0 and < 1")


def check_choice(name: str, value: Any, choices: tuple[str | None, ...]) -> None:
    """Reject a value outside ``choices``, listing them."""
    if value not in choices:
        listing = ", ".join("None" if c is None else repr(c) for c in choices)
        raise StrategyParamError(f"{name} = {value!r} is not understood", fix=f"use one of: {listing}")


@dataclass(frozen=True, kw_only=True)
class ServerParams:
    """The knobs every strategy shares, keyword-only (after each strategy's own fields).

    ``payload``: "subset" (w* behind the frozen fragment, int8 updates, head cache: what FTTE
    sends), "dense" (the whole model, float32 updates) or None for the strategy's own default.
    ``server_optimizer`` turns the normalised weighted mean of the deltas (the pseudo-gradient)
    into the step: "sgd" (step = server_lr * mean, the plain step), "momentum" (FedAvgM),
    "adam" (FedAdam) or "yogi" (FedYogi); ``server_momentum`` is beta1, ``server_beta2`` beta2
    and ``server_tau`` the adaptivity epsilon of the adaptive ones.

    ``robust`` is how the weighted deltas become that pseudo-gradient (:mod:`.robust`): "none" (the
    weighted mean), "norm-quantile" (each delta scaled down to the ``robust_quantile`` of the norms of
    the last ``robust_window`` accepted updates), "median" (weighted coordinate-wise median) or
    "trimmed-mean" (weighted, ``trim_fraction`` of the weight cut from each end per coordinate).
    """

    payload: str | None = None
    server_optimizer: str = "sgd"
    server_momentum: float = DEFAULT_SERVER_MOMENTUM
    server_beta2: float = DEFAULT_SERVER_BETA2
    server_tau: float = DEFAULT_SERVER_TAU
    robust: str = "none"
    robust_quantile: float = DEFAULT_ROBUST_QUANTILE
    robust_window: int = DEFAULT_ROBUST_WINDOW
    trim_fraction: float = DEFAULT_TRIM_FRACTION

    def check_server(self) -> None:
        """Validate the shared fields (each strategy's ``__post_init__`` calls it)."""
        check_choice("payload", self.payload, (None, *PAYLOADS))
        check_choice("server_optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
        store_float(self, "server_lr", low=0.0, low_open=True)
        for name in ("server_momentum", "server_beta2"):
            check_unit(name, getattr(self, name))
            object.__setattr__(self, name, float(getattr(self, name)))
        store_float(self, "server_tau", low=0.0, low_open=True)
        check_choice("robust", self.robust, ROBUST_RULES)
        store_float(self, "robust_quantile", low=0.0, low_open=True)
        if self.robust_quantile > 1.0:
            raise StrategyParamError(f"robust_quantile = {self.robust_quantile!r} is out of range",
                                     fix="use a number > 0 and <= 1 (0.5: the median norm)")
        store_int(self, "robust_window", 1)
        store_float(self, "trim_fraction", low=0.0)
        if self.trim_fraction >= 0.5:
            raise StrategyParamError(f"trim_fraction = {self.trim_fraction!r} is out of range",
                                     fix="use a number >= 0 and < 0.5 (a fraction cut from each end)")


class ServerOptimizer:
    """The server's update rule on the pseudo-gradient ``g`` (the normalised weighted mean of deltas).

    As in Reddi et al. (Algorithm 2, no bias correction), with ``g`` playing the role of their
    Delta_t (it points where the clients moved):

    - momentum (FedAvgM): m = beta1 * m + g; step = lr * m
    - adam: m = beta1 * m + (1 - beta1) g; v = beta2 * v + (1 - beta2) g^2; step = lr * m / (sqrt(v) + tau)
    - yogi: as adam, but v = v - (1 - beta2) g^2 sign(v - g^2)

    v starts at tau^2 and m at 0. The state is kept as float32 arrays (what a checkpoint stores);
    each step computes in float64 from them, so a resumed run takes the same steps bit for bit.
    "sgd" keeps no state: its step is ``weighted_step(..., server_lr)`` itself.
    """

    def __init__(self, kind: str, lr: float, beta1: float, beta2: float, tau: float) -> None:
        self.kind, self.lr, self.beta1, self.beta2, self.tau = kind, lr, beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.steps = 0

    def step(self, g32: np.ndarray) -> np.ndarray:
        """The float32 step for pseudo-gradient ``g32`` (float32); advances the moments."""
        g = g32.astype(np.float64)
        if self.m is None or self.m.size != g.size:
            if self.m is not None:
                raise StrategyError(f"the server optimizer holds moments of {self.m.size} values, the step has "
                                    f"{g.size}", fix="resume with the model the run was started with")
            self.m = np.zeros(g.size, np.float32)
            if self.kind != "momentum":
                self.v = np.full(g.size, np.float32(self.tau * self.tau), np.float32)
        m = self.m.astype(np.float64)
        if self.kind == "momentum":
            m = self.beta1 * m + g
            step = self.lr * m
        else:
            assert self.v is not None
            v = self.v.astype(np.float64)
            m = self.beta1 * m + (1.0 - self.beta1) * g
            g2 = g * g
            if self.kind == "adam":
                v = self.beta2 * v + (1.0 - self.beta2) * g2
            else:  # yogi: v moves towards g^2 by at most (1 - beta2) g^2 per step
                v = v - (1.0 - self.beta2) * g2 * np.sign(v - g2)
            self.v = v.astype(np.float32)
            step = self.lr * m / (np.sqrt(v) + self.tau)
        self.m = m.astype(np.float32)
        self.steps += 1
        return step.astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": self.steps, "m": self.m, "v": self.v}

    def load(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise StrategyError(f"checkpoint holds {state.get('kind')!r} server optimizer state, this run uses "
                                f"{self.kind!r}", fix="resume with the parameters the run was started with")
        self.steps = int(state["steps"])
        self.m = None if state.get("m") is None else np.array(state["m"], dtype=np.float32)
        self.v = None if state.get("v") is None else np.array(state["v"], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Aggregate:
    """One global step: the engine adds ``step`` to the payload vector and moves to ``new_version``.

    ``weights`` are the raw per-update weights in the order of ``updates`` (``shares`` normalizes
    them); ``staleness`` is each update's version lag when the step was computed. ``robust`` is what
    the strategy's robust rule did (:meth:`.robust.RobustRule.combine`'s report; rule "none": nothing
    clipped or trimmed).
    """

    step: np.ndarray  # float32, same length as every delta
    weights: np.ndarray  # float64, one per update
    staleness: np.ndarray  # int64, one per update
    updates: tuple[Update, ...]
    version: int  # the version the step applies to
    new_version: int
    robust: dict[str, Any] = field(default_factory=lambda: {"rule": "none"})

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
    ``"dense"`` (the whole model in float32); it is the params' ``payload``, or the class's
    ``default_payload`` when they name none. ``label`` is the name results are reported under
    (a variant such as ``fedbuff@subset``; the strategy's name by default). ``fleet_size`` is the
    number of devices the engine runs; it may be set after construction and changed when the
    fleet changes.
    """

    name: ClassVar[str]
    default_payload: ClassVar[str]  # the payload when the params name none
    Params: ClassVar[type[DataclassInstance]]  # the dataclass of the strategy's knobs
    #: Where the strategy stands in listings and in a study's default set: the method under test
    #: first, then its baselines; a new strategy without one comes after them, by name.
    listing_order: ClassVar[int] = 100
    #: A round that samples from the whole fleet (FedAvg) starts once every board's first provisioning
    #: has ended, so which boards its first round draws from does not depend on upload timing.
    samples_the_fleet: ClassVar[bool] = False
    #: the global vector's length (the round state sets it): a step's length when updates carry an index
    vector_size: int | None = None

    def __init__(self, params: Any = None, *, fleet_size: int | None = None) -> None:
        self.params: Any = self.Params() if params is None else params  # an instance of the subclass's Params
        if not isinstance(self.params, self.Params):
            raise StrategyError(f"{self.name} takes {self.Params.__name__}, got {type(self.params).__name__}")
        self._fleet_size: int | None = None
        self.fleet_size = fleet_size
        self.counters: dict[str, int] = {"received": 0, "aggregations": 0, "consumed": 0, "lost": 0, "ignored": 0}
        self.label: str = self.name
        p: Any = self.params
        self.optimizer: ServerOptimizer | None = None
        if getattr(p, "server_optimizer", "sgd") != "sgd":
            self.optimizer = ServerOptimizer(p.server_optimizer, p.server_lr, p.server_momentum, p.server_beta2,
                                             p.server_tau)
        self.robust: RobustRule | None = None
        if getattr(p, "robust", "none") != "none":
            self.robust = RobustRule(p.robust, p.robust_quantile, p.robust_window, p.trim_fraction)

    @property
    def payload(self) -> str:
        """"subset" or "dense": the params' choice, else the strategy's default."""
        return getattr(self.params, "payload", None) or self.default_payload

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
        """The global step at ``version`` from ``updates`` weighted by ``weights``, counted as one aggregation.

        The plain step is ``weighted_step`` at ``server_lr``; another server optimizer takes the
        weighted mean (``weighted_step`` at rate 1) as its pseudo-gradient. A robust rule (params'
        ``robust``) replaces that weighted mean by its own combination under the same weights."""
        self.counters["aggregations"] += 1
        self.counters["consumed"] += len(updates)
        report: dict[str, Any] = {"rule": "none"}
        if self.robust is not None:
            size = self.vector_size if self.vector_size is not None else nested_size(updates)
            g, report = self.robust.combine(updates, weights, size,
                                            lambda us, ws: weighted_step(us, ws, 1.0, size))
            step = (self.optimizer.step(g) if self.optimizer is not None
                    else (self.params.server_lr * g.astype(np.float64)).astype(np.float32))
        elif self.optimizer is None:
            step = weighted_step(updates, weights, self.params.server_lr, self.vector_size)
        else:
            step = self.optimizer.step(weighted_step(updates, weights, 1.0, self.vector_size))
        return Aggregate(step, weights, staleness, tuple(updates), version, version + 1, report)

    def poll(self, version: int) -> Aggregate | None:
        """A step that became due without a new update (e.g. ``fleet_size`` shrank below K), else None."""
        return None

    def deadline(self) -> float | None:
        """Seconds after a dispatch at which the loop calls :meth:`on_deadline` (None: never).

        Strategies own no clock: the simulator schedules an event at dispatch time + deadline,
        the engine watches its wall clock. A later dispatch replaces the pending deadline."""
        return None

    def on_deadline(self, version: int) -> Aggregate | None:
        """The deadline of the dispatch made at global version ``version`` has passed; a step or None."""
        return None

    def will_ignore(self, device_id: str, base_version: int) -> bool:
        """Whether an update from ``device_id`` trained on ``base_version``, arriving now, would be
        ignored whatever it holds (a simulator then skips training it; the update still arrives)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: JSON-able values, plus numpy arrays under ``"deltas"`` and, with a
        server optimizer other than sgd, under ``"optimizer"`` (its moments); with a robust rule, under
        ``"robust"`` (norm-quantile's window of norms)."""
        state = {"format": STATE_FORMAT, "strategy": self.name, "params": asdict(self.params),
                 "fleet_size": self._fleet_size, "counters": dict(self.counters), **self._state()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state()
        if self.robust is not None:
            state["robust"] = self.robust.state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict``; refuses a state written by another strategy or other parameters."""
        if state.get("format") != STATE_FORMAT or state.get("strategy") != self.name:
            raise StrategyError(f"checkpoint holds strategy state {state.get('strategy')!r} "
                                f"(format {state.get('format')!r}), this run uses {self.name!r}",
                                fix="resume with the strategy and parameters the run was started with")
        mine = asdict(self.params)
        # a field the checkpoint does not name did not exist when it was written: the run had its default
        theirs = {f.name: state["params"].get(f.name, f.default) for f in fields(self.params)}
        if mine != theirs:
            raise StrategyError(f"checkpoint was written with {self.name} parameters {theirs}, this run has {mine}",
                                fix="resume with the parameters the run was started with")
        self.fleet_size = state["fleet_size"]
        self.counters = {k: int(v) for k, v in state["counters"].items()}
        if self.optimizer is not None:
            self.optimizer.load(state["optimizer"])
        if self.robust is not None:
            self.robust.load(state.get("robust"))
        self._load_state(state)

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None: ...


def sample_devices(idle: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` of ``idle`` (all of them if fewer) drawn without replacement, in sorted order: the
    sample depends on the seed, not on the order the engine lists devices in."""
    pool = sorted(idle)
    m = min(count, len(pool))
    return [pool[i] for i in sorted(rng.choice(len(pool), size=m, replace=False).tolist())]


class BufferedStrategy(Strategy):
    """Semi-asynchronous: idle devices train; a step is taken once K updates are buffered.

    K = min(buffer_size, fleet_size), so a fleet smaller than the buffer still makes progress.
    ``concurrency`` (None: every idle device) caps the devices training at once: ``select`` then
    samples at most ``concurrency - len(busy)`` of the idle ones, as FedAvg samples a round.
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
        cap = self.params.concurrency
        if cap is None:
            return list(idle)
        room = cap - len(busy)
        if room <= 0 or not idle:
            return []
        return sample_devices(idle, room, rng)

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
