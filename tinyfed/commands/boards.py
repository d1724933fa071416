"""``tinyfed boards list|show``: the board profiles tinyfed knows about."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

from tinyfed.boards import BUILTIN_DIR, Board, board_dirs, get_board, list_boards
from tinyfed.commands.console import output_console
from tinyfed.commands.options import boards_dir_option, json_option


@click.group("boards")
def boards() -> None:
    """Board profiles: what each microcontroller offers for training.

    \b
    Examples:
      tinyfed boards list
      tinyfed boards show nrf52840 --json
    """


@boards.command("list")
@boards_dir_option
@json_option
def list_command(boards_dirs: tuple[Path, ...], as_json: bool) -> None:
    """List every known board (built-in and from board directories).

    \b
    Examples:
      tinyfed boards list
      tinyfed boards list --boards-dir my_boards/ --json
    """
    found = list_boards(boards_dirs)
    if as_json:
        payload = {
            "boards": [b.to_dict() for b in found],
            "dirs": [str(d) for d in board_dirs(boards_dirs)],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    user_files = any(_source(b) != "built-in" for b in found)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    widest = max((len(b.name) for b in found), default=4)
    table.add_column("name", no_wrap=True, min_width=widest)
    table.add_column("core", no_wrap=True, min_width=max(len(c) for c in (b.core for b in found)) if found else 4)
    for column in ("FPU", "MHz", "RAM KiB", "flash KiB", "reserve"):
        table.add_column(column, justify="left" if column == "FPU" else "right")
    table.add_column("link")
    table.add_column("emulator")
    table.add_column("int8 MAC/s", justify="right")
    if user_files:
        table.add_column("source", overflow="fold")
    for b in found:
        row = [
            b.name, b.core, b.fpu, _clock(b, short=True), str(b.ram_kib), _flash(b),
            f"{b.firmware_reserve.ram_kib}/{b.firmware_reserve.flash_kib}", _link(b), _emulator(b), _speed(b),
        ]
        if user_files:
            row.append(_source(b))
        table.add_row(*row)
    console = _console()
    console.print(table)
    console.print(
        "MHz: base/burst clock. reserve: firmware's own RAM/flash KiB. ext.: external flash. "
        "est.: speed estimated, not yet measured. `tinyfed boards show NAME` for details."
    )


@boards.command("show")
@click.argument("name")
@boards_dir_option
@json_option
def show_command(name: str, boards_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Show every field of one board, with the derived byte budgets.

    \b
    Examples:
      tinyfed boards show apollo3
    """
    b = get_board(name, boards_dirs)
    if as_json:
        click.echo(json.dumps(b.to_dict(), indent=2))
        return
    table = Table(title=f"{b.name}: {b.description}", title_justify="left", show_header=False, box=None)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows: list[tuple[str, str]] = [
        ("core", f"{b.core}, FPU {b.fpu}"),
        ("clock", _clock(b) + " MHz"),
        ("RAM", f"{b.ram_kib} KiB ({b.ram_bytes:,} bytes)"),
        ("flash", f"{b.flash_kib} KiB ({b.flash_bytes:,} bytes)" + (", external" if b.flash_external else "")),
        ("firmware reserve", (f"RAM {b.firmware_reserve.ram_kib} KiB, flash {b.firmware_reserve.flash_kib} KiB "
                              f"({b.firmware_reserve.source})")),
        ("fragment RAM budget", f"{b.fragment_ram_budget_bytes:,} bytes"),
        ("fragment flash budget", f"{b.fragment_flash_budget_bytes:,} bytes"),
        ("training stores", f"program {b.program_store_bytes:,} bytes, local data {b.data_store_bytes:,} bytes"),
        ("link", f"{_link(b)}, {b.link_bytes_per_s:,.0f} bytes/s, max frame {b.link.max_frame_bytes} bytes"),
        ("emulator", _emulator(b, full=True)),
        ("int8 speed", f"{b.speed.int8_macs_per_s:,} MAC/s"),
        ("fp32 speed", f"{b.speed.fp32_flops_per_s:,} FLOP/s"),
        ("speed source", ("measured: " if b.speed.measured else "") + b.speed.source),
        ("emulated only", "yes" if b.emulated else "no"),
        ("file", str(b.path)),
    ]
    for field, value in rows:
        table.add_row(field, value)
    _console().print(table)


def _console() -> Console:
    """The console on the current stdout (:func:`~tinyfed.commands.console.output_console`)."""
    return output_console()


def _clock(b: Board, *, short: bool = False) -> str:
    if b.burst_clock_mhz is None:
        return str(b.clock_mhz)
    return f"{b.clock_mhz}/{b.burst_clock_mhz}" if short else f"{b.clock_mhz} ({b.burst_clock_mhz} burst)"


def _flash(b: Board) -> str:
    return f"{b.flash_kib} ext." if b.flash_external else str(b.flash_kib)


def _link(b: Board) -> str:
    if b.link.kind == "uart":
        return f"uart {b.link.baud} {b.link.framing}" + (" RTS/CTS" if b.link.flow_control == "rtscts" else "")
    return f"usb {b.link_bytes_per_s / 1000:,.0f} kB/s"


def _emulator(b: Board, *, full: bool = False) -> str:
    e = b.emulator
    if e is None:
        return "-"
    parts = []
    if e.qemu_machine:
        parts.append(f"qemu {e.qemu_machine}" + (f" -cpu {e.qemu_cpu}" if full and e.qemu_cpu else ""))
    if e.renode_platform:
        parts.append(f"renode {e.renode_platform}" if full else "renode")
    if not full:
        parts = [p.split()[0] for p in parts]
    text = ", ".join(parts)
    if e.stands_in_for:
        text += f" (as {e.stands_in_for})"
    if full and e.baseline_profile:
        text += f"; whole-model baselines boot {e.baseline_profile}"
    return text


def _speed(b: Board) -> str:
    value = f"{b.speed.int8_macs_per_s / 1e6:,.0f}M"
    return value if b.speed.measured else f"{value} est."


def _source(b: Board) -> str:
    if b.path is None:
        return "-"
    if b.path.resolve().parent == BUILTIN_DIR:
        return "built-in"
    return str(b.path)
