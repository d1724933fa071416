"""The Helium (MVE) int8 kernels on an emulated Cortex-M55 match TFLite Micro bit for bit.

The mps3-an547 firmware compiles ``firmware/engine/ops/*_mve.c`` (its -mcpu=cortex-m55 has MVE) and
runs them for CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED; QEMU executes the vector instructions.
One board runs: the zoo models (har_cnn, digits_cnn), the engine's kernel zoo (per-channel and
per-tensor), small op models chosen to reach every branch of the kernels (filter depths below,
at and above one 16-byte vector, 1x1 filters read in place, padding, strides, dilation, channel
counts that leave a partial vector, depth multiplier 3, batched FULLY_CONNECTED) and the field
look-alikes (random weights: the kernels' arithmetic does not depend on training; without the
final SOFTMAX, which TFLM refuses at an untrained model's logit scale). Each gets 200
random int8 inputs (fewer for the large inputs, whose upload dominates: a byte budget per model),
and every output must equal TFLM's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
    pytest.skip("needs qemu-system-arm and gcc-arm-none-eabi (make test installs both)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))

from _run_shared import run_firmware  # noqa: E402

from tinyfed.firmware_bridge.compile.blob import compile_blob  # noqa: E402
from tinyfed.firmware_bridge.emulate.emulator import launch_qemu  # noqa: E402
from tinyfed.firmware_bridge.link.client import BoardClient  # noqa: E402
from tinyfed.models.tflm import TflmModel  # noqa: E402

INPUTS = 200
UPLOAD_BUDGET = 120_000  # input bytes per model: the op models get 80-200 inputs, ResNet-8 39, MobileNet 8
MVE_KERNELS = ("tfmb_conv_2d_mve", "tfmb_depthwise_conv_2d_mve", "tfmb_fully_connected_mve", "tfmb_add_mve")


def _op_models() -> dict[str, bytes]:
    """Single-op models (plus the converter's quantize glue) that reach each kernel branch."""
    from engine_models import _convert, _tf

    keras = _tf().keras
    keras.utils.set_random_seed(11)
    bias = keras.initializers.RandomNormal(stddev=0.3, seed=2)
    L = keras.layers
    cases = {
        # CONV_2D: depth 27 (a vector + a tail), SAME padding, stride 2, odd channel count
        "conv3x3_s2": ((9, 11, 3), L.Conv2D(5, 3, strides=2, padding="same", bias_initializer=bias)),
        # 1x1 read in place, depth 24
        "conv1x1": ((6, 7, 24), L.Conv2D(16, 1, activation="relu", bias_initializer=bias)),
        # depth 12 (one partial vector per column), stride 2 over a 1x1 filter
        "conv1x1_small": ((7, 7, 12), L.Conv2D(12, 1, strides=2, padding="same", bias_initializer=bias)),
        # dilation, a non-square filter, VALID
        "conv_dilated": ((8, 9, 5), L.Conv2D(7, (2, 3), dilation_rate=(2, 1), bias_initializer=bias)),
        # depth 360, positions not a multiple of four
        "conv_deep": ((5, 3, 40), L.Conv2D(9, 3, padding="same", activation="relu6", bias_initializer=bias)),
        # DEPTHWISE_CONV_2D: 13 channels (a block of 8 and a partial one), SAME edges
        "dw3x3": ((7, 9, 13), L.DepthwiseConv2D(3, padding="same", bias_initializer=bias)),
        "dw3x3_s2": ((8, 8, 24), L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu",
                                                   bias_initializer=bias)),
        "dw_dilated": ((10, 6, 8), L.DepthwiseConv2D((5, 2), dilation_rate=2, padding="same",
                                                     bias_initializer=bias)),
        "dw_multiplier": ((5, 5, 4), L.DepthwiseConv2D(3, depth_multiplier=3, bias_initializer=bias)),
        # FULLY_CONNECTED: depth 37, an odd output count; two rows (batched)
        "fc": ((37,), L.Dense(13, activation="relu", bias_initializer=bias)),
        "fc_batched": ((2, 20), L.Dense(6, bias_initializer=bias)),
    }
    out = {}
    for name, (shape, layer) in cases.items():
        inp = keras.Input(shape=shape, batch_size=1)
        out[name] = _convert(keras.Model(inp, layer(inp)), shape)
    return out


def _field_models(slot: int) -> dict[str, bytes]:
    """The look-alikes with their initial (random) weights, as the QEMU boards run them (a head that fits)."""
    from field_models import SPECS, qemu_fragment

    from tinyfed.models.convert import convert_keras_to_int8
    from tinyfed.models.tflite_graph import TfliteGraph

    out = {}
    for name in ("ds_cnn", "resnet8", "mobilenet_vww", "micro_speech", "toyadmos_ae", "sine"):
        model = SPECS[name].build()
        shape = tuple(int(d) for d in model.input_shape[1:])
        calib = np.random.default_rng(3).normal(0.0, 1.0, size=(16, *shape)).astype(np.float32)
        tflite = convert_keras_to_int8(model, calib)
        graph = TfliteGraph.from_bytes(tflite)
        if graph.ops[-1].name == "SOFTMAX":  # untrained logits' scale is below what TFLM's softmax takes
            tflite = graph.split(len(graph.ops) - 1)[0]
        out[name] = qemu_fragment(tflite, slot)
    return out


@pytest.fixture(scope="module")
def an547(tmp_path_factory: pytest.TempPathFactory):
    """One mps3-an547 board running this run's build of the current sources, and that build's ELF."""
    build = run_firmware(tmp_path_factory, "mps3-an547")
    with launch_qemu("mps3-an547", build.elf) as emu, BoardClient(emu.url, name="an547", timeout=120.0) as client:
        yield client, build.elf


@pytest.fixture(scope="module")
def models(an547, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from engine_models import kernel_zoo_int8

    from tinyfed.models.zoo import get_zoo_model

    os.environ.setdefault("TINYFED_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    client, _ = an547
    found = {name: get_zoo_model(name).int8_tflite() for name in ("har_cnn", "digits_cnn")}
    found["kernel_zoo"] = kernel_zoo_int8(True)
    found["kernel_zoo_per_tensor"] = kernel_zoo_int8(False)
    found.update(_op_models())
    found.update(_field_models(client.hello().fragment_slot_bytes))
    return found


def test_firmware_has_the_mve_kernels(an547) -> None:
    """The board's image is the MVE path (else the comparisons below would test the plain-C kernels)."""
    _, elf = an547
    nm = shutil.which("arm-none-eabi-nm")
    assert nm is not None
    symbols = subprocess.run([nm, str(elf)], check=True, capture_output=True, text=True).stdout
    for name in MVE_KERNELS:
        assert f" {name}\n" in symbols, name


def test_mve_kernels_match_tflm(an547, models: dict[str, bytes]) -> None:
    client, _ = an547
    bad = {}
    for name, tflite in models.items():
        reference = TflmModel(tflite)
        detail = reference.input_details[0]
        shape = tuple(int(d) for d in detail["shape"][1:])
        n = max(8, min(INPUTS, UPLOAD_BUDGET // int(np.prod(shape))))
        x = np.random.default_rng(len(name)).integers(-128, 128, size=(n, *shape), dtype=np.int8)
        want = np.asarray(reference.run(x))
        client.load_fragment(compile_blob(tflite))
        got = np.stack([client.infer(x[i : i + 1]) for i in range(n)]).reshape(want.shape)
        wrong = int((got != want).reshape(n, -1).any(axis=1).sum())
        if wrong:
            bad[name] = f"{wrong}/{n} inputs differ"
    assert not bad, bad
