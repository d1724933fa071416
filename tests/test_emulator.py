"""Emulated boards: QEMU launch, readiness, teardown, and the link against the real firmware.

Tests that need the tinyfed firmware are marked slow and get the ELF from
``tinyfed.firmware_bridge.emulate.build.build_firmware`` (or ``$TINYFED_TEST_ELF``); they skip with the
reason when neither exists. QEMU is always stopped in teardown; no test sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinyfed.boards import get_board
from tinyfed.cli import cli
from tinyfed.errors import BoardError
from tinyfed.firmware_bridge.emulate import emulator
from tinyfed.firmware_bridge.emulate.emulator import (
    EmulatorError,
    EmulatorFleet,
    launch_qemu,
    qemu_command,
    start_qemu,
    wait_ready,
)
from tinyfed.firmware_bridge.emulate.renode import renode_available, write_resc
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.devices import write_device_fleet
from tinyfed.firmware_bridge.link.errors import DeviceError
from tinyfed.firmware_bridge.link.framing import Command, Status

HAVE_QEMU = shutil.which("qemu-system-arm") is not None
HAVE_ARM_GCC = shutil.which("arm-none-eabi-gcc") is not None
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-system-arm is not installed (make setup)")
#: Bound on waits that succeed in well under a second on an idle host: it only fires on a hang, never
#: on a busy host (a parallel suite, other emulators) where booting and exiting take many times longer.
HANG_S = 300.0


@pytest.fixture(autouse=True)
def _no_emulator_left_behind():
    yield
    with emulator._LIVE_LOCK:
        left = list(emulator._LIVE)
    for b in left:
        b.stop()
    assert not left, f"emulators left running: {left}"


# -- command lines and profiles ------------------------------------------------------------------


def test_qemu_command_hands_the_listening_fd_to_qemu() -> None:
    cmd = qemu_command(get_board("mps2-an386"), "/x/fw.elf", 7)
    assert cmd[:5] == ["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4"]
    assert "socket,id=s0,fd=7,server=on,wait=off,nodelay=on" in cmd
    assert cmd[cmd.index("-serial") + 1] == "chardev:s0" and cmd[-2:] == ["-kernel", "/x/fw.elf"]
    assert {"-nographic", "-monitor", "none"} <= set(cmd)


def test_board_without_qemu_machine_is_refused() -> None:
    with pytest.raises(BoardError, match="no QEMU machine.*renode"):
        qemu_command(get_board("nrf52840"), "fw.elf", 3)


def test_missing_qemu_or_elf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmulatorError, match="not installed"):
        start_qemu("mps2-an386", tmp_path / "fw.elf", qemu="no-such-qemu-system")
    if HAVE_QEMU:
        with pytest.raises(EmulatorError, match="ELF not found") as info:
            start_qemu("mps2-an386", tmp_path / "fw.elf")
        assert "tinyfed firmware build" in str(info.value)


def test_renode_script(tmp_path: Path) -> None:
    elf = tmp_path / "fw.elf"
    script = write_resc(get_board("nrf52840"), elf, 41234, tmp_path / "b.resc").read_text()
    assert "machine LoadPlatformDescription @platforms/cpus/nrf52840.repl" in script
    assert 'emulation CreateServerSocketTerminal 41234 "term" false' in script
    assert "connector Connect sysbus.uart0 term" in script and f"sysbus LoadELF @{elf.resolve()}" in script
    with pytest.raises(BoardError, match="no Renode platform"):
        write_resc(get_board("mps2-an386"), elf, 1, tmp_path / "x.resc")


@pytest.mark.skipif(not renode_available(), reason="renode is not on PATH; Renode boards cannot be tested here")
@pytest.mark.slow
def test_renode_board_answers(firmware_elf_nrf) -> None:  # pragma: no cover - needs renode
    from tinyfed.firmware_bridge.emulate.renode import launch_renode

    with launch_renode("nrf52840", firmware_elf_nrf) as emu, BoardClient(emu.url) as c:
        assert c.hello().board_id == "nrf52840"


# -- readiness and teardown with a firmware that never answers ---------------------------------------


@pytest.fixture(scope="module")
def mute_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Cortex-M image that spins forever: QEMU runs it, nothing ever answers on the UART."""
    if not (HAVE_QEMU and HAVE_ARM_GCC):
        pytest.skip("needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
    d = tmp_path_factory.mktemp("mute")
    src = d / "mute.s"
    src.write_text(
        ".syntax unified\n.cpu cortex-m4\n.thumb\n"
        ".section .vectors, \"a\"\n.word 0x20001000\n.word spin + 1\n"
        ".text\n.global spin\n.thumb_func\nspin:\n    b spin\n"
    )
    elf = d / "mute.elf"
    subprocess.run(["arm-none-eabi-gcc", "-nostdlib", "-mcpu=cortex-m4", "-mthumb", "-Wl,--section-start=.vectors=0x0",
                    "-Wl,-Ttext=0x40", "-Wl,-e,spin", "-o", str(elf), str(src)], check=True, capture_output=True)
    return elf


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_readiness_deadline_stops_qemu(mute_elf: Path) -> None:
    emu = start_qemu("mps2-an386", mute_elf)
    assert emu.running and emu.url.startswith("socket://127.0.0.1:")
    with pytest.raises(EmulatorError, match="did not answer a PING within 1 s"):
        wait_ready(emu, timeout=1.0, ping_timeout=0.1)
    assert not emu.running and emu.process.returncode is not None


def test_fleet_that_fails_to_boot_stops_every_board(mute_elf: Path) -> None:
    fleet = EmulatorFleet("mps2-an386", 2, mute_elf, ready_timeout=0.5)
    with pytest.raises(EmulatorError):
        fleet.start()
    assert len(fleet.boards) == 2
    assert all(b.process.returncode is not None for b in fleet.boards)


def test_a_file_that_is_not_an_arm_elf_is_refused_before_qemu_starts(tmp_path: Path) -> None:
    if not HAVE_QEMU:
        pytest.skip("qemu-system-arm is not installed")
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"not an elf at all")
    with pytest.raises(EmulatorError, match="not a 32-bit ARM ELF"):  # refused before QEMU is started
        launch_qemu("mps2-an386", bad, ready_timeout=HANG_S)


def test_a_qemu_crash_is_one_line_not_a_register_dump() -> None:
    from tinyfed.firmware_bridge.emulate.emulator import qemu_failure

    dump = "qemu: fatal: Lockup: can't escalate 3 to HardFault (current priority -1)\n\nR00=00000000 R01=00000000\n" \
           "R02=00000000 R03=00000000\nPSR=40000003 -Z-- A S handler\n"
    assert qemu_failure(dump) == ("qemu: fatal: Lockup: can't escalate 3 to HardFault (current priority -1) "
                                  "(3 more line(s) in the QEMU log)")
    assert qemu_failure("") == "no output"


def test_cli_emulate_errors(mute_elf: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["emulate", "--board", "nrf52840", "--elf", str(mute_elf)])
    assert r.exit_code == 2 and "no QEMU machine" in r.output
    r = CliRunner().invoke(cli, ["emulate", "--board", "mps2-an386", "--elf", str(mute_elf), "--ready-timeout", "0.5",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "did not answer a PING" in r.output and not (tmp_path / "fleet.toml").exists()
    r = CliRunner().invoke(cli, ["emulate", "--board", "mps2-an386", "--out", str(tmp_path / "lab.toml")])
    assert r.exit_code == 2 and "--out names a directory" in r.output and "--out " + str(tmp_path / "lab") in r.output
    r = CliRunner().invoke(cli, ["emulate", "--board", "mps2-an386", "--ready-timeout", "0"])
    assert r.exit_code == 2 and "--ready-timeout" in r.output


def test_cli_flash_without_probe_or_pyocd() -> None:
    r = CliRunner().invoke(cli, ["flash", "--board", "mps2-an386"])
    assert r.exit_code == 2 and "tinyfed emulate" in r.output
    r = CliRunner().invoke(cli, ["flash", "--board", "nrf52840", "--elf", "/nonexistent.elf"])
    assert r.exit_code == 2
    try:
        import pyocd  # noqa: F401
    except ImportError:
        assert "pip install pyocd" in r.output and len(r.output.strip().splitlines()) == 1
    else:  # pragma: no cover - pyocd present: no probe, or the ELF is missing
        assert "error:" in r.output


# -- the real firmware ------------------------------------------------------------------------


def _elf_for(board: str) -> Path:
    env = os.environ.get("TINYFED_TEST_ELF")
    if env and board == "mps2-an386":
        return Path(env)
    from tinyfed.firmware_bridge.emulate.build import build_firmware

    if not HAVE_QEMU:
        pytest.skip("qemu-system-arm is not installed")
    return Path(build_firmware(board))


@pytest.fixture(scope="module")
def firmware_elf() -> Path:
    return _elf_for("mps2-an386")


@pytest.fixture(scope="module")
def firmware_elf_nrf() -> Path:
    return _elf_for("nrf52840")


@pytest.fixture
def qemu_board(firmware_elf: Path):
    with launch_qemu("mps2-an386", firmware_elf, ready_timeout=HANG_S) as emu:
        yield emu
    assert not emu.running


@pytest.mark.slow
def test_qemu_board_hello_ping_reset(qemu_board) -> None:
    with BoardClient(qemu_board.url, name="q0") as c:
        info = c.hello()
        assert info.board_id == "mps2-an386" and info.protocol_version == 2 and info.keyed and info.max_payload >= 64
        for n in (0, 1, 64, info.max_payload):
            c.ping(bytes(random.Random(n).randbytes(n)))
        with pytest.raises(DeviceError) as err:
            c.request(0x7F)  # no command has this code
        assert err.value.status == Status.UNKNOWN_COMMAND
        c.reset()  # the board reboots: it answers again (retransmission covers the reboot), without a model
        assert c.hello().board_id == "mps2-an386"
        with pytest.raises(DeviceError) as err:
            c.request(Command.INVOKE)
        assert err.value.status == Status.NO_MODEL
        bench = c.bench(samples=20)
        print(f"\nqemu mps2-an386: RTT min {bench.rtt_min_s * 1e3:.3f} ms median {bench.rtt_median_s * 1e3:.3f} ms, "
              f"echo {bench.echo_bytes_per_s / 1e3:.1f} kB/s with {bench.echo_payload}-byte payloads")


@pytest.mark.slow
def test_qemu_board_obeys_only_its_host(qemu_board, firmware_elf: Path, tmp_path: Path) -> None:
    """The firmware's MAC code on an emulated board: a request without a valid tag, for each command
    an attacker wants, is refused (AUTH) and changes nothing; a replayed request is refused, an
    authentic retransmission answered from the cache; an unknown or keyless board is refused."""
    import socket

    from _auth import RawHost, bare_frame, detail, socket_exchange
    from test_auth import GUARDED

    from tinyfed.firmware_bridge.emulate.keyimage import key_section
    from tinyfed.firmware_bridge.link.errors import AuthenticationFailed, UnknownDevice
    from tinyfed.firmware_bridge.link.framing import AuthDetail, SessionMac
    from tinyfed.firmware_bridge.link.keys import KeyStore, parse_key_page

    assert qemu_board.device_id is not None
    key = KeyStore().lookup(qemu_board.device_id)
    assert key is not None
    image = qemu_board._provisioned.image  # the keyed copy QEMU booted: private, holding this key
    _addr, offset, size = key_section(image)
    page = image.read_bytes()[offset:offset + size]
    parsed = parse_key_page(page)
    assert image.stat().st_mode & 0o777 == 0o600 and parsed is not None and parsed[0].key == key.key
    assert page[64:] == b"\xff" * (size - 64) and key_section(firmware_elf)[2] == size
    with socket.create_connection(("127.0.0.1", qemu_board.port), timeout=10) as sock:
        host = RawHost(socket_exchange(sock), key)
        (early,) = host.exchange(bare_frame(Command.STATS, host.next_seq(), bytes(20)))
        assert (early.code, detail(early)) == (Status.AUTH, AuthDetail.NO_SESSION)
        assert host.hello().payload[-33:-17] == key.device_id
        for code, body in GUARDED.items():
            (bare,) = host.exchange(bare_frame(code, host.next_seq(), body))
            assert bare.code == Status.AUTH and detail(bare) in (AuthDetail.TOO_SHORT, AuthDetail.BAD_MAC)
            forger = RawHost(host.exchange, None)
            forger.session, forger.seq, forger.counter = SessionMac(os.urandom(32)), host.seq, host.counter
            (forged,) = host.exchange(forger.frame(code, body))
            host.seq = forger.seq
            assert (forged.code, detail(forged)) == (Status.AUTH, AuthDetail.BAD_MAC), Command.NAMES[code]
        (chunk,) = host.exchange(host.frame(Command.LOAD_CHUNK, b"\0\0\0\0abcd"))
        assert chunk.code == Status.OUT_OF_ORDER  # no refused LOAD_BEGIN opened a transfer
        begin_body = (8).to_bytes(4, "little") + bytes(4)  # an 8-byte fragment
        begin = host.frame(Command.LOAD_BEGIN, begin_body)
        first = host.exchange(begin)
        assert first[0].code == Status.OK and host.exchange(begin) == first  # a retransmission: cached
        assert host.send(Command.LOAD_CHUNK, b"\0\0\0\0abcd").code == Status.OK
        (replayed,) = host.exchange(begin)  # recorded, sent again after a newer request
        assert (replayed.code, detail(replayed)) == (Status.AUTH, AuthDetail.REPLAYED_COUNTER)
        resumed = host.send(Command.LOAD_BEGIN, begin_body)
        assert host.body(resumed) == (4).to_bytes(4, "little")  # the replay did not restart the transfer
    with BoardClient(qemu_board.url, key_store=KeyStore(tmp_path / "other.json")) as c, \
            pytest.raises(UnknownDevice):
        c.hello()
    with BoardClient(qemu_board.url) as c:
        assert c.hello().device_id == key.device_id and c.stats.bad_macs == 0
    with launch_qemu("mps2-an386", firmware_elf, ready_timeout=HANG_S, keyed=False) as blank, \
            BoardClient(blank.url) as c, pytest.raises(AuthenticationFailed) as info:
        c.hello()
    assert info.value.reason == "no_key" and blank.device_id is None


@pytest.mark.slow
def test_qemu_fuzz_never_accepts_a_corrupted_payload(qemu_board) -> None:
    """The same fault injection as against sim://, against the firmware in QEMU."""
    from test_link import FaultyPort

    from tinyfed.firmware_bridge.link.transport import open_port

    # A short single-board run; tests/test_fleet_qemu.py spreads the full 10,000 over eight boards.
    target = int(os.environ.get("TINYFED_QEMU_FUZZ_SINGLE", "200"))
    port = FaultyPort(open_port(qemu_board.url, timeout=0.05), seed=5)
    c = BoardClient(qemu_board.url, port=port, timeout=0.02, retries=30, baudrate=10_000_000, name="qemu-fuzz")
    info = c.hello()
    # 10% per frame each way: at higher rates the doubled timeouts of repeated failures dominate
    port.p_out = port.p_in = 0.1
    rng = random.Random(11)
    accepted_corrupt = pings = 0
    try:
        while port.total_injected < target:
            payload = rng.randbytes(rng.randrange(0, info.max_payload + 1))
            accepted_corrupt += c.request(Command.PING, payload) != payload
            pings += 1
    finally:
        port.close()
    print(f"\nqemu fuzz: {port.total_injected} corruptions {dict(port.injected)}, {pings} pings, "
          f"accepted corrupt {accepted_corrupt}, link {c.stats.to_dict()}")
    assert accepted_corrupt == 0 and c.stats.retransmissions > 0


@pytest.mark.slow
def test_qemu_upload_resume_and_check_bit_exact(qemu_board, tmp_path: Path) -> None:
    import _models
    from test_link import FaultyPort

    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.firmware_bridge.link.devices import frozen_fragment
    from tinyfed.firmware_bridge.link.errors import DeviceUnreachable
    from tinyfed.firmware_bridge.link.transport import open_port
    from tinyfed.models.tflm import TflmModel

    tfl = _models.chain_cnn_int8()
    blob = compile_blob(tfl)
    with BoardClient(qemu_board.url) as c:
        c.load_fragment(blob)
    # vanish mid-upload of another copy: the committed fragment keeps working, the upload resumes
    other = frozen_fragment(_models.residual_int8()).blob
    port = FaultyPort(open_port(qemu_board.url), vanish_after=len(other) // 2)
    c = BoardClient(qemu_board.url, port=port, name="qv")
    with pytest.raises(DeviceUnreachable):
        c.load_fragment(other)
    port.close()
    x = np.random.default_rng(0).integers(-128, 128, size=(4, *_models.INPUT_SHAPE), dtype=np.int8)
    want = TflmModel(tfl).run(x)
    with BoardClient(qemu_board.url) as c:
        for i in range(len(x)):
            assert np.array_equal(c.infer(x[i:i + 1]), want[i].reshape(-1))
        assert c.load_fragment(other).resumed_from > 0
    model = tmp_path / "m.tflite"
    model.write_bytes(tfl)
    fleet = write_device_fleet(tmp_path / "f.toml", "q", [("mps2-an386", [qemu_board.url])])
    r = CliRunner().invoke(cli, ["check", str(model), "--fleet", str(fleet), "--samples", "4", "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["devices"][0]
    assert (row["samples"], row["mismatches"], row["max_abs_diff"]) == (4, 0, 0)


@pytest.mark.slow
def test_cli_emulate_serves_a_fleet_until_interrupted(firmware_elf: Path, tmp_path: Path) -> None:
    out = tmp_path / "fleet.toml"
    proc = subprocess.Popen([sys.executable, "-m", "tinyfed.cli", "emulate", "--board", "mps2-an386", "--count", "2",
                             "--elf", str(firmware_elf), "--ready-timeout", str(HANG_S), "--out", str(tmp_path),
                             "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()  # printed once every board answered a PING
        doc = json.loads(line)
        pids = [d["pid"] for d in doc["devices"]]
        assert len(pids) == 2 and out.is_file()
        r = CliRunner().invoke(cli, ["devices", "--fleet", str(out), "--json"])
        assert r.exit_code == 0, r.output
        assert [d["hello"]["board_id"] for d in json.loads(r.stdout)["devices"]] == ["mps2-an386"] * 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=HANG_S) == 0  # stops its boards, then exits; the bound is for a hang
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        assert not _alive(pid), f"qemu {pid} still running"
    assert not out.exists()


def test_cli_firmware_build_errors() -> None:
    r = CliRunner().invoke(cli, ["firmware", "build", "--board", "nrf5284"])
    assert r.exit_code == 2 and "nrf52840" in r.output
    try:
        import tinyfed.firmware_bridge.emulate.build  # noqa: F401
    except ImportError:  # pragma: no cover - before the firmware build lands
        r = CliRunner().invoke(cli, ["firmware", "build", "--board", "mps2-an386"])
        assert r.exit_code == 2 and "build.py" in r.output
        return
    r = CliRunner().invoke(cli, ["firmware", "build", "--board", "esp32s3", "--json"])
    assert r.exit_code == 2 and json.loads(r.stdout)["error"]


@pytest.mark.slow
def test_cli_firmware_build(firmware_elf: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["firmware", "build", "--board", "mps2-an386", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["board"] == "mps2-an386" and Path(doc["elf"]).is_file()
    # --out: the build goes where the user says (outside the checkout's build/)
    out = tmp_path / "fw"
    r = CliRunner().invoke(cli, ["firmware", "build", "--board", "mps2-an386", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    elf = Path(json.loads(r.stdout)["elf"])
    assert elf.is_file() and elf.parent == out
