"""Runs exported for other tools: CSV files, and TensorBoard event files ``tensorboard --logdir`` reads.

Each run goes to ``OUT/<run name>/`` (a simulate output's strategies to ``OUT/<name>/<strategy>/``
for TensorBoard, one run each). TensorBoard files are written with the ``tensorboard`` package's
own record writer and protos (the optional extra ``tinyfed[tensorboard]``), without importing
TensorFlow; a scalar's step is the model version and its wall time the event's. Exporting again
replaces what an earlier export left in the same place.
"""

from __future__ import annotations

import csv
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tinyfed.errors import TinyfedError
from tinyfed.host.runs import RunRecord, aggregation_rows, device_tallies

log = logging.getLogger(__name__)

FORMATS = ("csv", "tensorboard")
#: The pip line that brings the TensorBoard writer.
TENSORBOARD_PIP = "pip install 'tinyfed[tensorboard]' (or pip install tensorboard)"


class ExportError(TinyfedError):
    """An export cannot be written (its library missing, a name clash)."""


def export(records: Sequence[RunRecord], fmt: str, out: Path) -> list[Path]:
    """Write ``records`` in ``fmt`` (one of :data:`FORMATS`) under ``out``; the files written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    names = [r.name for r in records]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ExportError(f"several runs are named {', '.join(clash)}, so their exports would overwrite each other",
                          fix="export them one at a time into different --out directories")
    writer = export_csv if fmt == "csv" else export_tensorboard
    files: list[Path] = []
    for rec in records:
        files.extend(writer(rec, out / rec.name))
    return files


# -- CSV ---------------------------------------------------------------------------------------


def export_csv(rec: RunRecord, out: Path) -> list[Path]:
    """``history.csv`` (per evaluated version) and, for a run, ``devices.csv`` (per-device tallies)
    and ``aggregations.csv``; for a simulate output, ``strategies.csv`` (per-strategy results)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [_write_csv(out / "history.csv", rec.history)]
    if rec.kind == "run":
        files.append(_write_csv(out / "devices.csv", device_tallies(rec.events, rec.devices)))
        files.append(_write_csv(out / "aggregations.csv", aggregation_rows(rec.events)))
    else:
        files.append(_write_csv(out / "strategies.csv", [{"strategy": k, **v} for k, v in rec.strategies.items()]))
    return files


def _write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    rows = list(rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


# -- TensorBoard -------------------------------------------------------------------------------


def _tensorboard() -> tuple[Any, Any, Any]:
    """The tensorboard package's event and summary protos and record writer (no TensorFlow import)."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        raise ExportError("--format tensorboard needs the tensorboard package, which is not installed",
                          fix=TENSORBOARD_PIP) from None
    return event_pb2, summary_pb2, RecordWriter


def export_tensorboard(rec: RunRecord, out: Path) -> list[Path]:
    """One event file per run (per strategy of a simulate output), scalars by version."""
    if rec.kind == "run":
        return [write_scalars(out, run_scalars(rec))]
    files = []
    base = rec.started or 0.0
    for name in rec.strategies:
        rows = [r for r in rec.history if r.get("strategy") == name]
        files.append(write_scalars(out / name.replace("/", "_"), study_scalars(rows, base)))
    return files


def run_scalars(rec: RunRecord) -> list[tuple[str, int, float, float]]:
    """A run's scalars as (tag, step = version, wall time, value): the test metric (float and int8),
    losses and bytes per evaluation; updates merged and their staleness per aggregation."""
    m = rec.metric
    out: list[tuple[str, int, float, float]] = []
    for ev in rec.events:
        if ev["kind"] != "evaluation" or "version" not in ev:
            continue
        step, wall = int(ev["version"]), float(ev.get("wall", 0.0))
        for tag, key in ((f"test/{m}", m), (f"test/int8_{m}", f"int8_{m}"), ("test/loss", "loss"),
                         ("test/int8_loss", "int8_loss")):
            if isinstance(ev.get(key), int | float):
                out.append((tag, step, wall, float(ev[key])))
    for row in rec.history:
        wall = float(row.get("wall") or 0.0)
        out += [("bytes/up", row["version"], wall, float(row["bytes_up"])),
                ("bytes/down", row["version"], wall, float(row["bytes_down"])),
                ("bytes/total", row["version"], wall, float(row["bytes_up"] + row["bytes_down"]))]
    for agg in aggregation_rows(rec.events):
        wall = float(agg.get("wall") or 0.0)
        for key in ("updates", "staleness_mean", "staleness_max"):
            if isinstance(agg.get(key), int | float):
                out.append((f"aggregation/{key}", agg["version"], wall, float(agg[key])))
    return out


def study_scalars(rows: Iterable[dict[str, Any]], base_wall: float) -> list[tuple[str, int, float, float]]:
    """One strategy's scalars from a simulate history; wall time is ``base_wall`` plus the simulated
    seconds, so TensorBoard's relative time axis reads simulated time."""
    out: list[tuple[str, int, float, float]] = []
    for r in rows:
        step, wall = int(r["version"]), base_wall + float(r.get("sim_time_s") or 0.0)
        for tag, key in (("test/accuracy", "accuracy"), ("test/loss", "loss"), ("bytes/total", "bytes_total"),
                         ("bytes/up", "bytes_up"), ("bytes/down", "bytes_down"),
                         ("updates/accepted", "updates_accepted"), ("sim/time_s", "sim_time_s")):
            if isinstance(r.get(key), int | float):
                out.append((tag, step, wall, float(r[key])))
    return out


def write_scalars(out: Path, scalars: Sequence[tuple[str, int, float, float]]) -> Path:
    """An event file in ``out`` holding ``scalars``; an earlier export's event files there are removed
    first (TensorBoard would show both)."""
    event_pb2, summary_pb2, record_writer = _tensorboard()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("events.out.tfevents.*"):
        old.unlink()
    path = out / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.tinyfed"
    first_wall = min((s[2] for s in scalars), default=time.time())
    writer = record_writer(open(path, "wb"))  # the writer owns the file and closes it
    try:
        writer.write(event_pb2.Event(wall_time=first_wall, file_version="brain.Event:2").SerializeToString())
        for tag, step, wall, value in scalars:
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            writer.write(event_pb2.Event(wall_time=wall, step=step, summary=summary).SerializeToString())
        writer.flush()
    finally:
        writer.close()
    return path
