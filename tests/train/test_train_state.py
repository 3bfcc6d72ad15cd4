"""The training state's helpers."""

import jax.numpy as jnp

from amt_jax.train.train_state import count_params


def test_count_params_sums_every_leaf():
    params = {"dense": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}, "scale": jnp.ones(())}
    assert count_params(params) == 3 * 4 + 4 + 1
    assert count_params({}) == 0
