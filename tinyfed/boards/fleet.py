"""Fleet files: how many devices of which board, and optionally where each device is reached.

Presets ship in ``tinyfed/planner/fleets``. An entry may list device URLs (``urls = [...]`` or
``url = "..."``), as ``tinyfed emulate --out`` writes; the planner uses only the counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tinyfed.boards.registry import boards_by_name
from tinyfed.boards.schema import Board, Fleet
from tinyfed.boards.validation import read_toml, suggest, validate
from tinyfed.errors import BoardError, DataFileError, FieldIssue

#: Fleet presets shipped with tinyfed (``--fleet smartwatch`` means ``FLEETS_DIR/smartwatch.toml``).
FLEETS_DIR = Path(__file__).resolve().parent.parent / "planner" / "fleets"


@dataclass(frozen=True)
class ResolvedFleet:
    """A fleet whose board names have been resolved to board profiles."""

    name: str
    entries: list[tuple[Board, int]] = field(default_factory=list)
    description: str | None = None
    path: Path | None = None
    #: Per entry (same order as ``entries``), the device URLs the file gives; empty: none given.
    entry_urls: list[list[str]] = field(default_factory=list)

    def urls_of(self, index: int) -> list[str]:
        """URLs of ``entries[index]`` (empty when the entry gives none)."""
        return list(self.entry_urls[index]) if index < len(self.entry_urls) else []

    @property
    def devices(self) -> list[tuple[Board, str | None]]:
        """Every device as ``(board, url)``, in file order; ``url`` is None where the file gives none."""
        out: list[tuple[Board, str | None]] = []
        for i, (board, count) in enumerate(self.entries):
            urls = self.urls_of(i)
            out += [(board, urls[k] if k < len(urls) else None) for k in range(count)]
        return out

    @property
    def has_urls(self) -> bool:
        """True when some entry says where its devices are."""
        return any(self.entry_urls)

    @property
    def boards(self) -> list[Board]:
        """Each board once, in file order."""
        seen: dict[str, Board] = {}
        for board, _ in self.entries:
            seen.setdefault(board.name, board)
        return list(seen.values())

    @property
    def total_devices(self) -> int:
        return sum(count for _, count in self.entries)

    def count_of(self, board_name: str) -> int:
        return sum(count for board, count in self.entries if board.name == board_name)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path) if self.path else None,
            "total_devices": self.total_devices,
            "boards": [
                {"board": b.name, "count": n, **({"urls": self.urls_of(i)} if self.urls_of(i) else {})}
                for i, (b, n) in enumerate(self.entries)
            ],
        }


def fleet_presets() -> list[str]:
    """Names of the fleet presets shipped with tinyfed."""
    return sorted(p.stem for p in FLEETS_DIR.glob("*.toml"))


def fleet_file(path_or_name: Path | str) -> Path:
    """The fleet TOML a ``--fleet`` value names: a file path, or a shipped preset's bare name."""
    text = str(path_or_name)
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        raise BoardError("a fleet must be a .toml file, not a directory", fix="pass the fleet file", source=text)
    if path.is_file():
        return path
    if text.endswith(".toml") or "/" in text or os.sep in text:
        raise BoardError("fleet file not found", fix="check the path, or use a preset: " + ", ".join(fleet_presets()),
                         source=text)
    preset = FLEETS_DIR / f"{text}.toml"
    if preset.is_file():
        return preset
    presets = fleet_presets()
    close = suggest(text, presets)
    hint = f"; did you mean '{close}'?" if close else "."
    raise BoardError(
        f"unknown fleet '{text}'{hint} Presets: {', '.join(presets)}",
        fix="pass a preset name or the path to a fleet TOML file",
    )


def load_fleet(path_or_name: Path | str, extra_dirs: Iterable[Path | str] = ()) -> ResolvedFleet:
    """Load a fleet file (or a preset by bare name) and resolve its boards.

    Every problem of the file, including board names that do not exist and a ``count`` that
    disagrees with the entry's ``urls``, is reported in one DataFileError naming the file and
    the key (``boards[2].board``, ``boards[0].count``).
    """
    path = fleet_file(path_or_name)
    data = read_toml(path)
    fleet, issues = validate(Fleet, data)
    known = boards_by_name(extra_dirs)
    issues.extend(unknown_board_issues(data, known))
    if issues or fleet is None:
        raise DataFileError(str(path), issues)
    return ResolvedFleet(
        name=fleet.name,
        entries=[(known[e.board], e.devices) for e in fleet.boards],
        description=fleet.description,
        path=path,
        entry_urls=[e.device_urls for e in fleet.boards],
    )


def unknown_board_issues(data: dict, known: dict[str, Board]) -> list[FieldIssue]:
    """One issue per ``[[boards]]`` entry of a fleet file naming a board that does not exist."""
    issues = []
    entries = data.get("boards")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        name = entry.get("board") if isinstance(entry, dict) else None
        if isinstance(name, str) and name and name not in known:
            close = suggest(name, known)
            hint = f"; did you mean '{close}'?" if close else ""
            issues.append(
                FieldIssue(
                    f"boards[{i}].board",
                    f"unknown board '{name}'{hint}",
                    f"use one of: {', '.join(known)}; or add {name}.toml to a --boards-dir directory",
                )
            )
    return issues


def single_board_fleet(board: Board, count: int = 1) -> ResolvedFleet:
    """A fleet of ``count`` devices of one board (for planning against a single board)."""
    if count < 1:
        raise BoardError(f"a fleet needs at least one device, got {count}", fix="use count >= 1")
    return ResolvedFleet(name=board.name, entries=[(board, count)], description=f"{count} x {board.name}")
