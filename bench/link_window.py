"""Windowed transfer against stop-and-wait, side by side in one process (issue 20).

Every figure is measured twice on the same links in the same run: ``BoardClient(window=1)``
(stop-and-wait, as against firmware that announces no window) and ``BoardClient()`` (the window
the board announces in HELLO: 7 frames on the tinyfed firmware).

(a) **Raw UART throughput R** of each link, measured with a bulk transfer: ``BULK_BYTES`` bytes of
    a frame-free stream (0x01 bytes, no delimiter: the firmware counts them into one oversized
    frame it discards, doing no protocol work), then a delimiter and a PING; R = bytes / seconds
    from the first byte to the PING's answer, the best of ``BULK_RUNS``. Under QEMU this is the
    rate at which the emulated UART, the guest's RX interrupt and QEMU's socket chardev take
    bytes; on a paced tty it is the line rate. Upload figures below are fractions of R, for the
    host-to-board direction (the acks travel the other way, on their own wire).
(b) **Upload throughput** of har_cnn's frozen fragment (plan on nrf52840; the median of three
    uploads after a warm-up): fragment bytes per second, wire bytes (both ways) per second, and
    both as fractions of R.
(c) **Provisioning N boards** at once (one thread per board, as the run engine does): HELLO,
    fragment, training program, local data (48 HAPT windows) and w* (version 1): wall seconds
    until every board is ready, and the bytes moved.

Run: ``.venv/bin/python bench/link_window.py`` (boots QEMU mps2-an386 boards with the emulate
launcher: the largest of ``--boards`` of them, default 8,32), or ``--urls URL [URL ...]`` for links already up
(e.g. paced ttys; provisioning then uses as many of them as each count asks, at most all).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyfed.boards import get_board, single_board_fleet
from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.compile.train_blob import compile_program
from tinyfed.firmware_bridge.emulate.emulator import EmulatorFleet
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.framing import DELIMITER
from tinyfed.firmware_bridge.link.transport import open_port
from tinyfed.models.tflm import TflmModel
from tinyfed.models.zoo import get_zoo_model
from tinyfed.planner import trainable as tfw
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import make_plan
from tinyfed.planner.sources import load_model_source

BOARD = "mps2-an386"
PLAN_BOARD = "nrf52840"
BULK_BYTES = 128 * 1024
BULK_RUNS = 3
UPLOADS = 3
LOCAL_WINDOWS = 48
MODES = (("stop-and-wait", 1), ("windowed", None))


@dataclass
class Assets:
    fragment: bytes
    program: bytes
    data: bytes
    w0: np.ndarray


def make_assets(out: Path) -> Assets:
    """har_cnn planned for an nRF52840: its frozen fragment, training program, w* and local data."""
    cfg = TrainingConfig(importance="depth")  # the cut bench/link.py measures (a 47,920-byte fragment)
    plan = make_plan(load_model_source("har_cnn", None, cfg), single_board_fleet(get_board(PLAN_BOARD)), cfg, out,
                     measure=False)
    files = {k: Path(plan.files[k]).read_bytes() for k in ("frozen", "tail", "trainable")}
    q = TflmModel(files["frozen"]).input_details[0]["quantization_parameters"]
    clients = get_zoo_model("har_cnn").client_split()
    x = local_data.quantize_inputs(clients.x[:LOCAL_WINDOWS], float(q["scales"][0]), int(q["zero_points"][0]))
    w0 = np.concatenate([u.values.ravel() for u in tfw.decode(files["trainable"])]).astype(np.float32)
    return Assets(compile_blob(files["frozen"]), compile_program(files["tail"], files["trainable"]),
                  local_data.pack(x, clients.y[:LOCAL_WINDOWS].astype(np.int64),
                                  classes=get_zoo_model("har_cnn").num_classes), w0)


def raw_rate(url: str) -> float:
    """Bytes per second the link takes in a bulk transfer, the best of BULK_RUNS (the module's (a))."""
    port = open_port(url, timeout=2.0)
    client = BoardClient(url, port=port, timeout=2.0, name="bulk")
    best = 0.0
    try:
        client.ping(b"warm")
        stream = b"\x01" * BULK_BYTES
        for _ in range(BULK_RUNS):
            t0 = time.perf_counter()
            for at in range(0, len(stream), 4096):
                port.write(stream[at:at + 4096])
            port.write(DELIMITER)
            client.ping(b"done")
            best = max(best, BULK_BYTES / (time.perf_counter() - t0))
        return best
    finally:
        port.close()


def upload(url: str, blob: bytes, window: int | None) -> tuple[float, int, int]:
    """Median seconds of UPLOADS uploads (after one warm-up), bytes one sent to the board, retransmissions."""
    with BoardClient(url, timeout=2.0, window=window, name="upload") as client:
        client.hello()
        client.load_fragment(blob)
        times, sent = [], 0
        for _ in range(UPLOADS):
            before = client.stats.bytes_sent
            t0 = time.perf_counter()
            client.load_fragment(blob)
            times.append(time.perf_counter() - t0)
            sent = client.stats.bytes_sent - before
        return statistics.median(times), sent, client.stats.retransmissions


def provision(urls: list[str], assets: Assets, window: int | None) -> tuple[float, int]:
    """Wall seconds to provision every board at once (one thread each), and the bytes moved."""
    def one(url: str) -> int:
        with BoardClient(url, timeout=2.0, window=window, name=url) as client:
            client.hello()
            client.load_fragment(assets.fragment)
            client.load_program(assets.program)
            client.load_data(assets.data)
            client.set_weights(1, assets.w0)
            return client.stats.bytes_sent + client.stats.bytes_received

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        moved = sum(pool.map(one, urls))
    return time.perf_counter() - t0, moved


@contextlib.contextmanager
def links(urls: list[str] | None, count: int) -> Iterator[list[str]]:
    if urls:
        yield urls
        return
    t0 = time.perf_counter()
    with EmulatorFleet(BOARD, count) as fleet:
        print(f"booted {count} QEMU {BOARD} boards in {time.perf_counter() - t0:.1f} s")
        yield fleet.urls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urls", nargs="+", help="links to measure (default: boot QEMU boards)")
    ap.add_argument("--boards", default="8,32", help="provisioning fleet sizes, comma separated (default 8,32: see "
                    "BENCHMARKS.md for why not 64 on a 2-core machine)")
    args = ap.parse_args()
    counts = [int(n) for n in args.boards.split(",") if n.strip() and int(n) > 0]  # "0": (a) and (b) only
    print(f"host: {os.cpu_count()} CPUs, load average {Path('/proc/loadavg').read_text().split()[:3]} (shared)")
    with tempfile.TemporaryDirectory(prefix="tinyfed-bench-window-") as tmp:
        assets = make_assets(Path(tmp))
    print(f"har_cnn: fragment {len(assets.fragment):,} B, program {len(assets.program):,} B, local data "
          f"{len(assets.data):,} B, w* {assets.w0.size:,} values ({4 * assets.w0.size:,} B)")
    with links(args.urls, max(counts, default=1)) as urls:
        kinds = sorted({u.split("://", 1)[0] if "://" in u else "tty" for u in urls})
        print(f"\n(a)+(b) raw throughput and fragment upload, per link kind ({', '.join(kinds)}); link {urls[0]}")
        rate = raw_rate(urls[0])
        print(f"raw bulk throughput R = {rate:,.0f} B/s (best of {BULK_RUNS}: {BULK_BYTES:,} B frame-free stream "
              f"+ PING)")
        print(f"{'mode':<14} {'seconds':>8} {'frag B/s':>10} {'/R':>6} {'sent B':>8} {'sent B/s':>10} {'/R':>6} "
              f"{'resent':>6}")
        for mode, window in MODES:
            dt, sent, resent = upload(urls[0], assets.fragment, window)
            print(f"{mode:<14} {dt:>8.3f} {len(assets.fragment) / dt:>10,.0f} {len(assets.fragment) / dt / rate:>6.3f} "
                  f"{sent:>8,} {sent / dt:>10,.0f} {sent / dt / rate:>6.3f} {resent:>6}")
        print("\n(c) provisioning (fragment, program, local data, w*) of N boards at once")
        print(f"{'boards':>6} {'mode':<14} {'seconds':>8} {'MB moved':>9} {'s/board':>8}")
        for n in counts:
            fleet = urls[:n]
            for mode, window in MODES:
                dt, moved = provision(fleet, assets, window)
                print(f"{len(fleet):>6} {mode:<14} {dt:>8.1f} {moved / 1e6:>9.2f} {dt / len(fleet):>8.2f}")


if __name__ == "__main__":
    main()
