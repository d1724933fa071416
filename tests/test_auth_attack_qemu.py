"""The attacker of issue 18, on two emulated boards (QEMU mps2-an386, keyed at launch).

After a ``tinyfed run --fleet`` on the two boards, a separate program opens a board's link (as any
program on the same machine can) and does what the issue's attacker did under protocol v1: read
the board's last update, run EVALUATE on its private data, load its own weights, train them on the
board's data and read that update back, and replace the board's local data. It builds each request
exactly as the host's client does, but holds no key: it sends them bare (v1 style), then with tags
under a session key of its own guessing. Every attempt is refused with ``ST_AUTH``; afterwards the
host's own EVALUATE on each board gives what it gave before the attack (the weights and the data are
the run's), and the host trains on each board again and reads an update whose tag binds its device
and version.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinyfed.firmware_bridge.emulate.emulator import EmulatorFleet
from tinyfed.firmware_bridge.link.client import BoardClient, HelloInfo, _Refused
from tinyfed.firmware_bridge.link.devices import write_device_fleet
from tinyfed.firmware_bridge.link.errors import DeviceError
from tinyfed.firmware_bridge.link.framing import NONCE_BYTES, PROTOCOL_VERSION, AuthDetail, Command, SessionMac
from tinyfed.firmware_bridge.link.train_link import TrainParams
from tinyfed.host.events import read_events

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                                 reason="needs qemu-system-arm and gcc-arm-none-eabi (make test installs both)")]

BOARD = "mps2-an386"
#: Bound on one `tinyfed run` (a hang bound: the run takes tens of seconds on a busy host).
RUN_TIMEOUT_S = 900


class _Attacker(BoardClient):
    """The host's client without a key: its requests go out bare, or (``forged``) tagged under a
    session key the attacker made up. HELLO needs no key, so it is said as the host says it."""

    forged: bytes | None = None

    def hello(self) -> HelloInfo:
        p = self._exchange(Command.HELLO, bytes([PROTOCOL_VERSION]) + os.urandom(NONCE_BYTES), None, None, None)
        self.info = HelloInfo.parse(p)
        return self.info

    def request(self, code: int, payload: bytes = b"", *, timeout: float | None = None,
                total: float | None = None) -> bytes:
        auth = None if self.forged is None else (SessionMac(self.forged), 1 + self.stats.requests)
        return self._exchange(code, payload, auth, timeout, total)


def _tinyfed_run(fleet: Path, out: Path) -> dict[str, Any]:
    """One `tinyfed run --fleet` (a subprocess, as a user runs it); its JSON summary."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", "run", "--fleet", str(fleet), "--model", "digits_cnn",
                           "--max-versions", "2", "--max-windows", "8", "--target-accuracy", "1",
                           "--out", str(out), "--json"], cwd=out.parent, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary


def _host_evaluate(url: str) -> tuple[float, float, int] | str:
    """The host's own EVALUATE (with the board's key, from the store): the board's weights on its data,
    or the status it answers (NO_MODEL: the run stopped before this board's provisioning ended)."""
    with BoardClient(url, name="host", timeout=2.0) as host:
        host.hello()
        try:
            report = host.evaluate()
        except DeviceError as exc:
            return exc.status_name
    return report.loss, report.accuracy, report.n


def _attempts(attacker: _Attacker, values: int, version: int, *, first_two: bool = False) -> dict[str, int]:
    """What the issue's attacker did, each attempt's ST_AUTH detail (a success fails the test);
    ``first_two``: only the reads that say no HELLO first."""
    own = np.random.default_rng(7).normal(0, 0.1, values).astype(np.float32)
    steps = {
        "read the last update": lambda: attacker.read_update(),
        "run EVALUATE": lambda: attacker.evaluate(),
        "load its own weights": lambda: attacker.set_weights(version + 1, own),
        "train them": lambda: attacker.train(TrainParams(version=version + 1, epochs=1, batch_size=8), timeout=30),
        "read that update": lambda: attacker.read_update(),
        "replace the local data": lambda: attacker.load_data(os.urandom(2048)),
        "write an input tensor": lambda: attacker.request(Command.INPUT_WRITE, struct.pack("<I", 0) + bytes(64)),
    }
    refused = {}
    for what, step in list(steps.items())[:2] if first_two else steps.items():
        with pytest.raises(_Refused) as caught:
            step()
        refused[what] = caught.value.detail
    return refused


def test_a_program_on_the_link_reads_and_changes_nothing_after_a_run(tmp_path: Path) -> None:
    with EmulatorFleet(BOARD, 2) as fleet:
        assert all(b.device_id is not None for b in fleet.boards)  # keyed at launch, into the test's key store
        fleet_file = write_device_fleet(tmp_path / "fleet.toml", "attacked", [(BOARD, fleet.urls)])
        first = _tinyfed_run(fleet_file, tmp_path / "run1")
        assert first["updates_accepted"] >= 2 and first["rejection_reasons"] == {}
        values = next(e for e in read_events(tmp_path / "run1") if e["kind"] == "run_start")["vector"]
        before = [_host_evaluate(url) for url in fleet.urls]
        trained = [url for url, seen in zip(fleet.urls, before, strict=True) if isinstance(seen, tuple)]
        assert trained, before  # the run's updates came from a board that holds its weights and data

        for url in fleet.urls:
            with _Attacker(url, name="attacker", timeout=1.0, retries=0) as attacker:
                # the host's session is still open on the board: bare requests fail its MAC check
                bare_in_host_session = _attempts(attacker, values, first["versions"], first_two=True)
                info = attacker.hello()  # anyone may say HELLO: the board now holds a session nobody can use
                assert info.keyed and info.device_id == next(b.device_id for b in fleet.boards if b.url == url)
                bare = _attempts(attacker, values, first["versions"])
                attacker.forged = os.urandom(32)
                forged = _attempts(attacker, values, first["versions"])
            short_or_bad = {AuthDetail.TOO_SHORT, AuthDetail.BAD_MAC}
            assert set(bare_in_host_session.values()) <= short_or_bad, bare_in_host_session
            assert set(bare.values()) <= short_or_bad, bare
            assert set(forged.values()) == {AuthDetail.BAD_MAC}, forged

        assert [_host_evaluate(url) for url in fleet.urls] == before  # same weights, same data
        for url in trained:  # and the host trains on it as before: an update bound to its device and version
            with BoardClient(url, name="host", timeout=2.0) as host:
                host.hello()
                host.set_weights(first["versions"] + 1, np.random.default_rng(3).normal(0, 0.05, values))
                report = host.train(TrainParams(version=first["versions"] + 1, epochs=1, batch_size=8))
                update = host.read_update(report.update_bytes, values=values)  # its tag is checked here
                assert update.version == first["versions"] + 1 and update.n > 0
