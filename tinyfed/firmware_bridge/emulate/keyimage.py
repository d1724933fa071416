"""Keyed firmware images: the device key page written into a copy of the firmware ELF.

The linker script (``firmware/boards/common/sections.ld``) gives every image a ``.tinyfed_key``
section: one flash erase page of 0xFF at ``__tinyfed_key_page``. :func:`keyed_image` writes a
key page (``keys.key_page``) into a copy of the ELF, padded with 0xFF to the whole page: the same
bytes ``arm-none-eabi-objcopy --update-section .tinyfed_key=page.bin`` would write, without
needing the cross toolchain where the emulator runs. The emulator launchers boot such a copy (a
fresh key and seed per launch); ``firmware flash`` of a real board can flash one.

A keyed image holds a secret: it is written with mode 0600 and its owner deletes it when done.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from tinyfed.errors import TinyfedError

KEY_SECTION = ".tinyfed_key"


class KeyImageError(TinyfedError):
    """The ELF has no key page section (built before protocol v2) or is not a 32-bit ARM ELF."""


def key_section(elf: Path | str) -> tuple[int, int, int]:
    """``(address, file offset, size)`` of the ELF's ``.tinyfed_key`` section."""
    data = Path(elf).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise KeyImageError("not a 32-bit little-endian ELF", fix="give the ELF `tinyfed firmware build` writes",
                            source=str(elf))
    e_shoff, = struct.unpack_from("<I", data, 0x20)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x2E)

    def header(i: int) -> tuple[int, ...]:
        return struct.unpack_from("<IIIIIIIIII", data, e_shoff + i * e_shentsize)

    names_off = header(e_shstrndx)[4]
    for i in range(e_shnum):
        name_at, sh_type, _flags, addr, offset, size = header(i)[:6]
        end = data.index(b"\x00", names_off + name_at)
        if data[names_off + name_at:end].decode("ascii", "replace") == KEY_SECTION and sh_type == 1:  # PROGBITS
            return addr, offset, size
    raise KeyImageError(f"the ELF has no {KEY_SECTION} section (firmware older than protocol v2)",
                        fix="rebuild it: `tinyfed firmware build --board BOARD`", source=str(elf))


def keyed_image(elf: Path | str, page: bytes, out: Path | str) -> Path:
    """Write a copy of ``elf`` to ``out`` (mode 0600) whose key page holds ``page``; return ``out``."""
    _addr, offset, size = key_section(elf)
    if len(page) > size:
        raise KeyImageError(f"a key page of {len(page)} bytes does not fit the {size}-byte {KEY_SECTION} section",
                            source=str(elf))
    data = bytearray(Path(elf).read_bytes())
    data[offset:offset + size] = page + b"\xff" * (size - len(page))
    target = Path(out)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return target
