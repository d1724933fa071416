"""SQUEEZE: RESHAPE's bytes under a shape without some unit dims; its output aliases its input."""

from __future__ import annotations

import dataclasses

from tinyfed.ops import reshape

SPEC = dataclasses.replace(reshape.SPEC, name="SQUEEZE", code=43, options=("squeeze_dims",))
