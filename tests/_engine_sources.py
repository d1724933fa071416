"""The C sources of the firmware's two engines, for the host builds of the engine tests.

Globs, like ``firmware/Makefile``'s ``ENGINE_SRCS``: an op added as a new file under
``firmware/engine/ops/`` (int8) or ``firmware/engine/train_ops/`` (float32) is built by
every harness without a build edit.
"""

from __future__ import annotations

from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "firmware" / "engine"


def int8_engine_sources() -> list[str]:
    """tfmb*.c and ops/*.c: the integer-only inference engine (no float allowed)."""
    return sorted(str(p) for p in [*ENGINE.glob("tfmb*.c"), *(ENGINE / "ops").glob("*.c")])


def int8_engine_headers() -> list[str]:
    """The inference engine's headers (tfmb*.h and ops/*.h)."""
    return sorted(str(p) for p in [*ENGINE.glob("tfmb*.h"), *(ENGINE / "ops").glob("*.h")])


def train_engine_sources() -> list[str]:
    """tftr*.c and train_ops/*.c: the float32 training engine."""
    return sorted(str(p) for p in [*ENGINE.glob("tftr*.c"), *(ENGINE / "train_ops").glob("*.c")])
