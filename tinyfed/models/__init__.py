"""Models: offline datasets, federated partitions, the Keras model zoo and int8 conversion.

Importing this package (or ``datasets``, ``partition``, ``zoo``) never imports TensorFlow or
Keras; only building, pretraining and converting models do, inside the functions concerned.

>>> from tinyfed.models import get_zoo_model, ZOO_NAMES
>>> zm = get_zoo_model("har_cnn")
>>> parts = zm.client_partitions("natural")        # 27 users, indices into zm.client_split()
>>> tflite = zm.int8_tflite()                       # full-int8 flatbuffer (shipped prebuilt)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Dataset",
    "ZOO_NAMES",
    "ZooModel",
    "get_zoo_model",
    "load_dataset",
    "load_digits",
    "load_hapt",
]

_LAZY = {
    "Dataset": "tinyfed.models.datasets",
    "load_dataset": "tinyfed.models.datasets",
    "load_digits": "tinyfed.models.datasets",
    "load_hapt": "tinyfed.models.datasets",
    "ZOO_NAMES": "tinyfed.models.zoo",
    "ZooModel": "tinyfed.models.zoo",
    "get_zoo_model": "tinyfed.models.zoo",
}


def __getattr__(name: str) -> Any:
    """Resolve the re-exported names on first use (keeps ``import tinyfed.models`` cheap)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tinyfed.models' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
