"""``tinyfed profile MODEL --board B``: speed per op on a board, optimised kernels beside plain C."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tinyfed.commands.console import output_console
from tinyfed.commands.options import boards_dir_option, check_representative, json_option, seed_option
from tinyfed.errors import TinyfedError


@click.command("profile")
@click.argument("model")
@click.option("--board", "board_name", required=True, help="Board to profile on (see `tinyfed boards list`).")
@click.option("--port", "url", help="A real board's port or URL (tty, socket://, sim://); default: boot the "
                                     "board's emulator under -icount.")
@click.option("--whole", is_flag=True, help="Profile the whole int8 model instead of the plan's frozen fragment.")
@click.option("--train", "with_train", is_flag=True,
              help="Also run one training step (one batch) and split its cycles into frozen head and the rest.")
@click.option("--both", "kernels", flag_value="both", default=True,
              help="Optimised kernels and the plain-C reference, side by side (default).")
@click.option("--fast", "kernels", flag_value="fast", help="Only this core's optimised kernels.")
@click.option("--reference", "kernels", flag_value="reference", help="Only the plain-C reference kernels.")
@click.option("--icount-shift", type=click.IntRange(0, 10), default=4, show_default=True,
              help="QEMU -icount shift: one instruction = 2**shift ns of virtual time.")
@click.option("--elf", "elf_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Firmware ELF for the emulator (default: build it).")
@click.option("--representative", type=click.Path(dir_okay=False, path_type=Path),
              help="Representative inputs (.npy) for a .keras model.")
@seed_option("Seed of the random int8 input.")
@boards_dir_option
@json_option
def profile(model: str, board_name: str, url: str | None, whole: bool, with_train: bool, kernels: str,
            icount_shift: int, elf_path: Path | None, representative: Path | None, seed: int,
            boards_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Run MODEL's frozen fragment on a board once per kernel path; print each op's instructions
    (emulated) or cycles (a real board), MACs and instructions per MAC.

    \b
    Examples:
      tinyfed profile har_cnn --board mps2-an386
      tinyfed profile my_model_int8.tflite --board mps3-an547 --whole --json
    """
    from tinyfed.boards import get_board
    from tinyfed.host.profiling import PATHS, load_fragment, profile_model

    check_representative(model, representative)

    board = get_board(board_name, boards_dirs)
    if url is None:
        from tinyfed.firmware_bridge.emulate.emulator import qemu_command

        try:
            qemu_command(board, "-", 0)  # before the slow part: a board without an emulator needs --port
        except TinyfedError as exc:
            raise TinyfedError(f"board {board.name} has no emulator to profile on",
                               fix=f"connect the real board and add --port URL, or {exc.fix}",
                               source=board.name) from None
    paths = PATHS if kernels == "both" else (kernels,)
    fragment = load_fragment(model, board, whole=whole, with_train=with_train, representative=representative,
                             boards_dirs=boards_dirs)
    report = profile_model(fragment, board, url=url, paths=paths, icount_shift=icount_shift, elf=elf_path,
                           with_train=with_train, seed=seed)
    doc = report.as_dict()
    if as_json:
        click.echo(json.dumps(doc))
    else:
        _render(doc)
    if doc["outputs_equal"] is False:
        raise SystemExit(1)


def _num(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _render(doc: dict[str, Any]) -> None:
    console = output_console()
    unit = doc["measure"]
    label = {"instructions": "instr", "cycles": "cycles", "estimate": "est."}[unit]
    paths = list(doc["paths"])
    frag = doc["fragment"]
    what = f"ops 0..{frag['cut_op'] - 1} (the plan's frozen fragment)" if frag["kind"] == "plan-cut" else "whole model"
    table = Table(title=f"{doc['model']} on {doc['board']}: {what}; kernels {doc['kernel_path']} vs c",
                  title_justify="left")
    for col in ("#", "op", "MACs"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for path in paths:
        table.add_column(f"{path} {label}", justify="right")
        table.add_column(f"{path} {label}/MAC", justify="right")
        table.add_column(f"{path} share", justify="right")
    for row in doc["ops"]:
        cells = [str(row["index"]), row["op"], f"{row['macs']:,}"]
        for path in paths:
            r = row[path]
            kernel = "" if path == "reference" else f" [{r['kernel']}]"
            cells += [_num(r[unit]) + kernel, _num(r[f"{unit}_per_mac"], 2), f"{100 * (r['share'] or 0):.1f}%"]
        table.add_row(*cells)
    total = ["", "whole", f"{doc['macs']:,}"]
    for path in paths:
        f = doc["paths"][path]
        total += [_num(f[unit]), _num(f[f"{unit}_per_mac"], 2), "100%"]
    table.add_row(*total, style="bold")
    console.print(table)
    if unit == "instructions":
        console.print(f"instructions: QEMU -icount shift={doc['icount_shift']} (1 instruction = "
                      f"{2 ** doc['icount_shift']} ns), SysTick at {doc['clock_hz'] / 1e6:g} MHz; "
                      "not a real core's timing")
    elif unit == "estimate":
        console.print("[yellow]estimate:[/] the sim:// twin counts no instructions; its figures are MAC counts")
    for path in paths:
        f = doc["paths"][path]
        console.print(f"{path}: engine overhead between ops {_num(f[f'overhead_{unit}'])} {unit}; "
                      f"{f['fast_ops']} of {frag['ops']} ops on an optimised kernel")
    if "speedup" in doc:
        console.print(f"speed-up of the {doc['kernel_path']} kernels over plain C: {doc['speedup']:.2f}x")
    if doc["outputs_equal"] is not None:
        console.print("outputs of both paths: " + ("[green]equal[/]" if doc["outputs_equal"] else "[red]DIFFER[/]"))
    if doc.get("int8_macs_per_s"):
        console.print(f"int8 rate on this clock: {doc['int8_macs_per_s']:,.0f} MAC/s")
    for path, t in doc.get("train", {}).items():
        console.print(f"training step ({path} head): {t['samples']} samples, {t['steps']} step: "
                      f"{_num(t.get(unit))} {unit}, frozen head {_num(t.get('head_' + unit))}, "
                      f"tail forward+backward+SGD {_num(t.get('tail_' + unit))}")
