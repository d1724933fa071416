"""Provisioning a real board: a device key recorded in the key store and written into its firmware image.

``tinyfed firmware build --device-name NAME`` and ``tinyfed flash`` give a board its identity the
only way the protocol allows: the 64-byte key page (``keys.key_page``) goes into the image's
``.tinyfed_key`` section at build/flash time (``keyimage.keyed_image``), so it reaches the board
through the debug probe and never over the link. The key is recorded in the store *before* any
image holds it, and forgotten again if no image could be made or flashed.

A keyed image holds the key in clear: it is written mode 0600 beside the plain ELF (``firmware
build``), or in a private temporary directory removed after flashing (``flash``). See
``docs/security.md``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.emulate.keyimage import key_section, keyed_image
from tinyfed.firmware_bridge.link.keys import KEY_PAGE_BYTES, DeviceKey, KeyStore, key_page, parse_key_page

log = logging.getLogger(__name__)

#: A device name: what `tinyfed keys list` shows and a keyed image's file name carries.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ProvisionError(TinyfedError):
    """A board could not be given a device key."""


@dataclass(frozen=True)
class KeyedImage:
    """A firmware image holding one board's key page: ``device`` is public (id and name), ``path`` secret."""

    device: DeviceKey
    path: Path

    def to_dict(self) -> dict[str, str]:
        return {"device_id": self.device.id_hex, "name": self.device.name, "image": str(self.path)}


def check_device_name(name: str) -> str:
    """``name`` if it can name a device (letters, digits, ``.``, ``_``, ``-``; at most 64), else a clear error."""
    if not _NAME.match(name):
        raise ProvisionError(f"{name[:40]!r} cannot name a device",
                             fix="use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit), "
                                 "e.g. --device-name wrist-07")
    return name


def image_key(elf: Path) -> DeviceKey | None:
    """The identity in ``elf``'s key page, or None for a blank page (an unkeyed build). An ELF without
    the key page section (firmware older than protocol v2) is a clear error."""
    _addr, offset, size = key_section(elf)
    with open(elf, "rb") as f:
        f.seek(offset)
        page = f.read(min(size, KEY_PAGE_BYTES))
    parsed = parse_key_page(page)
    return None if parsed is None else parsed[0]


@contextmanager
def provisioned(name: str, store: KeyStore | None = None) -> Iterator[DeviceKey]:
    """A fresh identity named ``name``, recorded in the store first; forgotten again if the block fails
    (no image made, flashing failed), so the store never lists a board that holds no key."""
    store = store if store is not None else KeyStore()
    device = store.provision(check_device_name(name))
    try:
        yield device
    except BaseException:
        store.remove(device.device_id)
        log.info("forgot device %s: its provisioning did not finish", device.id_hex)
        raise


def write_keyed_image(elf: Path, device: DeviceKey, out: Path) -> Path:
    """``out``: a copy of ``elf`` whose key page holds ``device`` (seed zeros: a real board seeds its
    generator from its hardware RNG, or has only its boot counter: docs/security.md), mode 0600."""
    if not Path(elf).is_file():
        raise ProvisionError("firmware ELF not found", fix="build it: `tinyfed firmware build --board B`",
                             source=str(elf))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a file left by someone else keeps its mode: never write a key into it
    path = keyed_image(Path(elf), key_page(device), out)
    path.chmod(0o600)
    return path


def keyed_image_path(elf: Path, name: str, out_dir: Path | None = None) -> Path:
    """Where ``firmware build --device-name NAME`` puts the keyed image: ``tinyfed-fw-NAME.elf`` beside the ELF."""
    return (out_dir if out_dir is not None else Path(elf).parent) / f"tinyfed-fw-{check_device_name(name)}.elf"


def build_keyed_image(elf: Path, name: str, out: Path | None = None, store: KeyStore | None = None) -> KeyedImage:
    """Provision a board named ``name`` and write its keyed copy of ``elf`` (default
    :func:`keyed_image_path`); the key is in the store and in that file, nowhere else."""
    target = out if out is not None else keyed_image_path(elf, name)
    key_section(elf)  # an ELF that cannot hold a key is refused before anything is recorded
    with provisioned(name, store) as device:
        path = write_keyed_image(elf, device, target)
    log.info("provisioned device %s (%s): keyed image %s", device.id_hex, device.name, path)
    return KeyedImage(device, path)
