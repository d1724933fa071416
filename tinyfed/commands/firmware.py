"""``tinyfed firmware build --board NAME``: build the board firmware ELF."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tinyfed.commands.console import phase
from tinyfed.commands.options import boards_dir_option, json_option
from tinyfed.errors import TinyfedError


def load_build_firmware():
    """``tinyfed.firmware_bridge.emulate.build.build_firmware``, imported lazily."""
    try:
        from tinyfed.firmware_bridge.emulate.build import build_firmware
    except ImportError as exc:
        raise TinyfedError(f"the firmware build is not available ({exc})",
                           fix="update tinyfed: this tree has no tinyfed/firmware_bridge/emulate/build.py") from None
    return build_firmware


@click.group("firmware")
def firmware() -> None:
    """The board firmware: build it (then `tinyfed flash` or `tinyfed emulate`).

    \b
    Examples:
      tinyfed firmware build --board nrf52840
      tinyfed firmware build --board nrf52840 --device-name wrist-07
    """


@firmware.command("build")
@click.option("--board", "board_name", required=True, help="Board to build for (see `tinyfed boards list`).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Build directory: objects, the ELF and its linker map (default: build/firmware/BOARD in a "
                   "checkout, else the user's cache: ~/.cache/tinyfed/firmware/BOARD).")
@click.option("--device-name", metavar="NAME",
              help="Also provision one real board named NAME: record a fresh device key in the key store and write "
                   "DIR/tinyfed-fw-NAME.elf, the ELF with that key in its key page (mode 0600; flash it with "
                   "`tinyfed flash --elf`). Emulated boards get a key at every launch instead.")
@boards_dir_option
@json_option
def build_command(board_name: str, out_dir: Path | None, device_name: str | None, boards_dirs: tuple[Path, ...],
                  as_json: bool) -> None:
    """Cross-compile the firmware for one board and print the ELF's path.

    With --device-name, also provision a board: its device key goes into the key store (--key-store,
    a global option) and into a keyed copy of the ELF, never over the link (docs/security.md).

    \b
    Examples:
      tinyfed firmware build --board nrf52840
      tinyfed firmware build --board mps2-an386 --out build/fw --json
      tinyfed firmware build --board nrf52840 --device-name wrist-07
      tinyfed --key-store lab-keys.json firmware build --board nrf52840 --device-name wrist-08
    """
    from tinyfed.boards import get_board

    board = get_board(board_name, boards_dirs)  # a clear error for an unknown board, before building
    if device_name is not None:
        from tinyfed.firmware_bridge.emulate.provision import ProvisionError, check_device_name

        if board.emulated:
            raise ProvisionError(f"{board.name} exists only in an emulator: every launch gives it a fresh key",
                                 fix=f"drop --device-name; `tinyfed emulate --board {board.name}` provisions it",
                                 source=board.name)
        check_device_name(device_name)
    with phase(f"building the firmware for {board.name} (make, arm-none-eabi-gcc)", quiet=as_json):
        result = load_build_firmware()(board.name, out_dir, boards_dirs=boards_dirs)
    elf = Path(result)  # build_firmware returns a path-like BuildResult
    summary = result.summary() if callable(getattr(result, "summary", None)) else None
    keyed = None
    if device_name is not None:
        from tinyfed.firmware_bridge.emulate.provision import build_keyed_image

        keyed = build_keyed_image(elf, device_name)
    if as_json:
        click.echo(json.dumps({"board": board.name, "elf": str(elf), "summary": summary,
                               **({"keyed": keyed.to_dict()} if keyed is not None else {})}))
    else:
        if summary:
            click.echo(summary)
        click.echo(str(elf))
        if keyed is not None:
            click.echo(f"device {keyed.device.id_hex} ({keyed.device.name}) provisioned; its keyed image: "
                       f"{keyed.path} (holds the key: keep it private; `tinyfed flash --board {board.name} "
                       f"--elf {keyed.path}`)")
