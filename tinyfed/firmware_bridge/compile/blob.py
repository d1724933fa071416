"""Compile an int8 ``.tflite`` fragment into the firmware's TFMB blob, and read blobs back.

The firmware never parses flatbuffers: the host does everything TFLM's ``Prepare`` would do
(quantized multipliers and shifts in double precision, activation ranges, SAME/VALID padding,
softmax's fixed-point setup, ADD's rescaling) and plans the activation arena. The C engine
(``firmware/engine/``) and the numpy twin (:mod:`tinyfed.firmware_bridge.twin.kernels_np`) then
run pure integer arithmetic, bit-exact with TFLM's reference int8 kernels.

The byte layout is specified in ``docs/fragment-format.md``; the constants below are its
single source on the host side.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from tinyfed.errors import ModelError

__all__ = [
    "MAGIC",
    "OP_CODES",
    "SUPPORTED_OPS",
    "VERSION",
    "BlobInfo",
    "BlobOp",
    "BlobTensor",
    "compile_blob",
    "parse_blob",
    "quantize_multiplier",
]

MAGIC = b"TFMB"
VERSION = 1
HEADER_BYTES = 64
TENSOR_BYTES = 40
OP_BYTES = 80
N_PARAMS = 16
ALIGN = 16
NONE = 0xFFFF

TYPE_INT8 = 9  # TFLite TensorType codes
TYPE_INT32 = 2
_TYPE_NAMES = {TYPE_INT8: "INT8", TYPE_INT32: "INT32"}
_TYPE_SIZES = {TYPE_INT8: 1, TYPE_INT32: 4}
FLAG_CONSTANT = 1

# TFLite BuiltinOperator codes: the blob uses them as its op codes.
OP_CODES = {
    "ADD": 0, "AVERAGE_POOL_2D": 1, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 4,
    "FULLY_CONNECTED": 9, "MAX_POOL_2D": 17, "RESHAPE": 22, "SOFTMAX": 25,
}
OP_NAMES = {v: k for k, v in OP_CODES.items()}
SUPPORTED_OPS = frozenset(OP_CODES)

_HEADER = struct.Struct("<4sHHIIHHHHIIIIII16x")
_TENSOR = struct.Struct("<BBBB4iIIIiI")
_OP = struct.Struct("<BBHHHHHI16i")
assert _HEADER.size == HEADER_BYTES and _TENSOR.size == TENSOR_BYTES and _OP.size == OP_BYTES

_FIX_OPS = (
    "the firmware engine runs CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, AVERAGE_POOL_2D, "
    "MAX_POOL_2D, RESHAPE, SOFTMAX and ADD: choose a cut whose fragment uses only those"
)


# --------------------------------------------------------------------------------------
# TFLite / TFLM quantization arithmetic (what Prepare computes)
# --------------------------------------------------------------------------------------


def _round_away(x: float) -> int:
    """``std::round``: halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier`` (double): ``real ~= m * 2**(shift - 31)``."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = _round_away(q * (1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    if shift > 30:
        shift, q_fixed = 30, (1 << 31) - 1
    return int(q_fixed), int(shift)


def _f32(x: float) -> np.float32:
    return np.float32(x)


def _activation_range(act: str, scale: float, zp: int) -> tuple[int, int]:
    """``CalculateActivationRangeQuantized`` for int8 outputs (float32 division, std::round)."""
    qmin, qmax = -128, 127

    def q(f: float) -> int:
        return zp + _round_away(float(_f32(f) / _f32(scale)))

    if act in ("NONE", None):
        return qmin, qmax
    if act == "RELU":
        return max(qmin, q(0.0)), qmax
    if act == "RELU6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if act == "RELU_N1_TO_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ModelError(f"fused activation {act} is not supported by the firmware engine",
                     fix="use NONE, RELU, RELU6 or RELU_N1_TO_1")


def _out_size(padding: str, size: int, filt: int, stride: int, dil: int) -> int:
    eff = (filt - 1) * dil + 1
    if padding == "SAME":
        return (size + stride - 1) // stride
    return (size + stride - eff) // stride


def _pad(stride: int, dil: int, size: int, filt: int, out: int) -> int:
    eff = (filt - 1) * dil + 1
    total = max(0, (out - 1) * stride + eff - size)
    return total // 2


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobTensor:
    index: int
    type_code: int
    shape: tuple[int, ...]
    constant: bool
    offset: int  # arena offset (activation) or data-section offset (constant)
    nbytes: int
    scale: float
    zero_point: int

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type_code, f"TYPE_{self.type_code}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int8) if self.type_code == TYPE_INT8 else np.dtype("<i4")


@dataclass(frozen=True)
class BlobOp:
    index: int
    code: int
    inputs: tuple[int, int, int]  # NONE (0xFFFF) marks an absent input
    output: int
    params: tuple[int, ...]  # 16 int32 parameters; meaning per op (docs/fragment-format.md)

    @property
    def name(self) -> str:
        return OP_NAMES.get(self.code, f"OP_{self.code}")


@dataclass(frozen=True)
class BlobInfo:
    """What the host needs to know about a blob (and what tests inspect)."""

    version: int
    total_size: int
    crc32: int
    arena_bytes: int
    input_tensor: int
    output_tensor: int
    tensors: tuple[BlobTensor, ...]
    ops: tuple[BlobOp, ...]
    data_offset: int
    data_bytes: int
    data: bytes = field(repr=False)

    @property
    def op_count(self) -> int:
        return len(self.ops)

    @property
    def op_names(self) -> list[str]:
        return [o.name for o in self.ops]

    @property
    def input(self) -> BlobTensor:
        return self.tensors[self.input_tensor]

    @property
    def output(self) -> BlobTensor:
        return self.tensors[self.output_tensor]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.output.shape

    @property
    def input_bytes(self) -> int:
        return self.input.nbytes

    @property
    def output_bytes(self) -> int:
        return self.output.nbytes

    @property
    def input_quantization(self) -> tuple[float, int]:
        return self.input.scale, self.input.zero_point

    @property
    def output_quantization(self) -> tuple[float, int]:
        return self.output.scale, self.output.zero_point

    def constant(self, tensor: int) -> np.ndarray:
        t = self.tensors[tensor]
        raw = self.data[t.offset : t.offset + t.nbytes]
        return np.frombuffer(raw, dtype=t.dtype).reshape(t.shape)

    def int32_array(self, offset: int, count: int) -> np.ndarray:
        return np.frombuffer(self.data[offset : offset + 4 * count], dtype="<i4")


# --------------------------------------------------------------------------------------
# Compiler
# --------------------------------------------------------------------------------------


class _Data:
    """The 16-byte-aligned constant section."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def add(self, payload: bytes) -> int:
        pad = (-len(self.buf)) % ALIGN
        self.buf += b"\0" * pad
        off = len(self.buf)
        self.buf += payload
        return off


def _plan_arena(sizes: dict[int, int], life: dict[int, tuple[int, int]]) -> tuple[dict[int, int], int]:
    """Greedy by size (as TFLM's GreedyMemoryPlanner): each buffer at the lowest 16-aligned
    offset that does not overlap a placed buffer whose lifetime intersects its own."""
    order = sorted(sizes, key=lambda t: (-sizes[t], life[t][0], t))
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets: dict[int, int] = {}
    for t in order:
        size = -(-sizes[t] // ALIGN) * ALIGN
        first, last = life[t]
        clashes = sorted((o, e) for o, e, a, b in placed if a <= last and first <= b)
        cand = 0
        for o, e in clashes:
            if cand + size <= o:
                break
            cand = max(cand, -(-e // ALIGN) * ALIGN)
        offsets[t] = cand
        placed.append((cand, cand + size, first, last))
    total = max((e for _, e, _, _ in placed), default=0)
    return offsets, total


def compile_blob(tflite_bytes: bytes, *, source: str = "<bytes>") -> bytes:
    """Compile a full-int8 single-input/single-output ``.tflite`` (fragment) into a TFMB blob.

    Raises :class:`ModelError` for ops outside :data:`SUPPORTED_OPS`, non-int8 activations,
    several inputs/outputs, or parameters TFLM itself would refuse.
    """
    from tinyfed.models.tflite_graph import TfliteGraph

    g = TfliteGraph.from_bytes(bytes(tflite_bytes), source=source)
    bad = g.unsupported_ops(SUPPORTED_OPS)
    if bad:
        listing = ", ".join(f"op {i} {n}" for i, n in bad)
        raise ModelError(f"the firmware engine has no kernel for {listing}", fix=_FIX_OPS, source=source)
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise ModelError(
            f"the fragment has {len(g.inputs)} inputs and {len(g.outputs)} outputs; the firmware runs one of each",
            fix="cut at a single-tensor boundary (TfliteGraph.cut_points())", source=source,
        )
    if not g.ops:
        raise ModelError("the model has no operators", source=source)

    def fail(op, problem: str, fix: str | None = None) -> ModelError:
        return ModelError(f"op {op.index} {op.name}: {problem}", fix=fix, source=source)

    def act_tensor(op, t: int, what: str):
        info = g.tensors[t]
        if info.type_name != "INT8" or info.is_constant:
            raise fail(op, f"{what} tensor {t} is {info.type_name}{' constant' if info.is_constant else ''}; "
                       "the engine runs int8 activations only", "convert with full-int8 quantization")
        if len(info.scales) != 1:
            raise fail(op, f"{what} tensor {t} is not per-tensor quantized")
        if len(info.shape) > 4:
            raise fail(op, f"{what} tensor {t} has rank {len(info.shape)} > 4")
        return info

    # ---- tensor numbering: activations and the constants kernels read --------------
    blob_ids: dict[int, int] = {}

    def bid(t: int) -> int:
        if t not in blob_ids:
            blob_ids[t] = len(blob_ids)
        return blob_ids[t]

    data = _Data()
    const_offsets: dict[int, int] = {}

    def const_tensor(op, t: int, type_name: str, what: str) -> int:
        info = g.tensors[t]
        if not info.is_constant or info.type_name != type_name:
            raise fail(op, f"{what} tensor {t} must be a constant {type_name} tensor (is {info.type_name})")
        if t not in const_offsets:
            arr = g.constant_data(t)
            const_offsets[t] = data.add(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
        return bid(t)

    def i32s(values) -> int:
        return data.add(np.asarray(values, dtype="<i4").tobytes())

    bid(g.inputs[0])
    records: list[tuple[int, tuple[int, int, int], int, list[int]]] = []
    alias: dict[int, int] = {}  # reshape output -> input (shares arena bytes)

    for op in g.ops:
        code = OP_CODES[op.name]
        ins = [t for t in op.inputs]
        out_t = op.outputs[0] if len(op.outputs) == 1 else None
        if out_t is None:
            raise fail(op, f"has {len(op.outputs)} outputs")
        out = act_tensor(op, out_t, "output")
        p = [0] * N_PARAMS
        blob_in = [NONE, NONE, NONE]
        opts = op.options
        act = opts.get("activation", "NONE")

        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x = act_tensor(op, ins[0], "input")
            w = g.tensors[ins[1]]
            blob_in[0] = bid(ins[0])
            blob_in[1] = const_tensor(op, ins[1], "INT8", "filter")
            if len(ins) > 2 and ins[2] >= 0:
                blob_in[2] = const_tensor(op, ins[2], "INT32", "bias")
            if len(x.shape) != 4 or len(w.shape) != 4 or len(out.shape) != 4:
                raise fail(op, "input, filter and output must be 4-D")
            depthwise = op.name == "DEPTHWISE_CONV_2D"
            n_out = out.shape[3]
            if any(z != 0 for z in w.zero_points):
                raise fail(op, "the filter has a non-zero zero point (TFLM's int8 kernels require 0)")
            sh, sw = opts.get("stride", (1, 1))
            dh, dw = opts.get("dilation", (1, 1))
            fh, fw = w.shape[1], w.shape[2]
            oh = _out_size(opts.get("padding", "VALID"), x.shape[1], fh, sh, dh)
            ow = _out_size(opts.get("padding", "VALID"), x.shape[2], fw, sw, dw)
            if (oh, ow) != tuple(out.shape[1:3]):
                raise fail(op, f"output {out.shape} disagrees with the padding rule ({oh}x{ow})")
            mult = 0
            if depthwise:
                if x.shape[3] == 0 or n_out % x.shape[3] or w.shape[3] != n_out or w.shape[0] != 1:
                    raise fail(op, f"filter {w.shape} does not map {x.shape[3]} input to {n_out} output channels")
                mult = n_out // x.shape[3]
            elif w.shape[3] != x.shape[3]:
                raise fail(op, "grouped convolution is not supported")
            n_scales = len(w.scales)
            if n_scales not in (1, n_out):
                raise fail(op, f"{n_scales} filter scales for {n_out} output channels")
            ms, ss = [], []
            for c in range(n_out):
                fscale = w.scales[c if n_scales > 1 else 0]
                m, s = quantize_multiplier(float(x.scales[0]) * float(fscale) / float(out.scales[0]))
                ms.append(m)
                ss.append(s)
            amin, amax = _activation_range(act, out.scales[0], out.zero_points[0])
            p[0:13] = [-x.zero_points[0], out.zero_points[0], amin, amax, sh, sw, dh, dw,
                       _pad(sh, dh, x.shape[1], fh, oh), _pad(sw, dw, x.shape[2], fw, ow),
                       i32s(ms), i32s(ss), mult]
        elif op.name == "FULLY_CONNECTED":
            x = act_tensor(op, ins[0], "input")
            w = g.tensors[ins[1]]
            blob_in[0] = bid(ins[0])
            blob_in[1] = const_tensor(op, ins[1], "INT8", "weights")
            if len(ins) > 2 and ins[2] >= 0:
                blob_in[2] = const_tensor(op, ins[2], "INT32", "bias")
            if len(w.shape) != 2:
                raise fail(op, "weights must be 2-D")
            n_out, depth = w.shape
            if out.shape[-1] != n_out or x.size != (out.size // n_out) * depth:
                raise fail(op, f"input {x.shape} / output {out.shape} disagree with weights {w.shape}")
            if opts.get("weights_format", 0) != 0:
                raise fail(op, "shuffled weights are not supported")
            n_scales = len(w.scales)
            if n_scales == 1:
                real = float(np.float32(np.float32(x.scales[0]) * np.float32(w.scales[0]))) / float(out.scales[0])
                ms, ss = zip(*[quantize_multiplier(real)] * n_out)
            elif n_scales == n_out:
                pairs = [quantize_multiplier(float(x.scales[0]) * float(s) / float(out.scales[0])) for s in w.scales]
                ms, ss = zip(*pairs)
            else:
                raise fail(op, f"{n_scales} weight scales for {n_out} outputs")
            if n_scales > 1 and any(z != 0 for z in w.zero_points):
                raise fail(op, "per-channel weights with a non-zero zero point")
            amin, amax = _activation_range(act, out.scales[0], out.zero_points[0])
            p[0:5] = [-x.zero_points[0], out.zero_points[0], amin, amax, -w.zero_points[0]]
            p[10:12] = [i32s(ms), i32s(ss)]
        elif op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            x = act_tensor(op, ins[0], "input")
            blob_in[0] = bid(ins[0])
            if len(x.shape) != 4 or len(out.shape) != 4:
                raise fail(op, "input and output must be 4-D")
            if x.scales != out.scales or x.zero_points != out.zero_points:
                raise fail(op, "input and output quantization differ (TFLM requires equal)")
            sh, sw = opts.get("stride", (1, 1))
            fh, fw = opts.get("filter", (1, 1))
            oh = _out_size(opts.get("padding", "VALID"), x.shape[1], fh, sh, 1)
            ow = _out_size(opts.get("padding", "VALID"), x.shape[2], fw, sw, 1)
            if (x.shape[0], oh, ow, x.shape[3]) != tuple(out.shape):
                raise fail(op, f"output {out.shape} disagrees with the pooling rule")
            amin, amax = _activation_range(act, out.scales[0], out.zero_points[0])
            p[2:10] = [amin, amax, sh, sw, fh, fw, _pad(sh, 1, x.shape[1], fh, oh), _pad(sw, 1, x.shape[2], fw, ow)]
        elif op.name == "RESHAPE":
            x = act_tensor(op, ins[0], "input")
            blob_in[0] = bid(ins[0])
            if x.size != out.size:
                raise fail(op, "input and output sizes differ")
            if x.scales != out.scales or x.zero_points != out.zero_points:
                raise fail(op, "input and output quantization differ")
            alias[out_t] = ins[0]
        elif op.name == "SOFTMAX":
            x = act_tensor(op, ins[0], "input")
            blob_in[0] = bid(ins[0])
            if x.shape != out.shape:
                raise fail(op, "input and output shapes differ")
            if out.zero_points[0] != -128 or abs(out.scales[0] - 1.0 / 256) > 1e-6:
                raise fail(op, "an int8 softmax output must have scale 1/256 and zero point -128 (TFLM requires it)")
            beta = float(opts.get("beta", 1.0))
            real = min(beta * float(x.scales[0]) * float(1 << 26), float((1 << 31) - 1))
            if not real > 1.0:
                raise fail(op, "beta * input scale is too small for TFLM's int8 softmax")
            m, left = quantize_multiplier(real)
            radius = math.floor(1.0 * ((1 << 5) - 1) * float(1 << 26) / float(1 << left))
            p[0:3] = [m, left, -radius]
        elif op.name == "ADD":
            a = act_tensor(op, ins[0], "input 1")
            b = act_tensor(op, ins[1], "input 2")
            blob_in[0], blob_in[1] = bid(ins[0]), bid(ins[1])
            if not (a.shape == b.shape == out.shape):
                raise fail(op, f"shapes {a.shape} + {b.shape} -> {out.shape}: the engine's ADD does not broadcast",
                           "give both inputs the output's shape")
            left_shift = 20
            twice_max = 2.0 * float(max(np.float32(a.scales[0]), np.float32(b.scales[0])))
            r1 = float(a.scales[0]) / twice_max
            r2 = float(b.scales[0]) / twice_max
            ro = twice_max / (float(1 << left_shift) * float(out.scales[0]))
            if not (0 < ro < 1.0):
                raise fail(op, "the output rescaling is not smaller than one (TFLM refuses it)")
            m1, s1 = quantize_multiplier(r1)
            m2, s2 = quantize_multiplier(r2)
            mo, so = quantize_multiplier(ro)
            amin, amax = _activation_range(act, out.scales[0], out.zero_points[0])
            p[0:12] = [-a.zero_points[0], -b.zero_points[0], amin, amax, out.zero_points[0], left_shift,
                       m1, s1, m2, s2, mo, so]
        records.append((code, tuple(blob_in), bid(out_t), p))  # type: ignore[arg-type]

    bid(g.outputs[0])

    # ---- arena plan ---------------------------------------------------------------
    life = g.tensor_lifetimes()

    def root(t: int) -> int:
        while t in alias:
            t = alias[t]
        return t

    groups: dict[int, tuple[int, int]] = {}
    sizes: dict[int, int] = {}
    for t in blob_ids:
        info = g.tensors[t]
        if info.is_constant:
            continue
        r = root(t)
        a, b = life.get(t, (0, len(g.ops) - 1))
        if r in groups:
            groups[r] = (min(groups[r][0], a), max(groups[r][1], b))
        else:
            groups[r] = (a, b)
        sizes[r] = max(sizes.get(r, 0), info.nbytes)
    offsets, arena = _plan_arena(sizes, groups)

    # ---- serialise ------------------------------------------------------------------
    order = sorted(blob_ids, key=blob_ids.get)
    tensor_recs = bytearray()
    for t in order:
        info = g.tensors[t]
        tcode = TYPE_INT8 if info.type_name == "INT8" else TYPE_INT32
        dims = list(info.shape) + [1] * (4 - len(info.shape))
        if info.is_constant:
            off, flags = const_offsets[t], FLAG_CONSTANT
        else:
            off, flags = offsets[root(t)], 0
        scale = float(info.scales[0]) if len(info.scales) == 1 else 0.0
        zp = int(info.zero_points[0]) if len(info.zero_points) == 1 else 0
        scale_bits = struct.unpack("<I", struct.pack("<f", scale))[0]
        nbytes = math.prod(info.shape) * _TYPE_SIZES[tcode]
        tensor_recs += _TENSOR.pack(tcode, len(info.shape), flags, 0, *dims, off, nbytes, scale_bits, zp, 0)
    op_recs = bytearray()
    for code, ins3, out_id, p in records:
        op_recs += _OP.pack(code, 0, 0, *ins3, out_id, 0, *[int(v) for v in p])

    tensors_offset = HEADER_BYTES
    ops_offset = tensors_offset + len(tensor_recs)
    data_offset = -(-(ops_offset + len(op_recs)) // ALIGN) * ALIGN
    body = bytes(tensor_recs) + bytes(op_recs) + b"\0" * (data_offset - ops_offset - len(op_recs)) + bytes(data.buf)
    total = HEADER_BYTES + len(body)
    if len(order) >= NONE or len(records) >= NONE:
        raise ModelError("too many tensors or ops for the blob format", source=source)
    header = _HEADER.pack(MAGIC, VERSION, HEADER_BYTES, 0, total, len(order), len(records),
                          blob_ids[g.inputs[0]], blob_ids[g.outputs[0]], arena, tensors_offset,
                          ops_offset, data_offset, len(data.buf), 0)
    blob = bytearray(header + body)
    struct.pack_into("<I", blob, 8, zlib.crc32(bytes(blob[12:])))
    return bytes(blob)


# --------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------


def parse_blob(blob: bytes, *, source: str = "<blob>") -> BlobInfo:
    """Read a TFMB blob (header, tensors, ops); checks the framing and the CRC.

    Raises :class:`ModelError` for a wrong magic/version, a bad CRC or out-of-range tables.
    (The firmware's ``tfmb_open`` performs the complete semantic validation.)
    """
    blob = bytes(blob)
    fix = "compile the fragment again with tinyfed.firmware_bridge.compile.blob.compile_blob"
    if len(blob) < HEADER_BYTES:
        raise ModelError(f"blob of {len(blob)} bytes is shorter than its header", fix=fix, source=source)
    (magic, version, hdr, crc, total, n_t, n_o, t_in, t_out, arena, t_off, o_off, d_off, d_bytes,
     _flags) = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise ModelError("not a TFMB blob (bad magic)", fix=fix, source=source)
    if version != VERSION:
        raise ModelError(f"blob version {version}, this host reads version {VERSION}", fix=fix, source=source)
    if hdr != HEADER_BYTES or total != len(blob):
        raise ModelError(f"blob size {len(blob)} disagrees with its header ({total})", fix=fix, source=source)
    if zlib.crc32(blob[12:]) != crc:
        raise ModelError("blob CRC mismatch", fix=fix, source=source)
    if not (t_off == HEADER_BYTES and t_off + n_t * TENSOR_BYTES <= o_off and o_off + n_o * OP_BYTES <= d_off
            and d_off % ALIGN == 0 and d_off + d_bytes == total and t_in < n_t and t_out < n_t):
        raise ModelError("blob tables out of range", fix=fix, source=source)
    tensors = []
    for i in range(n_t):
        tcode, rank, flags, _r, d0, d1, d2, d3, off, nbytes, scale_bits, zp, _r2 = _TENSOR.unpack_from(
            blob, t_off + i * TENSOR_BYTES)
        scale = struct.unpack("<f", struct.pack("<I", scale_bits))[0]
        shape = (d0, d1, d2, d3)[: min(rank, 4)]
        tensors.append(BlobTensor(i, tcode, shape, bool(flags & FLAG_CONSTANT), off, nbytes, float(scale), zp))
    ops = []
    for i in range(n_o):
        code, _a, _b, i0, i1, i2, out, _c, *params = _OP.unpack_from(blob, o_off + i * OP_BYTES)
        ops.append(BlobOp(i, code, (i0, i1, i2), out, tuple(params)))
    return BlobInfo(
        version=version, total_size=total, crc32=crc, arena_bytes=arena, input_tensor=t_in,
        output_tensor=t_out, tensors=tuple(tensors), ops=tuple(ops), data_offset=d_off,
        data_bytes=d_bytes, data=blob[d_off:],
    )
