"""Measure the emulated boards' int8/fp32 rate with the firmware's BENCH command (issue 3).

Runs BENCH (0x30, docs/firmware.md) on mps2-an386 and mps3-an547 in QEMU under
``-icount shift=4`` and prints ``int8_macs_per_s`` and ``fp32_flops_per_s``; with ``--write``
it stores them in the boards' ``[speed]`` tables (``measured = true``; nothing else in the
files changes). Under icount every instruction advances virtual time by 2**shift ns, so the
SysTick counts BENCH reports are deterministic: the rates are QEMU's instruction timing
(62.5 MIPS at shift=4), not a real core's speed.

Run: ``.venv/bin/python bench/speed.py [--write] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import struct

from tinyfed.boards import get_board
from tinyfed.boards.registry import BUILTIN_DIR
from tinyfed.firmware_bridge.emulate.build import build_firmware
from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
from tinyfed.firmware_bridge.link.client import BoardClient

BOARDS = ("mps2-an386", "mps3-an547")
BENCH = 0x30
ICOUNT_SHIFT = 4
_BENCH_OK = struct.Struct("<IIIIIBBH")
_TABLE_HEADER = re.compile(r"^\s*\[([^\]]+)\]\s*(#.*)?$")


def run_bench(board_name: str, repeats: int) -> dict[str, float]:
    board = get_board(board_name)
    elf = build_firmware(board_name)
    with launch_qemu(board, elf, extra_args=("-icount", f"shift={ICOUNT_SHIFT}")) as emu, \
            BoardClient(emu.url, name=emu.name) as client:
        client.hello()
        runs = [client.request(BENCH, struct.pack("<H", repeats)) for _ in range(2)]
    macs, icyc, flops, fcyc, clock, counter, _, reps = _BENCH_OK.unpack(runs[0])
    insn_per_cycle = 1e9 / clock / 2 ** ICOUNT_SHIFT  # SysTick cycles -> instructions under icount
    return {
        "board": board_name, "int8_macs": macs, "int8_cycles": icyc, "fp32_flops": flops, "fp32_cycles": fcyc,
        "clock_hz": clock, "counter": counter, "repeats": reps, "deterministic": runs[0] == runs[1],
        "int8_macs_per_s": macs * clock / icyc, "fp32_flops_per_s": flops * clock / fcyc,
        "int8_insn_per_mac": icyc * insn_per_cycle / macs, "fp32_insn_per_flop": fcyc * insn_per_cycle / flops,
    }


def source_text(r: dict[str, float], day: str) -> str:
    ns = 2 ** ICOUNT_SHIFT
    return (f"firmware BENCH under qemu -icount shift={ICOUNT_SHIFT} ({day}): 1 instruction = {ns} ns virtual time, "
            f"i.e. {1e3 / ns:g} MIPS, counted by SysTick at {r['clock_hz'] / 1e6:g} MHz; "
            f"{r['int8_insn_per_mac']:.2f} instructions per int8 MAC, {r['fp32_insn_per_flop']:.2f} per fp32 FLOP; "
            f"QEMU's timing, not the real core's")


def speed_table_text(text: str, int8: int, fp32: int, source: str) -> str:
    """``text`` (a board TOML) with only the values in its ``[speed]`` table replaced."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if (m := _TABLE_HEADER.match(ln)) and m.group(1).strip() == "speed")
    end = next((i for i in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines))
    values = {"int8_macs_per_s": f"{int8:_}", "fp32_flops_per_s": f"{fp32:_}", "measured": "true",
              "source": '"' + source.replace('"', "'") + '"'}
    for key, value in values.items():
        pat = re.compile(rf"^(\s*{re.escape(key)}\s*=\s*)(\"[^\"]*\"|[^\s#]+)(.*)$")
        for i in range(start + 1, end):
            if m := pat.match(lines[i]):
                lines[i] = f"{m.group(1)}{value}{m.group(3)}"
                break
        else:
            raise ValueError(f"[speed] has no {key}")
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="write the rates into the boards' [speed] tables")
    ap.add_argument("--repeats", type=int, default=1024, help="BENCH repeats (1..4096)")
    args = ap.parse_args(argv)
    day = dt.datetime.now(dt.UTC).date().isoformat()
    for name in BOARDS:
        r = run_bench(name, args.repeats)
        print(f"{name}: int8 {r['int8_macs']:,} MACs in {r['int8_cycles']:,} cycles, fp32 {r['fp32_flops']:,} FLOPs in "
              f"{r['fp32_cycles']:,} cycles at {r['clock_hz'] / 1e6:g} MHz (counter {r['counter']}, "
              f"deterministic {r['deterministic']}) -> {r['int8_macs_per_s']:,.0f} MAC/s, "
              f"{r['fp32_flops_per_s']:,.0f} FLOP/s; {r['int8_insn_per_mac']:.2f} insn/MAC, "
              f"{r['fp32_insn_per_flop']:.2f} insn/FLOP")
        if args.write:
            path = BUILTIN_DIR / f"{name}.toml"
            text = path.read_text()
            new = speed_table_text(text, round(r["int8_macs_per_s"]), round(r["fp32_flops_per_s"]),
                                   source_text(r, day))
            if new != text:
                tmp = path.with_suffix(".toml.tmp")
                tmp.write_text(new)
                os.replace(tmp, path)
            print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
