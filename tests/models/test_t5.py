"""MT3 (T5.1.1) model: sizes, shardings, loss, masks, training and the protocol edges."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from amt_jax.models.losses import sequence_loss_and_metrics
from amt_jax.models.t5 import T5_SMALL, MT3Config, MT3Model
from amt_jax.partitioning import rules
from amt_jax.partitioning.axes import DEFAULT_RULES

TINY_VOCAB = 64


pytestmark = pytest.mark.usefixtures("fast_compile")


@functools.lru_cache(maxsize=2)
def param_count(config: MT3Config) -> tuple[int, nnx.State]:
    abstract = nnx.eval_shape(lambda: MT3Model.from_config(config, rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params)), params


def test_published_config():
    assert (T5_SMALL.emb_dim, T5_SMALL.num_heads, T5_SMALL.head_dim) == (512, 6, 64)
    assert (T5_SMALL.num_encoder_layers, T5_SMALL.num_decoder_layers) == (8, 8)
    assert (T5_SMALL.mlp_dim, T5_SMALL.vocab_size, T5_SMALL.dropout_rate) == (1024, 1536, 0.1)
    assert (T5_SMALL.z_loss, T5_SMALL.layer_norm_epsilon) == (1e-4, 1e-6)
    assert (T5_SMALL.inputs_length, T5_SMALL.targets_length) == (256, 1024)


def test_parameter_count_mt3_vocabulary():
    """The reference's count from MT3's shapes: 45,896,704 (encoder 19.15M, decoder 26.75M).

    We match it exactly: the paper's "~60M" / "93.7M" do not describe the released code.
    """
    total, params = param_count(T5_SMALL)
    assert total == 45_896_704
    encoder = sum(math.prod(x.shape) for x in jax.tree.leaves(params["encoder"]))
    # projection 512*512 + 8 * (2 norms + 4 attention kernels + 3 MLP kernels) + final norm
    assert encoder == 512 * 512 + 8 * (2 * 512 + 4 * 512 * 384 + 3 * 512 * 1024) + 512
    assert total - encoder == 26_751_488


def test_parameter_count_seed_vocabulary():
    """``seed`` layout: 592 codec classes + 3 specials = 595 ids -> 640 rows (x128).

    Only the embedding and the untied logit kernel depend on the vocabulary: each of the
    1536 - 640 = 896 fewer rows removes 2 * 512 parameters.
    """
    assert MT3Config.for_vocabulary("mt3").vocab_size == T5_SMALL.vocab_size == 1536
    config = MT3Config.for_vocabulary("seed")
    assert config.vocab_size == 640
    total, _ = param_count(config)
    assert total == 45_896_704 - 896 * 2 * 512 == 44_979_200


# logical names -> PartitionSpec under DEFAULT_RULES on a (data=4, model=2) mesh
GOLDEN_SHARDINGS = {
    "encoder/continuous_inputs_projection/kernel": (None, None),
    "encoder/layers/0/pre_attention_layer_norm/scale": (None,),
    "encoder/layers/0/attention/query/kernel": (None, "model", None),
    "encoder/layers/3/attention/key/kernel": (None, "model", None),
    "encoder/layers/7/attention/value/kernel": (None, "model", None),
    "encoder/layers/0/attention/out/kernel": ("model", None, None),
    "encoder/layers/0/mlp/wi_0/kernel": (None, "model"),
    "encoder/layers/0/mlp/wi_1/kernel": (None, "model"),
    "encoder/layers/0/mlp/wo/kernel": ("model", None),
    "decoder/token_embedder/embedding": ("model", None),
    "decoder/layers/0/self_attention/query/kernel": (None, "model", None),
    "decoder/layers/5/encoder_decoder_attention/key/kernel": (None, "model", None),
    "decoder/layers/7/encoder_decoder_attention/out/kernel": ("model", None, None),
    "decoder/layers/2/mlp/wo/kernel": ("model", None),
    "decoder/decoder_norm/scale": (None,),
    "decoder/logits_dense/kernel": (None, "model"),
}


def test_full_size_shardings_on_data_model_mesh():
    """The shardings the trainer derives (rules.state_shardings) match the golden table."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    _, params = param_count(T5_SMALL)
    for path, variable in nnx.to_flat_state(params):
        names = rules.logical_names(variable)
        label = "/".join(map(str, path))
        assert names is not None and len(names) == variable.get_value().ndim, label
    flat = {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): sharding
        for path, sharding in jax.tree_util.tree_flatten_with_path(
            rules.state_shardings(params, mesh, DEFAULT_RULES)
        )[0]
    }
    assert len(flat) == 1 + 8 * 9 + 1 + 1 + 8 * 14 + 2
    for label, expected in GOLDEN_SHARDINGS.items():
        assert flat[label].is_equivalent_to(
            NamedSharding(mesh, PartitionSpec(*expected)), len(expected)
        ), f"{label}: {flat[label].spec} != {expected}"
    # nothing is silently replicated because a mesh axis does not divide a dimension
    for label, sharding in flat.items():
        if "kernel" in label or "embedding" in label:
            assert any(axis == "model" for axis in sharding.spec) == (
                "continuous_inputs_projection" not in label
            ), label


def test_cross_entropy_and_z_loss_match_hand_computation():
    logits = jnp.array([[[1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0], [5.0, -5.0, 9.0, 1.0]]])
    targets = jnp.array([[2, 1, 0]])  # last position is padding
    lse_a = math.log(math.exp(1) + math.exp(2) + math.exp(3) + 1)
    lse_b = math.log(4.0)
    ce = (lse_a - 3.0) + (lse_b - 0.0)
    z = 1e-4 * (lse_a**2 + lse_b**2)
    loss, metrics = sequence_loss_and_metrics(logits, targets, z_loss=1e-4)
    assert float(loss) == pytest.approx(ce + z, rel=1e-6)
    assert float(metrics["z_loss"]) == pytest.approx(z, rel=1e-5)
    assert float(metrics["cross_entropy"]) == pytest.approx(ce, rel=1e-6)
    assert float(metrics["num_tokens"]) == 2
    assert float(metrics["accuracy"]) == pytest.approx(0.5)  # argmax 2 right, argmax 0 wrong
    mean_loss, _ = sequence_loss_and_metrics(logits, targets, z_loss=1e-4, normalization="mean")
    assert float(mean_loss) == pytest.approx((ce + z) / 2, rel=1e-6)


@pytest.fixture(scope="module")
def tiny_model():
    return MT3Model.from_config(MT3Config.tiny(vocab_size=TINY_VOCAB), rngs=nnx.Rngs(0))


_logits = nnx.jit(lambda model, batch: model(batch))


@pytest.fixture(scope="module")
def eval_logits():
    """Teacher-forced logits with every dropout switched off, as a trainer's eval does."""
    return lambda model, batch: _logits(nnx.view(model, deterministic=True), batch)


def _batch(targets, frames=8, seed=1):
    targets = jnp.asarray(targets, jnp.int32)
    inputs = jax.random.normal(jax.random.key(seed), (targets.shape[0], frames, 512))
    return {"inputs_btf": inputs, "targets_bl": targets}


def test_shift_right_uses_zero_as_bos():
    shifted = MT3Model.shift_right(jnp.array([[5, 6, 1, 0], [7, 1, 0, 0]]))
    np.testing.assert_array_equal(np.asarray(shifted), [[0, 5, 6, 1], [0, 7, 1, 0]])


def test_decoder_is_causal(tiny_model, eval_logits):
    targets = np.array([[5, 6, 7, 8, 9, 10, 1, 0]])
    changed = targets.copy()
    changed[0, 3] = 20  # decoder input position 4 changes
    a = np.asarray(eval_logits(tiny_model, _batch(targets)))
    b = np.asarray(eval_logits(tiny_model, _batch(changed)))
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert np.abs(a[:, 4:7] - b[:, 4:7]).min() > 0  # every later real position sees it


def test_dropout_only_in_training_mode(tiny_model, eval_logits):
    batch = _batch([[5, 6, 7, 8, 9, 10, 1, 0]])
    train_a = np.asarray(_logits(tiny_model, batch))  # module default: training mode
    train_b = np.asarray(_logits(tiny_model, batch))
    assert np.abs(train_a - train_b).max() > 1e-3  # fresh dropout masks each call
    eval_a = np.asarray(eval_logits(tiny_model, batch))
    np.testing.assert_array_equal(eval_a, np.asarray(eval_logits(tiny_model, batch)))


def test_bfloat16_activations_keep_float32_logits(tiny_model, eval_logits):
    config = MT3Config.tiny(vocab_size=TINY_VOCAB, dtype="bfloat16")
    model = MT3Model.from_config(config, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(tiny_model, nnx.Param))  # same float32 weights
    batch = _batch([[5, 6, 7, 8, 9, 10, 1, 0]])
    logits16 = eval_logits(model, batch)
    logits32 = eval_logits(tiny_model, batch)
    assert logits16.dtype == jnp.float32
    assert model.decoder.layers[0].mlp.wo.kernel[...].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits16), np.asarray(logits32), atol=0.15, rtol=0.05)


def test_overfit_one_batch_then_greedy_decode_reproduces_targets():
    """Forward + backward under jit, Adam: loss falls and decoding recovers the targets."""
    config = MT3Config.tiny(
        vocab_size=TINY_VOCAB, dropout_rate=0.0, num_encoder_layers=1, num_decoder_layers=1
    )
    model = MT3Model.from_config(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    targets = [[3, 17, 25, 40, 9, 1, 0, 0], [12, 12, 50, 1, 0, 0, 0, 0]]
    batch = _batch(targets, frames=8, seed=5)

    @nnx.jit
    def train_step(model, optimizer, batch):
        (loss, metrics), grads = nnx.value_and_grad(lambda m: m.loss(batch), has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, metrics

    losses = []
    for _ in range(60):
        loss, metrics = train_step(model, optimizer, batch)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.05 * losses[0], losses[::10]
    assert float(metrics["accuracy"]) == 1.0

    tokens = nnx.jit(lambda model, batch: model.predict(batch, max_length=8)["tokens"])(
        model, {"inputs_btf": batch["inputs_btf"]}
    )
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(targets))


def test_bad_inputs_give_clear_errors(tiny_model):
    with pytest.raises(ValueError, match=r"audio_bs of shape \[batch, 32768\]"):
        tiny_model.predict({"audio_bs": jnp.zeros((2, 16000))})
    with pytest.raises(ValueError, match="expects 16000 Hz audio"):
        tiny_model.predict({"audio_bs": jnp.zeros((1, 32768)), "sample_rate": 44100})
    with pytest.raises(ValueError, match="floating-point audio"):
        tiny_model.predict({"audio_bs": jnp.zeros((1, 32768), jnp.int16)})
    with pytest.raises(ValueError, match="needs 'audio_bs' or 'inputs_btf'"):
        tiny_model.predict({"targets_bl": jnp.zeros((1, 4), jnp.int32)})
    with pytest.raises(ValueError, match=r"inputs_btf must be \[batch, frames, 512\]"):
        tiny_model.predict({"inputs_btf": jnp.zeros((1, 8, 229))})


def test_audio_front_end_runs_inside_the_model(tiny_model):
    """Raw audio in: the log-mel is traced into the same program as the network."""
    batch = {"audio_bs": jnp.zeros((2, 32768)), "targets_bl": jnp.zeros((2, 8), jnp.int32)}
    spec = jax.eval_shape(tiny_model.spectrogram, batch)
    assert spec.shape == (2, 256, 512)  # 2.048 s -> 256 frames of 512 log-mel bins
    loss, metrics = nnx.eval_shape(lambda model, batch: model.loss(batch), tiny_model, batch)
    assert loss.shape == () and metrics["accuracy"].shape == ()
    tokens = nnx.eval_shape(
        lambda model, batch: model.predict(batch, max_length=16), tiny_model, batch
    )["tokens"]
    assert tokens.shape == (2, 16) and tokens.dtype == jnp.int32


def test_outputs_to_notes_decodes_token_segments():
    from note_seq import NoteSequence

    from amt_jax.vocab import note_events, vocabularies

    vocabulary = vocabularies.VocabularyConfig.named("seed")
    model = nnx.eval_shape(
        lambda: MT3Model.from_config(MT3Config.for_vocabulary(vocabulary), rngs=nnx.Rngs(0))
    )
    reference = NoteSequence()
    reference.notes.add(pitch=60, start_time=0.5, end_time=1.0, velocity=127, program=0)
    reference.notes.add(pitch=64, start_time=1.5, end_time=2.5, velocity=127, program=40)
    reference.notes.add(pitch=36, start_time=3.0, end_time=3.01, velocity=127, is_drum=True)
    segments = note_events.encode_note_sequence(reference, vocabulary)
    assert len(segments) == 2  # the violin note is tied across the 2.048 s boundary
    tokens_bl = np.zeros((2, 32), np.int32)  # decoded rows: PAD after EOS
    for row, segment in zip(tokens_bl, segments):
        row[: len(segment)] = segment
    start_times = model.segment(np.zeros(2 * 32768 - 5, np.float32)).start_times
    notes, stats = model.outputs_to_notes(
        {"tokens": tokens_bl}, num_samples=2 * 32768 - 5, start_times=start_times
    )
    assert stats["segments"] == 2
    got = sorted((n.pitch, n.program, n.is_drum, n.start_time, n.end_time) for n in notes.notes)
    expected = [(36, 0, True, 3.0, 3.01), (60, 0, False, 0.5, 1.0), (64, 40, False, 1.5, 2.5)]
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    np.testing.assert_allclose([g[3:] for g in got], [e[3:] for e in expected], atol=1e-6)
    # the vocabulary is the config's: a model too small for it cannot decode
    small = nnx.eval_shape(
        lambda: MT3Model.from_config(MT3Config.tiny(vocab_size=640), rngs=nnx.Rngs(0))
    )
    with pytest.raises(ValueError, match="'mt3' needs 1536 embedding rows but the model has 640"):
        small.outputs_to_notes({"tokens": tokens_bl}, num_samples=1, start_times=[0.0, 2.048])


def test_mt3_decodes_with_the_vocabulary_it_trains_on():
    """The bug this guards against: targets built with the ``mt3`` layout (max shift 1000)
    decoded with the package default ``seed`` layout gave 0 notes."""
    from note_seq import NoteSequence

    from amt_jax.data import preprocessors
    from amt_jax.metrics import transcription

    model = nnx.eval_shape(lambda: MT3Model.from_config(MT3Config.tiny(), rngs=nnx.Rngs(0)))
    assert model.config.vocabulary.layout == preprocessors.MT3.vocab_layout == "mt3"
    reference = NoteSequence()
    for i in range(40):
        reference.notes.add(pitch=40 + i, start_time=0.1 * i, end_time=0.1 * i + 0.3, velocity=90)
    audio = np.zeros(int(4.2 * 16000), np.float32)
    segments = model.segment(audio)
    tokens_bl = np.stack(
        [
            preprocessors.make_example(audio, reference, int(start), preprocessors.MT3)[
                "targets_bl"
            ]
            for start in segments.starts
        ]
    )
    notes, _ = model.outputs_to_notes(
        {"tokens": tokens_bl}, num_samples=len(audio), start_times=segments.start_times
    )
    assert len(notes.notes) == 40
    assert transcription.track_metrics(reference, notes)["Onset F1"] == pytest.approx(1.0)


def test_activation_constraints_lower_on_data_model_mesh(tiny_model):
    """Every constrain() call (training and the cached decode loop) is valid on a 4x2 mesh."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    graphdef, state = nnx.split(tiny_model)
    batch = _batch(np.tile([[5, 6, 7, 8, 9, 10, 1, 0]], (4, 1)))

    def loss_and_tokens(state, batch):
        model = nnx.merge(graphdef, state)
        tokens = model.predict({"inputs_btf": batch["inputs_btf"]}, max_length=8)["tokens"]
        return model.loss(batch)[0], tokens

    with jax.set_mesh(mesh):
        text = jax.jit(loss_and_tokens).lower(state, batch).as_text()
    constraints = [line for line in text.splitlines() if "sharding_constraint" in line]
    # heads over ``model``, batch over ``data``: q/k/v [4, 8, 2, 16] and the KV cache
    # (8 frames and 8 target positions): encoder q/k/v/context 2 x 4, decoder self + cross
    # 2 x 8, KV cache 2 x 2, precomputed cross keys/values 2 x 2
    qkv = '[{"data"}, {}, {"model"}, {}]> : tensor<4x8x2x16xf32>'
    assert sum(qkv in line for line in constraints) >= 8 + 16 + 4 + 4
    # one-step decoder logits [batch, 1, vocab]: vocab over ``model``
    assert any('[{"data"}, {}, {"model"}]> : tensor<4x1x64xf32>' in c for c in constraints)
