"""Protocol v2 authentication on the ``sim://`` twin (the same checks run on a QEMU board in
tests/test_emulator.py): a board obeys only its host, the host accepts only its boards."""

from __future__ import annotations

import os
import re
import struct
import sys
from pathlib import Path

import pytest

from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.errors import AuthenticationFailed, UnknownDevice
from tinyfed.firmware_bridge.link.framing import (
    AUTH_MESSAGES,
    KIND_RESPONSE,
    UNAUTHENTICATED,
    AuthDetail,
    Command,
    FrameReader,
    Status,
    decode_frame,
    encode_frame,
)
from tinyfed.firmware_bridge.link.keys import DeviceKey, KeyStore
from tinyfed.firmware_bridge.link.transport import open_port
from tinyfed.firmware_bridge.twin import sim

sys.path.insert(0, str(Path(__file__).parent))
from _auth import RawHost, bare_frame, detail, sim_exchange  # noqa: E402
from fake_board import FakeBoard  # noqa: E402

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"

#: The commands an attacker most wants, each with a body a v1 host would have sent.
GUARDED = {
    Command.LOAD_BEGIN: struct.pack("<II", 64, 0),
    Command.LOAD_CHUNK: struct.pack("<I", 0) + b"\xaa" * 32,
    Command.TRAIN_SET: struct.pack("<II", 7, 0) + b"\x00" * 16,
    Command.TRAIN: bytes(25),
    Command.UPDATE_READ: struct.pack("<IH", 0, 24),
    Command.EVALUATE: struct.pack("<I", 0),
    Command.INPUT_WRITE: struct.pack("<I", 0) + b"\x01" * 8,
}


@pytest.fixture(autouse=True)
def _fresh_sim_boards():
    sim.forget_sim_boards()
    yield
    sim.forget_sim_boards()


def _keyed_board() -> tuple[sim.SimBoard, RawHost]:
    board = sim.SimBoard(sim.SimConfig.for_board("mps2-an386"), key=DeviceKey.generate("t"))
    host = RawHost(sim_exchange(board.receive), board.device_key)
    host.hello()
    return board, host


def test_requests_without_a_valid_tag_are_refused_and_change_nothing() -> None:
    board, host = _keyed_board()
    executed = dict(board.stats.executed)
    for code, body in GUARDED.items():
        bare = host.exchange(bare_frame(code, host.next_seq(), body))[0]  # no counter, no tag: a v1 request
        assert (bare.code, detail(bare)) == (Status.AUTH, AuthDetail.TOO_SHORT if len(body) < 20
                                             else AuthDetail.BAD_MAC), Command.NAMES[code]
        forger = _with_other_key(host)
        (pkt,) = host.exchange(forger.frame(code, body))
        host.seq = forger.seq
        assert (pkt.code, detail(pkt)) == (Status.AUTH, AuthDetail.BAD_MAC)
        assert bare.payload[2:].decode() in AUTH_MESSAGES.values() and len(pkt.payload) < 80  # untagged hints
    assert board.stats.executed == executed  # nothing ran
    assert board.transfer is None and board.trainer.version == 0 and not board._input
    # the real host still gets its answers: the refusals cost it nothing
    assert host.send(Command.LOAD_BEGIN, struct.pack("<II", 64, 0)).code == Status.OK


def _with_other_key(host: RawHost) -> RawHost:
    """A host in the same session (seq, counter) whose session key is wrong."""
    from tinyfed.firmware_bridge.link.framing import SessionMac

    other = RawHost(host.exchange, None)
    other.session, other.seq, other.counter = SessionMac(os.urandom(32)), host.seq, host.counter
    return other


def test_a_replayed_request_is_refused_and_a_retransmission_is_answered_not_rerun() -> None:
    board, host = _keyed_board()
    begin = host.frame(Command.LOAD_BEGIN, struct.pack("<II", 8, 0))
    first = host.exchange(begin)
    assert host.exchange(begin) == first  # the same bytes again: an authentic retransmission
    chunk = host.send(Command.LOAD_CHUNK, struct.pack("<I", 0) + b"abcd")
    assert chunk.code == Status.OK and board.transfer.offset == 4
    (replayed,) = host.exchange(begin)  # recorded earlier, sent after a newer request
    assert (replayed.code, detail(replayed)) == (Status.AUTH, AuthDetail.REPLAYED_COUNTER)
    assert board.transfer.offset == 4 and board.stats.executed["LOAD_BEGIN"] == 1
    host.hello()  # a new session: the old frame's tag no longer verifies
    (stale,) = host.exchange(begin)
    assert (stale.code, detail(stale)) == (Status.AUTH, AuthDetail.BAD_MAC)


def test_no_session_then_a_session_after_hello() -> None:
    board = sim.SimBoard(key=DeviceKey.generate())
    host = RawHost(sim_exchange(board.receive), board.device_key)
    (pkt,) = host.exchange(bare_frame(Command.STATS, 1, bytes(20)))
    assert (pkt.code, detail(pkt)) == (Status.AUTH, AuthDetail.NO_SESSION)
    hello = host.hello()
    assert hello.payload[-1] == 1 and board.device_key.device_id in hello.payload
    assert host.send(Command.STATS).code == Status.OK


class ForgingPort:
    """Between a client and a sim:// port: answers every authenticated request first with a forged
    OK response (right seq, valid CRC, a made-up tag); ``mute`` keeps the real board from hearing it."""

    def __init__(self, inner, *, mute: bool = False) -> None:
        self.inner, self.mute = inner, mute
        self.tinyfed_clock = inner.tinyfed_clock
        self.is_open = True
        self.forged = 0
        self._pending = bytearray()

    @property
    def timeout(self):
        return self.inner.timeout

    @timeout.setter
    def timeout(self, value) -> None:
        self.inner.timeout = value

    def write(self, data: bytes) -> int:
        guarded = False
        for frame in FrameReader(1 << 16).feed(bytes(data)):
            pkt = decode_frame(frame)
            if pkt.code not in UNAUTHENTICATED:
                guarded = True
                self._pending += encode_frame(KIND_RESPONSE, Status.OK, pkt.seq, os.urandom(4 + 16))
                self.forged += 1
        if not (self.mute and guarded):
            self.inner.write(data)
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if self._pending:
            out = bytes(self._pending[:size])
            del self._pending[:size]
            return out
        return self.inner.read(size)

    def close(self) -> None:
        self.inner.close()


def test_the_host_drops_forged_responses_and_accepts_nothing_without_an_authentic_one() -> None:
    url = "sim://mps2-an386?name=forge"
    port = ForgingPort(open_port(url))
    c = BoardClient(url, port=port, name="forge")
    c.hello()  # the confirmation's forged answer is dropped, the board's own is taken
    assert c.request(Command.LOAD_BEGIN, struct.pack("<II", 8, 0)) == struct.pack("<I", 0)
    assert c.stats.bad_macs == port.forged == 2
    port.mute = True  # from now on only the forger answers
    with pytest.raises(AuthenticationFailed) as info:
        BoardClient(url, port=port, timeout=0.05, retries=2, name="forge").request(Command.LOAD_BEGIN,
                                                                                    struct.pack("<II", 8, 0))
    assert info.value.reason == "bad_mac" and "wrong tag" in str(info.value)


def test_unknown_keyless_and_impostor_boards_are_refused(tmp_path) -> None:
    with BoardClient("sim://mps2-an386?key=none", name="blank") as c, pytest.raises(AuthenticationFailed) as info:
        c.hello()
    assert info.value.reason == "no_key" and c.info is None
    with BoardClient("sim://mps2-an386?name=elsewhere", key_store=KeyStore(tmp_path / "other.json")) as c, \
            pytest.raises(UnknownDevice) as unknown:
        c.hello()
    assert unknown.value.reason == "unknown_device" and unknown.value.device_id_hex in str(unknown.value)
    # a program answering HELLO with a made-up device id, and one with a provisioned board's id but not its key
    victim = sim.get_sim_board("mps2-an386", "victim").device_key
    assert victim is not None
    for identity, error in ((DeviceKey.generate(), UnknownDevice), (DeviceKey(victim.device_id, os.urandom(32)), None)):
        with FakeBoard("honest", key=identity) as fake, BoardClient(fake.url, name="fake", timeout=0.3) as c:
            with pytest.raises(AuthenticationFailed) as info:
                c.hello()
            assert isinstance(info.value, error) if error else info.value.reason == "bad_mac"
            assert c.info is None and set(fake.board.stats.executed) <= {"HELLO", "PING"}


def test_every_refusal_message_is_the_firmware_s() -> None:
    text = (FIRMWARE / "src" / "protocol.c").read_text()
    why = re.search(r"why\[\] = \{(.*?)\};", text, re.DOTALL)
    assert why is not None
    board_side = re.findall(r'"([^"]*)"', why.group(1))
    assert board_side == [""] + [AUTH_MESSAGES[d] for d in sorted(AUTH_MESSAGES)]


def test_a_simulated_board_takes_its_key_out_of_the_store_when_it_goes() -> None:
    """A sim:// board lives as long as its process: the key recorded for it at creation leaves the
    store with it, so `tinyfed run --simulate` does not grow the user's key store run after run."""
    store = KeyStore()
    before = {d.device_id for d in store.devices()}
    board = sim.get_sim_board("mps2-an386", "leaver")
    assert board.device_key is not None and board.device_key.device_id in store
    sim.forget_sim_boards()
    assert {d.device_id for d in store.devices()} == before
