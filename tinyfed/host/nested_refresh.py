"""Re-provisioning nested classes from the global vector (nested subsets, docs/strategies.md).

Under nested subsets a board class trains its subset against the values its frozen int8 fragment
and its tail's constants were provisioned with; the other classes move those values in the global
vector, so each class drifts from the model the server keeps. A refresh writes the global vector
back into the int8 model (:func:`~tinyfed.host.export.deployable_model`, the deployable model's
requantization) and re-cuts every class's fragment and tail from it, as the planner cut them:
what a board must download again to train against the current values of everything else.

A refresh is a pure function of the global vector: the same vector gives the same bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tinyfed.host.export import PlanFragments, deployable_model, requantize
from tinyfed.host.setup import SubsetSetup
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw
from tinyfed.training.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassCut:
    """One class's fragments cut from a global vector.

    ``frozen`` is the int8 fragment before the class's cut (None: the class trains from the input);
    ``tail`` the int8 tail with the class's own units written at their start values, so two cuts
    compare equal exactly when what the board computes outside its own trained values is the same
    (its trained values come over the link with every task)."""

    board: str
    frozen: bytes | None
    tail: bytes


def load_link_bytes(size: int, max_payload: int, program: bool) -> tuple[int, int]:
    """(host -> board, board -> host) bytes of loading a ``size``-byte fragment or program, as the
    client frames it: LOAD_BEGIN, LOAD_CHUNK pieces of ``max_payload - 20 - 4`` bytes (each
    acknowledged with a u32), LOAD_COMMIT (its 8-byte answer); every request carries a counter and
    a tag (20 bytes), every answer a tag (16)."""
    from tinyfed.firmware_bridge.link.framing import REQUEST_AUTH_BYTES as A
    from tinyfed.firmware_bridge.link.framing import TAG_BYTES as T
    from tinyfed.host.simulator import framed_bytes

    down = framed_bytes(A + 8 + (1 if program else 0))
    up = framed_bytes(T + 4)
    chunk = max_payload - A - 4
    for offset in range(0, size, chunk):
        down += framed_bytes(A + 4 + min(chunk, size - offset))
        up += framed_bytes(T + 4)
    down += framed_bytes(A)
    up += framed_bytes(T + 8)
    return down, up


class NestedRefresh:
    """Cuts each class's fragments from a global vector, and compiles what changed.

    ``source`` is the global model's plan fragments (the union of the classes over the whole int8
    model); ``classes`` each board class's setup as provisioned (its cut, tail and units)."""

    def __init__(self, source: PlanFragments, classes: dict[str, SubsetSetup], task: Task,
                 model_input: tuple[float, int]) -> None:
        self.source, self.classes, self.task, self.model_input = source, classes, task, model_input
        self._units = {board: tfw.decode(c.trainable_tfw) for board, c in classes.items()}
        self._start = {board: np.concatenate([u.values.ravel() for u in units]).astype(np.float32)
                       for board, units in self._units.items()}

    def cut(self, vector: np.ndarray) -> dict[str, ClassCut]:
        """Every class's frozen fragment and tail with ``vector`` written into the int8 model."""
        full = TfliteGraph.from_bytes(deployable_model(self.source, vector).model, source="global model")
        out = {}
        for board, c in self.classes.items():
            if c.cut <= 0:
                frozen, tail = None, full.data
            else:
                frozen, tail = full.split(c.cut)
            # the class's own values at their start: they do not travel in the fragments
            tail = requantize(bytes(tail), self._units[board], self._start[board], source=f"{board}/tail").model
            out[board] = ClassCut(board, bytes(frozen) if frozen is not None else None, bytes(tail))
        return out

    def program(self, board: str, tail: bytes) -> bytes:
        """The class's training program over ``tail`` (its units as provisioned)."""
        from tinyfed.firmware_bridge.compile.train_blob import compile_program

        return compile_program(tail, self.classes[board].trainable_tfw, task=self.task, model_input=self.model_input)

    @staticmethod
    def frozen_blob(frozen: bytes) -> bytes:
        from tinyfed.firmware_bridge.compile.blob import compile_blob

        return compile_blob(frozen)

    @staticmethod
    def features(blob: bytes | None, tail: object, xq: np.ndarray) -> np.ndarray:
        """The float inputs of a class's tail for int8 samples ``xq``, through its frozen ``blob``."""
        from tinyfed.firmware_bridge.twin.kernels_np import run_blob

        in_shape = tuple(tail.graph.tensors[tail.graph.inputs[0]].shape[1:])  # type: ignore[attr-defined]
        if blob is None:
            out = xq
        else:
            out = np.concatenate([run_blob(blob, xq[k:k + 512]) for k in range(0, len(xq), 512)]) if len(xq) else \
                np.zeros((0, *in_shape), np.int8)
        return tail.dequantize_input(out.reshape((len(out), *in_shape)))  # type: ignore[attr-defined]
