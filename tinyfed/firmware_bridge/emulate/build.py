"""Build the bare-metal board firmware (``firmware/``) and measure what it uses.

``build_firmware("nrf52840")`` runs ``make`` in ``firmware/`` with the Arm cross-compiler,
passing the board profile's RAM and flash budgets, and returns a :class:`BuildResult`: the
ELF/bin/map paths and the memory split read back from the linker map (the firmware's own RAM
and flash, the tensor arena, the two fragment slots). A build that does not fit the budget
fails at link time; its message (the linker script's ``tinyfed: ...`` ASSERT) becomes a
:class:`FirmwareBuildError`.

``write_reserve_back(board, result)`` writes the measured firmware use into the board file's
``[firmware_reserve]`` table (``source = "linker-map"``), so the planner budgets fragments
with measured numbers. From a shell::

    python -m tinyfed.firmware_bridge.emulate.build nrf52840 apollo3 --write-reserve

A :class:`BuildResult` is path-like (``os.fspath`` gives the ELF), so callers that only want
the ELF can pass it straight to ``Path``/``open``/QEMU.
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tinyfed.boards import Board, get_board
from tinyfed.boards.registry import BUILTIN_DIR
from tinyfed.errors import TinyfedError

#: The top of a source checkout, when tinyfed runs from one (its ``firmware/`` is beside ``tinyfed/``).
_CHECKOUT = Path(__file__).resolve().parents[3]
#: The firmware sources shipped inside an installed package (``tinyfed/_firmware``, mapped from the
#: checkout's ``firmware/`` at build time by setup.py: git holds one copy of them).
_PACKAGED_FIRMWARE = Path(__file__).resolve().parents[2] / "_firmware"


def _firmware_dir() -> Path:
    """The checkout's ``firmware/`` when there is one, else the sources the wheel ships."""
    checkout = _CHECKOUT / "firmware"
    if (checkout / "Makefile").is_file() and (_CHECKOUT / "tinyfed").is_dir():
        return checkout
    return _PACKAGED_FIRMWARE


def _default_out_root() -> Path:
    """``build/firmware`` at the top of a checkout (git-ignored); from an installed package, never inside
    site-packages but in the user's cache (``$TINYFED_CACHE_DIR`` or ``$XDG_CACHE_HOME/tinyfed``)."""
    if FIRMWARE_DIR.parent == _CHECKOUT:
        return _CHECKOUT / "build" / "firmware"
    from tinyfed.models.datasets import cache_dir

    return cache_dir() / "firmware"


#: Where the firmware sources are: the checkout's ``firmware/`` or the installed package's copy.
FIRMWARE_DIR = _firmware_dir()

CROSS_PREFIX = "arm-none-eabi-"
TOOLCHAIN_FIX = "sudo apt-get install --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi"
KIB = 1024

#: Symbols the linker script (firmware/boards/common/sections.ld) defines, as map-file names.
_MAP_SYMBOLS = ("__fw_ram_bytes", "__fw_flash_bytes", "__arena_bytes", "__slot_bytes", "__slot_a", "__arena_start",
                "__train_region", "__train_bytes", "__data_region", "__data_region_bytes")
_MAP_LINE = re.compile(r"^\s+0x([0-9a-fA-F]+)\s+(__\w+)\s+=")


class FirmwareBuildError(TinyfedError):
    """The firmware did not build (compile error, or it does not fit the board's budget)."""


class ToolchainMissingError(FirmwareBuildError):
    """The Arm cross-compiler (or make) is not installed."""


@dataclass(frozen=True)
class BuildResult:
    """One firmware build and its memory use, all sizes in bytes."""

    board: str
    elf: Path
    bin: Path
    map: Path
    fw_ram_bytes: int      # stack + .data + .bss (the firmware's own RAM)
    fw_flash_bytes: int    # code + rodata + .data image (from the start of the flash budget)
    arena_bytes: int       # the static tensor arena
    slot_bytes: int        # one of the two fragment slots
    ram_budget_bytes: int
    flash_budget_bytes: int
    flash_page_bytes: int
    engine: bool           # firmware/engine/ was linked in
    warnings: tuple[str, ...] = ()
    program_store_bytes: int = 0   # the training-program flash store
    data_store_bytes: int = 0      # the local-data flash store
    data_store_address: int = 0    # where a TFDS image is preloaded (QEMU -device loader)

    def __fspath__(self) -> str:
        return str(self.elf)

    def __str__(self) -> str:
        return str(self.elf)

    @property
    def reserve_ram_kib(self) -> int:
        """``[firmware_reserve].ram_kib``: the firmware's RAM rounded up to KiB."""
        return math.ceil(self.fw_ram_bytes / KIB)

    @property
    def reserve_flash_kib(self) -> int:
        """``[firmware_reserve].flash_kib``: the firmware image rounded up to KiB."""
        return math.ceil(self.fw_flash_bytes / KIB)

    @property
    def ram_used_bytes(self) -> int:
        """RAM the build claims: the firmware's own, rounded to KiB, plus the arena."""
        return self.reserve_ram_kib * KIB + self.arena_bytes

    @property
    def flash_used_bytes(self) -> int:
        """Flash the build claims: the image, padded to a page, both slots and the training stores."""
        image = math.ceil(self.fw_flash_bytes / self.flash_page_bytes) * self.flash_page_bytes
        return image + 2 * self.slot_bytes + self.program_store_bytes + self.data_store_bytes

    def summary(self) -> str:
        return (
            f"{self.board}: firmware RAM {self.fw_ram_bytes} B ({self.reserve_ram_kib} KiB), "
            f"flash {self.fw_flash_bytes} B ({self.reserve_flash_kib} KiB); arena {self.arena_bytes // KIB} KiB "
            f"of {self.ram_budget_bytes // KIB} KiB RAM; 2 slots x {self.slot_bytes // KIB} KiB "
            f"+ program {self.program_store_bytes // KIB} KiB + data {self.data_store_bytes // KIB} KiB "
            f"of {self.flash_budget_bytes // KIB} KiB flash; engine {'linked' if self.engine else 'absent'}"
        )


def firmware_boards(firmware_dir: Path = FIRMWARE_DIR) -> list[str]:
    """Boards the firmware has a board layer for."""
    return sorted(p.parent.name for p in (firmware_dir / "boards").glob("*/board.mk"))


def default_out_dir(board_name: str) -> Path:
    """Where a board's firmware is built when no directory is given (``tinyfed emulate`` looks there too)."""
    return _default_out_root() / board_name


def _check_toolchain() -> None:
    missing = [t for t in (CROSS_PREFIX + "gcc", CROSS_PREFIX + "objcopy") if shutil.which(t) is None]
    if missing:
        raise ToolchainMissingError(
            f"the Arm cross-compiler is not installed ({', '.join(missing)} not on PATH)", fix=TOOLCHAIN_FIX
        )
    if shutil.which("make") is None:
        raise ToolchainMissingError("make is not installed", fix="sudo apt-get install --no-install-recommends make")


def parse_map(map_path: Path) -> dict[str, int]:
    """The linker-script symbols (``__fw_ram_bytes`` ...) from a GNU ld map file."""
    values: dict[str, int] = {}
    for line in map_path.read_text(errors="replace").splitlines():
        m = _MAP_LINE.match(line)
        if m and m.group(2) in _MAP_SYMBOLS:
            values[m.group(2)] = int(m.group(1), 16)
    missing = [s for s in _MAP_SYMBOLS if s not in values]
    if missing:
        raise FirmwareBuildError(
            f"the linker map lacks {', '.join(missing)}",
            fix="the firmware's linker script must INCLUDE boards/common/sections.ld",
            source=str(map_path),
        )
    return values


def _link_errors(output: str) -> list[str]:
    """The linker script's own messages (``tinyfed: ...``), else compiler/linker error lines."""
    ours = [m.group(1).strip() for m in re.finditer(r"(tinyfed: [^\n]+)", output)]
    if ours:
        return list(dict.fromkeys(ours))
    return [ln.strip() for ln in output.splitlines() if "error" in ln.lower()][:5]


def build_firmware(
    board_name: str,
    out_dir: Path | str | None = None,
    *,
    arena_kib: int | None = None,
    slot_kib: int | None = None,
    boards_dirs: tuple[Path | str, ...] = (),
    jobs: int = 2,
) -> BuildResult:
    """Build the firmware for ``board_name``; see the module docstring.

    ``arena_kib`` / ``slot_kib`` fix the arena / slot size (default: all RAM / flash the
    firmware leaves free). A size that does not fit raises :class:`FirmwareBuildError` with
    the linker's message.
    """
    board = get_board(board_name, boards_dirs)
    if not (FIRMWARE_DIR / "Makefile").is_file():
        raise FirmwareBuildError(
            f"the firmware sources are not here ({FIRMWARE_DIR})",
            fix="reinstall tinyfed (pip install --force-reinstall tinyfed): its wheel ships the firmware sources",
        )
    supported = firmware_boards()
    if board.name not in supported:
        raise FirmwareBuildError(
            f"the firmware has no board layer for '{board.name}'",
            fix=f"use one of {', '.join(supported)}, or add firmware/boards/{board.name}/",
            source=board.name,
        )
    _check_toolchain()
    out = Path(out_dir) if out_dir is not None else default_out_dir(board.name)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        "make", "-C", str(FIRMWARE_DIR), f"-j{max(1, jobs)}", f"BOARD={board.name}", f"OUT={out}",
        f"RAM_KIB={board.ram_kib}", f"FLASH_KIB={board.flash_kib}",
    ]
    if arena_kib is not None:
        cmd.append(f"ARENA_KIB={int(arena_kib)}")
    if slot_kib is not None:
        cmd.append(f"SLOT_KIB={int(slot_kib)}")
    env = dict(os.environ, LC_ALL="C")
    # One build per output directory at a time (tests and `tinyfed emulate` share the default).
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            errors = _link_errors(output)
            problem = "; ".join(errors) if errors else f"make failed with exit code {proc.returncode}"
            budget = any("budget exceeded" in e for e in errors)
            raise FirmwareBuildError(
                f"the {board.name} firmware did not build: {problem}",
                fix=("lower the arena/slot setting or raise the board's ram_kib/flash_kib" if budget
                     else f"run `{' '.join(cmd)}` to see the full compiler output"),
                source=board.name,
            )
        elf, binf, mapf = out / "tinyfed-fw.elf", out / "tinyfed-fw.bin", out / "tinyfed-fw.map"
        sym = parse_map(mapf)
    page = _flash_page(board.name)
    return BuildResult(
        board=board.name,
        elf=elf,
        bin=binf,
        map=mapf,
        fw_ram_bytes=sym["__fw_ram_bytes"],
        fw_flash_bytes=sym["__fw_flash_bytes"],
        arena_bytes=sym["__arena_bytes"],
        slot_bytes=sym["__slot_bytes"],
        ram_budget_bytes=board.ram_bytes,
        flash_budget_bytes=board.flash_bytes,
        flash_page_bytes=page,
        engine=any((FIRMWARE_DIR / "engine").glob("*.c")),
        warnings=tuple(ln for ln in output.splitlines() if "warning:" in ln.lower()),
        program_store_bytes=sym.get("__train_bytes", 0),
        data_store_bytes=sym.get("__data_region_bytes", 0),
        data_store_address=sym.get("__data_region", 0),
    )


def _flash_page(board_name: str) -> int:
    text = (FIRMWARE_DIR / "boards" / board_name / "board.mk").read_text()
    m = re.search(r"^FLASH_PAGE\s*:?=\s*(\d+)", text, re.MULTILINE)
    return int(m.group(1)) if m else 4096


_TABLE_HEADER = re.compile(r"^\s*\[([^\]]+)\]\s*(#.*)?$")


def _set_key(lines: list[str], start: int, end: int, key: str, value: str) -> None:
    pattern = re.compile(rf"^(\s*{re.escape(key)}\s*=\s*)(\"[^\"]*\"|[^\s#]+)(.*)$")
    for i in range(start, end):
        m = pattern.match(lines[i])
        if m:
            lines[i] = f"{m.group(1)}{value}{m.group(3)}"
            return
    lines.insert(end, f"{key} = {value}")


def reserve_table_text(text: str, ram_kib: int, flash_kib: int) -> str:
    """``text`` (a board TOML) with only its ``[firmware_reserve]`` values replaced."""
    lines = text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines)
         if (m := _TABLE_HEADER.match(ln)) and m.group(1).strip() == "firmware_reserve"),
        None,
    )
    if start is None:
        raise FirmwareBuildError("the board file has no [firmware_reserve] table", fix="add one (see docs/boards.md)")
    end = next((i for i in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # keep the blank line(s) before the next table where they are
    _set_key(lines, start + 1, end, "ram_kib", str(ram_kib))
    _set_key(lines, start + 1, end, "flash_kib", str(flash_kib))
    _set_key(lines, start + 1, end, "source", '"linker-map"')
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def write_reserve_back(board: Board | str, result: BuildResult, path: Path | str | None = None) -> Path:
    """Write ``result``'s measured reserve into the board file's ``[firmware_reserve]``.

    Only that table changes (comments and formatting elsewhere are kept). The arena and the
    fragment slots are not part of the reserve. Returns the file written.
    """
    name = board if isinstance(board, str) else board.name
    if result.board != name:
        raise FirmwareBuildError(f"the build is for '{result.board}', not '{name}'", fix="build the right board")
    if path is None:
        path = (board.path if isinstance(board, Board) else None) or BUILTIN_DIR / f"{name}.toml"
    path = Path(path)
    text = path.read_text()
    new = reserve_table_text(text, result.reserve_ram_kib, result.reserve_flash_kib)
    if new != text:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(new)
        os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinyfed.firmware_bridge.emulate.build",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("boards", nargs="*", help="boards to build (default: every board with a firmware layer)")
    parser.add_argument("--write-reserve", action="store_true", help="write the measured [firmware_reserve] back")
    args = parser.parse_args(argv)
    try:
        for name in args.boards or firmware_boards():
            result = build_firmware(name)
            print(result.summary())
            if args.write_reserve:
                print(f"  wrote {write_reserve_back(name, result)}")
    except TinyfedError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
