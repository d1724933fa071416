"""The console the commands print their tables on.

On a terminal it is rich's own, at the terminal's width. On a pipe (``tinyfed devices | grep``,
CI logs) rows are never wrapped, and rich's padding to the table's width is cut off each line, so
a row is as long as its text and no longer.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

#: Columns a pipe gets: wide enough that no table of tinyfed wraps.
PIPE_WIDTH = 1000


class _PipeConsole(Console):
    """A wide console whose printed lines lose their trailing spaces."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        with self.capture() as captured:
            super().print(*objects, **kwargs)
        text = captured.get()
        self.file.write("\n".join(line.rstrip() for line in text.split("\n")))
        self.file.flush()


def output_console() -> Console:
    """rich's console on a terminal; on a pipe, one that keeps rows whole and unpadded."""
    console = Console()
    return console if console.is_terminal else _PipeConsole(width=PIPE_WIDTH)
