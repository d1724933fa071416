"""Measure the emulated boards' int8/fp32 rates and refresh their ``[speed]`` tables (issues 3, 14).

int8: ``tinyfed profile``'s measurement (the firmware's PROFILE command, docs/kernels.md) of a
representative model, har_cnn's frozen fragment as the board's plan cuts it, on this core's
optimised kernels: ``int8_macs_per_s = MACs * clock_hz / cycles``. fp32: the firmware's BENCH
command (0x30, docs/firmware.md), a fixed dot-product loop (``--int8-from bench`` takes int8 from
BENCH's loop too, as before issue 14). Both on mps2-an386 and mps3-an547 in QEMU under
``-icount shift=4``; with ``--write`` the rates go into the boards' ``[speed]`` tables
(``measured = true``; nothing else in the files changes), which the simulator's device time reads
(``tinyfed/host/simulator.py``: frozen MACs / ``int8_macs_per_s``). Under icount every
instruction advances virtual time by 2**shift ns, so the SysTick counts are deterministic: the
rates are QEMU's instruction timing (62.5 MIPS at shift=4), not a real core's speed.

Run: ``.venv/bin/python bench/speed.py [--write] [--repeats N] [--int8-from profile|bench]``.
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
from tinyfed.host.profiling import load_fragment, profile_model

BOARDS = ("mps2-an386", "mps3-an547")
#: The representative model whose frozen fragment sets int8_macs_per_s.
PROFILE_MODEL = "har_cnn"
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


def run_profile(board_name: str) -> dict[str, float]:
    """int8 MAC/s of PROFILE_MODEL's frozen fragment on this core's kernels (``tinyfed profile``)."""
    board = get_board(board_name)
    fragment = load_fragment(PROFILE_MODEL, board)
    report = profile_model(fragment, board, paths=("fast",), icount_shift=ICOUNT_SHIFT)
    doc = report.as_dict()
    return {"model": PROFILE_MODEL, "cut_op": fragment.cut_op, "macs": fragment.macs,
            "cycles": report.paths["fast"].cycles, "kernel_path": report.kernel_path,
            "int8_macs_per_s": report.int8_macs_per_s("fast"), "int8_insn_per_mac": doc["instructions_per_mac"]}


def merge_rates(bench: dict[str, float], profile: dict[str, float] | None) -> dict[str, float]:
    """BENCH's figures with int8 replaced by the profile's when there is one (``int8_from`` says which)."""
    r = dict(bench)
    r["int8_from"] = "bench"
    if profile is not None:
        r.update(int8_from="profile", int8_macs_per_s=profile["int8_macs_per_s"],
                 int8_insn_per_mac=profile["int8_insn_per_mac"], profile=profile)
    return r


def source_text(r: dict, day: str) -> str:
    ns = 2 ** ICOUNT_SHIFT
    clock = (f"under qemu -icount shift={ICOUNT_SHIFT} ({day}): 1 instruction = {ns} ns virtual time, "
             f"i.e. {1e3 / ns:g} MIPS, counted by SysTick at {r['clock_hz'] / 1e6:g} MHz; ")
    if r.get("int8_from") == "profile":
        p = r["profile"]
        return (f"firmware PROFILE and BENCH {clock}int8: {p['model']}'s frozen fragment (ops 0..{p['cut_op'] - 1}, "
                f"{p['macs']:,} MACs, {p['kernel_path']} kernels) at {r['int8_insn_per_mac']:.2f} instructions "
                f"per MAC; fp32: BENCH at {r['fp32_insn_per_flop']:.2f} per FLOP; QEMU's timing, not the real core's")
    return (f"firmware BENCH {clock}"
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
    ap.add_argument("--int8-from", choices=("profile", "bench"), default="profile",
                    help=f"int8 rate: {PROFILE_MODEL}'s frozen fragment (PROFILE) or BENCH's loop")
    args = ap.parse_args(argv)
    day = dt.datetime.now(dt.UTC).date().isoformat()
    for name in BOARDS:
        b = run_bench(name, args.repeats)
        print(f"{name}: BENCH int8 {b['int8_macs']:,} MACs in {b['int8_cycles']:,} cycles, fp32 {b['fp32_flops']:,} "
              f"FLOPs in {b['fp32_cycles']:,} cycles at {b['clock_hz'] / 1e6:g} MHz (counter {b['counter']}, "
              f"deterministic {b['deterministic']}) -> {b['int8_macs_per_s']:,.0f} MAC/s, "
              f"{b['fp32_flops_per_s']:,.0f} FLOP/s; {b['int8_insn_per_mac']:.2f} insn/MAC, "
              f"{b['fp32_insn_per_flop']:.2f} insn/FLOP")
        p = run_profile(name) if args.int8_from == "profile" else None
        if p is not None:
            print(f"  PROFILE {p['model']} frozen fragment (ops 0..{p['cut_op'] - 1}, {p['kernel_path']} kernels): "
                  f"{p['macs']:,} MACs in {p['cycles']:,} cycles -> {p['int8_macs_per_s']:,.0f} MAC/s, "
                  f"{p['int8_insn_per_mac']:.2f} insn/MAC")
        r = merge_rates(b, p)
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
