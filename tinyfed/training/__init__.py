"""Float32 reference of the FTTE device step (local SGD on w*, int8 update)."""

from tinyfed.training.step import (
    QuantizedUpdate,
    TrainResult,
    Update,
    average_deltas,
    dense_model_bytes,
    dequantize,
    local_train,
    quantize_update,
    update_variance,
)
from tinyfed.training.tail import FloatTail

__all__ = [
    "FloatTail",
    "QuantizedUpdate",
    "TrainResult",
    "Update",
    "average_deltas",
    "dense_model_bytes",
    "dequantize",
    "local_train",
    "quantize_update",
    "update_variance",
]
