"""``tinyfed emulate --board NAME --count N [--out DIR] [--link pty [--pace BAUD]]``: a fleet of QEMU
boards until Ctrl-C, on TCP sockets or on pseudo-terminals (tty paths, as real boards have)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from tinyfed.commands.options import (
    MAX_EMULATED_BOARDS,
    FiniteFloatRange,
    boards_dir_option,
    count_option,
    json_option,
    out_dir_option,
)
from tinyfed.firmware_bridge.emulate.emulator import DEFAULT_READY_TIMEOUT, LINKS

#: The fleet file ``--out DIR`` writes.
FLEET_FILE = "fleet.toml"
#: Where ``--out DIR --link pty`` puts the boards' tty symlinks (``DIR/ttys/board0``, ...).
TTY_DIR = "ttys"


@click.command("emulate")
@click.option("--board", "board_name", required=True, help="Board with a QEMU machine (e.g. mps2-an386).")
@count_option("How many boards to boot (each QEMU takes about 40 MB of host memory).", default=1,
              most=MAX_EMULATED_BOARDS)
@out_dir_option(f"Write DIR/{FLEET_FILE}, a fleet file of the boards' URLs (for --fleet in `devices`, `check`, "
                f"`run`); with --link pty also the tty symlinks DIR/{TTY_DIR}/board0, ...; removed on exit.")
@click.option("--link", type=click.Choice(LINKS), default="socket", show_default=True,
              help="How each board's UART is served: socket://127.0.0.1:PORT, or a pseudo-terminal (a tty path "
                   "opened like /dev/ttyUSB0, locked by whoever opens it, the same path across board restarts).")
@click.option("--pace", type=click.IntRange(1200, 12_000_000), metavar="BAUD",
              help="With --link pty: pace each tty at BAUD (8N1: 10 bits per byte, both ways), so transfers take "
                   "what a USB-UART bridge at that rate takes (e.g. 115200 or 1000000).")
@click.option("--elf", "elf_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Firmware ELF (default: build it with `tinyfed firmware build`).")
@click.option("--ready-timeout", type=FiniteFloatRange(0, min_open=True), default=DEFAULT_READY_TIMEOUT,
              show_default=True,
              help="Seconds each board has to answer its first PING.")
@boards_dir_option
@json_option
def emulate(board_name: str, count: int, out_dir: Path | None, link: str, pace: int | None, elf_path: Path | None,
            ready_timeout: float, boards_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Boot COUNT emulated boards, print their URLs, and keep them running until Ctrl-C.

    \b
    Examples:
      tinyfed emulate --board mps2-an386 --count 4 --out build/lab
      tinyfed devices --fleet build/lab/fleet.toml    (in another shell)
      tinyfed emulate --board mps2-an386 --count 2 --out build/lab --link pty --pace 115200
    """
    from tinyfed.boards import get_board
    from tinyfed.firmware_bridge.emulate.emulator import EmulatorFleet, qemu_command
    from tinyfed.firmware_bridge.link.devices import write_device_fleet

    if pace is not None and link != "pty":
        raise click.BadParameter("pacing needs a pty link: add --link pty", param_hint="--pace")
    out_path = None
    if out_dir is not None:
        if out_dir.suffix == ".toml":
            raise click.BadParameter(f"{out_dir} looks like a file; --out names a directory and the fleet file is "
                                     f"DIR/{FLEET_FILE} (e.g. --out {out_dir.with_suffix('')})", param_hint="--out")
        out_dir.mkdir(parents=True, exist_ok=True)
        out_path = out_dir / FLEET_FILE
    board = get_board(board_name, boards_dirs)
    qemu_command(board, "-", 0)  # fails early, with a fix, for a board without a QEMU machine
    if elf_path is None:
        from tinyfed.commands.firmware import load_build_firmware

        elf_path = Path(load_build_firmware()(board.name))

    def _terminate(signum, frame):  # SIGTERM stops the boards like Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    tty_dir = out_dir.resolve() / TTY_DIR if out_dir is not None and link == "pty" else None
    fleet = EmulatorFleet(board, count, elf_path, ready_timeout=ready_timeout, link=link,  # type: ignore[arg-type]
                          pace=pace, tty_dir=tty_dir)
    wrote = False
    try:
        with fleet:
            if out_path is not None:
                on = f" on ptys{f' paced at {pace} baud' if pace else ''}" if link == "pty" else ""
                write_device_fleet(out_path, f"emulated-{board.name}", [(board.name, fleet.urls)],
                                   description=f"{count} x {board.name} in QEMU{on} (tinyfed emulate)")
                wrote = True
            if as_json:
                click.echo(json.dumps({"board": board.name, "fleet": str(out_path) if out_path else None,
                                       "devices": [b.to_dict() for b in fleet.boards]}), nl=True)
            else:
                for b in fleet.boards:
                    via = f" -> {b.tty.path}" if b.tty is not None and b.tty.path != b.url else ""
                    click.echo(f"{b.name}  {b.url}{via}  (ready in {b.ready_s:.2f} s)")
                if out_path is not None:
                    click.echo(f"fleet file: {out_path}  (`tinyfed devices --fleet {out_path}`)")
                click.echo("running; Ctrl-C stops every board", err=True)
            _wait(fleet)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if wrote and out_path is not None:
            out_path.unlink(missing_ok=True)
        if tty_dir is not None:
            try:
                tty_dir.rmdir()  # the fleet removed its symlinks; the directory goes if nothing else is in it
            except OSError:
                pass


def _wait(fleet) -> None:
    """Block until Ctrl-C, or until a board's emulator exits on its own (then stop them all)."""
    import subprocess

    from tinyfed.firmware_bridge.emulate.emulator import EmulatorError

    while True:
        for b in fleet.boards:
            try:
                b.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                continue
            raise EmulatorError(f"qemu exited on its own with code {b.process.returncode}: {b.output()[-300:]}",
                                fix="check the firmware; every board has been stopped", source=b.name)
