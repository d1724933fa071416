"""Eight emulated boards train har_cnn's w* on their own HAPT user's windows.

Each QEMU ``mps2-an386`` board (Cortex-M4F, built with the nRF52840's 256 KiB RAM / 1 MiB flash
budget) gets the planned frozen fragment, the training program and one user's windows (four over
the link, four preloaded into the local-data flash store with QEMU's ``-device loader``), trains,
and returns an int8 update. The test averages the updates by hand and checks that the step
raises the global model's accuracy on the whole test split; it also checks the updates against
the float32 reference, scans every byte the boards sent for the provisioned samples, and compares
the boards' painted-RAM high-water marks with the planner's prediction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
    pytest.skip("needs qemu-system-arm and gcc-arm-none-eabi (make test installs both)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))

import _training_case as tc
from _run_shared import run_firmware

from tinyfed.boards import get_board
from tinyfed.firmware_bridge.compile.train_blob import program_ram_bytes
from tinyfed.firmware_bridge.emulate.emulator import start_qemu, wait_ready
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.errors import AuthenticationFailed
from tinyfed.firmware_bridge.link.framing import FrameReader, decode_frame
from tinyfed.firmware_bridge.link.train_link import (
    DeviceUpdate,
    EvalReport,
    RamStats,
    TrainParams,
    TrainReport,
)

BOARDS = 8
PRELOADED = range(4, 8)  # these boards get their data through QEMU's loader, the rest over the link
VERSION = 1


@dataclass
class BoardRun:
    report: TrainReport
    update: DeviceUpdate
    before: EvalReport
    after_set: EvalReport
    stats: RamStats
    received: bytes  # every byte the board sent, as it arrived
    sent: bytes  # every byte the host sent
    hello_data_store: int = 0
    notes: dict = field(default_factory=dict)


def _params(i: int) -> TrainParams:
    return TrainParams(version=VERSION, epochs=tc.EPOCHS, batch_size=tc.BATCH, lr=tc.LR, seed=tc.SEED + i)


def _session(url: str, name: str, case: tc.TrainingCase, i: int) -> BoardRun:
    received, sent = bytearray(), bytearray()
    with BoardClient(url, name=name, timeout=2.0) as client:
        read, write = client._read, client._write

        def rec_read(wait: float, cmd: str) -> bytes:
            data = read(wait, cmd)
            received.extend(data)
            return data

        def rec_write(data: bytes, cmd: str) -> None:
            sent.extend(data)
            write(data, cmd)

        client._read, client._write = rec_read, rec_write
        info = client.hello()
        client.load_fragment(case.frozen_blob)
        client.load_program(case.program)
        if i not in PRELOADED:
            client.load_data(case.images[i])
        before = client.evaluate()
        client.set_weights(VERSION, case.w0)
        after_set = client.evaluate()
        report = client.train(_params(i), timeout=600.0)
        update = client.read_update(report.update_bytes)
        stats = client.ram_stats()
        # The update's tag binds the model version and this board's device id (the firmware's HMAC).
        notes = {}
        try:
            client.read_update(report.update_bytes, version=VERSION + 1)
        except AuthenticationFailed as exc:
            notes["other_version"] = exc.reason
        own = client.info
        assert own is not None
        client.info = dataclasses.replace(own, device_id=bytes(16))
        try:
            client.read_update(report.update_bytes)
        except AuthenticationFailed as exc:
            notes["other_device"] = exc.reason
        client.info = own
    return BoardRun(report, update, before, after_set, stats, bytes(received), bytes(sent), info.data_store_bytes,
                    notes)


@pytest.fixture(scope="module")
def trained(har_training_case, tmp_path_factory: pytest.TempPathFactory) -> tuple[tc.TrainingCase, list[BoardRun]]:
    case = har_training_case
    board = get_board("mps2-an386")
    fw = run_firmware(tmp_path_factory, board.name)
    assert fw.ram_budget_bytes == get_board("nrf52840").ram_bytes  # the nRF52840's budget, emulated
    data_dir = tmp_path_factory.mktemp("data")
    emus = []
    try:
        for i in range(BOARDS):
            extra: tuple[str, ...] = ()
            if i in PRELOADED:
                image = data_dir / f"user{i}.tfds"
                image.write_bytes(case.images[i])
                extra = ("-device", f"loader,file={image},addr=0x{fw.data_store_address:x}")
            emus.append(start_qemu(board, fw.elf, name=f"train#{i}", extra_args=extra))
        for e in emus:
            wait_ready(e)
        with ThreadPoolExecutor(BOARDS) as pool:
            runs = list(pool.map(lambda i: _session(emus[i].url, emus[i].name, case, i), range(BOARDS)))
    finally:
        for e in emus:
            e.stop()
    return case, runs


def test_every_board_trains_and_returns_an_int8_update(trained) -> None:
    for run in trained[1]:
        assert run.notes == {"other_version": "wrong_version", "other_device": "bad_update_mac"}
    case, runs = trained
    for i, run in enumerate(runs):
        assert run.report.version == VERSION and run.update.version == VERSION
        assert run.report.n == len(case.users_y[i]) == run.update.n == run.before.n
        assert run.report.steps == tc.EPOCHS * -(-run.report.n // tc.BATCH)
        assert np.isfinite(run.report.loss) and run.report.loss > 0
        assert run.update.q.dtype == np.int8 and np.abs(run.update.q).max() == 127
        assert run.update.wire_bytes == 24 + 4 * len(case.unit_shapes) + case.w0.size
        # w* at version 0 (the program's initial values) and as set from the host are the same
        assert run.before.correct == run.after_set.correct
        # the loss the server selected this user by is the one the board reports (EVALUATE)
        assert run.before.loss == pytest.approx(case.selection_losses[case.user_ids[i]], rel=1e-4)


def test_board_updates_match_the_float32_reference(trained) -> None:
    """The board's update equals the sim:// (numpy float32) update up to float rounding: the
    largest difference is at most one int8 step of the update's scale."""
    case, runs = trained
    worst = 0.0
    for i, run in enumerate(runs):
        ref = case.reference_update(i, _params(i))
        got = run.update.dense(case.unit_shapes)
        scale = float(run.update.scales.max())
        worst = max(worst, float(np.abs(got - ref).max()) / scale)
        assert np.abs(got - ref).max() <= 1.01 * scale
        assert run.report.loss == pytest.approx(case.reference_loss(i, _params(i)), rel=1e-4)
        per_elem = np.concatenate([np.full(c * p, sc, np.float32)
                                   for (c, p), sc in zip(case.unit_shapes, run.update.scales, strict=True)])
        assert np.mean(run.update.q == np.rint(ref / per_elem)) > 0.99
    print(f"largest board-vs-reference difference: {worst:.3f} int8 steps")


def test_one_averaged_step_raises_global_test_accuracy(trained) -> None:
    case, runs = trained
    n = np.array([r.update.n for r in runs], np.float64)
    deltas = np.stack([r.update.dense(case.unit_shapes) for r in runs]).astype(np.float64)
    step = (n[:, None] * deltas).sum(axis=0) / n.sum()
    w1 = (case.w0 + tc.ETA_G * step).astype(np.float32)
    acc0, loss0 = case.global_accuracy(case.w0)
    acc1, loss1 = case.global_accuracy(w1)
    print(f"global test split ({len(case.test_y)} windows): accuracy {acc0:.4f} -> {acc1:.4f}, "
          f"loss {loss0:.4f} -> {loss1:.4f}")
    assert acc1 > acc0 and loss1 < loss0


def test_no_provisioned_sample_leaves_a_board(trained) -> None:
    """Every byte each board sent (raw and COBS-decoded payloads) is scanned for every 16-byte run
    of every provisioned sample; the same scan of what the host sent finds the link-provisioned
    samples, so it would catch a leak."""
    case, runs = trained
    width = 16

    def runs_of(x: np.ndarray) -> set[bytes]:
        out = set()
        for sample in x.reshape(len(x), -1):
            b = sample.tobytes()
            for k in range(len(b) - width + 1):
                piece = b[k:k + width]
                if len(set(piece)) >= 4:  # skip flat runs that could occur by chance
                    out.add(piece)
        return out

    def decoded(stream: bytes) -> bytes:
        reader = FrameReader.for_payload(4096)
        payloads = bytearray()
        for item in reader.feed(stream):
            with contextlib.suppress(Exception):  # a damaged frame is still scanned raw
                payloads += decode_frame(item, 4096).payload
        return bytes(payloads)

    def leaks(stream: bytes, pieces: set[bytes]) -> int:
        return sum(1 for p in pieces if p in stream)

    for i, run in enumerate(runs):
        pieces = runs_of(case.users_x[i])
        assert pieces
        assert leaks(run.received, pieces) == 0 and leaks(decoded(run.received), pieces) == 0, f"board {i} leaked"
        if i not in PRELOADED:
            assert leaks(decoded(run.sent), pieces) > 0  # positive control: the host did send them


def test_peak_training_ram_is_within_the_planners_prediction(trained) -> None:
    case, runs = trained
    predicted = case.plan_json["boards"]["nrf52840"]["ram_bytes_used"]
    for run in runs:
        s = run.stats
        print(f"measured peak RAM {s.peak_ram} B (static {s.static_bytes}, stack {s.stack_peak} of {s.stack_bytes}, "
              f"arena {s.arena_peak}: fragment {s.fragment_arena} + training {s.training_ram}) "
              f"vs planned {predicted} B")
        assert s.stack_peak < s.stack_bytes  # the paint held: no overflow
        # the fragment's arena and the whole tftr state were written (the per-channel scale room
        # above them is only touched by per-channel updates)
        assert s.arena_peak >= s.fragment_arena + program_ram_bytes(case.program)
        assert s.peak_ram <= predicted


def test_firmware_answers_training_misuse_with_typed_errors(har_training_case, tmp_path: Path,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """The C paths of every typed error, on one board whose data store was preloaded with a
    corrupt image (one flipped sample byte: the CRC catches it)."""
    import struct

    from tinyfed.firmware_bridge.link.errors import DeviceError
    from tinyfed.firmware_bridge.link.framing import Command, Status

    case = har_training_case
    board = get_board("mps2-an386")
    fw = run_firmware(tmp_path_factory, board.name)
    bad = bytearray(case.images[0])
    bad[-1] ^= 0x40
    image = tmp_path / "bad.tfds"
    image.write_bytes(bytes(bad))
    emu = start_qemu(board, fw.elf, name="train-errors",
                     extra_args=("-device", f"loader,file={image},addr=0x{fw.data_store_address:x}"))
    try:
        wait_ready(emu)
        with BoardClient(emu.url, name=emu.name, timeout=2.0) as client:
            client.hello()

            def status_of(call) -> DeviceError:
                with pytest.raises(DeviceError) as e:
                    call()
                return e.value

            assert status_of(lambda: client.train(TrainParams(version=0))).status == Status.NO_MODEL
            client.load_fragment(case.frozen_blob)
            err = status_of(lambda: client.train(TrainParams(version=0)))
            assert err.status == Status.NO_MODEL and err.detail == 1  # no training program
            client.load_program(case.program)
            err = status_of(lambda: client.train(TrainParams(version=0)))
            assert err.status == Status.NO_DATA and "CRC" in err.message
            client.load_data(case.images[0])
            assert status_of(client.read_update).status == Status.NO_UPDATE
            err = status_of(lambda: client.train(TrainParams(version=4)))
            assert err.status == Status.WRONG_VERSION and err.detail == 0 and "TRAIN_SET" in err.fix
            raw = struct.pack("<IHHfIIB", 0, 1, 0, 0.01, 0, 0, 0)  # batch 0
            assert status_of(lambda: client.request(Command.TRAIN, raw)).status == Status.BAD_ARGUMENT
            nan = struct.pack("<II", 2, 0) + np.array([0.5, np.nan], "<f4").tobytes()
            assert status_of(lambda: client.request(Command.TRAIN_SET, nan)).status == Status.BAD_ARGUMENT
            late = struct.pack("<II", 2, 10) + np.zeros(2, "<f4").tobytes()
            err = status_of(lambda: client.request(Command.TRAIN_SET, late))
            assert err.status == Status.OUT_OF_ORDER
            assert status_of(lambda: client.train(TrainParams(version=2))).status == Status.WRONG_VERSION
            client.set_weights(2, case.w0)
            report = client.train(TrainParams(version=2, max_samples=8, batch_size=4))
            assert report.n == 8 and report.steps == 2
            # after training, the fragment's output holds no features of the last private sample
            out = client.request(Command.OUTPUT_READ, struct.pack("<IH", 0, 64))
            assert out == bytes(64)
            # differential privacy: the firmware's clip, Box-Muller noise and refusals (docs/privacy.md)
            from _privacy_checks import check_dp_mechanism

            check_dp_mechanism(client, case, 2)
    finally:
        emu.stop()


def test_firmware_refuses_a_training_state_it_cannot_hold(har_training_case, tmp_path: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """With a 32 KiB arena the fragment (12 KiB) fits but its training state (56 KiB) does not:
    the board refuses the program at commit and TRAIN says OUT_OF_MEMORY; nothing overruns."""
    from tinyfed.firmware_bridge.link.errors import DeviceError
    from tinyfed.firmware_bridge.link.framing import Status

    case = har_training_case
    board = get_board("mps2-an386")
    fw = run_firmware(tmp_path_factory, board.name, arena_kib=32)
    emu = start_qemu(board, fw.elf, name="train-oom")
    try:
        wait_ready(emu)
        with BoardClient(emu.url, name=emu.name, timeout=2.0) as client:
            client.hello()
            client.load_fragment(case.frozen_blob)
            with pytest.raises(DeviceError) as e:
                client.load_program(case.program)
            assert e.value.status == Status.OUT_OF_MEMORY and "needs bytes" in e.value.message
            client.load_data(case.images[0])
            with pytest.raises(DeviceError) as e:
                client.train(TrainParams(version=0))
            assert e.value.status == Status.OUT_OF_MEMORY
            s = client.ram_stats()
            assert s.arena_bytes == 32 * 1024 and s.arena_peak <= s.arena_bytes
            assert client.ping(b"alive") >= 0  # still answering
    finally:
        emu.stop()


def test_board_trains_the_whole_model_without_a_fragment(tmp_path: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    """FedAvg/FedBuff train every layer: digits_cnn with all of its 8,858 weights and biases in
    w* and no frozen fragment; the board's update matches the float32 reference."""
    from test_train_link import build_digits_whole_model, whole_model_reference

    from tinyfed.training import dense_model_bytes

    case = build_digits_whole_model()
    board = get_board("mps2-an386")
    fw = run_firmware(tmp_path_factory, board.name)
    emu = start_qemu(board, fw.elf, name="train-whole")
    try:
        wait_ready(emu)
        with BoardClient(emu.url, name=emu.name, timeout=2.0) as client:
            client.hello()
            loaded = client.load_program(case["program"])
            client.load_data(case["image"])
            client.set_weights(1, case["w0"])
            params = TrainParams(version=1, epochs=2, batch_size=16, lr=0.02, seed=3, per_channel=True)
            report = client.train(params)
            update = client.read_update(report.update_bytes)
            stats = client.ram_stats()
            dense_params = TrainParams(version=1, epochs=2, batch_size=16, lr=0.02, seed=3, float_update=True)
            dense_report = client.train(dense_params)
            dense = client.read_update(dense_report.update_bytes)
    finally:
        emu.stop()
    # the float32 payload of the dense baselines: the same training, delta sent unquantized
    assert dense.values is not None and dense.wire_bytes == 24 + 4 * case["w0"].size
    assert dense_report.loss == report.loss
    float_ref = _float_delta(case, dense_params)
    assert np.abs(dense.values - float_ref).max() <= 1e-4 * np.abs(float_ref).max()
    ref, loss = whole_model_reference(case, params)
    got = update.dense(case["shapes"])
    steps = np.repeat(update.scales, [p for c, p in case["shapes"] for _ in range(c)])
    print(f"whole digits_cnn on the board: {report.n} samples x 2 epochs, training RAM {loaded.arena_bytes} B, "
          f"largest difference {np.max(np.abs(got - ref) / np.maximum(steps, 1e-30)):.2f} int8 steps, "
          f"update {update.wire_bytes} B vs dense float32 {dense_model_bytes(case['model'])} B")
    assert np.all(np.abs(got - ref) <= 1.01 * steps)
    assert report.loss == pytest.approx(loss, rel=1e-4)
    assert stats.training_ram == loaded.arena_bytes and stats.arena_peak <= stats.arena_bytes


def test_head_cache_gives_the_same_update_for_a_fraction_of_the_cycles(
        har_training_case, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """TRAIN's opt-in head cache: epochs after the first reuse the frozen fragment's outputs.
    The update is bit-identical; the cycle count drops by the head's share of (epochs - 1) / epochs
    (with head H and tail T cycles per sample: (H + 4T) / (4H + 4T) for 4 epochs)."""
    case = har_training_case
    board = get_board("mps2-an386")
    fw = run_firmware(tmp_path_factory, board.name)
    # -icount: the cycle counts are instruction counts, the same whatever else the machine runs
    emu = start_qemu(board, fw.elf, name="train-cache", extra_args=("-icount", "shift=4"))
    try:
        wait_ready(emu)
        with BoardClient(emu.url, name=emu.name, timeout=2.0) as client:
            client.hello()
            client.load_fragment(case.frozen_blob)
            client.load_program(case.program)
            client.load_data(case.images[0])
            results = {}
            for cache in (False, True):
                p = TrainParams(version=0, epochs=4, batch_size=16, lr=0.01, seed=5, head_cache=cache)
                report = client.train(p)
                results[cache] = (report, client.read_update(report.update_bytes))
    finally:
        emu.stop()
    (plain, u_plain), (cached, u_cached) = results[False], results[True]
    assert not plain.head_cached and cached.head_cached
    assert np.array_equal(u_plain.q, u_cached.q) and np.array_equal(u_plain.scales, u_cached.scales)
    assert cached.loss == plain.loss
    print(f"4 epochs x {plain.n} windows: {plain.cycles} cycles without the head cache, {cached.cycles} with it "
          f"({cached.cycles / plain.cycles:.3f})")
    # The head runs once instead of 4 times: its cycles fall to about a quarter (plus the cache's stores).
    # The saving is most of 3/4 of the head's cycles, whatever the head's share is (it fell with the
    # optimised kernels of issue 14, so a fixed ratio of the total would test the kernels, not the cache).
    assert cached.head_cycles < 0.4 * plain.head_cycles
    assert plain.cycles - cached.cycles > 0.6 * 0.75 * plain.head_cycles


def _float_delta(case: dict, params: TrainParams) -> np.ndarray:
    from tinyfed.firmware_bridge.twin import shuffle
    from tinyfed.training import FloatTail, local_train

    tail = FloatTail.from_fragments(case["model"], case["tfw"])
    shape = tuple(tail.graph.tensors[tail.graph.inputs[0]].shape[1:])
    x = tail.dequantize_input(case["x"].reshape((len(case["x"]),) + shape))
    r = local_train(tail, x, case["y"], epochs=params.epochs, lr=np.float32(params.lr), batch_size=params.batch_size,
                    seed=params.seed, order=shuffle.epoch_order)
    return np.concatenate([d.ravel() for d in r.deltas]).astype(np.float32)
