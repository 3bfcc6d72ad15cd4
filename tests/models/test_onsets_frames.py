"""Onsets and Frames: published size, LSTM semantics, stop-gradient, losses, decoding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from amt_jax.models import onsets_frames as of
from amt_jax.models.base import TranscriptionModel

NO_DROPOUT_TINY = dataclasses.replace(
    of.ONSETS_FRAMES_TINY, conv_dropout=(0.0, 0.0, 0.0), fc_dropout=0.0
)


@pytest.fixture(scope="module")
def tiny_model():
    """Built once (eager initialisation is slow on a loaded CPU); tests take clones."""
    return of.OnsetsFrames(NO_DROPOUT_TINY, rngs=nnx.Rngs(0))


def _count(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_published_parameter_count():
    model = nnx.eval_shape(lambda: of.OnsetsFrames(of.ONSETS_FRAMES_CONFIG, rngs=nnx.Rngs(0)))
    assert isinstance(model, TranscriptionModel)
    # Reference §1.8: 22,600,568 trainable, cross-checked against a magenta checkpoint
    # (3 x 22,600,568 + 1,539 = 1,536 BN moving statistics + step + 2 Adam beta powers).
    # The seed's "18M" has no source; the authors quote 28M.
    assert _count(nnx.state(model, nnx.Param)) == 22_600_568
    assert _count(nnx.state(model, nnx.BatchStat)) == 1_536
    parts = {
        "onset_stack": 4_266_096,  # conv 48/48/96 (beta-only BN, no conv bias) + dense 768
        "onset_lstm": 2_099_200,  # 2 x 4 x 256 x (768 + 256 + 1)
        "combined_lstm": 1_067_008,  # 2 x 4 x 256 x (264 + 256 + 1)
        "velocity_out": 67_672,
        "frame_out": 45_144,
    }
    for name, size in parts.items():
        assert _count(nnx.state(getattr(model, name), nnx.Param)) == size, name


def test_every_parameter_has_logical_axes():
    model = nnx.eval_shape(lambda: of.OnsetsFrames(of.ONSETS_FRAMES_TINY, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    for path, variable in jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    ):
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(variable.shape), path


def test_lstm_matches_flax_lstm_cell():
    """Our fused-gate LSTM equals flax's reference cell given the same weights."""
    rngs = nnx.Rngs(3)
    ours = of.LSTM(5, 4, input_axis="mlp", rngs=rngs)
    ours.bias[...] = jax.random.normal(jax.random.key(1), (16,))
    cell = nnx.LSTMCell(5, 4, rngs=nnx.Rngs(0))
    w_in, w_rec, bias = ours.input_kernel[...], ours.recurrent_kernel[...], ours.bias[...]
    for k, gate in enumerate("ifgo"):
        cols = slice(4 * k, 4 * (k + 1))
        getattr(cell, "if_" if gate == "f" else f"i{gate}").kernel[...] = w_in[:, cols]
        getattr(cell, f"h{gate}").kernel[...] = w_rec[:, cols]
        getattr(cell, f"h{gate}").bias[...] = bias[cols]
    x = jax.random.normal(jax.random.key(2), (2, 7, 5))
    carry = (jnp.zeros((2, 4)), jnp.zeros((2, 4)))  # (c, h) zeros, as ours
    expected = []
    for t in range(7):
        carry, h = cell(carry, x[:, t])
        expected.append(h)
    run = nnx.jit(lambda lstm, x, reverse: lstm(x, reverse=reverse), static_argnums=2)
    np.testing.assert_allclose(run(ours, x, False), jnp.stack(expected, 1), atol=1e-5)
    # Backward direction = forward LSTM over the time-reversed input, re-reversed.
    np.testing.assert_allclose(run(ours, x, True), run(ours, x[:, ::-1], False)[:, ::-1], atol=1e-5)


def test_velocity_loss_is_masked_by_onsets():
    rng = np.random.default_rng(0)
    pred = rng.random((2, 5, 88)).astype(np.float32)
    labels = rng.random((2, 5, 88)).astype(np.float32)
    onsets = (rng.random((2, 5, 88)) < 0.1).astype(np.float32)
    want = (onsets * (labels - pred) ** 2).sum(-1).mean()
    got = of.velocity_loss(jnp.asarray(pred), jnp.asarray(labels), jnp.asarray(onsets))
    assert float(got) == pytest.approx(want, rel=1e-5)
    wild = np.where(onsets > 0, pred, 100.0).astype(np.float32)  # errors off onsets: ignored
    got_wild = of.velocity_loss(jnp.asarray(wild), jnp.asarray(labels), jnp.asarray(onsets))
    assert float(got_wild) == pytest.approx(want, rel=1e-5)


def _batch(model, seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)])
    audio += 0.01 * rng.standard_normal(audio.shape)
    frames = model.config.num_frames(n) - 1  # rolls one frame shorter, as the data pipeline
    rolls = {k: np.zeros((2, frames, 88), np.float32) for k in ("onset", "offset", "frame")}
    velocity = np.zeros((2, frames, 88), np.float32)
    for b, pitch in enumerate((57, 64)):
        rolls["frame"][b, 2:28, pitch - 21] = 1
        rolls["onset"][b, 2:4, pitch - 21] = 1
        rolls["offset"][b, 28:30, pitch - 21] = 1
        velocity[b, 2:4, pitch - 21] = 0.7
    batch = {f"{k}_btp": jnp.asarray(v) for k, v in rolls.items()}
    batch["velocity_btp"] = jnp.asarray(velocity)
    batch["audio_bs"] = jnp.asarray(audio.astype(np.float32))
    return batch


def test_frame_loss_does_not_reach_onset_or_offset_stacks(tiny_model):
    model = nnx.clone(tiny_model)
    batch = _batch(model, seconds=0.5)

    def frame_loss(model):
        return model.loss(batch)[1]["frame_loss"]

    grads = nnx.jit(nnx.grad(frame_loss))(model)
    norm = lambda tree: float(optax.tree.norm(tree))  # noqa: E731
    assert norm(grads["onset_stack"]) == 0 and norm(grads["offset_lstm"]) == 0
    assert norm(grads["activation_stack"]) > 0 and norm(grads["combined_lstm"]) > 0


@pytest.mark.slow
def test_tiny_overfit_jitted_train_step(tiny_model):
    model = nnx.clone(tiny_model)
    batch = _batch(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, rest, opt_state, batch):
        m = nnx.merge(graphdef, params, rest)
        (_, metrics), grads = nnx.value_and_grad(lambda m: m.loss(batch), has_aux=True)(m)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (
            optax.apply_updates(params, updates),
            nnx.split(m, nnx.Param, ...)[2],
            (opt_state),
            metrics,
        )

    losses = []
    for _ in range(25):
        params, rest, opt_state, metrics = step(params, rest, opt_state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses


def test_predict_shapes_and_outputs_to_notes(tiny_model):
    model = tiny_model
    out = nnx.jit(lambda m, a: m.predict({"audio_bs": a}))(model, jnp.zeros((2, 8000)))
    assert {k: v.shape for k, v in out.items()} == {
        k: (2, 16, 88) for k in ("onset", "offset", "frame", "velocity")
    }
    # Inference windows: chunk_frames core frames with context_frames on each side; the
    # stitched posteriors keep only each window's core, cut to the track's frame count.
    config = dataclasses.replace(model.config, chunk_frames=32, context_frames=4)
    model = of.OnsetsFrames(config, rngs=nnx.Rngs(0))
    num_samples = 512 * 40  # 41 centred frames: two windows
    segments = model.segment(np.zeros(num_samples, np.float32))
    np.testing.assert_array_equal(segments.starts, [-4 * 512, 28 * 512])
    assert segments.length == 40 * 512
    frame = np.zeros((2, 41, 88), np.float32)
    onset = np.zeros_like(frame)
    frame[0, 4 + 30 :, 40] = frame[1, 4 : 4 + 2, 40] = 0.9  # frames 30..33 of the track
    onset[0, 4 + 30, 40] = 0.9
    frame[0, :4, 20] = onset[0, :4, 20] = 0.9  # left context only: never kept
    frame[1, 4 + 5 : 4 + 9, 10] = 0.9  # frames 37..40
    onset[1, 4 + 5, 10] = 0.9
    velocity = np.full_like(frame, 0.5)
    outputs = {"frame": frame, "onset": onset, "velocity": velocity}
    stitched = model.stitch(outputs, num_samples=num_samples)
    assert stitched["frame"].shape == (41, 88)
    sequence, _ = model.outputs_to_notes(
        outputs, num_samples=num_samples, start_times=segments.start_times
    )
    assert [(n.pitch, n.velocity) for n in sequence.notes] == [(61, 50), (31, 50)]
    assert (sequence.notes[0].start_time, sequence.notes[0].end_time) == pytest.approx(
        (30 / 31.25, 34 / 31.25)
    )
    assert sequence.notes[1].start_time == pytest.approx(37 / 31.25)
    trimmed, _ = model.outputs_to_notes(
        outputs, num_samples=512 * 36, start_times=segments.start_times
    )  # 37 frames
    assert [n.pitch for n in trimmed.notes] == [61]  # frame 37 lies beyond the piece


def test_bad_inputs_raise_clear_errors():
    # Validation happens before any compute, so an abstract model is enough.
    model = nnx.eval_shape(lambda: of.OnsetsFrames(of.ONSETS_FRAMES_TINY, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="16000 Hz"):
        model.predict({"audio_bs": jnp.zeros((1, 8000)), "sample_rate": np.array([22050])})
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        model.predict({"audio_bs": jnp.zeros((8000,))})
    batch = _batch(model, seconds=0.5)
    batch["frame_btp"] = batch["frame_btp"][:, :5]
    with pytest.raises(ValueError, match="frame_btp"):
        model.loss(batch)


def test_output_bias_prior_sets_the_sigmoid_heads_biases():
    config = dataclasses.replace(of.ONSETS_FRAMES_TINY, output_bias_prior=0.01)
    model = of.OnsetsFrames(config, rngs=nnx.Rngs(0))
    for head in (model.onset_out, model.offset_out, model.frame_out, model.activation_out):
        np.testing.assert_allclose(jax.nn.sigmoid(head.bias[...]), 0.01, rtol=1e-5)
    assert float(jnp.abs(model.velocity_out.bias[...]).max()) == 0.0  # linear head untouched
    default = of.OnsetsFrames(of.ONSETS_FRAMES_TINY, rngs=nnx.Rngs(0))
    assert float(jnp.abs(default.onset_out.bias[...]).max()) == 0.0  # magenta's zero init
    with pytest.raises(ValueError, match="output_bias_prior must be a probability"):
        dataclasses.replace(of.ONSETS_FRAMES_TINY, output_bias_prior=1.5)


def test_frequency_pair_pool_is_magentas_valid_max_pool_forward_and_backward():
    x = jax.random.normal(jax.random.key(0), (2, 5, 229, 3))  # odd bins: the last is dropped
    weights = jax.random.normal(jax.random.key(1), (2, 5, 114, 3))

    def pooled(pool):
        return lambda x: jnp.sum(pool(jax.nn.relu(x)) * weights)

    def reference(x):
        return nnx.max_pool(x, window_shape=(1, 2), strides=(1, 2), padding="VALID")

    np.testing.assert_array_equal(of.max_pool_frequency_pairs(x), reference(x))
    np.testing.assert_array_equal(
        jax.grad(pooled(of.max_pool_frequency_pairs))(x), jax.grad(pooled(reference))(x)
    )
