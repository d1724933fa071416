"""Local training over the link, on the ``sim://`` board: provisioning, w* at a version, TRAIN,
the int8 update and its metadata, EVALUATE, typed errors, and the pieces the board and the host
must compute identically (sample order, update quantization, TFDS images)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyfed.errors import DatasetError, TinyfedError
from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.errors import DeviceError
from tinyfed.firmware_bridge.link.framing import Command, Status
from tinyfed.firmware_bridge.link.train_link import TrainParams, quantize_flat
from tinyfed.firmware_bridge.twin import shuffle
from tinyfed.firmware_bridge.twin.sim import forget_sim_boards

ROOT = Path(__file__).resolve().parents[1]


# -- the pieces the board and the host share ------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 347, 1000])
def test_epoch_order_is_a_permutation_that_changes_per_epoch_and_seed(n: int) -> None:
    orders = [shuffle.epoch_order(n, seed, epoch) for seed in (0, 1) for epoch in (0, 1)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))
    if n >= 16:
        assert len({tuple(o) for o in orders}) == 4


@pytest.mark.parametrize("table_max", [shuffle.TABLE_MAX, 0])
def test_vectorized_epoch_order_equals_the_scalar_firmware_algorithm(table_max: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """epoch_order (numpy, both the lookup-table and the cycle-walking path) against
    shuffle_index one position at a time: n of every bit width class, powers of 4 and their
    neighbours, n=1, a large n, and seeds at the 32-bit edges (and past them: masked)."""
    monkeypatch.setattr(shuffle, "TABLE_MAX", table_max)
    ns = [1, 2, 3, 4, 5, 7, 15, 16, 17, 63, 64, 65, 100, 255, 256, 257, 347, 1000, 1023, 1024, 1025, 4097, 16385,
          70000]
    seeds = [0, 1, 12345, 2**31 - 2, 0xFFFFFFFF, 2**40 + 5, -3]
    rng = np.random.default_rng(0)
    for n in ns:
        for seed in seeds if n <= 1025 else seeds[-1:]:
            for epoch in (0, 1, int(rng.integers(2, 1000))) if n <= 1025 else (int(rng.integers(0, 1000)),):
                key = shuffle.epoch_key(seed, epoch)
                want = [shuffle.shuffle_index(i, n, key) for i in range(n)]
                got = shuffle.epoch_order(n, seed, epoch)
                assert got.dtype == np.int64 and got.tolist() == want, (n, seed, epoch)
    assert shuffle.epoch_order(0, 1, 0).size == 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler (gcc)")
def test_firmware_shuffle_matches_the_python_twin(tmp_path: Path) -> None:
    harness = tmp_path / "shuffle_main.c"
    harness.write_text(
        '#include <stdio.h>\n#include <stdlib.h>\n#include "shuffle.h"\n'
        "int main(int argc, char **argv) {\n"
        "  unsigned n = strtoul(argv[1], 0, 10), seed = strtoul(argv[2], 0, 10), ep = strtoul(argv[3], 0, 10);\n"
        "  unsigned key = shuffle_epoch_key(seed, ep);\n"
        '  for (unsigned i = 0; i < n; i++) printf("%u\\n", shuffle_index(i, n, key));\n'
        "  return 0;\n}\n"
    )
    exe = tmp_path / "shuffle"
    subprocess.run(["gcc", "-O2", "-std=c11", "-Wall", "-Werror", f"-I{ROOT / 'firmware/src'}", str(harness),
                    str(ROOT / "firmware/src/shuffle.c"), "-o", str(exe)], check=True)
    for n, seed, epoch in [(1, 0, 0), (7, 3, 0), (15, 2**31 - 2, 0), (347, 12345, 2), (4096, 0xFFFFFFFF, 9),
                           (16385, 99, 3), (70000, 7, 1)]:
        out = subprocess.run([str(exe), str(n), str(seed), str(epoch)], check=True, capture_output=True, text=True)
        assert [int(v) for v in out.stdout.split()] == shuffle.epoch_order(n, seed, epoch).tolist()


def test_tfds_image_round_trip_and_damage_is_refused() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(5, 1, 4, 3), dtype=np.int8)
    y = np.array([0, 2, 1, 2, 0])
    image = local_data.pack(x, y, classes=3)
    back = local_data.unpack(image)
    assert back.classes == 3 and np.array_equal(back.y, y) and np.array_equal(back.x, x.reshape(5, -1))
    with pytest.raises(DatasetError, match="CRC"):
        local_data.unpack(image[:-1] + bytes([image[-1] ^ 1]))
    with pytest.raises(DatasetError, match="length"):
        local_data.unpack(image[:-4])
    with pytest.raises(DatasetError, match="labels"):
        local_data.pack(x, np.array([0, 1, 2, 3, 0]), classes=3)
    with pytest.raises(DatasetError, match="int8"):
        local_data.pack(x.astype(np.float32), y, classes=3)


def test_update_quantization_per_tensor_and_per_channel() -> None:
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (2, 1), (2, 5)]
    delta = rng.normal(0, 1e-3, size=sum(c * p for c, p in shapes)).astype(np.float32)
    delta[12:14] = 0.0  # an all-zero unit: scale 0, q 0, no NaN
    for per_channel in (False, True):
        q, scales = quantize_flat(delta, shapes, per_channel)
        assert scales.size == (7 if per_channel else 3)
        assert np.all(np.isfinite(scales)) and q.dtype == np.int8 and np.abs(q).max() == 127
        from tinyfed.firmware_bridge.link.train_link import DeviceUpdate

        back = DeviceUpdate(0, 1, 0.0, 0.0, q, scales, per_channel).dense(shapes)
        step = np.repeat(scales, [p for c, p in shapes for _ in range(c)]) if per_channel else \
            np.repeat(scales, [c * p for c, p in shapes])
        assert np.all(np.abs(back - delta) <= step / 2 + 1e-12)
        assert np.all(back[12:14] == 0)


# -- a whole session on sim:// ----------------------------------------------------------------


@pytest.fixture(scope="module")
def har_session(har_training_case):
    return har_training_case


def _provision(client: BoardClient, case, user: int) -> None:
    client.load_fragment(case.frozen_blob)
    client.load_program(case.program)
    client.load_data(case.images[user])


def test_sim_board_trains_and_returns_the_reference_update(har_session) -> None:
    case = har_session
    forget_sim_boards()
    with BoardClient("sim://mps2-an386?name=train0", name="sim0") as client:
        info = client.hello()
        assert info.program_store_bytes > 0 and info.data_store_bytes > 0
        _provision(client, case, 0)
        client.set_weights(3, case.w0)
        params = TrainParams(version=3, epochs=2, batch_size=16, lr=0.05, seed=11)
        report = client.train(params)
        assert report.version == 3 and report.n == len(case.users_y[0]) and report.steps == 2 * -(-report.n // 16)
        update = client.read_update(report.update_bytes)
        assert update.version == 3 and update.n == report.n and update.loss == pytest.approx(report.loss)
        assert update.wire_bytes == 24 + 4 * len(case.unit_shapes) + case.w0.size
        # The reference: float tail, the board's sample order, same quantization.
        ref = case.reference_update(0, params)
        got = update.dense(case.unit_shapes)
        assert np.abs(got - ref).max() <= 1e-6 + np.abs(ref).max() * 1e-4
        assert report.loss == pytest.approx(case.reference_loss(0, params), rel=1e-4)
        ev = client.evaluate()
        assert ev.n == report.n and 0 <= ev.correct <= ev.n


def test_sim_board_clips_noises_and_withholds_under_dp(har_session) -> None:
    """The DP mechanism (docs/privacy.md) through the link; the same checks run on QEMU."""
    from _privacy_checks import check_dp_mechanism

    case = har_session
    forget_sim_boards()
    with BoardClient("sim://mps2-an386?name=dp", name="sim-dp") as client:
        client.hello()
        _provision(client, case, 0)
        client.set_weights(1, case.w0)
        check_dp_mechanism(client, case, 1)
        client.load_data(case.images[0])  # new local data lift the refusal
        assert client.evaluate().n > 0


def test_sim_board_typed_errors(har_session) -> None:
    case = har_session
    forget_sim_boards()
    with BoardClient("sim://mps2-an386?name=errors", name="sim-errors") as client:
        client.hello()
        with pytest.raises(DeviceError) as e:
            client.train(TrainParams(version=0))
        assert e.value.status == Status.NO_MODEL
        client.load_fragment(case.frozen_blob)
        client.load_program(case.program)
        with pytest.raises(DeviceError) as e:
            client.train(TrainParams(version=0))
        assert e.value.status == Status.NO_DATA and "provision" in e.value.fix
        client.load_data(case.images[1])
        with pytest.raises(DeviceError) as e:
            client.read_update()
        assert e.value.status == Status.NO_UPDATE
        with pytest.raises(DeviceError) as e:
            client.train(TrainParams(version=5))  # w* is at version 0 after the program commit
        assert e.value.status == Status.WRONG_VERSION and "TRAIN_SET" in e.value.fix
        with pytest.raises(DeviceError) as e:
            client.request(Command.TRAIN, struct.pack("<IHHfIIB", 0, 0, 16, 0.01, 0, 0, 0))
        assert e.value.status == Status.BAD_ARGUMENT
        bad = case.w0.copy()
        bad[7] = np.nan
        with pytest.raises(TinyfedError, match="NaN"):
            client.set_weights(1, bad)
        with pytest.raises(DeviceError) as e:
            client.request(Command.TRAIN_SET, struct.pack("<II", 1, 0) + bad[:16].astype("<f4").tobytes())
        assert e.value.status == Status.BAD_ARGUMENT
        with pytest.raises(DeviceError) as e:
            client.request(Command.TRAIN_SET, struct.pack("<II", 1, 40) + case.w0[:4].astype("<f4").tobytes())
        assert e.value.status == Status.OUT_OF_ORDER
        client.set_weights(1, case.w0)
        report = client.train(TrainParams(version=1, max_samples=20, batch_size=8))
        assert report.n == 20 and report.steps == 3
        with pytest.raises(DeviceError) as e:
            client.load_data(b"TFDS" + bytes(40))
        assert e.value.status in (Status.NO_DATA, Status.BAD_CRC)


@pytest.fixture(scope="module")
def digits_whole_model():
    return build_digits_whole_model()


def build_digits_whole_model() -> dict:
    """digits_cnn with every weight and bias in w*, no frozen fragment: the FedAvg/FedBuff case."""
    from tinyfed.firmware_bridge.compile.train_blob import compile_program
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.models.zoo import get_zoo_model
    from tinyfed.planner import trainable as tfw

    zm = get_zoo_model("digits_cnn")
    model = zm.int8_tflite()
    graph = TfliteGraph.from_bytes(model)
    units = tfw.whole_model_units(graph)
    t_in = graph.tensors[graph.inputs[0]]
    clients = zm.client_split()
    idx = np.sort(zm.client_partitions("iid", 8)[0])[:64]
    x = local_data.quantize_inputs(clients.x[idx], t_in.scales[0], t_in.zero_points[0])
    return {
        "model": model, "tfw": tfw.encode(units), "program": compile_program(model, tfw.encode(units)),
        "w0": np.concatenate([u.values.ravel() for u in units]),
        "shapes": [(len(u.channels), u.values_per_channel) for u in units],
        "x": x, "y": clients.y[idx].astype(np.int64), "image": local_data.pack(x, clients.y[idx], zm.num_classes),
    }


def whole_model_reference(case, params) -> tuple[np.ndarray, float]:
    from tinyfed.firmware_bridge.link.train_link import DeviceUpdate
    from tinyfed.training import FloatTail, local_train

    tail = FloatTail.from_fragments(case["model"], case["tfw"])
    in_shape = tail.graph.tensors[tail.graph.inputs[0]].shape
    x = tail.dequantize_input(case["x"].reshape((len(case["x"]),) + tuple(in_shape[1:])))
    r = local_train(tail, x, case["y"], epochs=params.epochs, lr=np.float32(params.lr), batch_size=params.batch_size,
                    seed=params.seed, order=shuffle.epoch_order)
    delta = np.concatenate([d.ravel() for d in r.deltas]).astype(np.float32)
    q, s = quantize_flat(delta, case["shapes"], params.per_channel)
    return DeviceUpdate(0, 0, 0, 0, q, s, params.per_channel).dense(case["shapes"]), r.loss


def test_sim_board_trains_the_whole_model_without_a_fragment(digits_whole_model) -> None:
    from tinyfed.training import dense_model_bytes

    case = digits_whole_model
    forget_sim_boards()
    with BoardClient("sim://mps2-an386?name=whole", name="sim-whole") as client:
        client.hello()
        client.load_program(case["program"])
        client.load_data(case["image"])
        client.set_weights(1, case["w0"])
        params = TrainParams(version=1, epochs=2, batch_size=16, lr=0.02, seed=3, per_channel=True)
        report = client.train(params)
        update = client.read_update(report.update_bytes)
    ref, loss = whole_model_reference(case, params)
    assert np.abs(update.dense(case["shapes"]) - ref).max() <= 1e-6
    assert report.loss == pytest.approx(loss, rel=1e-5)
    # even the whole model as int8 (per-channel scales) is a quarter of the dense float32 update
    assert update.wire_bytes / dense_model_bytes(case["model"]) < 0.31


def test_float32_update_is_the_dense_baseline_payload(digits_whole_model) -> None:
    """TRAIN flag bit 2: the board sends delta as float32 (FedAvg/FedBuff's dense payload)."""
    case = digits_whole_model
    forget_sim_boards()
    with BoardClient("sim://mps2-an386?name=dense", name="sim-dense") as client:
        client.hello()
        client.load_program(case["program"])
        client.load_data(case["image"])
        client.set_weights(1, case["w0"])
        report = client.train(TrainParams(version=1, epochs=1, batch_size=16, lr=0.02, seed=3, float_update=True))
        update = client.read_update(report.update_bytes)
    assert update.values is not None and update.q.size == 0
    assert update.wire_bytes == 24 + 4 * case["w0"].size
    from tinyfed.training import FloatTail, local_train

    tail = FloatTail.from_fragments(case["model"], case["tfw"])
    in_shape = tail.graph.tensors[tail.graph.inputs[0]].shape
    x = tail.dequantize_input(case["x"].reshape((len(case["x"]),) + tuple(in_shape[1:])))
    r = local_train(tail, x, case["y"], epochs=1, lr=np.float32(0.02), batch_size=16, seed=3, order=shuffle.epoch_order)
    ref = np.concatenate([d.ravel() for d in r.deltas])
    assert np.array_equal(update.dense(case["shapes"]), ref.astype(np.float32))
