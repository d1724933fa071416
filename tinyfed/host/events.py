"""The run's event log: an append-only JSONL file that the dashboard, benchmarks and audits read.

One line per event in ``RUN_DIR/events.jsonl``::

    {"seq": 12, "t": 3.512, "wall": 1764374400.25, "kind": "arrival", "task": "t7", "device": "d3"}

``seq`` counts events from 0 with no gaps; ``t`` is run time in seconds from a monotonic clock
that continues across resumes (wall-clock jumps do not move it); ``wall`` is Unix time for
people. Each event is flushed as it is written, so a killed host loses at most the line being
written; :meth:`EventLog.sync` (called at aggregation and checkpoint boundaries) also fsyncs, so
a checkpoint never points past what is on disk. A torn last line is cut when the log is
reopened; a damaged line in the middle is an error, since events after it cannot be trusted.

Task accounting: each dispatched ``task`` ends in exactly one of ``arrival`` (the update was
accepted into the strategy), ``rejection`` (with a ``reason``) or ``lost`` (the device never
delivered: timeout, reset, run ended). :func:`summarize` lists any task without an outcome.
Bytes are counted only from ``bytes`` events (``direction`` "up" or "down", ``n``); those with
``what: "provision"`` (fragment, program and local data sent when a link is (re)connected) are
summed apart from the tasks' bytes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Self, TextIO

from tinyfed.errors import TinyfedError, WriteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["EVENTS_FILE", "KINDS", "STUDY_KINDS", "EventLog", "EventLogError", "StudyLog", "complete_length",
           "read_events", "summarize"]

EVENTS_FILE = "events.jsonl"

#: Known event kinds and the fields each must carry (beyond seq, t, wall, kind).
KINDS: dict[str, tuple[str, ...]] = {
    "run_start": (),
    "resume": (),
    "dispatch": ("task", "device"),
    "arrival": ("task",),
    "rejection": ("reason",),
    "lost": ("task", "reason"),
    "aggregation": ("version",),
    "deadline": ("version",),  # a strategy's deadline passed (FedAvg's round_deadline_s)
    # and the value of the task's metric under its name, which ``metric`` gives (default "accuracy")
    "evaluation": ("version",),
    "device_state": ("device", "state"),
    "bytes": ("direction", "n"),
    "checkpoint": ("version",),
    # differential privacy (docs/privacy.md): epsilon at delta spent so far (the largest over devices)
    "privacy": ("version", "epsilon", "delta"),
    "run_end": (),
}
_RESERVED = ("seq", "t", "wall", "kind")
#: Boundaries after which the log is fsynced without being asked.
_SYNC_KINDS = frozenset({"aggregation", "checkpoint", "run_end"})


class EventLogError(TinyfedError):
    """The event log is damaged or does not match the checkpoint that refers to it."""


class EventLogWriteError(EventLogError, WriteError):
    """An event could not be written (a full disk): names the log and the byte the event was to start at."""


class _Appender:
    """What a run's and a study's event logs share: each event is checked against the log's kinds
    (refused here, where the bug is, rather than when the log is read), stamped with ``seq``, ``t``,
    ``wall`` and ``kind``, written by the log's own :meth:`_put`, then handed to the ``listeners``."""

    #: the kinds this log takes and the fields each must carry
    kinds: ClassVar[dict[str, tuple[str, ...]]]
    #: what its events are called in errors
    what: ClassVar[str]

    def __init__(self) -> None:
        #: called with each event once it is written (``--jsonl`` prints them); the writer's thread calls them
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._seq = 0

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one event and flush it; return the event as written.

        Unknown kinds, missing required fields and fields the log sets itself are refused.
        """
        if kind not in self.kinds:
            raise ValueError(f"unknown {self.what} kind {kind!r}; known: {', '.join(self.kinds)}")
        missing = [f for f in self.kinds[kind] if f not in fields]
        if kind == "evaluation" and str(fields.get("metric", "accuracy")) not in fields:
            missing.append(str(fields.get("metric", "accuracy")))
        if missing:
            raise ValueError(f"a {kind} event needs {', '.join(dict.fromkeys(missing))}")
        clash = [f for f in _RESERVED if f in fields]
        if clash:
            raise ValueError(f"event fields {clash} are set by the log")
        event: dict[str, Any] = {"seq": self._seq, "t": round(self.now(), 6), "wall": round(time.time(), 6),
                                 "kind": kind, **fields}
        self._put(event)
        self._seq += 1
        for listener in self.listeners:
            listener(event)
        return event

    def now(self) -> float:
        """The log's ``t`` for an event written now."""
        raise NotImplementedError

    def _put(self, event: dict[str, Any]) -> None:
        """Write ``event`` (flushed)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventLog(_Appender):
    """Appends events to ``RUN_DIR/events.jsonl``; reopening an existing log continues it.

    Opening scans the file: a torn last line (a crash mid-write) is cut, and ``seq`` and ``t``
    continue from the last complete event. A resumed run then calls :meth:`truncate_to` with the
    checkpoint's position, dropping events the checkpoint does not cover.
    """

    kinds = KINDS
    what = "event"

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # a run's records are its owner's
        self._fh: BinaryIO = os.fdopen(fd, "r+b", buffering=0)
        try:
            self._lock()
            self._rescan()
        except BaseException:
            self._fh.close()
            raise

    def _lock(self) -> None:
        """One writer per run: a second host on the same run directory would interleave lines."""
        if fcntl is None:  # pragma: no cover - no advisory locks on this platform
            return
        deadline = time.monotonic() + 0.5  # `tinyfed runs` and the dashboard probe it for microseconds
        while True:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EventLogError(
                        "another process is writing this run's event log",
                        fix="stop the other `tinyfed run` on this directory, or use another --out directory",
                        source=str(self.path),
                    ) from None
                time.sleep(0.05)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Sync and close the file (idempotent)."""
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    # -- writing ------------------------------------------------------------------------------

    def _put(self, event: dict[str, Any]) -> None:
        """One line at the log's end; values JSON cannot hold (NaN) are refused; fsynced at boundaries."""
        line = (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        self._write(line)
        self._end += len(line)
        if event["kind"] in _SYNC_KINDS:
            self.sync()

    def _write(self, line: bytes) -> None:
        """Write ``line`` at the log's end; a failed write (a full disk) names the file and the byte, and
        the partial line is cut so the log stays whole up to the last complete event."""
        try:
            self._fh.seek(self._end)
            written = self._fh.write(line) or 0
            view = memoryview(line)
            while written < len(line):  # unbuffered raw writes may be short; finish the line
                written += self._fh.write(view[written:]) or 0
            self._fh.flush()
        except OSError as exc:
            try:
                self._fh.truncate(self._end)
            except OSError:
                pass
            raise self._write_failed(exc) from exc

    def _write_failed(self, exc: OSError) -> EventLogWriteError:
        from tinyfed.host.rundir import write_error

        err = write_error(self.path, exc)
        return EventLogWriteError(f"{err.problem} at byte {self._end}", fix=err.fix, source=str(self.path))

    def sync(self) -> None:
        """fsync the log so that everything up to :meth:`position` survives a power cut."""
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise self._write_failed(exc) from exc

    def now(self) -> float:
        """Run time in seconds: monotonic, continuing from the last event of a resumed log."""
        return self._t_base + (time.monotonic() - self._mono_base)

    # -- positions ----------------------------------------------------------------------------

    def position(self) -> int:
        """Byte offset just after the last complete event; record it in a checkpoint."""
        return self._end

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next event gets (= number of events in the log)."""
        return self._seq

    def truncate_to(self, position: int) -> None:
        """Cut the log back to ``position`` (from :meth:`position`), e.g. a checkpoint's.

        Events after a checkpoint describe work the resumed run will redo, so they go. A
        position past the end, or inside a line, means the log and checkpoint do not belong
        together, which is an error rather than a guess.
        """
        if position < 0:
            raise EventLogError(f"the checkpoint refers to byte {position} of the event log",
                                fix="the checkpoint is damaged; start the run again", source=str(self.path))
        if position > self._end:
            raise EventLogError(
                f"the event log is shorter than the checkpoint expects: it has {self._end} complete bytes "
                f"({self._seq} events), the checkpoint was written at byte {position}",
                fix="the log was cut or replaced after the checkpoint; put back the whole events.jsonl "
                    "(e.g. from a backup), or start the run again",
                source=str(self.path),
            )
        if position > 0:
            self._fh.seek(position - 1)
            if self._fh.read(1) != b"\n":
                self._fh.seek(0)
                line = self._fh.read(position).count(b"\n") + 1
                raise EventLogError(
                    f"the checkpoint was written at byte {position}, inside line {line} of the event log, "
                    "not at the end of an event",
                    fix="the log was edited or replaced after the checkpoint (or belongs to another run); put back "
                        "the run's own events.jsonl, or start the run again",
                    source=str(self.path),
                )
        if position < self._end:
            log.info("event log %s: dropping %d bytes after position %d", self.path, self._end - position, position)
        self._fh.truncate(position)
        self.sync()
        self._rescan()

    # -- internals ----------------------------------------------------------------------------

    def _rescan(self) -> None:
        """Read the whole log: find its complete end, last seq and run time; cut a torn tail."""
        self._fh.seek(0)
        data = self._fh.read()
        count, end, last_t = 0, 0, 0.0
        for event, line_end in _parse(data, str(self.path)):
            count, end, last_t = event["seq"] + 1, line_end, float(event["t"])
        if end < len(data):
            log.warning("event log %s: cutting a torn last line (%d bytes) left by a crash",
                        self.path, len(data) - end)
            self._fh.truncate(end)
            self.sync()
        self._end = end
        self._seq = count
        self._t_base = last_t
        self._mono_base = time.monotonic()


#: ``tinyfed simulate --out DIR``'s ``DIR/events.jsonl``: its kinds and the fields each carries.
STUDY_KINDS: dict[str, tuple[str, ...]] = {
    "study_start": ("strategies", "target_accuracy", "clients", "model", "seed"),
    "leg": ("name", "text"),  # "target" (each strategy to its target) or "horizon" (on to the common horizon)
    "evaluation": ("strategy", "version", "sim_time_s", "accuracy"),  # and the rest of the history row
    "strategy_end": ("strategy", "result"),
    "study_end": ("files",),
}


class StudyLog(_Appender):
    """The live event log of a simulated study: the same lines as a run's (``seq``, ``t``, ``wall``,
    ``kind``; :func:`read_events` reads it), each flushed as it is written, for a dashboard to follow.

    ``t`` is wall seconds since the study started (the simulated time is in the events). With no
    ``out`` directory nothing is written; ``listeners`` (``--jsonl``) hear every event either way.
    A study is not resumed, so an old log in ``out`` is replaced.
    """

    kinds = STUDY_KINDS
    what = "study event"

    def __init__(self, out: str | Path | None) -> None:
        super().__init__()
        self.path = Path(out) / EVENTS_FILE if out is not None else None
        self._fh: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._start = time.monotonic()

    def now(self) -> float:
        """Wall seconds since the study started."""
        return time.monotonic() - self._start

    def _put(self, event: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
            self._fh.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


#: Reason of a ``lost`` event for a task still running when the run stopped: not a device
#: failure, so it counts as unfinished, not lost.
RUN_ENDED = "run ended"

def _parse(data: bytes, source: str) -> Iterator[tuple[dict[str, Any], int]]:
    """Events of ``data`` with the byte offset after each; stops quietly at a torn last line."""
    start = 0
    expected_seq = 0
    line_no = 0
    while start < len(data):
        nl = data.find(b"\n", start)
        if nl < 0:
            return  # torn last line: the writer died mid-line
        line_no += 1
        raw = data[start:nl]
        problem = None
        try:
            event = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            event, problem = None, f"not valid JSON ({exc.reason})"
        except json.JSONDecodeError as exc:
            event, problem = None, f"not valid JSON ({exc.msg})"
        if problem is None:
            if not isinstance(event, dict) or not isinstance(event.get("kind"), str) \
                    or not isinstance(event.get("seq"), int) or not isinstance(event.get("t"), (int, float)):
                problem = "not an event (needs seq, t and kind)"
            elif event["seq"] != expected_seq:
                problem = f"seq {event['seq']} where {expected_seq} was expected"
        if problem is not None:
            raise EventLogError(
                f"line {line_no} (byte {start}) of the event log is damaged: {problem}",
                fix=(f"events from byte {start} on cannot be trusted; keep the first {start} bytes "
                     f"(e.g. `truncate -s {start} {source}`) and resume from an older checkpoint, or start again"),
                source=source,
            )
        assert isinstance(event, dict)
        expected_seq += 1
        start = nl + 1
        yield event, start


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """The events of a log file (or of ``RUN_DIR/events.jsonl``), oldest first.

    A torn last line is skipped (a crashed writer leaves one); a damaged line before the end
    raises :class:`EventLogError` naming the line and byte.
    """
    p = Path(path)
    if p.is_dir():
        p = p / EVENTS_FILE
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise EventLogError("no event log here", fix="give a run directory made by `tinyfed run`",
                            source=str(p)) from None
    for event, _ in _parse(data, str(p)):
        yield event


def complete_length(path: str | Path) -> int:
    """Bytes of ``path`` up to the end of its last complete event (a torn tail excluded)."""
    data = Path(path).read_bytes()
    end = 0
    for _, end_of_event in _parse(data, str(path)):
        end = end_of_event
    return end


def summarize(events: Iterable[dict[str, Any]], target_metric: float | None = None) -> dict[str, Any]:
    """Totals of a run from its events: versions, bytes, updates, the task's metric and task accounting.

    The metric is the one the evaluations name (``metric``; logs written before tasks other
    than classification existed carry ``accuracy`` alone): the summary holds ``metric`` and
    ``final_<metric>``, ``best_<metric>`` (``final_accuracy`` for a classifier), and with
    ``target_metric`` whether and when the metric reached it.

    ``tasks_unaccounted`` lists dispatched tasks with no arrival, rejection or lost event;
    ``tasks_unknown`` lists outcomes for tasks never dispatched (e.g. a replayed update). A
    finished run should have both empty: that is the "nothing silently lost" check.
    ``tasks_with_several_outcomes`` lists dispatched tasks with more than one outcome event (a
    replayed update's rejection after its arrival); the engine's own tasks each have exactly one.
    """
    tally = _RunTally(target_metric)
    for ev in events:
        tally.add(ev)
    return tally.summary()


@dataclass
class _RunTally:
    """The running totals :func:`summarize` keeps, one method per kind of event that counts."""

    target_metric: float | None
    dispatched: dict[Any, int] = field(default_factory=dict)
    outcome: dict[Any, str] = field(default_factory=dict)
    outcome_events: Counter[Any] = field(default_factory=Counter)
    unknown: list[Any] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    device_state: dict[str, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    versions: int = 0
    aggregations: int = 0
    accepted: int = 0
    rejected: int = 0
    lost: int = 0
    unfinished: int = 0
    provision: Counter[str] = field(default_factory=Counter)
    metric: str = "accuracy"
    final_metric: float | None = None
    best_metric: float | None = None
    first_t: float | None = None
    last_t: float = 0.0
    time_to_target: float | None = None
    count: int = 0

    def add(self, ev: dict[str, Any]) -> None:
        """Count one event."""
        self.count += 1
        kind = ev["kind"]
        t = float(ev.get("t", 0.0))
        self.first_t = t if self.first_t is None else self.first_t
        self.last_t = t
        task = ev.get("task")
        if kind == "dispatch":
            self.dispatched[task] = self.dispatched.get(task, 0) + 1
        elif kind in ("arrival", "rejection", "lost"):
            self._add_outcome(kind, task, ev)
        elif kind == "aggregation":
            self.aggregations += 1
            self.versions = max(self.versions, int(ev["version"]))
        elif kind == "evaluation":
            self.metric = str(ev.get("metric", "accuracy"))
            self._add_evaluation(float(ev[self.metric]), t)
        elif kind == "device_state":
            self.device_state[str(ev["device"])] = str(ev["state"])
        elif kind == "bytes":
            self._add_bytes(ev)

    def _add_outcome(self, kind: str, task: Any, ev: dict[str, Any]) -> None:
        """An arrival, rejection or loss: counted by kind, and matched to its dispatched task."""
        if kind == "arrival":
            self.accepted += 1
        elif kind == "rejection":
            self.rejected += 1
            self.reasons[str(ev.get("reason"))] += 1
        elif ev.get("reason") == RUN_ENDED:
            self.unfinished += 1
        else:
            self.lost += 1
        if task is not None:
            if task not in self.dispatched:
                self.unknown.append(task)
            else:
                self.outcome_events[task] += 1
                self.outcome.setdefault(task, kind)

    def _add_evaluation(self, value: float, t: float) -> None:
        """The latest and best value of the metric, and when the target was first reached."""
        self.final_metric = value
        self.best_metric = value if self.best_metric is None else max(self.best_metric, value)
        if self.target_metric is not None and self.time_to_target is None and value >= self.target_metric:
            self.time_to_target = t

    def _add_bytes(self, ev: dict[str, Any]) -> None:
        """Bytes on the wire: provisioning (once per link) apart from the tasks' bytes up and down."""
        if ev.get("what") == "provision":
            self.provision[str(ev["direction"])] += int(ev["n"])
        elif ev["direction"] == "up":
            self.bytes_up += int(ev["n"])
        elif ev["direction"] == "down":
            self.bytes_down += int(ev["n"])

    def summary(self) -> dict[str, Any]:
        """The totals as :func:`summarize` returns them."""
        outcomes = Counter(self.outcome.values())
        summary: dict[str, Any] = {
            "events": self.count,
            "versions": self.versions,
            "aggregations": self.aggregations,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "updates_accepted": self.accepted,
            "updates_rejected": self.rejected,
            "updates_lost": self.lost,
            "tasks_unfinished": self.unfinished,
            "provision_bytes_down": self.provision["down"],
            "provision_bytes_up": self.provision["up"],
            "rejection_reasons": dict(self.reasons),
            "metric": self.metric,
            f"final_{self.metric}": self.final_metric,
            f"best_{self.metric}": self.best_metric,
            "wall_seconds": self.last_t - (self.first_t or 0.0) if self.count else 0.0,
            "tasks_dispatched": len(self.dispatched),
            "tasks_arrived": outcomes["arrival"],
            "tasks_rejected": outcomes["rejection"],
            "tasks_lost": outcomes["lost"],
            "tasks_unaccounted": [t for t in self.dispatched if t not in self.outcome],
            "tasks_unknown": self.unknown,
            "tasks_with_several_outcomes": [t for t, n in self.outcome_events.items() if n > 1],
            "device_states": self.device_state,
        }
        summary["all_tasks_accounted"] = not summary["tasks_unaccounted"]
        if self.target_metric is not None:
            summary["reached_target"] = self.time_to_target is not None
            summary["time_to_target"] = self.time_to_target
        return summary


#: history.csv's columns (``tinyfed run``): one row per evaluated version, as simulate's history.csv.
HISTORY_FILE = "history.csv"


#: history.csv's columns, in order (a row of :func:`history_rows` also holds ``wall``, left out of the file).
HISTORY_FIELDS = ("version", "t_s", "metric", "value", "int8_value", "loss", "bytes_up", "bytes_down")


def history_rows(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per evaluated version: the run's time (``t_s``) and Unix time (``wall``), the metric (float
    master and int8 model), the loss and the tasks' bytes so far each way (provisioning apart, as in
    the summary). Kinds and fields this tinyfed does not know are passed over."""
    rows: list[dict[str, Any]] = []
    up = down = 0
    for ev in events:
        if ev["kind"] == "bytes":
            if ev.get("what") == "provision":  # counted apart, as the summary does
                continue
            if ev.get("direction") == "up":
                up += int(ev.get("n", 0))
            elif ev.get("direction") == "down":
                down += int(ev.get("n", 0))
        elif ev["kind"] == "evaluation" and "version" in ev:
            metric = ev.get("metric", "accuracy")
            rows.append({"version": ev["version"], "t_s": ev["t"], "wall": ev.get("wall"), "metric": metric,
                         "value": ev.get(metric), "int8_value": ev.get(f"int8_{metric}"), "loss": ev.get("loss"),
                         "bytes_up": up, "bytes_down": down})
    return rows


def write_history(run_dir: str | Path) -> Path:
    """``RUN_DIR/history.csv`` (:func:`history_rows`) from the run's events, so a resumed run's file
    covers the whole run."""
    import csv
    import io

    from tinyfed.host.checkpoint import atomic_write_bytes

    run_dir = Path(run_dir)
    rows = history_rows(read_events(run_dir))
    path = run_dir / HISTORY_FILE
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))  # a full disk names the file
    return path
