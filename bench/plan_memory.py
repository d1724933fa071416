"""Planner figures for every zoo model on every shipped real board, and the planner against the firmware.

(a) Per (model, board): w* size, on-device training memory against full-model training (FTTE's
saving), the firmware's head arena beside what TFLite Micro would need, RAM and flash use, and
the time the plan took.
(b) With ``--measure`` (needs qemu-system-arm and arm-none-eabi-gcc): every zoo and test model
planned for QEMU mps2-an386 (the nRF52840's budget), trained on a QEMU board, and the planner's
model RAM (head arena + training lines) against the painted arena watermark the board reports
(STATS), and the whole board (firmware reserve included) against static + stack peak + arena peak.
Run: ``python bench/plan_memory.py [--measure]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tinyfed.boards import get_board, single_board_fleet
from tinyfed.models.zoo import ZOO_NAMES
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import make_plan
from tinyfed.planner.sources import load_model_source

BOARDS = ("nrf52840", "rp2040", "apollo3", "esp32s3", "stm32l4r9")


def plan_table() -> None:
    cfg = TrainingConfig()
    print(f"training config: batch {cfg.batch_size} (costs no RAM: one sample at a time), {cfg.optimizer}, "
          f"importance {cfg.importance}")
    print(f"{'model':<11} {'board':<10} {'w* params':>10} {'w* %':>6} {'cut':>4} {'train KiB':>10} {'full KiB':>9} "
          f"{'ratio':>6} {'fw arena':>9} {'TFLM arena':>10} {'RAM KiB':>8} {'flash KiB':>9} {'plan s':>7}")
    for name in ZOO_NAMES:
        source = load_model_source(name, None, cfg)
        for board_name in BOARDS:
            start = time.perf_counter()
            plan = make_plan(source, single_board_fleet(get_board(board_name)), cfg, None)
            seconds = time.perf_counter() - start
            fit = plan.fits_by_board[board_name]
            print(
                f"{name:<11} {board_name:<10} {plan.trainable_params:>10,} "
                f"{100 * plan.trainable_params / plan.total_params:>5.1f}% {plan.cut:>4} "
                f"{plan.training.total / 1024:>10.1f} {plan.full_training.total / 1024:>9.1f} "
                f"{plan.training_ratio:>6.3f} {plan.arena:>9,} {plan.tflm_arena_measured or 0:>10,} "
                f"{fit.ram_used / 1024:>8.1f} {fit.flash_used / 1024:>9.1f} {seconds:>7.2f}"
            )


def watermark_table() -> None:
    import _watermark

    from tinyfed import ops
    from tinyfed.firmware_bridge.emulate.build import build_firmware
    from tinyfed.models.tflite_graph import TfliteGraph

    print(f"\nplanner vs painted watermark on QEMU {_watermark.BOARD} (2 epochs, per-channel update, no head cache)")
    print(f"{'model':<22} {'w* params':>10} {'cut':>4} {'predicted B':>12} {'painted B':>10} {'ratio':>7} "
          f"{'board pred B':>13} {'board meas B':>13} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        fw = build_firmware(_watermark.BOARD, Path(tmp) / "fw")
        for name, build in _watermark.model_builders().items():
            tflite = build()
            missing = {op.name for op in TfliteGraph.from_bytes(tflite).ops} - set(ops.firmware_ops())
            if missing:
                print(f"{name:<22} refused by the planner: no firmware kernel for {', '.join(sorted(missing))}")
                continue
            w = _watermark.measure(name, tflite, fw.elf, Path(tmp) / name)
            print(f"{name:<22} {w.trainable_params:>10,} {w.cut:>4} {w.predicted_model_ram:>12,} "
                  f"{w.measured_arena_peak:>10,} {w.ratio:>7.4f} {w.predicted_board_ram:>13,} "
                  f"{w.measured_peak_ram:>13,} {w.predicted_board_ram / w.measured_peak_ram:>7.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="also train every model on QEMU and read its watermark")
    args = parser.parse_args()
    plan_table()
    if args.measure:
        watermark_table()


if __name__ == "__main__":
    main()
