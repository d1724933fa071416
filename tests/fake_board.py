"""A hostile board for the tests: a small TCP server speaking protocol v2, at ``socket://127.0.0.1:PORT``.

Behind the socket is a real :class:`~tinyfed.firmware_bridge.twin.sim.SimBoard` (it is provisioned,
trains and answers like any ``sim://`` board); a *behaviour* then rewrites what it says, the way
a broken or malicious board would (issue 17). By default the board holds a key recorded in the key
store (an insider: a provisioned board gone bad); ``key`` gives it another identity (one the store
does not know, or a known device id with a key that is not that device's: an impostor) or none:

* ``honest``: nothing rewritten (the control run);
* ``poison``: every update claims n = 2^32 - 1 samples and variance 0, with a delta scaled to
  just under the norm bound (``norm``);
* ``poison_variance``: the same delta and variance 0, but an honest n;
* ``poison_norm``: the same delta with an honest n and its true variance: an update every check
  passes (robust aggregation is the defence, ``tests/test_robust.py``);
* ``huge_header``: every update header claims 3e9 values (TRAIN's update_bytes agrees), and the
  board serves every byte asked for;
* ``mute``: accepts the connection and never answers;
* ``garbage``: answers every request with random bytes;
* ``out_of_sequence``: answers with the wrong sequence numbers;
* ``late``: every answer ``delay`` seconds late;
* ``silent_train``: answers everything but TRAIN;
* ``nak_flood``: the first transmission of every request is NAKed three times, not executed;
* ``disconnect``: closes the connection in the middle of its first update's upload;
* ``nan``, ``huge_norm``, ``wrong_size``, ``future_version``: a NaN scale, a 1e9 scale, ten
  values short, a model version from the future in every update.

Requests are split into frames here (the host's :class:`FrameReader`), so a behaviour knows
which command it is answering; the board reframes them again as it would off a UART.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from tinyfed.firmware_bridge.link.framing import (
    DELIMITER,
    KIND_RESPONSE,
    NAK_SEQ,
    Command,
    FrameError,
    FrameReader,
    Packet,
    Status,
    decode_frame,
    encode_frame,
)
from tinyfed.firmware_bridge.link.keys import DeviceKey, KeyStore
from tinyfed.firmware_bridge.link.train_link import TRAIN_RESPONSE, UPDATE_HEADER, pack_update, unpack_update
from tinyfed.firmware_bridge.twin.sim import SimBoard, SimConfig

#: Behaviours that rewrite the update the board serves (the others rewrite the link).
UPDATE_BEHAVIOURS = ("poison", "poison_variance", "huge_header", "nan", "huge_norm", "wrong_size", "future_version")
LINK_BEHAVIOURS = ("honest", "mute", "garbage", "out_of_sequence", "late", "silent_train", "nak_flood", "disconnect")
#: Update rewrites every check of the host passes (so the refusal tests leave them out).
PASSING_UPDATE_BEHAVIOURS = ("poison_norm",)
BEHAVIOURS = LINK_BEHAVIOURS + UPDATE_BEHAVIOURS + PASSING_UPDATE_BEHAVIOURS
HUGE_VALUES = 3_000_000_000
#: ``FakeBoard(key=PROVISION)``: a fresh identity recorded in the default key store.
PROVISION = "provision"


class FakeBoard:
    """One board on a loopback TCP port; use as a context manager (``url`` while it runs)."""

    def __init__(self, behaviour: str = "honest", board_id: str = "mps2-an386", *, norm: float = 99.0,
                 delay: float = 0.2, seed: int = 0, key: DeviceKey | str | None = PROVISION) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r} (known: {', '.join(BEHAVIOURS)})")
        self.behaviour, self.norm, self.delay = behaviour, norm, delay
        identity = KeyStore().provision(f"fake board ({behaviour})") if key == PROVISION else key
        assert identity is None or isinstance(identity, DeviceKey)
        self.board = SimBoard(SimConfig.for_board(board_id), key=identity)
        self.requests: Counter[str] = Counter()  # by command, every frame the board was sent
        self.connections = 0
        self.disconnected = threading.Event()  # ``disconnect`` dropped a link mid-upload
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._naked: set[int] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.url = f"socket://127.0.0.1:{self._server.getsockname()[1]}"
        if behaviour in UPDATE_BEHAVIOURS + PASSING_UPDATE_BEHAVIOURS:
            self._rewrite_updates()
        self._thread = threading.Thread(target=self._serve, name=f"fake-board-{behaviour}", daemon=True)

    def __enter__(self) -> FakeBoard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for conn in self._conns:
                conn.close()
        self._server.close()

    # -- the link ------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
                self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        reader = FrameReader(1 << 20)
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                for frame in reader.feed(data):
                    if isinstance(frame, bytes) and not self._answer(conn, frame):
                        return
        except OSError:
            return
        finally:
            conn.close()

    def _answer(self, conn: socket.socket, frame: bytes) -> bool:
        """Hand one request frame to the board and send what the behaviour makes of its reply;
        False when the behaviour hangs up."""
        try:
            pkt: Packet | None = decode_frame(frame)
        except FrameError:
            pkt = None
        if pkt is not None:
            self.requests[Command.NAMES.get(pkt.code, hex(pkt.code))] += 1
        b = self.behaviour
        if b == "mute":
            return True
        if b == "nak_flood" and pkt is not None and pkt.seq not in self._naked:
            self._naked.add(pkt.seq)
            nak = encode_frame(KIND_RESPONSE, Status.BAD_CRC, NAK_SEQ, b"\x00\x00flood")
            conn.sendall(nak * 3)
            return True
        if b == "huge_header" and pkt is not None and pkt.code == Command.UPDATE_READ:
            served = self._huge_piece(pkt)
            if served is not None:
                conn.sendall(served)
                return True
        reply = self.board.receive(frame + DELIMITER)
        if pkt is None:
            conn.sendall(reply)
            return True
        if b == "garbage":
            reply = self._rng.randbytes(max(8, len(reply)))
        elif b == "out_of_sequence":
            reply = self._reseq(reply)
        elif b == "late":
            time.sleep(self.delay)  # the board is slow, on purpose; nothing waits on this
        elif b == "silent_train" and pkt.code == Command.TRAIN:
            return True
        elif b == "disconnect" and pkt.code == Command.UPDATE_READ and not self.disconnected.is_set():
            offset = struct.unpack_from("<I", pkt.payload)[0] if len(pkt.payload) >= 4 else 0
            if offset > 0:
                self.disconnected.set()
                return False
        conn.sendall(reply)
        return True

    def _huge_piece(self, pkt: Packet) -> bytes | None:
        """``huge_header`` means it: any piece past the real image is served (zeros, made on demand),
        so a host without the header bound would read all 3e9 values."""
        if len(pkt.payload) != 6:
            return None
        offset, length = struct.unpack("<IH", pkt.payload)
        image = self.board.trainer.update_image or b""
        if offset + length <= len(image):
            return None
        return encode_frame(KIND_RESPONSE, Status.OK, pkt.seq, bytes(length))

    @staticmethod
    def _reseq(reply: bytes) -> bytes:
        out = bytearray()
        for frame in FrameReader(1 << 20).feed(reply):
            if isinstance(frame, bytes):
                p = decode_frame(frame)
                out += encode_frame(p.kind, p.code, (p.seq + 1) % 0xFFFF, p.payload, version=p.version)
        return bytes(out)

    # -- the update ----------------------------------------------------------------------

    def _rewrite_updates(self) -> None:
        trainer = self.board.trainer
        original = trainer.train

        def train(p: bytes, fragment: Any) -> bytes:
            out = original(p, fragment)
            image = self._rewrite(bytes(trainer.update_image), trainer.unit_shapes)
            trainer.update_image = image
            fields = list(TRAIN_RESPONSE.unpack(out))
            fields[5] = len(image)  # update_bytes: what UPDATE_READ serves
            if self.behaviour == "huge_header":  # consistent with the header: TRAIN does not give the lie away
                n_scales = struct.unpack_from("<H", image, 20)[0]
                fields[5] = UPDATE_HEADER.size + 4 * n_scales + HUGE_VALUES
            return TRAIN_RESPONSE.pack(*fields)

        trainer.train = train  # type: ignore[method-assign]

    def _rewrite(self, image: bytes, unit_shapes: list[tuple[int, int]]) -> bytes:
        u = unpack_update(image)
        b = self.behaviour
        if u.values is not None:
            raise NotImplementedError("the fake board rewrites int8 updates (the subset payload) only")
        if b in ("poison", "poison_variance"):
            dense = u.dense(unit_shapes).astype(np.float64)
            norm = float(np.linalg.norm(dense))
            scale = self.norm / norm if norm > 0 else 0.0
            n = 0xFFFFFFFF if b == "poison" else u.n
            return pack_update(u.version, n, u.loss, 0.0, u.q, u.scales * np.float32(scale), u.per_channel)
        if b == "poison_norm":
            dense = u.dense(unit_shapes).astype(np.float64)
            norm = float(np.linalg.norm(dense))
            scales = u.scales * np.float32(self.norm / norm if norm > 0 else 0.0)
            sent = unpack_update(pack_update(u.version, u.n, u.loss, 0.0, u.q, scales, u.per_channel))
            variance = float(np.var(sent.dense(unit_shapes).astype(np.float64)))
            return pack_update(u.version, u.n, u.loss, variance, u.q, scales, u.per_channel)
        if b == "huge_header":
            head = bytearray(image)
            head[16:20] = struct.pack("<I", HUGE_VALUES)  # elements
            return bytes(head)
        if b in ("nan", "huge_norm"):
            scales = u.scales.copy()
            scales[0] = np.float32("nan") if b == "nan" else np.float32(1e9)
            return pack_update(u.version, u.n, u.loss, u.variance, u.q, scales, u.per_channel)
        if b == "wrong_size":
            return pack_update(u.version, u.n, u.loss, u.variance, u.q[:-10], u.scales, u.per_channel)
        assert b == "future_version"
        return pack_update(u.version + 1, u.n, u.loss, u.variance, u.q, u.scales, u.per_channel)
