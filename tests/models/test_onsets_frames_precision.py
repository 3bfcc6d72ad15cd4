"""Onsets and Frames in mixed precision (t5x policy): bf16 convs / dense / LSTM matmuls,
float32 parameters, front end, cell state, logits and loss."""

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from amt_jax.audio.mel import log_mel
from amt_jax.models import onsets_frames as of
from amt_jax.partitioning import mesh as mesh_lib
from amt_jax.train import aot, optimizers, precision
from amt_jax.train.main import parse_gin
from amt_jax.train.trainer import Trainer, model_factory

BATCH = 2


pytestmark = pytest.mark.usefixtures("fast_compile")


def _config(dtype: str) -> of.OnsetsFramesConfig:
    return dataclasses.replace(
        of.ONSETS_FRAMES_TINY, conv_dropout=(0.0, 0.0, 0.0), fc_dropout=0.0, dtype=dtype
    )


def _trainer(dtype: str) -> Trainer:
    mesh = mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1])
    return Trainer(model_factory(of.OnsetsFrames, _config(dtype)), optimizers.adam(1e-2), mesh)


def _batch(config: of.OnsetsFramesConfig) -> dict[str, np.ndarray]:
    """Two tones with their notes as rolls (one frame shorter than the spectrogram)."""
    samples = int(round(config.segment_seconds * config.mel.sample_rate))
    t = np.arange(samples) / config.mel.sample_rate
    rng = np.random.default_rng(0)
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)])
    audio += 0.01 * rng.standard_normal(audio.shape)
    frames = config.num_frames(samples) - 1
    rolls = {k: np.zeros((BATCH, frames, 88), np.float32) for k in ("onset", "offset", "frame")}
    velocity = np.zeros((BATCH, frames, 88), np.float32)
    for row, pitch in enumerate((57, 64)):
        rolls["frame"][row, 2:28, pitch - 21] = 1
        rolls["onset"][row, 2:4, pitch - 21] = 1
        rolls["offset"][row, 28:30, pitch - 21] = 1
        velocity[row, 2:4, pitch - 21] = 0.7
    batch = {f"{k}_btp": v for k, v in rolls.items()}
    batch["velocity_btp"] = velocity
    batch["audio_bs"] = audio.astype(np.float32)
    return batch


def _batch_statistics(model_state) -> list:
    """BatchNorm running means / variances (the model state without its RNG keys)."""
    leaves = [
        leaf
        for leaf in jax.tree.leaves(model_state)
        if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    ]
    assert leaves
    return leaves


def _output_layer_flops(config: of.OnsetsFramesConfig, frames: int) -> float:
    """Forward FLOPs of the five [in, 88] output projections over ``frames`` frames."""
    widths = (
        2 * config.lstm_units,  # onset
        2 * config.lstm_units,  # offset
        2 * config.combined_lstm_units,  # frame
        config.fc_size,  # velocity
        config.fc_size,  # activation
    )
    return sum(2.0 * BATCH * frames * width * config.n_pitches for width in widths)


def test_bad_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype must be"):
        of.OnsetsFramesConfig(dtype="float16")


def test_policy_in_traced_train_step():
    """bf16 policy read off the traced step (the float32 default is the published model,
    pinned by tests/models/test_onsets_frames.py)."""
    config = _config("bfloat16")
    trainer = _trainer("bfloat16")
    state = trainer.abstract_state()
    assert precision.non_float32_leaves(state.params) == []
    assert precision.non_float32_leaves(state.opt_state) == []
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in _batch(config).items()}
    flops = trainer.trace_train_step(precision.matmul_flops_by_dtype, state, batch)
    new_state, metrics = trainer.trace_train_step(jax.eval_shape, state, batch)
    assert precision.non_float32_leaves(new_state.params) == []
    assert precision.non_float32_leaves(new_state.opt_state) == []
    assert precision.non_float32_leaves(_batch_statistics(new_state.model_state)) == []
    assert metrics["loss"].dtype == jnp.float32
    # float32 matmuls: the log-mel front end (forward only: audio needs no gradient) and the
    # output projections (forward + kernel gradient + input gradient); nothing else
    front_end = precision.matmul_flops_by_dtype(
        lambda audio: log_mel(audio, config.mel), batch["audio_bs"]
    )
    front_end_flops = sum(front_end.values())
    assert front_end_flops > 0
    frames = config.num_frames(batch["audio_bs"].shape[1])  # the model runs all, then trims
    float32_expected = front_end_flops + 3 * _output_layer_flops(config, frames)
    assert set(flops) == {"float32xfloat32", "bfloat16xbfloat16"}
    assert flops["float32xfloat32"] == pytest.approx(float32_expected, rel=1e-9)
    assert precision.low_precision_fraction(flops) > 0.5


def test_bf16_outputs_are_float32_and_close_to_float32_model():
    """Same float32 weights, bf16 compute: logits float32, probabilities within bf16 error."""
    exact = of.OnsetsFrames(_config("float32"), rngs=nnx.Rngs(0))
    mixed = of.OnsetsFrames(_config("bfloat16"), rngs=nnx.Rngs(1))
    nnx.update(mixed, nnx.state(exact))
    audio = jnp.asarray(_batch(exact.config)["audio_bs"])
    predict = nnx.jit(lambda model, audio: model.predict({"audio_bs": audio}))
    want, got = predict(exact, audio), predict(mixed, audio)
    for name in ("onset", "offset", "frame", "velocity"):
        assert got[name].dtype == jnp.float32, name
        # relative to the output's range (velocity is linear and unbounded before training)
        scale = max(1.0, float(jnp.max(jnp.abs(want[name]))))
        error = float(jnp.max(jnp.abs(got[name] - want[name]))) / scale
        assert 0 < error < 0.05, (name, error, scale)  # bf16 really ran, and stayed close


def test_tiny_bf16_onsets_frames_trains():
    trainer = _trainer("bfloat16")
    state = trainer.init_state()
    batch = trainer.global_batch(_batch(_config("bfloat16")))
    losses = []
    for _ in range(8):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.7 * losses[0], losses
    assert precision.non_float32_leaves(state.params) == []


def test_dtype_is_bindable_from_gin():
    """The run config's model picks up ``--gin.OnsetsFramesConfig.dtype`` (the AOT tool's
    and the training CLI's way of switching precision)."""
    gin.clear_config()
    try:
        parse_gin(
            ["onsets_frames.gin", "tiny/onsets_frames.gin"],
            ["OnsetsFramesConfig.dtype = 'bfloat16'"],
            [],
        )
        job = aot.train_job_from_gin()
    finally:
        gin.clear_config()
    config = job.model_factory.args[1]
    assert config.dtype == "bfloat16"
    assert config.fc_size == of.ONSETS_FRAMES_TINY.fc_size  # the tiny overlay still applies
