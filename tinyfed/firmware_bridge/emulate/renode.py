"""Boards in Renode, reached over ``socket://`` (used when ``renode`` is on PATH).

:func:`write_resc` writes a Renode script: one machine with the board profile's
``emulator.renode_platform``, the firmware ELF, and the board's UART on a server socket terminal
(``emulation CreateServerSocketTerminal PORT "term" false``). :func:`launch_renode` picks a free
port, starts ``renode --disable-xwt --console -e "include @script"`` in its own process group, and
waits for the first answered PING, like :func:`tinyfed.firmware_bridge.emulate.emulator.wait_ready`.

Renode (unlike QEMU) cannot be handed an already listening fd, so the port is chosen by binding
``127.0.0.1:0`` and releasing it just before Renode starts; a lost race shows up as a clear
readiness error, never as a hang.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tinyfed.errors import BoardError
from tinyfed.firmware_bridge.emulate.emulator import (
    DEFAULT_READY_TIMEOUT,
    EmulatedBoard,
    EmulatorError,
    _die_with_parent,
    _resolve_board,
    firmware_elf,
    provision_image,
    ready_or_stopped,
)
from tinyfed.firmware_bridge.link.keys import KeyStore

if TYPE_CHECKING:
    from tinyfed.boards import Board

RENODE = "renode"


def renode_available(exe: str = RENODE) -> bool:
    return shutil.which(exe) is not None


def write_resc(board: Board, elf_path: Path | str, port: int, path: Path | str) -> Path:
    """Write the ``.resc`` script that boots ``elf_path`` on ``board`` with its UART on TCP ``port``."""
    emu = board.emulator
    if emu is None or emu.renode_platform is None:
        raise BoardError(f"board {board.name} has no Renode platform",
                         fix="pick a board with emulator.renode_platform (`tinyfed boards show NAME`)",
                         source=board.name)
    uart = emu.renode_uart
    platform = emu.renode_platform
    platform_ref = f"@{platform}" if not platform.startswith("@") else platform
    script = "\n".join([
        f"# tinyfed: {board.name} running {Path(elf_path).name}, {uart} on 127.0.0.1:{port}",
        f'mach create "{board.name}"',
        f"machine LoadPlatformDescription {platform_ref}",
        f'emulation CreateServerSocketTerminal {port} "term" false',
        f"connector Connect sysbus.{uart} term",
        f"sysbus LoadELF @{Path(elf_path).resolve()}",
        "start",
        "",
    ])
    out = Path(path)
    out.write_text(script, encoding="utf-8")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_renode(board: Board | str, elf_path: Path | str, *, name: str | None = None,
                  ready_timeout: float = DEFAULT_READY_TIMEOUT, exe: str = RENODE, key_store: KeyStore | None = None,
                  keyed: bool = True) -> EmulatedBoard:
    """Start Renode for ``board`` running ``elf_path`` and wait until the firmware answers a PING.

    Like :func:`~tinyfed.firmware_bridge.emulate.emulator.start_qemu`, the board boots a keyed copy
    of the ELF whose identity is recorded in ``key_store`` (``keyed=False``: the ELF as built)."""
    b = _resolve_board(board)
    path = shutil.which(exe)
    if path is None:
        raise EmulatorError("renode is not installed", fix="install Renode (https://renode.io) and put it on PATH")
    elf = firmware_elf(elf_path, b.name)
    provisioned = provision_image(elf, name or f"renode {b.name}", key_store) if keyed else None
    if provisioned is not None:
        elf = provisioned.image
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"tinyfed-renode-{b.name}-"))
    script = write_resc(b, elf, port, workdir / "board.resc")
    cmd = [path, "--disable-xwt", "--console", "--plain", "-e", f"include @{script}"]
    log_fd, log_name = tempfile.mkstemp(prefix=f"tinyfed-renode-{b.name}-", suffix=".log")
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_die_with_parent, cwd=workdir)  # noqa: PLW1509 - calls one libc function
    except BaseException:
        if provisioned is not None:
            provisioned.retire()
        raise
    finally:
        os.close(log_fd)
    return ready_or_stopped(EmulatedBoard.track(b.name, name, port, proc, cmd, log_name, provisioned), ready_timeout)
