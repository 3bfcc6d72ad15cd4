"""MT3's dropout masks as in MT3 / t5x: residual branches, embeddings and the MLP hidden
layer share one mask along the sequence (``broadcast_dims=(-2,)``), the final encodings
are dropped element-wise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from amt_jax.models.t5 import DecoderLayer, Encoder, EncoderLayer, MT3Config


def _config(kernels):
    return MT3Config.tiny(kernels=kernels, dropout_rate=0.5, num_encoder_layers=1)


def _shared_along_positions(dropped_btd):
    """Whether zeros fall in the same channels at every position (and some do)."""
    dropped_btd = np.asarray(dropped_btd)
    assert 0.2 < dropped_btd.mean() < 0.8
    return bool((dropped_btd == dropped_btd[:, :1]).all())


@pytest.mark.parametrize("kernels", ["reference", "cpu"])
def test_encoder_layer_residual_dropouts_share_their_mask_along_time(kernels):
    layer = EncoderLayer(_config(kernels), rngs=nnx.Rngs(0))
    layer.attention.dropout.rate = 0.0  # the branch output itself stays dense
    x_btd = jax.random.normal(jax.random.key(1), (2, 9, 32))
    # attention branch alone: the MLP branch adds exact zeros
    layer.mlp.wo.kernel[...] = jnp.zeros_like(layer.mlp.wo.kernel[...])
    attended = layer(x_btd, deterministic=False) - x_btd
    assert _shared_along_positions(attended == 0)
    # MLP branch alone (its hidden dropout is shared along time too)
    layer = EncoderLayer(_config(kernels), rngs=nnx.Rngs(0))
    layer.attention.out.kernel[...] = jnp.zeros_like(layer.attention.out.kernel[...])
    hidden = layer(x_btd, deterministic=False) - x_btd
    assert _shared_along_positions(hidden == 0)


@pytest.mark.parametrize("kernels", ["reference", "cpu"])
def test_decoder_cross_attention_residual_dropout_shares_its_mask_along_length(kernels):
    layer = DecoderLayer(_config(kernels), rngs=nnx.Rngs(0))
    for attention in (layer.self_attention, layer.encoder_decoder_attention):
        attention.dropout.rate = 0.0
    for zeroed in (layer.self_attention.out, layer.mlp.wo):
        zeroed.kernel[...] = jnp.zeros_like(zeroed.kernel[...])
    x_bld = jax.random.normal(jax.random.key(2), (2, 7, 32))
    encoded_btd = jax.random.normal(jax.random.key(3), (2, 5, 32))
    causal = jnp.tril(jnp.ones((7, 7), bool))[None, None]
    attended = layer(x_bld, encoded_btd, causal, None, deterministic=False) - x_bld
    assert _shared_along_positions(attended == 0)


@pytest.mark.parametrize("kernels", ["reference", "cpu"])
def test_encoder_embedding_dropout_is_shared_and_its_output_dropout_is_not(kernels):
    encoder = Encoder(_config(kernels), rngs=nnx.Rngs(0))
    inputs_btf = jax.random.normal(jax.random.key(4), (2, 9, 512))
    dropped = encoder.dropout(jnp.ones((2, 9, 32)), deterministic=False) == 0
    assert _shared_along_positions(dropped)
    # the final encodings: element-wise, as MT3's Encoder
    encoded_btd = encoder(inputs_btf, deterministic=False)
    assert not _shared_along_positions(encoded_btd == 0)
    count = int(encoder.dropout.rngs.count[...])
    encoder(inputs_btf, deterministic=False)
    # the output dropout draws from the embedding dropout's stream: two keys per call
    assert int(encoder.dropout.rngs.count[...]) == count + 2
