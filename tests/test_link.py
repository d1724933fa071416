"""The host link against the simulated board: commands, every error reply, faults and recovery.

Hermetic and sleep-free: ``sim://`` boards answer synchronously and their ports carry a virtual
clock, so a timeout costs no real time.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import types
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from serial.serialutil import SerialException

import tinyfed.firmware_bridge.compile as fb_compile
import tinyfed.firmware_bridge.twin as fb_twin
from tinyfed.cli import cli
from tinyfed.errors import DataFileError
from tinyfed.firmware_bridge.link.client import BoardClient, HelloInfo
from tinyfed.firmware_bridge.link.devices import load_device_fleet, write_device_fleet
from tinyfed.firmware_bridge.link.errors import (
    DeviceError,
    DeviceUnreachable,
    LinkTimeout,
    ProtocolVersionMismatch,
)
from tinyfed.firmware_bridge.link.framing import (
    KIND_REQUEST,
    KIND_RESPONSE,
    NAK_SEQ,
    Command,
    FrameReader,
    Status,
    decode_frame,
    encode_frame,
)
from tinyfed.firmware_bridge.link.keys import DeviceKey
from tinyfed.firmware_bridge.link.transport import open_port
from tinyfed.firmware_bridge.twin import sim

sys.path.insert(0, str(Path(__file__).parent))
from _auth import RawHost, sim_exchange  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_sim_boards():
    sim.forget_sim_boards()
    yield
    sim.forget_sim_boards()


def _opaque_blob_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the sim treat blobs as opaque (no parser), whatever lives in the tree."""
    monkeypatch.setitem(sys.modules, "tinyfed.firmware_bridge.compile.blob", None)
    monkeypatch.delattr(fb_compile, "blob", raising=False)


def _fake_kernels(monkeypatch: pytest.MonkeyPatch, *, input_bytes: int, arena_bytes: int = 1000, ops: int = 3) -> None:
    """A stand-in blob parser and kernel: output = reversed input plus one, clipped."""
    blob_mod = types.ModuleType("tinyfed.firmware_bridge.compile.blob")

    def parse_blob(b: bytes):
        if not b.startswith(b"FAKE"):
            err = ValueError("not a fake blob")
            err.status = "BAD_MODEL"  # type: ignore[attr-defined]
            raise err
        return {"input_bytes": input_bytes, "arena_bytes": arena_bytes, "op_count": ops}

    blob_mod.parse_blob = parse_blob  # type: ignore[attr-defined]
    kern = types.ModuleType("tinyfed.firmware_bridge.twin.kernels_np")
    kern.run_blob = lambda b, x: np.clip(x[::-1].astype(np.int16) + 1, -128, 127).astype(np.int8)  # type: ignore[attr-defined]
    for package, mod in ((fb_compile, blob_mod), (fb_twin, kern)):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setattr(package, mod.__name__.rsplit(".", 1)[1], mod, raising=False)


# -- a fault-injecting stream wrapper (in the spirit of nanopb's tests/io_errors) -------------------


class FaultyPort:
    """Sits between a client and a port; corrupts whole frames in either direction.

    Each frame (up to and including its 0x00) going out or coming in is, with probability
    ``p_out``/``p_in``, hit by one corruption: a bit flip, a dropped byte, a duplicated byte, a
    truncation (the tail, delimiter included, is lost), an inserted byte, or the frame lost
    whole. ``vanish_after`` makes the port fail (as an unplugged board) once that many bytes
    were written.
    """

    KINDS = ("bitflip", "drop_byte", "dup_byte", "truncate", "insert_byte", "lose_frame", "dup_frame")

    def __init__(self, inner, *, seed: int = 0, p_out: float = 0.0, p_in: float = 0.0,
                 vanish_after: int | None = None) -> None:
        self.inner = inner
        self.rng = random.Random(seed)
        self.p_out, self.p_in = p_out, p_in
        self.vanish_after = vanish_after
        self.written = 0
        self.injected: Counter[str] = Counter()
        self._rx = bytearray()
        self._out_partial = bytearray()
        self._in_partial = bytearray()
        self.tinyfed_clock = getattr(inner, "tinyfed_clock", None)
        self.is_open = True

    @property
    def total_injected(self) -> int:
        return self.injected["in"] + self.injected["out"]

    @property
    def timeout(self):
        return self.inner.timeout

    @timeout.setter
    def timeout(self, value) -> None:
        self.inner.timeout = value

    def _corrupt(self, frame: bytes, direction: str) -> bytes:
        kind = self.rng.choice(self.KINDS)
        self.injected[kind] += 1
        self.injected[direction] += 1
        b = bytearray(frame)
        i = self.rng.randrange(len(b))
        if kind == "bitflip":
            b[i] ^= 1 << self.rng.randrange(8)
        elif kind == "drop_byte":
            del b[i]
        elif kind == "dup_byte":
            b.insert(i, b[i])
        elif kind == "truncate":
            del b[i:]
        elif kind == "insert_byte":
            b.insert(i, self.rng.randrange(256))
        elif kind == "lose_frame":
            b.clear()
        elif kind == "dup_frame":
            b += frame
        return bytes(b)

    def _frames(self, partial: bytearray, data: bytes) -> list[bytes]:
        partial += data
        out = []
        while (end := partial.find(0)) >= 0:
            out.append(bytes(partial[:end + 1]))
            del partial[:end + 1]
        return out

    def write(self, data: bytes) -> int:
        if self.vanish_after is not None and self.written + len(data) > self.vanish_after:
            self.is_open = False
            raise SerialException("device disconnected (injected)")
        self.written += len(data)
        for frame in self._frames(self._out_partial, data):
            if len(frame) > 1 and self.rng.random() < self.p_out:
                frame = self._corrupt(frame, "out")
            if frame:
                self.inner.write(frame)
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if not self._rx:
            data = self.inner.read(1)  # waits up to the timeout for a first byte
            if data:  # then takes whatever else is there, without waiting
                wait, self.inner.timeout = self.inner.timeout, 0
                data += self.inner.read(65536)
                self.inner.timeout = wait
            for frame in self._frames(self._in_partial, data):
                if len(frame) > 1 and self.rng.random() < self.p_in:
                    frame = self._corrupt(frame, "in")
                self._rx += frame
        out = bytes(self._rx[:size])
        del self._rx[:size]
        return out

    @property
    def in_waiting(self) -> int:
        return len(self._rx) + self.inner.in_waiting

    def close(self) -> None:
        self.inner.close()


def _client(url: str, **kw) -> BoardClient:
    return BoardClient(url, **kw).open()


# -- commands -------------------------------------------------------------------------------


def test_hello_reports_the_board() -> None:
    with BoardClient("sim://nrf52840?max_payload=128&build=v9") as c:
        info = c.hello()
    assert isinstance(info, HelloInfo)
    assert (info.board_id, info.build, info.protocol_version, info.max_payload) == ("nrf52840", "v9", 2, 128)
    assert info.arena_bytes == (256 - 10) * 1024  # the board profile's fragment RAM budget (linker-map reserve)


def test_ping_echoes_and_limits_payload_before_hello() -> None:
    with BoardClient("sim://x") as c:
        assert c.ping(b"\x00" * 64) >= 0
        with pytest.raises(Exception, match="exceeds 64"):
            c.ping(b"a" * 65)
        c.hello()
        c.ping(b"\x00\xff" * 128)


def test_wrong_protocol_version_is_refused_naming_device_and_command() -> None:
    with BoardClient("sim://old?protocol_version=1", name="watch-7") as c, \
            pytest.raises(ProtocolVersionMismatch) as info:
        c.hello()
    e = info.value
    assert e.board_version == 1 and e.device == "watch-7" and e.command == "HELLO"
    assert "watch-7" in str(e) and "flash" in str(e)


def test_unreachable_port_is_typed() -> None:
    with socket.socket() as s:  # bound, never listening: refused, and no parallel test can take the port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(DeviceUnreachable) as info:
            BoardClient(f"socket://127.0.0.1:{port}", name="gone").open()
    assert info.value.device == "gone" and "emulator" in str(info.value)
    with pytest.raises(DeviceUnreachable):
        open_port("nosuch://x")
    with pytest.raises(DeviceUnreachable):
        open_port("sim://x?bogus=1")


def test_load_commit_makes_the_fragment_active(monkeypatch) -> None:
    _opaque_blob_parser(monkeypatch)
    blob = random.Random(2).randbytes(3000)
    seen = []
    with BoardClient("sim://nrf52840?max_payload=100&name=L") as c:
        r = c.load_fragment(blob, progress=lambda done, total: seen.append(done))
    assert r.size == 3000 and r.resumed_from == 0 and r.chunks == 40  # ceil(3000 / (100 - 20 - 4))
    assert seen[0] == 0 and seen[-1] == 3000 and seen == sorted(seen)
    assert sim.get_sim_board("nrf52840", "L").active.blob == blob


def test_seq_skips_the_nak_value() -> None:
    c = BoardClient("sim://x")
    c._seq = 0xFFFD
    assert [c._next_seq() for _ in range(3)] == [0xFFFE, 0, 1]


def test_reset_loses_all_state(monkeypatch) -> None:
    _opaque_blob_parser(monkeypatch)
    with BoardClient("sim://x?name=R") as c:
        c.load_fragment(b"abc" * 10)
        c.reset()
        with pytest.raises(DeviceError) as info:
            c.infer(np.zeros(4, np.int8))
    assert info.value.status == Status.NO_MODEL


def test_infer_chunks_input_and_reads_the_rest_of_the_output(monkeypatch) -> None:
    _fake_kernels(monkeypatch, input_bytes=700)
    x = np.random.default_rng(0).integers(-128, 127, 700, dtype=np.int8)
    with BoardClient("sim://x?max_payload=64") as c:
        c.load_fragment(b"FAKE" + bytes(200))
        y = c.infer(x)
        assert c.stats.requests > 700 // 60 + 700 // 64
    assert np.array_equal(y, np.clip(x[::-1].astype(np.int16) + 1, -128, 127).astype(np.int8))


# -- every error reply ------------------------------------------------------------------------


def _raw(board: sim.SimBoard, code: int, seq: int, payload: bytes = b""):
    out = FrameReader(10_000).feed(board.receive(encode_frame(KIND_REQUEST, code, seq, payload)))
    return [decode_frame(f) for f in out]


def _status(exc: DeviceError) -> str:
    return exc.status_name


def test_every_error_status(monkeypatch) -> None:
    _fake_kernels(monkeypatch, input_bytes=10, arena_bytes=500)
    with BoardClient("sim://x?slot_bytes=4096&arena_bytes=1000&max_payload=64", name="dev") as c:
        c.hello()
        errors: dict[str, DeviceError] = {}

        def expect(name: str, fn) -> None:
            with pytest.raises(DeviceError) as info:
                fn()
            assert info.value.status_name == name, info.value
            assert info.value.device == "dev" and info.value.fix
            errors[name] = info.value

        expect("UNKNOWN_COMMAND", lambda: c.request(0x7F))
        expect("FRAGMENT_TOO_LARGE", lambda: c.load_fragment(bytes(5000)))
        expect("NO_MODEL", lambda: c.infer(np.zeros(10, np.int8)))
        expect("NO_MODEL", lambda: c.request(Command.OUTPUT_READ, struct.pack("<IH", 0, 1)))
        expect("BAD_LENGTH", lambda: c.request(Command.HELLO, b"\x01\x02"))
        expect("BAD_LENGTH", lambda: c.request(Command.LOAD_BEGIN, b"\x01"))
        # a transfer whose announced CRC is wrong fails at commit, with BAD_CRC
        c.request(Command.LOAD_BEGIN, struct.pack("<II", 8, 1234))
        c.request(Command.LOAD_CHUNK, struct.pack("<I", 0) + b"FAKE1234")
        expect("BAD_CRC", lambda: c.request(Command.LOAD_COMMIT))
        # chunks out of order, past the end, commit before all bytes
        c.request(Command.LOAD_BEGIN, struct.pack("<II", 8, zlib.crc32(b"FAKE1234")))
        # (a windowed board holds a chunk past a gap, but only one that starts on a word)
        expect("OUT_OF_ORDER", lambda: c.request(Command.LOAD_CHUNK, struct.pack("<I", 2) + b"KE12"))
        assert errors["OUT_OF_ORDER"].detail == 0
        expect("BAD_LENGTH", lambda: c.request(Command.LOAD_CHUNK, struct.pack("<I", 0) + b"FAKE12345"))
        c.request(Command.LOAD_CHUNK, struct.pack("<I", 0) + b"FAKE")
        expect("BAD_LENGTH", lambda: c.request(Command.LOAD_COMMIT))
        expect("BAD_MODEL", lambda: c.load_fragment(b"JUNK" * 4))
        monkeypatch.setattr(fb_compile.blob, "parse_blob",
                            lambda b: {"input_bytes": 10, "arena_bytes": 5000, "op_count": 1})
        expect("OUT_OF_MEMORY", lambda: c.load_fragment(b"FAKEbig"))
        monkeypatch.setattr(fb_compile.blob, "parse_blob",
                            lambda b: {"input_bytes": 10, "arena_bytes": 10, "op_count": 1})
        c.load_fragment(b"FAKE ok")

        def unsupported(b, x):
            e = RuntimeError("op CONV_3D")
            e.status = Status.UNSUPPORTED_OP  # type: ignore[attr-defined]
            e.detail = 71  # type: ignore[attr-defined]
            raise e

        monkeypatch.setattr(fb_twin.kernels_np, "run_blob", unsupported)
        expect("UNSUPPORTED_OP", lambda: c.infer(np.zeros(10, np.int8)))
        assert errors["UNSUPPORTED_OP"].detail == 71 and "CONV_3D" in errors["UNSUPPORTED_OP"].message
        expect("BAD_LENGTH", lambda: c.infer(np.zeros(11, np.int8)))
        # any offset inside the input tensor is written, as on the firmware (a window may reorder nothing, but
        # a lost piece is resent after later ones)
        assert c.request(Command.INPUT_WRITE, struct.pack("<I", 5) + b"x") == struct.pack("<I", 6)
        expect("BAD_LENGTH", lambda: c.request(Command.INPUT_WRITE, struct.pack("<I", 10) + b"x"))
    assert "INVOKE" in str(errors["UNSUPPORTED_OP"]) and "dev" in str(errors["UNSUPPORTED_OP"])


def test_invoke_without_kernels_is_unsupported_op(monkeypatch) -> None:
    _opaque_blob_parser(monkeypatch)
    with BoardClient("sim://x") as c:
        c.load_fragment(b"anything")
        with pytest.raises(DeviceError) as info:
            c.request(Command.INVOKE)
    assert info.value.status == Status.UNSUPPORTED_OP


def test_board_naks_damaged_frames_once_per_delimiter_and_drops_unreadable_ones() -> None:
    board = sim.SimBoard(sim.SimConfig(max_payload=32))
    frame = bytearray(encode_frame(KIND_REQUEST, Command.PING, 5, b"hello"))
    frame[10] ^= 0x40
    (nak,) = [decode_frame(f) for f in FrameReader(1000).feed(board.receive(bytes(frame)))]
    assert (nak.code, nak.seq) == (Status.BAD_CRC, NAK_SEQ) and nak.is_nak
    reply = board.receive(encode_frame(KIND_REQUEST, 2, 6, b"x" * 33))
    (nak,) = [decode_frame(f) for f in FrameReader(1000).feed(reply)]
    assert (nak.code, nak.seq) == (Status.FRAME_TOO_LARGE, NAK_SEQ)
    assert board.receive(b"\x05\x01\x00") == b""  # not even a header: dropped silently
    assert board.receive(encode_frame(KIND_RESPONSE, Status.OK, 7)) == b""  # a response sent to the board
    assert board.receive(b"\x00\x00") == b""
    # another packet version is answered with WRONG_VERSION and the board's version
    (r,) = [decode_frame(f) for f in FrameReader(1000).feed(
        board.receive(encode_frame(KIND_REQUEST, Command.PING, 8, b"", version=3)))]
    assert r.code == Status.WRONG_VERSION and struct.unpack_from("<H", r.payload)[0] == 2


def test_duplicate_seq_replays_without_executing_again() -> None:
    board = sim.SimBoard(key=DeviceKey.generate())
    host = RawHost(sim_exchange(board.receive), board.device_key)
    host.hello()
    host.send(Command.LOAD_BEGIN, struct.pack("<II", 8, zlib.crc32(b"abcdefgh")))
    chunk = host.frame(Command.LOAD_CHUNK, struct.pack("<I", 0) + b"abcd")
    first, again = host.exchange(chunk), host.exchange(chunk)  # an authentic retransmission
    assert first == again and struct.unpack("<I", first[0].payload[:4])[0] == 4
    assert board.stats.replays == 1 and board.transfer.offset == 4


# -- timeouts and faults ------------------------------------------------------------------------


def test_silent_board_times_out_after_every_retry_without_real_waiting() -> None:
    inner = open_port("sim://x")
    port = FaultyPort(inner, p_out=1.0)
    port.KINDS = ("lose_frame",)
    c = BoardClient("sim://x", port=port, timeout=0.5, retries=3, name="mute")
    with pytest.raises(LinkTimeout) as info:
        c.ping(b"")
    e = info.value
    assert e.attempts == 4 and e.command == "PING" and e.device == "mute"
    wire = c._wire_time(len(encode_frame(KIND_REQUEST, Command.PING, 0)))
    assert e.waited_s == pytest.approx((0.5 + wire) * (1 + 2 + 4 + 8))  # doubled per retry
    assert c.stats.timeouts == 4


def test_nak_triggers_an_immediate_retransmission() -> None:
    inner = open_port("sim://x")
    port = FaultyPort(inner, seed=3, p_out=1.0)
    port.KINDS = ("bitflip",)
    c = BoardClient("sim://x", port=port, retries=20)
    with pytest.raises(LinkTimeout):
        c.ping(b"abc")
    # most flips leave the header readable: the board NAKs and the host resends without waiting
    assert c.stats.naks > c.stats.timeouts and c.stats.retransmissions == 20


FUZZ_CORRUPTIONS = 10_000


def test_fuzz_10000_corruptions_never_accept_a_corrupted_payload(monkeypatch) -> None:
    """Random corruptions of valid frames both ways: every exchange ends correct or not at all."""
    _fake_kernels(monkeypatch, input_bytes=300)
    rng = random.Random(1234)
    inner = open_port("sim://fuzz?max_payload=128&name=F")
    port = FaultyPort(inner, seed=99, p_out=0.25, p_in=0.25)
    c = BoardClient("sim://fuzz", port=port, retries=30, name="fuzz")
    board = sim.get_sim_board("fuzz", "F")
    info = c.hello()
    assert info.max_payload == 128
    accepted_corrupt = 0
    ops = Counter()
    while port.total_injected < FUZZ_CORRUPTIONS:
        op = rng.random()
        if op < 0.6:
            payload = rng.randbytes(rng.randrange(0, 129))
            echo = c.request(Command.PING, payload)
            accepted_corrupt += echo != payload
            ops["ping"] += 1
        elif op < 0.85:
            blob = b"FAKE" + rng.randbytes(rng.randrange(100, 1500))
            c.load_fragment(blob)
            accepted_corrupt += board.active.blob != blob
            ops["load"] += 1
        else:
            if board.active is None:
                continue
            x = np.frombuffer(rng.randbytes(300), np.int8)
            y = c.infer(x)
            accepted_corrupt += not np.array_equal(y, np.clip(x[::-1].astype(np.int16) + 1, -128, 127).astype(np.int8))
            ops["infer"] += 1
    injected = port.total_injected
    print(f"\nfuzz: {injected} corruptions ({dict(port.injected)}), ops {dict(ops)}, "
          f"accepted corrupt {accepted_corrupt}, link {c.stats.to_dict()}, board naks {board.stats.naks} "
          f"replays {board.stats.replays}")
    assert injected >= FUZZ_CORRUPTIONS
    assert accepted_corrupt == 0
    assert c.stats.retransmissions > 0 and board.stats.replays > 0 and board.stats.naks > 0
    # the session is healthy afterwards
    port.p_out = port.p_in = 0.0
    before = c.stats.retransmissions
    assert c.ping(b"after") >= 0 and c.stats.retransmissions == before


def test_upload_resumes_after_a_dropped_connection(monkeypatch) -> None:
    _opaque_blob_parser(monkeypatch)
    url = "sim://nrf52840?name=resume&max_payload=256"
    old, new = b"old fragment" * 20, random.Random(5).randbytes(20_000)
    with BoardClient(url) as c:
        c.load_fragment(old)
    board = sim.get_sim_board("nrf52840", "resume")
    port = FaultyPort(open_port(url), vanish_after=8_000)
    c = BoardClient(url, port=port, name="watch-1")
    with pytest.raises(DeviceUnreachable) as info:
        c.load_fragment(new)
    assert info.value.command == "LOAD_CHUNK" and info.value.device == "watch-1"
    assert board.active.blob == old  # the previous fragment stays active
    done = board.transfer.offset
    assert 6_000 < done < 8_000
    with BoardClient(url) as c2:  # a new connection: the transfer resumes where it stopped
        r = c2.load_fragment(new)
    assert r.resumed_from == done and r.chunks == -(-(len(new) - done) // 232)
    assert board.active.blob == new


def test_device_vanishing_mid_upload_keeps_the_previous_fragment(monkeypatch) -> None:
    _opaque_blob_parser(monkeypatch)
    url = "sim://nrf52840?name=vanish"
    with BoardClient(url) as c:
        c.load_fragment(b"A" * 1000)
        board = sim.get_sim_board("nrf52840", "vanish")

        def unplug(done: int, total: int) -> None:
            if done > 2000:
                board.unplugged = True

        with pytest.raises(DeviceUnreachable) as info:
            c.load_fragment(b"B" * 5000, progress=unplug)
    assert "went away" in str(info.value) and info.value.command == "LOAD_CHUNK"
    assert board.active.blob == b"A" * 1000
    board.unplugged = False
    with BoardClient(url) as c:
        assert c.load_fragment(b"B" * 5000).resumed_from > 2000
    assert board.active.blob == b"B" * 5000


def test_failed_commit_keeps_the_previous_fragment(monkeypatch) -> None:
    _fake_kernels(monkeypatch, input_bytes=4)
    with BoardClient("sim://x?name=C") as c:
        c.load_fragment(b"FAKEgood")
        with pytest.raises(DeviceError):
            c.load_fragment(b"JUNKJUNK")
        assert np.array_equal(c.infer(np.array([1, 2, 3, 4], np.int8)), [5, 4, 3, 2])
    assert sim.get_sim_board("x", "C").active.blob == b"FAKEgood"


def test_bench_on_sim() -> None:
    with BoardClient("sim://nrf52840") as c:
        r = c.bench(samples=20)
    assert r.rtt_min_s > 0 and r.echo_payload == 256 and r.echo_bytes_per_s > 0


# -- fleets with URLs and `tinyfed devices` -----------------------------------------------------


def _dead_socket_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"socket://127.0.0.1:{s.getsockname()[1]}"


def test_device_fleet_file_formats(tmp_path: Path) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text('name = "p"\n[[boards]]\nboard = "nrf52840"\ncount = 2\n')
    f = load_device_fleet(plain)
    assert [d.url for d in f.devices] == [None, None] and f.linked == []
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('name = "m"\n[[boards]]\nboard = "nrf52840"\nurl = "sim://a"\n'
                     '[[boards]]\nboard = "rp2040"\ncount = 3\nurls = ["sim://b"]\n')
    f = load_device_fleet(mixed)
    assert [(d.board, d.url) for d in f.devices] == [("nrf52840", "sim://a"), ("rp2040", "sim://b"), ("rp2040", None),
                                                     ("rp2040", None)]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\n[[boards]]\nboard = "nrf5284"\ncount = 1\nurls = ["a", "b"]\n')
    with pytest.raises(DataFileError) as info:
        load_device_fleet(bad)
    assert "did you mean 'nrf52840'" in str(info.value) and "count = 1" in str(info.value)
    out = write_device_fleet(tmp_path / "w.toml", "w", [("mps2-an386", ["socket://127.0.0.1:1", 'sim://x?name="q"'])])
    assert [d.url for d in load_device_fleet(out).devices] == ["socket://127.0.0.1:1", 'sim://x?name="q"']


def test_cli_devices_lists_reachable_and_unreachable(tmp_path: Path) -> None:
    dead = _dead_socket_url()
    fleet = write_device_fleet(tmp_path / "f.toml", "lab", [
        ("nrf52840", ["sim://nrf52840?name=d1", "sim://nrf52840?name=d2&build=v2"]),
        ("mps2-an386", [dead]),
    ])
    result = CliRunner().invoke(cli, ["devices", "--fleet", str(fleet), "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    rows = doc["devices"]
    assert [r["reachable"] for r in rows] == [True, True, False]
    assert rows[1]["hello"]["build"] == "v2" and rows[0]["hello"]["board_id"] == "nrf52840"
    assert rows[0]["rtt_s"] > 0
    assert rows[2]["error_type"] == "DeviceUnreachable" and rows[2]["url"] == dead
    text = CliRunner().invoke(cli, ["devices", "--fleet", str(fleet)])
    assert text.exit_code == 1
    assert "unreachable" in text.stdout and "tinyfed-sim 1" in text.stdout and "v2" in text.stdout
    # piped: whole rows, no padding to the table's (or a 1000-column console's) width
    assert all(line == line.rstrip() for line in text.stdout.splitlines()), text.stdout
    assert max(len(line) for line in text.stdout.splitlines()) < 250
    ok = write_device_fleet(tmp_path / "ok.toml", "ok", [("nrf52840", ["sim://nrf52840"])])
    assert CliRunner().invoke(cli, ["devices", "--fleet", str(ok)]).exit_code == 0
    missing = CliRunner().invoke(cli, ["devices", "--fleet", str(tmp_path / "nope.toml"), "--json"])
    assert missing.exit_code == 2 and json.loads(missing.stdout)["error"] == "BoardError"


def test_cli_devices_scan_lists_the_serial_ports_pyserial_sees() -> None:
    from serial.tools import list_ports

    result = CliRunner().invoke(cli, ["devices", "--scan", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["device"] for p in doc["serial_ports"]] == sorted(p.device for p in list_ports.comports())
    assert isinstance(doc["probes"], list) and (doc["probes"] or doc["probe_problem"] is None
                                                or "pyOCD" in doc["probe_problem"])
    text = CliRunner().invoke(cli, ["devices", "--scan"])
    assert text.exit_code == 0 and ("serial ports" in text.output or "no serial ports" in text.output)
    mixed = CliRunner().invoke(cli, ["devices", "--scan", "--url", "sim://nrf52840"])
    assert mixed.exit_code == 2 and "drop --fleet/--url" in mixed.output


def test_cli_devices_and_check_take_one_url_instead_of_a_fleet() -> None:
    result = CliRunner().invoke(cli, ["devices", "--url", "sim://nrf52840?name=solo", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["devices"]
    assert len(rows) == 1 and rows[0]["reachable"] and rows[0]["hello"]["board_id"] == "nrf52840"
    for command in (["devices"], ["check", "har_cnn"]):
        neither = CliRunner().invoke(cli, command)
        both = CliRunner().invoke(cli, [*command, "--fleet", "smartwatch", "--url", "sim://nrf52840"])
        for r in (neither, both):
            assert r.exit_code == 2 and "give exactly one of --fleet FLEET and --url URL" in r.output


@pytest.mark.parametrize("command", [["devices"], ["check", "har_cnn"], ["run", "--max-versions", "1"]])
def test_a_preset_fleet_is_found_by_name_and_refused_for_having_no_urls(command: list[str], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--fleet smartwatch` names the shipped preset in every command, as in `plan`; it lists board
    kinds and counts only, so the commands that talk to boards say so (exit 2) and leave no run."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [*command, "--fleet", "smartwatch"])
    assert result.exit_code == 2, result.output
    assert "fleet 'smartwatch' lists board kinds and counts but no device URLs" in result.output
    assert "--simulate N" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
    typo = CliRunner().invoke(cli, [*command, "--fleet", "smartwach"])
    assert typo.exit_code == 2 and "did you mean 'smartwatch'" in typo.output


# -- inference through sim:// with real blobs, checked against TFLM --------------------------------


@pytest.mark.slow
def test_cli_check_is_bit_exact_through_sim_and_reports_unreachable(tmp_path: Path) -> None:
    import _models

    model = tmp_path / "chain.tflite"
    model.write_bytes(_models.chain_cnn_int8())
    fleet = write_device_fleet(tmp_path / "f.toml", "lab", [("nrf52840", ["sim://nrf52840?name=c1",
                                                                          "sim://nrf52840?name=c2&max_payload=64"])])
    result = CliRunner().invoke(cli, ["check", str(model), "--fleet", str(fleet), "--samples", "6", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["fragment"] == "whole model"
    for row in doc["devices"]:
        assert (row["samples"], row["mismatches"], row["max_abs_diff"], row["error"]) == (6, 0, 0, None)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.random.default_rng(1).normal(size=(3, *_models.INPUT_SHAPE)).astype(np.float32))
    dead = write_device_fleet(tmp_path / "d.toml", "d", [("nrf52840", ["sim://nrf52840?name=c3", _dead_socket_url()])])
    result = CliRunner().invoke(cli, ["check", str(model), "--fleet", str(dead), "--data", str(npz)])
    assert result.exit_code == 1
    assert "bit-exact" in result.stdout and "DeviceUnreachable" in result.stdout


@pytest.mark.slow
def test_infer_real_blob_matches_tflm_under_corruption(tmp_path: Path) -> None:
    import _models

    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.models.tflm import TflmModel

    tfl = _models.chain_cnn_int8()
    blob = compile_blob(tfl)
    ref = TflmModel(tfl)
    x = np.random.default_rng(3).integers(-128, 128, size=(8, *_models.INPUT_SHAPE), dtype=np.int8)
    want = ref.run(x)
    port = FaultyPort(open_port("sim://nrf52840?max_payload=64"), seed=7, p_out=0.2, p_in=0.2)
    c = BoardClient("sim://nrf52840", port=port, retries=30)
    c.load_fragment(blob)
    for i in range(len(x)):
        assert np.array_equal(c.infer(x[i:i + 1]), want[i].reshape(-1))
    assert port.total_injected > 0


def test_pyserial_opens_sim_urls_once_tinyfed_firmware_bridge_is_imported() -> None:
    import serial

    port = serial.serial_for_url("sim://nrf52840?name=raw", timeout=0.1)
    port.write(encode_frame(KIND_REQUEST, Command.PING, 9, b"raw"))
    (pkt,) = [decode_frame(f) for f in FrameReader(1000).feed(port.read(100))]
    assert (pkt.kind, pkt.code, pkt.seq, pkt.payload) == (KIND_RESPONSE, Status.OK, 9, b"raw")
    assert port.read(1) == b"" and port.tinyfed_clock() == pytest.approx(0.1)  # virtual time, no waiting


def test_a_board_silent_on_train_costs_the_train_timeout_not_the_retry_series() -> None:
    """TRAIN's timeout bounds the whole request: a board that never answers is given up after it
    (it once cost 5 + 10 + ... + 160 = 315 s for a 5 s timeout)."""
    from tinyfed.firmware_bridge.link.train_link import TrainParams

    inner = open_port("sim://x")
    port = FaultyPort(inner, p_out=1.0)
    port.KINDS = ("lose_frame",)
    port.p_out = 0.0
    c = BoardClient("sim://x", port=port, timeout=0.5, retries=5, name="mute")
    c.hello()
    port.p_out = 1.0
    with pytest.raises(LinkTimeout) as info:
        c.train(TrainParams(version=0, epochs=1, batch_size=1, lr=0.01, seed=0), timeout=5.0)
    assert info.value.command == "TRAIN" and info.value.waited_s == pytest.approx(5.0)
