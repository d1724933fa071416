"""The console the commands print their tables on.

On a terminal it is rich's own, at the terminal's width. On a pipe (``tinyfed devices | grep``,
CI logs) rows are never wrapped, and rich's padding to the table's width is cut off each line, so
a row is as long as its text and no longer.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def phase(text: str, *, quiet: bool = False) -> Iterator[None]:
    """Say on stderr that a long step runs, so no command sits silent: a spinner on a terminal, a
    line on a pipe; then how long it took. ``quiet`` (``--json``) says nothing."""
    if quiet:
        yield
        return
    err = Console(stderr=True)
    start = time.monotonic()
    if err.is_terminal:
        with err.status(f"{text} ..."):
            yield
        err.print(f"{text}: {time.monotonic() - start:.1f} s")
        return
    sys.stderr.write(f"{text} ...\n")
    sys.stderr.flush()
    yield
    sys.stderr.write(f"{text}: done in {time.monotonic() - start:.1f} s\n")
    sys.stderr.flush()
