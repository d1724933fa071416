"""Shared pytest fixtures. Tests are hermetic: no user board paths, no real home directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Clear ``$TINYFED_BOARDS_PATH`` and point ``$HOME`` at an empty temporary directory."""
    monkeypatch.delenv("TINYFED_BOARDS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def har_training_case(tmp_path_factory: pytest.TempPathFactory):
    """har_cnn planned for an nRF52840, compiled for the board, with 8 users' local data."""
    import os
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _training_case import build_training_case

    mp = pytest.MonkeyPatch()
    if "TINYFED_CACHE_DIR" not in os.environ:
        mp.setenv("TINYFED_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    try:
        yield build_training_case(tmp_path_factory.mktemp("train_plan"))
    finally:
        mp.undo()
