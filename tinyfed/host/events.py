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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Self

from tinyfed.errors import TinyfedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["EVENTS_FILE", "KINDS", "EventLog", "EventLogError", "complete_length", "read_events", "summarize"]

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
    "evaluation": ("version", "accuracy"),
    "device_state": ("device", "state"),
    "bytes": ("direction", "n"),
    "checkpoint": ("version",),
    "run_end": (),
}
_RESERVED = ("seq", "t", "wall", "kind")
#: Boundaries after which the log is fsynced without being asked.
_SYNC_KINDS = frozenset({"aggregation", "checkpoint", "run_end"})


class EventLogError(TinyfedError):
    """The event log is damaged or does not match the checkpoint that refers to it."""


class EventLog:
    """Appends events to ``RUN_DIR/events.jsonl``; reopening an existing log continues it.

    Opening scans the file: a torn last line (a crash mid-write) is cut, and ``seq`` and ``t``
    continue from the last complete event. A resumed run then calls :meth:`truncate_to` with the
    checkpoint's position, dropping events the checkpoint does not cover.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EventLogError(
                "another process is writing this run's event log",
                fix="stop the other `tinyfed run` on this directory, or use another --out directory",
                source=str(self.path),
            ) from None

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Sync and close the file (idempotent)."""
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one event and flush it; return the event as written.

        Unknown kinds, missing required fields and values JSON cannot hold are refused here,
        where the bug is, rather than when the log is read.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(KINDS)}")
        missing = [f for f in KINDS[kind] if f not in fields]
        if missing:
            raise ValueError(f"a {kind} event needs {', '.join(missing)}")
        clash = [f for f in _RESERVED if f in fields]
        if clash:
            raise ValueError(f"event fields {clash} are set by the log")
        event: dict[str, Any] = {"seq": self._seq, "t": round(self.now(), 6), "wall": round(time.time(), 6),
                                 "kind": kind}
        event.update(fields)
        line = (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        self._fh.seek(self._end)
        written = self._fh.write(line)
        if written != len(line):  # unbuffered raw writes may be short; finish the line
            view = memoryview(line)
            while written < len(line):
                written += self._fh.write(view[written:]) or 0
        self._fh.flush()
        self._end += len(line)
        self._seq += 1
        if kind in _SYNC_KINDS:
            self.sync()
        return event

    def sync(self) -> None:
        """fsync the log so that everything up to :meth:`position` survives a power cut."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

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
        if position < 0 or position > self._end:
            raise EventLogError(
                f"the checkpoint refers to byte {position} of the event log, which has {self._end} complete bytes",
                fix="the run directory mixes files of different runs; start the run again",
                source=str(self.path),
            )
        if position > 0:
            self._fh.seek(position - 1)
            if self._fh.read(1) != b"\n":
                raise EventLogError(
                    f"byte {position} is not at the end of an event",
                    fix="the run directory mixes files of different runs; start the run again",
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
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
    for _, end in _parse(data, str(path)):
        pass
    return end


def summarize(events: Iterable[dict[str, Any]], target_accuracy: float | None = None) -> dict[str, Any]:
    """Totals of a run from its events: versions, bytes, updates, accuracy and task accounting.

    ``tasks_unaccounted`` lists dispatched tasks with no arrival, rejection or lost event;
    ``tasks_unknown`` lists outcomes for tasks never dispatched (e.g. a replayed update). A
    finished run should have both empty: that is the "nothing silently lost" check.
    ``tasks_with_several_outcomes`` lists dispatched tasks with more than one outcome event (a
    replayed update's rejection after its arrival); the engine's own tasks each have exactly one.
    """
    dispatched: dict[Any, int] = {}
    outcome: dict[Any, str] = {}
    outcome_events: Counter[Any] = Counter()
    unknown: list[Any] = []
    reasons: Counter[str] = Counter()
    device_state: dict[str, str] = {}
    bytes_up = bytes_down = 0
    versions = aggregations = 0
    accepted = rejected = lost = unfinished = 0
    provision: Counter[str] = Counter()
    final_accuracy: float | None = None
    best_accuracy: float | None = None
    first_t: float | None = None
    last_t = 0.0
    time_to_target: float | None = None
    count = 0
    for ev in events:
        count += 1
        kind = ev["kind"]
        t = float(ev.get("t", 0.0))
        first_t = t if first_t is None else first_t
        last_t = t
        task = ev.get("task")
        if kind == "dispatch":
            dispatched[task] = dispatched.get(task, 0) + 1
        elif kind in ("arrival", "rejection", "lost"):
            if kind == "arrival":
                accepted += 1
            elif kind == "rejection":
                rejected += 1
                reasons[str(ev.get("reason"))] += 1
            elif ev.get("reason") == RUN_ENDED:
                unfinished += 1
            else:
                lost += 1
            if task is not None:
                if task not in dispatched:
                    unknown.append(task)
                else:
                    outcome_events[task] += 1
                    outcome.setdefault(task, kind)
        elif kind == "aggregation":
            aggregations += 1
            versions = max(versions, int(ev["version"]))
        elif kind == "evaluation":
            final_accuracy = float(ev["accuracy"])
            best_accuracy = final_accuracy if best_accuracy is None else max(best_accuracy, final_accuracy)
            if target_accuracy is not None and time_to_target is None and final_accuracy >= target_accuracy:
                time_to_target = t
        elif kind == "device_state":
            device_state[str(ev["device"])] = str(ev["state"])
        elif kind == "bytes":
            if ev.get("what") == "provision":  # once per link, apart from the tasks' bytes
                provision[str(ev["direction"])] += int(ev["n"])
            elif ev["direction"] == "up":
                bytes_up += int(ev["n"])
            elif ev["direction"] == "down":
                bytes_down += int(ev["n"])
    outcomes = Counter(outcome.values())
    summary: dict[str, Any] = {
        "events": count,
        "versions": versions,
        "aggregations": aggregations,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "updates_accepted": accepted,
        "updates_rejected": rejected,
        "updates_lost": lost,
        "tasks_unfinished": unfinished,
        "provision_bytes_down": provision["down"],
        "provision_bytes_up": provision["up"],
        "rejection_reasons": dict(reasons),
        "final_accuracy": final_accuracy,
        "best_accuracy": best_accuracy,
        "wall_seconds": last_t - (first_t or 0.0) if count else 0.0,
        "tasks_dispatched": len(dispatched),
        "tasks_arrived": outcomes["arrival"],
        "tasks_rejected": outcomes["rejection"],
        "tasks_lost": outcomes["lost"],
        "tasks_unaccounted": [t for t in dispatched if t not in outcome],
        "tasks_unknown": unknown,
        "tasks_with_several_outcomes": [t for t, n in outcome_events.items() if n > 1],
        "device_states": device_state,
    }
    summary["all_tasks_accounted"] = not summary["tasks_unaccounted"]
    if target_accuracy is not None:
        summary["reached_target"] = time_to_target is not None
        summary["time_to_target"] = time_to_target
    return summary
