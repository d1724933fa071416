"""An FC regressor, an FC autoencoder and a multilabel model (LOGISTIC head) train on an emulated
board (QEMU ``mps2-an386``): the C engine's MSE and sigmoid cross-entropy on real firmware,
against the float32 reference and the ``sim://`` board (tests/test_train_tasks.py builds the
cases), and the board's checks of TFDS targets.

The autoencoder's data is preloaded into the local-data store with QEMU's ``-device loader``
(the board validates it the first time it trains); the regressor's goes over the link.
"""

from __future__ import annotations

import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _run_shared import run_firmware
from test_train_tasks import TASK_PARAMS, board_session, reference_update, task_case

from tinyfed.boards import get_board
from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.emulate.emulator import start_qemu, wait_ready
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.errors import DeviceError
from tinyfed.firmware_bridge.link.framing import Status
from tinyfed.firmware_bridge.link.train_link import TrainParams
from tinyfed.firmware_bridge.twin.sim import forget_sim_boards

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                       reason="needs qemu-system-arm and gcc-arm-none-eabi (make test installs both)"),
]


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory):
    return run_firmware(tmp_path_factory, "mps2-an386")


def _forged(image: bytes, at: int, value: bytes) -> bytes:
    """``image`` with ``value`` written at body offset ``at`` and the CRC made right again."""
    b = bytearray(image)
    b[local_data.HEADER_BYTES + at:local_data.HEADER_BYTES + at + len(value)] = value
    struct.pack_into("<I", b, 16, zlib.crc32(bytes(b[local_data.HEADER_BYTES:])))
    return bytes(b)


@pytest.mark.parametrize("name", list(TASK_PARAMS))
def test_board_trains_a_task_without_softmax_like_the_twin(firmware, tmp_path: Path, name: str) -> None:
    c = task_case(name)
    params = TrainParams(version=1, per_channel=True, **TASK_PARAMS[name])
    preload = name.startswith("autoencode")
    extra: tuple[str, ...] = ()
    if preload:
        image = tmp_path / "data.tfds"
        image.write_bytes(c["image"])
        extra = ("-device", f"loader,file={image},addr=0x{firmware.data_store_address:x}")
    emu = start_qemu(get_board("mps2-an386"), firmware.elf, name=f"task-{name}", extra_args=extra)
    try:
        wait_ready(emu)
        before, report, update, after = board_session(emu.url, c, params, f"qemu-{name}", load_data=not preload)
    finally:
        emu.stop()
    forget_sim_boards()
    sim = board_session(f"sim://mps2-an386?name=q{name}", task_case(name), params, f"sim-{name}")
    ref, ref_loss, shapes = reference_update(task_case(name), params)
    got = update.dense(shapes)
    step = float(update.scales.max())
    print(f"{name} on mps2-an386: mean loss {before.loss:.4f} -> {after.loss:.4f} (train {report.loss:.4f}, "
          f"sim {sim[1].loss:.4f}); largest update difference {np.abs(got - ref).max() / step:.3f} int8 steps, "
          f"{report.cycles} cycles")
    assert before.n == after.n == 64
    assert (before.correct, after.correct) == (sim[0].correct, sim[3].correct)  # 0 for MSE; all labels right
    assert after.loss < 0.85 * before.loss
    assert report.loss == pytest.approx(ref_loss, rel=1e-4) and report.loss == pytest.approx(sim[1].loss, rel=1e-4)
    assert before.loss == pytest.approx(sim[0].loss, rel=1e-5) and after.loss == pytest.approx(sim[3].loss, rel=1e-3)
    assert np.abs(got - ref).max() <= 1.01 * step


def test_board_checks_targets(firmware) -> None:
    c = task_case("regress")
    x = c["x"][:8]
    labels = local_data.pack(x, np.eye(8, 3, dtype=np.uint8), kind=local_data.TARGET_LABELS)
    reals = local_data.pack(x, c["y"][:8], kind=local_data.TARGET_REAL)
    emu = start_qemu(get_board("mps2-an386"), firmware.elf, name="task-targets")
    try:
        wait_ready(emu)
        with BoardClient(emu.url, name="qemu-targets", timeout=5.0) as client:
            client.hello()
            client.load_program(c["program"])
            for bad, why in ((_forged(labels, 4, b"\x02"), "not 0 or 1"),
                             (_forged(reals, 12, struct.pack("<f", float("inf"))), "not finite"),
                             (_forged(local_data.pack(x, np.arange(8) % 3, 3), 5, b"\x03"), "not below")):
                with pytest.raises(DeviceError) as e:
                    client.load_data(bad)
                assert e.value.status == Status.NO_DATA and why in str(e.value), str(e.value)
            client.load_data(labels)  # valid labels, but the program regresses two reals
            with pytest.raises(DeviceError) as e:
                client.evaluate()
            assert e.value.status == Status.NO_DATA and "program target kind 2" in str(e.value)
            client.load_data(reals)
            assert client.evaluate().n == 8
    finally:
        emu.stop()
