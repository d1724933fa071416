"""No device key leaves the key store (issue 18): a ``tinyfed run`` on keyed ``sim://`` boards, its
``-vv`` logs, its JSON summary, every file it writes (events, checkpoints, history, charts, the
export), the dashboard's pages and JSON over that run, ``runs show`` and ``keys list``: none holds
any key of the store, as hex, raw bytes or base64."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tinyfed.firmware_bridge.link.keys import KeyStore


def _tinyfed(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "tinyfed.cli", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=600, check=False)


def _spellings(key: bytes) -> list[bytes]:
    """Every way a key could be written out: raw, hex either case, base64 (standard, URL-safe, unpadded)."""
    b64 = base64.b64encode(key)
    return [key, key.hex().encode(), key.hex().upper().encode(), b64, b64.rstrip(b"="),
            base64.urlsafe_b64encode(key).rstrip(b"="), repr(key).encode()]


@pytest.mark.slow
def test_no_key_appears_in_anything_a_run_writes_or_prints(tmp_path: Path) -> None:
    store_path = tmp_path / "private" / "keys.json"
    out = tmp_path / "run"
    run = _tinyfed("-vv", "--key-store", str(store_path), "run", "--simulate", "2", "--model", "digits_cnn",
                   "--max-versions", "2", "--max-windows", "16", "--target-accuracy", "1", "--out", str(out), "--json",
                   cwd=tmp_path)
    assert run.returncode in (0, 1), run.stderr.decode()[-3000:]
    summary = json.loads(run.stdout.decode().strip().splitlines()[-1])
    assert summary["versions"] == 2 and summary["updates_accepted"] >= 2 and summary["rejection_reasons"] == {}
    assert b"DEBUG" in run.stderr  # the debug logs were on, and are searched below

    store = KeyStore(store_path)
    devices = store.devices()
    assert len(devices) == 2, "the run's sim:// boards were provisioned into the --key-store store"
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    assert all(any(s in store_path.read_bytes() for s in _spellings(d.key)) for d in devices)  # the search finds them

    printed = [run.stdout, run.stderr]
    for args in (("runs", "show", str(out), "--json"), ("keys", "list"), ("keys", "list", "--json")):
        proc = _tinyfed("-vv", "--key-store", str(store_path), *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        printed += [proc.stdout, proc.stderr]
    assert all(d.id_hex.encode() in printed[-2] for d in devices)  # `keys list --json` names every board

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
