"""``tinyfed plan``: what each board stores, runs and trains, and whether it fits."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tinyfed.commands.console import output_console, phase
from tinyfed.commands.options import (
    MAX_STEPS,
    boards_dir_option,
    check_representative,
    core_budget_option,
    fleet_option,
    json_option,
)
from tinyfed.errors import BoardError
from tinyfed.planner.config import TrainingConfig


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f}"


@click.command()
@click.argument("model")
@click.option("--board", "board_name", help="Plan for one board (see `tinyfed boards list`).")
@fleet_option("Plan for every board kind of a fleet: w* fits the smallest budget (M_min).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("plan"),
              metavar="DIR", show_default=True, help="Directory for the fragments and plan.json.")
@click.option("--representative", type=click.Path(dir_okay=False, path_type=Path),
              help="Representative inputs (.npy) for a .keras model.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Local training batch size on the boards (no RAM: the firmware accumulates one sample at a time).")
@click.option("--head-cache-samples", type=click.IntRange(0, MAX_STEPS), default=0, show_default=True,
              help="Local samples per board whose frozen-head outputs the plan leaves room for (the firmware "
                   "caches them after the first epoch).")
@click.option("--optimizer", type=click.Choice(["sgd", "momentum", "adam"]), default="sgd", show_default=True,
              help="The boards' local optimizer: momentum keeps one more copy of w* in RAM, adam two.")
@click.option("--importance", type=click.Choice(["fisher", "depth"]), default="fisher", show_default=True,
              help="How units are ranked: diagonal Fisher on proxy data, or nearest-the-output first.")
@click.option("--trainable", type=click.Choice(["auto", "full"]), default="auto", show_default=True,
              help="auto: FTTE's w* under M_min; full: train every parameter (to see what it would cost).")
@click.option("--nested", is_flag=True,
              help="Nested subsets: every board class trains the largest superset of the common w* its own "
                   "budget holds (the smallest board, or --core-budget, sets the common core).")
@core_budget_option
@click.option("--no-measure", is_flag=True,
              help="Skip measuring the head under TFLite Micro (reported beside the firmware's own arena).")
@boards_dir_option
@json_option
def plan(
    model: str,
    board_name: str | None,
    fleet_path: Path | None,
    out_dir: Path,
    representative: Path | None,
    batch_size: int,
    head_cache_samples: int,
    optimizer: str,
    importance: str,
    trainable: str,
    nested: bool,
    core_budget: float | None,
    no_measure: bool,
    boards_dirs: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Plan MODEL (a zoo name, a .keras or an int8 .tflite) onto a board or a fleet.

    \b
    Examples:
      tinyfed plan har_cnn --board nrf52840
      tinyfed plan har_cnn --fleet smartwatch --out build/plan --json
      tinyfed plan my_model.keras --representative calib.npy --board apollo3
    """
    from tinyfed.boards import get_board, load_fleet, single_board_fleet
    from tinyfed.planner.plan import make_plan
    from tinyfed.planner.sources import load_model_source

    check_representative(model, representative)
    if board_name is not None and fleet_path is None:
        fleet = single_board_fleet(get_board(board_name, boards_dirs))
    elif fleet_path is not None and board_name is None:
        fleet = load_fleet(fleet_path, boards_dirs)
    else:
        raise BoardError("give exactly one of --board NAME or --fleet FILE",
                         fix="e.g. `tinyfed plan har_cnn --board nrf52840`")
    out_dir.mkdir(parents=True, exist_ok=True)  # fail on a bad --out before the slow part
    cfg = TrainingConfig(batch_size=batch_size, optimizer=optimizer, importance=importance,
                         head_cache_samples=head_cache_samples)
    with phase(f"loading {model} (an int8 conversion the first time)", quiet=as_json):
        source = load_model_source(model, representative, cfg)
    what = "planning" + ("" if no_measure else " (and measuring the TFLite Micro arena)")
    with phase(f"{what} for {fleet.name}", quiet=as_json):
        result = make_plan(source, fleet, cfg, out_dir, measure=not no_measure, trainable=trainable,
                           extra_board_dirs=boards_dirs, core_budget=core_budget, nested=nested)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        _render(result)
    if not result.fits:
        raise SystemExit(1)


#: What each file a plan writes is for (plan.files keys).
FILE_ROLES = {
    "frozen": "the frozen int8 fragment the boards run",
    "tail": "the int8 tail with w*, compiled into the training program",
    "trainable": "w*'s float32 start values",
    "model": "the whole int8 model that was planned",
    "plan": "the plan: units, cut, per-board fit and budgets",
}


def _render(result) -> None:
    # Piped output keeps whole rows (grep-able); a terminal gets its own width.
    console = output_console()
    doc = result.as_dict()
    layers = Table(title=f"{doc['model']}: layers (cut after op {doc['cut_op'] - 1})", title_justify="left")
    for col in ("op", "layer", "part", "params", "flash KiB", "act out KiB", "trainable", "saved act KiB"):
        layers.add_column(col, justify="right" if col not in ("layer", "part") else "left", no_wrap=col == "layer")
    for row in doc["layers"]:
        layers.add_row(
            str(row["op"]),
            row["name"],
            row["part"],
            f"{row['params']:,}",
            _kib(row["flash_bytes"]),
            _kib(row["activation_out_bytes_int8"]),
            f"{row['trainable_params']:,}" if row["trainable_params"] else "",
            _kib(row["saved_activation_bytes_float32"]) if row["saved_activation_bytes_float32"] else "",
        )
    console.print(layers)

    boards = Table(title=f"fleet {doc['fleet']}: M_min = {_kib(doc['m_min_bytes'])} KiB ({doc['m_min_board']})",
                   title_justify="left")
    for col in ("board", "count", "RAM used KiB", "RAM KiB", "RAM margin", "flash used KiB", "flash KiB",
                "flash margin", "fits"):
        boards.add_column(col, justify="left" if col == "board" else "right", no_wrap=col == "board")
    for name, b in doc["boards"].items():
        boards.add_row(
            name,
            str(b["count"]),
            _kib(b["ram_bytes_used"]),
            _kib(b["ram_bytes_budget"]),
            _kib(b["ram_margin_bytes"]),
            _kib(b["flash_bytes_used"]),
            _kib(b["flash_bytes_budget"]),
            _kib(b["flash_margin_bytes"]),
            "[green]yes[/]" if b["fits"] else "[red]NO[/]",
        )
    console.print(boards)

    tm, full = doc["training_memory"], doc["full_training_memory"]
    console.print(
        f"w*: {doc['trainable_params']:,} of {doc['total_params']:,} parameters "
        f"({100 * doc['trainable_fraction']:.1f}%), {len(doc['units'])} units, importance = {doc['importance']}"
    )
    console.print(
        f"training memory: {_kib(tm['total'])} KiB vs {_kib(full['total'])} KiB for the full model "
        f"({100 * doc['training_memory_ratio']:.1f}%); firmware arena of the head {_kib(doc['arena_bytes'])} KiB "
        f"(under TFLite Micro: {_kib(doc['tflm_arena_bytes_measured'])} KiB measured, "
        f"{_kib(doc['tflm_arena_bytes_estimated'])} KiB estimated)"
    )
    if "nested" in doc:
        _render_nested(console, doc)
    for p in doc["problems"]:
        console.print(f"[red]does not fit:[/] {p}")
    for s in doc["suggestions"]:
        console.print(f"[yellow]suggestion:[/] {s}")
    for n in doc["notes"]:
        console.print(f"note: {n}")
    for key, path in result.files.items():
        console.print(f"wrote {path}" + (f"  ({FILE_ROLES[key]})" if key in FILE_ROLES else ""))


def _render_nested(console: Console, doc: dict) -> None:
    """One row per board class: its subset of the global vector, cut, training memory and ratio."""
    nested, full = doc["nested"], doc["full_training_memory"]["total"]
    cap = nested["core_budget_bytes"]
    title = (f"nested subsets: global vector {nested['global_values']:,} values (cut after op "
             f"{nested['global_cut_op'] - 1}); core set by {nested['core_board']}"
             + (f", capped at {_kib(cap)} KiB of training memory" if cap is not None else ""))
    table = Table(title=title, title_justify="left")
    for col in ("board", "count", "values", "cut op", "training KiB", "vs whole model", "program KiB", "RAM used KiB",
                "fits"):
        table.add_column(col, justify="left" if col == "board" else "right", no_wrap=col == "board")
    for name, c in nested["classes"].items():
        table.add_row(name, str(c["count"]), f"{c['values']:,}", str(c["cut_op"]), _kib(c["training_memory"]["total"]),
                      f"{c['training_memory_ratio']:.3f}", _kib(c["program_bytes"]), _kib(c["ram_bytes_used"]),
                      "[green]yes[/]" if c["fits"] else "[red]NO[/]")
    console.print(table)
    console.print(f"whole-model training memory: {_kib(full)} KiB")
