"""Boards in QEMU, reached over ``socket://`` or over a pseudo-terminal (``link="pty"``).

:func:`launch_qemu` binds ``127.0.0.1:0`` in Python and hands the listening socket's fd to QEMU
(``-chardev socket,id=s0,fd=N,server=on,wait=off,nodelay=on -serial chardev:s0``), so the port is
known before QEMU starts and no two boards race for one. A board is *ready* when it answers a
PING within the deadline (never a sleep, never a banner).

Every launch provisions the board like a factory would: a fresh device identity is recorded in the
key store (``$TINYFED_KEY_STORE``, or the ``key_store`` given) and QEMU boots a keyed copy of the
ELF (:func:`~tinyfed.firmware_bridge.emulate.keyimage.keyed_image`, with a fresh 8-byte RNG seed);
the copy is deleted and the key forgotten when the board stops.

With ``link="pty"`` (or a :class:`~tinyfed.firmware_bridge.emulate.pty.PtyLink` given as ``tty``)
QEMU's UART is one end of a socketpair (``-chardev socket,id=s0,fd=N``) whose other end a relay
thread joins to a pseudo-terminal the launcher owns: the board's URL is then a plain tty path, as a
real board's ``/dev/ttyUSB0``, stable across a QEMU restart and optionally paced at a baud rate.

Every QEMU runs in its own process group and is stopped on :meth:`EmulatedBoard.stop`, on leaving
:class:`EmulatorFleet`, on Ctrl-C and at interpreter exit; on Linux it also dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from tinyfed.errors import BoardError, TinyfedError
from tinyfed.firmware_bridge.link.keys import SEED_BYTES, DeviceKey, KeyStore, key_page

if TYPE_CHECKING:
    from tinyfed.boards import Board
    from tinyfed.firmware_bridge.emulate.pty import PtyLink

log = logging.getLogger(__name__)

QEMU = "qemu-system-arm"
#: Seconds a board has to answer its first PING. A board that answers returns at once (typically in
#: well under a second), so this bound only fires on a board that never will; it is generous because
#: on a busy host (other emulators, a parallel test suite) booting takes many times its idle figure.
DEFAULT_READY_TIMEOUT = 120.0
#: How a board's UART reaches the host: a TCP socket (``socket://127.0.0.1:PORT``) or a pty (a tty path).
Link = Literal["socket", "pty"]
LINKS: tuple[str, ...] = ("socket", "pty")


class EmulatorError(TinyfedError):
    """An emulator is missing, does not start, or its firmware does not answer."""


_LIVE: set[EmulatedBoard] = set()
_LIVE_LOCK = threading.Lock()


def _stop_all_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for b in live:
        b.stop()


atexit.register(_stop_all_live)


@dataclass(eq=False)
class EmulatedBoard:
    """One running emulator whose UART is served on ``url``: ``socket://127.0.0.1:PORT``, or on a pty
    the tty path (``tty`` is then its :class:`PtyLink`, ``port`` 0)."""

    board: str
    name: str
    url: str
    port: int
    process: subprocess.Popen
    command: list[str]
    log_path: Path
    ready_s: float | None = None
    #: The identity the board was provisioned with (public; None: a keyless board).
    device_id: bytes | None = None
    #: The pty the UART is relayed to (None: on a TCP socket); it outlives this QEMU unless owned.
    tty: PtyLink | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)
    _provisioned: Provisioned | None = field(default=None, repr=False)
    _owns_tty: bool = field(default=False, repr=False)
    _uart: socket.socket | None = field(default=None, repr=False)  # the relay's end of this QEMU's UART

    @classmethod
    def track(cls, board: str, name: str | None, port: int, process: subprocess.Popen, command: list[str],
              log_path: str, provisioned: Provisioned | None = None, tty: PtyLink | None = None) -> EmulatedBoard:
        """A just-started emulator serving its UART on ``127.0.0.1:port`` (or on ``tty``), registered
        to be stopped at exit."""
        url = tty.tty if tty is not None else f"socket://127.0.0.1:{port}"
        emu = cls(board, name or (f"{board}@{tty.name}" if tty is not None else f"{board}@{port}"), url, port,
                  process, command, Path(log_path), device_id=provisioned.device.device_id if provisioned else None,
                  tty=tty, _provisioned=provisioned)
        with _LIVE_LOCK:
            _LIVE.add(emu)
        return emu

    @property
    def running(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def output(self, limit: int = 2000) -> str:
        """The emulator's own stdout/stderr (the last ``limit`` characters)."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the emulator's whole process group: SIGTERM, then SIGKILL if it lingers."""
        if self._stopped:
            return
        self._stopped = True
        with _LIVE_LOCK:
            _LIVE.discard(self)
        proc = self.process
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            proc.wait()
        log.debug("%s: stopped (exit %s)", self.name, proc.returncode)
        if self.tty is not None:  # unplugged: the tty stays for the next board, unless this board made it
            if self._owns_tty:
                self.tty.close()
            else:
                self.tty.detach(self._uart)
        try:
            self.log_path.unlink()
        except OSError:
            pass
        if self._provisioned is not None:
            self._provisioned.retire()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"board": self.board, "name": self.name, "url": self.url, "pid": self.process.pid,
                                "ready_s": self.ready_s, "device_id": self.device_id.hex() if self.device_id else None}
        if self.tty is not None:
            d.update(link="pty", pty=self.tty.path, pace=self.tty.pace)
        return d


@dataclass(eq=False)
class Provisioned:
    """One launch's identity: recorded in ``store``, written into the keyed ELF copy ``image``."""

    device: DeviceKey
    store: KeyStore
    image: Path

    def retire(self) -> None:
        """The board is gone: delete its keyed image and forget its key."""
        shutil.rmtree(self.image.parent, ignore_errors=True)
        try:
            self.store.remove(self.device.device_id)
        except TinyfedError as exc:  # a damaged store must not stop a shutdown
            log.warning("key store %s: could not forget device %s: %s", self.store.path, self.device.id_hex, exc)


def provision_image(elf: Path | str, name: str, key_store: KeyStore | None = None) -> Provisioned | None:
    """A fresh identity named ``name`` recorded in the key store, and a keyed copy of ``elf`` (in a
    private temporary directory) holding it with a fresh RNG seed: what an emulator boots. None for
    an ELF without a key page (firmware older than protocol v2, or not tinyfed's): it boots as is."""
    from tinyfed.firmware_bridge.emulate.keyimage import KeyImageError, key_section, keyed_image

    try:
        key_section(elf)
    except KeyImageError as exc:
        log.warning("%s: booting without a device key: %s", name, exc.problem)
        return None
    store = key_store if key_store is not None else KeyStore()
    workdir = Path(tempfile.mkdtemp(prefix="tinyfed-key-"))  # mode 0700
    device = store.provision(name)
    try:
        image = keyed_image(elf, key_page(device, os.urandom(SEED_BYTES)), workdir / Path(elf).name)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        store.remove(device.device_id)
        raise
    return Provisioned(device, store, image)


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # looked up here, so the child does no dynamic loading between fork and exec


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the emulator dies with its parent


def _resolve_board(board: Board | str) -> Board:
    if isinstance(board, str):
        from tinyfed.boards import get_board

        return get_board(board)
    return board


def qemu_command(board: Board, elf_path: Path | str, fd: int, qemu: str = QEMU,
                 extra_args: tuple[str, ...] | list[str] = (), *, listening: bool = True) -> list[str]:
    """The QEMU command line for ``board`` with its serial port on the listening socket ``fd``
    (``listening=False``: on the already connected socket ``fd``, one end of a pty relay's socketpair).

    ``extra_args`` go before ``-kernel`` (e.g. ``("-icount", "shift=4")`` for deterministic timing).
    """
    emu = board.emulator
    if emu is None or emu.qemu_machine is None:
        runs = " (it has a Renode platform: use renode)" if emu is not None and emu.renode_platform else ""
        raise BoardError(f"board {board.name} has no QEMU machine{runs}",
                         fix="pick a board with emulator.qemu_machine (`tinyfed boards list`: mps2-an386, mps3-an547)",
                         source=board.name)
    cmd = [qemu, "-M", emu.qemu_machine]
    if emu.qemu_cpu:
        cmd += ["-cpu", emu.qemu_cpu]
    chardev = f"socket,id=s0,fd={fd},server=on,wait=off,nodelay=on" if listening else f"socket,id=s0,fd={fd}"
    cmd += ["-nographic", "-monitor", "none", "-chardev", chardev,
            "-serial", "chardev:s0", *extra_args, "-kernel", str(elf_path)]
    return cmd


def firmware_elf(elf_path: Path | str, board: str) -> Path:
    """``elf_path`` as a Path, or an EmulatorError saying how to build the firmware if it is not there."""
    elf = Path(elf_path)
    if not elf.is_file():
        raise EmulatorError("firmware ELF not found", fix=f"build it: `tinyfed firmware build --board {board}`",
                            source=str(elf))
    with open(elf, "rb") as f:
        head = f.read(20)
    # e_ident: magic, class 1 (32-bit), data 1 (little-endian); e_machine 40 is EM_ARM
    if head[:4] != b"\x7fELF" or head[4] != 1 or head[5] != 1 or int.from_bytes(head[18:20], "little") != 40:
        raise EmulatorError("not a 32-bit ARM ELF: QEMU cannot run it on a Cortex-M board",
                            fix=f"give the ELF `tinyfed firmware build --board {board}` prints", source=str(elf))
    return elf


def qemu_failure(output: str) -> str:
    """The line of QEMU's output that says why it stopped (a crash prints a register dump after it)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return "no output"
    first = next((line for line in lines if line.lower().startswith("qemu")), lines[0])
    more = len(lines) - 1
    return first + (f" ({more} more line(s) in the QEMU log)" if more else "")


def start_qemu(board: Board | str, elf_path: Path | str, *, name: str | None = None, qemu: str = QEMU,
               extra_args: tuple[str, ...] | list[str] = (), port: int = 0, key_store: KeyStore | None = None,
               keyed: bool = True, tty: PtyLink | None = None) -> EmulatedBoard:
    """Start QEMU for ``board`` running ``elf_path``; do not wait for the firmware (see :func:`wait_ready`).

    ``port`` 0 takes a free port; a given port brings a board back at the URL it had (a restart
    after a crash, as a re-plugged real board keeps its tty). ``tty``: serve the UART on that pty
    instead of a port (the board's URL is its tty path; a board started on the tty of a stopped one
    comes back at that path). The board is provisioned with a fresh key recorded in ``key_store``
    (default: ``$TINYFED_KEY_STORE``); ``keyed=False`` boots the ELF as built, a board without a key."""
    b = _resolve_board(board)
    exe = shutil.which(qemu)
    if exe is None:
        raise EmulatorError(f"{qemu} is not installed", fix="run `make setup` (or `apt-get install qemu-system-arm`)")
    elf = firmware_elf(elf_path, b.name)
    provisioned = provision_image(elf, name or f"qemu {b.name}", key_store) if keyed else None
    try:
        if tty is not None:
            return _start_qemu_on_pty(b, provisioned.image if provisioned else elf, name, exe, extra_args, tty,
                                      provisioned)
        return _start_qemu(b, provisioned.image if provisioned else elf, name, exe, extra_args, port, provisioned)
    except BaseException:
        if provisioned is not None:
            provisioned.retire()
        raise


def _start_qemu(b: Board, elf: Path, name: str | None, exe: str, extra_args: tuple[str, ...] | list[str], port: int,
                provisioned: Provisioned | None) -> EmulatedBoard:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        port = sock.getsockname()[1]
        fd = sock.fileno()
        cmd = qemu_command(b, elf, fd, exe, extra_args)
        proc, log_name = _spawn(cmd, fd, b.name)
    finally:
        sock.close()  # QEMU holds its own copy of the listening socket
    emu = EmulatedBoard.track(b.name, name, port, proc, cmd, log_name, provisioned)
    log.info("%s: started qemu pid %d on %s (device %s)", emu.name, proc.pid, emu.url,
             provisioned.device.id_hex if provisioned else "without a key")
    return emu


def _spawn(cmd: list[str], fd: int, board: str) -> tuple[subprocess.Popen, str]:
    """Start QEMU in its own process group (dying with its parent) with ``fd`` inherited; its output to a log."""
    log_fd, log_name = tempfile.mkstemp(prefix=f"tinyfed-qemu-{board}-", suffix=".log")
    try:
        proc = subprocess.Popen(cmd, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log_fd,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 - calls one libc function
    finally:
        os.close(log_fd)
    return proc, log_name


def _start_qemu_on_pty(b: Board, elf: Path, name: str | None, exe: str, extra_args: tuple[str, ...] | list[str],
                       tty: PtyLink, provisioned: Provisioned | None) -> EmulatedBoard:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        cmd = qemu_command(b, elf, theirs.fileno(), exe, extra_args, listening=False)
        proc, log_name = _spawn(cmd, theirs.fileno(), b.name)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # QEMU holds its own copy
    tty.attach(ours)
    emu = EmulatedBoard.track(b.name, name, 0, proc, cmd, log_name, provisioned, tty=tty)
    emu._uart = ours
    log.info("%s: started qemu pid %d on %s (pty %s, device %s)", emu.name, proc.pid, emu.url, tty.path,
             provisioned.device.id_hex if provisioned else "without a key")
    return emu


def wait_ready(emu: EmulatedBoard, timeout: float = DEFAULT_READY_TIMEOUT, *, ping_timeout: float = 0.2) -> float:
    """Wait until the emulated board answers a PING; return the seconds it took.

    Raises :class:`EmulatorError` (after stopping the emulator) if QEMU exits or the deadline passes.
    """
    from tinyfed.firmware_bridge.link.client import BoardClient
    from tinyfed.firmware_bridge.link.errors import DeviceUnreachable, LinkError
    from tinyfed.firmware_bridge.link.transport import serial_settings

    start = time.monotonic()
    deadline = start + timeout
    client = None
    last: Exception | None = None
    try:
        while time.monotonic() < deadline:
            if emu.process.poll() is not None:
                out = emu.output().strip()
                emu.stop()
                raise EmulatorError(f"qemu exited with code {emu.process.returncode}: {qemu_failure(out)}",
                                    fix=f"check the ELF was built for {emu.board} (`tinyfed firmware build "
                                        f"--board {emu.board}`)", source=emu.name)
            try:
                if client is None:
                    client = BoardClient(emu.url, timeout=ping_timeout, retries=0, name=emu.name,
                                         serial=serial_settings(emu.board)).open()
                client.ping(b"ready?")
                emu.ready_s = time.monotonic() - start
                return emu.ready_s
            except LinkError as exc:  # not answering yet: PING again on the same connection
                last = exc
                if isinstance(exc, DeviceUnreachable) and client is not None:  # the connection broke: reconnect
                    client.close()
                    client = None
    finally:
        if client is not None:
            client.close()
    emu.stop()
    raise EmulatorError(f"the firmware did not answer a PING within {timeout:.0f} s ({last})",
                        fix="check the ELF is the tinyfed firmware for this board (`tinyfed firmware build`)",
                        source=emu.name)


def launch_qemu(board: Board | str, elf_path: Path | str, *, name: str | None = None,
                ready_timeout: float = DEFAULT_READY_TIMEOUT, qemu: str = QEMU,
                extra_args: tuple[str, ...] | list[str] = (), key_store: KeyStore | None = None,
                keyed: bool = True, link: Link = "socket", pace: int | None = None,
                tty_path: Path | str | None = None) -> EmulatedBoard:
    """Start QEMU and wait until its firmware answers a PING (``extra_args``: see :func:`qemu_command`).

    ``link="pty"``: the board's UART on a pseudo-terminal of its own (``url`` is the tty path, or the
    symlink ``tty_path``), paced at ``pace`` baud if given; the pty closes when the board stops.

        with launch_qemu("mps2-an386", elf, link="pty", pace=115200) as emu:
            BoardClient(emu.url)   # /dev/pts/N, opened by pyserial's POSIX Serial
    """
    tty = _own_pty(link, pace, tty_path, name or "qemu")
    try:
        emu = start_qemu(board, elf_path, name=name, qemu=qemu, extra_args=extra_args, key_store=key_store,
                         keyed=keyed, tty=tty)
    except BaseException:
        if tty is not None:
            tty.close()
        raise
    emu._owns_tty = tty is not None
    return ready_or_stopped(emu, ready_timeout)


def check_link(link: str, pace: int | None = None, tty_path: Path | str | None = None) -> None:
    """Refuse an unknown link, and pacing or tty paths on a socket link, before anything starts."""
    if link not in LINKS:
        raise BoardError(f"unknown link {link!r}", fix="use link='socket' or link='pty'")
    if link == "socket" and (pace is not None or tty_path is not None):
        raise BoardError("pacing and tty paths need a pty link", fix="pass link='pty' (`--link pty`)")
    if pace is not None:
        from tinyfed.firmware_bridge.emulate.pty import check_pace

        check_pace(pace)


def _own_pty(link: str, pace: int | None, tty_path: Path | str | None, name: str) -> PtyLink | None:
    """A new pty for ``link="pty"``; None for ``"socket"``."""
    check_link(link, pace, tty_path)
    if link == "socket":
        return None
    from tinyfed.firmware_bridge.emulate.pty import PtyLink

    return PtyLink(name, pace=pace, link=tty_path)


def ready_or_stopped(emu: EmulatedBoard, ready_timeout: float) -> EmulatedBoard:
    """``emu`` once its firmware answers a PING (:func:`wait_ready`); stopped if it does not, or on interrupt."""
    try:
        wait_ready(emu, ready_timeout)
    except BaseException:
        emu.stop()
        raise
    return emu


#: Alias: a board in QEMU.
QemuBoard = EmulatedBoard


class EmulatorFleet:
    """``count`` QEMU boards of one kind, booted together and stopped together.

        with EmulatorFleet("mps2-an386", 4, elf) as fleet:
            fleet.urls  # ["socket://127.0.0.1:40111", ...]
        with EmulatorFleet("mps2-an386", 2, elf, link="pty", tty_dir=Path("build/ttys")) as fleet:
            fleet.urls  # ["build/ttys/board0", "build/ttys/board1"]: symlinks to the fleet's ptys
    """

    def __init__(self, board: Board | str, count: int, elf: Path | str | None = None, *,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT, qemu: str = QEMU,
                 on_ready: Callable[[EmulatedBoard, float], None] | None = None,
                 key_store: KeyStore | None = None, link: Link = "socket", pace: int | None = None,
                 tty_dir: Path | str | None = None) -> None:
        """``on_ready`` hears each board as it answers, with the seconds since the boot began; each
        board gets its own key, recorded in ``key_store`` (default: ``$TINYFED_KEY_STORE``).

        ``link="pty"``: each board on a pty the fleet owns (symlinked as ``tty_dir/board{i}`` when
        ``tty_dir`` is given), paced at ``pace`` baud if given; :meth:`relaunch` brings a board back
        on the same tty."""
        if count < 1:
            raise BoardError(f"need at least one board, got {count}", fix="use --count 1 or more")
        check_link(link, pace, tty_dir)
        self.link = link
        self.pace = pace
        self.tty_dir = Path(tty_dir) if tty_dir is not None else None
        self.ttys: list[PtyLink] = []
        self.board = _resolve_board(board)
        self.count = count
        self.elf = elf
        self.ready_timeout = ready_timeout
        self.qemu = qemu
        self.on_ready = on_ready
        self.key_store = key_store
        self.boards: list[EmulatedBoard] = []

    @property
    def urls(self) -> list[str]:
        return [b.url for b in self.boards]

    def start(self) -> Self:
        elf = self.elf
        if elf is None:
            from tinyfed.firmware_bridge.emulate.build import build_firmware

            elf = build_firmware(self.board.name).elf
        self.elf = elf
        try:
            booted = time.monotonic()
            for i in range(self.count):  # boot all at once, then wait for each
                tty = None
                if self.link == "pty":
                    tty = _own_pty("pty", self.pace, self.tty_dir / f"board{i}" if self.tty_dir else None,
                                   f"{self.board.name}#{i}")
                    assert tty is not None
                    self.ttys.append(tty)
                self.boards.append(start_qemu(self.board, elf, name=f"{self.board.name}#{i}", qemu=self.qemu,
                                              key_store=self.key_store, tty=tty))
            for b in self.boards:
                wait_ready(b, self.ready_timeout)
                if self.on_ready is not None:
                    self.on_ready(b, time.monotonic() - booted)
        except BaseException:
            self.stop()
            raise
        return self

    def relaunch(self, i: int) -> EmulatedBoard:
        """Start board ``i`` again (after it was killed or stopped) at the URL it had: the same tty, or the
        same port; it gets a fresh key. Does not wait for it (:func:`wait_ready`)."""
        old = self.boards[i]
        old.stop()
        assert self.elf is not None, "start the fleet first"
        tty = self.ttys[i] if self.ttys else None
        self.boards[i] = start_qemu(self.board, self.elf, name=old.name, qemu=self.qemu, key_store=self.key_store,
                                    tty=tty, port=0 if tty is not None else old.port)
        return self.boards[i]

    def stop(self) -> None:
        for b in self.boards:
            b.stop()
        for tty in self.ttys:
            tty.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
