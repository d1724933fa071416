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


def _rate(n: float, seconds: float) -> str:
    """Bytes per second, in the units the live view uses."""
    per_s = n / seconds if seconds > 0 else 0.0
    return f"{per_s / 1024:,.1f} KiB/s" if per_s < 1024 * 1024 else f"{per_s / 1024 / 1024:,.2f} MiB/s"


class UploadProgress:
    """Provisioning on stderr, fed the engine's ``provision`` / ``provisioned`` rows: on a terminal a
    bar per board (bytes sent of its fragment, program and local data, rate); on a pipe one line per
    board when its provisioning ends. ``quiet`` (``--json``) says nothing."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.err = Console(stderr=True)
        self._bars: Any = None  # rich.progress.Progress, started by the first row
        self._tasks: dict[str, Any] = {}
        self._said = False  # the pipe's line that provisioning started

    def handles(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` is provisioning's (then :meth:`update` takes it)."""
        return row.get("kind") in ("provision", "provisioned")

    def update(self, row: dict[str, Any]) -> None:
        """One row of the engine's: a board's bytes so far, or its provisioning's end."""
        if self.quiet:
            return
        device = str(row["device"])
        if self.err.is_terminal:
            self._bar(device, row)
            return
        if not self._said:
            self._said = True
            sys.stderr.write("provisioning the boards (fragment, training program, local data) ...\n")
        if row["kind"] == "provisioned":
            sys.stderr.write(self.line(row) + "\n")
            sys.stderr.flush()

    @staticmethod
    def line(row: dict[str, Any]) -> str:
        """A board's provisioning in one line: bytes, seconds, rate (or why it failed)."""
        if row.get("error"):
            return f"provisioning {row['device']} failed after {row['seconds']:.1f} s: {row['error']}"
        return (f"provisioned {row['device']}: {row['bytes']:,} B in {row['seconds']:.1f} s "
                f"({_rate(row['bytes'], row['seconds'])})")

    def _bar(self, device: str, row: dict[str, Any]) -> None:
        if self._bars is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            self._bars = Progress(TextColumn("provisioning {task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeElapsedColumn(), console=self.err, transient=False)
            self._bars.start()
        if device not in self._tasks:
            self._tasks[device] = self._bars.add_task(device, total=row.get("total"))
        task = self._tasks[device]
        if row["kind"] == "provision":
            self._bars.update(task, completed=row["done"], total=row["total"],
                              description=f"{device} ({row['what']})")
        else:
            self._bars.update(task, description=device if not row.get("error") else f"{device}: {row['error']}")
            self._bars.stop_task(task)

    def close(self) -> None:
        """Take the bars down (before the live view starts: two live displays on one terminal garble)."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None


def print_jsonl(event: dict[str, Any]) -> None:
    """``--jsonl``: one event as one line of JSON on stdout, flushed as it happens."""
    import json

    sys.stdout.write(json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n")
    sys.stdout.flush()


class RunView:
    """What ``run`` and ``demo`` show while the engine runs, fed its progress rows: the upload bars
    while the boards are provisioned (:class:`UploadProgress`), then on a terminal the live view
    (``board``, a :class:`~tinyfed.host.dashboard.Dashboard`), on a pipe a line per evaluated
    version. ``quiet`` (``--json``) shows nothing; ``stream`` (``--jsonl``: stdout carries the
    events) keeps only what goes to stderr. A context manager: leaving it takes any display down."""

    def __init__(self, board: Any, *, quiet: bool = False, stream: bool = False) -> None:
        self.board, self.quiet, self.stream = board, quiet, stream
        self.uploads = UploadProgress(quiet=quiet)
        self.live: Any = None
        self.provisioning = True  # the upload bars until the engine's first row that is not provisioning's

    def __enter__(self) -> RunView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uploads.close()
        if self.live is not None:
            self.live.stop()
            self.live = None

    def progress(self, row: dict[str, Any]) -> None:
        """One row of the engine's ``progress``."""
        if self.uploads.handles(row):
            if self.provisioning:
                self.uploads.update(row)
            elif row["kind"] == "provisioned" and not self.quiet and self.live is None:  # again, mid-run
                sys.stderr.write(UploadProgress.line(row) + "\n")
                sys.stderr.flush()
            return
        evaluation = row.get("kind", "evaluation") == "evaluation"
        if self.provisioning:
            # boards train as soon as they are loaded: the bars stay until every board is, or training moved on
            if row.get("provisioned") or (evaluation and row.get("version", 0) > 0):
                self._provisioned()
            elif not self.quiet and not self.stream:
                self.board.update(row)
                if evaluation and not sys.stdout.isatty():
                    self._line(row)
                return
        if self.quiet or self.stream:
            return
        if self.live is not None:
            self.board.update(row)
            self.live.update(self.board.render())
            return
        if evaluation:
            self._line(row)

    def _line(self, row: dict[str, Any]) -> None:
        """A pipe's line for an evaluated version."""
        m = self.board.metric
        int8 = f"  int8 {row[f'int8_{m}']:.4f}" if f"int8_{m}" in row else ""
        reasons = row.get("rejections") or {}
        rejected = (f"  rejected {row.get('rejected', 0)} ("
                    + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items())) + ")") if reasons else ""
        sys.stdout.write(f"version {row['version']:4d}  {m} {row[m]:.4f}{int8}  loss {row['loss']:.4f}  "
                         f"t {row['t']:7.1f} s{rejected}\n")
        sys.stdout.flush()

    def _provisioned(self) -> None:
        """The boards are provisioned: bars down, and on a terminal the live view up."""
        self.provisioning = False
        self.uploads.close()
        if not self.quiet and not self.stream and sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(self.board.render(), refresh_per_second=4, transient=False)
            self.live.start()

    def finish(self, reached_target: bool) -> None:
        """The run has stopped: the live view's last frame says how it ended."""
        self.uploads.close()
        if self.live is not None:
            self.board.finish(reached_target)
            self.live.update(self.board.render())


class StudyProgress:
    """``simulate``'s strategies on stderr, fed the simulator's evaluation rows: on a terminal one bar
    per strategy (in the first leg versions towards the version cap, or simulated time towards
    ``max_sim_seconds``; simulated time towards the horizon in the second) with its version,
    simulated time and accuracy; on a pipe a line per strategy at most every :data:`PIPE_EVERY_S`
    seconds. ``quiet`` (``--json``) says nothing."""

    #: Least seconds between two pipe lines of one strategy.
    PIPE_EVERY_S = 5.0

    def __init__(self, strategies: list[str], max_versions: int | None, max_sim_seconds: float | None = None, *,
                 quiet: bool = False) -> None:
        self.strategies, self.max_versions, self.quiet = strategies, max_versions, quiet
        self.max_sim_seconds = max_sim_seconds
        self._end: float | None = None  # the simulated time the bars run towards (None: versions to the cap)
        self.err = Console(stderr=True)
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        self._said: dict[str, float] = {}
        self.horizon_s: float | None = None  # the second leg's end, once it runs
        self._total: float | None = None  # the bars' end in this leg

    def leg(self, name: str, text: str, horizon_s: float | None = None) -> None:
        """A leg starts: said on stderr, and the bars start again towards its end."""
        self.close()
        self.horizon_s = horizon_s if name == "horizon" else None
        self._end = self.horizon_s if self.horizon_s is not None else self.max_sim_seconds
        if self.quiet:
            return
        self.err.print(f"-- {text}", highlight=False, soft_wrap=True)
        if self.err.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bars = Progress(TextColumn("{task.description:<24}"), BarColumn(),
                                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.err)
            self._total = self._end if self._end is not None else self.max_versions
            self._tasks = {s: self._bars.add_task(s, total=self._total, status="waiting") for s in self.strategies}
            self._bars.start()

    def update(self, row: dict[str, Any]) -> None:
        """One evaluation of one strategy."""
        if self.quiet:
            return
        name = str(row.get("strategy"))
        status = (f"version {row['version']:,}  {row['sim_time_s']:,.0f} simulated s  "
                  f"accuracy {row['accuracy']:.4f}")
        if self._bars is not None and name in self._tasks:
            done = row["sim_time_s"] if self._end is not None else row["version"]
            self._bars.update(self._tasks[name], completed=done, status=status)
            return
        now = time.monotonic()
        if now - self._said.get(name, 0.0) >= self.PIPE_EVERY_S:
            self._said[name] = now
            sys.stderr.write(f"{name}: {status}\n")
            sys.stderr.flush()

    def done(self, name: str, text: str) -> None:
        """A strategy's leg ended: its bar full (it may have stopped short of the cap, on its target) and
        its line said above the bars."""
        if self.quiet:
            return
        if self._bars is not None and name in self._tasks:
            self._bars.update(self._tasks[name], completed=self._total or 0, status="done")
            self._bars.console.print(text, highlight=False, soft_wrap=True)  # above the bars, whole
            return
        self.err.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Take the bars down (idempotent)."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self._tasks = {}
