"""Refilled decoding rows (MT3): every segment gets the tokens it gets decoded alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amt_jax.infer import refill
from amt_jax.infer import transcribe as tx
from amt_jax.models import t5

MAX_LENGTH = 300  # cache buckets 128, 256, 300: long rows grow the cache, refills shrink it


@pytest.fixture
def eos_by_audio(monkeypatch):
    """Random weights never emit EOS: make each segment stop at a step in [3, 400] fixed
    by its audio (some rows run into MAX_LENGTH instead)."""
    decode_step = t5.Decoder.decode_step

    def decode_step_with_eos(self, token_b, position, cache, cross_kv):
        logits_bv, cache = decode_step(self, token_b, position, cache, cross_kv)
        stop_b = 3 + jnp.sum(cross_kv[0][0] > 0, axis=(1, 2, 3)) % 398
        eos_bv = logits_bv.at[:, self.config.eos_id].set(1e9)
        return jnp.where((position >= stop_b)[:, None], eos_bv, logits_bv), cache

    monkeypatch.setattr(t5.Decoder, "decode_step", decode_step_with_eos)


@pytest.fixture(scope="module")
def tiny_mt3():
    return tx.random_model("mt3", t5.MT3Config.tiny())


def _windows(model, count):
    rng = np.random.default_rng(3)
    return (0.1 * rng.normal(size=(count, model.segment_samples))).astype(np.float32)


def test_refilled_rows_give_each_segment_its_lone_tokens(tiny_mt3, eos_by_audio):
    audio_bs = _windows(tiny_mt3, 9)
    alone = jax.jit(lambda a: tiny_mt3.predict({"audio_bs": a}, max_length=MAX_LENGTH))
    expected = np.concatenate([np.asarray(alone(row[None])["tokens"]) for row in audio_bs])
    ends = [int(np.flatnonzero(row == 1)[0]) if 1 in row else MAX_LENGTH for row in expected]
    assert len(set(ends)) > 5 and max(ends) > 128 and MAX_LENGTH in ends  # refills, growth
    for slots, devices in [(2, 1), (4, 2)]:
        decoder = refill.RefillDecoder(
            tiny_mt3,
            slots=slots,
            devices=jax.devices()[:devices],
            max_length=MAX_LENGTH,
            chunk_steps=16,
        )
        np.testing.assert_array_equal(decoder(audio_bs), expected)
    with pytest.raises(ValueError, match="not a multiple of 2 devices"):
        refill.RefillDecoder(tiny_mt3, slots=3, devices=jax.devices()[:2], max_length=8)


def test_transcriber_refilled_and_fixed_batches_agree(tiny_mt3, eos_by_audio):
    audio_s = _windows(tiny_mt3, 5).ravel()
    tokens = {}
    for refill_rows, batch_size, devices in [(True, 2, 2), (False, 4, 1), (True, 4, 1)]:
        transcriber = tx.Transcriber(
            "mt3",
            random_weights=True,
            config=tiny_mt3.config,
            batch_size=batch_size,
            devices=devices,
            refill_rows=refill_rows,
            max_decode_length=MAX_LENGTH,
        )
        assert len(transcriber.devices) == devices
        result = transcriber.transcribe(audio_s, sample_rate=16000)
        tokens[refill_rows, batch_size] = result.posteriors["tokens"]
    first = tokens[True, 2]
    assert first.shape == (5, MAX_LENGTH) and len(set((first == 1).argmax(1))) > 2
    for other in tokens.values():
        np.testing.assert_array_equal(other, first)


def test_bfloat16_weights_decode_nearly_the_float32_tokens(tiny_mt3):
    model = tx.with_weights_dtype(tiny_mt3, "bfloat16")
    kernels = [x for x in jax.tree.leaves(model) if hasattr(x, "dtype") and x.ndim == 2]
    assert kernels and all(x.dtype == jnp.bfloat16 for x in kernels)
    assert tx.with_weights_dtype(tiny_mt3, "float32") is tiny_mt3
    audio_bs = _windows(tiny_mt3, 2)
    tokens = [
        np.asarray(
            jax.jit(lambda a, m=m: m.predict({"audio_bs": a}, max_length=32))(audio_bs)["tokens"]
        )
        for m in (tiny_mt3, model)
    ]
    assert np.mean(tokens[0] == tokens[1]) > 0.5


def test_device_and_dtype_options_are_one_line_errors():
    with pytest.raises(tx.TranscriptionError, match="devices=99: this process has 8 cpu"):
        tx.Transcriber("mt3", random_weights=True, config=t5.MT3Config.tiny(), devices=99)
    nmp = tx.random_model("nmp")
    with pytest.raises(tx.TranscriptionError, match="mt3 only, not nmp"):
        tx.with_weights_dtype(nmp, "bfloat16")
    with pytest.raises(tx.TranscriptionError, match="weights_dtype must be one of"):
        tx.with_weights_dtype(nmp, "int8")
