"""Finding board profiles: built-in ones, ``--boards-dir`` directories and ``$TINYFED_BOARDS_PATH``.

Precedence: a board defined in a user directory overrides the built-in board of the same name;
between user directories the first one in :func:`board_dirs` order wins (``--boards-dir``
before ``$TINYFED_BOARDS_PATH``). Both cases are logged at INFO (``tinyfed -v``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tinyfed.boards.schema import Board
from tinyfed.boards.validation import read_toml, suggest, validate
from tinyfed.errors import BoardError, DataFileError, FieldIssue

log = logging.getLogger(__name__)

#: Environment variable with extra board directories, ``os.pathsep``-separated.
ENV_VAR = "TINYFED_BOARDS_PATH"
#: Where the built-in board profiles live.
BUILTIN_DIR = Path(__file__).resolve().parent / "data"

ADD_BOARD_FIX = "run `tinyfed boards list` or add a TOML file to a --boards-dir / $TINYFED_BOARDS_PATH directory"


#: ``--boards-dir`` of the command running in this process (:func:`use_board_dirs`): searched by every
#: lookup, so a board a user defines is found as deep as the planner, the simulator and the link.
_command_dirs: tuple[Path, ...] = ()


def use_board_dirs(dirs: Iterable[Path | str]) -> tuple[Path, ...]:
    """Make ``dirs`` part of every board lookup in this process; returns the previous ones (to restore)."""
    global _command_dirs
    previous = _command_dirs
    _command_dirs = tuple(Path(d).expanduser() for d in dirs)
    return previous


def board_dirs(extra: Iterable[Path | str] = ()) -> list[Path]:
    """Directories searched for boards: built-in, then ``extra``, the command's ``--boards-dir``
    (:func:`use_board_dirs`), then ``$TINYFED_BOARDS_PATH``."""
    dirs = [BUILTIN_DIR]
    dirs.extend(Path(d).expanduser() for d in extra)
    dirs.extend(_command_dirs)
    env = os.environ.get(ENV_VAR, "")
    dirs.extend(Path(part).expanduser() for part in env.split(os.pathsep) if part.strip())
    unique: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def load_board_file(path: Path | str) -> Board:
    """Load and validate one board TOML file; every problem is reported in one DataFileError."""
    path = Path(path)
    data = read_toml(path)
    board, issues = validate(Board, data)
    name = data.get("name")
    if isinstance(name, str) and name != path.stem:
        issues.append(
            FieldIssue(
                "name",
                f"name '{name}' does not match the file name '{path.name}'",
                f'set name = "{path.stem}" or rename the file to {name}.toml',
            )
        )
    if issues or board is None:
        raise DataFileError(str(path), issues)
    board._path = path
    return board


def _user_dir_files(directory: Path) -> list[Path]:
    if not directory.exists():
        raise BoardError(
            "boards directory does not exist",
            fix="create it or correct --boards-dir / $TINYFED_BOARDS_PATH",
            source=str(directory),
        )
    if not directory.is_dir():
        raise BoardError(
            "boards directory is not a directory",
            fix="point --boards-dir / $TINYFED_BOARDS_PATH at a directory of .toml files",
            source=str(directory),
        )
    return sorted(directory.glob("*.toml"))


def boards_by_name(extra_dirs: Iterable[Path | str] = ()) -> dict[str, Board]:
    """All boards keyed by name (sorted); user directories override built-ins."""
    dirs = board_dirs(extra_dirs)
    boards: dict[str, Board] = {}
    for path in sorted(BUILTIN_DIR.glob("*.toml")):
        board = load_board_file(path)
        boards[board.name] = board
    user_defined: dict[str, Path] = {}
    for directory in dirs[1:]:
        for path in _user_dir_files(directory):
            board = load_board_file(path)
            if board.name in user_defined:
                log.info("board %s from %s ignored: %s (earlier directory) defines it",
                         board.name, path, user_defined[board.name])
                continue
            if board.name in boards:
                log.info("board %s from %s overrides the built-in one", board.name, path)
            boards[board.name] = board
            user_defined[board.name] = path
    _check_stand_ins(boards)
    return dict(sorted(boards.items()))


def _check_stand_ins(boards: dict[str, Board]) -> None:
    """Names in ``[emulator]`` that point at other boards must resolve (and suit their use)."""
    for board in boards.values():
        emu = board.emulator
        if emu is None:
            continue
        issues: list[FieldIssue] = []
        for key, target in (("stands_in_for", emu.stands_in_for), ("baseline_profile", emu.baseline_profile)):
            if target is None or target in boards:
                continue
            close = suggest(target, boards)
            hint = f"did you mean '{close}'? " if close else ""
            issues.append(FieldIssue(f"emulator.{key}", f"unknown board '{target}'",
                                     f"{hint}name a known board ({', '.join(boards)}) or remove {key}"))
        base = boards.get(emu.baseline_profile) if emu.baseline_profile is not None else None
        if base is not None:
            # the stand-in is booted in place of this board, so it must be bootable the same way
            if base.name == board.name:
                issues.append(FieldIssue("emulator.baseline_profile", "a board cannot be its own baseline profile",
                                         "name a profile with a larger budget, or remove baseline_profile"))
            elif not base.emulated or base.emulator is None or base.emulator.qemu_machine is None:
                issues.append(FieldIssue(
                    "emulator.baseline_profile", f"'{base.name}' is not an emulated board with a QEMU machine",
                    "name an emulated profile (emulated = true, [emulator].qemu_machine), or remove baseline_profile"))
        if issues:
            raise DataFileError(str(board.path), issues)


def list_boards(extra_dirs: Iterable[Path | str] = ()) -> list[Board]:
    """All boards, sorted by name. A broken user file raises its DataFileError."""
    return list(boards_by_name(extra_dirs).values())


def unknown_board_text(name: str, known: Iterable[str]) -> str:
    """``unknown board 'x'; did you mean 'y'? Known: a, b, c``."""
    known = list(known)
    close = suggest(name, known)
    hint = f"; did you mean '{close}'?" if close else "."
    return f"unknown board '{name}'{hint} Known: {', '.join(known)}"


def get_board(name: str, extra_dirs: Iterable[Path | str] = ()) -> Board:
    """The board called ``name``; an unknown name raises BoardError with the closest match."""
    boards = boards_by_name(extra_dirs)
    if name in boards:
        return boards[name]
    raise BoardError(unknown_board_text(name, boards), fix=ADD_BOARD_FIX)
