"""Shared pytest fixtures. Tests are hermetic: no user board paths, no real home directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Clear ``$TINYFED_BOARDS_PATH`` and point ``$HOME`` at an empty temporary directory."""
    monkeypatch.delenv("TINYFED_BOARDS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
