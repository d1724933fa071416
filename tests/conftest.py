"""Shared pytest fixtures. Tests are hermetic: no user board paths, no real home directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# One BLAS thread in the test processes and every run they start (set before numpy loads OpenBLAS;
# children inherit it). The suite's matrices are small (the twin's batch-1 convolutions, the float
# tails): on 2 cores OpenBLAS's second thread only spins, 6x the CPU of one thread for a sim:// board's
# inference (tinyfed/host/blas.py limits it the same way inside an engine run, but not around it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _hermetic_session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``_hermetic_env`` for session and module fixtures, which are set up before any per-test fixture:
    nothing they cache (``~/.cache/tinyfed``) lands in, or is shared through, the real home directory;
    a run's workers share only its content-keyed cache (:func:`_run_cache_dir`) and what a test gives them.
    The device key store (``$TINYFED_KEY_STORE``) is a temporary file of this session too."""
    mp = pytest.MonkeyPatch()
    mp.delenv("TINYFED_BOARDS_PATH", raising=False)
    mp.setenv("HOME", str(tmp_path_factory.mktemp("session-home")))
    if "TINYFED_CACHE_DIR" not in os.environ:
        mp.setenv("TINYFED_CACHE_DIR", str(_run_cache_dir(tmp_path_factory)))
    # One key store per test session (per xdist worker): every board a test launches or creates
    # (QEMU, sim://) records its key here, never in the user's store, and subprocesses inherit it.
    mp.setenv("TINYFED_KEY_STORE", str(tmp_path_factory.mktemp("keys") / "keys.json"))
    yield
    mp.undo()


def _run_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``$TINYFED_CACHE_DIR`` for the whole run, shared by its xdist workers and the CLI runs they start.

    It holds only content-keyed files (the int8 zoo models, keyed by their weights and the TensorFlow
    version; the windowed HAPT arrays, keyed by their source and parameters), written atomically, so a
    hit is what a conversion would give. Without it every CLI run (a fresh ``$HOME``) imported TensorFlow
    and converted har_cnn again. It starts empty on every run; tests of the caches set their own."""
    from _run_shared import run_dir

    path = run_dir(tmp_path_factory) / "tinyfed-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Clear ``$TINYFED_BOARDS_PATH`` and point ``$HOME`` at an empty temporary directory."""
    monkeypatch.delenv("TINYFED_BOARDS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def har_training_case(tmp_path_factory: pytest.TempPathFactory):
    """har_cnn planned for an nRF52840, compiled for the board, with 8 users' local data."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _training_case import build_training_case

    return build_training_case(tmp_path_factory.mktemp("train_plan"))


#: The slowest test files, slowest first (see ``pytest --durations``). Under pytest-xdist
#: (``make test``: ``--dist loadfile --no-loadscope-reorder``) a file is one unit of work and the
#: units are handed out in collection order, so these start first and no worker is left alone with
#: a long file at the end. Only the order changes; a file not named here runs after them.
SLOWEST_FILES_FIRST = (  # measured on a busy 2-core host: 860 s down to 140 s per file, the rest below 90 s
    "test_field_models.py",  # look-alikes built once per worker, QEMU and federated runs
    "test_strategies_qemu.py",
    "test_fleet_qemu.py",
    "test_zoo.py",
    "test_train_qemu.py",
    "test_cli_plan.py",
    "test_cli_run.py",
    "test_engine_faults.py",
    "test_engine.py",
    "test_kernels_mve.py",  # ~150 s: one Cortex-M55 board, 21 models' inputs through its UART
    "test_demo.py",
    "test_plan.py",
    "test_requant_random.py",  # ~100 s busy with the slow share: 15,000 random quantizations
    "test_web_browser.py",  # ~50 s: headless Chromium on live sim:// runs and a 10,000-board page
    "test_hostile_boards.py",  # ~45 s: fake boards beside sim:// boards, a har_cnn plan, RSS runs
    "test_auth_attack_qemu.py",  # ~40 s: two keyed QEMU boards, a run, the attacker, the host again
    "test_bad_input.py",  # ~30 s: runs and studies that must fail before their work
    "test_fuzz_cli.py",  # ~30 s: 1,031 bad inputs, each milliseconds once the base lines have run
    "test_rundir.py",  # ~25 s: two runs on one --out, ENOSPC and resume
    "test_key_secrecy.py",  # ~15 s: a -vv run on sim:// boards, every file and line searched for keys
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers, put the slowest files first (every worker sorts alike, as xdist requires)."""
    import os

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
