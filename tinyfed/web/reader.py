"""Fold a run directory into the dashboard's snapshot, tailing ``events.jsonl`` as it grows.

Pure Python and read-only, so it is tested without a browser and can never change a run. A
:class:`DirReader` is polled (:meth:`DirReader.refresh`); it reads only the bytes appended since the
last poll, stops at a torn last line (the writer is mid-line, or died there), and starts over when
the file was cut back or rewritten under it (``tinyfed run --resume`` truncates the log to its
checkpoint, then appends). A damaged line does not stop the dashboard: it is skipped and named in
the snapshot's ``problems``, so the page says what is wrong instead of going blank.

Two kinds of directory: a run (``tinyfed run``/``demo``: ``events.jsonl``, ``devices.json``,
``config.toml``, ``plan/plan.json``) and a study (``tinyfed simulate --out``: ``history.csv``,
``summary.csv``, ``study.json`` when finished; ``events.jsonl`` with ``study_start`` while live).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfed.host.events import EVENTS_FILE, RUN_ENDED
from tinyfed.host.runs import CONFIG_FILE, DEVICES_FILE, HISTORY_FILE, STUDY_FILE, SUMMARY_FILE, run_target

log = logging.getLogger(__name__)

__all__ = ["BOARD_STATES", "DirReader", "EventTail"]

#: The run's plan, whose budgets the page shows.
PLAN_FILE = "plan/plan.json"
#: What a board can be doing, as the page shows it.
BOARD_STATES = ("provisioning", "idle", "training", "uploading", "late", "offline", "backing off")
#: A task running this many times longer than its peers' median is shown late.
LATE_FACTOR = 3.0
#: ... and at least this long (seconds), so a fast fleet's jitter is not called late.
LATE_MIN_S = 5.0
#: Reasons (the error's class name leads them) that mean the link, not the task, failed: offline.
LINK_ERRORS = ("DeviceUnreachable", "LinkTimeout", "LinkError", "ProtocolError", "ProtocolVersionMismatch",
               "SerialException", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError",
               "BrokenPipeError", "TimeoutError", "OSError")
#: A lost task's reason that is the host's doing, not the board's (``tinyfed.host.engine.HOST_RESTARTED``; the
#: engine module itself is too heavy to import here).
HOST_RESTARTED = "host restarted"
#: Aggregations and arrivals kept for the charts (the counts cover the whole run).
KEEP_AGGREGATIONS = 200


class EventTail:
    """The complete lines appended to a JSONL file since the last poll, tolerant of everything a live
    writer does: a missing file, a torn last line, a truncation or rewrite (then ``reset`` is true and
    the events start from the top again), a damaged line (skipped, counted in ``problems``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._last_line = b""  # the last complete line read, to notice a rewrite under the same size
        self.problems: list[str] = []
        self.lines = 0

    def _rewritten(self, fh: Any, size: int) -> bool:
        if size < self.offset:
            return True
        if not self._last_line:
            return False
        fh.seek(self.offset - len(self._last_line))
        return bool(fh.read(len(self._last_line)) != self._last_line)

    def poll(self) -> tuple[bool, list[dict[str, Any]]]:
        """(whether the file started over, the new events)."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            reset = self.offset > 0
            self.offset, self._last_line, self.lines = 0, b"", 0
            return reset, []
        with fh:
            size = fh.seek(0, 2)
            reset = self._rewritten(fh, size)
            if reset:
                self.offset, self._last_line, self.lines, self.problems = 0, b"", 0, []
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return reset, []
        events = []
        for raw in data[:end].split(b"\n"):
            self.lines += 1
            self._last_line = raw + b"\n"
            try:
                ev = json.loads(raw)
            except ValueError as exc:
                self._problem(f"line {self.lines} of {self.path.name} is not valid JSON ({exc}); skipped")
                continue
            if not isinstance(ev, dict) or not isinstance(ev.get("kind"), str):
                self._problem(f"line {self.lines} of {self.path.name} is not an event (no kind); skipped")
                continue
            events.append(ev)
        self.offset += end + 1
        return reset, events

    def _problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


@dataclass
class Board:
    """One board as the dashboard shows it."""

    name: str
    kind: str = "?"
    url: str = ""
    state: str = "provisioning"
    reason: str | None = None
    since: float = 0.0
    task_started: float | None = None
    task_version: int | None = None
    last_update_t: float | None = None
    staleness: int | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    accepted: int = 0
    rejected: int = 0
    lost: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def link(self) -> str:
        scheme = self.url.split("://", 1)[0] if "://" in self.url else ("serial" if self.url else "?")
        return {"socket": "qemu uart (socket)", "sim": "sim"}.get(scheme, scheme)


def _link_error(reason: str | None) -> bool:
    return bool(reason) and str(reason).split(":", 1)[0].strip() in LINK_ERRORS


def _num(x: Any) -> float | None:
    """A finite float or None (a metric may be missing or NaN in an event; JSON cannot carry NaN)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class RunFold:
    """The state of a ``tinyfed run`` from its events, folded one event at a time."""

    def __init__(self) -> None:
        self.boards: dict[str, Board] = {}
        self.series: list[dict[str, Any]] = []
        self.aggregations: list[dict[str, Any]] = []
        self.staleness_hist: Counter[int] = Counter()
        self.reasons: Counter[str] = Counter()
        self.task_seconds: list[float] = []
        self.strategy: str | None = None
        self.metric = "accuracy"
        self.version = 0
        self.bytes_up = self.bytes_down = self.provision_down = 0
        self.accepted = self.rejected = self.lost = 0
        self.status = "waiting"
        self.reached_target: bool | None = None
        self.first_wall: float | None = None
        self.last_t = 0.0
        self.last_wall: float | None = None
        self.deadline_version: int | None = None
        self.resumes = 0
        self.buffer_size: int | None = None
        self.events = 0

    def board(self, name: str) -> Board:
        b = self.boards.get(name)
        if b is None:
            b = self.boards[name] = Board(name)
        return b

    def add(self, ev: dict[str, Any]) -> None:
        """Fold one event; unknown kinds and fields are ignored (newer writers may add some)."""
        self.events += 1
        t = _num(ev.get("t")) or 0.0
        self.last_t = max(self.last_t, t)
        wall = _num(ev.get("wall"))
        if wall is not None:
            self.last_wall = wall
            self.first_wall = wall if self.first_wall is None else self.first_wall
        handler = getattr(self, f"_on_{ev['kind']}", None)
        if handler is not None:
            try:
                handler(ev, t)
            except (KeyError, TypeError, ValueError) as exc:  # a field of the wrong shape: skip, never crash
                log.debug("event %s skipped: %s", ev.get("seq"), exc)

    def _on_run_start(self, ev: dict[str, Any], t: float) -> None:
        self.strategy = str(ev.get("label") or ev.get("strategy") or "")
        self.status = "running"
        for name in ev.get("devices") or []:
            self.board(str(name))

    def _on_resume(self, ev: dict[str, Any], t: float) -> None:
        self.status = "running"
        self.resumes += 1
        self.version = int(ev.get("version", self.version))
        for b in self.boards.values():  # the host restarted: every link is made again
            b.state, b.since, b.task_started, b.reason = "provisioning", t, None, None

    def _on_dispatch(self, ev: dict[str, Any], t: float) -> None:
        b = self.board(str(ev["device"]))
        b.state, b.since, b.task_started, b.reason = "training", t, t, None
        b.task_version = int(ev.get("version", self.version))

    def _end_task(self, b: Board, t: float) -> None:
        if b.task_started is not None:
            self.task_seconds.append(t - b.task_started)
            self.task_seconds = self.task_seconds[-500:]
        b.task_started = None
        if b.state in ("training", "uploading"):
            b.state, b.since = "idle", t

    def _on_arrival(self, ev: dict[str, Any], t: float) -> None:
        self.accepted += 1
        if "device" not in ev:
            return
        b = self.board(str(ev["device"]))
        b.accepted += 1
        b.last_update_t = t
        if ev.get("staleness") is not None:
            b.staleness = int(ev["staleness"])
            self.staleness_hist[b.staleness] += 1
        self._end_task(b, t)

    def _on_rejection(self, ev: dict[str, Any], t: float) -> None:
        self.rejected += 1
        reason = str(ev.get("reason"))
        self.reasons[reason] += 1
        if "device" in ev:
            b = self.board(str(ev["device"]))
            b.rejected += 1
            b.reasons[reason] += 1
            self._end_task(b, t)

    def _on_lost(self, ev: dict[str, Any], t: float) -> None:
        if ev.get("reason") in (RUN_ENDED, HOST_RESTARTED):
            return
        self.lost += 1
        if "device" in ev:
            b = self.board(str(ev["device"]))
            b.lost += 1
            b.task_started = None
            b.reason = str(ev.get("reason"))

    def _on_device_state(self, ev: dict[str, Any], t: float) -> None:
        b = self.board(str(ev["device"]))
        state, reason = str(ev["state"]), ev.get("reason")
        if state == "backoff":
            state = "offline" if _link_error(reason) else "backing off"
        elif state == "dropped":
            state = "offline"
        elif state == "busy":
            state = "training"
        if state == "idle" and b.state in ("training", "uploading"):
            self._end_task(b, t)
        b.state, b.since = state, t
        b.reason = None if state in ("idle", "training", "uploading") else (str(reason) if reason else b.reason)

    def _on_bytes(self, ev: dict[str, Any], t: float) -> None:
        n, up = int(ev["n"]), ev["direction"] == "up"
        if ev.get("what") == "provision":
            self.provision_down += 0 if up else n
        elif up:
            self.bytes_up += n
        else:
            self.bytes_down += n
        if "device" in ev:
            b = self.board(str(ev["device"]))
            if up:
                b.bytes_up += n
            else:
                b.bytes_down += n

    def _on_aggregation(self, ev: dict[str, Any], t: float) -> None:
        self.version = int(ev["version"])
        if ev.get("buffer_size") is not None:
            self.buffer_size = int(ev["buffer_size"])
        weights = ev.get("weights")
        stale = ev.get("staleness")
        self.aggregations.append({
            "version": self.version, "t": t, "updates": int(ev.get("updates") or len(ev.get("tasks") or [])),
            "buffer_size": ev.get("buffer_size"),
            "weights": [float(w) for w in weights] if isinstance(weights, list) else None,
            "staleness": [int(s) for s in stale] if isinstance(stale, list) else None,
        })
        del self.aggregations[:-KEEP_AGGREGATIONS]

    def _on_deadline(self, ev: dict[str, Any], t: float) -> None:
        self.deadline_version = int(ev["version"])

    def _on_evaluation(self, ev: dict[str, Any], t: float) -> None:
        self.metric = str(ev.get("metric", "accuracy"))
        value = _num(ev.get(self.metric))
        version = int(ev["version"])
        self.version = max(self.version, version)
        self.series = [p for p in self.series if p["version"] < version]  # a resume re-evaluates a version
        self.series.append({"version": version, "t": t, "wall": ev.get("wall"), "value": value,
                            "int8": _num(ev.get(f"int8_{self.metric}")), "loss": _num(ev.get("loss")),
                            "bytes": self.bytes_up + self.bytes_down})

    def _on_run_end(self, ev: dict[str, Any], t: float) -> None:
        self.status = "finished"
        self.reached_target = bool(ev.get("reached_target"))
        for b in self.boards.values():
            if b.state in ("training", "uploading", "provisioning"):
                b.state, b.since, b.task_started = "idle", t, None

    # -- derived -------------------------------------------------------------------------------

    def now(self) -> float:
        """Run time now: the last event's, moved on by the wall clock while the run goes."""
        if self.status != "running" or self.last_wall is None:
            return self.last_t
        return self.last_t + max(0.0, time.time() - self.last_wall)

    def shown_state(self, b: Board, now: float, typical: float | None) -> str:
        """``late`` for a task past a strategy's deadline or far slower than its peers."""
        if b.state != "training" or b.task_started is None:
            return b.state
        if self.deadline_version is not None and b.task_version is not None \
                and b.task_version <= self.deadline_version:
            return "late"
        if typical is not None and now - b.task_started > max(LATE_MIN_S, LATE_FACTOR * typical):
            return "late"
        return b.state

    def typical_task(self) -> float | None:
        return statistics.median(self.task_seconds) if len(self.task_seconds) >= 3 else None


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{path.name} cannot be read ({exc}); shown without it")
        return None


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"{path.name} cannot be read ({exc}); shown without it")
        return {}


def _read_csv(path: Path, problems: list[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path.name} cannot be read ({exc}); shown without it")
        return []


def _budgets(plan: Any) -> dict[str, dict[str, Any]]:
    """Per board profile: RAM and flash used against the budget, from ``plan/plan.json``."""
    out: dict[str, dict[str, Any]] = {}
    boards = plan.get("boards") if isinstance(plan, dict) else None
    if not isinstance(boards, dict):
        return out
    for kind, b in boards.items():
        if isinstance(b, dict):
            out[kind] = {k: b.get(k) for k in ("ram_bytes_used", "ram_bytes_budget", "flash_bytes_used",
                                                "flash_bytes_budget")}
    return out


class StudyFold:
    """A ``tinyfed simulate`` study: the strategies' curves over virtual time and bytes."""

    def __init__(self) -> None:
        self.curves: dict[str, list[dict[str, Any]]] = {}
        self.strategies: list[str] = []
        self.target: float | None = None
        self.clients: int | None = None
        self.time_to_target: dict[str, float | None] = {}
        self.ended: set[str] = set()
        self.status = "waiting"
        self.leg: str | None = None

    def point(self, strategy: str, row: dict[str, Any]) -> None:
        if strategy not in self.curves:
            self.curves[strategy] = []
            if strategy not in self.strategies:
                self.strategies.append(strategy)
        acc = _num(row.get("accuracy", row.get("value")))
        p = {"version": int(float(row.get("version") or 0)), "t": _num(row.get("sim_time_s")) or 0.0,
             "value": acc, "bytes": int(_num(row.get("bytes_total")) or 0)}
        self.curves[strategy].append(p)
        if acc is not None and self.target is not None and acc >= self.target \
                and self.time_to_target.get(strategy) is None:
            self.time_to_target[strategy] = p["t"]

    def add(self, ev: dict[str, Any]) -> None:
        kind = ev["kind"]
        if kind == "study_start":
            self.status = "running"
            self.strategies = [str(s) for s in ev.get("strategies") or []]
            self.target = _num(ev.get("target_accuracy"))
            self.clients = ev.get("clients")
        elif kind == "evaluation" and ev.get("strategy") is not None:
            self.point(str(ev["strategy"]), ev)
        elif kind == "leg":
            self.leg = str(ev.get("text") or ev.get("leg") or ev.get("strategy") or "")
        elif kind == "strategy_end" and ev.get("strategy") is not None:
            self.ended.add(str(ev["strategy"]))
        elif kind == "study_end":
            self.status = "finished"


class DirReader:
    """One directory the dashboard shows; :meth:`refresh` takes in what changed on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tail = EventTail(self.path / EVENTS_FILE)
        self.fold = RunFold()
        self.study: StudyFold | None = None
        self.generation = 0  # bumps on every change: the stream's cue to push
        self._files: tuple[Any, ...] = ()
        self._problems: list[str] = []
        self._config: dict[str, Any] = {}
        self._devices: Any = None
        self._budgets: dict[str, dict[str, Any]] = {}

    @property
    def kind(self) -> str:
        return "study" if self.study is not None else "run"

    def _signature(self) -> tuple[Any, ...]:
        sig: list[tuple[str, int | None, int | None]] = []
        for name in (CONFIG_FILE, DEVICES_FILE, PLAN_FILE, STUDY_FILE, HISTORY_FILE, SUMMARY_FILE):
            try:
                st = (self.path / name).stat()
                sig.append((name, st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append((name, None, None))
        return tuple(sig)

    def refresh(self) -> bool:
        """Read what changed; True when the snapshot did."""
        changed = False
        sig = self._signature()
        if sig != self._files:
            self._files = sig
            self._load_files()
            changed = True
        reset, events = self.tail.poll()
        if reset:
            self.fold = RunFold()
            self._apply_devices()
            if self.study is not None and not (self.path / STUDY_FILE).exists():
                self.study = StudyFold()
            changed = True
        for ev in events:
            if ev["kind"] == "study_start" and self.study is None:
                self.study = StudyFold()
            if self.study is not None and not self._study_finished():
                self.study.add(ev)
            else:
                self.fold.add(ev)
        if events:
            changed = True
        if changed:
            self.generation += 1
        return changed

    def _study_finished(self) -> bool:
        return (self.path / HISTORY_FILE).exists() and (self.path / STUDY_FILE).exists()

    def _load_files(self) -> None:
        problems: list[str] = []
        self._config = _read_toml(self.path / CONFIG_FILE, problems)
        self._devices = _read_json(self.path / DEVICES_FILE, problems)
        self._budgets = _budgets(_read_json(self.path / PLAN_FILE, problems))
        study = _read_json(self.path / STUDY_FILE, problems)
        if isinstance(study, dict) or self._study_finished():
            self._load_study(study if isinstance(study, dict) else {}, problems)
        self._problems = problems
        self._apply_devices()

    def _apply_devices(self) -> None:
        """Each board's profile and URL from ``devices.json`` (the events name boards only)."""
        devices = self._devices.get("devices") if isinstance(self._devices, dict) else None
        for d in devices if isinstance(devices, list) else []:
            if isinstance(d, dict) and "name" in d:
                b = self.fold.board(str(d["name"]))
                b.kind, b.url = str(d.get("board", "?")), str(d.get("url", ""))

    def _load_study(self, study: dict[str, Any], problems: list[str]) -> None:
        """A finished study from its files (they hold every point; the live events may have been cut)."""
        s = StudyFold()
        config: dict[str, Any] = study["config"] if isinstance(study.get("config"), dict) else {}
        s.target, s.clients = _num(config.get("target_accuracy")), config.get("clients")
        s.strategies = [str(x) for x in config.get("strategies") or []]
        for row in _read_csv(self.path / HISTORY_FILE, problems):
            if row.get("strategy"):
                try:
                    s.point(row["strategy"], row)
                except ValueError:
                    problems.append("history.csv has a row that is not numbers; skipped")
        results: dict[str, Any] = study["results"] if isinstance(study.get("results"), dict) else {}
        for name, r in results.items():
            if isinstance(r, dict):
                s.time_to_target[name] = _num(r.get("time_to_target_s"))
        s.status = "finished"
        self.study = s

    # -- views ---------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        out = list(self._problems) + list(self.tail.problems)
        if not self.path.exists():
            out.insert(0, f"{self.path} does not exist (yet): waiting for the run to write it")
        elif not self.path.is_dir():
            out.insert(0, f"{self.path} is not a directory")
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything but the board rows (see :meth:`boards`): small even for 10,000 boards."""
        base = {"path": str(self.path), "name": self.path.name, "kind": self.kind, "generation": self.generation,
                "problems": self.problems()}
        if self.study is not None:
            return {**base, **self._study_snapshot(self.study)}
        f = self.fold
        now, typical = f.now(), f.typical_task()
        states: Counter[str] = Counter(f.shown_state(b, now, typical) for b in f.boards.values())
        last = f.aggregations[-1] if f.aggregations else None
        status = f.status if f.events or self.path.exists() else "waiting"
        devices = self._devices if isinstance(self._devices, dict) else {}
        return {**base, "status": status, "strategy": f.strategy or self._config.get("strategy"),
                "model": self._config.get("model"), "source": devices.get("source"),
                "metric": f.metric, "target": run_target(self._config, f.metric) if self._config else None,
                "version": f.version,
                "value": f.series[-1]["value"] if f.series else None, "series": f.series,
                "now": now, "started_wall": f.first_wall, "resumes": f.resumes, "reached_target": f.reached_target,
                "bytes_up": f.bytes_up, "bytes_down": f.bytes_down, "provision_bytes_down": f.provision_down,
                "accepted": f.accepted, "rejected": f.rejected, "lost": f.lost,
                "rejection_reasons": dict(f.reasons), "boards_total": len(f.boards),
                "states": {s: states.get(s, 0) for s in BOARD_STATES},
                "budgets": self._budgets, "buffer_size": f.buffer_size,
                "aggregations": len(f.aggregations), "last_aggregation": last,
                "staleness_histogram": {str(k): v for k, v in sorted(f.staleness_hist.items())},
                "buffer_fill": self._buffer_fill()}

    def _buffer_fill(self) -> dict[str, Any]:
        """Updates accepted since the last aggregation against the buffer's size (when known)."""
        f = self.fold
        size = f.buffer_size  # newer engines record it; the configured size is not what a small fleet fills
        since = f.accepted - sum(a["updates"] for a in f.aggregations) if len(f.aggregations) < KEEP_AGGREGATIONS \
            else None
        return {"size": size, "filled": max(0, since) if since is not None else None}

    def _study_snapshot(self, s: StudyFold) -> dict[str, Any]:
        return {"status": s.status, "strategies": s.strategies, "target": s.target, "clients": s.clients,
                "curves": s.curves, "time_to_target": s.time_to_target, "leg": s.leg,
                "versions": {k: (v[-1]["version"] if v else 0) for k, v in s.curves.items()}}

    def boards(self, offset: int = 0, limit: int = 50, state: str | None = None,
               query: str | None = None) -> dict[str, Any]:
        """One page of board rows, filtered by shown state and a name substring."""
        f = self.fold
        now, typical = f.now(), f.typical_task()
        rows = []
        matched = 0
        counts: Counter[str] = Counter()
        for b in f.boards.values():
            shown = f.shown_state(b, now, typical)
            counts[shown] += 1
            if (state and shown != state) or (query and query not in b.name):
                continue
            matched += 1
            if offset < matched <= offset + limit:
                rows.append(self._row(b, shown, now))
        # the counts of the same moment as the rows, so the page's tiles never disagree with them
        return {"total": len(f.boards), "matched": matched, "offset": offset, "limit": limit, "rows": rows,
                "states": {s: counts.get(s, 0) for s in BOARD_STATES}}

    def _row(self, b: Board, shown: str, now: float) -> dict[str, Any]:
        budget = self._budgets.get(b.kind, {})
        return {"name": b.name, "kind": b.kind, "link": b.link, "url": b.url, "state": shown, "reason": b.reason,
                "for_s": round(max(0.0, now - b.since), 1),
                "last_update_s": None if b.last_update_t is None else round(max(0.0, now - b.last_update_t), 1),
                "staleness": b.staleness, "bytes_up": b.bytes_up, "bytes_down": b.bytes_down,
                "accepted": b.accepted, "rejected": b.rejected, "lost": b.lost, "reasons": dict(b.reasons),
                **budget}
