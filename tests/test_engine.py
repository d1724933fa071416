"""The firmware's int8 engine (firmware/engine), its numpy twin and the TFMB blob compiler.

The C engine is built for the host with the system gcc into a shared library (ctypes) and
into a sanitizer-instrumented executable for the corruption tests; both live in a pytest
temporary directory. TFLM (the ``tflite-micro`` wheel, reference kernels) is the reference:
C engine == numpy twin == TFLM, bit for bit.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from _engine_sources import ENGINE, int8_engine_headers, int8_engine_sources

from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import (
    HEADER_BYTES,
    OP_BYTES,
    TENSOR_BYTES,
    compile_blob,
    parse_blob,
    quantize_multiplier,
)
from tinyfed.firmware_bridge.link.framing import Status
from tinyfed.firmware_bridge.twin.kernels_np import run_blob
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import TflmModel, quantize

# The int8 inference engine only: the float32 training engine (tftr*) has its own tests
# (tests/test_train_engine.py) and is allowed floating point.
SOURCES = int8_engine_sources()
HARNESS = str(Path(__file__).with_name("engine_harness.c"))
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
M4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]

BAD_MODEL, WRONG_VERSION, UNSUPPORTED_OP, OUT_OF_MEMORY = (Status.BAD_MODEL, Status.WRONG_VERSION,
                                                     Status.UNSUPPORTED_OP, Status.OUT_OF_MEMORY)


# --------------------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------------------


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    return gcc


#: Host builds of each kernel path: TFMB_CORE_OVERRIDE compiles an optimised path with
#: tfmb_simd.h's portable intrinsics (the MVE path runs on QEMU's mps3-an547 only).
HOST_PATHS = {"c": [], "dsp": ["-DTFMB_CORE_OVERRIDE=1"]}


def build_engine_lib(out: Path, path: str = "c"):
    """The int8 engine and its harness as a shared library for ``path`` ("c" or "dsp")."""
    subprocess.run(
        [_gcc(), "-std=c99", "-O3", "-march=native", "-shared", "-fPIC", f"-I{ENGINE}", *HOST_PATHS[path],
         *SOURCES, HARNESS, "-o", str(out)],
        check=True, capture_output=True, text=True,
    )
    lib = ctypes.CDLL(str(out))
    lib.tfmb_harness_run.restype = ctypes.c_int
    lib.tfmb_harness_open.restype = ctypes.c_int
    return lib


@pytest.fixture(scope="session")
def engine_lib(tmp_path_factory: pytest.TempPathFactory):
    return build_engine_lib(tmp_path_factory.mktemp("engine") / "libtfmb.so")


@pytest.fixture(scope="session")
def engine_lib_dsp(tmp_path_factory: pytest.TempPathFactory):
    """The engine with the DSP-extension kernels (portable intrinsics on the host)."""
    return build_engine_lib(tmp_path_factory.mktemp("engine_dsp") / "libtfmb_dsp.so", "dsp")


@pytest.fixture(scope="session")
def fuzz_exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The harness as an executable, with ASan+UBSan when this gcc has them."""
    d = tmp_path_factory.mktemp("fuzz")
    exe = d / "engine_fuzz"
    base = [_gcc(), "-std=c99", "-O1", "-g", "-DTFMB_FUZZ_MAIN", f"-I{ENGINE}", *SOURCES, HARNESS, "-o", str(exe)]
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    r = subprocess.run(base[:1] + san + base[1:], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        subprocess.run(base, check=True, capture_output=True, text=True)
    return str(exe)


def c_run(lib, blob: bytes, x: np.ndarray) -> np.ndarray:
    """Run the C engine on a batch (two threads: ctypes releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    info = parse_blob(blob)
    x = np.ascontiguousarray(x, dtype=np.int8)
    n = x.shape[0]
    y = np.zeros((n, info.output_bytes), dtype=np.int8)

    def part(lo: int, hi: int) -> int:
        xs, ys = x[lo:hi], y[lo:hi]
        return lib.tfmb_harness_run(blob, len(blob), xs.ctypes.data_as(ctypes.c_void_p), hi - lo,
                                    ys.ctypes.data_as(ctypes.c_void_p))

    half = n // 2
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(part, (0, half), (half, n)))
    assert statuses == [0, 0], f"tfmb status {statuses}"
    return y


def c_open(lib, blob: bytes, capacity: int = 1 << 30) -> tuple[int, int, str, list[int]]:
    status = ctypes.c_uint8()
    detail = ctypes.c_uint16()
    msg = ctypes.create_string_buffer(64)
    sizes = (ctypes.c_uint32 * 4)()
    lib.tfmb_harness_open(blob, len(blob), ctypes.c_uint32(capacity), ctypes.byref(status), ctypes.byref(detail),
                          msg, sizes)
    return status.value, detail.value, msg.value.decode(), list(sizes)


def run_fuzz(exe: str, blobs: list[bytes], tmp: Path, truncate: bool = False) -> tuple[list[int], str]:
    path = tmp / f"blobs-{len(blobs)}-{int(truncate)}.bin"
    with open(path, "wb") as f:
        f.writelines(struct.pack("<I", len(b)) + b for b in blobs)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1")
    r = subprocess.run([exe, *(["-t"] if truncate else []), str(path)], capture_output=True, text=True, env=env,
                       check=False, timeout=300)
    assert r.returncode == 0, f"engine crashed or failed (rc {r.returncode}): {r.stderr[-2000:]}"
    lines = r.stdout.splitlines()
    tail = lines[-1] if truncate else ""
    statuses = [int(s) for s in (lines[:-1] if truncate else lines)]
    assert len(statuses) == len(blobs)
    return statuses, tail


# --------------------------------------------------------------------------------------
# Models and references
# --------------------------------------------------------------------------------------


class Zoo:
    def __init__(self, name: str) -> None:
        from tinyfed.models.zoo import get_zoo_model

        m = get_zoo_model(name)
        self.name = name
        self.model = m.int8_tflite()
        self.graph = TfliteGraph.from_bytes(self.model)
        t = self.graph.tensors[self.graph.inputs[0]]
        self.x = quantize(m.test_split().x, t.scales[0], t.zero_points[0])
        self._inter: dict[int, np.ndarray] | None = None

    def intermediates(self) -> dict[int, np.ndarray]:
        """Every op output of the full model under TFLM (preserve-all-tensors), whole split."""
        if self._inter is None:
            from tflite_micro.python.tflite_micro import runtime

            it = runtime.Interpreter.from_bytes(
                self.model, arena_size=1 << 20, intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors
            )
            outs = [op.outputs[0] for op in self.graph.ops]
            acc: dict[int, list[np.ndarray]] = {t: [] for t in outs}
            for i in range(self.x.shape[0]):
                it.set_input(self.x[i : i + 1], 0)
                it.invoke()
                for t in outs:
                    acc[t].append(np.array(it.GetTensor(t, 0)["tensor_data"], copy=True))
            self._inter = {t: np.concatenate(v, axis=0) for t, v in acc.items()}
        return self._inter


_ZOO: dict[str, Zoo] = {}


def zoo(name: str) -> Zoo:
    if name not in _ZOO:
        _ZOO[name] = Zoo(name)
    return _ZOO[name]


def assert_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    a = np.asarray(a).reshape(np.asarray(b).shape)
    diff = np.count_nonzero(a != b)
    assert diff == 0, f"{what}: {diff} of {a.size} values differ"


# --------------------------------------------------------------------------------------
# Bit-exactness
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits_cnn", "har_cnn"])
def test_full_model_bit_exact(engine_lib, name: str) -> None:
    z = zoo(name)
    blob = compile_blob(z.model)
    ref = z.intermediates()[z.graph.outputs[0]]  # TFLM, whole test split
    n = min(256, ref.shape[0])
    assert_same(TflmModel(z.model).run(z.x[:n]), ref[:n], f"{name}: TFLM default config vs preserve-all")
    assert_same(run_blob(blob, z.x), ref, f"{name}: numpy twin vs TFLM")
    assert_same(c_run(engine_lib, blob, z.x), ref, f"{name}: C engine vs TFLM")
    assert ref.shape[0] == z.x.shape[0] > 300


def _fragments_check(engine_lib, name: str, direct: int | None) -> None:
    """Every split(k) head and tail: C == numpy == TFLM on the whole test split.

    The TFLM reference of a head is the full model's tensor at the cut and a tail is fed
    that tensor (the previous fragment's TFLM output), computed in one preserve-all-tensors
    TFLM pass. TFLM is also run on each fragment itself (on ``direct`` samples, None = all)
    to confirm that a fragment computes what the full model computes.
    """
    z = zoo(name)
    inter = z.intermediates()
    final = inter[z.graph.outputs[0]]
    cuts = z.graph.cut_points()
    assert cuts
    for k in cuts:
        head, tail = z.graph.split(k)
        cut_t = z.graph.ops[k - 1].outputs[0]
        mid = inter[cut_t]
        hb, tb = compile_blob(head), compile_blob(tail)
        n = z.x.shape[0] if direct is None else direct
        assert_same(TflmModel(head).run(z.x[:n]), mid[:n], f"{name} head {k}: TFLM fragment vs full model")
        assert_same(TflmModel(tail).run(mid[:n]), final[:n], f"{name} tail {k}: TFLM fragment vs full model")
        assert_same(run_blob(hb, z.x), mid, f"{name} head {k}: numpy")
        assert_same(c_run(engine_lib, hb, z.x), mid, f"{name} head {k}: C")
        tail_in = mid.reshape(mid.shape[0], *parse_blob(tb).input_shape[1:])
        assert_same(run_blob(tb, tail_in), final, f"{name} tail {k}: numpy")
        assert_same(c_run(engine_lib, tb, tail_in), final, f"{name} tail {k}: C")


def test_fragments_bit_exact_digits(engine_lib) -> None:
    _fragments_check(engine_lib, "digits_cnn", direct=None)


@pytest.mark.slow
def test_fragments_bit_exact_har(engine_lib) -> None:
    _fragments_check(engine_lib, "har_cnn", direct=128)


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_kernel_zoo_bit_exact(engine_lib, per_channel: bool) -> None:
    """Strided/odd SAME padding, RELU6, depth multiplier 2 with dilation 2, ADD of two
    differently scaled branches, SAME avg/max pooling, reshape, per-tensor and per-channel
    FC, softmax: full model and every single-output prefix, random inputs."""
    from engine_models import KERNEL_ZOO_SHAPE, kernel_zoo_int8

    model = kernel_zoo_int8(per_channel)
    g = TfliteGraph.from_bytes(model)
    names = set(g.op_names())
    assert {"ADD", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "SOFTMAX"} <= names
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, size=(400, *KERNEL_ZOO_SHAPE)).astype(np.int8)
    checked = 0
    for k in range(1, len(g.ops) + 1):
        try:
            frag = g.extract(0, k)
            blob = compile_blob(frag)
        except ModelError:
            continue  # a prefix ending inside the ADD's branches has two outputs
        ref = TflmModel(frag).run(x)
        assert_same(run_blob(blob, x), ref, f"prefix {k}: numpy")
        assert_same(c_run(engine_lib, blob, x), ref, f"prefix {k}: C")
        checked += 1
    assert checked >= 8
    # Softmax with beta != 1 (the converter folds scalars into the FC, so set it directly).
    from ai_edge_litert.tools import flatbuffer_utils

    obj = g.model_object
    obj.subgraphs[0].operators[-1].builtinOptions.beta = 0.37
    model_beta = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
    assert TfliteGraph.from_bytes(model_beta).ops[-1].options["beta"] == pytest.approx(0.37)
    blob = compile_blob(model_beta)
    ref = TflmModel(model_beta).run(x)
    assert_same(run_blob(blob, x), ref, "softmax beta 0.37: numpy")
    assert_same(c_run(engine_lib, blob, x), ref, "softmax beta 0.37: C")


def test_run_blob_shapes() -> None:
    z = zoo("digits_cnn")
    blob = compile_blob(z.model)
    one = run_blob(blob, z.x[:1])
    assert one.shape == (1, 10) and one.dtype == np.int8
    assert np.array_equal(run_blob(blob, z.x[0]), one)  # a single sample without batch axis
    assert np.array_equal(run_blob(blob, z.x[:1].reshape(1, 8, 8, 1)), one)
    with pytest.raises(ModelError):
        run_blob(blob, z.x[:2].astype(np.float32))
    with pytest.raises(ModelError):
        run_blob(blob, np.zeros((2, 7, 7, 1), np.int8))


def test_quantize_multiplier_matches_tflite_rules() -> None:
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    m, s = quantize_multiplier(0.0123)
    assert abs(m * 2.0 ** (s - 31) - 0.0123) < 1e-9
    assert quantize_multiplier(1e-12) == (0, 0)  # shift < -31 flushes to zero
    assert quantize_multiplier(float(2**40)) == ((1 << 31) - 1, 30)


# --------------------------------------------------------------------------------------
# Blob format, refusals, open errors
# --------------------------------------------------------------------------------------


def test_blob_info(engine_lib) -> None:
    z = zoo("digits_cnn")
    blob = compile_blob(z.model)
    info = parse_blob(blob)
    assert blob[:4] == b"TFMB" and info.version == 1 and info.total_size == len(blob)
    assert info.data_offset % 16 == 0
    assert info.input_shape == (1, 8, 8, 1) and info.output_shape == (1, 10)
    assert info.input_bytes == 64 and info.output_bytes == 10
    t_in = z.graph.tensors[z.graph.inputs[0]]
    assert info.input_quantization == (pytest.approx(t_in.scales[0]), t_in.zero_points[0])
    assert info.output_quantization == (pytest.approx(1 / 256), -128)
    assert info.op_names == z.graph.op_names()
    # Constants (weights, biases, multiplier arrays) are 16-byte aligned in the data section.
    assert all(t.offset % 16 == 0 for t in info.tensors if t.constant)
    # The planned arena is at least the live peak and no more than all activations.
    acts = [t for t in info.tensors if not t.constant]
    assert max(t.nbytes for t in acts) <= info.arena_bytes <= sum(-(-t.nbytes // 16) * 16 for t in acts)
    assert all(t.offset % 16 == 0 for t in acts)
    status, _, _, sizes = c_open(engine_lib, blob)
    assert status == 0 and sizes == [info.arena_bytes, 64, 10, len(info.ops)]
    # The reshape is aliased: same arena bytes as its input.
    rs = next(o for o in info.ops if o.name == "RESHAPE")
    assert info.tensors[rs.inputs[0]].offset == info.tensors[rs.output].offset


def test_arena_plan_respects_lifetimes() -> None:
    """No two activations that are live at the same op share arena bytes."""
    for name in ("har_cnn", "digits_cnn"):
        z = zoo(name)
        for k in [None, *z.graph.cut_points()]:
            model = z.model if k is None else z.graph.split(k)[1]
            info = parse_blob(compile_blob(model))
            live: dict[int, tuple[int, int]] = {}
            for i, op in enumerate(info.ops):
                for t in [*op.inputs, op.output]:
                    if t != 0xFFFF and not info.tensors[t].constant:
                        a, b = live.get(t, (i, i))
                        live[t] = (min(a, i), max(b, i))
            live[info.input_tensor] = (0, live.get(info.input_tensor, (0, 0))[1])
            live[info.output_tensor] = (live[info.output_tensor][0], len(info.ops) - 1)
            ts = sorted(live)
            for i, a in enumerate(ts):
                for b in ts[i + 1 :]:
                    la, lb = live[a], live[b]
                    if la[0] <= lb[1] and lb[0] <= la[1]:
                        ta, tb = info.tensors[a], info.tensors[b]
                        overlap = ta.offset < tb.offset + tb.nbytes and tb.offset < ta.offset + ta.nbytes
                        alias = ta.offset == tb.offset and ta.nbytes == tb.nbytes  # reshape
                        assert not overlap or alias, f"{name} cut {k}: tensors {a} and {b} overlap"


@pytest.mark.slow
def test_unsupported_op_refused() -> None:
    from engine_models import with_unsupported_int8

    with pytest.raises(ModelError, match="GELU"):
        compile_blob(with_unsupported_int8())


def test_unsupported_op_code_in_blob(engine_lib) -> None:
    blob = bytearray(compile_blob(zoo("digits_cnn").model))
    info = parse_blob(bytes(blob))
    op_off = HEADER_BYTES + len(info.tensors) * TENSOR_BYTES + 3 * OP_BYTES
    blob[op_off] = 150  # GELU
    struct.pack_into("<I", blob, 8, zlib.crc32(bytes(blob[12:])))
    status, detail, msg, _ = c_open(engine_lib, bytes(blob))
    assert (status, detail) == (UNSUPPORTED_OP, 150) and "unsupported" in msg


def test_arena_too_small_is_out_of_memory(engine_lib) -> None:
    blob = compile_blob(zoo("har_cnn").model)
    need = parse_blob(blob).arena_bytes
    status, detail, msg, _ = c_open(engine_lib, blob, capacity=need - 1)
    assert status == OUT_OF_MEMORY and detail == -(-need // 1024) and str(need) in msg
    assert c_open(engine_lib, blob, capacity=need)[0] == 0


def test_wrong_version(engine_lib) -> None:
    blob = bytearray(compile_blob(zoo("digits_cnn").model))
    struct.pack_into("<H", blob, 4, 2)
    status, detail, _, _ = c_open(engine_lib, bytes(blob))
    assert (status, detail) == (WRONG_VERSION, 2)
    with pytest.raises(ModelError, match="version"):
        parse_blob(bytes(blob))


def test_parse_blob_rejects_damage() -> None:
    blob = compile_blob(zoo("digits_cnn").model)
    with pytest.raises(ModelError, match="CRC"):
        parse_blob(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ModelError):
        parse_blob(blob[:100])
    with pytest.raises(ModelError, match="magic"):
        parse_blob(b"XXXX" + blob[4:])


def test_compile_refuses_multi_output_fragment() -> None:
    from tinyfed.models.tflite_graph import TfliteGraph as G

    g = G.from_bytes(zoo("digits_cnn").model)
    with pytest.raises(ModelError):
        compile_blob(b"not a model")
    assert compile_blob(g.extract(0, 1))  # a single op is fine


# --------------------------------------------------------------------------------------
# Corruption: tfmb_open must reject with a status and never read or write out of bounds
# --------------------------------------------------------------------------------------


def _recrc(b: bytearray) -> bytes:
    struct.pack_into("<I", b, 8, zlib.crc32(bytes(b[12:])))
    return bytes(b)


def _field_corruptions(blob: bytes) -> list[bytes]:
    """Blobs each with one header, tensor-record or op-record field set to a value that is
    certainly invalid (CRC recomputed, so validation itself must catch it)."""
    info = parse_blob(blob)
    out: list[bytes] = []

    def put(fmt: str, off: int, value: int, fix_crc: bool = True) -> None:
        b = bytearray(blob)
        struct.pack_into(fmt, b, off, value)
        out.append(_recrc(b) if fix_crc else bytes(b))

    n_t, n_o = len(info.tensors), len(info.ops)
    put("<I", 0, 0x424D4655, fix_crc=False)  # magic
    put("<H", 6, 65)  # header size
    put("<I", 8, info.crc32 ^ 1, fix_crc=False)
    for v in (0, len(blob) - 1, len(blob) + 1, 0xFFFFFFFF):
        put("<I", 12, v)  # total size
    for v in (0, n_t + 1, 0xFFFF, 0xFFFE):
        put("<H", 16, v)  # tensor count
    for v in (0, n_o + 1, 0xFFFF):
        put("<H", 18, v)  # op count
    first_const = next(i for i, t in enumerate(info.tensors) if t.constant)
    for v in (n_t, 0xFFFF, first_const):  # out of range, NONE, a constant
        put("<H", 20, v)
        put("<H", 22, v)
    put("<I", 24, max(0, info.arena_bytes - 16))
    put("<I", 24, 0)
    put("<I", 24, 0xFFFFFFF0)
    for field_off, vals in ((28, (0, 65, 0xFFFFFFF0)), (32, (0, 64, info.data_offset + 16, 0xFFFFFFF0)),
                            (36, (0, info.data_offset + 8, info.data_offset + 16, 0xFFFFFFF0)),
                            (40, (0, info.data_bytes - 1, info.data_bytes + 16, 0xFFFFFFFF)), (44, (1,)),
                            (60, (1,))):
        for v in vals:
            put("<I", field_off, v)
    for i, t in enumerate(info.tensors):
        r = HEADER_BYTES + i * TENSOR_BYTES
        put("<B", r, 7)  # type
        put("<B", r + 1, 5)  # rank
        put("<B", r + 2, 0x80)  # flags
        put("<i", r + 4, 0)  # dim 0
        put("<i", r + 4, -1)
        put("<i", r + 4 + 4 * (len(t.shape) - 1 if t.shape else 0), t.shape[-1] + 1 if t.shape else 2)
        put("<I", r + 20, 0xFFFFFFF0)  # offset
        limit = info.data_bytes if t.constant else info.arena_bytes
        put("<I", r + 20, limit - t.nbytes + 1)
        put("<I", r + 24, t.nbytes + 1)  # nbytes
        put("<I", r + 24, 0)
    for i, op in enumerate(info.ops):
        r = HEADER_BYTES + n_t * TENSOR_BYTES + i * OP_BYTES
        put("<B", r, 200)  # op code
        put("<H", r + 4, n_t)  # input id out of range
        put("<H", r + 4, 0xFFFF)  # missing input
        put("<H", r + 10, n_t)  # output id
        if op.name != "RESHAPE":  # a reshape onto its own input is a harmless identity
            put("<H", r + 10, op.inputs[0])  # output == input (overlap)
        put("<I", r + 12, 1)  # reserved
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            put("<H", r + 6, op.output)  # weights = an activation
            put("<i", r + 16 + 4 * 10, info.data_bytes)  # multiplier array offset
            put("<i", r + 16 + 4 * 11, -4)  # shift array offset
            put("<i", r + 16 + 4 * 11, op.params[11] + 2)  # misaligned
            put("<i", r + 16 + 4 * 0, 1000)  # input offset
            put("<i", r + 16 + 4 * 3, -129)  # activation max below min
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"):
            put("<i", r + 16 + 4 * 4, 0)  # stride 0
            put("<i", r + 16 + 4 * 5, 1 << 20)  # stride huge
            put("<i", r + 16 + 4 * 8, -1)  # negative padding
        if op.name == "DEPTHWISE_CONV_2D":
            put("<i", r + 16 + 4 * 12, 3)  # depth multiplier disagrees with shapes
        if op.name == "SOFTMAX":
            put("<i", r + 16 + 4 * 1, 40)  # left shift
            put("<i", r + 16 + 4 * 2, 5)  # diff_min > 0
        put("<i", r + 16 + 4 * 15, 1)  # unused parameter
    return out


@pytest.mark.parametrize("name", ["digits_cnn", "har_cnn"])
def test_corrupted_fields_rejected(fuzz_exe, tmp_path: Path, name: str) -> None:
    z = zoo(name)
    blobs = []
    for model in (z.model, *z.graph.split(z.graph.cut_points()[len(z.graph.cut_points()) // 2])):
        blobs += _field_corruptions(compile_blob(model))
    statuses, _ = run_fuzz(fuzz_exe, blobs, tmp_path)
    accepted = [i for i, s in enumerate(statuses) if s == 0]
    assert not accepted, f"{len(accepted)} of {len(blobs)} corrupted blobs opened (first: {accepted[:5]})"
    assert set(statuses) <= {BAD_MODEL, WRONG_VERSION, UNSUPPORTED_OP}
    assert len(blobs) > 300


def test_truncations_rejected(fuzz_exe, tmp_path: Path) -> None:
    blobs = [compile_blob(zoo("digits_cnn").model)]
    statuses, tail = run_fuzz(fuzz_exe, blobs, tmp_path, truncate=True)
    assert statuses == [0]
    assert tail == f"truncations {len(blobs[0])} opened 0"


def test_random_flips(fuzz_exe, tmp_path: Path) -> None:
    """Random byte flips: without the CRC fixed every one is rejected; with the CRC fixed
    (so validation must cope) none may crash or touch memory out of bounds (sanitizers),
    whatever opens is invoked on an exactly sized arena."""
    rng = np.random.default_rng(2024)
    z = zoo("digits_cnn")
    base = compile_blob(z.model)
    tail_blob = compile_blob(z.graph.split(z.graph.cut_points()[-1])[1])
    info = parse_blob(base)
    tables_end = info.data_offset
    raw, fixed = [], []
    for i in range(4000):
        src = base if i % 2 == 0 else tail_blob
        b = bytearray(src)
        n_flips = int(rng.integers(1, 5))
        limit = parse_blob(src).data_offset if i % 4 < 3 else len(src)  # mostly header/tables
        for _ in range(n_flips):
            pos = int(rng.integers(0, limit))
            b[pos] ^= int(rng.integers(1, 256))
        if bytes(b) == src:
            continue
        raw.append(bytes(b))
        fixed.append(_recrc(bytearray(b)) if len(b) >= 12 else bytes(b))
    statuses, _ = run_fuzz(fuzz_exe, raw + fixed, tmp_path)
    raw_s, fixed_s = statuses[: len(raw)], statuses[len(raw) :]
    assert all(s != 0 for s in raw_s), "a flipped blob passed the CRC"
    rejected = sum(s != 0 for s in fixed_s)
    assert rejected > len(fixed_s) // 2  # most flips in the tables are caught by validation
    assert tables_end > 0


# --------------------------------------------------------------------------------------
# Builds: warning-free for host and Cortex-M4, no floating point
# --------------------------------------------------------------------------------------


def test_host_build_warning_free(tmp_path: Path) -> None:
    gcc = _gcc()
    for src in SOURCES:
        r = subprocess.run([gcc, *WARN, "-pedantic", "-c", src, "-o", str(tmp_path / "x.o")],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0 and not r.stderr.strip(), f"{src}: {r.stderr}"


def test_cortex_m4_build_warning_free(tmp_path: Path) -> None:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed (make debian-packages installs it)")
    for src in SOURCES:
        obj = tmp_path / (Path(src).stem + ".o")
        r = subprocess.run([cc, *WARN, *M4, "-ffreestanding", "-c", src, "-o", str(obj)],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0 and not r.stderr.strip(), f"{src}: {r.stderr}"
    # No floating point anywhere in the engine: no float/double and no FPU instructions.
    objdump = shutil.which("arm-none-eabi-objdump")
    if objdump:
        for obj in tmp_path.glob("*.o"):
            dis = subprocess.run([objdump, "-d", str(obj)], capture_output=True, text=True, check=False).stdout
            assert not any(ins in dis for ins in ("\tvmul", "\tvadd", "\tvcvt", "\tvdiv")), obj.name


def test_engine_sources_have_no_float() -> None:
    import re

    assert any("/ops/" in src for src in SOURCES), "the op files are part of the int8 engine"
    for src in [*SOURCES, *int8_engine_headers()]:
        text = re.sub(r"/\*.*?\*/", "", Path(src).read_text(), flags=re.DOTALL)
        assert not re.search(r"\b(float|double)\b", text), src
        includes = set(re.findall(r"#include\s*<([^>]+)>", text))
        # arm_acle.h: the DSP intrinsics tfmb_simd.h uses on a DSP core (integer SIMD only)
        assert includes <= {"string.h", "stdint.h", "stdbool.h", "arm_acle.h"}, (src, includes)
