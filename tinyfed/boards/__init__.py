"""Board profiles as data, and fleets of boards.

Board profiles are TOML files: the built-in ones in ``tinyfed/boards/data``, plus any in
``--boards-dir`` directories and ``$TINYFED_BOARDS_PATH``. Fleets say how many devices of which
board; presets live in ``tinyfed/planner/fleets``. See ``docs/boards.md``.
"""

from tinyfed.boards.fleet import (
    FLEETS_DIR,
    ResolvedFleet,
    fleet_presets,
    load_fleet,
    single_board_fleet,
)
from tinyfed.boards.registry import (
    BUILTIN_DIR,
    ENV_VAR,
    board_dirs,
    boards_by_name,
    get_board,
    list_boards,
    load_board_file,
)
from tinyfed.boards.schema import (
    CORES,
    FPUS,
    Board,
    Emulator,
    FirmwareReserve,
    Fleet,
    FleetEntry,
    Link,
    Speed,
)

__all__ = [
    "BUILTIN_DIR",
    "CORES",
    "ENV_VAR",
    "FLEETS_DIR",
    "FPUS",
    "Board",
    "Emulator",
    "FirmwareReserve",
    "Fleet",
    "FleetEntry",
    "Link",
    "ResolvedFleet",
    "Speed",
    "board_dirs",
    "boards_by_name",
    "fleet_presets",
    "get_board",
    "list_boards",
    "load_board_file",
    "load_fleet",
    "single_board_fleet",
]
