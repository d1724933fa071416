"""Planner figures for every zoo model on every shipped real board, side by side.

Prints, per (model, board): w* size, on-device training memory against full-model training
(FTTE's saving), the head's TFLM arena estimated against measured, the whole RAM estimate's
error, flash use, and the time the plan took. Run: ``python bench/plan_memory.py``.
"""

from __future__ import annotations

import time

from tinyfed.boards import get_board, single_board_fleet
from tinyfed.models.zoo import ZOO_NAMES
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import make_plan
from tinyfed.planner.sources import load_model_source

BOARDS = ("nrf52840", "rp2040", "apollo3", "esp32s3", "stm32l4r9")


def main() -> None:
    cfg = TrainingConfig()
    header = (
        f"{'model':<11} {'board':<10} {'w* params':>10} {'w* %':>6} {'train KiB':>10} {'full KiB':>9} {'ratio':>6} "
        f"{'arena est':>9} {'arena TFLM':>10} {'RAM err':>8} {'RAM KiB':>8} {'flash KiB':>9} {'plan s':>7}"
    )
    print(f"training config: batch {cfg.batch_size}, {cfg.optimizer}, importance {cfg.importance}")
    print(header)
    for name in ZOO_NAMES:
        source = load_model_source(name, None, cfg)
        for board_name in BOARDS:
            board = get_board(board_name)
            start = time.perf_counter()
            plan = make_plan(source, single_board_fleet(board), cfg, None)
            seconds = time.perf_counter() - start
            fit = plan.fits_by_board[board_name]
            err = (fit.ram_estimate_bytes - fit.ram_used) / fit.ram_used
            print(
                f"{name:<11} {board_name:<10} {plan.trainable_params:>10,} "
                f"{100 * plan.trainable_params / plan.total_params:>5.1f}% "
                f"{plan.training.total / 1024:>10.1f} {plan.full_training.total / 1024:>9.1f} "
                f"{plan.training_ratio:>6.3f} "
                f"{plan.arena_estimated:>9,} {plan.arena_measured or 0:>10,} {100 * err:>+7.2f}% "
                f"{fit.ram_used / 1024:>8.1f} {fit.flash_used / 1024:>9.1f} {seconds:>7.2f}"
            )


if __name__ == "__main__":
    main()
