"""PADV2: PAD with an explicit int8 fill value (its third input); everything else is PAD's."""

from __future__ import annotations

import dataclasses

from tinyfed.ops import pad

SPEC = dataclasses.replace(pad.SPEC, name="PADV2", code=60)
