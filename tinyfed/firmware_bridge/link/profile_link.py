"""Wire formats of PROFILE, PROFILE_READ and KERNELS (``docs/protocol.md``, "Profiling").

PROFILE runs the committed fragment once on the current input with every op timed by the
board's cycle counter; PROFILE_READ pages the per-op cycles out (a frame is too small for a
whole model's); KERNELS reports the optimised kernel path the image was built with and switches
every engine run between it and the plain-C reference kernels. The constants mirror
``firmware/src/profile.h`` (``tests/test_wire_constants.py`` checks them).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from typing import Any

#: Ops one PROFILE times (the firmware's static array); a larger fragment answers OUT_OF_MEMORY.
MAX_OPS = 64
RESPONSE_BYTES = 16
OP_BYTES = 8
MODE_FAST = 0
MODE_REFERENCE = 1
COUNTER_DWT = 1
COUNTER_SYSTICK = 2
#: No counter: the ``sim://`` twin reports each op's MAC count (at least 1) as its "cycles".
COUNTER_ESTIMATE = 3

PROFILE_RESPONSE = struct.Struct("<IIHBBI")  # cycles, clock_hz, op count, mode, counter, output bytes
PROFILE_OP = struct.Struct("<IBBH")  # cycles, op code, fast kernel ran, 0

COUNTER_NAMES = {COUNTER_DWT: "dwt", COUNTER_SYSTICK: "systick", COUNTER_ESTIMATE: "estimate"}


@dataclass(frozen=True)
class KernelInfo:
    """KERNELS' answer: the image's optimised path and whether the engine runs the reference."""

    path: str  # "dsp", "mve", "c" (no optimised kernels), "none" (no engine), "twin" (sim://)
    reference: bool

    @classmethod
    def unpack(cls, p: bytes) -> KernelInfo:
        if len(p) < 2 or len(p) != 2 + p[1]:
            raise ValueError(f"KERNELS response of {len(p)} bytes")
        return cls(p[2:].decode("ascii", "replace"), p[0] == MODE_REFERENCE)

    def pack(self) -> bytes:
        name = self.path.encode("ascii")
        return bytes([MODE_REFERENCE if self.reference else MODE_FAST, len(name)]) + name


@dataclass(frozen=True)
class OpCycles:
    """One op of a profile run: its cycles and whether this core's optimised kernel ran it."""

    index: int
    code: int
    cycles: int
    fast: bool


@dataclass
class ProfileRun:
    """One PROFILE: the whole run's cycles (one measurement) and each op's (inside it)."""

    cycles: int
    clock_hz: int
    reference: bool
    counter: int
    output_bytes: int
    ops: list[OpCycles] = field(default_factory=list)
    output: bytes = b""

    @property
    def estimated(self) -> bool:
        """True when no counter measured it (the ``sim://`` twin's MAC estimate)."""
        return self.counter == COUNTER_ESTIMATE

    @property
    def op_cycles(self) -> int:
        return sum(op.cycles for op in self.ops)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("output")
        doc["counter"] = COUNTER_NAMES.get(self.counter, str(self.counter))
        return doc

    @classmethod
    def unpack(cls, p: bytes) -> ProfileRun:
        if len(p) != PROFILE_RESPONSE.size:
            raise ValueError(f"PROFILE response of {len(p)} bytes")
        cycles, clock, n_ops, mode, counter, out = PROFILE_RESPONSE.unpack(p)
        run = cls(cycles, clock, mode == MODE_REFERENCE, counter, out)
        run.ops = [OpCycles(i, 0, 0, False) for i in range(n_ops)]
        return run

    def pack(self) -> bytes:
        return PROFILE_RESPONSE.pack(self.cycles & 0xFFFFFFFF, self.clock_hz, len(self.ops),
                                     MODE_REFERENCE if self.reference else MODE_FAST, self.counter, self.output_bytes)


def unpack_ops(p: bytes, first: int) -> list[OpCycles]:
    """PROFILE_READ's answer: ops ``first ..`` of the last profile."""
    if len(p) % OP_BYTES:
        raise ValueError(f"PROFILE_READ response of {len(p)} bytes")
    return [OpCycles(first + i, code, cycles, bool(fast))
            for i, (cycles, code, fast, _) in enumerate(PROFILE_OP.iter_unpack(p))]


def pack_ops(ops: list[OpCycles]) -> bytes:
    return b"".join(PROFILE_OP.pack(op.cycles & 0xFFFFFFFF, op.code, int(op.fast), 0) for op in ops)
