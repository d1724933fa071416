"""Where the device train step spends its instructions: per function and per source line of the
float32 training engine (``firmware/engine/tftr*.c``, ``train_ops/``), next to the frozen int8 head.

QEMU runs the firmware one instruction per translation block (``-singlestep``, QEMU 7.2; 8.1 and
later spell it ``-accel tcg,one-insn-per-tb=on``) and logs every block it executes
(``-d exec,nochain``) into a FIFO this script reads while the board trains, so each log line is
one executed instruction at a known PC. PCs map to functions and their object
files through the linker map, hot PCs of the training engine to source lines through addr2line.
The TRAIN reply's cycle count (``-icount``) is printed beside the total as a cross-check.

Run: ``.venv/bin/python bench/train_profile.py [--model har_cnn|digits_cnn] [--board mps2-an386]``.
Slow (a few hundred thousand instructions per second): keep ``--samples`` small.
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import subprocess
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tinyfed.boards import get_board, single_board_fleet
from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.compile.train_blob import compile_program, parse_program
from tinyfed.firmware_bridge.emulate.build import build_firmware
from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.train_link import TrainParams
from tinyfed.models.tflm import TflmModel
from tinyfed.models.zoo import get_zoo_model
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import make_plan
from tinyfed.planner.sources import load_model_source

ICOUNT_SHIFT = 4
_PC = re.compile(rb"\[[0-9a-f]{8}/([0-9a-f]{8})/")
_MAP_FN = re.compile(r"^ \.text\.(\S+)\s*\n?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)$", re.M)
_MAP_TEXT = re.compile(r"^ \.text\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)$", re.M)  # libraries: one per member


@dataclass(frozen=True)
class Fn:
    """A function of the image: its name, address range and object file."""

    name: str
    start: int
    size: int
    obj: str

    @property
    def part(self) -> str:
        """Which engine the function belongs to (the split the report prints)."""
        o = self.obj.replace("\\", "/")
        if "/engine/train_ops/" in o or "/engine/tftr" in o:
            return "tail"
        if "/engine/ops/" in o or "/engine/tfmb" in o:
            return "head"
        if "libgcc" in o or "libm" in o or "libc" in o:
            return "lib"
        return "firmware"


def map_functions(map_file: Path) -> list[Fn]:
    """Functions of the image from the linker map (``-ffunction-sections``: one section each)."""
    text = map_file.read_text()
    fns = [Fn(m[1], int(m[2], 16), int(m[3], 16), m[4]) for m in _MAP_FN.finditer(text)]
    fns += [Fn(m[3].rsplit("(", 1)[-1].rstrip(")"), int(m[1], 16), int(m[2], 16), m[3])
            for m in _MAP_TEXT.finditer(text)]
    return sorted((f for f in fns if f.size), key=lambda f: f.start)


def count_pcs(fifo: Path, counts: Counter[bytes]) -> None:
    """Counts the PC of every logged block (one instruction each) until QEMU closes the log."""
    with open(fifo, "rb") as f:
        rest = b""
        while chunk := f.read(1 << 22):
            buf = rest + chunk
            cut = buf.rfind(b"\n") + 1
            counts.update(_PC.findall(buf, 0, cut))
            rest = buf[cut:]


def plan_model(model: str, out: Path):
    """The frozen fragment, training program and a few local samples of ``model`` planned for an nRF52840."""
    cfg = TrainingConfig()
    plan = make_plan(load_model_source(model, None, cfg), single_board_fleet(get_board("nrf52840")), cfg, out,
                     measure=False)
    files = {k: Path(plan.files[k]).read_bytes() for k in ("frozen", "tail", "trainable") if k in plan.files}
    zm = get_zoo_model(model)
    clients = zm.client_split()
    # no frozen fragment (the planner trains the whole model): the board trains on the raw input
    q = TflmModel(files.get("frozen", files["tail"])).input_details[0]["quantization_parameters"]
    return files, zm, clients, (float(q["scales"][0]), int(q["zero_points"][0]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="har_cnn")
    ap.add_argument("--board", default="mps2-an386")
    ap.add_argument("--samples", type=int, default=2, help="local samples (the head runs once per sample)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs (the tail runs samples * epochs times)")
    ap.add_argument("--lines", type=int, default=25, help="hot source lines of the training engine to print")
    ap.add_argument("--out", type=Path, default=None, help="firmware build directory (default: a temp dir)")
    ap.add_argument("--elf", type=Path, default=None, help="a firmware ELF built already (its .map beside it)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tmp = Path(tempfile.mkdtemp(prefix="tinyfed-profile-"))
    files, zm, clients, (scale, zp) = plan_model(args.model, tmp / "plan")
    frozen = compile_blob(files["frozen"]) if "frozen" in files else None
    program = compile_program(files["tail"], files["trainable"])
    info = parse_program(program)
    x = local_data.quantize_inputs(clients.x[: args.samples], scale, zp)
    image = local_data.pack(x, clients.y[: args.samples], zm.num_classes)

    elf = args.elf or Path(build_firmware(args.board, args.out or tmp / "fw").elf)
    fns = map_functions(elf.with_suffix(".map"))
    starts = [f.start for f in fns]
    fifo = tmp / "exec.fifo"
    os.mkfifo(fifo)
    counts: Counter[bytes] = Counter()
    reader = threading.Thread(target=count_pcs, args=(fifo, counts), daemon=True)
    reader.start()
    qemu_args = ("-icount", f"shift={ICOUNT_SHIFT}", "-singlestep", "-d", "exec,nochain", "-D", str(fifo))
    board = get_board(args.board)
    with launch_qemu(board, elf, extra_args=qemu_args, ready_timeout=120) as emu, \
            BoardClient(emu.url, name=emu.name, timeout=60.0) as client:
        client.hello()
        if frozen is not None:
            client.load_fragment(frozen)
        client.load_program(program)
        client.load_data(image)
        tr = client.train(TrainParams(version=0, epochs=args.epochs, batch_size=args.samples, lr=0.01, seed=0,
                                      head_cache=frozen is not None and args.epochs > 1), timeout=3600)
    reader.join(timeout=600)
    per_fn: Counter[Fn] = Counter()
    per_pc: dict[int, int] = {}
    for pc_hex, n in counts.items():
        pc = int(pc_hex, 16) & ~1
        per_pc[pc] = per_pc.get(pc, 0) + n
        i = bisect.bisect_right(starts, pc) - 1
        f = fns[i] if i >= 0 and pc < fns[i].start + fns[i].size else None
        per_fn[f if f else Fn("?", 0, 0, "?")] += n
    runs_tail = args.samples * args.epochs
    runs_head = args.samples
    clock = board.clock_mhz * 1e6
    train_insn = tr.cycles * 1e9 / clock / 2**ICOUNT_SHIFT
    parts: Counter[str] = Counter()
    for f, n in per_fn.items():
        parts[f.part] += n
    tail = parts["tail"] / runs_tail
    print(f"{args.model} on {args.board}: {info.flops} float MACs per training sample (program header), "
          f"{info.trainable_count} trainable; TRAIN {tr.n} samples x {args.epochs} epochs, head cache "
          f"{'on' if tr.head_cached else 'off'}; -icount TRAIN {train_insn / 1e6:.3f} M instructions, "
          f"log total {sum(counts.values()) / 1e6:.3f} M (with loading)")
    print(f"  tail (tftr*, train_ops): {tail / 1e3:.1f} k instructions per sample = "
          f"{tail / info.flops:.3f} per float MAC")
    print(f"  head (tfmb*, ops):       {parts['head'] / runs_head / 1e3:.1f} k instructions per sample")
    print(f"  libgcc/libm:             {parts['lib'] / runs_tail / 1e3:.1f} k per tail run; "
          f"firmware {parts['firmware'] / 1e3:.1f} k in all")
    print("  per function of the training engine, instructions per sample (per tail run):")
    for f, n in sorted(per_fn.items(), key=lambda kv: -kv[1]):
        if f.part in ("tail", "lib") and n / runs_tail >= 100:
            print(f"    {f.name:36s} {n / runs_tail / 1e3:9.1f} k  {f.obj.rsplit('/', 1)[-1]}")
    hot = sorted(((n, pc) for pc, n in per_pc.items()), reverse=True)
    tail_fns = [f for f in fns if f.part == "tail"]
    hot_tail = [(n, pc) for n, pc in hot if any(f.start <= pc < f.start + f.size for f in tail_fns)]
    by_line: Counter[str] = Counter()
    if hot_tail:
        top = hot_tail[:4000]
        out = subprocess.run(["arm-none-eabi-addr2line", "-e", str(elf), *[hex(pc) for _, pc in top]],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        for (n, _), line in zip(top, out, strict=True):
            by_line[line.rsplit("/", 1)[-1]] += n
    print(f"  hottest source lines of the training engine (per tail run, top {args.lines}):")
    for line, n in by_line.most_common(args.lines):
        print(f"    {line:36s} {n / runs_tail / 1e3:9.1f} k")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
