"""``tinyfed doctor`` and ``tinyfed --version``: what is found here (CI installs the Arm toolchain and QEMU),
what a PATH without them reports (missing, with the command that installs each and the capability it
blocks), the JSON schema, and the exit status that follows the core alone. No QEMU boots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tinyfed.doctor as doctor_mod
from tinyfed import __version__
from tinyfed.cli import cli
from tinyfed.doctor import CAPABILITIES, INSTALL, STATUSES, TOOLCHAIN_FIX, Host, diagnose
from tinyfed.firmware_bridge.link.framing import PROTOCOL_VERSION


def _doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    result = CliRunner().invoke(cli, ["doctor", "--json", *args], env=env)
    return result.exit_code, json.loads(result.stdout)


def _items(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in report["items"]}


def _capabilities(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["key"]: c for c in report["capabilities"]}


@pytest.fixture(scope="module")
def here() -> tuple[int, Any]:
    """This machine's report, once for the module, from a fresh interpreter that then names the heavy
    modules the check imported (TensorFlow and Ray are found, not imported: either takes seconds)."""
    code = ("import sys\nfrom tinyfed.cli import cli\n"
            "try:\n    cli(['doctor', '--json'], prog_name='tinyfed')\nexcept SystemExit as e:\n    status = e.code\n"
            "heavy = sorted(m for m in ('tensorflow', 'keras', 'ray', 'pyocd') if m in sys.modules)\n"
            "print('HEAVY', heavy, 'EXIT', status, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "HEAVY [] EXIT 0" in done.stderr, done.stderr
    return 0, json.loads(done.stdout)


def test_finds_the_cross_compiler_and_qemu_here(here: tuple[int, Any]) -> None:
    code, report = here
    assert code == 0 and report["core_ok"] is True
    items = _items(report)
    gcc, qemu = items["arm-none-eabi-gcc"], items["qemu-system-arm"]
    assert gcc["status"] == "ok" and gcc["version"] and "newlib in /" in gcc["detail"], gcc
    assert qemu["status"] == "ok" and qemu["version"], qemu
    assert "mps2-an386 (mps2-an386, mps2-an386-large)" in qemu["detail"] and "mps3-an547" in qemu["detail"]
    caps = _capabilities(report)
    assert caps["simulate"]["ok"] and caps["build"]["ok"] and caps["emulate"]["ok"]
    assert report["tinyfed"] == __version__ and report["protocol_version"] == PROTOCOL_VERSION


def test_the_json_schema(here: tuple[int, Any]) -> None:
    _, report = here
    assert set(report) == {"tinyfed", "protocol_version", "core_ok", "seconds", "items", "capabilities"}
    keys = [c.key for c in CAPABILITIES]
    assert [c["key"] for c in report["capabilities"]] == keys
    assert [c["key"] for c in report["capabilities"] if c["core"]] == ["simulate"]
    for item in report["items"]:
        assert set(item) == {"name", "status", "version", "detail", "install", "blocks"}, item
        assert item["status"] in STATUSES and set(item["blocks"]) <= set(keys), item
        # everything not found says what installs it and what it blocks; what is found needs no install line
        assert (item["install"] is None) == (item["status"] == "ok"), item
        if item["status"] in ("missing", "partial"):
            assert item["blocks"], item
    for cap in report["capabilities"]:
        blocked = [i["name"] for i in report["items"] if i["status"] != "ok" and cap["key"] in i["blocks"]]
        assert cap["blocked_by"] == blocked and cap["ok"] == (not blocked), cap
    names = set(_items(report))
    assert names >= {"python", "Python packages", "tflite-micro", "ai-edge-litert", "arm-none-eabi-gcc", "make",
                     "firmware sources", "qemu-system-arm", "renode", "pyOCD", "serial ports", "TensorFlow", "Ray",
                     "HAPT dataset", "chromium", "chromedriver"}
    assert report["seconds"] < 2.0  # the probes run at once; the slowest here takes a few tens of ms


def test_a_path_without_the_tools_reports_them_missing_with_install_and_blocked_capability(tmp_path: Path) -> None:
    code, report = _doctor(env={"PATH": str(tmp_path)})
    assert code == 0 and report["core_ok"] is True  # the core needs no tool on PATH
    items = _items(report)
    gcc, qemu = items["arm-none-eabi-gcc"], items["qemu-system-arm"]
    assert gcc["status"] == "missing" and gcc["install"] == TOOLCHAIN_FIX and gcc["blocks"] == ["build", "emulate"]
    assert qemu["status"] == "missing" and qemu["install"] == INSTALL["qemu"] and qemu["blocks"] == ["emulate"]
    assert items["chromium"]["status"] == "missing" and items["chromium"]["install"] == INSTALL["chromium"]
    caps = _capabilities(report)
    assert caps["build"]["blocked_by"] == ["arm-none-eabi-gcc", "make"]
    assert caps["emulate"]["blocked_by"] == ["arm-none-eabi-gcc", "make", "qemu-system-arm"]
    assert caps["browser-tests"]["blocked_by"][-2:] == ["chromium", "chromedriver"]

    human = CliRunner().invoke(cli, ["doctor"], env={"PATH": str(tmp_path)})
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert any(line.strip().startswith("qemu-system-arm") and "missing" in line for line in lines), human.stdout
    assert f"install: {INSTALL['qemu']}" in human.stdout and f"install: {TOOLCHAIN_FIX}" in human.stdout
    assert any("emulate boards in QEMU" in line and "blocked by arm-none-eabi-gcc, make, qemu-system-arm" in line
               for line in lines), human.stdout
    assert "core: ok" in human.stdout


def test_a_qemu_without_a_boards_machine_is_partial_and_a_hung_tool_is_cut_off(tmp_path: Path) -> None:
    """A QEMU too old for the mps3-an547 blocks emulation and names the board; a tool that never
    answers costs its timeout, not the check."""
    fake = tmp_path / "qemu-system-arm"
    fake.write_text('#!/bin/sh\ncase "$1" in\n  --version) echo "QEMU emulator version 6.0.0";;\n'
                    '  -machine) printf "Supported machines are:\\nmps2-an386  ARM MPS2 AN386\\n";;\nesac\n')
    hung = tmp_path / "chromium"
    hung.write_text("#!/bin/sh\nsleep 30 &\nsleep 30\n")  # a child holds the pipes too
    fake.chmod(0o755)
    hung.chmod(0o755)
    start = time.monotonic()
    report = diagnose(Host(path=str(tmp_path), timeout_s=0.5))
    assert time.monotonic() - start < 2.5
    items = {i.name: i for i in report.items}
    qemu = items["qemu-system-arm"]
    assert (qemu.status, qemu.version, qemu.blocks) == ("partial", "6.0.0", ("emulate",))
    assert "lacks the machine(s) mps3-an547 of mps3-an547" in qemu.detail and "has mps2-an386" in qemu.detail
    assert items["chromium"].status == "ok" and items["chromium"].version is None  # found; its version timed out
    assert report.core_ok and [i.name for i in report.blockers("emulate")][-1] == "qemu-system-arm"


def test_missing_packages_and_sources_block_their_capability_and_a_missing_base_one_fails_the_core(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_spec = Host().find_spec

    def no_tf(name: str) -> Any:
        return None if name in ("tensorflow", "ray", doctor_mod.HAPT_MODULE) else real_spec(name)

    from tinyfed.firmware_bridge.emulate import build

    assert {i.name: i for i in diagnose(Host(find_spec=no_tf)).items}["HAPT dataset"].status == "ok"  # shipped
    monkeypatch.setattr(build, "FIRMWARE_DIR", tmp_path / "firmware")  # an install without the sources
    report = diagnose(Host(find_spec=no_tf, hapt_shipped=tmp_path / "no-such.npz"))
    items = {i.name: i for i in report.items}
    assert items["firmware sources"].status == "missing" and items["firmware sources"].blocks == ("build", "emulate")
    assert items["TensorFlow"].status == "missing" and items["TensorFlow"].install == "pip install 'tinyfed[convert]'"
    assert [i.name for i in report.blockers("convert")] == ["TensorFlow"]
    assert [i.name for i in report.blockers("ray")] == ["Ray"]
    assert items["HAPT dataset"].install == doctor_mod.HAPT_PIP and report.blockers("har")
    assert report.core_ok  # all optional

    broken = diagnose(Host(requirements=("numpy>=2.0", "tinyfed-no-such-package>=1")))
    row = next(i for i in broken.items if i.name == "Python packages")
    assert row.status == "missing" and row.detail == "missing: tinyfed-no-such-package"
    assert row.install == "pip install 'tinyfed-no-such-package>=1'" and not broken.core_ok

    monkeypatch.setattr(doctor_mod, "diagnose", lambda: broken)
    code, out = _doctor()
    assert code == 1 and out["core_ok"] is False
    assert _capabilities(out)["simulate"]["blocked_by"] == ["Python packages"]
    human = CliRunner().invoke(cli, ["doctor"])
    assert human.exit_code == 1 and "core: blocked" in human.stdout


def test_restated_install_lines_match_their_sources() -> None:
    from tinyfed.firmware_bridge.emulate.build import TOOLCHAIN_FIX as build_fix
    from tinyfed.models.datasets import HAPT_PACKAGE, HAPT_PIP
    from tinyfed.models.hapt_pack import PACKED_PATH

    assert (TOOLCHAIN_FIX, doctor_mod.HAPT_PIP, doctor_mod.HAPT_MODULE) == (build_fix, HAPT_PIP, HAPT_PACKAGE)
    assert doctor_mod.HAPT_SHIPPED == PACKED_PATH


def test_version_names_the_package_and_the_firmware_protocol() -> None:
    """PROTOCOL_VERSION is the host's mirror of firmware/src/protocol.h's PROTO_VERSION
    (tests/test_wire_constants.py holds the two equal)."""
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"tinyfed {__version__}, firmware protocol {PROTOCOL_VERSION}\n"
