"""EXPAND_DIMS: RESHAPE's bytes under a shape with one more unit dim (its axis is a constant
second input); its output aliases its input."""

from __future__ import annotations

import dataclasses

from tinyfed.ops import reshape

SPEC = dataclasses.replace(reshape.SPEC, name="EXPAND_DIMS", code=70)
