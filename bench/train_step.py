"""The device train step on emulated boards: instructions per sample and per local epoch, and
update bytes against a dense float32 update (issue 4).

Plans har_cnn for an nRF52840, loads the frozen fragment, the training program and one HAPT
user's windows into QEMU boards running the firmware under ``-icount shift=4`` (every instruction
advances virtual time by 16 ns, so the board's SysTick cycle counts convert exactly to executed
instructions), then runs EVALUATE (forward only: the frozen int8 fragment plus the float tail)
and TRAIN (forward, backward, SGD) over the same samples. Instructions convert to time on each
board profile's clock at one instruction per cycle (an estimate: real cores stall on flash wait
states and FPU latency). Prints one table per measurement, and figures for BENCHMARKS.md.

Run: ``.venv/bin/python bench/train_step.py [--windows N]``.
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from tinyfed.boards import get_board, list_boards, single_board_fleet
from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.compile.train_blob import compile_program, parse_program
from tinyfed.firmware_bridge.emulate.build import build_firmware
from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.framing import Command
from tinyfed.firmware_bridge.link.train_link import TrainParams
from tinyfed.models.tflm import TflmModel
from tinyfed.models.zoo import get_zoo_model
from tinyfed.planner import trainable as tfw
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import make_plan
from tinyfed.planner.sources import load_model_source
from tinyfed.training import dense_model_bytes

ICOUNT_SHIFT = 4
EMULATED = ("mps2-an386", "mps3-an547")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=64, help="local windows the boards train on")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = Path(tempfile.mkdtemp(prefix="tinyfed-bench-"))
    cfg = TrainingConfig()
    plan = make_plan(load_model_source("har_cnn", None, cfg), single_board_fleet(get_board("nrf52840")), cfg, out,
                     measure=False)
    files = {k: Path(plan.files[k]).read_bytes() for k in ("frozen", "tail", "trainable")}
    frozen, program = compile_blob(files["frozen"]), compile_program(files["tail"], files["trainable"])
    info = parse_program(program)
    units = tfw.decode(files["trainable"])
    q = TflmModel(files["frozen"]).input_details[0]["quantization_parameters"]
    zm = get_zoo_model("har_cnn")
    clients = zm.client_split()
    parts = zm.client_partitions("natural")
    idx = np.sort(parts[0])[: args.windows]
    x = local_data.quantize_inputs(clients.x[idx], float(q["scales"][0]), int(q["zero_points"][0]))
    image = local_data.pack(x, clients.y[idx], zm.num_classes)
    mean_windows = float(np.mean([len(p) for p in parts]))

    update_bytes = 24 + 4 * len(units) + info.trainable_count
    dense = dense_model_bytes(files["frozen"], files["tail"])
    print(f"har_cnn on nrf52840: w* {info.trainable_count} floats in {len(units)} units; "
          f"training program {len(program)} B, training RAM {info.ram_bytes} B")
    print(f"update per round: int8 {update_bytes} B (per-tensor scales) vs dense float32 {dense} B "
          f"= {update_bytes / dense:.4f} (goal <= 0.31); per-channel scales: "
          f"{24 + 4 * sum(len(u.channels) for u in units) + info.trainable_count} B")
    print(f"float multiply-accumulates per training sample in the tail (program header): {info.flops}")

    rows = []
    for name in EMULATED:
        board = get_board(name)
        elf = build_firmware(name)
        with launch_qemu(board, elf, extra_args=("-icount", f"shift={ICOUNT_SHIFT}")) as emu, \
                BoardClient(emu.url, name=emu.name, timeout=2.0) as client:
            client.hello()
            # the SysTick clock the firmware counts cycles at (BENCH reports it)
            clock = struct.unpack_from("<I", client.request(Command.BENCH, struct.pack("<H", 1)), 16)[0]
            client.load_fragment(frozen)
            client.load_program(program)
            client.load_data(image)
            ev = client.evaluate()
            tr = client.train(TrainParams(version=0, epochs=1, batch_size=16, lr=0.01, seed=0))
        insn_per_cycle = 1e9 / clock / 2 ** ICOUNT_SHIFT
        fwd = ev.cycles * insn_per_cycle / ev.n
        step = tr.cycles * insn_per_cycle / tr.n
        rows.append((name, fwd, step))
        print(f"{name}: forward (frozen int8 + float tail) {fwd / 1e6:.3f} M instructions/sample; train step "
              f"{step / 1e6:.3f} M/sample; backward + SGD {(step - fwd) / 1e3:.1f} k/sample "
              f"({(step - fwd) / step:.2%} of the step)")

    print(f"\nper local epoch of an average HAPT client user ({mean_windows:.0f} windows), at one instruction "
          f"per cycle on each profile's clock (step measured on mps2-an386, Cortex-M4F):")
    step_m4 = rows[0][2]
    for b in list_boards():
        clock = b.clock_mhz * 1e6
        print(f"  {b.name:12s} {b.clock_mhz:4d} MHz: {step_m4 / clock * 1e3:8.1f} ms/sample, "
              f"{step_m4 * mean_windows / clock:7.1f} s/epoch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
