"""Reading users' ``.npy`` and ``.npz`` files without trusting them.

``numpy.load`` believes a file's header: an ``.npz`` whose member claims shape (10^9, 8, 8, 1)
makes it allocate 238 GiB before it finds the data missing, an empty file raises ``EOFError``, and
an ``.npz`` passed where an ``.npy`` is expected comes back as an ``NpzFile``. Every array a user
hands tinyfed (``--data``, ``--test-data``, ``--representative``) goes through here instead: each
header is read first and checked against the bytes actually stored and a size bound, so a bad file
is one :class:`ArrayFileError` naming the file, the array and what to do.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from tinyfed.errors import DatasetError

__all__ = ["MAX_ARRAY_BYTES", "ArrayFileError", "read_array", "read_arrays"]

#: The most one array may hold once loaded. HAPT's whole training set is about 46 MB as float32;
#: a user's data for a microcontroller fleet is far below this, and a header above it is a mistake.
MAX_ARRAY_BYTES = 2 * 1024**3

_WRITE_HINT = "write it with numpy.savez(path, x=..., y=...) (or numpy.save for one array)"


class ArrayFileError(DatasetError):
    """A user's array file cannot be used: unreadable, damaged, or not what its header says."""


def _header(stream: IO[bytes], name: str, source: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an ``.npy`` header declares (read without reading the data)."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, EOFError, OSError) as exc:
        raise ArrayFileError(f"array {name!r} has no valid .npy header ({exc})", fix=_WRITE_HINT,
                             source=source) from None
    if dtype.hasobject:
        raise ArrayFileError(f"array {name!r} holds Python objects ({dtype}), which tinyfed never unpickles",
                             fix="save plain numeric arrays", source=source)
    return tuple(int(s) for s in shape), dtype


def _checked_size(shape: tuple[int, ...], dtype: np.dtype, stored: int, name: str, source: str,
                  max_bytes: int) -> None:
    """Refuse a header that claims more than the file stores or more than ``max_bytes``."""
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize  # float: no overflow on absurd shapes
    if claimed > max_bytes:
        raise ArrayFileError(f"array {name!r} claims shape {shape} of {dtype} ({claimed / 1024**3:,.1f} GiB), more "
                             f"than tinyfed loads ({max_bytes / 1024**3:,.1f} GiB)",
                             fix="check the file; split very large data sets", source=source)
    if claimed > stored:
        raise ArrayFileError(f"array {name!r} claims shape {shape} of {dtype} ({claimed:,} bytes) but the file holds "
                             f"{stored:,}: it is truncated or its header is wrong", fix=_WRITE_HINT, source=source)


def _refuse_broken_zip(path: Path) -> None:
    """A file that starts as a zip archive but has no readable directory: a truncated ``.npz``."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise ArrayFileError(f"cannot read {path.name} as an NPZ of arrays: the archive is truncated or damaged",
                                 fix=_WRITE_HINT, source=str(path))


def read_arrays(path: str | Path, *, max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (or the one array of an ``.npy``, under the name ``x``)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ArrayFileError(f"no such file {path}", fix="check the path", source=source)
    if not zipfile.is_zipfile(path):
        _refuse_broken_zip(path)
        return {"x": read_array(path, max_bytes=max_bytes)}
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if i.filename.endswith(".npy")]
            for info in members:
                name = info.filename[:-4]
                with zf.open(info) as f:
                    shape, dtype = _header(f, name, source)
                    header_len = f.tell()
                _checked_size(shape, dtype, info.file_size - header_len, name, source, max_bytes)
            with np.load(path, allow_pickle=False) as npz:
                for name in npz.files:
                    out[name] = np.asarray(npz[name])
    except ArrayFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ArrayFileError(f"cannot read {path.name} as an NPZ of arrays ({exc})", fix=_WRITE_HINT,
                             source=source) from None
    if not out:
        raise ArrayFileError(f"{path.name} holds no arrays", fix=_WRITE_HINT, source=source)
    return out


def read_array(path: str | Path, *, key: str = "x", max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """One array: an ``.npy``, or from an ``.npz`` the array named ``key`` (or its only array)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ArrayFileError(f"no such file {path}", fix="check the path", source=source)
    if zipfile.is_zipfile(path):
        arrays = read_arrays(path, max_bytes=max_bytes)
        if key in arrays:
            return arrays[key]
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        raise ArrayFileError(f"{path.name} has arrays {sorted(arrays)} and none is named {key!r}",
                             fix=f"save the array under the name {key}", source=source)
    _refuse_broken_zip(path)
    size = path.stat().st_size
    if size == 0:
        raise ArrayFileError(f"{path.name} is empty", fix=_WRITE_HINT, source=source)
    with open(path, "rb") as f:
        shape, dtype = _header(f, path.stem, source)
        _checked_size(shape, dtype, size - f.tell(), path.stem, source, max_bytes)
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise ArrayFileError(f"cannot read {path.name} as a numpy array ({exc})", fix=_WRITE_HINT,
                             source=source) from None
