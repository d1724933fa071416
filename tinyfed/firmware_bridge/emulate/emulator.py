"""Boards in QEMU, reached over ``socket://``.

:func:`launch_qemu` binds ``127.0.0.1:0`` in Python and hands the listening socket's fd to QEMU
(``-chardev socket,id=s0,fd=N,server=on,wait=off,nodelay=on -serial chardev:s0``), so the port is
known before QEMU starts and no two boards race for one. A board is *ready* when it answers a
PING within the deadline (never a sleep, never a banner).

Every launch provisions the board like a factory would: a fresh device identity is recorded in the
key store (``$TINYFED_KEY_STORE``, or the ``key_store`` given) and QEMU boots a keyed copy of the
ELF (:func:`~tinyfed.firmware_bridge.emulate.keyimage.keyed_image`, with a fresh 8-byte RNG seed);
the copy is deleted and the key forgotten when the board stops. Every QEMU runs in its own process
group and is stopped on :meth:`EmulatedBoard.stop`, on leaving :class:`EmulatorFleet`, on Ctrl-C
and at interpreter exit; on Linux it also dies with its parent (``PR_SET_PDEATHSIG``).
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
from typing import TYPE_CHECKING, Self

from tinyfed.errors import BoardError, TinyfedError
from tinyfed.firmware_bridge.link.keys import SEED_BYTES, DeviceKey, KeyStore, key_page

if TYPE_CHECKING:
    from tinyfed.boards import Board

log = logging.getLogger(__name__)

QEMU = "qemu-system-arm"
#: Seconds a board has to answer its first PING. A board that answers returns at once (typically in
#: well under a second), so this bound only fires on a board that never will; it is generous because
#: on a busy host (other emulators, a parallel test suite) booting takes many times its idle figure.
DEFAULT_READY_TIMEOUT = 120.0


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
    """One running emulator whose UART is served on ``url`` (``socket://127.0.0.1:PORT``)."""

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
    _stopped: bool = field(default=False, repr=False)
    _provisioned: Provisioned | None = field(default=None, repr=False)

    @classmethod
    def track(cls, board: str, name: str | None, port: int, process: subprocess.Popen, command: list[str],
              log_path: str, provisioned: Provisioned | None = None) -> EmulatedBoard:
        """A just-started emulator serving its UART on ``127.0.0.1:port``, registered to be stopped at exit."""
        emu = cls(board, name or f"{board}@{port}", f"socket://127.0.0.1:{port}", port, process, command,
                  Path(log_path), device_id=provisioned.device.device_id if provisioned else None,
                  _provisioned=provisioned)
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
        return {"board": self.board, "name": self.name, "url": self.url, "pid": self.process.pid,
                "ready_s": self.ready_s, "device_id": self.device_id.hex() if self.device_id else None}


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
                 extra_args: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The QEMU command line for ``board`` with its serial port on the listening socket ``fd``.

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
    cmd += ["-nographic", "-monitor", "none",
            "-chardev", f"socket,id=s0,fd={fd},server=on,wait=off,nodelay=on",
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
               keyed: bool = True) -> EmulatedBoard:
    """Start QEMU for ``board`` running ``elf_path``; do not wait for the firmware (see :func:`wait_ready`).

    ``port`` 0 takes a free port; a given port brings a board back at the URL it had (a restart
    after a crash, as a re-plugged real board keeps its tty). The board is provisioned with a fresh
    key recorded in ``key_store`` (default: ``$TINYFED_KEY_STORE``); ``keyed=False`` boots the ELF
    as built, a board without a key."""
    b = _resolve_board(board)
    exe = shutil.which(qemu)
    if exe is None:
        raise EmulatorError(f"{qemu} is not installed", fix="run `make setup` (or `apt-get install qemu-system-arm`)")
    elf = firmware_elf(elf_path, b.name)
    provisioned = provision_image(elf, name or f"qemu {b.name}", key_store) if keyed else None
    try:
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
        log_fd, log_name = tempfile.mkstemp(prefix=f"tinyfed-qemu-{b.name}-", suffix=".log")
        try:
            proc = subprocess.Popen(cmd, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log_fd,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent)  # noqa: PLW1509 - calls one libc function
        finally:
            os.close(log_fd)
    finally:
        sock.close()  # QEMU holds its own copy of the listening socket
    emu = EmulatedBoard.track(b.name, name, port, proc, cmd, log_name, provisioned)
    log.info("%s: started qemu pid %d on %s (device %s)", emu.name, proc.pid, emu.url,
             provisioned.device.id_hex if provisioned else "without a key")
    return emu


def wait_ready(emu: EmulatedBoard, timeout: float = DEFAULT_READY_TIMEOUT, *, ping_timeout: float = 0.2) -> float:
    """Wait until the emulated board answers a PING; return the seconds it took.

    Raises :class:`EmulatorError` (after stopping the emulator) if QEMU exits or the deadline passes.
    """
    from tinyfed.firmware_bridge.link.client import BoardClient
    from tinyfed.firmware_bridge.link.errors import DeviceUnreachable, LinkError

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
                    client = BoardClient(emu.url, timeout=ping_timeout, retries=0, name=emu.name).open()
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
                keyed: bool = True) -> EmulatedBoard:
    """Start QEMU and wait until its firmware answers a PING (``extra_args``: see :func:`qemu_command`)."""
    return ready_or_stopped(start_qemu(board, elf_path, name=name, qemu=qemu, extra_args=extra_args,
                                       key_store=key_store, keyed=keyed), ready_timeout)


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
    """

    def __init__(self, board: Board | str, count: int, elf: Path | str | None = None, *,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT, qemu: str = QEMU,
                 on_ready: Callable[[EmulatedBoard, float], None] | None = None,
                 key_store: KeyStore | None = None) -> None:
        """``on_ready`` hears each board as it answers, with the seconds since the boot began; each
        board gets its own key, recorded in ``key_store`` (default: ``$TINYFED_KEY_STORE``)."""
        if count < 1:
            raise BoardError(f"need at least one board, got {count}", fix="use --count 1 or more")
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
        try:
            booted = time.monotonic()
            for i in range(self.count):  # boot all at once, then wait for each
                self.boards.append(start_qemu(self.board, elf, name=f"{self.board.name}#{i}", qemu=self.qemu,
                                              key_store=self.key_store))
            for b in self.boards:
                wait_ready(b, self.ready_timeout)
                if self.on_ready is not None:
                    self.on_ready(b, time.monotonic() - booted)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for b in self.boards:
            b.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
