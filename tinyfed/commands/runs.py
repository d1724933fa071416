"""``tinyfed runs list|show|compare|export``: past runs and simulate outputs, read back.

The reading lives in :mod:`tinyfed.host.runs`, the charts in :mod:`tinyfed.host.plots`, the exports
in :mod:`tinyfed.host.runs_export`; these commands only print.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from tinyfed.commands.console import output_console
from tinyfed.commands.options import json_option

RUN_DIR = click.Path(file_okay=False, path_type=Path)


@click.group("runs")
def runs() -> None:
    """Past runs: list them, show one, compare several, export to CSV or TensorBoard.

    \b
    Examples:
      tinyfed runs list
      tinyfed runs show runs/20260101-120000
      tinyfed runs compare runs/a runs/b build/sim --png compare.png
      tinyfed runs export runs/a --format tensorboard --out tb/
    """


def _add_row(table: Any, *cells: str) -> None:
    """A table row whose text is shown as it is (run names, problems and config values may hold brackets,
    which rich would read as markup)."""
    from rich.markup import escape

    table.add_row(*(escape(c) for c in cells))


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _when(wall: float | None) -> str:
    return "-" if wall is None else dt.datetime.fromtimestamp(wall).strftime("%Y-%m-%d %H:%M")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _status(rec: Any) -> str:
    return f"{rec.status}, resumable" if rec.status == "interrupted" and rec.resumable else rec.status


def _per_strategy(rec: Any, key: str) -> str:
    """A simulate output's figure per strategy, e.g. ``ftte 0.8236, fedavg 0.8012``."""
    return ", ".join(f"{name} {_fmt(s.get(key))}" for name, s in rec.strategies.items()) or "-"


def _reached(rec: Any) -> str:
    if rec.target is None:
        return "-"
    if rec.reached is None:
        return f"? ({rec.target:g})"
    return f"{'yes' if rec.reached else 'no'} ({rec.target:g})"


@runs.command("list")
@click.argument("directory", required=False, default="runs", type=click.Path(file_okay=False, path_type=Path))
@json_option
def list_command(directory: Path, as_json: bool) -> None:
    """List the runs and simulate outputs in DIRECTORY (default runs/), oldest first.

    One row per run: kind, model, strategy, fleet, seed, start, duration, versions, final and best
    metric, whether it reached its target, and its status (finished, running, interrupted,
    damaged). A damaged entry is listed with its problem.

    \b
    Examples:
      tinyfed runs list
      tinyfed runs list build/ --json
    """
    from rich import box
    from rich.table import Table

    from tinyfed.host.runs import scan

    records = scan(directory)
    if as_json:
        click.echo(json.dumps({"directory": str(directory), "runs": [r.row() for r in records]}))
        return
    if not records:
        click.echo(f"no runs in {directory}", err=True)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "kind", "model", "strategy", "fleet", "seed", "started", "duration", "versions", "final",
                "best", "reached (target)", "status", "notes"):
        table.add_column(col, justify="right" if col in ("seed", "duration", "versions") else "left",
                         no_wrap=col in ("name", "started"))
    for r in records:
        sim = r.kind == "simulate"
        _add_row(table, r.name, r.kind, r.model or "-", r.strategy or "-", r.fleet or "-", _fmt(r.seed, "d"),
                      _when(r.started), _duration(r.duration_s), _fmt(r.versions, "d"),
                      _per_strategy(r, "final") if sim else _fmt(r.final),
                      _per_strategy(r, "best") if sim else _fmt(r.best), _reached(r), _status(r),
                      "; ".join(([r.problem] if r.problem else []) + r.notes))
    output_console().print(table)


@runs.command("show")
@click.argument("run_dir", type=RUN_DIR)
@json_option
def show_command(run_dir: Path, as_json: bool) -> None:
    """Show one run: its summary, config, devices, rejection reasons and history per version.

    \b
    Examples:
      tinyfed runs show runs/20260101-120000
      tinyfed runs show build/sim --json
    """
    from tinyfed.host.runs import load

    rec = load(run_dir)
    if as_json:
        click.echo(json.dumps(rec.to_dict(), default=str))
        return
    for note in rec.notes:
        click.echo(f"note: {note}", err=True)
    console = output_console()
    console.print(*_show_tables(rec))


def _show_tables(rec: Any) -> list[Any]:
    """What ``runs show`` prints: the record's facts, per-kind detail, then the history table."""
    from rich.table import Table

    facts = Table(title=f"{rec.name} ({rec.kind}, {_status(rec)})", title_justify="left", show_header=False,
                  box=None)
    facts.add_column("field", style="bold")
    facts.add_column("value")
    rows = [("directory", str(rec.path)), ("model", rec.model or "-"), ("strategy", rec.strategy or "-"),
            ("fleet", rec.fleet or "-"), ("seed", _fmt(rec.seed, "d")), ("started", _when(rec.started)),
            ("duration", _duration(rec.duration_s)), ("versions", _fmt(rec.versions, "d")),
            ("target", f"{rec.metric} {_fmt(rec.target, 'g')}, reached: "
                       + ("-" if rec.reached is None else "yes" if rec.reached else "no"))]
    if rec.kind == "run":
        rows += _run_facts(rec)
    for k, v in rows:
        _add_row(facts, k, v)
    out: list[Any] = [facts]
    if rec.kind == "simulate":
        out.append(_strategies_table(rec))
    out.append(_history_table(rec))
    return out


def _run_facts(rec: Any) -> list[tuple[str, str]]:
    s = rec.summary
    reasons = ", ".join(f"{k} {n}" for k, n in s.get("rejection_reasons", {}).items()) or "none"
    listed = [d for d in (rec.devices or {}).get("devices", []) if isinstance(d, dict)]
    boards = ", ".join(f"{d.get('name')} {d.get('board')} {d.get('url')}" for d in listed[:8])
    boards += f" and {len(listed) - 8} more" if len(listed) > 8 else ""
    config = ", ".join(f"{k}={v}" for k, v in rec.config.items() if not isinstance(v, dict))
    tables = [(f"config [{name}]", ", ".join(f"{k}={v}" for k, v in table.items()) or "-")
              for name, table in rec.config.items() if isinstance(table, dict)]
    return [
        (f"final / best {rec.metric}", f"{_fmt(rec.final)} / {_fmt(rec.best)}"),
        ("time / bytes to target", f"{_fmt(rec.time_to_target_s, '.1f')} s / {_fmt(rec.bytes_to_target, ',')} B"),
        ("updates", f"{s['updates_accepted']} accepted, {s['updates_rejected']} rejected, {s['updates_lost']} lost, "
                    f"{s['tasks_unfinished']} unfinished at the stop"),
        ("rejection reasons", reasons),
        ("bytes", f"up {s['bytes_up']:,}, down {s['bytes_down']:,}; provisioning down "
                  f"{s['provision_bytes_down']:,}, up {s['provision_bytes_up']:,}"),
        ("all tasks accounted", "yes" if s["all_tasks_accounted"] else f"no: {s['tasks_unaccounted']}"),
        ("events", f"{s['events']:,}"),
        ("config", config or "-"), *tables,
        ("devices", boards or "-"),
    ]


def _strategies_table(rec: Any) -> Any:
    from rich.table import Table

    table = Table(title="strategies", title_justify="left")
    for col in ("strategy", "versions", "final", "best", "reached", "time to target (sim s)", "bytes to target"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, s in rec.strategies.items():
        _add_row(table, name, _fmt(s["versions"], "d"), _fmt(s["final"]), _fmt(s["best"]),
                      "-" if s["reached"] is None else "yes" if s["reached"] else "no",
                      _fmt(s["time_to_target_s"], ",.1f"), _fmt(s["bytes_to_target"], ","))
    return table


def _history_table(rec: Any) -> Any:
    from rich.table import Table

    if rec.kind == "run":
        cols = [("version", "version", "d"), ("t (s)", "t_s", ".1f"), (rec.metric, "value", ".4f"),
                (f"int8 {rec.metric}", "int8_value", ".4f"), ("loss", "loss", ".4f"), ("bytes up", "bytes_up", ","),
                ("bytes down", "bytes_down", ",")]
    else:
        cols = [("strategy", "strategy", "s"), ("version", "version", "d"), ("sim t (s)", "sim_time_s", ",.1f"),
                ("accuracy", "accuracy", ".4f"), ("loss", "loss", ".4f"), ("bytes total", "bytes_total", ",")]
    table = Table(title="history", title_justify="left")
    for head, _, _ in cols:
        table.add_column(head, justify="left" if head == "strategy" else "right")
    for row in rec.history:
        _add_row(table, *(_fmt(row.get(key), spec) for _, key, spec in cols))
    return table


@runs.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=RUN_DIR)
@click.option("--png", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("compare.png"),
              show_default=True, metavar="FILE",
              help="The chart (a PNG file; --out is a directory everywhere): every run's metric curve, with the "
                   "target line.")
@click.option("--x", "x_axis", type=click.Choice(["time", "version", "bytes"]), default="time", show_default=True,
              help="Horizontal axis: run time (simulated time for simulate outputs), version, or bytes sent.")
@json_option
def compare_command(run_dirs: tuple[Path, ...], out_file: Path, x_axis: str, as_json: bool) -> None:
    """Compare runs (and simulate outputs' strategies): their curves on one chart, and time, bytes and
    versions to target side by side.

    \b
    Examples:
      tinyfed runs compare runs/a runs/b --png ab.png
      tinyfed runs compare runs/a build/sim --x bytes --json
    """
    from tinyfed.host.plots import metric_chart
    from tinyfed.host.runs import chart_title, load

    records = [load(p) for p in run_dirs]
    targets = sorted({r.target for r in records if r.target is not None})
    chart = metric_chart(out_file, [c for r in records for c in r.curves], x=x_axis, targets=targets,
                         title=chart_title(records))
    rows = compare_rows(records)
    if as_json:
        click.echo(json.dumps({"chart": str(chart), "x": x_axis, "title": chart_title(records), "curves": rows}))
        return
    from rich.table import Table

    table = Table(title="to target", title_justify="left")
    for col in ("curve", "model", "fleet", "seed", "target", "reached", "time to target (s)", "bytes to target",
                "versions to target", "final", "best"):
        table.add_column(col, justify="left" if col in ("curve", "model", "fleet") else "right")
    for row in rows:
        _add_row(table, row["curve"], row["model"] or "-", row["fleet"] or "-", _fmt(row["seed"], "d"),
                      _fmt(row["target"], "g"), "-" if row["reached"] is None else "yes" if row["reached"] else "no",
                      _fmt(row["time_to_target_s"], ",.1f") + (" sim" if row["simulated"] and row["reached"] else ""),
                      _fmt(row["bytes_to_target"], ","), _fmt(row["versions_to_target"], "d"), _fmt(row["final"]),
                      _fmt(row["best"]))
    output_console().print(table)
    click.echo(f"wrote {chart}", err=True)


def compare_rows(records: list[Any]) -> list[dict[str, Any]]:
    """One row per curve: its run's facts and its time, bytes and versions to the target."""
    rows = []
    for rec in records:
        for curve in rec.curves:
            i = curve.first_reaching(rec.target)
            values = [v for v in curve.value if v is not None]
            rows.append({"curve": curve.label, "run_dir": str(rec.path), "kind": rec.kind, "model": rec.model,
                         "fleet": rec.fleet, "seed": rec.seed, "metric": curve.metric, "target": rec.target,
                         "reached": None if rec.target is None else i is not None, "simulated": curve.simulated,
                         "time_to_target_s": None if i is None else curve.time_s[i],
                         "bytes_to_target": None if i is None else curve.bytes[i],
                         "versions_to_target": None if i is None else curve.version[i],
                         "final": values[-1] if values else None, "best": max(values, default=None)})
    return rows


@runs.command("export")
@click.argument("run_dirs", nargs=-1, required=True, type=RUN_DIR)
@click.option("--format", "fmt", type=click.Choice(["csv", "tensorboard"]), required=True,
              help="csv: history, per-device tallies and aggregations (per-strategy results for simulate outputs); "
                   "tensorboard: event files of scalars by version (needs the tensorboard package).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="Directory to write into, one subdirectory per run (`tensorboard --logdir` it).")
@json_option
def export_command(run_dirs: tuple[Path, ...], fmt: str, out_dir: Path, as_json: bool) -> None:
    """Export runs to CSV files or TensorBoard event files.

    \b
    Examples:
      tinyfed runs export runs/a runs/b --format csv --out exported/
      tinyfed runs export runs/a build/sim --format tensorboard --out tb/ && tensorboard --logdir tb/
    """
    from tinyfed.host.runs import load
    from tinyfed.host.runs_export import export

    records = [load(p) for p in run_dirs]
    files = export(records, fmt, out_dir)
    if as_json:
        click.echo(json.dumps({"format": fmt, "out": str(out_dir), "files": [str(p) for p in files]}))
        return
    for p in files:
        click.echo(f"wrote {p}")
