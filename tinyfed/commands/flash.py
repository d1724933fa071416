"""``tinyfed flash --board NAME [--elf PATH]``: write the firmware to a board through a debug probe (pyOCD)."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from tinyfed.commands.options import boards_dir_option, json_option
from tinyfed.errors import TinyfedError

log = logging.getLogger(__name__)

class FlashError(TinyfedError):
    """The firmware cannot be written to the board."""


@click.command("flash")
@click.option("--board", "board_name", required=True, help="Board profile (see `tinyfed boards list`).")
@click.option("--elf", "elf_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Firmware ELF (default: build it with `tinyfed firmware build`).")
@click.option("--probe", "probe_id", help="Unique id of the debug probe (default: the only one attached).")
@click.option("--target", "target_name", help="pyOCD target name (default: from the board).")
@click.option("--device-name", metavar="NAME",
              help="Name of the board's fresh device key in the key store (default: the board profile's name). "
                   "Not used when --elf is a keyed image (`firmware build --device-name`): its key is flashed.")
@boards_dir_option
@json_option
def flash(board_name: str, elf_path: Path | None, probe_id: str | None, target_name: str | None,
          device_name: str | None, boards_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Flash the tinyfed firmware onto a board attached through a CMSIS-DAP/J-Link/ST-Link probe.

    The board gets a device key: a fresh one recorded in the key store (--key-store, a global option)
    and written into the flashed image's key page, or the one already in a keyed --elf. The key
    travels through the debug probe, never over the link (docs/security.md).

    \b
    Examples:
      tinyfed flash --board nrf52840
      tinyfed flash --board nrf52840 --device-name wrist-07
      tinyfed flash --board nrf52840 --elf build/firmware/nrf52840/tinyfed-fw-wrist-07.elf
      tinyfed --key-store lab-keys.json flash --board nrf52840 --probe 0240000032044e45
    """
    from tinyfed.boards import get_board

    board = get_board(board_name, boards_dirs)
    if board.emulated:
        raise FlashError(f"{board.name} exists only in an emulator",
                         fix=f"run it: `tinyfed emulate --board {board.name}`", source=board.name)
    if board.core.startswith("xtensa"):
        raise FlashError(f"{board.name} is not an Arm board; pyOCD cannot flash it",
                         fix="flash it with esptool (`esptool.py write_flash`)", source=board.name)
    target = target_name or board.pyocd_target
    if target is None:
        raise FlashError(f"no pyOCD target known for {board.name}",
                         fix="pass --target, or set pyocd_target in the board's TOML (`pyocd list --targets`)",
                         source=board.name)
    try:
        from pyocd.core.helpers import ConnectHelper
        from pyocd.flash.file_programmer import FileProgrammer
    except ImportError:
        raise FlashError("pyOCD is not installed", fix="pip install pyocd") from None
    if elf_path is None:
        from tinyfed.commands.firmware import load_build_firmware

        elf_path = Path(load_build_firmware()(board.name))
    if not elf_path.is_file():
        raise FlashError("firmware ELF not found", fix=f"build it: `tinyfed firmware build --board {board.name}`",
                         source=str(elf_path))
    from tinyfed.firmware_bridge.emulate.provision import check_device_name, image_key
    from tinyfed.firmware_bridge.link.keys import KeyStore

    store = KeyStore()
    keyed = image_key(elf_path)  # a keyed image from `firmware build --device-name`: flash its key
    if keyed is not None and store.lookup(keyed.device_id) is None:
        raise FlashError(f"the ELF holds device key {keyed.id_hex}, which is not in the key store {store.path}",
                         fix="pass the --key-store that built it, or flash the plain ELF to provision a new key",
                         source=str(elf_path))
    if keyed is None:
        check_device_name(device_name or board.name)
    elif device_name is not None:
        raise click.UsageError(f"--elf holds the key of device {keyed.id_hex} already; drop --device-name, or flash "
                               "the plain ELF to give the board a fresh key named NAME")
    try:
        session = ConnectHelper.session_with_chosen_probe(unique_id=probe_id, blocking=False, target_override=target)
    except Exception as exc:  # noqa: BLE001 - pyOCD raises its own error types for USB permission problems and the like
        raise FlashError(f"cannot open the debug probe: {exc}", fix="check the probe's USB cable and udev rules",
                         source=board.name) from None
    if session is None:
        which = f" with id {probe_id}" if probe_id else ""
        raise FlashError(f"no debug probe{which} is attached",
                         fix="connect the board's debug probe over USB (`pyocd list` shows attached probes)",
                         source=board.name)
    with session, _keyed(elf_path, keyed, device_name or board.name, store) as (image, device):
        try:
            FileProgrammer(session).program(str(image))
            session.board.target.reset()
        except Exception as exc:  # noqa: BLE001 - any pyOCD failure becomes one line
            raise FlashError(f"flashing failed: {exc}", fix="check the target name (--target) and the probe connection",
                             source=board.name) from None
    if as_json:
        click.echo(json.dumps({"board": board.name, "elf": str(elf_path), "target": target, "flashed": True,
                               "device_id": device.id_hex, "device_name": device.name}))
    else:
        click.echo(f"flashed {elf_path} to {board.name} ({target}); device {device.id_hex} ({device.name}), "
                   f"key in {store.path}")


@contextlib.contextmanager
def _keyed(elf: Path, keyed: Any, name: str, store: Any) -> Iterator[tuple[Path, Any]]:
    """The image to flash and its device: ``elf`` itself when it already holds a key, else a keyed copy
    with a fresh key, in a private temporary directory removed afterwards; the fresh key is forgotten
    again if flashing fails."""
    if keyed is not None:
        yield elf, store.lookup(keyed.device_id)
        return
    from tinyfed.firmware_bridge.emulate.provision import provisioned, write_keyed_image

    with provisioned(name, store) as device, tempfile.TemporaryDirectory(prefix="tinyfed-flash-") as tmp:
        yield write_keyed_image(elf, device, Path(tmp) / "tinyfed-fw-keyed.elf"), device
