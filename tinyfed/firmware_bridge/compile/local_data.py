"""Local training data for a board: the TFDS image (``docs/protocol.md``, "Local data").

The host packs a board's private windows once, already quantized to the fragment's int8 input,
and provisions them over the link (``BoardClient.load_data``) or preloads them into the
local-data flash store (QEMU ``-device loader``). The image checks itself (CRC-32 of the body),
so a preloaded image that is corrupt or truncated is refused by the board, not trained on.

Each sample carries the target of the run's task (``TARGET_*``, the same codes as the TFTR
program's target kind):

============= ========== ================================================================
target kind   task       per sample (``count`` field of the header: ``classes``)
============= ========== ================================================================
TARGET_CLASS  classify   u8 class, below ``classes`` (>= 2)
TARGET_LABELS multilabel ``classes`` bytes, each 0 or 1 (one per output of the LOGISTIC head)
TARGET_REAL   regress    ``classes`` little-endian float32 values, finite, one per output element
TARGET_INPUT  autoencode nothing: the target is the sample itself (``classes`` = sample bytes)
============= ========== ================================================================

Layout (little endian)::

    "TFDS" | u16 version=2 | u16 classes | u32 count | u32 sample_bytes | u32 crc32(body)
    | u8 target kind | u8 reserved[3] | u32 reserved[2]                (32 bytes)
    body: target[count][target_bytes] | zero padding to 4 bytes | int8 sample[count][sample_bytes]
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from tinyfed.errors import DatasetError
from tinyfed.ops.fixed_point import quantize
from tinyfed.training.task import Task

MAGIC = b"TFDS"
VERSION = 2  # 2: the target kind (issue 13); version 1 held class bytes only
_HEADER = struct.Struct("<4sHHIIIB11x")
HEADER_BYTES = _HEADER.size  # 32
TARGET_CLASS, TARGET_LABELS, TARGET_REAL, TARGET_INPUT = 0, 1, 2, 3

_KIND_NAMES = {TARGET_CLASS: "class", TARGET_LABELS: "labels", TARGET_REAL: "real", TARGET_INPUT: "input"}


def target_kind(task: Task) -> int:
    """The targets a task trains on."""
    return {Task.CLASSIFY: TARGET_CLASS, Task.MULTILABEL: TARGET_LABELS, Task.REGRESS: TARGET_REAL,
            Task.AUTOENCODE: TARGET_INPUT}[Task(task)]


def target_bytes(kind: int, classes: int) -> int:
    """Bytes of one sample's target in the image."""
    return {TARGET_CLASS: 1, TARGET_LABELS: classes, TARGET_REAL: 4 * classes, TARGET_INPUT: 0}[kind]


@dataclass(frozen=True)
class LocalData:
    x: np.ndarray  # int8, (count, sample_bytes)
    #: targets: uint8 (count,) classes; uint8 (count, classes) 0/1 labels; float32 (count, classes)
    #: reals; for TARGET_INPUT an empty (count, 0) array (the target is the sample)
    y: np.ndarray
    classes: int  # class count, or target values per sample
    kind: int = TARGET_CLASS


def quantize_inputs(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float windows -> the fragment input's int8, exactly as TFLM's QUANTIZE op would."""
    return quantize(x, scale, zero_point)


def _target_body(y: np.ndarray | None, count: int, classes: int | None, kind: int,
                 sample_bytes: int) -> tuple[bytes, int]:
    """The targets' bytes and the header's ``classes`` field, checked as the board checks them."""
    if kind == TARGET_INPUT:
        return b"", sample_bytes
    if y is None:
        raise DatasetError(f"{_KIND_NAMES[kind]} targets are missing", fix="give one target per sample")
    y = np.asarray(y)
    if len(y) != count:
        raise DatasetError(f"{count} samples but {len(y)} targets", fix="give one target per sample")
    if kind == TARGET_CLASS:
        if classes is None or not 2 <= classes <= 255 or y.ndim != 1 or y.min() < 0 or y.max() >= classes:
            raise DatasetError(f"labels must be one class per sample in 0..{(classes or 0) - 1} (classes {classes})",
                               fix="check the labels")
        return y.astype(np.uint8).tobytes(), classes
    flat = y.reshape(count, -1)
    k = flat.shape[1]
    if not 1 <= k <= 0xFFFF or (classes is not None and classes != k):
        raise DatasetError(f"{k} target values per sample (expected {classes})", fix="shape targets like the output")
    if kind == TARGET_LABELS:
        if not np.isin(flat, (0, 1)).all():
            raise DatasetError("multilabel targets must be 0 or 1", fix="binarize the label vectors")
        return flat.astype(np.uint8).tobytes(), k
    if kind != TARGET_REAL:
        raise DatasetError(f"unknown target kind {kind}", fix="use one of local_data.TARGET_*")
    real = flat.astype("<f4")
    if not np.isfinite(real).all():
        raise DatasetError("regression targets must be finite float32 values", fix="drop or fix NaN / inf targets")
    return real.tobytes(), k


def pack(x_int8: np.ndarray, y: np.ndarray | None, classes: int | None = None, *, kind: int = TARGET_CLASS) -> bytes:
    """A TFDS image of ``count`` int8 samples (any shape per sample) and their targets of ``kind``:
    int classes (``classes`` needed), (count, k) 0/1 labels, (count, ...) real values, or None
    for TARGET_INPUT."""
    x = np.ascontiguousarray(x_int8)
    if x.dtype != np.int8:
        raise DatasetError(f"local samples must be int8 (the fragment's input), got {x.dtype}",
                           fix="quantize them with quantize_inputs()")
    count = len(x)
    if count == 0:
        raise DatasetError("no samples", fix="give at least one sample")
    samples = x.reshape(count, -1)
    targets, field = _target_body(y, count, classes, kind, samples.shape[1])
    if kind == TARGET_INPUT and field > 0xFFFF:
        raise DatasetError(f"autoencoder samples of {field} bytes exceed the format's 65535",
                           fix="use smaller input windows")
    targets += b"\0" * (-len(targets) % 4)
    body = targets + samples.tobytes()
    return _HEADER.pack(MAGIC, VERSION, field, count, samples.shape[1], zlib.crc32(body), kind) + body


def unpack(image: bytes) -> LocalData:
    """Parse and check a TFDS image (the host-side twin of the firmware's check)."""
    if len(image) < _HEADER.size:
        raise DatasetError(f"local data image of {len(image)} bytes is shorter than its header")
    magic, version, classes, count, sample_bytes, crc, kind = _HEADER.unpack_from(image)
    if magic != MAGIC or version != VERSION:
        raise DatasetError(f"not a TFDS v{VERSION} image (magic {magic!r}, version {version})",
                           fix="pack the data again with this tinyfed")
    if kind not in _KIND_NAMES or any(image[21:HEADER_BYTES]):
        raise DatasetError(f"TFDS target kind {kind} unknown or reserved bytes set")
    if count == 0 or sample_bytes == 0:
        raise DatasetError("TFDS image without samples")
    per = target_bytes(kind, classes)
    t_len = count * per
    pad = -t_len % 4
    body = image[_HEADER.size:]
    if len(body) != t_len + pad + count * sample_bytes:
        raise DatasetError(f"TFDS image length {len(image)} does not match {count} x {sample_bytes} bytes")
    if zlib.crc32(body) != crc:
        raise DatasetError("TFDS image fails its CRC-32 check", fix="re-pack the data")
    x = np.frombuffer(body, np.int8, count * sample_bytes, t_len + pad).reshape(count, sample_bytes)
    if kind == TARGET_CLASS:
        y = np.frombuffer(body, np.uint8, count)
        if classes < 2 or int(y.max()) >= classes:
            raise DatasetError("a label is not below the class count (or fewer than 2 classes)")
    elif kind == TARGET_LABELS:
        y = np.frombuffer(body, np.uint8, t_len).reshape(count, classes)
        if classes == 0 or int(y.max()) > 1:
            raise DatasetError("a multilabel target is not 0 or 1")
    elif kind == TARGET_REAL:
        y = np.frombuffer(body, "<f4", count * classes).reshape(count, classes).astype(np.float32)
        if classes == 0 or not np.isfinite(y).all():
            raise DatasetError("a regression target is not finite")
    else:
        if classes != sample_bytes:
            raise DatasetError(f"TFDS autoencoder image names {classes} target values for samples of {sample_bytes}")
        y = np.zeros((count, 0), np.uint8)
    return LocalData(x, y, classes, kind)
