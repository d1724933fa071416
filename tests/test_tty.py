"""Boards on ttys (issue 20): QEMU boards behind pseudo-terminals the launcher owns, reached by plain
tty paths through pyserial's POSIX ``serial.Serial`` with the board profile's termios settings.

Without QEMU: the relay's pacing (a transfer of N bytes takes at least N * 10 / baud, both ways; a
lower bound only, the host may be busy), the exclusive lock refusing a real second process, the
profile's tty settings and their validation. With QEMU (slow): one module-scoped fleet of two
boards on ptys paced at 1,000,000 baud runs `tinyfed devices` and `tinyfed check` against the tty
fleet file, a training round (fragment, program, data, TRAIN, update), a paced upload's lower
bound, and the board-kill fault: QEMU killed behind a tty the host keeps open, the host sees the
board go silent, a new QEMU on the same tty answers on the same open port; and `tinyfed emulate
--link pty --pace` in a subprocess, stopped with SIGINT.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import serial
from click.testing import CliRunner

from tinyfed.boards import get_board
from tinyfed.boards.schema import Link
from tinyfed.cli import cli
from tinyfed.errors import BoardError
from tinyfed.firmware_bridge.emulate import emulator
from tinyfed.firmware_bridge.emulate.emulator import EmulatorFleet, launch_qemu, wait_ready
from tinyfed.firmware_bridge.emulate.pty import PtyError, PtyLink
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.devices import load_device_fleet, write_device_fleet
from tinyfed.firmware_bridge.link.errors import DeviceUnreachable, LinkTimeout, PortInUse
from tinyfed.firmware_bridge.link.transport import SerialSettings, open_port, serial_settings

sys.path.insert(0, str(Path(__file__).parent))

HAVE_QEMU = shutil.which("qemu-system-arm") is not None and shutil.which("arm-none-eabi-gcc") is not None
#: Bound on waits that end in well under a second on an idle host: it only fires on a hang.
HANG_S = 300.0
FLEET_PACE = 1_000_000


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "the relay closed the board's end"
        got += chunk
    return bytes(got)


# -- without QEMU -----------------------------------------------------------------------------


@pytest.mark.parametrize("baud", [115_200, 1_000_000])
def test_a_paced_pty_takes_at_least_the_line_time_both_ways(baud: int) -> None:
    """N bytes through the paced relay take at least N * 10 / baud each way (never checked from above)."""
    n = 2304 if baud == 115_200 else 12_000  # 0.2 s and 0.12 s of line time
    board, ours = socket.socketpair()
    with PtyLink("paced", pace=baud) as tty:
        tty.attach(ours)
        port = open_port(tty.path, timeout=HANG_S, settings=SerialSettings(baudrate=baud))
        try:
            down = os.urandom(n)
            start = time.monotonic()
            port.write(down)
            assert _recv_exactly(board, n) == down  # host -> board, byte for byte
            host_to_board = time.monotonic() - start
            up = os.urandom(n)
            start = time.monotonic()
            board.sendall(up)
            assert port.read(n) == up  # board -> host
            board_to_host = time.monotonic() - start
        finally:
            port.close()
            board.close()
    assert tty.bytes_to_board == n and tty.bytes_to_host == n  # counted by the relay, read once it has stopped
    line_s = n * 10 / baud
    assert host_to_board >= line_s and board_to_host >= line_s, (host_to_board, board_to_host, line_s)


def test_an_unpaced_pty_relays_raw_bytes_both_ways_through_its_symlink(tmp_path: Path) -> None:
    link = tmp_path / "ttys" / "board0"
    board, ours = socket.socketpair()
    with PtyLink("free", link=link) as tty:
        assert link.is_symlink() and os.readlink(link) == tty.path and tty.tty == str(link)
        port = open_port(str(link), timeout=HANG_S)
        try:
            tty.attach(ours)
            port.write(b"\x00hello\x00")
            assert _recv_exactly(board, 7) == b"\x00hello\x00"
            board.sendall(bytes(range(256)))
            assert port.read(256) == bytes(range(256))  # raw: no echo, no CR/LF mapping, no XON/XOFF
            stale, _ = socket.socketpair()
            tty.detach(stale)  # a board stopped after another took its place unplugs nothing
            stale.close()
            port.write(b"\x00still\x00")
            assert _recv_exactly(board, 7) == b"\x00still\x00" and tty.attached
            tty.detach(ours)
            assert not tty.attached
        finally:
            port.close()
            board.close()
    assert not link.exists() and not link.is_symlink()


def test_a_hangup_pty_goes_with_its_board_and_the_next_board_answers_behind_the_same_symlink(tmp_path: Path) -> None:
    """A native-USB board's tty vanishes when the board dies: the host's open port fails at once
    (as a socket's reset does) instead of hearing silence until its timeout; reopening the same
    path reaches the next board."""
    link = tmp_path / "ttys" / "board0"
    board, ours = socket.socketpair()
    with PtyLink("usb", link=link, hangup=True) as tty:
        first = tty.path
        port = open_port(str(link), timeout=HANG_S)
        try:
            tty.attach(ours)
            port.write(b"\x00ping\x00")
            assert _recv_exactly(board, 6) == b"\x00ping\x00"
            board.close()  # the board dies: its end of the UART closes
            with pytest.raises(serial.SerialException):
                port.read(1)  # EIO from the hung-up tty, well before HANG_S
        finally:
            port.close()
        assert tty.hangups == 1 and tty.path != first and os.readlink(link) == tty.path
        board, ours = socket.socketpair()
        tty.attach(ours)
        port = open_port(str(link), timeout=HANG_S)
        try:
            board.sendall(b"\x00back\x00")
            assert port.read(6) == b"\x00back\x00"
        finally:
            port.close()
            board.close()
    assert not link.exists() and not link.is_symlink()


def test_a_second_process_is_refused_the_tty_a_client_holds(tmp_path: Path) -> None:
    """pyserial's exclusive flock, seen from a real second process: one clear error naming the tty."""
    with PtyLink("locked", link=tmp_path / "board0") as tty:
        port = open_port(tty.tty, timeout=1.0)
        try:
            code = ("import sys\nfrom tinyfed.firmware_bridge.link.transport import open_port\n"
                    "from tinyfed.errors import TinyfedError\n"
                    "try:\n    open_port(sys.argv[1])\nexcept TinyfedError as e:\n"
                    "    print(type(e).__name__, e); sys.exit(3)\n")
            other = subprocess.run([sys.executable, "-c", code, tty.tty], capture_output=True, text=True,
                                   timeout=HANG_S, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            assert other.returncode == 3, other.stderr
            assert other.stdout.startswith("PortInUse") and f"{tty.tty} is in use by another process" in other.stdout
            assert "fuser -v" in other.stdout
            with pytest.raises(PortInUse) as err:  # another open file in this process is refused too
                open_port(tty.path, name="board0")
            assert err.value.tty == tty.path and isinstance(err.value, DeviceUnreachable)
        finally:
            port.close()
        open_port(tty.tty).close()  # free again once the holder closed it


def test_tty_settings_come_from_the_board_profile() -> None:
    s = serial_settings("nrf52840")
    assert (s.baudrate, s.framing, s.rtscts) == (115_200, "8N1", False)
    assert serial_settings("?") == SerialSettings() == serial_settings("no-such-board")
    assert SerialSettings.for_link(Link(kind="uart", baud=1_000_000, max_frame_bytes=256, framing="8E1",
                                        flow_control="rtscts")).pyserial_kwargs() == {
        "baudrate": 1_000_000, "bytesize": 8, "parity": "E", "stopbits": 1, "rtscts": True, "xonxoff": False,
        "dsrdtr": False}
    for board in ("mps2-an386", "mps3-an547", "nrf52840", "stm32l4r9", "apollo3"):  # written out in the data
        link = get_board(board).link
        assert (link.framing, link.flow_control) == ("8N1", "none"), board


def test_bad_tty_settings_and_pacing_are_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="framing"):
        Link(kind="uart", baud=115_200, max_frame_bytes=256, framing="7E1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="flow_control"):
        Link(kind="uart", baud=115_200, max_frame_bytes=256, flow_control="xonxoff")  # type: ignore[arg-type]
    with pytest.raises(PtyError, match="cannot pace a link at 300 baud"):
        PtyLink("slow", pace=300)
    with pytest.raises(BoardError, match="need a pty link"):
        launch_qemu("mps2-an386", "-", pace=115_200)
    with pytest.raises(BoardError, match="unknown link"):
        EmulatorFleet("mps2-an386", 1, link="usb")  # type: ignore[arg-type]
    r = CliRunner().invoke(cli, ["emulate", "--board", "mps2-an386", "--pace", "115200"])
    assert r.exit_code == 2 and "--link pty" in r.output
    with pytest.raises(DeviceUnreachable, match="No such file"):
        open_port("/dev/tinyfed-no-such-tty")


# -- with QEMU --------------------------------------------------------------------------------

qemu = pytest.mark.skipif(not HAVE_QEMU, reason="needs qemu-system-arm and gcc-arm-none-eabi (make setup)")


@pytest.fixture(scope="module")
def tty_fleet(tmp_path_factory: pytest.TempPathFactory):
    """Two mps2-an386 boards on ptys paced at 1,000,000 baud, symlinked as DIR/ttys/board{0,1}."""
    if not HAVE_QEMU:
        pytest.skip("needs qemu-system-arm and gcc-arm-none-eabi (make setup)")
    from _run_shared import run_firmware

    elf = run_firmware(tmp_path_factory, "mps2-an386").elf
    out = tmp_path_factory.mktemp("ttyfleet")
    with EmulatorFleet("mps2-an386", 2, elf, ready_timeout=HANG_S, link="pty", pace=FLEET_PACE,
                       tty_dir=out / "ttys") as fleet:
        fleet_file = write_device_fleet(out / "fleet.toml", "ttys", [("mps2-an386", fleet.urls)])
        yield fleet, fleet_file
    with emulator._LIVE_LOCK:
        assert not emulator._LIVE
    assert not (out / "ttys" / "board0").is_symlink()


@pytest.mark.slow
@qemu
def test_devices_and_check_reach_boards_by_tty_path(tty_fleet) -> None:
    fleet, fleet_file = tty_fleet
    paths = [d.url for d in load_device_fleet(fleet_file).devices]
    assert paths == [str(fleet.tty_dir / "board0"), str(fleet.tty_dir / "board1")]  # plain paths, no scheme
    assert all(os.path.realpath(p).startswith("/dev/pts/") for p in paths)
    r = CliRunner().invoke(cli, ["devices", "--fleet", str(fleet_file), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["devices"]
    assert [(d["url"], d["reachable"], d["hello"]["board_id"]) for d in rows] == [(p, True, "mps2-an386")
                                                                                  for p in paths]
    model = Path(__file__).parent / "fixtures" / "converters" / "tf2.12.0_classifier_int8.tflite"  # no converting
    r = CliRunner().invoke(cli, ["check", str(model), "--fleet", str(fleet_file), "--samples", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert [(d["samples"], d["mismatches"], d["max_abs_diff"]) for d in json.loads(r.stdout)["devices"]] == \
        [(1, 0, 0)] * 2


@pytest.mark.slow
@qemu
def test_a_training_round_on_a_tty_board_with_paced_uploads(tty_fleet, har_training_case) -> None:
    """A tty board is provisioned (fragment, program, local data), trains and returns its update; the
    uploads took at least their bytes' line time at the fleet's pace (one board: the link is the same
    for every board, and a second QEMU uploading would only cost the suite CPU)."""
    import _training_case as tc

    from tinyfed.firmware_bridge.link.train_link import TrainParams

    fleet, _ = tty_fleet
    case = har_training_case
    with BoardClient(fleet.urls[0], name="tty0", timeout=2.0, serial=serial_settings("mps2-an386")) as c:
        assert c.serial.framing == "8N1" and c._port.exclusive  # pyserial's POSIX Serial, locked
        c.hello()
        start, sent0, recv0 = time.monotonic(), c.stats.bytes_sent, c.stats.bytes_received
        c.load_fragment(case.frozen_blob)
        c.load_program(case.program)
        c.load_data(case.images[0])
        upload_s = time.monotonic() - start
        sent, received = c.stats.bytes_sent - sent0, c.stats.bytes_received - recv0
        c.set_weights(1, case.w0)
        report = c.train(TrainParams(version=1, epochs=1, batch_size=tc.BATCH, lr=tc.LR, seed=0), timeout=600.0)
        update = c.read_update(report.update_bytes)
    assert report.n > 0 and update.version == 1 and update.n == report.n and np.any(update.q != 0)
    assert upload_s >= max(sent, received) * 10 / FLEET_PACE, (upload_s, sent, received)  # a lower bound only
    print(f"\ntty upload at {FLEET_PACE} baud: {sent:,} bytes in {upload_s:.2f} s "
          f"({sent / upload_s / (FLEET_PACE / 10):.2f} of the line rate)")


@pytest.mark.slow
@qemu
def test_a_board_killed_behind_its_tty_comes_back_on_the_same_open_port(tty_fleet) -> None:
    """The host keeps the tty open: the board goes silent when QEMU dies (no hang-up, as on a UART),
    and a relaunched QEMU on the same pty answers on that same open port, with a new identity."""
    fleet, fleet_file = tty_fleet
    victim = fleet.boards[1]
    path, pty = victim.url, victim.tty.path
    with BoardClient(path, name="victim", timeout=0.3, retries=1) as c:
        before = c.hello().device_id
        victim.process.kill()
        victim.process.wait()
        with pytest.raises(LinkTimeout):
            c.ping(b"still there?")
        r = CliRunner().invoke(cli, ["devices", "--fleet", str(fleet_file), "--json"])  # the tty is ours: locked
        row = json.loads(r.stdout)["devices"][1]
        assert r.exit_code == 1 and not row["reachable"] and row["error_type"] == "PortInUse", row
        back = fleet.relaunch(1)
        assert back.url == path and back.tty is not None and back.tty.path == pty
        deadline = time.monotonic() + HANG_S
        while True:  # the new board answers as soon as it has booted: wait on that answer
            try:
                after = c.hello().device_id
                break
            except (LinkTimeout, DeviceUnreachable):
                assert time.monotonic() < deadline and back.running, back.output()
        assert after != before  # a fresh launch is a freshly provisioned board
        c.ping(b"back")
    wait_ready(back, HANG_S)  # and a new opener finds it ready on the same path


@pytest.mark.slow
@qemu
def test_cli_emulate_serves_paced_tty_boards_until_interrupted(tty_fleet, tmp_path: Path) -> None:
    """`tinyfed emulate --link pty --pace` in its own process: tty symlinks in the fleet file, answered
    through them, and removed with the fleet file on SIGINT (one board: the fleet fixture's ELF)."""
    import signal

    fleet, _ = tty_fleet
    proc = subprocess.Popen([sys.executable, "-m", "tinyfed.cli", "emulate", "--board", "mps2-an386", "--count", "1",
                             "--elf", str(fleet.elf), "--ready-timeout", str(HANG_S), "--out", str(tmp_path),
                             "--link", "pty", "--pace", "115200", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    link = tmp_path / "ttys" / "board0"
    try:
        doc = json.loads(proc.stdout.readline())  # printed once the board answered a PING through its tty
        (dev,) = doc["devices"]
        assert (dev["url"], dev["pty"], dev["pace"]) == (str(link), os.readlink(link), 115_200)
        assert [d.url for d in load_device_fleet(tmp_path / "fleet.toml").devices] == [str(link)]
        r = CliRunner().invoke(cli, ["devices", "--fleet", str(tmp_path / "fleet.toml"), "--json"])
        assert r.exit_code == 0 and json.loads(r.stdout)["devices"][0]["hello"]["board_id"] == "mps2-an386", r.output
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=HANG_S) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not link.is_symlink() and not (tmp_path / "fleet.toml").exists() and not (tmp_path / "ttys").exists()


def test_the_relay_thread_ends_with_its_link_and_a_closed_link_takes_no_board() -> None:
    tty = PtyLink("short")
    thread = tty._thread
    tty.close()
    assert not thread.is_alive()
    a, b = socket.socketpair()
    with pytest.raises(PtyError, match="closed"):
        tty.attach(a)
    assert a.fileno() == -1  # the socket it was handed is closed, not leaked
    b.close()
