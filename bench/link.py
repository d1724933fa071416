"""Link and firmware figures, side by side, in one process (issue 3).

(a) protocol efficiency of LOAD_CHUNK frames, computed with ``tinyfed.firmware_bridge.link.framing``
    and measured on a live QEMU mps2-an386 board (bytes on the wire from ``BoardClient.stats``);
(b) upload time of har_cnn's and digits_cnn's frozen fragments (plan on nrf52840) to QEMU;
(c) instructions per sample under ``-icount shift=4`` (INVOKE's SysTick count) and MACs per
    sample (counted from the blob's ops) -> MAC/s at the board's clock;
(d) firmware RAM/flash (linker map + LOAD_COMMIT's arena_bytes) against the planner's lines;
(e) host CPU % and RSS of one QEMU process, idle (5 s) and busy (inferring continuously).

Run: ``.venv/bin/python bench/link.py`` (needs qemu-system-arm and gcc-arm-none-eabi).
Every QEMU runs inside a context manager and is stopped at the end.
"""

from __future__ import annotations

import math
import os
import random
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from tinyfed.boards import get_board, single_board_fleet
from tinyfed.firmware_bridge.compile.blob import compile_blob, parse_blob
from tinyfed.firmware_bridge.emulate.build import build_firmware
from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.framing import (
    DEFAULT_MAX_PAYLOAD,
    KIND_REQUEST,
    KIND_RESPONSE,
    Command,
    Status,
    encode_frame,
)
from tinyfed.models.zoo import ZOO_NAMES, get_zoo_model
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import make_plan
from tinyfed.planner.sources import load_model_source

BOARD = "mps2-an386"
PLAN_BOARD = "nrf52840"
ICOUNT_SHIFT = 4
ICOUNT = ("-icount", f"shift={ICOUNT_SHIFT}")
PAYLOAD_SIZES = (16, 64, 128, 236)  # request bodies; protocol v2 adds a 20-byte counter and tag (bench/auth_cost.py)
TARGET = 0.95
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- (a) framing efficiency ------------------------------------------------------------------


def chunk_wire(payload: bytes) -> tuple[int, int]:
    """Wire bytes of one LOAD_CHUNK request carrying ``payload`` and of its 4-byte OK response."""
    req = encode_frame(KIND_REQUEST, Command.LOAD_CHUNK, 1, payload)
    resp = encode_frame(KIND_RESPONSE, Status.OK, 1, struct.pack("<I", len(payload)))
    return len(req), len(resp)


def computed_efficiency(n: int, data: bytes) -> dict[str, float]:
    """Efficiency of LOAD_CHUNK frames with an ``n``-byte packet payload (u32 offset + n-4 data)."""
    body = struct.pack("<I", 0x1234) + data[: n - 4]
    req, resp = chunk_wire(body)
    return {
        "payload": n,
        "req_wire": req,
        "resp_wire": resp,
        "one_way": n / req,                      # request payload / request frame
        "both": (n + 4) / (req + resp),          # payload both ways / wire both ways
        "goodput": (n - 4) / (req + resp),       # fragment bytes / wire both ways
    }


def payload_for(target: float, data: bytes, *, both: bool) -> int:
    """The smallest packet payload whose LOAD_CHUNK frames reach ``target`` (one way or both ways)."""
    n = 16
    while n < 65000:
        e = computed_efficiency(n, (data * (n // len(data) + 2)))
        if (e["both"] if both else e["one_way"]) >= target:
            return n
        n += 1
    return -1


def measured_efficiency(client: BoardClient, n: int, data: bytes, chunks: int = 40) -> dict[str, float]:
    """Upload ``chunks`` LOAD_CHUNKs of ``n``-byte payloads to the live board; count wire bytes."""
    step = n - 4
    blob = (data * (chunks * step // len(data) + 2))[: chunks * step]
    client.request(Command.LOAD_BEGIN, struct.pack("<II", len(blob), zlib.crc32(blob) ^ random.getrandbits(16)))
    s0 = client.stats.to_dict()
    t0 = time.perf_counter()
    for off in range(0, len(blob), step):
        client.request(Command.LOAD_CHUNK, struct.pack("<I", off) + blob[off:off + step])
    dt = time.perf_counter() - t0
    s1 = client.stats.to_dict()
    sent, recv = s1["bytes_sent"] - s0["bytes_sent"], s1["bytes_received"] - s0["bytes_received"]
    return {
        "payload": n,
        "sent": sent,
        "recv": recv,
        "one_way": chunks * n / sent,
        "both": chunks * (n + 4) / (sent + recv),
        "goodput": len(blob) / (sent + recv),
        "retrans": s1["retransmissions"] - s0["retransmissions"],
        "bytes_per_s": len(blob) / dt,
    }


# -- (c) MACs from the blob -------------------------------------------------------------------


def blob_macs(info) -> int:
    macs = 0
    t = info.tensors
    for op in info.ops:
        out = math.prod(t[op.output].shape)
        if op.name == "CONV_2D":
            _o, kh, kw, ci = t[op.inputs[1]].shape
            macs += out * kh * kw * ci
        elif op.name == "DEPTHWISE_CONV_2D":
            _one, kh, kw, _c = t[op.inputs[1]].shape
            macs += out * kh * kw
        elif op.name == "FULLY_CONNECTED":
            macs += out * t[op.inputs[1]].shape[-1]
    return macs


def quantize_input(x: np.ndarray, info) -> np.ndarray:
    scale, zp = info.input.scale, info.input.zero_point
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp
    return np.clip(q, -128, 127).astype(np.int8).reshape(info.input.shape)


# -- (e) /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_over(pid: int, seconds: float, work=None) -> tuple[float, int, int]:
    """Host CPU % of ``pid`` over ``seconds`` (running ``work()`` in a loop meanwhile), its RSS, work done."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    done = 0
    while time.monotonic() - t0 < seconds:
        if work is None:
            time.sleep(seconds - (time.monotonic() - t0))
        else:
            work()
            done += 1
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0), rss_kib(pid), done


# -- main ----------------------------------------------------------------------------------------


def make_fragments(out_root: Path) -> dict[str, dict]:
    # digits_cnn's Fisher plan trains every layer on this budget (no frozen head since issue 13); the depth
    # ranking's ties keep the later cut, so both models get a frozen fragment
    cfg = TrainingConfig(importance="depth")
    frags = {}
    for name in ZOO_NAMES:
        source = load_model_source(name, None, cfg)
        plan = make_plan(source, single_board_fleet(get_board(PLAN_BOARD)), cfg, out_root / name)
        frozen = plan.files["frozen"].read_bytes()
        blob = compile_blob(frozen, source=f"{name}/frozen.tflite")
        info = parse_blob(blob)
        frags[name] = {"plan": plan, "tflite": frozen, "blob": blob, "info": info, "macs": blob_macs(info),
                       "x": get_zoo_model(name).test_split().x}
    return frags


def main() -> None:
    print(f"host: {os.cpu_count()} CPUs, load average {Path('/proc/loadavg').read_text().split()[:3]} (shared machine)")
    board = get_board(BOARD)
    elf = build_firmware(BOARD)
    plan_build = build_firmware(PLAN_BOARD)
    print(f"firmware: {elf.summary()}")
    print(f"          {plan_build.summary()}")
    with tempfile.TemporaryDirectory(prefix="tinyfed-bench-link-") as tmp:
        frags = make_fragments(Path(tmp))
    sample_data = frags["har_cnn"]["blob"][64:]  # real fragment bytes (weights: zeros included)
    rng_data = random.Random(0).randbytes(4096)

    # (a) computed --------------------------------------------------------------------------
    print("\n(a) LOAD_CHUNK efficiency, computed from framing.py (payload = u32 offset + data)")
    print(f"{'payload':>8} {'req wire':>8} {'resp wire':>9} {'one-way':>8} {'both ways':>9} {'data/wire':>9}   "
          f"(fragment bytes / random bytes)")
    comp = {}
    for n in PAYLOAD_SIZES:
        e = computed_efficiency(n, sample_data)
        r = computed_efficiency(n, rng_data)
        comp[n] = e
        print(f"{n:>8} {e['req_wire']:>8} {e['resp_wire']:>9} {e['one_way']:>8.4f} {e['both']:>9.4f} "
              f"{e['goodput']:>9.4f}   random: {r['one_way']:.4f} / {r['both']:.4f} / {r['goodput']:.4f}")
    need_one = payload_for(TARGET, sample_data, both=False)
    need_both = payload_for(TARGET, sample_data, both=True)
    e256 = comp[256]
    print(f"max payload {DEFAULT_MAX_PAYLOAD}: one-way {e256['one_way']:.4f}, both ways {e256['both']:.4f}; "
          f"{TARGET} needs max_payload >= {need_one} (one way) / >= {need_both} "
          f"(both ways, with the {e256['resp_wire']}-byte ack)")

    with launch_qemu(board, elf) as emu, BoardClient(emu.url, name=emu.name) as client:
        info = client.hello()
        print(f"live board: {info.board_id} build {info.build}, max_payload {info.max_payload}, "
              f"slot {info.fragment_slot_bytes}, arena {info.arena_bytes}, fw RAM {info.firmware_ram_bytes}, "
              f"fw flash {info.firmware_flash_bytes}")
        print(f"(a) measured on {emu.name} ({emu.url}), 40 LOAD_CHUNKs per size, fragment bytes")
        print(f"{'payload':>8} {'sent':>7} {'recv':>6} {'one-way':>8} {'both ways':>9} {'data/wire':>9} {'retrans':>7} "
              f"{'data B/s':>9}")
        for n in PAYLOAD_SIZES:
            m = measured_efficiency(client, n, sample_data)
            print(f"{n:>8} {m['sent']:>7} {m['recv']:>6} {m['one_way']:>8.4f} {m['both']:>9.4f} {m['goodput']:>9.4f} "
                  f"{m['retrans']:>7} {m['bytes_per_s']:>9,.0f}")

        # (b) upload -----------------------------------------------------------------------
        print(f"\n(b) upload of the frozen fragment (plan on {PLAN_BOARD}) to {BOARD} in QEMU")
        print(f"{'model':<11} {'ops':>4} {'tflite B':>9} {'blob B':>7} {'chunks':>6} {'seconds':>8} {'blob B/s':>9} "
              f"{'wire B':>7} {'data/wire':>9} {'arena B':>8}")
        commits = {}
        for name, f in frags.items():
            blob = f["blob"]
            times = []
            for _ in range(4):  # the first upload warms the path; the median of the other three is reported
                s0 = client.stats.to_dict()
                t0 = time.perf_counter()
                res = client.load_fragment(blob)
                times.append(time.perf_counter() - t0)
                s1 = client.stats.to_dict()
            dt = float(np.median(times[1:]))
            wire = (s1["bytes_sent"] - s0["bytes_sent"]) + (s1["bytes_received"] - s0["bytes_received"])
            commits[name] = res
            print(f"{name:<11} {res.op_count:>4} {len(f['tflite']):>9,} {len(blob):>7,} {res.chunks:>6} {dt:>8.3f} "
                  f"{len(blob) / dt:>9,.0f} {wire:>7,} {len(blob) / wire:>9.4f} {res.arena_bytes:>8,}  "
                  f"(best {len(blob) / min(times[1:]):,.0f} B/s)")

        # (e) host CPU / RSS ---------------------------------------------------------------
        pid = emu.process.pid
        f = frags["digits_cnn"]
        client.load_fragment(f["blob"])
        xq = quantize_input(f["x"][0], f["info"])
        idle_cpu, idle_rss, _ = cpu_over(pid, 5.0)
        busy_cpu, busy_rss, n_inf = cpu_over(pid, 5.0, lambda: client.infer(xq))
        print(f"\n(e) host CPU and RSS of one QEMU {BOARD} (pid {pid}), no icount")
        print(f"idle 5 s: {idle_cpu:.2f}% CPU, RSS {idle_rss / 1024:.1f} MiB")
        print(f"busy 5 s (digits_cnn frozen, {n_inf} inferences, {n_inf / 5:.0f}/s): {busy_cpu:.1f}% CPU, "
              f"RSS {busy_rss / 1024:.1f} MiB")

    # (c) instructions per sample under -icount -------------------------------------------------
    ns_per_insn = 2 ** ICOUNT_SHIFT
    clock = board.clock_mhz * 1_000_000
    print(f"\n(c) INVOKE under -icount shift={ICOUNT_SHIFT} on {BOARD}: 1 instruction = {ns_per_insn} ns virtual "
          f"({1e3 / ns_per_insn:.1f} MIPS); SysTick at {board.clock_mhz} MHz counts {clock * ns_per_insn / 1e9:.2f} "
          f"'cycles' per instruction, so instructions = cycles x {1e9 / clock / ns_per_insn:.2f}")
    print(f"{'model':<11} {'ops':>4} {'MACs/sample':>11} {'cycles':>9} {'insns/sample':>12} {'insn/MAC':>8} "
          f"{'MAC/s @1 insn/clk':>17} {'ms @clk':>8} {'MAC/s virtual':>13} {'wall ms':>8} {'samples':>7} {'spread':>6}")
    with launch_qemu(board, elf, extra_args=ICOUNT) as emu, BoardClient(emu.url, name=emu.name) as client:
        client.hello()
        for name, f in frags.items():
            client.load_fragment(f["blob"])
            cyc = []
            samples = min(20, len(f["x"]))
            t0 = time.perf_counter()
            for i in range(samples):
                client.infer(quantize_input(f["x"][i], f["info"]))
                cyc.append(client.last_cycles)
            wall = (time.perf_counter() - t0) / samples
            c = float(np.median(cyc))
            insns = c * 1e9 / clock / ns_per_insn
            macs = f["macs"]
            print(f"{name:<11} {len(f['info'].ops):>4} {macs:>11,} {c:>9,.0f} {insns:>12,.0f} {insns / macs:>8.2f} "
                  f"{macs / (insns / clock):>17,.0f} {1e3 * insns / clock:>8.2f} "
                  f"{macs / (insns * ns_per_insn * 1e-9):>13,.0f} "
                  f"{1e3 * wall:>8.2f} {samples:>7} {max(cyc) - min(cyc):>6}")
        pid = emu.process.pid
        f = frags["digits_cnn"]
        xq = quantize_input(f["x"][0], f["info"])
        idle_cpu, idle_rss, _ = cpu_over(pid, 5.0)
        busy_cpu, busy_rss, n_inf = cpu_over(pid, 5.0, lambda: client.infer(xq))
        print(f"(e) same board under -icount shift={ICOUNT_SHIFT}: idle 5 s {idle_cpu:.2f}% CPU, RSS "
              f"{idle_rss / 1024:.1f} MiB; busy 5 s (digits_cnn, {n_inf} inferences) {busy_cpu:.1f}% CPU, "
              f"RSS {busy_rss / 1024:.1f} MiB")

    # (d) RAM and flash against the planner -------------------------------------------------------
    print(f"\n(d) memory: planner ({PLAN_BOARD} plan) vs built firmware + LOAD_COMMIT arena")
    print(f"{'model':<11} {'plan RAM lines (fw+link+arena)':>32} {'built fw RAM+arena':>19} {'diff':>7}   "
          f"{'plan flash (fw+frags)':>22} {'built fw flash+blob':>20} {'diff':>8}")
    for name, f in frags.items():
        fit = f["plan"].fits_by_board[PLAN_BOARD]
        rl, fl = fit.ram_lines, fit.flash_lines
        plan_inf = rl["firmware_reserve"] + rl["link_buffers"] + rl["inference_arena"]
        for b in (elf, plan_build):
            built_ram = b.fw_ram_bytes + commits[name].arena_bytes
            built_flash = b.fw_flash_bytes + len(f["blob"])
            print(f"{name:<11} {rl['firmware_reserve']:>9,}+{rl['link_buffers']:,}+{rl['inference_arena']:,}="
                  f"{plan_inf:>8,} {b.fw_ram_bytes:>7,}+{commits[name].arena_bytes:>6,}={built_ram:>6,} "
                  f"{plan_inf - built_ram:>+7,}   {fl['firmware_reserve']:>7,}+{fl['model_fragments']:>7,}="
                  f"{fit.flash_used:>7,} {b.fw_flash_bytes:>7,}+{len(f['blob']):>6,}={built_flash:>7,} "
                  f"{fit.flash_used - built_flash:>+8,}  [{b.board} build]")
        print(f"{'':<11} plan RAM total with training lines {fit.ram_used:,} B of {fit.board.ram_bytes:,}; "
              f"planner arena {f['plan'].arena:,} (TFLM estimate {f['plan'].tflm_arena_estimated:,}) vs blob arena "
              f"{f['info'].arena_bytes:,}; flash fragments = frozen {len(f['tflite']):,} tflite + tail")


if __name__ == "__main__":
    main()
