"""NMP (Basic Pitch): exact layout, losses, UnitNorm, windowing and weight-import parity."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from amt_jax.models import nmp, nmp_convs, nmp_weights
from amt_jax.models.base import TranscriptionModel
from amt_jax.notes import basic_pitch as postprocess


@pytest.fixture(scope="module")
def tiny_model():
    """Built once (eager initialisation is slow on a loaded CPU); tests take clones."""
    return nmp.NMP(nmp.NMP_TINY, rngs=nnx.Rngs(0))


def _count(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_published_parameter_counts_and_shapes():
    model = nnx.eval_shape(lambda: nmp.NMP(nmp.NMP_CONFIG, rngs=nnx.Rngs(0)))
    assert isinstance(model, TranscriptionModel)
    # Reference §2: 16,782 trainable + 82 BatchNorm statistics (no dead contour conv).
    assert _count(nnx.state(model, nnx.Param)) == 16_782
    assert _count(nnx.state(model, nnx.BatchStat)) == 82
    expected = {
        "contour_conv": (3, 39, 8, 8),
        "contour_out": (5, 5, 8, 1),
        "note_conv": (7, 7, 1, 32),
        "note_out": (7, 3, 32, 1),
        "onset_conv": (5, 5, 8, 32),
        "onset_out": (3, 3, 33, 1),
    }
    for name, shape in expected.items():
        assert getattr(model, name).conv.kernel.shape == shape
    assert model.input_norm.epsilon == model.onset_norm.epsilon == 1e-3
    assert model.contour_norm.momentum == 0.99


def test_every_parameter_has_logical_axes():
    model = nnx.eval_shape(lambda: nmp.NMP(nmp.NMP_TINY, rngs=nnx.Rngs(0)))
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    for path, spec in jax.tree_util.tree_leaves_with_path(
        specs, is_leaf=lambda x: isinstance(x, nnx.Variable)
    ):
        value = spec.get_value() if isinstance(spec, nnx.Variable) else spec
        assert value is not None and len(value) >= 1, path


@pytest.mark.parametrize(
    "size,kernel,stride", [(264, 7, 3), (264, 5, 3), (264, 39, 1), (88, 3, 1), (172, 7, 1)]
)
def test_tf_same_padding_matches_xla_same(size, kernel, stride):
    pads = jax.lax.padtype_to_pads((size,), (kernel,), (stride,), "SAME")[0]
    assert nmp_convs.tf_same_padding(size, kernel, stride) == tuple(pads)
    out = (size + sum(pads) - kernel) // stride + 1
    assert out == -(-size // stride)


def test_stride_three_alignment_centres_note_bin_on_contour_bin_3k_plus_1(tiny_model):
    model = nnx.clone(tiny_model)
    kernel = np.zeros(model.note_conv.conv.kernel.shape, np.float32)
    kernel[3, 3, 0, 0] = 1.0  # centre tap of the 7x7 kernel
    model.note_conv.conv.kernel[...] = kernel
    model.note_conv.conv.bias[...] = np.zeros_like(model.note_conv.conv.bias[...])
    contour = np.zeros((1, 5, 264, 1), np.float32)
    contour[0, 2, 3 * 10 + 1, 0] = 1.0
    out = np.asarray(model.note_conv(jnp.asarray(contour)))
    assert out.shape == (1, 5, 88, 8)
    assert np.argwhere(out[..., 0]).tolist() == [[0, 2, 10]]


def test_unit_norm_projection_method_and_pure_function(tiny_model):
    model = nnx.clone(tiny_model)
    model.contour_conv.conv.kernel[...] = 3.0 * model.contour_conv.conv.kernel[...]
    bias_before = np.asarray(model.onset_out.conv.bias[...])
    scale_before = np.asarray(model.onset_norm.scale[...])
    params = nnx.state(model, nnx.Param)
    projected = nmp.project_unit_norm(params)
    model.project_constraints()
    for name in ("contour_conv", "contour_out", "note_conv", "note_out", "onset_conv", "onset_out"):
        kernel = np.asarray(getattr(model, name).conv.kernel[...])
        norms = np.sqrt((kernel**2).sum(axis=(0, 1, 2)))
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        np.testing.assert_allclose(projected[name]["conv"]["kernel"][...], kernel, rtol=1e-6)
    np.testing.assert_array_equal(model.onset_out.conv.bias[...], bias_before)
    np.testing.assert_array_equal(model.onset_norm.scale[...], scale_before)


def _bce(p, y):
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_class_balanced_onset_loss_and_label_smoothing():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 88)).astype(np.float32)
    labels = (rng.random((2, 6, 88)) < 0.1).astype(np.float32)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = (
        0.05 * _bce(probs, labels)[labels == 0].mean()
        + 0.95 * _bce(probs, labels)[labels == 1].mean()
    )
    got = nmp.class_balanced_bce_loss(jnp.asarray(logits), jnp.asarray(labels), 0.95)
    assert float(got) == pytest.approx(want, rel=1e-5)
    smooth = labels * 0.8 + 0.1
    want_smooth = (
        0.05 * _bce(probs, smooth)[labels == 0].mean()
        + 0.95 * _bce(probs, smooth)[labels == 1].mean()
    )
    got_smooth = nmp.class_balanced_bce_loss(jnp.asarray(logits), jnp.asarray(labels), 0.95, 0.2)
    assert float(got_smooth) == pytest.approx(want_smooth, rel=1e-5)
    plain = nmp.bce_loss(jnp.asarray(logits), jnp.asarray(labels), 0.2)
    assert float(plain) == pytest.approx(_bce(probs, smooth).mean(), rel=1e-5)
    # No positives at all: the positive term is 0, not NaN.
    empty = nmp.class_balanced_bce_loss(jnp.asarray(logits), jnp.zeros_like(labels), 0.95)
    assert float(empty) == pytest.approx(0.05 * _bce(probs, 0 * labels).mean(), rel=1e-5)


def test_predict_rejects_bad_input():
    # Validation happens before any compute, so an abstract model is enough.
    model = nnx.eval_shape(lambda: nmp.NMP(nmp.NMP_TINY, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"\[batch, 43844\]"):
        model.predict({"audio_bs": jnp.zeros((1, 32000))})
    with pytest.raises(ValueError, match="22050 Hz"):
        model.predict({"audio_bs": jnp.zeros((1, 43844)), "sample_rate": np.array([16000])})
    with pytest.raises(ValueError, match="audio_bs"):
        model.predict({"audio": jnp.zeros((1, 43844))})


def test_windowing_and_stitching_follow_basic_pitch():
    n = 200_607  # vocadito_10 at 22.05 kHz
    audio = np.arange(1, n + 1, dtype=np.float32)
    windows = nmp.window_audio(audio)
    assert windows.shape == (6, 43844)
    assert (windows[0, :3840] == 0).all() and windows[0, 3840] == 1
    assert windows[1, 0] == 36164 - 3840 + 1
    assert windows[-1, -1] == 0  # zero-padded tail
    frame_ids = np.arange(6 * 172, dtype=np.float32).reshape(6, 172, 1)
    for trim, frames in (("0.4.0", 782), ("head", 787)):
        stitched = nmp.unwrap_outputs({"note": frame_ids}, n, trim=trim)["note"][:, 0]
        assert stitched.shape == (frames,)
        np.testing.assert_array_equal(stitched[:142], np.arange(15, 157))
        np.testing.assert_array_equal(stitched[142:144], [172 + 15, 172 + 16])


def _sine_batch(pitches, n_frames=172):
    """Two windows each holding one harmonic tone and its NMP targets."""
    t = np.arange(43844) / 22050
    audio, contour, note, onset = [], [], [], []
    for pitch in pitches:
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        audio.append(sum(0.3 / h * np.sin(2 * np.pi * h * f0 * t) for h in (1, 2, 3)))
        c = np.zeros((n_frames, 264), np.float32)
        c[:, 3 * (pitch - 21)] = 1
        r = np.zeros((n_frames, 88), np.float32)
        r[:, pitch - 21] = 1
        o = np.zeros_like(r)
        o[:2, pitch - 21] = 1
        contour.append(c), note.append(r), onset.append(o)
    return {
        "audio_bs": jnp.asarray(np.stack(audio).astype(np.float32)),
        "contour_btf": jnp.asarray(np.stack(contour)),
        "note_btp": jnp.asarray(np.stack(note)),
        "onset_btp": jnp.asarray(np.stack(onset)),
    }


@pytest.mark.slow
def test_tiny_overfit_jitted_train_step_with_unit_norm(tiny_model):
    model = nnx.clone(tiny_model)
    model.project_constraints()
    batch = _sine_batch([57, 64])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, rest, opt_state, batch):
        m = nnx.merge(graphdef, params, rest)
        grad_fn = nnx.value_and_grad(lambda m: m.loss(batch), has_aux=True)
        (_, metrics), grads = grad_fn(m)  # BatchNorm statistics update inside m
        updates, opt_state = tx.update(grads, opt_state, params)
        params = nmp.project_unit_norm(optax.apply_updates(params, updates))
        return params, nnx.split(m, nnx.Param, ...)[2], opt_state, metrics

    losses = []
    for _ in range(8):
        params, rest, opt_state, metrics = step(params, rest, opt_state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.6 * losses[0], losses
    kernel = np.asarray(params["onset_out"]["conv"]["kernel"][...])
    np.testing.assert_allclose(np.sqrt((kernel**2).sum(axis=(0, 1, 2))), 1.0, atol=1e-5)
    # BatchNorm running statistics moved away from their (0, 1) initial values.
    assert not np.allclose(np.asarray(rest["contour_norm"]["mean"][...]), 0.0)


# --- published weights -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def basic_pitch_weights(tmp_path_factory):
    """Runs the import tool once per session (pip download of the 0.4.0 wheel).

    CI has PyPI access: a failed download is a failure with pip's command, never a skip.
    """
    output = tmp_path_factory.mktemp("amt_jax_cache") / nmp_weights.CACHE_FILENAME
    return nmp_weights.import_basic_pitch(output=output)


@pytest.mark.slow
def test_imported_weights_reproduce_basic_pitch_outputs(basic_pitch_weights, shared_dir):
    import librosa

    folder = os.path.join(shared_dir, "fixtures", "basic_pitch")
    audio, _ = librosa.load(os.path.join(folder, "vocadito_10.wav"), sr=22050, mono=True)
    model = nmp.NMP(nmp.NMP_CONFIG, rngs=nnx.Rngs(0))
    nmp_weights.load_basic_pitch_weights(model, basic_pitch_weights)
    np.testing.assert_allclose(
        np.sqrt((np.asarray(model.contour_conv.conv.kernel[...]) ** 2).sum(axis=(0, 1, 2))),
        1.0,
        atol=1e-5,
    )
    windows = nmp.window_audio(audio)
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, a: nnx.merge(graphdef, state).predict({"audio_bs": a}))
    per_window = {k: np.asarray(v) for k, v in run(state, jnp.asarray(windows)).items()}

    expected = np.load(os.path.join(folder, "vocadito_10", "model_output.npz"), allow_pickle=True)
    expected = expected["arr_0"].item()
    # The fixture was made with basic-pitch HEAD (787 frames); 0.4.0 keeps a 782-frame prefix.
    head = nmp.unwrap_outputs(per_window, audio.shape[0], trim="head")
    release = nmp.unwrap_outputs(per_window, audio.shape[0], trim="0.4.0")
    for name in ("note", "onset", "contour"):
        assert head[name].shape == expected[name].shape
        np.testing.assert_allclose(head[name], expected[name], atol=1e-4, rtol=0)
        assert release[name].shape[0] == 782
        np.testing.assert_array_equal(release[name], head[name][:782])

    golden = np.load(os.path.join(folder, "vocadito_10", "note_events.npz"), allow_pickle=True)
    events = postprocess.basic_pitch_note_events(head)
    assert len(events) == len(golden["arr_0"]) == 28
    frame_s = 256 / 22050
    for got, want in zip(events, golden["arr_0"]):
        assert got.pitch == want[2]
        assert abs(got.start - want[0]) <= frame_s and abs(got.end - want[1]) <= frame_s
