"""What authentication (protocol v2, issue 18) costs: per frame on the host and on a QEMU board,
and for one provisioning (bytes and seconds).

(a) host: computing a request tag and checking a response tag (``SessionMac``, the HMAC's keyed
    state copied per packet), for an empty body and a full one;
(b) QEMU mps2-an386: round-trip time of an unauthenticated request (PING, empty, and with 20
    bytes: the wire size of a counter and a tag) against an authenticated one with the same tiny
    work (KERNELS read), and HELLO with its session confirmation;
(c) provisioning: a 100 KiB upload (LOAD_BEGIN + LOAD_CHUNKs) to the QEMU board, wire bytes
    measured (``BoardClient.stats``) against the same upload framed as protocol v1 did (computed:
    no counter or tag, 252-byte chunks), and its seconds.

Run: ``.venv/bin/python bench/auth_cost.py`` (needs qemu-system-arm and gcc-arm-none-eabi).
"""

from __future__ import annotations

import os
import statistics
import struct
import tempfile
import time
import timeit
import zlib

from tinyfed.firmware_bridge.emulate.build import build_firmware
from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.framing import (
    DEFAULT_MAX_PAYLOAD,
    KIND_REQUEST,
    REQUEST_AUTH_BYTES,
    TAG_BYTES,
    Command,
    SessionMac,
    header_bytes,
)
from tinyfed.host.simulator import framed_bytes

BOARD = "mps2-an386"
UPLOAD = 100 * 1024
ROUNDS = 300


def host_tag_us(body: int) -> float:
    """Microseconds to tag one request and verify one response of ``body`` bytes."""
    mac = SessionMac(os.urandom(32))
    head = header_bytes(2, KIND_REQUEST, Command.LOAD_CHUNK, 7)
    data = os.urandom(body)

    def one() -> None:
        mac.request_tag(head, 5, data)
        mac.response_tag(head, 5, data)

    n = 20_000
    return min(timeit.repeat(one, number=n, repeat=5)) / n * 1e6


def rtt_ms(fn, rounds: int = ROUNDS) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


def v1_upload_bytes(size: int, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[int, int]:
    """(sent, received) of a protocol-v1 upload: LOAD_BEGIN, max_payload - 4 chunks, no tags."""
    sent, received = framed_bytes(8), framed_bytes(4)
    chunk = max_payload - 4
    for offset in range(0, size, chunk):
        sent += framed_bytes(4 + min(chunk, size - offset))
        received += framed_bytes(4)
    return sent, received


def main() -> None:
    print("(a) host, per exchange (request tag + response tag check):")
    for body in (0, DEFAULT_MAX_PAYLOAD - REQUEST_AUTH_BYTES):
        print(f"    body {body:3d} B: {host_tag_us(body):.1f} us")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TINYFED_KEY_STORE", os.path.join(tmp, "keys.json"))
        fw = build_firmware(BOARD)
        with launch_qemu(BOARD, fw.elf) as emu, BoardClient(emu.url, timeout=2.0) as c:
            t = time.perf_counter()
            c.hello()
            hello_ms = (time.perf_counter() - t) * 1e3
            hello_runs = [rtt_ms(c.hello, 1) for _ in range(30)]
            ping = rtt_ms(lambda: c.ping(b""))
            ping20 = rtt_ms(lambda: c.ping(bytes(REQUEST_AUTH_BYTES)))
            auth = rtt_ms(lambda: c.request(Command.KERNELS, b""))
            print(f"(b) QEMU {BOARD}, median RTT: PING 0 B {ping:.3f} ms, PING {REQUEST_AUTH_BYTES} B (the auth bytes, "
                  f"no MAC) {ping20:.3f} ms, KERNELS authenticated {auth:.3f} ms: +{auth - ping:.3f} ms per exchange, "
                  f"of which the MACs {auth - ping20:+.3f} ms; HELLO + confirmation {hello_ms:.1f} ms first, "
                  f"{statistics.median(hello_runs):.2f} ms median")
            blob = os.urandom(UPLOAD)
            before_s, before_r = c.stats.bytes_sent, c.stats.bytes_received
            t = time.perf_counter()
            offset = struct.unpack("<I", c.request(Command.LOAD_BEGIN, struct.pack("<II", UPLOAD, zlib.crc32(blob))))[0]
            chunk = DEFAULT_MAX_PAYLOAD - REQUEST_AUTH_BYTES - 4
            while offset < UPLOAD:
                part = blob[offset:offset + chunk]
                offset = struct.unpack("<I", c.request(Command.LOAD_CHUNK, struct.pack("<I", offset) + part))[0]
            seconds = time.perf_counter() - t
            sent, received = c.stats.bytes_sent - before_s, c.stats.bytes_received - before_r
            v1_sent, v1_received = v1_upload_bytes(UPLOAD)
            print(f"(c) {UPLOAD // 1024} KiB upload: v2 {sent:,} B sent + {received:,} B received in {seconds:.2f} s; "
                  f"v1 framing {v1_sent:,} + {v1_received:,} B: +{(sent + received) / (v1_sent + v1_received) - 1:.1%} "
                  f"bytes (chunks of {chunk} B instead of {DEFAULT_MAX_PAYLOAD - 4}, +{REQUEST_AUTH_BYTES} B per "
                  f"request, +{TAG_BYTES} B per answer); at 115200 baud that is "
                  f"{10 * (sent + received) / 115200:.1f} s against {10 * (v1_sent + v1_received) / 115200:.1f} s")


if __name__ == "__main__":
    main()
