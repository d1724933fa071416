"""What one test run shares between its tests and its xdist workers: a directory that starts empty on
every run, and the firmware builds in it.

Each worker has its own ``tmp_path_factory`` base directory; under xdist they sit in one directory of the
run, which is the shared one. Only content that the run's own sources and arguments fix goes here, so a
test reading it gets what building it again would give.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tinyfed.firmware_bridge.emulate.build import BuildResult


def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's shared directory (the workers' common parent under xdist, else the base directory)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if "PYTEST_XDIST_WORKER" in os.environ else root


def run_firmware(tmp_path_factory: pytest.TempPathFactory, board: str, *, arena_kib: int | None = None) -> BuildResult:
    """``build_firmware(board)`` from this checkout's sources, built once per run and sizes.

    A build takes ~7 s of CPU (and a minute on a busy 2-core host); a dozen tests booted their own copy
    of the same image. The first caller builds into the run's directory (``build_firmware`` locks it);
    later callers' ``make`` finds every target up to date and returns the same ELF and figures. A test
    about building itself calls ``build_firmware`` with its own directory.
    """
    from tinyfed.firmware_bridge.emulate.build import build_firmware

    name = board if arena_kib is None else f"{board}-arena{arena_kib}k"
    return build_firmware(board, run_dir(tmp_path_factory) / "firmware" / name, arena_kib=arena_kib)
