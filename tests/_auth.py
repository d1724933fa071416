"""A bare host for the authentication tests: raw frames to a board's byte stream, no client.

:class:`RawHost` says HELLO, derives the session key from the board's key (the test holds it, as
the key store does) and builds authenticated, unauthenticated or tampered request frames, so a
test can send exactly what an attacker on the link would: a replayed frame, a wrong tag, no tag.
It works on any byte stream: a :class:`~tinyfed.firmware_bridge.twin.sim.SimBoard` (``receive``)
or an emulated board's socket (:func:`socket_exchange`).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable

from tinyfed.firmware_bridge.link.framing import (
    KIND_REQUEST,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    TAG_BYTES,
    Command,
    FrameReader,
    Packet,
    SessionMac,
    decode_frame,
    encode_frame,
    session_key,
)
from tinyfed.firmware_bridge.link.keys import DeviceKey

Exchange = Callable[[bytes], list[Packet]]


def sim_exchange(receive: Callable[[bytes], bytes]) -> Exchange:
    """Send a frame to a simulated board; its answers, decoded."""
    def exchange(frame: bytes) -> list[Packet]:
        return [decode_frame(f) for f in FrameReader(1 << 16).feed(receive(frame)) if isinstance(f, bytes)]
    return exchange


def socket_exchange(sock: socket.socket, wait: float = 5.0) -> Exchange:
    """Send a frame over a connected socket; the first answer frame (waits up to ``wait`` seconds for it)."""
    reader = FrameReader(1 << 16)

    def exchange(frame: bytes) -> list[Packet]:
        sock.sendall(frame)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(4096)
            except TimeoutError:
                break
            frames = [f for f in reader.feed(data) if isinstance(f, bytes)]
            if frames:
                return [decode_frame(f) for f in frames]
        return []
    return exchange


class RawHost:
    """A host session built by hand: ``hello`` then ``frame``/``send`` with any counter and seq."""

    def __init__(self, exchange: Exchange, key: DeviceKey | None) -> None:
        self.exchange = exchange
        self.key = key
        self.session: SessionMac | None = None
        self.counter = 0
        self.seq = 100

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def hello(self) -> Packet:
        nonce = os.urandom(NONCE_BYTES)
        (pkt,) = self.exchange(encode_frame(KIND_REQUEST, Command.HELLO, self.next_seq(),
                                            bytes([PROTOCOL_VERSION]) + nonce))
        if self.key is not None:
            board_nonce = pkt.payload[-1 - NONCE_BYTES:-1]
            self.session = SessionMac(session_key(self.key.key, self.key.device_id, nonce, board_nonce))
        self.counter = 0
        return pkt

    def frame(self, code: int, body: bytes = b"", *, seq: int | None = None, counter: int | None = None) -> bytes:
        """An authenticated request frame (the next counter unless told)."""
        assert self.session is not None
        if counter is None:
            self.counter += 1
            counter = self.counter
        seq = self.next_seq() if seq is None else seq
        return encode_frame(KIND_REQUEST, code, seq, self.session.request_payload(code, seq, counter, body))

    def send(self, code: int, body: bytes = b"") -> Packet:
        """One authenticated request; its (single) answer."""
        (pkt,) = self.exchange(self.frame(code, body))
        return pkt

    def body(self, pkt: Packet) -> bytes:
        """A tagged answer's body (the tag is checked by the client tests, not here)."""
        return pkt.payload[:-TAG_BYTES]


def bare_frame(code: int, seq: int, payload: bytes) -> bytes:
    """A request without any authentication (what a program that does not know the key sends)."""
    return encode_frame(KIND_REQUEST, code, seq, payload)


def detail(pkt: Packet) -> int:
    return struct.unpack_from("<H", pkt.payload)[0]
