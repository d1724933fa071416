"""The planner's RAM prediction against the firmware's painted watermark, model by model.

Each model is planned for QEMU ``mps2-an386`` (the nRF52840's 256 KiB budget), its frozen fragment
compiled to a TFMB blob and its tail to a TFTR program; a QEMU board loads both and a few random
local samples, trains two epochs (per-channel update, no head cache: the cache only fills RAM the
plan leaves free) and reports STATS. The planner's model RAM (the head's arena plus the training
lines) is compared with the highest arena byte the board wrote; its whole-board figure with static
data + deepest stack + that arena peak. Shared by ``tests/test_plan_watermark.py`` and
``bench/plan_memory.py``. TensorFlow is imported lazily; built models are cached per process.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

BOARD = "mps2-an386"
DS_CNN_SHAPE = (49, 10, 1)  # 49 frames x 10 MFCC


@functools.cache
def ds_cnn_int8() -> bytes:
    """A DS-CNN-like keyword model (BN + ReLU folded into the convolutions): Conv2D 64 (10, 4) stride 2,
    four depthwise 3x3 + pointwise 64 blocks, average pooling over the whole map, Dense 12, softmax."""
    from engine_models import _convert, _tf

    keras = _tf().keras
    keras.utils.set_random_seed(5)
    layers = keras.layers
    inp = keras.Input(shape=DS_CNN_SHAPE, batch_size=1, name="mfcc")
    x = layers.Conv2D(64, (10, 4), strides=2, padding="same", activation="relu", name="conv1")(inp)
    for i in range(4):
        x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name=f"dw{i}")(x)
        x = layers.Conv2D(64, 1, activation="relu", name=f"pw{i}")(x)
    x = layers.AveragePooling2D(pool_size=(int(x.shape[1]), int(x.shape[2])), name="avg")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(12, name="logits")(x)
    out = layers.Softmax(name="probs")(x)
    return _convert(keras.Model(inp, out), DS_CNN_SHAPE)


def _zoo(name: str) -> Callable[[], bytes]:
    def load() -> bytes:
        from tinyfed.models.zoo import get_zoo_model

        return get_zoo_model(name).int8_tflite()

    return load


def model_builders() -> dict[str, Callable[[], bytes]]:
    """Every zoo model and test model, by name: int8 .tflite bytes on demand."""
    import _models
    import engine_models

    from tinyfed.models.zoo import ZOO_NAMES

    builders: dict[str, Callable[[], bytes]] = {name: _zoo(name) for name in ZOO_NAMES}
    builders.update({
        "chain_cnn": _models.chain_cnn_int8,
        "residual": _models.residual_int8,
        "kernel_zoo": engine_models.kernel_zoo_int8,
        "kernel_zoo_per_tensor": functools.partial(engine_models.kernel_zoo_int8, False),
        "ds_cnn": ds_cnn_int8,
    })
    return builders


@dataclass(frozen=True)
class Watermark:
    """One model's planned and painted RAM on one emulated board."""

    model: str
    trainable_params: int
    cut: int
    predicted_model_ram: int  # the plan's inference arena + training lines
    measured_arena_peak: int  # the highest arena byte the board wrote
    predicted_board_ram: int  # the plan's ram_bytes_used (firmware reserve included)
    measured_peak_ram: int  # static + deepest stack + arena peak

    @property
    def ratio(self) -> float:
        """Predicted over measured model RAM (1.0: exact; above: conservative)."""
        return self.predicted_model_ram / self.measured_arena_peak


def plan_for_board(name: str, tflite: bytes, out_dir: Path):
    """The planner's plan of ``tflite`` for the emulated board: a zoo model's own plan (Fisher ranking on
    its proxy split), a test model's as a bare .tflite (depth ranking)."""
    from tinyfed.boards import get_board, single_board_fleet
    from tinyfed.models.zoo import ZOO_NAMES
    from tinyfed.planner.config import TrainingConfig
    from tinyfed.planner.plan import ModelSource, make_plan
    from tinyfed.planner.sources import load_model_source

    cfg = TrainingConfig()
    source = load_model_source(name, None, cfg) if name in ZOO_NAMES else ModelSource(name, "tflite", tflite)
    return make_plan(source, single_board_fleet(get_board(BOARD)), cfg, out_dir, measure=False)


def measure(name: str, tflite: bytes, elf: Path, out_dir: Path, samples: int = 6) -> Watermark:
    """Plan ``tflite``, train it on a fresh QEMU board running ``elf``, and read the board's watermark."""
    from tinyfed.boards import get_board
    from tinyfed.firmware_bridge.compile import local_data
    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.firmware_bridge.compile.train_blob import compile_program, parse_program
    from tinyfed.firmware_bridge.emulate.emulator import start_qemu, wait_ready
    from tinyfed.firmware_bridge.link.client import BoardClient
    from tinyfed.firmware_bridge.link.train_link import TrainParams
    from tinyfed.models.tflite_graph import TfliteGraph

    plan = plan_for_board(name, tflite, out_dir)
    assert plan.fits and plan.trainable_params > 0, f"{name}: {plan.problems}"
    files = {k: Path(p).read_bytes() for k, p in plan.files.items() if k in ("frozen", "tail", "trainable")}
    blob = compile_blob(files["frozen"]) if "frozen" in files else None
    program = compile_program(files["tail"], files["trainable"])
    graph = TfliteGraph.from_bytes(tflite)
    shape = tuple(graph.tensors[graph.inputs[0]].shape[1:])
    classes = max(parse_program(program).classes, 2)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(samples, *shape), dtype=np.int8)
    y = rng.integers(0, classes, size=samples)
    emu = start_qemu(get_board(BOARD), elf, name=f"watermark-{name}")
    try:
        wait_ready(emu)
        with BoardClient(emu.url, name=emu.name, timeout=5.0) as client:
            client.hello()
            if blob is not None:
                client.load_fragment(blob)
            client.load_program(program)
            client.load_data(local_data.pack(x, y, classes=classes))
            report = client.train(TrainParams(version=0, epochs=2, batch_size=4, lr=0.01, seed=1, per_channel=True,
                                              head_cache=False), timeout=900.0)
            client.read_update(report.update_bytes)
            stats = client.ram_stats()
    finally:
        emu.stop()
    fit = plan.fits_by_board[BOARD]
    return Watermark(name, plan.trainable_params, plan.cut, plan.arena + plan.training.total, stats.arena_peak,
                     fit.ram_used, stats.peak_ram)
