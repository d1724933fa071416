"""Compile an int8 ``.tflite`` fragment into the firmware's TFMB blob, and read blobs back.

The firmware never parses flatbuffers: the host does everything TFLM's ``Prepare`` would do
(quantized multipliers and shifts in double precision, activation ranges, SAME/VALID padding,
softmax's fixed-point setup, ADD's rescaling) and plans the activation arena. The C engine
(``firmware/engine/``) and the numpy twin (:mod:`tinyfed.firmware_bridge.twin.kernels_np`) then
run pure integer arithmetic, bit-exact with TFLM's reference int8 kernels. Each op's share of
that work is its op module's ``encode_blob`` (:mod:`tinyfed.ops`); this module numbers tensors,
plans the arena (:mod:`~tinyfed.firmware_bridge.compile.layout`) and writes the records.

The byte layout is specified in ``docs/fragment-format.md``; the constants below are its
single source on the host side.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tinyfed import ops
from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.layout import FragmentBuilder, align_up, plan_arena
from tinyfed.ops.fixed_point import quantize_multiplier

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo, TfliteGraph

__all__ = [
    "MAGIC",
    "OP_CODES",
    "SUPPORTED_OPS",
    "VERSION",
    "BlobBuilder",
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

# TFLite BuiltinOperator codes: the blob uses them as its op codes (from the op registry).
OP_CODES = ops.op_codes()
OP_NAMES = {v: k for k, v in OP_CODES.items()}
SUPPORTED_OPS = frozenset(OP_CODES)

_HEADER = struct.Struct("<4sHHIIHHHHIIIIII16x")
_TENSOR = struct.Struct("<BBBB4iIIIiI")
_OP = struct.Struct("<BBHHHHHI16i")
assert _HEADER.size == HEADER_BYTES and _TENSOR.size == TENSOR_BYTES and _OP.size == OP_BYTES

_FIX_OPS = (
    f"the firmware engine runs {ops.listing(list(OP_CODES))}: choose a cut whose fragment uses only those"
)


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

    def has_input(self, k: int) -> bool:
        """Whether input slot ``k`` holds a tensor (optional inputs such as a bias may be absent)."""
        return self.inputs[k] != NONE


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


class BlobBuilder(FragmentBuilder):
    """What an op's TFMB encoder may do while the blob is compiled: check its tensors, number
    them, append constants to the data section and declare its output an alias of its input."""

    def __init__(self, graph: TfliteGraph, source: str) -> None:
        super().__init__(graph, source, ALIGN)
        self.const_offsets: dict[int, int] = {}
        self.aliases: dict[int, int] = {}  # reshape output -> input (shares arena bytes)
        self.offset_patches: list[tuple[int, int]] = []  # (data-section offset, graph tensor)

    def activation(self, op: OpInfo, t: int, what: str) -> TensorInfo:
        """Tensor ``t`` checked as a per-tensor int8 activation of rank <= 4 (not numbered)."""
        info = self.graph.tensors[t]
        if info.type_name != "INT8" or info.is_constant:
            raise self.fail(op, f"{what} tensor {t} is {info.type_name}{' constant' if info.is_constant else ''}; "
                            "the engine runs int8 activations only", "convert with full-int8 quantization")
        if len(info.scales) != 1:
            raise self.fail(op, f"{what} tensor {t} is not per-tensor quantized")
        if len(info.shape) > 4:
            raise self.fail(op, f"{what} tensor {t} has rank {len(info.shape)} > 4")
        return info

    def activation_input(self, op: OpInfo, index: int = 0, what: str = "input") -> tuple[TensorInfo, int]:
        """Input ``index`` of ``op`` checked as an int8 activation (:meth:`activation`), and its blob id."""
        t = op.inputs[index]
        info = self.activation(op, t, what)
        return info, self.id(t)

    def weighted_inputs(self, op: OpInfo, weights: str) -> tuple[TensorInfo, TensorInfo, tuple[int | None, ...]]:
        """A convolution's or fully-connected op's int8 input, int8 ``weights`` and optional int32 bias.

        Returns the input and weight tensors and the three blob ids (None: no bias), numbered in TFLM's
        input order, which is the order the TFMB tensor table lists them in."""
        ins = op.inputs
        x, x_id = self.activation_input(op)
        w_id = self.constant(op, ins[1], "INT8", weights)
        bias_id = self.constant(op, ins[2], "INT32", "bias") if len(ins) > 2 and ins[2] >= 0 else None
        return x, self.graph.tensors[ins[1]], (x_id, w_id, bias_id)

    def constant(self, op: OpInfo, t: int, type_name: str, what: str) -> int:
        """Constant ``t`` of ``type_name``, its values in the data section (once); its blob id."""
        info = self.graph.tensors[t]
        if not info.is_constant or info.type_name != type_name:
            raise self.fail(op, f"{what} tensor {t} must be a constant {type_name} tensor (is {info.type_name})")
        if t not in self.const_offsets:
            arr = self.graph.constant_data(t)
            little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            self.const_offsets[t] = self.data.add(little.tobytes())
        return self.id(t)

    def int32s(self, values: list[int] | tuple[int, ...]) -> int:
        """An int32 array in the data section; its offset."""
        return self.data.add(np.asarray(values, dtype="<i4").tobytes())

    def arena_offset_at(self, data_offset: int, t: int) -> None:
        """Write graph tensor ``t``'s arena offset into the int32 at ``data_offset`` once the arena is
        planned (an op whose data section lists tensors, such as CONCATENATION's inputs)."""
        self.offset_patches.append((data_offset, t))

    def alias(self, out: int, inp: int) -> None:
        """Output ``out`` reinterprets ``inp``'s arena bytes."""
        self.aliases[out] = inp

    def root(self, t: int) -> int:
        while t in self.aliases:
            t = self.aliases[t]
        return t


def _check_graph(g: TfliteGraph, source: str) -> None:
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


def _encode_ops(b: BlobBuilder) -> list[tuple[int, tuple[int, ...], int, list[int]]]:
    """Every op's record (code, 3 input ids, output id, 16 params), via its op module's encoder."""
    records = []
    for op in b.graph.ops:
        spec = ops.get(op.name)
        if len(op.outputs) != 1:
            raise b.fail(op, f"has {len(op.outputs)} outputs")
        out = b.activation(op, op.outputs[0], "output")
        rec = spec.encode_blob(b, op, out)
        inputs = tuple(NONE if t is None else t for t in rec.inputs) + (NONE,) * (3 - len(rec.inputs))
        params = list(rec.params) + [0] * (N_PARAMS - len(rec.params))
        records.append((spec.code, inputs, b.id(op.outputs[0]), params))
    return records


def _scratch_key(op_index: int) -> int:
    """The arena plan's key of op ``op_index``'s scratch (tensor ids are >= 0)."""
    return -1 - op_index


def _plan(b: BlobBuilder) -> tuple[dict[int, int], int]:
    """Arena offsets of every alias group's root and of every op's scratch (keys ``_scratch_key``),
    and the arena bytes (16-aligned, by lifetime: a scratch lives during its op only)."""
    g = b.graph
    life = g.tensor_lifetimes()
    groups: dict[int, tuple[int, int]] = {}
    sizes: dict[int, int] = {}
    for t in b.ids:
        info = g.tensors[t]
        if info.is_constant:
            continue
        r = b.root(t)
        first, last = life.get(t, (0, len(g.ops) - 1))
        if r in groups:
            groups[r] = (min(groups[r][0], first), max(groups[r][1], last))
        else:
            groups[r] = (first, last)
        sizes[r] = max(sizes.get(r, 0), info.nbytes)
    for i, op in enumerate(g.ops):
        need = _scratch_need(g, op)
        if need:
            groups[_scratch_key(i)] = (i, i)
            sizes[_scratch_key(i)] = need
    return plan_arena(sizes, groups, ALIGN)


def _scratch_need(g: TfliteGraph, op: OpInfo) -> int:
    spec = ops.get(op.name)
    return spec.scratch_bytes(g, op) if spec.scratch_bytes is not None else 0


def _tensor_records(b: BlobBuilder, offsets: dict[int, int]) -> bytes:
    recs = bytearray()
    for t in sorted(b.ids, key=b.ids.__getitem__):
        info = b.graph.tensors[t]
        tcode = TYPE_INT8 if info.type_name == "INT8" else TYPE_INT32
        dims = list(info.shape) + [1] * (4 - len(info.shape))
        if info.is_constant:
            off, flags = b.const_offsets[t], FLAG_CONSTANT
        else:
            off, flags = offsets[b.root(t)], 0
        scale = float(info.scales[0]) if len(info.scales) == 1 else 0.0
        zp = int(info.zero_points[0]) if len(info.zero_points) == 1 else 0
        scale_bits = struct.unpack("<I", struct.pack("<f", scale))[0]
        nbytes = math.prod(info.shape) * _TYPE_SIZES[tcode]
        recs += _TENSOR.pack(tcode, len(info.shape), flags, 0, *dims, off, nbytes, scale_bits, zp, 0)
    return bytes(recs)


def compile_blob(tflite_bytes: bytes, *, source: str = "<bytes>") -> bytes:
    """Compile a full-int8 single-input/single-output ``.tflite`` (fragment) into a TFMB blob.

    Raises :class:`ModelError` for ops outside :data:`SUPPORTED_OPS`, non-int8 activations,
    several inputs/outputs, or parameters TFLM itself would refuse.
    """
    from tinyfed.models.tflite_graph import TfliteGraph

    g = TfliteGraph.from_bytes(bytes(tflite_bytes), source=source)
    _check_graph(g, source)
    b = BlobBuilder(g, source)
    b.id(g.inputs[0])
    records = _encode_ops(b)
    b.id(g.outputs[0])
    offsets, arena = _plan(b)
    for data_offset, t in b.offset_patches:
        struct.pack_into("<i", b.data.buf, data_offset, offsets[b.root(t)])

    tensor_recs = _tensor_records(b, offsets)
    op_recs = bytearray()
    for i, (code, ins3, out_id, p) in enumerate(records):
        need = _scratch_need(g, g.ops[i])
        p[13:15] = [offsets[_scratch_key(i)], need] if need else [0, 0]
        op_recs += _OP.pack(code, 0, 0, *ins3, out_id, 0, *[int(v) for v in p])
    tensors_offset = HEADER_BYTES
    ops_offset = tensors_offset + len(tensor_recs)
    data_offset = align_up(ops_offset + len(op_recs), ALIGN)
    body = tensor_recs + bytes(op_recs) + b"\0" * (data_offset - ops_offset - len(op_recs)) + bytes(b.data.buf)
    total = HEADER_BYTES + len(body)
    if len(b.ids) >= NONE or len(records) >= NONE:
        raise ModelError("too many tensors or ops for the blob format", source=source)
    header = _HEADER.pack(MAGIC, VERSION, HEADER_BYTES, 0, total, len(b.ids), len(records),
                          b.ids[g.inputs[0]], b.ids[g.outputs[0]], arena, tensors_offset,
                          ops_offset, data_offset, len(b.data.buf), 0)
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
