"""Past runs read back: what ``tinyfed runs list|show|compare|export`` work from.

Two kinds of directory count as runs. A *run* is what ``tinyfed run`` (or ``demo``) leaves:
``config.toml``, ``devices.json``, ``events.jsonl``, checkpoints, ``history.csv``; its figures
come from the event log, the record of truth (``history.csv`` is derived from it). A *simulate*
output is what ``tinyfed simulate --out`` leaves: ``study.json``, ``summary.csv`` and a
``history.csv`` with a ``strategy`` column (and, while it runs, a live ``events.jsonl``).

Reading never writes, and tolerates what a newer or parallel tinyfed may add (unknown event kinds
and fields). A torn last event line (a host killed mid-write) is skipped and reported; anything
else that cannot be trusted (a damaged line in the middle of the log, an unreadable config or
history) is a :class:`RunsError` naming the file and the fix, which ``runs list`` shows in the
entry's row instead of stopping.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import textwrap
import tomllib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfed.errors import TinyfedError
from tinyfed.host.events import EVENTS_FILE, history_rows, read_events, summarize
from tinyfed.host.plots import Curve
from tinyfed.host.rundir import lock_holder

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"  # tinyfed.host.config.CONFIG_FILE, not imported: that module pulls in pydantic
DEVICES_FILE = "devices.json"  # tinyfed.commands.run.DEVICES_FILE
STUDY_FILE = "study.json"
SUMMARY_FILE = "summary.csv"
HISTORY_FILE = "history.csv"
#: A classifier run's target when its config names none (tinyfed.host.config.DEFAULT_TARGET_ACCURACY).
DEFAULT_TARGET_ACCURACY = 0.85
#: Columns a simulate output's history.csv must have for its curves.
STUDY_HISTORY_COLUMNS = ("strategy", "version", "sim_time_s", "accuracy", "bytes_total")

RUN_FIX = "give a directory made by `tinyfed run`, `tinyfed demo` or `tinyfed simulate --out`"


class RunsError(TinyfedError):
    """A run directory that is missing, is not a run, or holds files that cannot be read."""


@dataclass
class RunRecord:
    """What one run (or simulate output) directory says about itself.

    ``status``: ``finished`` (a run_end after its last start or resume; a study's outputs are
    written), ``running`` (no end yet and a process holds the event log's lock), ``interrupted``
    (no end and nobody writing; ``resumable`` when a checkpoint is there) or ``damaged`` (then
    ``problem`` says why, and the figures are unknown).
    """

    path: Path
    kind: str
    status: str = "finished"
    problem: str | None = None
    model: str | None = None
    strategy: str | None = None
    fleet: str | None = None
    seed: int | None = None
    started: float | None = None
    duration_s: float | None = None
    versions: int | None = None
    metric: str = "accuracy"
    final: float | None = None
    best: float | None = None
    target: float | None = None
    reached: bool | None = None
    time_to_target_s: float | None = None
    bytes_to_target: int | None = None
    resumable: bool = False
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    def row(self) -> dict[str, Any]:
        """The record's line in ``runs list`` (JSON-able)."""
        keys = ("kind", "status", "problem", "model", "strategy", "fleet", "seed", "started", "duration_s",
                "versions", "metric", "final", "best", "target", "reached", "time_to_target_s", "bytes_to_target",
                "resumable", "notes")
        out: dict[str, Any] = {"name": self.name, "path": str(self.path)}
        out.update({k: getattr(self, k) for k in keys})
        if self.kind == "simulate":
            out["strategies"] = self.strategies
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything ``runs show --json`` prints."""
        return {**self.row(), "summary": self.summary, "config": self.config, "devices": self.devices,
                "history": self.history}


# -- finding runs ------------------------------------------------------------------------------


def run_kind(path: Path) -> str | None:
    """``run``, ``simulate`` or None (not a run directory), from the files it holds."""
    if not path.is_dir():
        return None
    if (path / STUDY_FILE).exists() or (path / SUMMARY_FILE).exists():
        return "simulate"
    if (path / CONFIG_FILE).exists() or (path / DEVICES_FILE).exists():
        return "run"
    events = path / EVENTS_FILE
    if events.exists():
        return "simulate" if _first_kind(events) == "study_start" else "run"
    return None


def _first_kind(events: Path) -> str | None:
    kind = _first_event(events).get("kind")
    return None if kind is None else str(kind)


def _first_event(events: Path) -> dict[str, Any]:
    """The first event of a log, read alone (empty when there is none or it cannot be read)."""
    try:
        with open(events, "rb") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return {}
    return first if isinstance(first, dict) else {}


def scan(root: Path) -> list[RunRecord]:
    """Every run under ``root`` (its subdirectories, or ``root`` itself when it is one), oldest
    first; an entry that cannot be read is a ``damaged`` record carrying the problem."""
    if not root.exists():
        raise RunsError("no such directory", fix="give the directory your runs are in (`tinyfed run` puts them "
                                                 "in runs/)", source=str(root))
    if not root.is_dir():
        raise RunsError("not a directory", fix="give the directory your runs are in, e.g. runs/", source=str(root))
    candidates = [root] if run_kind(root) else sorted(p for p in root.iterdir() if run_kind(p))
    records = []
    for p in candidates:
        try:
            records.append(load(p))
        except TinyfedError as exc:
            records.append(RunRecord(path=p, kind=run_kind(p) or "run", status="damaged", problem=exc.one_line()))
    return sorted(records, key=lambda r: (r.started is None, r.started or 0.0, r.name))


def load(path: Path) -> RunRecord:
    """One run or simulate output directory, read; a :class:`RunsError` when it is missing or damaged."""
    if not path.exists():
        raise RunsError("no such run directory", fix=RUN_FIX, source=str(path))
    kind = run_kind(path)
    if kind is None:
        raise RunsError("not a run directory: no events.jsonl, config.toml or study.json in it", fix=RUN_FIX,
                        source=str(path))
    try:
        return _load_study(path) if kind == "simulate" else _load_run(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RunsError(f"cannot read the run: {exc}", fix="check the directory's files and permissions",
                        source=str(path)) from None


# -- a run -------------------------------------------------------------------------------------


def _load_run(path: Path) -> RunRecord:
    config = _read_toml(path / CONFIG_FILE)
    devices = _read_json(path / DEVICES_FILE)
    events, torn = read_log(path / EVENTS_FILE, missing_fix="the run stopped before it trained (see its "
                                                            "config.toml); start it again")
    rec = RunRecord(path=path, kind="run", config=config, devices=devices, events=events)
    rec.status, rec.resumable = _run_status(path, events, ("run_start", "resume"), "run_end")
    if torn and rec.status != "running":
        rec.notes.append(f"a torn last event line ({torn} bytes) was skipped: the host was killed mid-write")
    rec.model = _model_name(config.get("model"))
    start = next((e for e in events if e["kind"] == "run_start"), {})
    rec.strategy = str(config.get("strategy") or start.get("label") or start.get("strategy") or "?")
    rec.seed = _int_or_none(config.get("seed"))
    rec.fleet = fleet_text(devices, start)
    rec.metric = next((str(e.get("metric", "accuracy")) for e in events if e["kind"] == "evaluation"), "accuracy")
    rec.target = run_target(config, rec.metric)
    try:
        rec.summary = summarize(events, rec.target)
        rec.history = history_rows(events)
    except (KeyError, ValueError, TypeError) as exc:
        raise RunsError(f"an event of the log lacks a field this tinyfed needs ({exc})",
                        fix="the log was written by an incompatible tinyfed; read it with that version",
                        source=str(path / EVENTS_FILE)) from None
    s = rec.summary
    rec.started = float(events[0]["wall"]) if events and "wall" in events[0] else None
    rec.duration_s = float(s["wall_seconds"])
    rec.versions = int(s["versions"])
    rec.final, rec.best = s.get(f"final_{rec.metric}"), s.get(f"best_{rec.metric}")
    rec.curves = [run_curve(rec)]
    _to_target(rec)
    return rec


def read_log(path: Path, missing_fix: str = RUN_FIX) -> tuple[list[dict[str, Any]], int]:
    """The complete events of a log and the size in bytes of a torn last line (0 when none)."""
    if not path.exists():
        raise RunsError("no event log (events.jsonl) here", fix=missing_fix, source=str(path.parent))
    events = list(read_events(path))
    with open(path, "rb") as f:  # a torn line is what follows the last newline
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 65536))
        tail = f.read()
    torn = len(tail) - (tail.rfind(b"\n") + 1) if b"\n" in tail or size <= 65536 else 0
    return events, torn


def _run_status(path: Path, events: list[dict[str, Any]], starts: tuple[str, ...], end: str) -> tuple[str, bool]:
    """(status, resumable) from the last start/end event and whether a writer holds the log."""
    last = None
    for ev in events:
        if ev["kind"] in starts or ev["kind"] == end:
            last = ev["kind"]
    resumable = any(path.glob("checkpoint-*.json"))
    if last == end:
        return "finished", resumable
    if being_written(path / EVENTS_FILE) or lock_holder(path) is not None:
        return "running", False
    return "interrupted", resumable


def being_written(events_file: Path) -> bool:
    """Whether a process holds the event log's writer lock (:class:`~tinyfed.host.events.EventLog`
    takes it for the life of a run). Probed with a shared lock taken and dropped at once."""
    if fcntl is None:  # pragma: no cover - no advisory locks: a log written to in the last minute counts
        import time

        return events_file.exists() and time.time() - events_file.stat().st_mtime < 60
    try:
        fd = os.open(events_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if it was taken
    return False


def run_target(config: dict[str, Any], metric: str) -> float | None:
    """The target a run's config sets for ``metric``, as :meth:`~tinyfed.host.config.RunConfig.stop_target`
    reads it: the config's own, else the classifier's default (for a classifier: other tasks have none).
    ``tinyfed runs`` and the dashboard both read it here."""
    for key in ("target_metric", "target_accuracy"):
        if isinstance(config.get(key), int | float):
            return float(config[key])
    classifier = metric == "accuracy" and config.get("task", "classify") == "classify"
    return DEFAULT_TARGET_ACCURACY if classifier else None


def fleet_text(devices: dict[str, Any] | None, start: dict[str, Any]) -> str:
    """The fleet in a few words: ``4 x sim mps2-an386``, ``8 x QEMU mps2-an386``, ``lab.toml: 3 devices``."""
    if not devices:
        n = len(start.get("devices") or [])
        return f"{n} devices" if n else "?"
    listed = [d for d in devices.get("devices", []) if isinstance(d, dict)]
    boards = Counter(str(d.get("board")) for d in listed)
    mix = ", ".join(f"{n} x {b}" for b, n in boards.most_common())
    source = devices.get("source")
    if source == "fleet":
        fleet = Path(str(devices.get("fleet") or "fleet")).name
        return f"{fleet}: {mix}"
    word = {"simulate": "sim", "emulate": "QEMU"}.get(str(source), str(source))
    if len(boards) == 1:
        return f"{len(listed)} x {word} {next(iter(boards))}"
    return f"{word}: {mix}"


def run_curve(rec: RunRecord) -> Curve:
    """The run's metric per evaluated version, in run seconds, as a chart's line."""
    h = rec.history
    return Curve(label=f"{rec.name}: {rec.strategy}", metric=rec.metric, time_s=[float(r["t_s"]) for r in h],
                 version=[int(r["version"]) for r in h], value=[_float_or_none(r["value"]) for r in h],
                 bytes=[int(r["bytes_up"]) + int(r["bytes_down"]) for r in h],
                 end_s=float(rec.events[-1]["t"]) if rec.events else None)


def _to_target(rec: RunRecord) -> None:
    """Time, bytes and whether the run's curve reached its target."""
    curve = rec.curves[0]
    i = curve.first_reaching(rec.target)
    rec.reached = None if rec.target is None else i is not None
    if i is not None:
        rec.time_to_target_s, rec.bytes_to_target = curve.time_s[i], curve.bytes[i]


def device_tallies(events: Iterable[dict[str, Any]], devices: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per device: tasks dispatched, updates accepted, rejected and lost, bytes each way (tasks and
    provisioning apart) and its last state; boards from ``devices.json`` when given."""
    board = {str(d.get("name")): d.get("board") for d in (devices or {}).get("devices", []) if isinstance(d, dict)}
    names = list(board)
    tally: dict[str, Counter[str]] = defaultdict(Counter)
    state: dict[str, str] = {}
    task_device: dict[Any, str] = {}
    for ev in events:
        kind, dev = ev["kind"], ev.get("device")
        if dev is None and ev.get("task") in task_device:
            dev = task_device[ev["task"]]
        if dev is None:
            continue
        dev = str(dev)
        if dev not in board and dev not in names:
            names.append(dev)
        if kind == "dispatch":
            task_device[ev.get("task")] = dev
            tally[dev]["tasks"] += 1
        elif kind in ("arrival", "rejection", "lost"):
            tally[dev][{"arrival": "accepted", "rejection": "rejected", "lost": "lost"}[kind]] += 1
        elif kind == "bytes" and ev.get("direction") in ("up", "down"):
            what = "provision_" if ev.get("what") == "provision" else ""
            tally[dev][f"{what}bytes_{ev['direction']}"] += int(ev.get("n", 0))
        elif kind == "device_state":
            state[dev] = str(ev.get("state"))
    cols = ("tasks", "accepted", "rejected", "lost", "bytes_down", "bytes_up", "provision_bytes_down",
            "provision_bytes_up")
    return [{"device": n, "board": board.get(n), **{c: tally[n][c] for c in cols}, "state": state.get(n)}
            for n in names]


def aggregation_rows(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per aggregation: version, Unix time, updates merged and their staleness (mean, max), from the
    aggregation's own ``staleness`` when it carries one, else from its tasks' arrivals."""
    staleness: dict[Any, float] = {}
    rows = []
    for ev in events:
        if ev["kind"] == "arrival" and isinstance(ev.get("staleness"), int | float):
            staleness[ev.get("task")] = float(ev["staleness"])
        elif ev["kind"] == "aggregation" and "version" in ev:
            own = ev.get("staleness")
            values = [float(v) for v in own if isinstance(v, int | float)] if isinstance(own, list) else \
                [staleness[t] for t in ev.get("tasks") or [] if t in staleness]
            rows.append({"version": int(ev["version"]), "wall": ev.get("wall"), "t_s": ev.get("t"),
                         "updates": ev.get("updates", len(values)),
                         "staleness_mean": sum(values) / len(values) if values else None,
                         "staleness_max": max(values) if values else None})
    return rows


# -- a simulate output -------------------------------------------------------------------------


def _load_study(path: Path) -> RunRecord:
    study = _read_json(path / STUDY_FILE)
    if study is None and not (path / EVENTS_FILE).exists():
        raise RunsError("the study's outputs are incomplete: summary.csv without study.json",
                        fix="run the `tinyfed simulate ... --out` again", source=str(path))
    rec = RunRecord(path=path, kind="simulate")
    events: list[dict[str, Any]] = []
    if study is None and (path / EVENTS_FILE).exists():  # with its outputs written, the live log is not needed
        events, torn = read_log(path / EVENTS_FILE)
        if torn:
            rec.notes.append(f"a torn last event line ({torn} bytes) was skipped")
    if study is None:  # still running, or stopped before its outputs: what the live log says
        rec.status, _ = _run_status(path, events, ("study_start",), "study_end")
        start = next((e for e in events if e["kind"] == "study_start"), {})
        given = start.get("config")
        config: dict[str, Any] = given if isinstance(given, dict) else start
        results: dict[str, Any] = {}
        rec.history = _study_history_from_events(events)
    else:
        config = study.get("config") or {}
        results = study.get("results") or {}
        rec.history = read_study_history(path / HISTORY_FILE)
        rec.fleet = (study.get("study") or {}).get("fleet")
    rec.config, rec.events = config, events
    rec.model = _model_name(config.get("model"))
    rec.seed = _int_or_none(config.get("seed"))
    rec.fleet = rec.fleet or (f"{config['clients']} simulated boards" if "clients" in config else None)
    rec.target = _float_or_none(config.get("target_accuracy"))
    first = events[0] if events else _first_event(path / EVENTS_FILE)
    rec.started = float(first["wall"]) if isinstance(first.get("wall"), int | float) else _study_started(path, results)
    _study_figures(rec, results)
    return rec


def read_study_history(path: Path) -> list[dict[str, Any]]:
    """A simulate output's history.csv as rows of numbers (strategy kept as text)."""
    fix = "the study's outputs are incomplete or damaged; run the `tinyfed simulate ... --out` again"
    if not path.exists():
        raise RunsError("the study has no history.csv", fix=fix, source=str(path.parent))
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in STUDY_HISTORY_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise RunsError(f"history.csv lacks the column(s) {', '.join(missing)}", fix=fix, source=str(path))
        for n, raw in enumerate(reader, start=2):
            try:
                row: dict[str, Any] = {k: (v if k == "strategy" else _number(v)) for k, v in raw.items() if k}
            except ValueError as exc:
                raise RunsError(f"line {n} of history.csv is not a row of numbers ({exc})", fix=fix,
                                source=str(path)) from None
            rows.append(row)
    return rows


def _study_history_from_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A running study's history from its live log's ``evaluation`` events (fields as far as they go)."""
    rows = []
    for ev in events:
        if ev["kind"] == "evaluation" and "version" in ev:
            rows.append({"strategy": str(ev.get("strategy", "?")), "version": ev["version"],
                         "sim_time_s": _float_or_none(ev.get("sim_time_s", ev.get("sim_t", ev.get("t")))) or 0.0,
                         "accuracy": _float_or_none(ev.get(str(ev.get("metric", "accuracy")))),
                         "loss": _float_or_none(ev.get("loss")), "bytes_total": int(ev.get("bytes_total", 0))})
    return rows


def _study_started(path: Path, results: dict[str, Any]) -> float | None:
    """When a finished study started: its summary's time less the strategies' wall seconds (near enough)."""
    try:
        written = (path / SUMMARY_FILE).stat().st_mtime
    except OSError:
        return None
    return written - sum(float(r.get("wall_seconds") or 0.0) for r in results.values() if isinstance(r, dict))


def _study_figures(rec: RunRecord, results: dict[str, Any]) -> None:
    """Per strategy: curve, final and best accuracy, time and bytes to target; the record's totals."""
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for row in rec.history:
        by_strategy.setdefault(str(row["strategy"]), []).append(row)
    for name in dict.fromkeys([*results, *by_strategy]):
        rows, res = by_strategy.get(name, []), results.get(name) or {}
        curve = Curve(label=f"{rec.name}: {name}", time_s=[float(r["sim_time_s"]) for r in rows],
                      version=[int(r["version"]) for r in rows], value=[_float_or_none(r["accuracy"]) for r in rows],
                      bytes=[int(r["bytes_total"] or 0) for r in rows], end_s=_float_or_none(res.get("sim_seconds")),
                      simulated=True)
        rec.curves.append(curve)
        i = curve.first_reaching(rec.target)
        values = [v for v in curve.value if v is not None]
        rec.strategies[name] = {
            "versions": res.get("versions", max(curve.version, default=0)),
            "final": res.get("final_accuracy", values[-1] if values else None),
            "best": res.get("best_accuracy", max(values, default=None)),
            "reached": None if rec.target is None else i is not None,
            "time_to_target_s": curve.time_s[i] if i is not None else None,
            "bytes_to_target": curve.bytes[i] if i is not None else None,
            "sim_seconds": res.get("sim_seconds", curve.end_s), "wall_seconds": res.get("wall_seconds"),
        }
    rec.strategy = ", ".join(rec.strategies) or None
    rec.versions = max((int(s["versions"] or 0) for s in rec.strategies.values()), default=None)
    walls = [float(s["wall_seconds"]) for s in rec.strategies.values() if s["wall_seconds"] is not None]
    rec.duration_s = sum(walls) if walls else None
    reached = [s["reached"] for s in rec.strategies.values()]
    rec.reached = None if rec.target is None or not reached else any(reached)


# -- small readers -----------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RunsError(f"config.toml is not valid TOML ({exc})",
                        fix="the run directory is damaged; restore config.toml or start the run again",
                        source=str(path)) from None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunsError(f"{path.name} is not valid JSON ({exc})",
                        fix="the directory is damaged; restore the file or make the run again",
                        source=str(path)) from None
    if not isinstance(body, dict):
        raise RunsError(f"{path.name} does not hold a JSON object", fix="restore the file or make the run again",
                        source=str(path))
    return body


def _model_name(model: Any) -> str | None:
    """A zoo name as it is; a model file by its name alone (the table has no room for its path)."""
    return None if model is None else Path(str(model)).name


def _number(text: str | None) -> float | int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def _float_or_none(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


# -- charts ------------------------------------------------------------------------------------


def chart_title(records: Iterable[RunRecord]) -> str:
    """A chart's title: the records' model(s) and strategies, then fleet(s) and seed(s)."""
    recs = list(records)

    def each(values: Iterable[Any], split: bool = False) -> str:
        parts = (part.strip() for v in values if v is not None for part in (str(v).split(", ") if split else [str(v)]))
        return ", ".join(dict.fromkeys(parts)) or "?"

    lines = (f"{each(r.model for r in recs)}: {each((r.strategy for r in recs), split=True)}",
             f"fleet {each(r.fleet for r in recs)}; seed {each(r.seed for r in recs)}")
    return "\n".join(textwrap.fill(line, 100) for line in lines)


def write_run_plots(run_dir: Path) -> list[Path]:
    """``<metric>_vs_time.png`` and ``bytes_vs_time.png`` of a run directory, from its whole event
    log (so after a resume they cover the whole run), as ``simulate`` writes its own."""
    from tinyfed.host.plots import bytes_chart, metric_chart

    rec = load(run_dir)
    title = chart_title([rec])
    targets = [rec.target] if rec.target is not None else []
    return [metric_chart(run_dir / f"{rec.metric}_vs_time.png", rec.curves, targets=targets, title=title),
            bytes_chart(run_dir / "bytes_vs_time.png", rec.curves, title=title)]
