"""Which TFLite builtin ops the tinyfed firmware runs, and which it can train.

These sets are the contract between the planner and the firmware's int8 kernels: the planner
refuses a model with an op outside ``FIRMWARE_OPS`` before anything is sent to a board.
"""

from __future__ import annotations

#: Ops with int8 kernels in ``firmware/`` (TFLite-exact quantization semantics).
FIRMWARE_OPS: frozenset[str] = frozenset(
    {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "AVERAGE_POOL_2D",
        "MAX_POOL_2D",
        "RESHAPE",
        "SOFTMAX",
        "ADD",
    }
)

#: Ops whose weights and biases can be part of the trainable subset w*.
TRAINABLE_OPS: frozenset[str] = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})

#: Ops that only reinterpret memory: their input needs no separate copy for the backward pass.
ALIAS_OPS: frozenset[str] = frozenset({"RESHAPE"})
