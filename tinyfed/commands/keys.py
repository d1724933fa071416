"""``tinyfed keys list|forget``: the fleet key store (``docs/security.md``).

Every board this host provisioned (``tinyfed firmware build/flash --device-name``, an emulator
launch, a ``sim://`` board) has a device id and a secret key in the store. These commands show the
ids and names and remove an entry; no command ever prints a key.
"""

from __future__ import annotations

import json

import click

from tinyfed.commands.options import json_option
from tinyfed.errors import TinyfedError


def _store():  # noqa: ANN202 - the KeyStore, imported when a keys command runs
    from tinyfed.firmware_bridge.link.keys import KeyStore

    return KeyStore()


@click.group("keys")
def keys() -> None:
    """The fleet key store: list the provisioned boards (never their keys), forget one.

    The store is --key-store FILE (a global option, before the command), else $TINYFED_KEY_STORE,
    else $XDG_DATA_HOME/tinyfed/keys.json.

    \b
    Examples:
      tinyfed keys list
      tinyfed --key-store lab-keys.json keys list --json
      tinyfed keys forget 3f0c9a1e5b7d42a8c6e1f0b2d4a69c7e
    """


@keys.command("list")
@json_option
def list_command(as_json: bool) -> None:
    """List every provisioned board: its device id and name (never its key).

    \b
    Examples:
      tinyfed keys list
      tinyfed --key-store lab-keys.json keys list --json
    """
    store = _store()
    devices = sorted(store.devices(), key=lambda d: (d.name, d.id_hex))
    if as_json:
        click.echo(json.dumps({"key_store": str(store.path),
                               "devices": [{"device_id": d.id_hex, "name": d.name} for d in devices]}))
        return
    if not devices:
        click.echo(f"no boards in the key store {store.path} (`tinyfed firmware build --board B --device-name NAME` "
                   "or `tinyfed emulate` provisions some)")
        return
    click.echo(f"{'device id':32}  name")
    for d in devices:
        click.echo(f"{d.id_hex}  {d.name or '-'}")
    click.echo(f"{len(devices)} board(s) in {store.path}")


def _device_id(_ctx: click.Context, param: click.Parameter, value: str) -> bytes:
    """DEVICE_ID as 16 bytes: 32 hex digits, as `tinyfed keys list` prints it."""
    text = value.strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise click.BadParameter(f"{value[:40]!r} is not a device id: 32 hex digits, as `tinyfed keys list` prints",
                                 param=param)
    return raw


@keys.command("forget")
@click.argument("device_id", metavar="DEVICE_ID", callback=_device_id)
@json_option
def forget_command(device_id: bytes, as_json: bool) -> None:
    """Remove a board from the key store (retired, or about to be provisioned again).

    The host then refuses that board (`unknown_device`) until it is provisioned again.

    \b
    Examples:
      tinyfed keys forget 3f0c9a1e5b7d42a8c6e1f0b2d4a69c7e
      tinyfed --key-store lab-keys.json keys forget 3f0c9a1e5b7d42a8c6e1f0b2d4a69c7e --json
    """
    store = _store()
    if device_id not in store or not store.remove(device_id):
        raise TinyfedError(f"device id {device_id.hex()} is not in the key store",
                           fix="`tinyfed keys list` shows the stored ids", source=str(store.path))
    if as_json:
        click.echo(json.dumps({"key_store": str(store.path), "forgot": device_id.hex()}))
    else:
        click.echo(f"forgot device {device_id.hex()} (key store {store.path})")
