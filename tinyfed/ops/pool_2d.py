"""The rules AVERAGE_POOL_2D and MAX_POOL_2D share: window records, program reading, MACs, int8 twin.

Each pooling op module adds its float forward and backward and its :class:`OpSpec`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.firmware_bridge.compile.layout import padding_name, window_geometry
from tinyfed.ops import windows
from tinyfed.ops.base import BlobRecord, ProgramRecord
from tinyfed.ops.fixed_point import activation_range

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo

OPTIONS = ("stride", "filter", "padding", "activation")


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Window, strides, pads and activation range; TFLM requires equal input and output quantization."""
    opts = op.options
    x, x_id = b.activation_input(op)
    if len(x.shape) != 4 or len(out.shape) != 4:
        raise b.fail(op, "input and output must be 4-D")
    if abs(float(x.scales[0]) - float(out.scales[0])) > 1e-6 or x.zero_points[0] != out.zero_points[0]:
        raise b.fail(op, f"input scale/zero point {x.scales[0]:.6g}/{x.zero_points[0]} and output "
                         f"{out.scales[0]:.6g}/{out.zero_points[0]} differ (TFLM allows a scale gap of 1e-6 only)",
                     "convert again: pooling keeps its input's quantization")
    sh, sw = opts.get("stride", (1, 1))
    fh, fw = opts.get("filter", (1, 1))
    oh, pad_h, _ = window_geometry(x.shape[1], fh, sh, 1, opts.get("padding", "VALID"))
    ow, pad_w, _ = window_geometry(x.shape[2], fw, sw, 1, opts.get("padding", "VALID"))
    if (x.shape[0], oh, ow, x.shape[3]) != tuple(out.shape):
        raise b.fail(op, f"output {out.shape} disagrees with the pooling rule")
    amin, amax = activation_range(opts.get("activation", "NONE"), out.scales[0], out.zero_points[0])
    return BlobRecord((x_id,), (0, 0, amin, amax, sh, sw, fh, fw, pad_h, pad_w))


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    o = op.options
    _, h, w, c = b.batch1(op, op.inputs[0])
    _, oh, ow, oc = b.batch1(op, op.outputs[0])
    kh, kw = o["filter"]
    sh, sw = o.get("stride", (1, 1))
    pad = o.get("padding", "VALID")
    eh, pt, _ = window_geometry(h, kh, sh, 1, pad)
    ew, pl, _ = window_geometry(w, kw, sw, 1, pad)
    if (eh, ew, c) != (oh, ow, oc):
        raise b.fail(op, f"output {oh}x{ow}x{oc} disagrees with the {pad} padding rule")
    return ProgramRecord((), (sh, sw, kh, kw, pt, pl))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    x, y = tensors[ins[0]].shape, tensors[out].shape
    sh, sw, kh, kw, pt, pl = p[:6]
    return {"stride": (sh, sw), "filter": (kh, kw), "padding": padding_name(x, y, (kh, kw), (sh, sw), (1, 1), (pt, pl))}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    kh, kw = op.options["filter"]
    return out * kh * kw


def _average(xs: np.ndarray, pad: tuple[int, int], need: tuple[int, int], window: tuple[int, int],
             stride: tuple[int, int], oh: int, ow: int) -> np.ndarray:
    """TFLM's int8 average: the sum over the window's inputs (padding excluded), divided rounding half away."""
    fh, fw = window
    xp = windows.pad_int8(xs, pad, need, np.int64(0))
    mask = windows.pad_int8(np.ones((1, *xs.shape[1:3], 1), np.int64), pad, need, np.int64(0))
    acc = np.zeros((xs.shape[0], oh, ow, xs.shape[3]), dtype=np.int64)
    cnt = np.zeros((1, oh, ow, 1), dtype=np.int64)
    for fy in range(fh):
        for fx in range(fw):
            acc += windows.int8_tap(xp, fy, fx, (1, 1), stride, oh, ow)
            cnt += windows.int8_tap(mask, fy, fx, (1, 1), stride, oh, ow)
    cnt = np.maximum(cnt, 1)
    half = cnt // 2
    pos = (acc + half) // cnt
    neg_num = acc - half  # <= 0
    neg = -((-neg_num) // cnt)
    return np.where(acc > 0, pos, neg)


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...],
             is_max: bool = False) -> np.ndarray:
    x = xs[0]
    lo, hi, sh, sw, fh, fw, pad_h, pad_w = op.params[2:10]
    b = x.shape[0]
    x64 = x.reshape(-1, *x.shape[-3:]).astype(np.int64)
    oh, ow = out_shape[1], out_shape[2]
    need = ((oh - 1) * sh + fh, (ow - 1) * sw + fw)
    if is_max:
        xp = windows.pad_int8(x64, (pad_h, pad_w), need, np.int64(-1 << 20))
        y = np.full((x64.shape[0], oh, ow, x64.shape[3]), -128, dtype=np.int64)
        for fy in range(fh):
            for fx in range(fw):
                y = np.maximum(y, windows.int8_tap(xp, fy, fx, (1, 1), (sh, sw), oh, ow))
    else:
        y = _average(x64, (pad_h, pad_w), need, (fh, fw), (sh, sw), oh, ow)
    return np.clip(y, lo, hi).astype(np.int8).reshape(b, *out_shape)
