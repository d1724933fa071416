"""The int8 ops tinyfed runs: one module per op holds everything the host knows about it.

Each module (``conv_2d``, ``depthwise_conv_2d``, ``fully_connected``, ``average_pool_2d``,
``max_pool_2d``, ``reshape``, ``softmax``, ``add``) defines a :class:`~tinyfed.ops.base.OpSpec`:
its TFLite builtin code (the TFMB/TFTR op code), the TFMB and TFTR encoders, the TFTR reader,
its MACs, its TFLM op-data bytes, the numpy int8 kernel of the twin, FloatTail's forward and
backward, and its flags. The compilers, the twin, FloatTail, the planner and the simulator ask
the registry (``ops.get("CONV_2D")``, ``ops.by_code(3)``, ``ops.firmware_ops()``).
"""

from tinyfed.ops import registry
from tinyfed.ops.base import OpSpec
from tinyfed.ops.registry import *  # noqa: F403 - the package's API is the registry's __all__, listed there once

__all__ = ["OpSpec"]
__all__ += registry.__all__
