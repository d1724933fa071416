"""The windowed transfer (docs/protocol.md, "Windowed transfers") on the ``sim://`` board.

A scripted port sits between the client and a simulated board and loses, duplicates or reorders
whole frames chosen by the test, so each case is exact: a request lost at every position of a
window, an answer lost at every position, a gap resent alone, duplicated and reordered acks, the
fallback to stop-and-wait, and an update read under loss. Sleep-free: the sim's virtual clock.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.framing import COUNTER_BYTES, Command, decode_frame
from tinyfed.firmware_bridge.link.transport import open_port
from tinyfed.firmware_bridge.link.window import ReceiveWindow, announced_window
from tinyfed.firmware_bridge.twin import sim

#: max_payload 256: 232-byte chunks (256 less counter, tag and offset), a window of 7 frames
CHUNK = 232
WINDOW = announced_window(256)
#: A blob of 20 whole chunks and a tail that is not a whole word (the last chunk ends unaligned).
BLOB = random.Random(20).randbytes(20 * CHUNK + 17)

#: Where each command's offset sits in its body.
_OFFSET_AT = {Command.LOAD_CHUNK: 0, Command.INPUT_WRITE: 0, Command.UPDATE_READ: 0, Command.OUTPUT_READ: 0,
              Command.TRAIN_SET: 4}

Rule = Callable[[int, int, int], bool]  # (command, offset, how many times that piece was sent before) -> act


@pytest.fixture(autouse=True)
def _fresh_sim_boards():
    sim.forget_sim_boards()
    yield
    sim.forget_sim_boards()


class ScriptedPort:
    """A ``sim://`` port whose frames a test loses, duplicates or reorders, by rule.

    ``lose_request`` and ``lose_answer`` pick whole frames by (command, offset, earlier sends of
    that piece); ``double_answers`` delivers every answer twice; ``late_answer`` holds the answer
    it picks back until the next one has been delivered. ``sent`` records every request written as
    (command, offset); ``peak_in_flight`` the most requests written and not yet answered.
    """

    def __init__(self, url: str, *, lose_request: Rule | None = None, lose_answer: Rule | None = None,
                 double_answers: bool = False, late_answer: Rule | None = None) -> None:
        self.inner = open_port(url)
        self.board = self.inner.board
        self.tinyfed_clock = self.inner.tinyfed_clock
        self.lose_request, self.lose_answer, self.late_answer = lose_request, lose_answer, late_answer
        self.double_answers = double_answers
        self.sent: list[tuple[int, int]] = []
        self.lost: list[tuple[str, int, int]] = []
        self.in_flight = self.peak_in_flight = 0
        self.timeout: float | None = 0.5
        self.is_open = True
        self._rx = bytearray()
        self._held: bytes | None = None
        self._partial = bytearray()

    def _piece(self, frame: bytes) -> tuple[int, int, int] | None:
        pkt = decode_frame(frame[:-1])
        at = _OFFSET_AT.get(pkt.code)
        if at is None:
            return None
        offset = struct.unpack_from("<I", pkt.payload, COUNTER_BYTES + at)[0]
        return pkt.code, offset, self.sent.count((pkt.code, offset))

    def write(self, data: bytes) -> int:
        self._partial += data
        while (end := self._partial.find(0)) >= 0:
            frame, self._partial = bytes(self._partial[:end + 1]), self._partial[end + 1:]
            if len(frame) == 1:
                continue
            piece = self._piece(frame)
            if piece is not None:
                self.sent.append(piece[:2])
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            if piece is not None and self.lose_request is not None and self.lose_request(*piece):
                self.lost.append(("request", *piece[:2]))
                self.in_flight -= 1
                continue
            self._deliver(self.board.receive(frame), piece)
        return len(data)

    def _deliver(self, answer: bytes, piece: tuple[int, int, int] | None) -> None:
        if piece is not None and self.lose_answer is not None and self.lose_answer(*piece):
            self.lost.append(("answer", *piece[:2]))
            self.in_flight -= 1
            return
        if piece is not None and self.late_answer is not None and self.late_answer(*piece) and self._held is None:
            self._held = answer
            return
        self._rx += answer * (2 if self.double_answers else 1)
        if self._held is not None:
            self._rx += self._held
            self._held = None

    def read(self, size: int = 1) -> bytes:
        if not self._rx:
            self.tinyfed_clock.advance(self.timeout or 0.0)
            return b""
        out = bytes(self._rx[:size])
        del self._rx[:size]
        self.in_flight = max(0, self.in_flight - out.count(0))  # answers the client has now read
        return out

    def close(self) -> None:
        self.is_open = False
        self.inner.close()


def _client(port: ScriptedPort, **kw) -> BoardClient:
    return BoardClient(port.inner.port, port=port, name="win", **kw)


def _opaque_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import tinyfed.firmware_bridge.compile as fb_compile

    monkeypatch.setitem(sys.modules, "tinyfed.firmware_bridge.compile.blob", None)
    monkeypatch.delattr(fb_compile, "blob", raising=False)


def first_send(code: int, *offsets: int) -> Rule:
    """The rule that picks the first send of the pieces of ``code`` at ``offsets``."""
    return lambda c, off, before: c == code and off in offsets and not before


def _offsets(size: int, chunk: int = CHUNK) -> list[int]:
    return list(range(0, size, chunk))


# -- the receive window: the same record as firmware/src/window.c --------------------------


def test_receive_window_holds_past_a_gap_and_absorbs_it() -> None:
    w = ReceiveWindow(4)
    span = 4 * 100
    assert w.place(0, 100, span).value == "next"
    w.took(100)
    assert w.place(200, 100, span).value == "ahead"
    w.hold(200, 100)
    assert w.place(300, 100, span).value == "ahead"
    w.hold(300, 100)
    assert w.place(200, 100, span).value == "held"  # a resend of what is held
    assert w.place(0, 100, span).value == "held"
    assert w.place(250, 100, span).value == "refuse"  # straddles a held range
    assert w.place(50, 100, span).value == "refuse"  # straddles next
    assert w.place(400, 100, span).value == "ahead"
    w.hold(400, 100)
    assert w.place(500, 10, span).value == "refuse"  # past the window (and no room: 3 held)
    w.took(100)  # the gap arrives: next jumps over everything held
    assert (w.next, w.held) == (500, [])


# -- uploads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", range(WINDOW))
def test_a_chunk_lost_at_any_position_of_a_window_is_the_only_one_resent(monkeypatch, position: int) -> None:
    _opaque_blobs(monkeypatch)
    lose = position * CHUNK
    port = ScriptedPort("sim://nrf52840?name=w",
                        lose_request=first_send(Command.LOAD_CHUNK, lose))
    c = _client(port)
    c.hello()
    result = c.load_fragment(BLOB)
    assert port.board.active.blob == BLOB
    assert port.peak_in_flight == WINDOW == c.info.window
    sends = Counter(off for code, off in port.sent if code == Command.LOAD_CHUNK)
    assert {off for off, n in sends.items() if n > 1} == {lose} and sends[lose] == 2
    assert sorted(sends) == _offsets(len(BLOB)) and result.chunks == len(sends)
    assert c.stats.retransmissions == c.stats.gaps_resent == 1 and c.stats.timeouts == 0


@pytest.mark.parametrize("position", range(WINDOW))
def test_an_ack_lost_at_any_position_is_covered_by_the_next_cumulative_ack(monkeypatch, position: int) -> None:
    _opaque_blobs(monkeypatch)
    lose = position * CHUNK
    port = ScriptedPort("sim://nrf52840?name=w",
                        lose_answer=first_send(Command.LOAD_CHUNK, lose))
    c = _client(port)
    c.hello()
    c.load_fragment(BLOB)
    assert port.board.active.blob == BLOB and port.lost == [("answer", Command.LOAD_CHUNK, lose)]
    assert c.stats.retransmissions == 0 and c.stats.gaps_resent == 0
    assert port.board.stats.executed["LOAD_CHUNK"] == len(_offsets(len(BLOB)))


def test_a_gap_in_the_middle_of_a_window_is_resent_alone(monkeypatch) -> None:
    """Two chunks lost together: the five around them are held on the board and not sent again."""
    _opaque_blobs(monkeypatch)
    gap = {2 * CHUNK, 3 * CHUNK}
    port = ScriptedPort("sim://nrf52840?name=w", lose_request=first_send(Command.LOAD_CHUNK, *gap))
    c = _client(port)
    c.hello()
    c.load_fragment(BLOB)
    chunks = [off for code, off in port.sent if code == Command.LOAD_CHUNK]
    first = chunks[:WINDOW]
    assert first == _offsets(len(BLOB))[:WINDOW]  # the first window went out whole
    resent = [off for off, n in Counter(chunks).items() if n > 1]
    assert sorted(resent) == sorted(gap) and len(chunks) == len(_offsets(len(BLOB))) + 2
    assert port.board.active.blob == BLOB and c.stats.retransmissions == 2


def test_the_last_chunk_lost_unaligned_and_its_ack_lost_are_recovered(monkeypatch) -> None:
    """The tail chunk (17 bytes, not a whole word) held past a gap, and a lost last ack (nothing
    after it to cover it: the timeout resends, the board acknowledges it as held)."""
    _opaque_blobs(monkeypatch)
    last = _offsets(len(BLOB))[-1]
    port = ScriptedPort("sim://nrf52840?name=w",
                        lose_request=first_send(Command.LOAD_CHUNK, last - CHUNK),
                        lose_answer=first_send(Command.LOAD_CHUNK, last))
    c = _client(port)
    c.hello()
    c.load_fragment(BLOB)
    assert port.board.active.blob == BLOB
    assert c.stats.timeouts == 1 and Counter(port.sent)[(Command.LOAD_CHUNK, last)] == 2


def test_duplicated_and_late_acks_change_nothing(monkeypatch) -> None:
    _opaque_blobs(monkeypatch)
    port = ScriptedPort("sim://nrf52840?name=w", double_answers=True,
                        late_answer=lambda code, off, before: code == Command.LOAD_CHUNK and off == CHUNK)
    c = _client(port)
    c.hello()
    c.load_fragment(BLOB)
    assert port.board.active.blob == BLOB
    # the late ack of chunk 1 came after chunk 2's, whose cumulative ack already covered it: no resend
    assert c.stats.retransmissions == 0 and c.stats.stray_responses >= len(_offsets(len(BLOB)))


def test_a_board_without_a_window_gets_stop_and_wait(monkeypatch) -> None:
    """Firmware that announces no window (HELLO's byte 0) refuses a chunk past a gap, so the host
    never has two requests in flight; neither does a client asked for window=1."""
    _opaque_blobs(monkeypatch)
    old = ScriptedPort("sim://nrf52840?name=old&window=0",
                       lose_request=first_send(Command.LOAD_CHUNK, CHUNK))
    c = _client(old)
    assert c.hello().window == 0 and c.transfer_window == 1
    c.load_fragment(BLOB)
    assert old.board.active.blob == BLOB and old.peak_in_flight == 1
    assert c.stats.windowed_requests == 0 and c.stats.retransmissions == 1
    # the old board keeps its strict order: a chunk past the next offset is OUT_OF_ORDER
    c.request(Command.LOAD_BEGIN, struct.pack("<II", 16, zlib.crc32(bytes(16))))
    with pytest.raises(Exception, match="OUT_OF_ORDER"):
        c.request(Command.LOAD_CHUNK, struct.pack("<I", 8) + bytes(8))

    new = ScriptedPort("sim://nrf52840?name=new")
    c = _client(new, window=1)
    assert c.hello().window == WINDOW and c.transfer_window == 1
    c.load_fragment(BLOB)
    assert new.board.active.blob == BLOB and new.peak_in_flight == 1
    with pytest.raises(ValueError, match="window"):
        BoardClient("sim://x", window=0)


# -- w*, and an update read under loss ---------------------------------------------------


def test_weights_and_the_update_travel_windowed_under_loss(har_training_case) -> None:
    """TRAIN_SET with a lost chunk, then UPDATE_READ with lost answers (a read has no cumulative
    ack: each lost one is read again): the update equals one read over a clean link."""
    from tinyfed.firmware_bridge.link.train_link import TrainParams

    case = har_training_case
    per = (256 - 20 - 8) // 4
    port = ScriptedPort(
        "sim://mps2-an386?name=wt",
        lose_request=first_send(Command.TRAIN_SET, 3 * per), lose_answer=first_send(Command.UPDATE_READ, 264, 984))
    c = _client(port)
    c.hello()
    c.load_fragment(case.frozen_blob)
    c.load_program(case.program)
    c.load_data(case.images[0])
    c.set_weights(4, case.w0)
    assert np.array_equal(port.board.trainer.start, case.w0.astype(np.float32))
    assert Counter(port.sent)[(Command.TRAIN_SET, 3 * per)] == 2
    report = c.train(TrainParams(version=4, epochs=1, batch_size=16, lr=0.05, seed=3, max_samples=32))
    before = c.stats.retransmissions
    update = c.read_update(report.update_bytes)
    assert c.stats.retransmissions - before == 2
    assert {("answer", Command.UPDATE_READ, 264), ("answer", Command.UPDATE_READ, 984)} <= set(port.lost)
    clean = BoardClient(port.inner.port, port=port, name="clean")
    clean._session, clean.info, clean._counter = c._session, c.info, c._counter  # the same session, no loss
    clean._train_session, clean._weights_version = c._train_session, c._weights_version
    port.lose_answer = None
    again = clean.read_update(report.update_bytes)
    assert np.array_equal(update.q, again.q) and np.array_equal(update.scales, again.scales)
    assert update.version == 4 and update.n == 32


def test_a_line_that_spoils_every_new_request_collapses_the_window_until_the_next_hello(monkeypatch) -> None:
    """Every piece's first two sends lost: pieces go stop-and-wait (a resend there is the same
    bytes); three in a row and the link stays stop-and-wait until HELLO says the window again."""
    _opaque_blobs(monkeypatch)
    port = ScriptedPort("sim://nrf52840?name=w",
                        lose_request=lambda code, off, before: code == Command.LOAD_CHUNK and before < 2)
    c = _client(port)
    c.hello()
    c.load_fragment(BLOB)
    assert port.board.active.blob == BLOB and c.transfer_window == 1
    port.lose_request = None
    port.peak_in_flight = 0
    c.load_fragment(BLOB[::-1])
    assert port.peak_in_flight == 1 and port.board.active.blob == BLOB[::-1]
    assert c.hello().window == WINDOW and c.transfer_window == WINDOW


def test_the_twin_announces_the_firmwares_window() -> None:
    """The twin's window is the firmware's formula on the firmware's RX ring (firmware/src/ringbuf.h)."""
    import re
    from pathlib import Path

    from tinyfed.firmware_bridge.link.window import RX_RING_BYTES

    src = (Path(__file__).resolve().parents[1] / "firmware/src/ringbuf.h").read_text()
    assert int(re.search(r"#define RINGBUF_BYTES (\d+)u", src).group(1)) == RX_RING_BYTES
    assert "PROTO_WINDOW (RINGBUF_BYTES / (PROTO_MAX_ENCODED + 1u))" in (
        Path(__file__).resolve().parents[1] / "firmware/src/window.h").read_text()
    with BoardClient("sim://nrf52840") as c:
        assert c.hello().window == WINDOW == 7
