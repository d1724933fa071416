"""The training configuration the planner sizes on-device training for."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: float32 optimizer state per trainable parameter, in bytes.
OPTIMIZER_STATE_BYTES: dict[str, int] = {"sgd": 0, "momentum": 4, "adam": 8}

#: The structured unit sizes of FTTE: a layer's weights on this fraction of its output channels.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)


class TrainingConfig(BaseModel):
    """How each board trains w*: it decides the size of the training state in RAM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(16, ge=1, le=4096, description="samples per local SGD step")
    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    fractions: tuple[float, ...] = Field(DEFAULT_FRACTIONS, description="output-channel fractions of a weight unit")
    proxy_samples: int = Field(64, ge=1, description="proxy samples for the diagonal Fisher")
    head_cache_samples: int = Field(
        0, ge=0, description="local samples whose frozen-head outputs (and labels) the plan leaves room for: "
        "the firmware caches them after the first epoch instead of running the head again")
    importance: Literal["fisher", "depth"] = Field(
        "fisher", description="fisher needs a float model and proxy data; depth ranks nearest-the-output first"
    )

    @property
    def optimizer_state_bytes(self) -> int:
        return OPTIMIZER_STATE_BYTES[self.optimizer]
