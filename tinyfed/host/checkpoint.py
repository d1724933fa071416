"""Crash-safe checkpoints of a run: a killed host resumes without losing or repeating an update.

A checkpoint is one *generation* ``N`` stored as two files in the run directory:

* ``checkpoint-N.npz``: every numpy array of the state (global vectors, arrays inside the
  strategy's state, an RNG key), written first;
* ``checkpoint-N.json``: everything else, plus the npz's name, size and SHA-256, written last,
  and ``sha256``: one SHA-256 over the JSON without that field (:func:`_canonical`) and the npz's
  bytes, so an edited field (a ``version`` changed by hand) or any changed byte of either file is
  refused on reading. A checkpoint of format 1 (before that hash) is read with a warning.

Each file is written atomically (temp file in the same directory, flush, fsync, ``os.replace``,
fsync of the directory), and a generation exists only once its JSON does. The JSON names its npz
by generation *and* content hash, so a crash between the two writes leaves an orphan npz that no
JSON refers to, never a new JSON paired with an old npz. The previous generation is removed only
after the new one is complete, so there is always one whole checkpoint on disk. Reading checks
everything; a damaged checkpoint is a :class:`CheckpointError` naming the file and what to do,
never a silently partial state.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed.errors import TinyfedError

log = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_write_bytes",
    "generator_from_state",
    "read_checkpoint",
    "write_checkpoint",
]

FORMAT = "tinyfed-checkpoint"
FORMAT_VERSION = 2
#: Format versions read: 1 has no content hash (read with a warning), 2 has one.
_READABLE = (1, 2)
_NAME = re.compile(r"^checkpoint-(\d{8})\.(json|npz)$")
_ARRAY_TAG = "__ndarray__"


class CheckpointError(TinyfedError):
    """A checkpoint that cannot be trusted: missing pieces, damaged files or a wrong format."""


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where the last aggregation left it.

    ``globals`` holds the float32 master vector(s) (e.g. ``{"w": ...}``); ``strategy_state`` is
    the strategy's ``state_dict()`` (JSON values and numpy arrays, nested in dicts and lists,
    e.g. buffered updates not yet applied); ``devices`` is per-device state by device id;
    ``rng_state`` is ``Generator.bit_generator.state``; ``event_position`` is the event log's
    byte offset covered by this checkpoint; ``accepted_update_ids`` are the updates already
    merged (a resumed run must not apply them again). ``generation`` is set by the writer.
    """

    version: int
    globals: dict[str, np.ndarray]
    strategy_state: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)
    rng_state: dict[str, Any] = field(default_factory=dict)
    event_position: int = 0
    accepted_update_ids: list[str | int] = field(default_factory=list)
    generation: int = 0

    def rng(self) -> np.random.Generator:
        """A Generator that continues the recorded random stream."""
        return generator_from_state(self.rng_state)


# -- atomic files ---------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    The temp file lives in the same directory (``os.replace`` is atomic only within one file
    system) and is fsynced before the rename; the directory is fsynced after it, so the rename
    itself survives a power cut. On failure the temp file is removed.
    A failure (a full disk) is a :class:`~tinyfed.errors.WriteError` naming ``path``. The file is
    made 0600: run files hold per-board updates.
    """
    from tinyfed.host.rundir import write_error

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
    fsync_dir(path.parent)


def _write_file(tmp: Path, data: bytes) -> None:
    """Write and fsync ``tmp`` (0600); the one place a run file's bytes reach the disk (tests inject ENOSPC here)."""
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- RNG --------------------------------------------------------------------------------------


def generator_from_state(state: dict[str, Any]) -> np.random.Generator:
    """Rebuild a numpy Generator from ``bit_generator.state`` (PCG64, Philox, MT19937, ...)."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = getattr(np.random, name, None) if isinstance(name, str) else None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise ValueError(f"not a numpy bit generator state (bit_generator = {name!r})")
    bitgen = cls()
    bitgen.state = state
    return np.random.Generator(bitgen)


# -- writing ----------------------------------------------------------------------------------


def write_checkpoint(run_dir: str | Path, state: Checkpoint) -> Path:
    """Write ``state`` as the next checkpoint generation of ``run_dir``; return the JSON path.

    Sets ``state.generation``. The order (npz, then JSON, then removal of older generations)
    is what makes a crash at any point leave a whole checkpoint behind.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _check_state(state)
    generations = _generations(run)
    gen = (max(generations) if generations else 0) + 1

    arrays: dict[str, np.ndarray] = {}
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generation": gen,
        "version": int(state.version),
        "event_position": int(state.event_position),
        "accepted_update_ids": list(state.accepted_update_ids),
        "globals": {name: _stash(arr, f"globals/{name}", arrays) for name, arr in state.globals.items()},
        "strategy_state": _encode(state.strategy_state, "strategy_state", arrays),
        "devices": _encode(state.devices, "devices", arrays),
        "rng_state": _encode(state.rng_state, "rng_state", arrays),
    }
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    npz_bytes = buf.getvalue()
    npz_path = run / _file(gen, "npz")
    atomic_write_bytes(npz_path, npz_bytes)
    body["npz"] = {"file": npz_path.name, "bytes": len(npz_bytes), "sha256": hashlib.sha256(npz_bytes).hexdigest()}
    body["sha256"] = content_hash(body, npz_bytes)
    json_path = run / _file(gen, "json")
    atomic_write_bytes(json_path, (json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n").encode())
    state.generation = gen
    _prune(run, keep={gen, gen - 1})
    log.debug("checkpoint generation %d (version %d) written to %s", gen, state.version, json_path)
    return json_path


def _canonical(body: dict[str, Any]) -> bytes:
    """The JSON the content hash covers: every field but ``sha256``, keys sorted, no spaces."""
    rest = {k: v for k, v in body.items() if k != "sha256"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def content_hash(body: dict[str, Any], npz_bytes: bytes) -> str:
    """One SHA-256 over a checkpoint's JSON (its ``sha256`` field aside) and its npz's bytes."""
    digest = hashlib.sha256(_canonical(body))
    digest.update(b"\0")
    digest.update(npz_bytes)
    return digest.hexdigest()


def _file(gen: int, ext: str) -> str:
    return f"checkpoint-{gen:08d}.{ext}"


def _generations(run: Path, ext: str = "json") -> list[int]:
    out = []
    for p in run.iterdir():
        m = _NAME.match(p.name)
        if m and m.group(2) == ext:
            out.append(int(m.group(1)))
    return out


def _prune(run: Path, keep: set[int]) -> None:
    """Remove generations other than ``keep``, orphan npz files and stale temp files."""
    removed = False
    for p in run.iterdir():
        m = _NAME.match(p.name)
        stale_tmp = p.name.startswith(".checkpoint-") and ".tmp-" in p.name
        if (m and int(m.group(1)) not in keep) or stale_tmp:
            try:
                p.unlink()
                removed = True
            except OSError as exc:  # pragma: no cover - best effort
                log.warning("could not remove old checkpoint file %s: %s", p, exc)
    if removed:
        fsync_dir(run)


def _check_state(state: Checkpoint) -> None:
    """Refuse what could not be read back the same (a bug in the caller, not a user error)."""
    if not isinstance(state.version, (int, np.integer)) or state.version < 0:
        raise ValueError(f"checkpoint version must be an int >= 0, got {state.version!r}")
    if not isinstance(state.event_position, (int, np.integer)) or state.event_position < 0:
        raise ValueError(f"event_position must be an int >= 0, got {state.event_position!r}")
    if not state.globals:
        raise ValueError("a checkpoint needs at least one global vector")
    for name, arr in state.globals.items():
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
            raise ValueError(f"global vector '{name}' must be a float32 numpy array")
    for uid in state.accepted_update_ids:
        if not isinstance(uid, (str, int)) or isinstance(uid, bool):
            raise TypeError(f"update ids must be str or int, got {uid!r}")


def _stash(arr: np.ndarray, key: str, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Move ``arr`` into ``arrays`` under a fresh name (paths could collide: keys may hold '/')."""
    if arr.dtype == object:
        raise TypeError(f"{key}: object arrays cannot be checkpointed")
    name = f"a{len(arrays):06d}"
    arrays[name] = arr
    return {_ARRAY_TAG: name}


def _encode(value: Any, key: str, arrays: dict[str, np.ndarray]) -> Any:
    """JSON form of ``value`` with every ndarray moved into ``arrays`` under its path."""
    if isinstance(value, np.ndarray):
        return _stash(value, key, arrays)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{key}: dict keys must be str to checkpoint, got {k!r}")
            if k == _ARRAY_TAG:
                raise TypeError(f"{key}: the key {_ARRAY_TAG!r} is reserved")
            out[k] = _encode(v, f"{key}/{k}", arrays)
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{key}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"{key}: {type(value).__name__} cannot be checkpointed (use JSON values or numpy arrays)")


# -- reading ----------------------------------------------------------------------------------


def read_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir``, fully checked; None when the run has none yet.

    Meant for a run whose host is stopped (resume, inspection): a live writer prunes old
    generations and may remove files while they are read.
    """
    run = Path(run_dir)
    if not run.is_dir():
        return None
    generations = sorted(_generations(run))
    if not generations:
        return None
    gen = generations[-1]
    previous = generations[-2] if len(generations) > 1 else None
    return _Reader(run, gen, previous).read()


class _Reader:
    """Reads one generation; every problem becomes a CheckpointError with the file and a fix."""

    def __init__(self, run: Path, gen: int, previous: int | None) -> None:
        self.run = run
        self.gen = gen
        self.json_path = run / _file(gen, "json")
        if previous is not None:
            self.fix = (f"the previous checkpoint {_file(previous, 'json')} is kept: move the damaged "
                        f"{_file(gen, 'json')} and {_file(gen, 'npz')} out of {run} to resume from it, "
                        "or start the run again")
        else:
            self.fix = f"no older checkpoint is kept; start the run again (or restore {run} from a backup)"

    def fail(self, problem: str, path: Path | None = None) -> CheckpointError:
        return CheckpointError(f"damaged checkpoint: {problem}", fix=self.fix, source=str(path or self.json_path))

    def read(self) -> Checkpoint:
        body = self._json()
        arrays = self._npz(body, self._npz_bytes(body))
        used: set[str] = set()

        def decode(value: Any, where: str) -> Any:
            if isinstance(value, dict):
                if set(value) == {_ARRAY_TAG}:
                    key = value[_ARRAY_TAG]
                    if not isinstance(key, str) or key not in arrays:
                        raise self.fail(f"{where} refers to array {key!r}, which the npz does not hold")
                    used.add(key)
                    return arrays[key]
                return {k: decode(v, f"{where}.{k}") for k, v in value.items()}
            if isinstance(value, list):
                return [decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return value

        globals_ = decode(body["globals"], "globals")
        if not isinstance(globals_, dict) or not globals_:
            raise self.fail("'globals' holds no vector")
        for name, arr in globals_.items():
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise self.fail(f"global vector '{name}' is not a float32 array")
        for key in ("strategy_state", "devices", "rng_state"):
            if not isinstance(body[key], dict):
                raise self.fail(f"'{key}' is not an object")
        strategy_state = decode(body["strategy_state"], "strategy_state")
        devices = decode(body["devices"], "devices")
        rng_state = decode(body["rng_state"], "rng_state")
        if rng_state:
            try:
                generator_from_state(rng_state)
            except (ValueError, TypeError, KeyError) as exc:
                raise self.fail(f"the RNG state cannot be restored ({exc})") from None
        extra = set(arrays) - used
        if extra:
            raise self.fail(f"the npz holds arrays no field refers to: {sorted(extra)[:5]}",
                            self.run / body["npz"]["file"])
        return Checkpoint(
            version=body["version"],
            globals=globals_,
            strategy_state=strategy_state,
            devices=devices,
            rng_state=rng_state,
            event_position=body["event_position"],
            accepted_update_ids=list(body["accepted_update_ids"]),
            generation=self.gen,
        )

    def _json(self) -> dict[str, Any]:
        try:
            raw = self.json_path.read_bytes()
        except OSError as exc:
            raise self.fail(f"cannot read it ({exc.strerror})") from None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.fail(f"not valid JSON ({exc}); the file is truncated or overwritten") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise self.fail(f"not a {FORMAT} file")
        if body.get("format_version") not in _READABLE:
            raise self.fail(f"format_version {body.get('format_version')!r}; this tinyfed reads "
                            f"{', '.join(map(str, _READABLE))}")
        want: dict[str, type | tuple[type, ...]] = {
            "generation": int, "version": int, "event_position": int, "accepted_update_ids": list,
            "globals": dict, "strategy_state": dict, "devices": dict, "rng_state": dict, "npz": dict,
        }
        for key, kind in want.items():
            if key not in body:
                raise self.fail(f"the key '{key}' is missing")
            if not isinstance(body[key], kind) or isinstance(body[key], bool):
                raise self.fail(f"'{key}' has the wrong type ({type(body[key]).__name__})")
        if body["generation"] != self.gen:
            raise self.fail(f"it says generation {body['generation']} but its name says {self.gen}")
        for key in ("version", "event_position"):
            if body[key] < 0:
                raise self.fail(f"'{key}' is negative ({body[key]})")
        for uid in body["accepted_update_ids"]:
            if not isinstance(uid, (str, int)) or isinstance(uid, bool):
                raise self.fail(f"accepted_update_ids holds {uid!r}, not an update id")
        npz = body["npz"]
        if npz.get("file") != _file(self.gen, "npz") or not isinstance(npz.get("bytes"), int) \
                or not isinstance(npz.get("sha256"), str):
            raise self.fail(f"the 'npz' entry {npz!r} does not name this generation's array file")
        return body

    def _npz_bytes(self, body: dict[str, Any]) -> bytes:
        """The npz's bytes, checked against its own size and SHA-256, then the whole checkpoint's hash."""
        meta = body["npz"]
        path = self.run / meta["file"]
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise self.fail("its array file is missing", path) from None
        except OSError as exc:
            raise self.fail(f"cannot read the array file ({exc.strerror})", path) from None
        if len(raw) != meta["bytes"]:
            raise self.fail(f"the array file has {len(raw)} bytes, the checkpoint recorded {meta['bytes']} "
                            "(truncated or replaced)", path)
        if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
            raise self.fail("the array file's SHA-256 does not match the checkpoint (damaged or replaced)", path)
        self._check_hash(body, raw)
        return raw

    def _check_hash(self, body: dict[str, Any], raw: bytes) -> None:
        """The JSON's fields and the arrays as written: a hand-edited ``version`` is refused, not resumed."""
        if body["format_version"] == 1:
            log.warning("%s: a checkpoint of format 1 (an older tinyfed) has no content hash; its fields are read "
                        "unverified", self.json_path)
            return
        recorded = body.get("sha256")
        if not isinstance(recorded, str):
            raise self.fail("the key 'sha256' (the checkpoint's content hash) is missing")
        if content_hash(body, raw) != recorded:
            raise self.fail(f"its content does not match the SHA-256 it was written with: the JSON was edited or "
                            f"damaged after it was written (it now says version {body['version']}, "
                            f"event position {body['event_position']})")

    def _npz(self, body: dict[str, Any], raw: bytes) -> dict[str, np.ndarray]:
        path = self.run / body["npz"]["file"]
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise self.fail(f"the array file cannot be loaded ({exc})", path) from None
