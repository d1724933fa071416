"""Layout rules the TFMB blob and the TFTR program share: window geometry, memory plan, data section.

Both compilers resolve TensorFlow's SAME/VALID padding, place buffers by lifetime with a greedy
planner (as TFLM's ``GreedyMemoryPlanner``) and append constant arrays to an aligned data
section; one definition of each keeps the two formats' rules from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from tinyfed.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.models.tflite_graph import OpInfo, TfliteGraph

__all__ = ["DataSection", "FragmentBuilder", "align_up", "padding_name", "plan_arena", "window_geometry"]

K = TypeVar("K", bound=Hashable)


def align_up(n: int, to: int) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return -(-n // to) * to


def window_geometry(size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) of a sliding window with TensorFlow's SAME/VALID rule.

    SAME gives ``ceil(size / stride)`` outputs and splits the padding with the odd element after;
    anything else is VALID (no padding). These are TFLM's ``ComputePaddingHeightWidth`` results.
    """
    eff = (kernel - 1) * dilation + 1
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + eff - size, 0)
        return out, total // 2, total - total // 2
    return (size - eff) // stride + 1, 0, 0


def padding_name(x: tuple[int, ...], y: tuple[int, ...], k: tuple[int, int], s: tuple[int, int],
                 d: tuple[int, int], pad_before: tuple[int, int]) -> str:
    """SAME or VALID, from an NHWC input and output shape and the stored pad before: VALID pads
    nothing and gives (size - effective kernel) // stride + 1 in both dimensions (where both rules
    agree, either name computes the same thing)."""
    for axis in (0, 1):
        valid = (x[1 + axis] - ((k[axis] - 1) * d[axis] + 1)) // s[axis] + 1
        if pad_before[axis] != 0 or y[1 + axis] != valid:
            return "SAME"
    return "VALID"


def plan_arena(sizes: dict[K, int], life: dict[K, tuple[int, int]], align: int,
               tiebreak: Callable[[K], Any] = lambda key: key) -> tuple[dict[K, int], int]:
    """Greedy by size: each buffer at the lowest ``align``-aligned offset that overlaps no placed
    buffer whose lifetime (first, last step) intersects its own. Ties: earlier first step, then
    ``tiebreak(key)``. Returns the offsets and the total bytes."""
    order = sorted(sizes, key=lambda k: (-sizes[k], life[k][0], tiebreak(k)))
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets: dict[K, int] = {}
    for key in order:
        size = align_up(sizes[key], align)
        first, last = life[key]
        cand = 0
        for start, end in sorted((o, e) for o, e, a, b in placed if a <= last and first <= b):
            if cand + size <= start:
                break
            cand = max(cand, end)  # ends are aligned: every offset and size is
        offsets[key] = cand
        placed.append((cand, cand + size, first, last))
    return offsets, max((e for _, e, _, _ in placed), default=0)


class DataSection:
    """A constant section: each array appended at the next multiple of its alignment."""

    def __init__(self, align: int) -> None:
        self.align = align
        self.buf = bytearray()

    def add(self, payload: bytes, align: int | None = None) -> int:
        """Append ``payload`` (zero padding before it); returns its offset in the section."""
        self.buf += b"\0" * ((-len(self.buf)) % (align or self.align))
        offset = len(self.buf)
        self.buf += payload
        return offset


class FragmentBuilder:
    """What both compilers' builders share: the graph, its tensors numbered in first-use order (the
    order of the tensor table), a data section, and the op-located error an encoder raises."""

    def __init__(self, graph: TfliteGraph, source: str, align: int) -> None:
        self.graph = graph
        self.source = source
        self.ids: dict[int, int] = {}  # graph tensor -> table id, in first-use order
        self.data = DataSection(align)

    def default_fix(self) -> str | None:
        """The fix an error names when its encoder gives none."""
        return None

    def fail(self, op: OpInfo, problem: str, fix: str | None = None) -> ModelError:
        return ModelError(f"op {op.index} {op.name}: {problem}", fix=fix or self.default_fix(), source=self.source)

    def id(self, t: int) -> int:
        """The table id of graph tensor ``t`` (numbered on first use)."""
        if t not in self.ids:
            self.ids[t] = len(self.ids)
        return self.ids[t]
