"""NMP mixed precision (issue #8): bfloat16 convs and CQT matmuls, float32 params and loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from amt_jax.models import nmp
from amt_jax.train import precision

TINY_BF16 = dataclasses.replace(nmp.NMP_TINY, dtype="bfloat16")


def _tone_batch(pitch=57):
    """One window holding a harmonic tone, with its contour / note / onset targets."""
    t = np.arange(nmp.WINDOW_SAMPLES) / nmp.SAMPLE_RATE
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    audio = sum(0.3 / h * np.sin(2 * np.pi * h * f0 * t) for h in (1, 2, 3))
    contour = np.zeros((1, 172, 264), np.float32)
    contour[:, :, 3 * (pitch - 21)] = 1
    note = np.zeros((1, 172, 88), np.float32)
    note[:, :, pitch - 21] = 1
    onset = np.zeros_like(note)
    onset[:, :2, pitch - 21] = 1
    return {
        "audio_bs": jnp.asarray(audio[None].astype(np.float32)),
        "contour_btf": jnp.asarray(contour),
        "note_btp": jnp.asarray(note),
        "onset_btp": jnp.asarray(onset),
    }


def test_config_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="dtype"):
        nmp.NMPConfig(dtype="float16")


def test_bfloat16_model_runs_every_matmul_in_bfloat16_and_trains():
    model = nmp.NMP(TINY_BF16, rngs=nnx.Rngs(0))
    batch = _tone_batch()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest, batch):
        return nnx.merge(graphdef, params, rest).loss(batch)

    # Every conv and every CQT matmul has bfloat16 operands; parameters stay float32.
    flops = precision.matmul_flops_by_dtype(loss_fn, params, rest, batch)
    assert precision.low_precision_fraction(flops) == 1.0, flops
    assert precision.non_float32_leaves(params) == []

    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, rest, opt_state):
        m = nnx.merge(graphdef, params, rest)
        (loss, metrics), grads = nnx.value_and_grad(lambda m: m.loss(batch), has_aux=True)(m)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = nmp.project_unit_norm(optax.apply_updates(params, updates))
        return params, nnx.split(m, nnx.Param, ...)[2], opt_state, loss

    losses = []
    for _ in range(5):
        params, rest, opt_state, loss = step(params, rest, opt_state)
        assert loss.dtype == jnp.float32  # loss (and the sigmoids inside it) in float32
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses
    assert precision.non_float32_leaves(params) == []
