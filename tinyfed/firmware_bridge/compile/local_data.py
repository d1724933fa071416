"""Local training data for a board: the TFDS image (``docs/protocol.md``, "Local data").

The host packs a board's private windows once, already quantized to the fragment's int8 input,
and provisions them over the link (``BoardClient.load_data``) or preloads them into the
local-data flash store (QEMU ``-device loader``). The image checks itself (CRC-32 of the body),
so a preloaded image that is corrupt or truncated is refused by the board, not trained on.

Layout (little endian)::

    "TFDS" | u16 version=1 | u16 classes | u32 count | u32 sample_bytes | u32 crc32(body)
    | u32 reserved[3]                                              (32 bytes)
    body: u8 label[count] | zero padding to 4 bytes | int8 sample[count][sample_bytes]
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from tinyfed.errors import DatasetError
from tinyfed.ops.fixed_point import quantize

MAGIC = b"TFDS"
VERSION = 1
_HEADER = struct.Struct("<4sHHIII12x")
HEADER_BYTES = _HEADER.size  # 32


@dataclass(frozen=True)
class LocalData:
    x: np.ndarray  # int8, (count, sample_bytes)
    y: np.ndarray  # uint8, (count,)
    classes: int


def quantize_inputs(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float windows -> the fragment input's int8, exactly as TFLM's QUANTIZE op would."""
    return quantize(x, scale, zero_point)


def pack(x_int8: np.ndarray, y: np.ndarray, classes: int) -> bytes:
    """A TFDS image of ``count`` int8 samples (any shape per sample) and their labels."""
    x = np.ascontiguousarray(x_int8)
    if x.dtype != np.int8:
        raise DatasetError(f"local samples must be int8 (the fragment's input), got {x.dtype}",
                           fix="quantize them with quantize_inputs()")
    y = np.asarray(y)
    count = len(x)
    if count == 0 or count != len(y):
        raise DatasetError(f"{count} samples but {len(y)} labels", fix="give one label per sample")
    if classes < 2 or classes > 255 or y.min() < 0 or y.max() >= classes:
        raise DatasetError(f"labels must lie in 0..{classes - 1} (classes {classes})", fix="check the labels")
    labels = y.astype(np.uint8).tobytes()
    labels += b"\0" * (-len(labels) % 4)
    body = labels + x.reshape(count, -1).tobytes()
    sample_bytes = x.reshape(count, -1).shape[1]
    return _HEADER.pack(MAGIC, VERSION, classes, count, sample_bytes, zlib.crc32(body)) + body


def unpack(image: bytes) -> LocalData:
    """Parse and check a TFDS image (the host-side twin of the firmware's check)."""
    if len(image) < _HEADER.size:
        raise DatasetError(f"local data image of {len(image)} bytes is shorter than its header")
    magic, version, classes, count, sample_bytes, crc = _HEADER.unpack_from(image)
    if magic != MAGIC or version != VERSION:
        raise DatasetError(f"not a TFDS v1 image (magic {magic!r}, version {version})")
    pad = -count % 4
    body = image[_HEADER.size:]
    if len(body) != count + pad + count * sample_bytes:
        raise DatasetError(f"TFDS image length {len(image)} does not match {count} x {sample_bytes} bytes")
    if zlib.crc32(body) != crc:
        raise DatasetError("TFDS image fails its CRC-32 check", fix="re-pack the data")
    y = np.frombuffer(body, np.uint8, count)
    x = np.frombuffer(body, np.int8, count * sample_bytes, count + pad).reshape(count, sample_bytes)
    if count and int(y.max()) >= classes:
        raise DatasetError("a label is not below the class count")
    return LocalData(x, y, classes)
