"""The firmware's float32 training engine (firmware/engine/tftr*.c) and its compiler (train_blob.py).

The C engine is built for the host with the system gcc into a shared library (ctypes) and
into a sanitizer-instrumented executable for the corruption tests. The reference is
:class:`tinyfed.training.FloatTail` / :func:`tinyfed.training.local_train` (numpy float32):
per-sample loss and prediction, the accumulated batch gradient of w*, and SGD over a few
mini-batches in the same sample order.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _engine_sources import ENGINE, train_engine_sources

from tinyfed.errors import ModelError, PlanError
from tinyfed.firmware_bridge.compile.train_blob import (
    compile_program,
    parse_program,
    program_ram_bytes,
)
from tinyfed.firmware_bridge.link.framing import Status
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw
from tinyfed.training import FloatTail, local_train
from tinyfed.training.task import Loss, Task

SOURCES = train_engine_sources()
HARNESS = str(Path(__file__).with_name("train_harness.c"))
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wdouble-promotion"]

BAD_MODEL, OUT_OF_MEMORY = Status.BAD_MODEL, Status.OUT_OF_MEMORY
GRAD_TOL = 1e-4  # max |C - numpy| of the batch gradient, relative to max |numpy gradient|
STEP_TOL = 1e-3  # max |C - numpy| of the SGD delta after a few batches, relative to max |delta|
LOSS_TOL = 1e-5  # |C - numpy| per-sample loss, relative to max(1, loss)


# --------------------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------------------


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    return gcc


@pytest.fixture(scope="session")
def lib(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("tftr") / "libtftr.so"
    subprocess.run([_gcc(), *WARN, "-O2", "-shared", "-fPIC", f"-I{ENGINE}", *SOURCES, HARNESS, "-lm", "-o", str(out)],
                   check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(out))
    for name in ("tftr_h_open", "tftr_h_bind", "tftr_h_grads", "tftr_h_train", "tftr_h_predict"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


@pytest.fixture(scope="session")
def fuzz_exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The harness as an executable, with ASan+UBSan when this gcc has them."""
    exe = tmp_path_factory.mktemp("tftr_fuzz") / "train_fuzz"
    base = [_gcc(), *WARN, "-O1", "-g", "-DTFTR_FUZZ_MAIN", f"-I{ENGINE}", *SOURCES, HARNESS, "-lm", "-o", str(exe)]
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    r = subprocess.run(base[:1] + san + base[1:], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        subprocess.run(base, check=True, capture_output=True, text=True)
    return str(exe)


def _p(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def c_open(lib, blob: bytes) -> tuple[int, int, str, list[int]]:
    status, detail = ctypes.c_uint8(), ctypes.c_uint16()
    msg = ctypes.create_string_buffer(64)
    info = (ctypes.c_uint32 * 7)()
    lib.tftr_h_open(blob, len(blob), ctypes.byref(status), ctypes.byref(detail), msg, info)
    return status.value, detail.value, msg.value.decode(), list(info)


def c_grads(lib, blob: bytes, x: np.ndarray, y: np.ndarray):
    info = parse_program(blob)
    x = np.ascontiguousarray(x, np.int8)
    y = np.ascontiguousarray(y, np.uint8)
    n = len(y)
    loss, pred = np.zeros(n, np.float32), np.zeros(n, np.uint8)
    grad, start = np.zeros(info.trainable_count, np.float32), np.zeros(info.trainable_count, np.float32)
    assert lib.tftr_h_grads(blob, len(blob), _p(x), _p(y), n, _p(loss), _p(pred), _p(grad), _p(start)) == 0
    return loss, pred, grad, start


def c_train(lib, blob: bytes, x: np.ndarray, y: np.ndarray, order: np.ndarray, bounds: np.ndarray, lr: float):
    info = parse_program(blob)
    x = np.ascontiguousarray(x, np.int8)
    y = np.ascontiguousarray(y, np.uint8)
    order = np.ascontiguousarray(order, np.uint32)
    bounds = np.ascontiguousarray(bounds, np.uint32)
    values = np.zeros(info.trainable_count, np.float32)
    losses = np.zeros(len(order), np.float32)
    assert lib.tftr_h_train(blob, len(blob), _p(x), _p(y), _p(order), _p(bounds), len(bounds) - 1, ctypes.c_float(lr),
                            _p(values), _p(losses)) == 0
    return values, losses


def c_predict(lib, blob: bytes, x: np.ndarray, y: np.ndarray):
    x = np.ascontiguousarray(x, np.int8)
    y = np.ascontiguousarray(y, np.uint8)
    loss, pred = np.zeros(len(y), np.float32), np.zeros(len(y), np.uint8)
    assert lib.tftr_h_predict(blob, len(blob), _p(x), _p(y), len(y), _p(loss), _p(pred)) == 0
    return loss, pred


# --------------------------------------------------------------------------------------
# Cases: (tail, trainable.tfw, int8 tail inputs, labels)
# --------------------------------------------------------------------------------------


def _units_tfw(tail: bytes, picks: dict[int, tuple[list[int] | None, bool]]) -> bytes:
    """trainable.tfw for {op index: (weight channels or None = all, bias?)} of ``tail``."""
    g = TfliteGraph.from_bytes(tail)
    ft = FloatTail(g, [])
    units = []
    for k, (chans, bias) in picks.items():
        op = g.ops[k]
        w, b = g.weight_tensor(op), g.bias_tensor(op)
        ax = g.output_channel_axis(op)
        v = np.moveaxis(ft.params[w.index], ax, 0)
        chs = tuple(range(v.shape[0])) if chans is None else tuple(chans)
        if chs:
            units.append(tfw.TrainableUnit(k, w.index, tfw.KIND_WEIGHTS, ax, chs, v.shape[0],
                                           v[list(chs)].reshape(len(chs), -1)))
        if bias and b is not None:
            bv = ft.params[b.index]
            units.append(tfw.TrainableUnit(k, b.index, tfw.KIND_BIAS, 0, tuple(range(bv.shape[0])), bv.shape[0],
                                           bv.reshape(-1, 1)))
    return tfw.encode(units)


def _everything(tail: bytes) -> bytes:
    g = TfliteGraph.from_bytes(tail)
    return _units_tfw(tail, {op.index: (None, True) for op in g.ops if g.weight_tensor(op) is not None})


_CASES: dict[str, tuple] = {}


def _zoo_inputs(name: str, cut: int, n: int):
    """int8 inputs of the tail after op ``cut`` (TFLM runs the head) and the true labels."""
    from tinyfed.models.tflm import TflmModel, quantize
    from tinyfed.models.zoo import get_zoo_model

    zm = get_zoo_model(name)
    model = zm.int8_tflite()
    g = TfliteGraph.from_bytes(model)
    split = zm.test_split()
    t = g.tensors[g.inputs[0]]
    x = quantize(split.x[:n], t.scales[0], t.zero_points[0])
    if cut == 0:
        return model, x, split.y[:n]
    head, tail = g.split(cut)
    return tail, np.asarray(TflmModel(head).run(x)), split.y[:n]


def case(name: str):
    if name in _CASES:
        return _CASES[name]
    if name == "har_nrf52840":
        import tempfile

        from tinyfed.boards import get_board, single_board_fleet
        from tinyfed.models.tflm import TflmModel
        from tinyfed.models.zoo import get_zoo_model
        from tinyfed.planner.config import TrainingConfig
        from tinyfed.planner.plan import make_plan
        from tinyfed.planner.sources import load_model_source

        out = Path(tempfile.mkdtemp(prefix="tftr_plan_"))
        plan = make_plan(load_model_source("har_cnn", None, TrainingConfig()),
                         single_board_fleet(get_board("nrf52840")), TrainingConfig(), out, measure=False)
        files = {k: Path(plan.files[k]).read_bytes() for k in ("frozen", "tail", "trainable")}
        zm = get_zoo_model("har_cnn")
        split = zm.test_split()
        head = TflmModel(files["frozen"])
        t = TfliteGraph.from_bytes(files["frozen"]).tensors[TfliteGraph.from_bytes(files["frozen"]).inputs[0]]
        from tinyfed.models.tflm import quantize

        x = np.asarray(head.run(quantize(split.x[:48], t.scales[0], t.zero_points[0])))
        res = (files["tail"], files["trainable"], x, split.y[:48], plan)
    elif name == "har_conv_tail":
        # starts at CONV_2D (op 1 of har_cnn): conv, max pool, conv*, max pool, conv*, avg pool, fc*, fc, softmax;
        # units on some channels of two convs, one conv bias and the last FC
        tail, x, y = _zoo_inputs("har_cnn", 1, 24)
        tfw_b = _units_tfw(tail, {2: ([1, 5, 6, 40, 63], True), 4: ([], True), 7: ([0, 3], True)})
        res = (tail, tfw_b, x, y, None)
    elif name == "digits_dw_tail":
        # starts at DEPTHWISE_CONV_2D (op 1 of digits_cnn): units on some depthwise channels and the FCs
        tail, x, y = _zoo_inputs("digits_cnn", 1, 32)
        res = (tail, _units_tfw(tail, {0: ([0, 2, 7], True), 4: ([5, 9], False), 5: (None, True)}), x, y, None)
    elif name == "digits_everything":
        tail, x, y = _zoo_inputs("digits_cnn", 0, 32)
        res = (tail, _everything(tail), x, y, None)
    elif name == "kernel_zoo_everything":
        # strided SAME conv (relu6), depthwise dm 2 / dilation 2, ADD, SAME avg/max pools, reshape, beta != 1
        from engine_models import KERNEL_ZOO_SHAPE, kernel_zoo_int8

        tail = kernel_zoo_int8()
        rng = np.random.default_rng(5)
        x = rng.integers(-100, 100, size=(12, *KERNEL_ZOO_SHAPE)).astype(np.int8)
        classes = TfliteGraph.from_bytes(tail).tensors[TfliteGraph.from_bytes(tail).outputs[0]].size
        res = (tail, _everything(tail), x, rng.integers(0, classes, size=12), None)
    else:
        raise KeyError(name)
    _CASES[name] = res
    return res


CASES = ["har_nrf52840", "har_conv_tail", "digits_dw_tail", "digits_everything", "kernel_zoo_everything"]


def _flat(arrs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float32).ravel() for a in arrs]) if arrs else np.zeros(0, np.float32)


# --------------------------------------------------------------------------------------
# Agreement with FloatTail
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_loss_gradient_and_predict_match_floattail(lib, name: str) -> None:
    tail, tfw_b, x, y, _ = case(name)
    blob = compile_program(tail, tfw_b)
    status, _, msg, info = c_open(lib, blob)
    assert status == 0, msg
    ft = FloatTail.from_fragments(tail, tfw_b)
    pinfo = parse_program(blob)
    assert info[0] == pinfo.ram_bytes == 12 * pinfo.trainable_count + pinfo.work_bytes == program_ram_bytes(blob)
    assert info[1] == ft.trainable_params == pinfo.trainable_count > 0
    assert info[3] == pinfo.classes and info[4] == pinfo.flops > 0

    xf = ft.dequantize_input(x)
    p = ft.forward(xf, keep=False).reshape(len(y), -1)
    ref_loss = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-30))
    loss, pred, grad, start = c_grads(lib, blob, x, y)
    np.testing.assert_array_equal(start, _flat(ft.unit_values()))
    loss_err = float(np.max(np.abs(loss - ref_loss) / np.maximum(1.0, ref_loss)))
    _, grads = ft.loss_and_grads(xf, y)
    ref = _flat(ft.unit_grads(grads)) * len(y)  # numpy averages; the engine sums
    grad_err = float(np.abs(grad - ref).max() / np.abs(ref).max())
    top2 = np.sort(p, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4
    print(f"{name}: {pinfo.trainable_count} trainable, work {pinfo.work_bytes} B, ram {pinfo.ram_bytes} B, "
          f"loss rel err {loss_err:.1e}, grad rel err {grad_err:.1e}")
    assert np.abs(ref).max() > 0
    assert loss_err <= LOSS_TOL
    assert grad_err <= GRAD_TOL
    np.testing.assert_array_equal(pred[clear], (p.argmax(1) == y)[clear])  # the engine's "correct" flag
    ploss, ppred = c_predict(lib, blob, x, y)
    np.testing.assert_array_equal(ploss, loss)  # forward only: the same float operations
    np.testing.assert_array_equal(ppred, pred)


@pytest.mark.parametrize("name", ["har_nrf52840", "har_conv_tail", "digits_everything", "kernel_zoo_everything"])
def test_sgd_matches_local_train(lib, name: str) -> None:
    tail, tfw_b, x, y, _ = case(name)
    blob = compile_program(tail, tfw_b)
    ft = FloatTail.from_fragments(tail, tfw_b)
    lr, bs, epochs, seed = 0.05, 8, 2, 3
    n = len(y)
    rng = np.random.default_rng(seed)  # local_train's sample order, passed to the engine explicitly
    order, bounds = [], [0]
    for _ in range(epochs):
        perm = rng.permutation(n)
        for k in range(0, n, bs):
            order.extend(perm[k : k + bs])
            bounds.append(len(order))
    res = local_train(ft, ft.dequantize_input(x), y, epochs=epochs, lr=lr, batch_size=bs, seed=seed)
    values, losses = c_train(lib, blob, x, y, np.array(order), np.array(bounds), lr)
    start = _flat(ft.unit_values())
    ref_delta = _flat(res.deltas)
    err = float(np.abs((values - start) - ref_delta).max() / np.abs(ref_delta).max())
    print(f"{name}: {len(bounds) - 1} SGD steps, delta rel err {err:.1e}, "
          f"mean loss {losses.mean():.4f} vs {res.loss:.4f}")
    assert np.abs(ref_delta).max() > 0
    assert err <= STEP_TOL
    assert abs(float(losses.mean()) - res.loss) <= 1e-4 * max(1.0, res.loss)


def test_ram_of_the_nrf52840_plan(lib) -> None:
    tail, tfw_b, _, _, plan = case("har_nrf52840")
    info = parse_program(compile_program(tail, tfw_b))
    predicted = plan.as_dict()["training_memory"]["total"]
    print(f"har_cnn nrf52840: ram_bytes {info.ram_bytes} = 12 * {info.trainable_count} + work {info.work_bytes}; "
          f"planner training_memory.total {predicted}")
    assert info.ram_bytes == 12 * info.trainable_count + info.work_bytes
    # the planner's training lines are the firmware's: the state 8-aligned, one update scale per channel
    rows = sum(len(u.channels) for u in tfw.decode(tfw_b))
    assert predicted == (info.ram_bytes + 7) // 8 * 8 + 4 * rows


# --------------------------------------------------------------------------------------
# Compiler errors
# --------------------------------------------------------------------------------------


def test_compiler_refuses_what_the_engine_cannot_train() -> None:
    from engine_models import with_unsupported_int8

    from tinyfed.models.zoo import get_zoo_model

    model = get_zoo_model("digits_cnn").int8_tflite()
    g = TfliteGraph.from_bytes(model)
    head, tail = g.split(3)
    with pytest.raises(ModelError, match="softmax_ce needs a tail whose last op is SOFTMAX"):
        compile_program(head, tfw.encode([]), task=Task.CLASSIFY)
    assert parse_program(compile_program(head, tfw.encode([]))).loss is Loss.MSE  # no SOFTMAX: regress
    with pytest.raises(ModelError, match="no kernel"):
        compile_program(with_unsupported_int8(), tfw.encode([]))
    tg = TfliteGraph.from_bytes(tail)
    fc, fc2 = [o for o in tg.ops if o.name == "FULLY_CONNECTED"]
    w = tg.weight_tensor(fc)
    wrong = tfw.TrainableUnit(fc2.index, w.index, tfw.KIND_WEIGHTS, 0, (0,), w.shape[0],
                              np.zeros((1, w.shape[1]), np.float32))
    with pytest.raises(PlanError, match="not the weights"):
        compile_program(tail, tfw.encode([wrong]))
    # no units: a forward-only program still opens
    assert parse_program(compile_program(tail, tfw.encode([]))).trainable_count == 0


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def test_bind_capacity(lib) -> None:
    tail, tfw_b, *_ = case("har_conv_tail")
    blob = compile_program(tail, tfw_b)
    ram = program_ram_bytes(blob)
    assert lib.tftr_h_bind(blob, len(blob), ram) == 0
    assert lib.tftr_h_bind(blob, len(blob), ram - 4) == OUT_OF_MEMORY
    assert lib.tftr_h_bind(blob, len(blob), 16) == OUT_OF_MEMORY


def test_open_rejects_damage_with_a_message(lib) -> None:
    tail, tfw_b, *_ = case("digits_dw_tail")
    blob = compile_program(tail, tfw_b)
    for cut in (0, 10, 95, 96, len(blob) // 2, len(blob) - 1):
        status, _, msg, _ = c_open(lib, blob[:cut])
        assert status == BAD_MODEL and msg, (cut, msg)
    bad = bytearray(blob)
    bad[4] = 1  # version 1 had no loss field
    assert c_open(lib, bytes(bad))[0] == Status.WRONG_VERSION
    hdr = parse_program(blob)
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 12, hdr.ram_bytes - 4)
    assert "RAM" in c_open(lib, bytes(bad))[2]
    ops_offset = struct.unpack_from("<I", blob, 52)[0]
    bad = bytearray(blob)
    bad[ops_offset] = 150  # GELU
    status, detail, msg, _ = c_open(lib, bytes(bad))
    assert (status, detail) == (Status.UNSUPPORTED_OP, 150) and "unsupported" in msg


def _run_fuzz(exe: str, blobs: list[bytes], tmp: Path, truncate: bool = False) -> tuple[list[int], str]:
    path = tmp / f"programs-{len(blobs)}-{int(truncate)}.bin"
    path.write_bytes(b"".join(struct.pack("<I", len(b)) + b for b in blobs))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1")
    r = subprocess.run([exe, *(["-t"] if truncate else []), str(path)], capture_output=True, text=True, env=env,
                       check=False, timeout=300)
    assert r.returncode == 0, f"engine crashed or failed (rc {r.returncode}): {r.stderr[-2000:]}"
    lines = r.stdout.splitlines()
    statuses = [int(s) for s in (lines[:-1] if truncate else lines)]
    assert len(statuses) == len(blobs)
    return statuses, lines[-1] if truncate else ""


@pytest.mark.parametrize("name", ["har_conv_tail", "digits_everything", "kernel_zoo_everything"])
def test_corruption_fuzz_no_crash(fuzz_exe: str, tmp_path: Path, name: str) -> None:
    """Single-byte corruptions of the header, tables and data (and truncations) under ASan/UBSan:
    every one is rejected with a status and message, or opens and trains without a fault."""
    tail, tfw_b, *_ = case(name)
    blob = compile_program(tail, tfw_b)
    data_offset = struct.unpack_from("<I", blob, 60)[0]
    rng = np.random.default_rng(11)
    blobs = [blob]
    positions = list(rng.integers(0, data_offset, size=400)) + list(rng.integers(data_offset, len(blob), size=100))
    for pos in positions:
        b = bytearray(blob)
        b[pos] = (b[pos] + int(rng.integers(1, 256))) & 0xFF
        blobs.append(bytes(b))
    statuses, _ = _run_fuzz(fuzz_exe, blobs, tmp_path)
    assert statuses[0] == 0
    table = statuses[1:401]
    rejected = sum(s != 0 for s in table)
    print(f"{name}: {rejected} of 400 table/header corruptions rejected, "
          f"{sum(s != 0 for s in statuses[401:])} of 100 data corruptions rejected")
    assert rejected > 300
    assert set(statuses) <= {0, 4, 5, 6, 10}
    _, tail_line = _run_fuzz(fuzz_exe, [blob], tmp_path, truncate=True)
    assert tail_line.endswith("opened 0")


def test_work_area_reuses_buffers_by_lifetime() -> None:
    """The plan packs one sample's values and gradients tighter than giving each its own slot,
    and every buffer lies inside the work area."""
    tail, tfw_b, *_ = case("digits_everything")
    blob = compile_program(tail, tfw_b)
    info = parse_program(blob)
    n_t = struct.unpack_from("<H", blob, 42)[0]
    t_off = struct.unpack_from("<I", blob, 48)[0]
    naive, grads = 0, 0
    for i in range(n_t):
        kind, _rank, _axis, _r, *dims = struct.unpack_from("<BBBB4i", blob, t_off + 48 * i)
        if kind != 0:
            continue
        voff, goff = struct.unpack_from("<II", blob, t_off + 48 * i + 20)
        size = 4 * int(np.prod(dims))
        assert voff + size <= info.work_bytes
        naive += size
        if goff != 0xFFFFFFFF:
            assert goff + size <= info.work_bytes
            naive += size
            grads += 1
    print(f"digits_everything: work {info.work_bytes} B vs {naive} B unshared ({grads} gradient buffers)")
    assert grads >= 5 and info.work_bytes < 0.8 * naive


def test_cortex_m4_build_single_precision_only(tmp_path: Path) -> None:
    """The firmware's flags plus -Wdouble-promotion, and no double-precision code in the objects."""
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    m4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
    objdump = shutil.which("arm-none-eabi-objdump")
    for src in SOURCES:
        obj = tmp_path / (Path(src).stem + ".o")
        r = subprocess.run([cc, *m4, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wdouble-promotion",
                            f"-I{ENGINE}", "-c", src, "-o", str(obj)], capture_output=True, text=True, check=False)
        assert r.returncode == 0 and not r.stderr.strip(), f"{src}: {r.stderr}"
        if objdump:
            dis = subprocess.run([objdump, "-dr", str(obj)], capture_output=True, text=True, check=False).stdout
            assert ".f64" not in dis and "__aeabi_d" not in dis, f"{obj.name} uses double precision"
