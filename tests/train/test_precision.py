"""Mixed precision as t5x: float32 parameters / optimizer state, bf16 matmuls, f32 loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amt_jax.models.t5 import MT3Config, MT3Model
from amt_jax.partitioning import mesh as mesh_lib
from amt_jax.train import optimizers, precision
from amt_jax.train.trainer import Trainer, model_factory

BATCH, FRAMES, TOKENS = 2, 16, 24


def _config(dtype: str) -> MT3Config:
    return MT3Config.tiny(dtype=dtype, dropout_rate=0.0, loss_normalization="mean", vocab_size=128)


def _trainer(dtype: str, optimizer=None) -> Trainer:
    mesh = mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1])
    return Trainer(
        model_factory(MT3Model, _config(dtype)), optimizer or optimizers.adam(3e-3), mesh
    )


def _batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((BATCH, FRAMES, 512)).astype(np.float32)
    targets = rng.integers(2, 128, (BATCH, TOKENS)).astype(np.int32)
    targets[:, -4:] = 0  # padding
    return {"inputs_btf": inputs, "targets_bl": targets}


def _abstract(batch):
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_policy_in_traced_train_step(dtype):
    trainer = _trainer(dtype)
    state = trainer.abstract_state()
    assert precision.non_float32_leaves(state.params) == []
    assert precision.non_float32_leaves(state.opt_state) == []
    batch = _abstract(_batch())
    flops = trainer.trace_train_step(precision.matmul_flops_by_dtype, state, batch)
    new_state, metrics = trainer.trace_train_step(jax.eval_shape, state, batch)
    assert precision.non_float32_leaves(new_state.params) == []
    assert metrics["loss"].dtype == jnp.float32
    config = _config(dtype)
    # the untied logits projection is the one float32 matmul: forward + 2 backward dots
    logits_flops = 3 * 2 * BATCH * TOKENS * config.emb_dim * config.vocab_size
    if dtype == "bfloat16":
        assert flops["float32xfloat32"] == logits_flops
        assert set(flops) == {"float32xfloat32", "bfloat16xbfloat16"}
        assert precision.low_precision_fraction(flops) > 0.5
    else:
        assert set(flops) == {"float32xfloat32"}
        assert flops["float32xfloat32"] > logits_flops


def test_model_activations_follow_dtype():
    model = MT3Model(_config("bfloat16"), rngs=__import__("flax").nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    encoded = jax.eval_shape(lambda: model.encode(batch["inputs_btf"], deterministic=True))
    logits = jax.eval_shape(lambda: model(batch, deterministic=True))
    assert encoded.dtype == jnp.bfloat16
    assert logits.dtype == jnp.float32


def test_tiny_bf16_mt3_trains():
    trainer = _trainer("bfloat16")
    state = trainer.init_state()
    batch = trainer.global_batch(_batch())
    losses = []
    for _ in range(30):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert precision.non_float32_leaves(jax.device_get(state.params)) == []
