"""A har_cnn training round on 8 emulated boards, plain-C kernels then optimised ones, on one image (issue 14).

Plans har_cnn for an nRF52840, boots ``--boards`` QEMU ``mps2-an386`` boards (the firmware built
with the nRF52840's budget; ``--board mps3-an547`` for the M55) under ``-icount shift=4``, gives
each the frozen fragment, the training program and its own HAPT user's windows, then runs the
round twice: every board in plain-C reference-kernel mode (KERNELS), then in its optimised mode:
SET_WEIGHTS, TRAIN (``--epochs`` over ``--windows`` windows, batch 16), READ_UPDATE on all boards
at once. Prints the round's wall time (QEMU on this host's cores), instructions per training
sample from the boards' cycle counts (head and the rest), and whether the two modes' updates are
bit-identical (they must be: the kernels are).

Run: ``.venv/bin/python bench/train_round.py [--boards 8] [--windows 48] [--epochs 1]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed.boards import get_board, single_board_fleet
from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.compile.train_blob import compile_program
from tinyfed.firmware_bridge.emulate.build import build_firmware
from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.train_link import TrainParams
from tinyfed.host.profiling import profile_input
from tinyfed.models.tflm import TflmModel
from tinyfed.models.zoo import get_zoo_model
from tinyfed.planner import trainable as tfw
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import make_plan
from tinyfed.planner.sources import load_model_source

ICOUNT_SHIFT = 4
VERSION = 1


def provision(files: dict[str, bytes], n_boards: int, windows: int) -> tuple[bytes, bytes, list[bytes], np.ndarray]:
    """The fragment blob, the training program, one data image per board (its own user) and w0."""
    frozen, program = compile_blob(files["frozen"]), compile_program(files["tail"], files["trainable"])
    q = TflmModel(files["frozen"]).input_details[0]["quantization_parameters"]
    zm = get_zoo_model("har_cnn")
    clients = zm.client_split()
    parts = zm.client_partitions("natural")
    images = []
    for i in range(n_boards):
        idx = np.sort(parts[i % len(parts)])[:windows]
        x = local_data.quantize_inputs(clients.x[idx], float(q["scales"][0]), int(q["zero_points"][0]))
        images.append(local_data.pack(x, clients.y[idx], zm.num_classes))
    w0 = np.concatenate([u.values.ravel() for u in tfw.decode(files["trainable"])]).astype(np.float32)
    return frozen, program, images, w0


def one_round(clients: list[BoardClient], w0: np.ndarray, reference: bool, epochs: int,
              clock_hz: int) -> dict[str, Any]:
    """Every board trains once in the given kernel mode; wall time, instructions per sample, updates."""

    def board(i: int) -> tuple[Any, bytes]:
        c = clients[i]
        c.kernels(reference=reference)
        c.set_weights(VERSION, w0)
        report = c.train(TrainParams(version=VERSION, epochs=epochs, batch_size=16, lr=0.01, seed=i), timeout=3600.0)
        update = c.read_update(report.update_bytes)
        return report, update.q.tobytes() + update.scales.tobytes()

    t0 = time.monotonic()
    with ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(board, range(len(clients))))
    wall = time.monotonic() - t0
    per_insn = 1e9 / clock_hz / 2**ICOUNT_SHIFT
    samples = sum(r.n * epochs for r, _ in results)
    insn = sum(r.cycles for r, _ in results) * per_insn
    head = sum(r.head_cycles or 0 for r, _ in results) * per_insn
    return {"wall_s": wall, "insn_per_sample": insn / samples, "head_insn_per_sample": head / samples,
            "updates": [u for _, u in results], "samples": samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", type=int, default=8)
    ap.add_argument("--board", default="mps2-an386")
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cfg = TrainingConfig()
    with tempfile.TemporaryDirectory(prefix="tinyfed-round-") as tmp:
        plan = make_plan(load_model_source("har_cnn", None, cfg), single_board_fleet(get_board("nrf52840")), cfg,
                         Path(tmp), measure=False)
        files = {k: Path(plan.files[k]).read_bytes() for k in ("frozen", "tail", "trainable")}
    frozen, program, images, w0 = provision(files, args.boards, args.windows)
    board = get_board(args.board)
    elf = build_firmware(board.name)
    with ExitStack() as stack:
        emus = [stack.enter_context(launch_qemu(board, elf, name=f"round#{i}",
                                                extra_args=("-icount", f"shift={ICOUNT_SHIFT}")))
                for i in range(args.boards)]
        clients = [stack.enter_context(BoardClient(e.url, name=e.name, timeout=30.0)) for e in emus]
        t0 = time.monotonic()

        def setup(i: int) -> str:
            c = clients[i]
            c.hello()
            c.load_fragment(frozen)
            c.load_program(program)
            c.load_data(images[i])
            return c.kernels().path

        with ThreadPoolExecutor(args.boards) as pool:
            paths = set(pool.map(setup, range(args.boards)))
        print(f"{args.boards} x {board.name} ({'/'.join(paths)} kernels): provisioned in "
              f"{time.monotonic() - t0:.1f} s; har_cnn nRF52840 plan, cut {plan.cut}, {args.windows} windows x "
              f"{args.epochs} epoch(s) per board")
        clock_hz = clients[0].profile(profile_input(files["frozen"])).clock_hz  # what the cycle counter runs at
        rounds = {mode: one_round(clients, w0, mode == "plain C", args.epochs, clock_hz)
                  for mode in ("plain C", "optimised")}
    print("\n| kernels | round wall time (s) | instructions / sample | of which frozen head |")
    print("| --- | ---: | ---: | ---: |")
    for mode, r in rounds.items():
        print(f"| {mode} | {r['wall_s']:.1f} | {r['insn_per_sample'] / 1e6:.3f} M | "
              f"{r['head_insn_per_sample'] / 1e6:.3f} M |")
    a, b = rounds["plain C"], rounds["optimised"]
    same = a["updates"] == b["updates"]
    print(f"\nspeed-up: wall {a['wall_s'] / b['wall_s']:.2f}x, instructions per sample "
          f"{a['insn_per_sample'] / b['insn_per_sample']:.2f}x; updates bit-identical across modes: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
