"""Emulated boards on pseudo-terminals: a tty the launcher owns, relayed to a QEMU UART.

Real boards are reached through ``/dev/ttyACM0`` or ``/dev/ttyUSB0``: pyserial's POSIX class,
termios settings and an exclusive lock. :class:`PtyLink` gives an emulated board the same kind of
path. The launcher opens a pseudo-terminal pair itself (``os.openpty``), keeps the slave side open
in raw mode (so the path lives as long as the link, whatever runs behind it), and a relay thread
moves bytes between the master side and QEMU's UART (one end of a socketpair handed to QEMU as
``-chardev socket,fd=N``). Because the launcher, not QEMU, owns the pty:

* the path stays the same across a board reset or a killed and relaunched QEMU
  (:meth:`PtyLink.attach` a new board behind it), as a re-plugged USB-UART bridge keeps its tty;
* the relay can pace the link at a real baud rate (``pace``), both ways, so upload times are what
  a USB-UART bridge at that rate gives.

Pacing is a token bucket of zero depth against the monotonic clock: a byte leaves the relay only
once its 10 bit times (8N1) have passed on a virtual line that an idle spell cannot bank time on,
so N bytes never take less than ``N * 10 / baud`` seconds. The relay thread waits in ``poll`` for
the next byte's due time (about 1 ms of bytes at a time), never sleeps per byte. ``poll`` counts
whole milliseconds, so a paced frame arrives up to about 1 ms after its last bit (a USB-UART bridge
hands bytes over in 1 ms USB frames, or later); ``select`` would count microseconds but cannot
watch descriptors above 1023, which a process running a few hundred boards has.

While no board is attached, what the host writes is dropped (a powered-off board behind a bridge);
what a board writes while no host reads waits in the relay (bounded), and the host's pyserial
flushes it on open.
"""

from __future__ import annotations

import atexit
import errno
import logging
import math
import os
import select
import socket
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from tinyfed.errors import TinyfedError

log = logging.getLogger(__name__)

#: Bits a byte takes on an 8N1 line: start bit, 8 data bits, stop bit.
BITS_PER_BYTE = 10
#: Bytes the relay holds per direction before it stops reading (the tty or QEMU then holds the rest,
#: and a writer blocks, as on a real bridge whose FIFO is full).
RELAY_BUFFER_BYTES = 4096
#: The relay wakes for at least this much wire time of bytes at once when paced (1 ms).
PACE_GRAIN_S = 0.001
#: The paced rates `tinyfed emulate --pace` accepts: a UART bridge's range.
MIN_PACE_BAUD, MAX_PACE_BAUD = 1200, 12_000_000


class PtyError(TinyfedError):
    """A pseudo-terminal could not be made, or its link is used wrongly."""


def check_pace(baud: int) -> int:
    """``baud`` if a link can be paced at it, else a clear error."""
    if isinstance(baud, bool) or not isinstance(baud, int) or not MIN_PACE_BAUD <= baud <= MAX_PACE_BAUD:
        raise PtyError(f"cannot pace a link at {baud!r} baud",
                       fix=f"give a whole baud rate from {MIN_PACE_BAUD:,} to {MAX_PACE_BAUD:,}, "
                           "e.g. 115200 or 1000000")
    return baud


_LIVE: set[PtyLink] = set()
_LIVE_LOCK = threading.Lock()


def _close_all_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for link in live:
        link.close()


atexit.register(_close_all_live)


@dataclass
class _Lane:
    """One direction of the relay: bytes read from one side, waiting for their wire time, then written."""

    rate: float | None  # bytes per second; None: unpaced
    buf: bytearray = field(default_factory=bytearray)
    due: int = 0  # leading bytes of buf whose wire time has passed (writable now)
    clock: float = 0.0  # virtual line time up to which bytes have been clocked out
    moved: int = 0  # bytes written out, all told

    @property
    def room(self) -> int:
        return RELAY_BUFFER_BYTES - len(self.buf)

    def feed(self, data: bytes, now: float) -> None:
        if self.due == len(self.buf):  # the line is idle: it starts now, an idle spell banks nothing
            self.clock = max(self.clock, now)
        self.buf += data

    def advance(self, now: float) -> None:
        """Clock out the bytes whose wire time has passed by ``now``."""
        waiting = len(self.buf) - self.due
        if not waiting:
            return
        if self.rate is None:
            self.due = len(self.buf)
            return
        n = min(waiting, int((now - self.clock) * self.rate + 1e-9))
        if n > 0:
            self.due += n
            self.clock += n / self.rate

    def deadline(self) -> float | None:
        """When the next grain of bytes is due (None: nothing waits for its wire time)."""
        waiting = len(self.buf) - self.due
        if not waiting or self.rate is None:
            return None
        grain = max(1, math.ceil(self.rate * PACE_GRAIN_S))
        return self.clock + min(waiting, grain) / self.rate

    def wrote(self, n: int) -> None:
        del self.buf[:n]
        self.due -= n
        self.moved += n

    def clear(self) -> None:
        self.buf.clear()
        self.due = 0


_KEEP = object()  # PtyLink._pending: no change of board asked for


class PtyLink:
    """A pseudo-terminal owned by the launcher, relaying to whichever board is attached.

        with PtyLink("board0", link=Path("build/ttys/board0"), pace=115200) as tty:
            tty.path   # /dev/pts/7: what pyserial opens (tty.tty: the symlink if there is one)
            tty.attach(sock)  # a connected socket to QEMU's UART

    ``pace``: the baud rate to pace the relay at (10 bits per byte, both ways); None relays as fast
    as QEMU goes. ``link``: a symlink made to the slave path (replaced if one is there), removed on
    :meth:`close`. ``hangup``: when the board goes away, so does its tty, as a native-USB board's
    CDC-ACM port (the nRF52840's /dev/ttyACM0) does: the host's open tty reports a hangup (EIO) at
    once and a new pty takes its place behind the same symlink. Without it the tty stays and the
    host hears silence, as through a USB-UART bridge whose board died.
    """

    def __init__(self, name: str, *, pace: int | None = None, link: Path | str | None = None,
                 hangup: bool = False) -> None:
        if pace is not None:
            check_pace(pace)
        self.name = name
        self.pace = pace
        self.hangup = hangup
        self.hangups = 0
        rate = pace / BITS_PER_BYTE if pace is not None else None
        self._to_board = _Lane(rate)
        self._to_host = _Lane(rate)
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no line editing, no CR/LF mapping: the bytes as they are
            os.set_blocking(master, False)
            self.path = os.ttyname(slave)
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave = master, slave
        self.link = Path(link) if link is not None else None
        if self.link is not None:
            self._make_link(self.link)
        self._lock = threading.Lock()
        self._pending: object = _KEEP
        self._board: socket.socket | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._relay, name=f"tinyfed-pty-{name}", daemon=True)
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._thread.start()
        log.info("%s: pty %s%s%s", name, self.path, f" (link {self.link})" if self.link else "",
                 f", paced at {pace} baud" if pace else "")

    def _make_link(self, link: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(self.path, tmp)
        os.replace(tmp, link)  # atomically: a reader sees the old link or the new one, never none

    @property
    def tty(self) -> str:
        """The path a fleet file lists for this board: the symlink if there is one, else the pty itself."""
        return str(self.link) if self.link is not None else self.path

    @property
    def attached(self) -> bool:
        with self._lock:  # the relay swaps the board under this lock: never seen half-way
            return (self._board is not None) if self._pending is _KEEP else self._pending is not None

    @property
    def bytes_to_board(self) -> int:
        return self._to_board.moved

    @property
    def bytes_to_host(self) -> int:
        return self._to_host.moved

    def attach(self, board: socket.socket) -> None:
        """Relay to ``board`` (a connected socket to a UART) from now on, replacing any board before it."""
        self._switch(board)

    def detach(self, board: socket.socket | None = None) -> None:
        """Unplug the board (only if it is ``board``, when given: a stopped QEMU must not unplug the one
        started after it): its socket is closed, and what the host writes is dropped until the next attach."""
        self._switch(None, only=board)

    def _switch(self, board: socket.socket | None, only: socket.socket | None = None) -> None:
        if self._closing:
            if board is not None:
                board.close()
            if only is not None:
                return
            raise PtyError(f"the pty link of {self.name} is closed", fix="make a new PtyLink")
        if board is not None:
            board.setblocking(False)
        with self._lock:
            if only is not None and (self._pending if self._pending is not _KEEP else self._board) is not only:
                return  # another board is (being) attached: leave it
            superseded, self._pending = self._pending, board
        if isinstance(superseded, socket.socket):  # never taken up by the relay
            superseded.close()
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # the pipe is full of wake-ups already
            pass
        except OSError:
            pass

    def close(self) -> None:
        """Stop the relay, close the board's socket and the pty, remove the symlink."""
        if self._closing:
            return
        self._closing = True
        with _LIVE_LOCK:
            _LIVE.discard(self)
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self.link is not None:
            try:
                if self.link.is_symlink() and os.readlink(self.link) == self.path:
                    self.link.unlink()
            except OSError:
                pass
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        log.debug("%s: pty %s closed (%d bytes to the board, %d to the host)", self.name, self.path,
                  self.bytes_to_board, self.bytes_to_host)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the relay thread -------------------------------------------------------------------

    def _take_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, _KEEP
            if pending is _KEEP:
                return
            old = self._board
            self._board = pending if isinstance(pending, socket.socket) else None
        had_board = old is not None
        if old is not None:
            old.close()
        self._to_board.clear()
        self._to_host.clear()
        log.debug("%s: board %s", self.name, "attached" if self._board is not None else "detached")
        if had_board and self._board is None:
            self._hang_up()

    def _drop_board(self, why: str) -> None:
        log.info("%s: the board behind %s went away (%s)", self.name, self.path, why)
        with self._lock:
            old, self._board = self._board, None
        if old is not None:
            old.close()
        self._to_board.clear()
        self._to_host.clear()
        self._hang_up()

    def _hang_up(self) -> None:
        """With ``hangup``: the board's tty goes with it (the host's open one reads EIO); a new pty, behind
        the same symlink, waits for the next board. Runs on the relay thread, which alone uses the fds."""
        if not self.hangup or self._closing:
            return
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        old = (self._master, self._slave)
        self._master, self._slave, old_path = master, slave, self.path
        self.path = path
        if self.link is not None:
            self._make_link(self.link)
        self.hangups += 1  # before the host can see it: closing the old pair is what it sees
        for fd in old:
            os.close(fd)
        log.info("%s: hung up %s; the next board answers on %s", self.name, old_path, path)

    def _relay(self) -> None:
        try:
            self._relay_loop()
        except Exception:  # noqa: BLE001 - a relay that dies must say why; the host then sees a silent board
            log.exception("%s: the pty relay stopped", self.name)
        finally:
            if self._board is not None:
                self._board.close()
                self._board = None

    def _relay_loop(self) -> None:
        up, down = self._to_host, self._to_board  # up: board -> host; down: host -> board
        while not self._closing:
            self._take_pending()
            now = time.monotonic()
            down.advance(now)
            up.advance(now)
            if self._board is not None and down.due:
                self._write_board(self._board, down)
            if up.due:
                self._write_host(up)
            board = self._board  # a failed write has dropped it
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            # the host side is read while there is room, and always while no board is there (dropped)
            poller.register(self._master, (select.POLLIN if board is None or down.room > 0 else 0)
                            | (select.POLLOUT if up.due else 0))
            if board is not None:
                poller.register(board, (select.POLLIN if up.room > 0 else 0) | (select.POLLOUT if down.due else 0))
            due = [d for d in (up.deadline(), down.deadline() if board is not None else None) if d is not None]
            timeout_ms = max(0, math.ceil((min(due) - time.monotonic()) * 1000)) if due else None
            ready = dict(poller.poll(timeout_ms))
            now = time.monotonic()
            if ready.get(self._wake_r):  # a board came or went: take it up before reading what is for it
                self._drain_wake()
                continue
            if ready.get(self._master, 0) & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._read_host(down, now, board is not None)
            if board is not None and ready.get(board.fileno(), 0) & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._read_board(board, up, now)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _read_host(self, down: _Lane, now: float, have_board: bool) -> None:
        try:
            data = os.read(self._master, down.room if have_board else RELAY_BUFFER_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no slave open: cannot happen while the launcher holds it
                return
            raise
        if have_board and data:
            down.feed(data, now)

    def _read_board(self, board: socket.socket, up: _Lane, now: float) -> None:
        try:
            data = board.recv(up.room)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop_board(str(exc))
            return
        if not data:
            self._drop_board("its end of the UART closed")
            return
        up.feed(data, now)

    def _write_board(self, board: socket.socket, down: _Lane) -> None:
        try:
            n = board.send(bytes(down.buf[:down.due]))
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop_board(str(exc))
            return
        down.wrote(n)

    def _write_host(self, up: _Lane) -> None:
        try:
            n = os.write(self._master, bytes(up.buf[:up.due]))
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return
            raise
        up.wrote(n)
