"""The bare-metal firmware: it builds for every target within budget, the board files carry
its measured reserve, oversized settings fail at link time, and it answers protocol v2 frames
under QEMU (slow). The QEMU test builds its frames itself (``cobs`` + ``zlib.crc32``, the tags
with ``hmac``) so it does not depend on the host client in ``tinyfed/firmware_bridge``; its codes
and sizes are the constants of ``link/framing.py``."""

from __future__ import annotations

import hmac
import os
import shutil
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from cobs import cobs

from tinyfed.boards import get_board
from tinyfed.firmware_bridge.emulate import build as fwbuild
from tinyfed.firmware_bridge.emulate.build import (
    TOOLCHAIN_FIX,
    BuildResult,
    FirmwareBuildError,
    ToolchainMissingError,
    build_firmware,
    reserve_table_text,
    write_reserve_back,
)
from tinyfed.firmware_bridge.emulate.keyimage import keyed_image
from tinyfed.firmware_bridge.link.framing import (
    KIND_REQUEST,
    KIND_RESPONSE,
    NAK_SEQ,
    OVERHEAD,
    PROTOCOL_VERSION,
    Command,
    Status,
)
from tinyfed.firmware_bridge.link.keys import DeviceKey, key_page
from tinyfed.firmware_bridge.link.window import announced_window

TARGETS = ["mps2-an386", "mps3-an547", "nrf52840", "apollo3"]
QEMU_TARGETS = ["mps2-an386", "mps3-an547"]
HAVE_TOOLCHAIN = shutil.which("arm-none-eabi-gcc") is not None and shutil.which("make") is not None
needs_toolchain = pytest.mark.skipif(not HAVE_TOOLCHAIN, reason="arm-none-eabi-gcc not installed (make setup)")
#: Bound on a wait for QEMU (an answer, a boot, an exit): milliseconds on an idle host, many times that on a
#: busy one; the bound only fires on a hang.
HANG_S = 300.0


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuildResult]:
    if not HAVE_TOOLCHAIN:
        pytest.skip("arm-none-eabi-gcc not installed (make setup)")
    root = tmp_path_factory.mktemp("fw")
    return {name: build_firmware(name, root / name) for name in TARGETS}


@needs_toolchain
@pytest.mark.parametrize("board_name", TARGETS)
def test_builds_warning_free_within_budget(builds: dict[str, BuildResult], board_name: str) -> None:
    r = builds[board_name]
    board = get_board(board_name)
    assert r.elf.is_file() and r.bin.is_file() and r.map.is_file()
    assert os.fspath(r) == str(r.elf)
    assert r.warnings == ()
    assert r.ram_used_bytes <= board.ram_bytes
    assert r.flash_used_bytes <= board.flash_bytes
    # The arena is exactly what the planner budgets for fragments: RAM minus the reserve.
    assert r.arena_bytes == board.ram_bytes - r.reserve_ram_kib * 1024
    assert r.slot_bytes > 0 and r.slot_bytes % r.flash_page_bytes == 0
    assert 0 < r.fw_ram_bytes < 64 * 1024 and 0 < r.fw_flash_bytes < 256 * 1024


@needs_toolchain
@pytest.mark.parametrize("board_name", TARGETS)
def test_board_file_reserve_matches_build(builds: dict[str, BuildResult], board_name: str) -> None:
    r = builds[board_name]
    reserve = get_board(board_name).firmware_reserve
    fix = (f"run `.venv/bin/python -m tinyfed.firmware_bridge.emulate.build {board_name} --write-reserve` "
           "and commit the board file")
    # Whatever the board file says, the planner must never budget more than the build leaves.
    assert reserve.ram_kib >= r.reserve_ram_kib and reserve.flash_kib >= r.reserve_flash_kib, fix
    if reserve.source == "estimate":
        pytest.skip(f"{board_name}.toml still carries the estimated reserve: {fix}")
    assert (reserve.ram_kib, reserve.flash_kib) == (r.reserve_ram_kib, r.reserve_flash_kib), fix


@needs_toolchain
def test_oversized_arena_fails_at_link_time(tmp_path: Path) -> None:
    with pytest.raises(FirmwareBuildError) as info:
        build_firmware("nrf52840", tmp_path, arena_kib=256)
    assert "RAM budget exceeded" in info.value.problem
    assert "ARENA_KIB" in info.value.problem


@needs_toolchain
def test_oversized_slots_fail_at_link_time(tmp_path: Path) -> None:
    with pytest.raises(FirmwareBuildError) as info:
        build_firmware("mps2-an386", tmp_path, slot_kib=512)
    assert "FLASH budget exceeded" in info.value.problem
    assert "SLOT_KIB" in info.value.problem


@needs_toolchain
def test_fixed_sizes_that_fit_are_used(tmp_path: Path) -> None:
    r = build_firmware("mps2-an386", tmp_path, arena_kib=100, slot_kib=64)
    assert (r.arena_bytes, r.slot_bytes) == (100 * 1024, 64 * 1024)


def test_missing_toolchain_is_a_tinyfed_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fwbuild.shutil, "which", lambda name: None)
    with pytest.raises(ToolchainMissingError) as info:
        build_firmware("mps2-an386", tmp_path)
    assert info.value.fix == TOOLCHAIN_FIX
    assert "arm-none-eabi-gcc" in info.value.problem


def test_board_without_firmware_layer(tmp_path: Path) -> None:
    with pytest.raises(FirmwareBuildError, match="no board layer for 'rp2040'"):
        build_firmware("rp2040", tmp_path)


def test_reserve_write_back_touches_only_its_table(tmp_path: Path) -> None:
    src = Path(fwbuild.BUILTIN_DIR / "esp32s3.toml").read_text()
    new = reserve_table_text(src, 9, 33)
    old_lines, new_lines = src.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert changed == [
        ("ram_kib = 160       # ESP-IDF, caches and USB buffers take far more than on a bare Cortex-M",
         "ram_kib = 9       # ESP-IDF, caches and USB buffers take far more than on a bare Cortex-M"),
        ("flash_kib = 384", "flash_kib = 33"),
        ('source = "estimate"', 'source = "linker-map"'),
    ]
    # The same through write_reserve_back on a copy of a board file.
    copy = tmp_path / "nrf52840.toml"
    copy.write_text(Path(fwbuild.BUILTIN_DIR / "nrf52840.toml").read_text())
    fake = BuildResult("nrf52840", copy, copy, copy, 5000, 20000, 0, 0, 0, 0, 4096, False)
    write_reserve_back("nrf52840", fake, copy)
    text = copy.read_text()
    assert "[firmware_reserve]\nram_kib = 5\nflash_kib = 20\nsource = \"linker-map\"\n" in text
    assert "ram_kib = 256" in text  # the board's own RAM is untouched


# --------------------------------------------------------------------------- QEMU smoke

HELLO, PING, INVOKE, BENCH = Command.HELLO, Command.PING, Command.INVOKE, Command.BENCH
OK, BAD_CRC, UNKNOWN_COMMAND, NO_MODEL, UNSUPPORTED_OP = (Status.OK, Status.BAD_CRC, Status.UNKNOWN_COMMAND,
                                                         Status.NO_MODEL, Status.UNSUPPORTED_OP)
NOT_A_COMMAND = 0x7E  # no command has this code


def frame(code: int, seq: int, payload: bytes = b"") -> bytes:
    packet = struct.pack("<BBBH", PROTOCOL_VERSION, KIND_REQUEST, code, seq) + payload  # length implied
    return cobs.encode(packet + struct.pack("<I", zlib.crc32(packet))) + b"\x00"


class Link:
    """A socket to QEMU's UART with a tiny stop-and-wait request helper; after :meth:`hello` every
    command but HELLO and PING goes out with a counter and a tag, and its answer's tag is checked."""

    def __init__(self, sock: socket.socket, device: DeviceKey | None = None) -> None:
        self.sock = sock
        self.buf = b""
        self.device = device
        self.ks: bytes | None = None
        self.counter = 0

    def hello(self, seq: int) -> tuple[int, bytes]:
        nonce = os.urandom(16)
        status, body = self.request(HELLO, seq, bytes([PROTOCOL_VERSION]) + nonce)
        if status == OK and self.device is not None:
            board_nonce = body[-17:-1]
            self.ks = hmac.digest(self.device.key, b"tinyfed-session-v2" + self.device.device_id + nonce + board_nonce,
                                  "sha256")
            self.counter = 0
        return status, body

    def read_packet(self, deadline: float) -> tuple[int, int, bytes]:
        while b"\x00" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no response frame")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("QEMU closed the serial socket")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\x00", 1)
        packet = cobs.decode(raw)
        assert len(packet) >= OVERHEAD  # 5-byte header + CRC-32
        version, kind, code, seq = struct.unpack_from("<BBBH", packet)
        assert (version, kind) == (PROTOCOL_VERSION, KIND_RESPONSE)
        assert zlib.crc32(packet[:-4]) == struct.unpack("<I", packet[-4:])[0]
        return code, seq, packet[5:-4]

    def request(self, code: int, seq: int, payload: bytes = b"", timeout: float = HANG_S) -> tuple[int, bytes]:
        auth = self.ks is not None and code not in (HELLO, PING)
        if auth:
            assert self.ks is not None
            self.counter += 1
            count = struct.pack("<I", self.counter)
            head = struct.pack("<BBBH", PROTOCOL_VERSION, KIND_REQUEST, code, seq)
            payload = count + payload + hmac.digest(self.ks, b"\x01" + head + count + payload, "sha256")[:16]
        self.sock.sendall(frame(code, seq, payload))
        deadline = time.monotonic() + timeout
        while True:
            status, rseq, body = self.read_packet(deadline)
            if rseq != seq:
                continue  # a stale answer to an earlier retry
            if auth and status != Status.AUTH:
                assert self.ks is not None
                head = struct.pack("<BBBH", PROTOCOL_VERSION, KIND_RESPONSE, status, seq)
                tag = hmac.digest(self.ks, b"\x02" + head + count + body[:-16], "sha256")[:16]
                assert hmac.compare_digest(tag, body[-16:]), "the answer's tag does not verify"
                body = body[:-16]
            return status, body

    def send_raw(self, data: bytes) -> tuple[int, int, bytes]:
        self.sock.sendall(data)
        return self.read_packet(time.monotonic() + HANG_S)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def qemu_board(request: pytest.FixtureRequest, builds: dict[str, BuildResult], tmp_path: Path):
    board_name = request.param
    device = DeviceKey.generate("build test")  # provisioned by hand: the test holds the key
    elf = keyed_image(builds[board_name].elf, key_page(device, os.urandom(8)), tmp_path / "keyed.elf")
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm not installed (make setup)")
    machine = get_board(board_name).emulator.qemu_machine
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    fd = listener.fileno()
    cmd = [
        "qemu-system-arm", "-M", machine, "-nographic", "-monitor", "none", "-icount", "shift=4",
        "-kernel", str(elf),
        "-chardev", f"socket,id=s0,fd={fd},server=on,wait=off,nodelay=on", "-serial", "chardev:s0",
    ]
    proc = subprocess.Popen(cmd, pass_fds=[fd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    sock = None
    try:
        sock = socket.create_connection(listener.getsockname(), timeout=HANG_S)
        listener.close()
        link = Link(sock, device)
        # Readiness: the first answered PING, retried (same seq) until a deadline.
        deadline = time.monotonic() + HANG_S
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            try:
                assert link.request(PING, 1, b"ready", timeout=0.25) == (OK, b"ready")
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        yield board_name, link, proc
    finally:
        if sock is not None:
            sock.close()
        listener.close()
        proc.kill()
        proc.wait(timeout=HANG_S)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
@needs_toolchain
@pytest.mark.parametrize("qemu_board", QEMU_TARGETS, indirect=True)
def test_qemu_answers_protocol_v2(qemu_board, builds: dict[str, BuildResult]) -> None:
    board_name, link, proc = qemu_board
    r = builds[board_name]

    status, body = link.hello(2)
    assert status == OK
    version, window, max_payload, slot, arena, fw_ram, fw_flash = struct.unpack_from("<BBHIIII", body)
    assert (version, max_payload) == (PROTOCOL_VERSION, 256)
    assert window == announced_window(max_payload) == 7  # frames the 2,048-byte RX ring holds
    assert (slot, arena, fw_ram, fw_flash) == (r.slot_bytes, r.arena_bytes, r.fw_ram_bytes, r.fw_flash_bytes)
    n = body[20]
    assert body[21:21 + n].decode() == board_name
    m = body[21 + n]
    assert body[22 + n:22 + n + m].decode().startswith("tinyfed-fw ")
    # then the training-program and local-data stores, as the build placed them
    end = 22 + n + m
    assert struct.unpack_from("<II", body, end) == (r.program_store_bytes, r.data_store_bytes)
    assert body[end + 8:end + 24] == link.device.device_id and body[-1] == 1  # then board_nonce, key_state
    assert len(body) == end + 8 + 16 + 16 + 1

    assert link.request(HELLO, 3, b"\x01" + bytes(16))[0] == Status.WRONG_VERSION  # a v1 host
    # PING echoes any bytes, zeros and a run longer than one COBS block included.
    payload = bytes(range(256))
    assert link.request(PING, 4, payload) == (OK, payload)
    # A repeated seq with the same bytes is answered from the stored response; with other bytes
    # (protocol v2) it is a new PING, not a way to read back the last answer.
    assert link.request(PING, 4, payload) == (OK, payload)
    assert link.request(PING, 4, b"different") == (OK, b"different")
    assert link.request(PING, 5, b"") == (OK, b"")

    # A corrupted frame with a readable header: BAD_CRC with seq 0xFFFF.
    packet = bytearray(cobs.decode(frame(PING, 6, b"abc")[:-1]))
    packet[-1] ^= 0xFF
    status, seq, _ = link.send_raw(cobs.encode(bytes(packet)) + b"\x00")
    assert (status, seq) == (BAD_CRC, NAK_SEQ)
    # A truncated frame (the length is implied by the frame size): BAD_CRC with seq 0xFFFF; cut
    # below 9 bytes with the 5-byte header intact: BAD_LENGTH with seq 0xFFFF.
    packet = cobs.decode(frame(PING, 6, b"abc")[:-1])
    status, seq, _ = link.send_raw(cobs.encode(packet[:-2]) + b"\x00")
    assert (status, seq) == (BAD_CRC, NAK_SEQ)
    status, seq, _ = link.send_raw(cobs.encode(packet[:8]) + b"\x00")
    assert (status, seq) == (Status.BAD_LENGTH, NAK_SEQ)
    # An oversized frame: FRAME_TOO_LARGE with seq 0xFFFF.
    status, seq, _ = link.send_raw(frame(PING, 7, bytes(300)))
    assert (status, seq) == (Status.FRAME_TOO_LARGE, NAK_SEQ)
    # Garbage, then a delimiter: silently dropped; the next request works.
    link.sock.sendall(b"\x05\x01\x00")
    assert link.request(PING, 8, b"ok") == (OK, b"ok")

    status, body = link.request(NOT_A_COMMAND, 9)
    assert status == UNKNOWN_COMMAND and struct.unpack_from("<H", body)[0] == NOT_A_COMMAND
    status, body = link.request(INVOKE, 10)
    assert status == NO_MODEL and b"no committed fragment" in body

    # Loading: resumable, acknowledged cumulatively, CRC-checked, validated before activation.
    blob = bytes(range(1, 11)) * 3
    begin = struct.pack("<II", len(blob), zlib.crc32(blob))
    begin_, chunk, commit = Command.LOAD_BEGIN, Command.LOAD_CHUNK, Command.LOAD_COMMIT
    assert link.request(begin_, 20, begin) == (OK, struct.pack("<I", 0))
    assert link.request(chunk, 21, struct.pack("<I", 0) + blob[:7]) == (OK, struct.pack("<I", 7))
    # a resend of what is held is acknowledged (the cumulative ack) and written nowhere; a chunk that
    # straddles the next offset is OUT_OF_ORDER (docs/protocol.md, "Windowed transfers")
    assert link.request(chunk, 22, struct.pack("<I", 0) + blob[:7]) == (OK, struct.pack("<I", 7))
    status, body = link.request(chunk, 122, struct.pack("<I", 4) + blob[4:11])
    assert status == Status.OUT_OF_ORDER and struct.unpack_from("<H", body)[0] == 7 and b"expected offset 7" in body
    assert link.request(begin_, 23, begin) == (OK, struct.pack("<I", 7))  # same transfer: resume
    status, _ = link.request(chunk, 24, struct.pack("<I", 7) + blob[7:] + b"x")
    assert status == Status.BAD_LENGTH  # past the announced size
    assert link.request(chunk, 25, struct.pack("<I", 7) + blob[7:]) == (OK, struct.pack("<I", len(blob)))
    status, body = link.request(commit, 26)
    assert status == (Status.BAD_MODEL if r.engine else UNSUPPORTED_OP)  # not a TFMB blob
    assert link.request(INVOKE, 27)[0] == NO_MODEL  # nothing became active
    wrong = struct.pack("<II", 4, zlib.crc32(b"abcd") ^ 1)
    assert link.request(begin_, 28, wrong) == (OK, struct.pack("<I", 0))
    assert link.request(chunk, 29, struct.pack("<I", 0) + b"abcd")[0] == OK
    assert link.request(commit, 30)[0] == BAD_CRC
    status, body = link.request(begin_, 31, struct.pack("<II", r.slot_bytes + 1, 0))
    assert status == Status.FRAGMENT_TOO_LARGE

    # BENCH: deterministic under -icount.
    status, first = link.request(BENCH, 11)
    assert status == OK
    macs, icyc, flops, fcyc, clock, counter, _, repeats = struct.unpack("<IIIIIBBH", first)
    assert (macs, flops, repeats, counter) == (64 * 256, 64 * 128, 64, 2)  # 2 = SysTick (no DWT in QEMU)
    assert icyc > 0 and fcyc > 0 and clock == get_board(board_name).clock_mhz * 1_000_000
    status, second = link.request(BENCH, 12)
    assert status == OK and second == first

    # Idle in WFI: (almost) no host CPU. The window is a measurement, not a wait: the board answered
    # its last request, so it is idle now, and a busy host only lowers the ratio.
    c0, t0 = _cpu_seconds(proc.pid), time.monotonic()
    time.sleep(2.0)
    c1, t1 = _cpu_seconds(proc.pid), time.monotonic()
    assert (c1 - c0) / (t1 - t0) < 0.10


@needs_toolchain
def test_firmware_build_provisions_a_real_board_into_the_store_and_a_keyed_image(builds: dict[str, BuildResult],
                                                                                  tmp_path: Path) -> None:
    """`firmware build --device-name` (issue 18): a fresh key in the store and the same key in the keyed
    image's key page (mode 0600); the plain ELF stays blank, nothing printed holds the key; an emulated
    board and a store others can read are refused with what to do."""
    import json as _json
    import stat

    from click.testing import CliRunner

    from tinyfed.cli import cli
    from tinyfed.firmware_bridge.emulate.provision import image_key
    from tinyfed.firmware_bridge.link.keys import KeyStore

    store_path = tmp_path / "keys.json"
    out = builds["nrf52840"].elf.parent  # the fixture's build: make has nothing left to do
    result = CliRunner().invoke(cli, ["--key-store", str(store_path), "firmware", "build", "--board", "nrf52840",
                                      "--out", str(out), "--device-name", "wrist-07", "--json"])
    assert result.exit_code == 0, result.output
    said = _json.loads(result.output.strip().splitlines()[-1])["keyed"]
    (device,) = KeyStore(store_path).devices()
    assert said == {"device_id": device.id_hex, "name": "wrist-07", "image": str(out / "tinyfed-fw-wrist-07.elf")}
    image = Path(said["image"])
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    held = image_key(image)
    assert held is not None and (held.device_id, held.key) == (device.device_id, device.key)
    assert device.key.hex() not in result.output
    assert image_key(builds["nrf52840"].elf) is None  # the plain ELF holds no key

    refused = CliRunner().invoke(cli, ["--key-store", str(store_path), "firmware", "build", "--board", "mps2-an386",
                                       "--out", str(tmp_path / "x"), "--device-name", "emu"])
    assert refused.exit_code == 2 and "every launch gives it a fresh key" in refused.output
    store_path.chmod(0o644)
    refused = CliRunner().invoke(cli, ["--key-store", str(store_path), "firmware", "build", "--board", "nrf52840",
                                       "--out", str(out), "--device-name", "wrist-08"])
    assert refused.exit_code == 2 and f"chmod 600 {store_path}" in refused.output
    assert not (out / "tinyfed-fw-wrist-08.elf").exists()


@needs_toolchain
def test_flash_writes_a_fresh_key_through_the_probe_and_forgets_it_when_flashing_fails(
        builds: dict[str, BuildResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tinyfed flash` (issue 18): the image the probe programs holds the key the store records; the keyed
    copy is gone afterwards; a failed programming leaves no key in the store. pyOCD's probe session is
    stood in for (no probe is attached here): the image handed to it is the real keyed ELF."""
    import sys
    import types

    from click.testing import CliRunner

    from tinyfed.cli import cli
    from tinyfed.firmware_bridge.emulate.provision import image_key
    from tinyfed.firmware_bridge.link.keys import DeviceKey, KeyStore

    programmed: list[tuple[Path, object]] = []
    fail = [False]

    class Session:
        board = types.SimpleNamespace(target=types.SimpleNamespace(reset=lambda: None))

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    class FileProgrammer:
        def __init__(self, session: Session) -> None:
            pass

        def program(self, path: str) -> None:
            if fail[0]:
                raise RuntimeError("flash algorithm timed out")
            programmed.append((Path(path), image_key(Path(path))))

    helpers = types.ModuleType("pyocd.core.helpers")
    helpers.ConnectHelper = types.SimpleNamespace(session_with_chosen_probe=lambda **kw: Session())  # type: ignore[attr-defined]
    programmer = types.ModuleType("pyocd.flash.file_programmer")
    programmer.FileProgrammer = FileProgrammer  # type: ignore[attr-defined]
    for name, module in (("pyocd", types.ModuleType("pyocd")), ("pyocd.core", types.ModuleType("pyocd.core")),
                         ("pyocd.core.helpers", helpers), ("pyocd.flash", types.ModuleType("pyocd.flash")),
                         ("pyocd.flash.file_programmer", programmer)):
        monkeypatch.setitem(sys.modules, name, module)
    store_path = tmp_path / "keys.json"
    elf = builds["nrf52840"].elf
    argv = ["--key-store", str(store_path), "flash", "--board", "nrf52840", "--elf", str(elf)]
    result = CliRunner().invoke(cli, [*argv, "--device-name", "ring-3"])
    assert result.exit_code == 0, result.output
    (device,) = KeyStore(store_path).devices()
    ((image, flashed),) = programmed
    assert isinstance(flashed, DeviceKey) and (flashed.device_id, flashed.key) == (device.device_id, device.key)
    assert device.name == "ring-3" and device.id_hex in result.output
    assert not image.exists() and device.key.hex() not in result.output
    fail[0] = True
    result = CliRunner().invoke(cli, [*argv, "--device-name", "ring-4"])
    assert result.exit_code == 2 and "flash algorithm timed out" in result.output
    assert [d.name for d in KeyStore(store_path).devices()] == ["ring-3"]  # ring-4's key was forgotten
