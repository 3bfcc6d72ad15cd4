"""The training state's helpers."""

import logging

import jax.numpy as jnp

from amt_jax.train.train_state import count_params
from tests.train.test_loop import run
from tests.train.tiny_model import BINS, PITCHES


def test_count_params_sums_every_leaf():
    params = {"dense": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}, "scale": jnp.ones(())}
    assert count_params(params) == 3 * 4 + 4 + 1
    assert count_params({}) == 0


def test_the_training_loop_logs_the_parameter_count(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run(tmp_path, 1, checkpoint_every=1)
    hidden = 16  # tiny_factory(): dense_in [BINS, hidden] + bias, scale, dense_out + bias
    expected = BINS * hidden + hidden + hidden + hidden * PITCHES + PITCHES
    assert f"TinyFrameModel: {expected:,} trainable parameters" in caplog.text
