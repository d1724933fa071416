"""The training engine's FPU kernels on the emulated cores compute exactly what its plain C does.

``firmware/engine/tftr_fpu.h`` runs the dot products and axpys of CONV_2D and FULLY_CONNECTED
as VLDMIA + VMLA.F32 blocks on the Cortex-M4F (``mps2-an386``) and the Cortex-M55
(``mps3-an547``); the host build runs the C loops, which tests/test_train_engine.py holds to
the numpy reference. Here a program without exp/log (MSE on the kernel zoo and digits_cnn cut
before their SOFTMAX: newlib's and glibc's expf may differ in the last bit, and the M4F's newlib
uses another expf) trains on each board and in the host library in the same sample order: the
boards' float32 updates and mean losses must equal the host's bit for bit.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _run_shared import run_firmware
from test_train_engine import _everything, c_train, lib  # noqa: F401 - lib is a fixture

from tinyfed.boards import get_board
from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.compile.train_blob import compile_program, parse_program
from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.train_link import TrainParams
from tinyfed.firmware_bridge.twin import shuffle
from tinyfed.models.tflite_graph import TfliteGraph

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                       reason="needs qemu-system-arm and gcc-arm-none-eabi (make test installs both)"),
]

EPOCHS, BATCH, LR, SEED = 2, 8, 0.01, 4


def _without_softmax(model: bytes) -> bytes:
    g = TfliteGraph.from_bytes(model)
    assert g.ops[-1].name == "SOFTMAX"
    return g.split(len(g.ops) - 1)[0]


def _case(name: str) -> dict:
    """An MSE program over every weight and bias of ``name`` minus its SOFTMAX, int8 inputs, real targets."""
    if name == "kernel_zoo":
        from engine_models import KERNEL_ZOO_SHAPE, kernel_zoo_int8

        model = _without_softmax(kernel_zoo_int8())
        shape: tuple[int, ...] = KERNEL_ZOO_SHAPE
    else:
        from tinyfed.models.zoo import get_zoo_model

        model = _without_softmax(get_zoo_model("digits_cnn").int8_tflite())
        shape = tuple(TfliteGraph.from_bytes(model).tensors[TfliteGraph.from_bytes(model).inputs[0]].shape[1:])
    program = compile_program(model, _everything(model))
    info = parse_program(program)
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, size=(24, *shape)).astype(np.int8)
    y = rng.normal(size=(24, info.classes)).astype(np.float32)
    return {"program": program, "x": x, "y": y, "image": local_data.pack(x, y, kind=local_data.TARGET_REAL),
            "w0": np.concatenate([np.asarray(v, np.float32).ravel() for v in _unit_values(model)])}


def _unit_values(model: bytes) -> list[np.ndarray]:
    from tinyfed.planner import trainable as tfw

    return [u.values for u in tfw.decode(_everything(model))]


def _host_delta(lib, case: dict) -> tuple[np.ndarray, float]:  # noqa: F811 - the fixture's value
    n = len(case["x"])
    order: list[int] = []
    bounds = [0]
    for e in range(EPOCHS):
        perm = shuffle.epoch_order(n, SEED, e)
        for k in range(0, n, BATCH):
            order.extend(perm[k:k + BATCH])
            bounds.append(len(order))
    # real targets travel as the float32 bytes the board reads
    targets = np.ascontiguousarray(case["y"], np.float32).view(np.uint8).reshape(n, -1)
    values, losses = c_train(lib, case["program"], case["x"].reshape(n, -1), targets, np.array(order),
                             np.array(bounds), LR)
    mean = np.float32(0)
    for v in losses:  # the board's running sum, in float32
        mean = np.float32(mean + v)
    return values - case["w0"], float(np.float32(mean / np.float32(len(losses))))


@pytest.mark.parametrize("board_name", ["mps2-an386", "mps3-an547"])
def test_fpu_kernels_train_bit_identical_to_the_c_loops(lib, tmp_path: Path,  # noqa: F811
                                                        tmp_path_factory: pytest.TempPathFactory,
                                                        board_name: str) -> None:
    fw = run_firmware(tmp_path_factory, board_name)
    cases = {name: _case(name) for name in ("kernel_zoo", "digits")}
    with launch_qemu(get_board(board_name), fw.elf) as emu, \
            BoardClient(emu.url, name=emu.name, timeout=5.0) as client:
        client.hello()
        for name, case in cases.items():
            client.load_program(case["program"])
            client.load_data(case["image"])
            client.set_weights(1, case["w0"])
            report = client.train(TrainParams(version=1, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED,
                                              float_update=True))
            update = client.read_update(report.update_bytes)
            ref, ref_loss = _host_delta(lib, case)
            print(f"{name} on {board_name}: {report.n} samples x {EPOCHS} epochs, {report.cycles} cycles, "
                  f"{int(np.sum(update.values != ref))} of {ref.size} update values differ from the host's")
            assert np.abs(ref).max() > 0
            np.testing.assert_array_equal(update.values, ref)
            assert report.loss == ref_loss
