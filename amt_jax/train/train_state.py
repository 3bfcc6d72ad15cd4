"""The training state: a plain pytree that jit, orbax and sharding rules all understand.

NNX modules are split into a static graph definition (kept by the trainer) and pure-dict
trees of arrays: trainable parameters, the rest of the model state (batch statistics,
dropout RNG keys and counters) and the optimizer state.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import struct

from amt_jax.models.base import merge_model, split_model  # noqa: F401  (re-exported)


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer updates applied
    params: dict[str, Any]  # nnx.Param values as a pure dict
    model_state: dict[str, Any]  # every other nnx Variable (RNG state, statistics)
    opt_state: optax.OptState


def count_params(params: dict[str, Any]) -> int:
    """Number of trainable values (the training loop logs it at startup)."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
