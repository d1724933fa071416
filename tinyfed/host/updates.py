"""What a device hands back to the host, and the gate every update passes before a strategy sees it.

A strategy trusts what it buffers: one NaN, a delta of the wrong length or a replayed upload
would poison every later model version. ``check_update`` is therefore the single place where an
update is judged, and it says *why* it refused, as a code the engine can count and a sentence a
user can read.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


@dataclass(frozen=True, eq=False)
class Update:
    """One device's answer to one task: the float delta of the payload vector and its metadata.

    ``delta`` is the dequantized update as one flat float32 vector (w* for FTTE, the whole model
    for the dense baselines). It is stored as a read-only view so that a buffered update cannot
    be changed behind the strategy's back; the caller's array is left as it was.

    ``index`` (nested subsets): the int64 positions of ``delta``'s values in the global vector,
    for a board whose class trains part of it; None: ``delta`` is the whole vector.
    """

    device_id: str
    task_id: int
    base_version: int  # the model version the device trained from
    n: int  # local sample count
    loss: float  # mean train loss the device reported
    variance: float  # variance of the delta elements, as the device reported it
    delta: np.ndarray
    wire_bytes: int = 0  # bytes of the update as it crossed the link
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        view = np.asarray(self.delta, dtype=np.float32).view()
        view.flags.writeable = False
        object.__setattr__(self, "delta", view)
        if self.index is not None:
            index = np.asarray(self.index, dtype=np.int64).view()
            index.flags.writeable = False
            object.__setattr__(self, "index", index)

    @property
    def key(self) -> tuple[str, int]:
        """The (device, task) pair that must be unique over a run (replay protection)."""
        return (self.device_id, self.task_id)


class Reason(StrEnum):
    """Machine-readable rejection codes (stable strings: they end up in event logs)."""

    REPLAY = "replay"
    BAD_N = "bad_n"
    TOO_MANY_SAMPLES = "too_many_samples"
    FUTURE_VERSION = "future_version"
    TOO_STALE = "too_stale"
    BAD_SHAPE = "bad_shape"
    NON_FINITE = "non_finite"
    BAD_VARIANCE = "bad_variance"
    BAD_LOSS = "bad_loss"
    NORM_TOO_LARGE = "norm_too_large"


#: Largest mean train loss a board may report. No strategy weights by loss, but it is logged and
#: charted: a lie must not reach the charts. Cross-entropy past 1e6 means the float tail overflowed.
MAX_LOSS = 1e6
#: Relative slack on the standard deviation in :func:`variance_problem`: the firmware sums its
#: float32 squares in one sequential pass (train.c, finish_update), off by up to ~n * 2^-24.
VARIANCE_SLACK = 1e-2


@dataclass(frozen=True)
class Rejection:
    """Why an update was refused: ``reason`` for programs, ``message`` for people."""

    reason: str
    message: str


def index_problem(delta: np.ndarray, index: np.ndarray, size: int) -> str | None:
    """Why a nested update's (``delta``, ``index``) cannot be placed in a vector of ``size`` values, else None:
    one index per value, each a position of the vector, none twice."""
    if delta.ndim != 1 or index.ndim != 1 or delta.size != index.size:
        return (f"has a delta of shape {delta.shape} for an index of shape {index.shape}; expected one flat "
                "index per value")
    if index.size and (int(index.min()) < 0 or int(index.max()) >= size):
        return f"has an index outside the global vector of {size} values"
    if np.unique(index).size != index.size:
        return "has an index that names a position twice"
    return None


def variance_problem(claimed: float, delta: np.ndarray) -> str | None:
    """Why a board's reported ``claimed`` variance cannot be that of the delta it sent, else None.

    The board computes the variance of its float32 delta before quantizing it to int8 with a step
    of at most max|delta| / 127, rounding each value by at most half a step. The standard deviation
    is a seminorm, so |std(float delta) - std(received delta)| <= max|delta| / 254: a claim outside
    that band is a lie (a claimed 0 for a delta of norm 99 was one: FTTE's variance term then
    gives it the full weight the median update gets). A float32 update is exact and fits the same band."""
    d = delta.astype(np.float64, copy=False)
    if d.size == 0:
        return None
    measured = math.sqrt(float(d.var()))
    slack = float(np.abs(d).max()) / 254.0 + VARIANCE_SLACK * measured + 1e-12
    std = math.sqrt(claimed)
    if abs(std - measured) <= slack:
        return None
    low = max(0.0, measured - slack) ** 2
    return (f"reports a variance of {claimed:.6g}, but its delta's is {measured * measured:.6g} "
            f"(int8 rounding allows {low:.6g} to {(measured + slack) ** 2:.6g})")


def check_update(update: Update, *, global_version: int, size: int, norm_bound: float | None,
                 max_staleness: int | None, seen_tasks: Container[tuple[str, int]],
                 max_n: int | None = None, check_variance: bool = False) -> Rejection | None:
    """Return a ``Rejection`` for an update no strategy may see, else None.

    ``size`` is the length of the payload vector; ``norm_bound`` bounds the L2 norm of the delta
    and ``max_staleness`` the version lag (None disables either bound); ``seen_tasks`` holds the
    (device, task) pairs already accepted; ``max_n`` is how many samples the host gave the device
    (its update's weight grows with the ``n`` it claims, so a board may not claim more). The loss
    must lie in [0, ``MAX_LOSS``]; ``check_variance`` also holds the reported variance to the
    delta's (:func:`variance_problem`: FTTE weights by it; the engine turns it on for real boards).
    The check is pure: recording an accepted pair in ``seen_tasks`` is the caller's job, together
    with handing the update to the strategy.
    """
    who = f"update from {update.device_id!r} (task {update.task_id})"
    if update.key in seen_tasks:
        return Rejection(Reason.REPLAY, f"{who} was already received; a second copy would be applied twice")
    if isinstance(update.n, bool) or not isinstance(update.n, (int, np.integer)) or update.n <= 0:
        return Rejection(Reason.BAD_N, f"{who} reports n = {update.n!r} samples; it must be an integer >= 1")
    if max_n is not None and update.n > max_n:
        return Rejection(Reason.TOO_MANY_SAMPLES, f"{who} claims to have trained on {int(update.n):,} samples, "
                                                  f"but the host gave it {max_n:,}")
    if update.base_version > global_version:
        return Rejection(Reason.FUTURE_VERSION, f"{who} was trained from version {update.base_version}, "
                                                f"but the global model is only at version {global_version}")
    staleness = global_version - update.base_version
    if max_staleness is not None and staleness > max_staleness:
        return Rejection(Reason.TOO_STALE, f"{who} is {staleness} versions old (version {update.base_version}, "
                                           f"global {global_version}); at most {max_staleness} is accepted")
    return _content_rejection(update, who, size, norm_bound, check_variance)


def _content_rejection(update: Update, who: str, size: int, norm_bound: float | None,
                       check_variance: bool) -> Rejection | None:
    """:func:`check_update` past the metadata: the delta's shape and values, the loss and variance."""
    delta = update.delta
    index = update.index
    if index is None and (delta.ndim != 1 or delta.size != size):
        return Rejection(Reason.BAD_SHAPE, f"{who} has a delta of shape {delta.shape}; expected a flat vector "
                                           f"of {size} values")
    if index is not None:
        problem = index_problem(delta, index, size)
        if problem:
            return Rejection(Reason.BAD_SHAPE, f"{who} {problem}")
    for field, value in (("loss", update.loss), ("variance", update.variance)):
        if not math.isfinite(float(value)):
            return Rejection(Reason.NON_FINITE, f"{who} reports a non-finite {field} ({value!r})")
    bad = int(np.count_nonzero(~np.isfinite(delta)))
    if bad:
        return Rejection(Reason.NON_FINITE, f"{who} has {bad} non-finite value(s) (NaN or inf) in its delta")
    if update.variance < 0:
        return Rejection(Reason.BAD_VARIANCE, f"{who} reports a negative variance ({update.variance!r})")
    if not 0.0 <= float(update.loss) <= MAX_LOSS:
        return Rejection(Reason.BAD_LOSS, f"{who} reports a train loss of {update.loss!r}; a loss lies in "
                                          f"[0, {MAX_LOSS:g}]")
    if norm_bound is not None:
        norm = float(np.linalg.norm(delta.astype(np.float64)))
        if norm > norm_bound:
            return Rejection(Reason.NORM_TOO_LARGE, f"{who} has a delta of L2 norm {norm:.6g}, "
                                                    f"above the bound {norm_bound:.6g}")
    if check_variance:
        problem = variance_problem(float(update.variance), delta)
        if problem:
            return Rejection(Reason.BAD_VARIANCE, f"{who} {problem}")
    return None
