"""The op registry: every op module's :class:`~tinyfed.ops.base.OpSpec`, looked up by name or code.

Adding an op is writing its module, ``tinyfed/ops/<op>.py`` with a module-level ``SPEC``: the
registry finds every such module in this package, so nothing else is edited on the host side.
Ops are listed in name order. The C engines key their kernels by the same TFLite builtin code.
"""

from __future__ import annotations

import importlib
import pkgutil

from tinyfed.ops.base import OpSpec

__all__ = [
    "alias_ops",
    "all_ops",
    "by_code",
    "find",
    "firmware_ops",
    "get",
    "keras_kinds",
    "listing",
    "op_codes",
    "trainable_ops",
]



def _discover() -> tuple[OpSpec, ...]:
    """The ``SPEC`` of every module of this package that has one (helpers such as ``windows`` have none)."""
    package = importlib.import_module(__package__ or "tinyfed.ops")
    specs = []
    for info in pkgutil.iter_modules(package.__path__):
        spec = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, OpSpec):
            specs.append(spec)
    return tuple(sorted(specs, key=lambda spec: spec.name))


_SPECS: tuple[OpSpec, ...] = _discover()
_BY_NAME: dict[str, OpSpec] = {s.name: s for s in _SPECS}
_BY_CODE: dict[int, OpSpec] = {s.code: s for s in _SPECS}
assert len(_BY_NAME) == len(_BY_CODE) == len(_SPECS), "op names and codes must be unique"
_FIRMWARE = frozenset(s.name for s in _SPECS if s.firmware)
_TRAINABLE = frozenset(s.name for s in _SPECS if s.trainable)
_ALIAS = frozenset(s.name for s in _SPECS if s.alias)


def all_ops() -> tuple[OpSpec, ...]:
    """Every op the host knows, in listing order."""
    return _SPECS


def find(name: str) -> OpSpec | None:
    """The op named ``name`` (a TFLite builtin name such as ``"CONV_2D"``), or None."""
    return _BY_NAME.get(name)


def get(name: str) -> OpSpec:
    """The op named ``name``; KeyError for an op the host does not know."""
    return _BY_NAME[name]


def by_code(code: int) -> OpSpec | None:
    """The op whose TFLite builtin code (the TFMB/TFTR op code) is ``code``, or None."""
    return _BY_CODE.get(code)


def op_codes() -> dict[str, int]:
    """Op name -> TFLite builtin code, for the ops the firmware runs."""
    return {s.name: s.code for s in _SPECS if s.firmware}


def firmware_ops() -> frozenset[str]:
    """Ops with int8 kernels in ``firmware/`` (TFLite-exact quantization semantics)."""
    return _FIRMWARE


def trainable_ops() -> frozenset[str]:
    """Ops whose weights and biases can be part of the trainable subset w*."""
    return _TRAINABLE


def alias_ops() -> frozenset[str]:
    """Ops that only reinterpret memory: their input needs no separate copy for the backward pass."""
    return _ALIAS


def keras_kinds() -> dict[str, str]:
    """Keras layer class name -> the trainable op it converts to."""
    return {s.keras_layer: s.name for s in _SPECS if s.keras_layer}


def listing(names: list[str]) -> str:
    """``"A, B and C"``."""
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
