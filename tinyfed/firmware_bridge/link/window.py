"""Windowed transfers (``docs/protocol.md``, "Windowed transfers"): the bookkeeping both ends share.

A board that announces a window W in HELLO lets the host keep W request frames in flight for the
offset-addressed commands (LOAD_CHUNK, TRAIN_SET, INPUT_WRITE, UPDATE_READ, OUTPUT_READ). The
board acknowledges the highest contiguous offset it holds (the *cumulative* ack) and keeps what
arrived past a gap, so the host resends only the gap. :class:`ReceiveWindow` is that board-side
record, line for line as ``firmware/src/window.c`` (the ``sim://`` twin runs it);
:class:`SendWindow` is the host's: which pieces are done, in flight, or due again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tinyfed.firmware_bridge.link.framing import max_encoded_bytes

#: The firmware's UART receive ring (``firmware/src/ringbuf.h``): the window is how many maximal
#: frames, delimiter included, it holds while the board programs flash or checks a tag.
RX_RING_BYTES = 2048


def announced_window(max_payload: int, ring_bytes: int = RX_RING_BYTES) -> int:
    """The window a board with this ``max_payload`` and receive ring announces (``PROTO_WINDOW``)."""
    return min(255, ring_bytes // (max_encoded_bytes(max_payload) + 1))


class Place(enum.Enum):
    NEXT = "next"  # starts at the cumulative ack: store, then took()
    AHEAD = "ahead"  # past a gap, inside the window: store, then hold()
    HELD = "held"  # held already (a retransmission): acknowledge, store nothing
    REFUSE = "refuse"  # straddles the ack or a held range, past the window, or no room: OUT_OF_ORDER


@dataclass
class ReceiveWindow:
    """The board's side: ``next`` (everything below is held) and the ranges held past a gap."""

    window: int
    next: int = 0
    held: list[tuple[int, int]] = field(default_factory=list)

    @property
    def room(self) -> int:
        return max(1, self.window - 1)

    def reset(self, next_: int = 0) -> None:
        self.next = next_
        self.held.clear()

    def place(self, offset: int, n: int, span: int) -> Place:
        end = offset + n
        if offset < self.next:
            return Place.HELD if end <= self.next else Place.REFUSE
        if end - self.next > span:
            return Place.REFUSE
        for start, stop in self.held:
            if offset >= start and end <= stop:
                return Place.HELD
            if offset < stop and end > start:
                return Place.REFUSE
        if offset == self.next:
            return Place.NEXT
        return Place.AHEAD if len(self.held) < self.room and n else Place.REFUSE

    def took(self, n: int) -> None:
        self.next += n
        merged = True
        while merged:
            merged = False
            for i, (start, stop) in enumerate(self.held):
                if start <= self.next:
                    self.next = max(self.next, stop)
                    del self.held[i]
                    merged = True
                    break

    def hold(self, offset: int, n: int) -> None:
        if len(self.held) < self.room:
            self.held.append((offset, offset + n))


@dataclass
class Piece:
    """One request of a windowed transfer: its body and the range ``[start, end)`` it covers."""

    body: bytes
    start: int
    end: int
    reply: bytes | None = None  # the OK answer's body (None: proved held by a later cumulative ack)
    done: bool = False
    sends: int = 0


@dataclass
class SendWindow:
    """The host's side of one transfer: pieces in order, the lowest not done bounds the window."""

    pieces: list[Piece]
    window: int
    #: the highest cumulative ack seen (writes with cumulative acks only)
    acked: int = 0

    def __post_init__(self) -> None:
        self._base = 0

    @property
    def base(self) -> int:
        """Index of the lowest piece not done (== len(pieces) when all are)."""
        while self._base < len(self.pieces) and self.pieces[self._base].done:
            self._base += 1
        return self._base

    @property
    def finished(self) -> bool:
        return self.base == len(self.pieces)

    def sendable(self, in_flight: set[int]) -> list[int]:
        """Pieces to send now: not done, not in flight, inside [base, base + window)."""
        base = self.base
        room = self.window - len(in_flight)
        out = []
        for i in range(base, min(base + self.window, len(self.pieces))):
            if room <= 0:
                break
            if not self.pieces[i].done and i not in in_flight:
                out.append(i)
                room -= 1
        return out

    def cumulative(self, ack: int) -> None:
        """The board holds everything below ``ack``: every piece ending there is done."""
        self.acked = max(self.acked, ack)
        for piece in self.pieces[self.base:]:
            if piece.end > self.acked:
                break
            piece.done = True
