"""No device key leaves the key store (issue 18): a ``tinyfed run`` on keyed ``sim://`` boards, its
``-vv`` logs, its JSON summary, every file it writes (events, checkpoints, history, charts, the
export), the dashboard's pages and JSON over that run, ``runs show`` and ``keys list``: none holds
any key of the store, as hex, raw bytes or base64."""

from __future__ import annotations

import base64
import json
import logging
import stat
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tinyfed.cli import cli
from tinyfed.firmware_bridge.link.keys import KeyStore


def _tinyfed(*args: str) -> Any:
    """The command in this process (its stdout and stderr apart); its log records go to ``caplog``."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _spellings(key: bytes) -> list[bytes]:
    """Every way a key could be written out: raw, hex either case, base64 (standard, URL-safe, unpadded)."""
    b64 = base64.b64encode(key)
    return [key, key.hex().encode(), key.hex().upper().encode(), b64, b64.rstrip(b"="),
            base64.urlsafe_b64encode(key).rstrip(b"="), repr(key).encode()]


@pytest.fixture
def _fresh_sim_boards() -> Any:
    """The run's sim:// boards are keyed into this test's store: no other test may meet them."""
    from tinyfed.firmware_bridge.twin.sim import forget_sim_boards

    forget_sim_boards()
    yield
    forget_sim_boards()


@pytest.mark.slow
@pytest.mark.usefixtures("_fresh_sim_boards")
def test_no_key_appears_in_anything_a_run_writes_or_prints(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # what -vv logs, every record of every logger
    store_path = tmp_path / "private" / "keys.json"
    out = tmp_path / "run"
    run = _tinyfed("-vv", "--key-store", str(store_path), "run", "--simulate", "2", "--model", "digits_cnn",
                   "--max-versions", "2", "--max-windows", "16", "--target-accuracy", "1", "--out", str(out), "--json")
    assert run.exit_code in (0, 1), run.output[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["versions"] == 2 and summary["updates_accepted"] >= 2 and summary["rejection_reasons"] == {}
    assert any(r.levelno == logging.DEBUG and r.name.startswith("tinyfed") for r in caplog.records)

    store = KeyStore(store_path)
    devices = store.devices()
    assert len(devices) == 2, "the run's sim:// boards were provisioned into the --key-store store"
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    assert all(any(s in store_path.read_bytes() for s in _spellings(d.key)) for d in devices)  # the search finds them

    printed = [run.stdout_bytes, run.stderr_bytes]
    for args in (("runs", "show", str(out), "--json"), ("keys", "list"), ("keys", "list", "--json")):
        proc = _tinyfed("-vv", "--key-store", str(store_path), *args)
        assert proc.exit_code == 0, proc.output
        printed += [proc.stdout_bytes, proc.stderr_bytes]
    assert all(d.id_hex.encode() in printed[-2] for d in devices)  # `keys list --json` names every board
    printed += [r.getMessage().encode() + repr(r.args).encode() for r in caplog.records]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from tinyfed.web.app import create_app

    client = TestClient(create_app([out]))
    for path in ("/", "/api/runs", "/api/runs/0/snapshot", "/api/runs/0/boards"):
        page = client.get(path)
        assert page.status_code == 200, path
        printed.append(page.content)

    written = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any(p.name.startswith("checkpoint") for p in written) and out / "events.jsonl" in written
    assert any("export" in p.parts for p in written)
    for d in devices:
        for spelling in _spellings(d.key):
            assert not any(spelling in text for text in printed), f"a key was printed ({spelling[:8]!r}...)"
            leaked = [str(p) for p, data in written.items() if spelling in data]
            assert not leaked, f"a key is in {leaked}"
