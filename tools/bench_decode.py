"""MT3 greedy decoding speed: the library's cached decoder against a baseline, same run.

Usage: python tools/bench_decode.py --small_shapes 32x512,8x64 --rounds 2
       python tools/bench_decode.py [--configs tiny,small] [--rounds 5] [--against uncached]
                                    [--tiny_batch 8 --tiny_length 256]
                                    [--small_batch 2 --small_length 64]
       python tools/bench_decode.py --batch_scaling small:2,8:32 --rounds 3

Baselines (``--against``): ``previous`` (default), the cached decoder as it was before
issue 17, kept in this file (:func:`previous_greedy_decode`: one loop over a full-length
[batch, length, heads, kv] cache, which XLA:CPU transposed whole at every step, as it did
the cross-attention keys / values); ``uncached``, full recomputation of the decoder at
every step (:func:`amt_jax.models.decoding.greedy_decode_uncached`).

``--devices N`` gives JAX N CPU devices (:func:`amt_jax.infer.transcribe.use_cpu_cores`)
and splits the library decoder's batch rows over them, as :class:`Transcriber` does for
MT3; the baseline stays on one device, as it shipped. ``--devices 1`` shows the library
decoder alone on one device.

Both decoders run on the same random weights and the same encoder output; EOS is
disabled (``eos_id=-1``) so each call decodes exactly ``length`` steps for every row.
Compilation is excluded (one warm-up call each). Each round runs both decoders once in
rotated order; the printed speed-up is the median over rounds of t_baseline / t_cached
within a round (the machine is shared and noisy; use the ratio, not the absolute times).
The tokens of the two decoders are checked to be identical, and the 1-minute load
average is printed before the first and after every round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from amt_jax.infer import transcribe as transcribe_lib  # noqa: E402
from amt_jax.models import decoding, layers  # noqa: E402
from amt_jax.models.t5 import T5_SMALL, MT3Config, MT3Model  # noqa: E402

CONFIGS = {"tiny": MT3Config.tiny(), "small": T5_SMALL}


# --- the cached decoder as it was before issue 17 (the baseline of --against previous) ---


def _previous_layer_step(layer, x_b1d, position, cache, cross_kv):
    """One decoder layer, one position, on a [batch, slots, heads, kv] cache of all
    ``max_length`` slots and [batch, time, heads, kv] cross keys / values."""
    key_bthd, value_bthd = cache
    attention = layer.self_attention
    normed = layer.pre_self_attention_layer_norm(x_b1d)
    query_b1hd = attention.project_query(normed)
    key_b1hd, value_b1hd = attention.project_kv(normed)
    start = (0, position, 0, 0)
    key_bthd = jax.lax.dynamic_update_slice(key_bthd, key_b1hd.astype(key_bthd.dtype), start)
    value_bthd = jax.lax.dynamic_update_slice(
        value_bthd, value_b1hd.astype(value_bthd.dtype), start
    )
    visible_111t = (jnp.arange(key_bthd.shape[1]) <= position)[None, None, None, :]
    x_b1d = x_b1d + attention.attend(
        query_b1hd, key_bthd, value_bthd, visible_111t, deterministic=True
    )
    cross = layer.encoder_decoder_attention
    query_b1hd = cross.project_query(layer.pre_cross_attention_layer_norm(x_b1d))
    x_b1d = x_b1d + cross.attend(query_b1hd, *cross_kv, None, deterministic=True)
    x_b1d = x_b1d + layer.mlp(layer.pre_mlp_layer_norm(x_b1d), deterministic=True)
    return x_b1d, (key_bthd, value_bthd)


def previous_greedy_decode(model, encoded_btd, *, max_length: int, eos_id: int):
    """The cached greedy decoder before issue 17: one while_loop over a full-length cache,
    cache and cross keys / values laid out [batch, length, heads, kv]."""
    decoder = model.decoder
    config = decoder.config
    batch_size = encoded_btd.shape[0]
    shape = (batch_size, max_length, config.num_heads, config.head_dim)
    cache = tuple((jnp.zeros(shape), jnp.zeros(shape)) for _ in decoder.layers)
    cross_kv = tuple(
        layer.encoder_decoder_attention.project_kv(encoded_btd) for layer in decoder.layers
    )
    table_pd = jnp.asarray(layers.sinusoidal_positions(config.max_position, config.emb_dim))

    def step_logits(token_b, position, cache):
        x_b1d = decoder.token_embedder(token_b[:, None])
        x_b1d = x_b1d + jax.lax.dynamic_slice_in_dim(table_pd, position, 1)[None]
        new_cache = []
        for layer, layer_cache, layer_cross in zip(decoder.layers, cache, cross_kv, strict=True):
            x_b1d, layer_cache = _previous_layer_step(
                layer, x_b1d, position, layer_cache, layer_cross
            )
            new_cache.append(layer_cache)
        return decoder._logits(x_b1d, True)[:, 0], tuple(new_cache)

    def keep_going(state):
        step, _, _, done_b, _ = state
        return (step < max_length) & ~jnp.all(done_b)

    def body(state):
        step, previous_b, tokens_bl, done_b, cache = state
        logits_bv, cache = step_logits(previous_b, step, cache)
        next_b = jnp.where(done_b, 0, jnp.argmax(logits_bv, axis=-1).astype(jnp.int32))
        tokens_bl = jax.lax.dynamic_update_slice(tokens_bl, next_b[:, None], (0, step))
        return step + 1, next_b, tokens_bl, done_b | (next_b == eos_id), cache

    init = (
        jnp.asarray(0, jnp.int32),
        jnp.full((batch_size,), decoding.BOS_ID, jnp.int32),
        jnp.zeros((batch_size, max_length), jnp.int32),
        jnp.zeros((batch_size,), bool),
        cache,
    )
    return jax.lax.while_loop(keep_going, body, init)[2]


BASELINES = {
    "previous": previous_greedy_decode,
    "uncached": decoding.greedy_decode_uncached,
}


def _split_rows(model, encoded_btd, num_devices: int):
    """Model replicated and encoder rows split over the first ``num_devices`` devices."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("rows",))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))
    return nnx.merge(graphdef, state), jax.device_put(encoded_btd, rows)


def bench_config(
    name: str, batch: int, length: int, rounds: int, against: str, devices: int = 1
) -> dict:
    """The library's cached decoder (rows over ``devices``) against a baseline on one
    device, same weights, rounds interleaved."""
    config = CONFIGS[name]
    model = nnx.jit(lambda: MT3Model.from_config(config, rngs=nnx.Rngs(0)))()
    inputs_btf = jax.random.normal(jax.random.key(1), (batch, config.inputs_length, 512))
    encode = nnx.jit(lambda model, x: model.encode(x, deterministic=True))
    encoded = jax.block_until_ready(encode(model, inputs_btf))
    baseline = BASELINES[against]
    decoders = {
        "cached": nnx.jit(
            lambda model, enc: decoding.greedy_decode(model, enc, max_length=length, eos_id=-1)
        ),
        against: nnx.jit(lambda model, enc: baseline(model, enc, max_length=length, eos_id=-1)),
    }
    arguments = {against: (model, encoded), "cached": (model, encoded)}
    if devices > 1:
        arguments["cached"] = _split_rows(model, encoded, devices)
    tokens = {}
    compile_s = {}
    for key, fn in decoders.items():
        start = time.perf_counter()
        tokens[key] = np.asarray(jax.block_until_ready(fn(*arguments[key])))
        compile_s[key] = time.perf_counter() - start
    if not np.array_equal(tokens["cached"], tokens[against]):
        raise AssertionError(f"{name}: cached and {against} decoding disagree")

    times: dict[str, list[float]] = {key: [] for key in decoders}
    ratios = []
    loads = [os.getloadavg()[0]]
    order = list(decoders)
    for r in range(rounds):
        this_round = {}
        for key in order[r % 2 :] + order[: r % 2]:
            start = time.perf_counter()
            jax.block_until_ready(decoders[key](*arguments[key]))
            this_round[key] = time.perf_counter() - start
            times[key].append(this_round[key])
        ratios.append(this_round[against] / this_round["cached"])
        loads.append(os.getloadavg()[0])
    num_tokens = batch * length
    return {
        "config": name,
        "batch": batch,
        "length": length,
        "rounds": rounds,
        "against": against,
        "cached_devices": devices,
        "params": sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
        "first_call_s": {k: round(v, 2) for k, v in compile_s.items()},
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "tokens_per_s": {k: round(num_tokens / statistics.median(v), 1) for k, v in times.items()},
        "speedup": round(statistics.median(ratios), 2),
        "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "tokens_identical": True,
        "load_average_1min": [round(x, 2) for x in loads],
    }


def bench_cached_batch_scaling(name: str, batches: list[int], length: int, rounds: int) -> dict:
    """Cached tokens/s at several batch sizes (same weights, rounds interleaved)."""
    config = CONFIGS[name]
    model = nnx.jit(lambda: MT3Model.from_config(config, rngs=nnx.Rngs(0)))()
    encode = nnx.jit(lambda model, x: model.encode(x, deterministic=True))
    decode = nnx.jit(
        lambda model, enc: decoding.greedy_decode(model, enc, max_length=length, eos_id=-1)
    )
    encoded = {}
    for batch in batches:
        inputs_btf = jax.random.normal(jax.random.key(1), (batch, config.inputs_length, 512))
        encoded[batch] = encode(model, inputs_btf)
        jax.block_until_ready(decode(model, encoded[batch]))  # compile
    times: dict[int, list[float]] = {batch: [] for batch in batches}
    for r in range(rounds):
        for batch in batches[r % len(batches) :] + batches[: r % len(batches)]:
            start = time.perf_counter()
            jax.block_until_ready(decode(model, encoded[batch]))
            times[batch].append(time.perf_counter() - start)
    return {
        "config": name,
        "length": length,
        "cached_tokens_per_s": {
            batch: round(batch * length / statistics.median(t), 1) for batch, t in times.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--against",
        default="previous",
        choices=sorted(BASELINES),
        help="baseline: the cached decoder before issue 17, or full recomputation",
    )
    parser.add_argument("--tiny_batch", type=int, default=8)
    parser.add_argument("--tiny_length", type=int, default=256)
    parser.add_argument("--small_batch", type=int, default=2)
    parser.add_argument("--small_length", type=int, default=64)
    parser.add_argument(
        "--small_shapes",
        default="",
        help="several batch x steps of config small in one run, e.g. 32x512,8x64",
    )
    parser.add_argument(
        "--batch_scaling",
        default="",
        help="e.g. small:2,8:32 = cached tokens/s of config small at batch 2 and 8, 32 steps",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="CPU devices the library decoder's rows are split over (baseline: one)",
    )
    args = parser.parse_args()
    if args.devices > 1 and transcribe_lib.use_cpu_cores(args.devices) is None:
        raise SystemExit("--devices: JAX's CPU device count is already set (XLA_FLAGS?)")
    print(f"jax {jax.__version__}, devices {jax.devices()}", flush=True)
    if args.batch_scaling:
        name, batches, length = args.batch_scaling.split(":")
        batch_list = [int(b) for b in batches.split(",")]
        print(json.dumps(bench_cached_batch_scaling(name, batch_list, int(length), args.rounds)))
        return
    runs = [
        (name, getattr(args, f"{name}_batch"), getattr(args, f"{name}_length"))
        for name in args.configs.split(",")
    ]
    if args.small_shapes:
        shapes = [shape.split("x") for shape in args.small_shapes.split(",")]
        runs = [("small", int(batch), int(length)) for batch, length in shapes]
    for name, batch, length in runs:
        result = bench_config(name, batch, length, args.rounds, args.against, args.devices)
        print(json.dumps(result), flush=True)
        tokens_per_s = result["tokens_per_s"]
        print(
            f"{name}: batch {batch} x {length} steps: cached ({args.devices} device(s)) "
            f"{tokens_per_s['cached']} tok/s, "
            f"{args.against} {tokens_per_s[args.against]} tok/s -> "
            f"{result['speedup']}x (range {result['speedup_range']}), tokens identical, "
            f"load average {result['load_average_1min']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
