"""``tinyfed`` with a hand on one sim:// board's cable, for the dashboard's browser test.

    python tests/_unplug_run.py BOARD_ID NAME run --simulate 4 ...

SIGUSR1 unplugs the simulated board (BOARD_ID, NAME): opening or writing its port fails, as for a board
whose cable was pulled, so the run loses its task and backs it off; SIGUSR2 plugs it back in. The signals
come from the test, timed by what the page shows, so nothing here waits or polls.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from tinyfed.cli import main
from tinyfed.firmware_bridge.twin.sim import get_sim_board


def _plug(board_id: str, name: str, unplugged: bool) -> Any:
    def handler(signum: int, frame: Any) -> None:
        get_sim_board(board_id, name).unplugged = unplugged
        sys.stderr.write(f"{'unplugged' if unplugged else 'plugged in'} {board_id}/{name}\n")
        sys.stderr.flush()

    return handler


if __name__ == "__main__":
    board_id, name = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGUSR1, _plug(board_id, name, True))
    signal.signal(signal.SIGUSR2, _plug(board_id, name, False))
    sys.argv = ["tinyfed", *sys.argv[3:]]
    main()
