"""The zoo's prebuilt files: what the running path would otherwise need TensorFlow for.

Two files per zoo model ship as package data in ``tinyfed/models/prebuilt/``:

* ``<name>.int8.tflite``: the full-int8 flatbuffer of the committed weights (batch 1), as
  :meth:`ZooModel.convert_int8` makes it;
* ``<name>.fisher.json``: the planner's diagonal Fisher ranking of that graph's units, measured on
  the float model over the default proxy batch (``TrainingConfig.proxy_samples`` samples drawn with
  seed 0), the one ``tinyfed plan``/``run``/``demo``/``profile`` rank w* with.

Both are reproducible from the committed weights with the ``[convert]`` extra (TensorFlow)::

    python -m tinyfed.models.prebuilt_zoo           # write them (make prebuilt)
    python -m tinyfed.models.prebuilt_zoo --check   # compare with a fresh conversion; exit 1 on a difference

A base install (no TensorFlow) reads them; a ranking for another proxy batch size still needs TensorFlow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.planner.importance import Importance

PREBUILT_DIR = Path(__file__).resolve().parent / "prebuilt"
FISHER_FORMAT = 1


def int8_path(name: str) -> Path:
    """The shipped int8 flatbuffer of zoo model ``name``."""
    return PREBUILT_DIR / f"{name}.int8.tflite"


def fisher_path(name: str) -> Path:
    """The shipped Fisher ranking of zoo model ``name``."""
    return PREBUILT_DIR / f"{name}.fisher.json"


def proxy_batch(name: str, proxy_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The proxy samples (and labels) the Fisher ranking is measured on: a seeded pick across the proxy
    users and classes, not the first windows of one user."""
    from tinyfed.models.zoo import get_zoo_model

    proxy = get_zoo_model(name).proxy_split()
    pick = np.random.default_rng(0).permutation(len(proxy.y))[:proxy_samples]
    return proxy.x[pick], proxy.y[pick]


def fisher_document(name: str, importance: Importance, int8: bytes, proxy_samples: int) -> dict[str, Any]:
    """The JSON form of a ranking: exact floats (``repr`` round-trips), keyed by op index."""
    return {
        "format": FISHER_FORMAT,
        "model": name,
        "method": importance.method,
        "proxy_samples": proxy_samples,
        "proxy_seed": 0,
        "int8_sha256": hashlib.sha256(int8).hexdigest(),
        "layers": {
            str(op): {"channel": [float(v) for v in layer.channel], "bias": float(layer.bias)}
            for op, layer in sorted(importance.layers.items())
        },
    }


def fisher_json(doc: dict[str, Any]) -> str:
    """The file's text: one canonical layout, so a regeneration is compared byte for byte."""
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def load_fisher(name: str, int8: bytes, proxy_samples: int) -> Importance | None:
    """The shipped ranking of ``name`` for this proxy batch size and int8 graph, or None (no such file,
    another batch size, or a graph other than the one it was measured on)."""
    from tinyfed.planner.importance import Importance, LayerImportance

    path = fisher_path(name)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if (doc.get("format") != FISHER_FORMAT or doc.get("proxy_samples") != proxy_samples
            or doc.get("int8_sha256") != hashlib.sha256(int8).hexdigest()):
        return None
    layers = {int(op): LayerImportance(channel=np.asarray(v["channel"], dtype=np.float64), bias=float(v["bias"]))
              for op, v in doc["layers"].items()}
    return Importance(layers, str(doc["method"]))


def fresh_fisher(name: str, int8: bytes, proxy_samples: int) -> Importance:
    """Measure the ranking again from the committed weights (imports TensorFlow)."""
    from tinyfed.models.tfimport import import_tensorflow
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.models.zoo import get_zoo_model
    from tinyfed.planner.importance import fisher_importance

    import_tensorflow()
    x, y = proxy_batch(name, proxy_samples)
    graph = TfliteGraph.from_bytes(int8, source=name)
    return fisher_importance(graph, get_zoo_model(name).load_pretrained(batch_size=1), x, y)


def fresh_files(name: str, proxy_samples: int | None = None) -> dict[Path, bytes]:
    """Both prebuilt files of ``name`` as a fresh conversion makes them (path -> bytes)."""
    from tinyfed.models.zoo import get_zoo_model
    from tinyfed.planner.config import TrainingConfig

    n = TrainingConfig().proxy_samples if proxy_samples is None else proxy_samples
    int8 = get_zoo_model(name).convert_int8()
    doc = fisher_document(name, fresh_fisher(name, int8, n), int8, n)
    return {int8_path(name): int8, fisher_path(name): fisher_json(doc).encode()}


def main(argv: list[str] | None = None) -> int:
    from tinyfed.errors import TinyfedError
    from tinyfed.models.zoo import ZOO_NAMES

    parser = argparse.ArgumentParser(prog="python -m tinyfed.models.prebuilt_zoo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", choices=ZOO_NAMES, help="only this model (repeatable)")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args(argv)
    differ = []
    try:
        for name in args.model or ZOO_NAMES:
            for path, data in fresh_files(name).items():
                if args.check:
                    same = path.is_file() and path.read_bytes() == data
                    print(f"{path.name}: {'ok' if same else 'DIFFERS'}")
                    differ += [] if same else [path.name]
                else:
                    PREBUILT_DIR.mkdir(exist_ok=True)
                    path.write_bytes(data)
                    print(f"wrote {path} ({len(data)} bytes)")
    except TinyfedError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
