"""Importing MT3's t5x checkpoints: every storage form, both vocabularies, NumPy parity.

Checkpoints of the full T5-small MT3 shapes (all 189 parameters) are written here with
random weights in t5x's on-disk layout: a msgpack ``checkpoint`` file with flax's inline
arrays, and tensorstore zarr arrays beside it behind each kvstore form t5x wrote. They are
imported, and amt_jax's encoder output and logits are compared with a float64 NumPy
T5.1.1 forward written below from the raw parameter dict alone (RMSNorm, gated GELU, no
1/sqrt(d), sinusoidal positions, the continuous-input projection).

The full-size weights (~180 MB each) are written once per module.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

import ml_dtypes
import msgpack
import numpy as np
import pytest
import soundfile as sf
import tensorstore as ts

from amt_jax.models import checkpoints, t5x_import

pytestmark = pytest.mark.usefixtures("fast_compile")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBED, JOINED_KV, MLP, HEADS, LAYERS = 512, 384, 1024, 6, 8
ROWS = {"mt3": 1536, "ismir2021": 1664}
STEPS = {"mt3": 1_000_000, "ismir2021": 400_000}
EOS_ID = 1
#: kvstore forms of the specs t5x left in its msgpack files over the years
EXTERNAL_FORMS = ("file", "gfile", "gcs", "top_level_path", "gcs_top_level_path")
MAX_RELATIVE_ERROR = 1e-4
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


# --- the t5x parameter layout, written from MT3's network (not from amt_jax) ----------------


def t5x_shapes(rows: int) -> dict[str, tuple[int, ...]]:
    """Every parameter of MT3's T5.1.1-small as t5x stores it, '/'-joined."""
    shapes = {"encoder/continuous_inputs_projection/kernel": (512, EMBED)}

    def attention(prefix):
        for name in ("query", "key", "value"):
            shapes[f"{prefix}/{name}/kernel"] = (EMBED, JOINED_KV)
        shapes[f"{prefix}/out/kernel"] = (JOINED_KV, EMBED)

    def mlp(prefix):
        shapes[f"{prefix}/wi_0/kernel"] = (EMBED, MLP)
        shapes[f"{prefix}/wi_1/kernel"] = (EMBED, MLP)
        shapes[f"{prefix}/wo/kernel"] = (MLP, EMBED)

    for i in range(LAYERS):
        layer = f"encoder/layers_{i}"
        shapes[f"{layer}/pre_attention_layer_norm/scale"] = (EMBED,)
        attention(f"{layer}/attention")
        shapes[f"{layer}/pre_mlp_layer_norm/scale"] = (EMBED,)
        mlp(f"{layer}/mlp")
    shapes["encoder/encoder_norm/scale"] = (EMBED,)
    shapes["decoder/token_embedder/embedding"] = (rows, EMBED)
    for i in range(LAYERS):
        layer = f"decoder/layers_{i}"
        for norm in ("pre_self_attention", "pre_cross_attention", "pre_mlp"):
            shapes[f"{layer}/{norm}_layer_norm/scale"] = (EMBED,)
        attention(f"{layer}/self_attention")
        attention(f"{layer}/encoder_decoder_attention")
        mlp(f"{layer}/mlp")
    shapes["decoder/decoder_norm/scale"] = (EMBED,)
    shapes["decoder/logits_dense/kernel"] = (EMBED, rows)
    return shapes


def random_t5x_params(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights at t5x's initial scales (query kernels / sqrt(64)), so the
    activations of all 16 layers stay O(1) and the comparison measures the arithmetic."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in t5x_shapes(rows).items():
        value = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("/scale"):
            value = np.float32(1.0) + np.float32(0.1) * value
        elif not name.endswith("/embedding"):
            value *= np.float32(1.0 / np.sqrt(shape[0]) / (8.0 if "/query/" in name else 1.0))
        params[name] = value
    return params


def test_the_layout_written_here_is_mt3s():
    shapes = t5x_shapes(ROWS["mt3"])
    assert len(shapes) == 189
    assert sum(int(np.prod(s)) for s in shapes.values()) == 45_896_704
    assert len(t5x_shapes(ROWS["ismir2021"])) == 189


# --- writing t5x's on-disk format ------------------------------------------------------------


def inline(array: np.ndarray) -> msgpack.ExtType:
    """flax.serialization's inline array: ext 1 holding msgpack (shape, dtype name, bytes)."""
    payload = (list(array.shape), array.dtype.name, np.ascontiguousarray(array).tobytes())
    return msgpack.ExtType(1, msgpack.packb(payload, use_bin_type=True))


def inline_scalar(value: np.generic) -> msgpack.ExtType:
    """flax's numpy scalar: ext 3, the same payload with an empty shape."""
    return msgpack.ExtType(3, inline(np.asarray(value)).data)


def chunked(array: np.ndarray, pieces: int) -> dict:
    """flax's form of an array over its 1 GiB msgpack limit, here forced on a small one."""
    flat = array.reshape(-1)
    bounds = np.linspace(0, flat.size, pieces + 1).astype(int)
    return {
        "__msgpack_chunked_array__": True,
        "shape": {str(i): n for i, n in enumerate(array.shape)},
        "chunks": {str(i): inline(flat[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))},
    }


def zarr_metadata(array: np.ndarray, zarr_dtype: str, gzip: bool) -> dict:
    """One chunk, as t5x writes arrays below 64 MiB. t5x always compresses with gzip; only
    the ``file`` form does here, as zlib over 180 MB of random floats takes seconds."""
    shape = list(array.shape)
    compressor = {"id": "gzip", "level": 1} if gzip else None
    return {"chunks": shape, "compressor": compressor, "dtype": zarr_dtype, "shape": shape}


def external_spec(relative: str, array: np.ndarray, form: str, zarr_dtype: str) -> dict:
    """The msgpack leaf t5x leaves for an array it wrote with tensorstore."""
    base = {
        "driver": "zarr",
        "dtype": array.dtype.name,
        "metadata": zarr_metadata(array, zarr_dtype, gzip=form == "file"),
    }
    if form == "file":  # as tensorstore >= 0.1.14 normalises t5x's local spec
        return ts.Spec({**base, "kvstore": {"driver": "file", "path": relative}}).to_json()
    if form == "gfile":
        return {**base, "kvstore": {"driver": "gfile", "path": relative}}
    if form == "gcs":  # written under gs://, read back from a local copy
        return {
            **base,
            "kvstore": {"bucket": "t5x-dummy-bucket", "driver": "gcs", "path": relative},
        }
    if form == "top_level_path":  # tensorstore < 0.1.14
        return {**base, "kvstore": {"driver": "file"}, "path": relative}
    if form == "gcs_top_level_path":  # t5x's gs:// spec before tensorstore normalised it
        return {
            **base,
            "kvstore": {"bucket": "t5x-dummy-bucket", "driver": "gcs"},
            "path": relative,
        }
    raise AssertionError(form)


def write_zarr(directory: str, arrays: dict[str, tuple[np.ndarray, str, bool]]) -> None:
    """Zarr arrays ``directory/<relative>`` from (array, zarr dtype, gzip) (all writes in
    flight at once)."""
    stores = {
        relative: ts.open(
            {
                "driver": "zarr",
                "kvstore": {"driver": "file", "path": os.path.join(directory, relative)},
                "metadata": zarr_metadata(array, zarr_dtype, gzip),
            },
            create=True,
            delete_existing=True,
        )
        for relative, (array, zarr_dtype, gzip) in arrays.items()
    }
    writes = [stores[r].result().write(array) for r, (array, *_) in arrays.items()]
    for write in writes:
        write.result()


def nest(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree


def write_msgpack(directory: str, leaves: dict[str, object], step, version: int = 3):
    """``directory/checkpoint`` with the target ``leaves`` and a token Adafactor state (one
    of whose arrays is external and absent: the importer must not read the state). The
    step is a 0-d array (as t5x saves a jax scalar), or a numpy scalar if given one."""
    param_states = {
        "encoder/encoder_norm/scale": {
            "m": inline(np.zeros(1, np.float32)),
            "v": inline(np.ones(EMBED, np.float32)),
            "v_col": inline(np.zeros(1, np.float32)),
            "v_row": inline(np.zeros(1, np.float32)),
        },
        "decoder/logits_dense/kernel": {
            "m": inline(np.zeros(1, np.float32)),
            "v": inline(np.zeros(1, np.float32)),
            "v_col": inline(np.ones(ROWS["mt3"], np.float32)),
            "v_row": {
                "driver": "zarr",
                "kvstore": {"driver": "file", "path": "state.param_states.absent.v_row"},
                "metadata": {"shape": [EMBED]},
            },
        },
    }
    contents = {
        "version": version,
        "optimizer": {
            "target": nest(leaves),
            "state": {
                "step": inline_scalar(step)
                if isinstance(step, np.generic)
                else inline(np.asarray(step, np.int32)),
                "param_states": nest(param_states),
            },
        },
    }
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "checkpoint"), "wb") as handle:
        handle.write(msgpack.packb(contents, use_bin_type=True))


def write_t5x_checkpoint(directory, params, *, step, form_offset=0, special=None) -> dict:
    """A t5x checkpoint dir: the 1-D scales inline (as in the released ones), the kernels
    in zarr behind the kvstore forms in turn; ``special`` maps names to other storage
    (``inline``, ``chunked``, ``bfloat16_inline``, ``bfloat16_zarr``). Returns the leaves."""
    special = special or {}
    leaves, arrays = {}, {}
    externals = [n for n in sorted(params) if not n.endswith("/scale") and n not in special]
    for name, array in params.items():
        how = special.get(name, "inline" if name.endswith("/scale") else None)
        if how == "inline":
            leaves[name] = inline(array)
        elif how == "chunked":
            leaves[name] = chunked(array, 3)
        elif how == "bfloat16_inline":
            leaves[name] = inline(array.astype(BFLOAT16))
        else:
            relative = "target." + name.replace("/", ".")
            stored, zarr_dtype = array, "<f4"
            if how == "bfloat16_zarr":
                stored, zarr_dtype = array.astype(BFLOAT16), "bfloat16"
                form = "file"
            else:
                form = EXTERNAL_FORMS[(externals.index(name) + form_offset) % len(EXTERNAL_FORMS)]
            arrays[relative] = (stored, zarr_dtype, form == "file")
            leaves[name] = external_spec(relative, stored, form, zarr_dtype)
    write_zarr(str(directory), arrays)
    write_msgpack(str(directory), leaves, step)
    return leaves


def link_arrays(source, target) -> None:
    """A copy of a checkpoint's zarr arrays, as symlinks."""
    os.makedirs(target, exist_ok=True)
    for entry in os.listdir(source):
        if entry.startswith("target."):
            os.symlink(os.path.join(source, entry), os.path.join(target, entry))


# --- an independent float64 T5.1.1 forward ---------------------------------------------------


class Float64:
    """The raw parameter dict, read as float64."""

    def __init__(self, params):
        self.params = params

    def __getitem__(self, name):
        return np.asarray(self.params[name], np.float64)


def np_rms_norm(x, scale):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def np_gelu(x):  # flax's nn.gelu: the tanh approximation
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_positions(length, features=EMBED):
    """MT3's FixedEmbed: sin of position / 10000^(i / (half - 1)) then the cos, concatenated."""
    half = features // 2
    rates = np.exp(-np.log(10_000.0) * np.arange(half) / (half - 1))
    angles = np.arange(length)[:, None] * rates[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def np_attention(p, prefix, x_q, x_kv, mask_qk=None):
    def project(name, x):
        y = x @ p[f"{prefix}/{name}/kernel"]
        return y.reshape(*y.shape[:-1], HEADS, -1)  # (512, 384) is head-major

    query, key, value = project("query", x_q), project("key", x_kv), project("value", x_kv)
    scores = np.einsum("bqhd,bkhd->bhqk", query, key)  # no 1/sqrt(d): it is in the weights
    if mask_qk is not None:
        scores = np.where(mask_qk, scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    context = np.einsum("bhqk,bkhd->bqhd", probs, value)
    return context.reshape(*context.shape[:2], -1) @ p[f"{prefix}/out/kernel"]


def np_mlp(p, prefix, x):
    hidden = np_gelu(x @ p[f"{prefix}/wi_0/kernel"]) * (x @ p[f"{prefix}/wi_1/kernel"])
    return hidden @ p[f"{prefix}/wo/kernel"]


def np_encoder(p, inputs_btf):
    x = inputs_btf @ p["encoder/continuous_inputs_projection/kernel"]
    x = x + np_positions(inputs_btf.shape[1])
    for i in range(LAYERS):
        layer = f"encoder/layers_{i}"
        normed = np_rms_norm(x, p[f"{layer}/pre_attention_layer_norm/scale"])
        x = x + np_attention(p, f"{layer}/attention", normed, normed)  # no encoder mask
        x = x + np_mlp(p, f"{layer}/mlp", np_rms_norm(x, p[f"{layer}/pre_mlp_layer_norm/scale"]))
    return np_rms_norm(x, p["encoder/encoder_norm/scale"])


def np_decoder(p, encoded_btd, tokens_bl):
    length = tokens_bl.shape[1]
    y = p["decoder/token_embedder/embedding"][tokens_bl] + np_positions(length)
    causal_qk = np.tril(np.ones((length, length), bool))
    for i in range(LAYERS):
        layer = f"decoder/layers_{i}"
        normed = np_rms_norm(y, p[f"{layer}/pre_self_attention_layer_norm/scale"])
        y = y + np_attention(p, f"{layer}/self_attention", normed, normed, causal_qk)
        normed = np_rms_norm(y, p[f"{layer}/pre_cross_attention_layer_norm/scale"])
        y = y + np_attention(p, f"{layer}/encoder_decoder_attention", normed, encoded_btd)
        y = y + np_mlp(p, f"{layer}/mlp", np_rms_norm(y, p[f"{layer}/pre_mlp_layer_norm/scale"]))
    return np_rms_norm(y, p["decoder/decoder_norm/scale"]) @ p["decoder/logits_dense/kernel"]


def relative_error(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


# --- the checkpoints, written once ------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two t5x checkpoints at full size: ``mt3`` as released (``checkpoint`` in the dir) and
    ``ismir2021`` as a training run (``checkpoint_<step>/``, with a stale earlier step and an
    unfinished one), plus their raw parameters as the importer should read them."""
    root = tmp_path_factory.mktemp("t5x")
    mt3_params = random_t5x_params(ROWS["mt3"], seed=1)
    released = root / "checkpoints" / "mt3"
    mt3_leaves = write_t5x_checkpoint(
        released,
        mt3_params,
        step=STEPS["mt3"],
        special={"decoder/token_embedder/embedding": "inline"},
    )

    ismir_params = random_t5x_params(ROWS["ismir2021"], seed=2)
    special = {
        "decoder/token_embedder/embedding": "chunked",
        "decoder/decoder_norm/scale": "bfloat16_inline",
        "encoder/layers_0/mlp/wi_0/kernel": "bfloat16_zarr",
    }
    run = root / "ismir2021_run"
    step = np.int32(STEPS["ismir2021"])  # a numpy scalar: flax's ext type 3
    write_t5x_checkpoint(
        run / "checkpoint_400000", ismir_params, step=step, form_offset=2, special=special
    )
    for name, how in special.items():  # what a bfloat16 checkpoint holds
        if how.startswith("bfloat16"):
            ismir_params[name] = ismir_params[name].astype(BFLOAT16).astype(np.float32)
    write_msgpack(str(run / "checkpoint_5000"), {"encoder": inline(np.zeros(3))}, step=5000)
    unfinished = run / "checkpoint_500000.tmp-1701234567"
    unfinished.mkdir()
    (unfinished / "checkpoint").write_bytes(b"not msgpack")
    return {
        "mt3": (mt3_params, released, mt3_leaves),
        "ismir2021": (ismir_params, run, None),
    }


@pytest.fixture(scope="module")
def imported(written, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported")
    results = {}
    for layout, (_, source, _) in written.items():
        results[layout] = t5x_import.import_mt3_checkpoint(source, out / layout)
    return results


# --- tests ------------------------------------------------------------------------------------


def storage_form(leaf) -> str:
    if isinstance(leaf, msgpack.ExtType):
        return "inline"
    kvstore = leaf["kvstore"]
    if "path" in kvstore:
        return kvstore["driver"]
    return {"file": "top_level_path", "gcs": "gcs_top_level_path"}[kvstore["driver"]]


def test_the_released_style_checkpoint_has_every_storage_form(written):
    forms = [storage_form(leaf) for leaf in written["mt3"][2].values()]
    assert sorted(set(forms)) == sorted({"inline", *EXTERNAL_FORMS})
    assert forms.count("inline") == 42 + 1  # the 1-D scales, as released, and the embedding


def test_the_latest_complete_step_of_a_run_is_found(written):
    _, run, _ = written["ismir2021"]
    assert t5x_import.find_checkpoint_file(run).endswith("checkpoint_400000/checkpoint")
    assert t5x_import.find_checkpoint_file(run, 5000).endswith("checkpoint_5000/checkpoint")
    with pytest.raises(t5x_import.T5xCheckpointError, match="steps there: 5000, 400000"):
        t5x_import.find_checkpoint_file(run, 7)


@pytest.mark.parametrize("layout", ["mt3", "ismir2021"])
def test_import_records_the_vocabulary_and_segment_length(imported, layout):
    result = imported[layout]
    assert (result.vocabulary, result.step) == (layout, STEPS[layout])
    family, config = checkpoints.read_record(result.outdir)
    assert family == "mt3" and config.vocabulary.layout == layout
    assert config.vocab_size == ROWS[layout] == config.vocabulary.num_embeddings
    assert config.inputs_length == {"mt3": 256, "ismir2021": 512}[layout]
    assert result.num_parameters == sum(int(np.prod(s)) for s in t5x_shapes(ROWS[layout]).values())
    with np.load(os.path.join(result.outdir, "params.npz")) as data:
        assert len([name for name in data.files if name.startswith("params/")]) == 189
        assert int(data["step"]) == result.step


@pytest.mark.parametrize("layout", ["mt3", "ismir2021"])
def test_forward_matches_a_float64_numpy_t5(written, imported, layout, tmp_path, capsys):
    params = written[layout][0]
    rng = np.random.default_rng(3)
    inputs_btf = rng.standard_normal((2, 16, 512)).astype(np.float32)
    tokens_bl = rng.integers(0, ROWS[layout], (2, 8)).astype(np.int32)
    if layout == "mt3":  # through the parity tool
        np.savez(tmp_path / "x.npz", encoder_inputs=inputs_btf, decoder_input_tokens=tokens_bl)
        argv = ["forward", imported[layout].outdir, "--inputs", str(tmp_path / "x.npz")]
        assert t5x_import.main(argv + ["--output", str(tmp_path / "y.npz")]) == 0
        with np.load(tmp_path / "y.npz") as saved:
            outputs = {name: saved[name] for name in saved.files}
    else:  # through the library; the recorded 4.096 s segments reach the model
        model, _ = checkpoints.restore_model(imported[layout].outdir)
        assert model.segment(np.zeros(100_000, np.float32)).starts.tolist() == [0, 65_536]
        outputs = t5x_import.parity_forward(model, inputs_btf, tokens_bl)
        # t5x's padding masks (targets 0 = padding) leave the valid positions' logits alone
        targets_bl = np.where(np.arange(8) < 5, 3 + tokens_bl % 100, 0).astype(np.int32)
        masked = t5x_import.parity_forward(model, inputs_btf, tokens_bl, targets_bl)["logits"]
        np.testing.assert_allclose(masked[:, :5], outputs["logits"][:, :5], rtol=1e-5, atol=1e-5)
    encoder_output, logits = outputs["encoder_output"], outputs["logits"]
    assert encoder_output.dtype == logits.dtype == np.float32
    assert logits.shape == (2, 8, ROWS[layout])

    p = Float64(params)
    want_encoded = np_encoder(p, inputs_btf.astype(np.float64))
    want_logits = np_decoder(p, want_encoded, tokens_bl)
    errors = (relative_error(encoder_output, want_encoded), relative_error(logits, want_logits))
    with capsys.disabled():
        print(f"\n{layout}: max relative error encoder {errors[0]:.2e}, logits {errors[1]:.2e}")
    assert max(errors) <= MAX_RELATIVE_ERROR, errors
    assert np.std(want_logits) > 0.1  # the weights are not degenerate


def _variant(written, tmp_path, change):
    """A copy of the released-style checkpoint (arrays linked) whose msgpack ``change``s."""
    _, released, leaves = written["mt3"]
    directory = tmp_path / "variant"
    link_arrays(released, directory)
    leaves = dict(leaves)
    change(leaves)
    write_msgpack(str(directory), leaves, step=1)
    return directory


def _set(name, value):
    return lambda leaves: leaves.__setitem__(name, value)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda leaves: leaves.pop("encoder/layers_3/mlp/wi_1/kernel"),
            "t5x checkpoint lacks parameter 'encoder/layers_3/mlp/wi_1/kernel' (shape (512, 1024))",
        ),
        (
            _set("decoder/layers_5/self_attention/out/kernel", inline(np.zeros((384, 500)))),
            "t5x parameter 'decoder/layers_5/self_attention/out/kernel' has shape (384, 500), "
            "amt_jax's MT3 expects (384, 512)",
        ),
        (
            _set("decoder/relpos_bias/rel_embedding", inline(np.zeros((6, 32)))),
            "t5x checkpoint has parameter 'decoder/relpos_bias/rel_embedding' that amt_jax's "
            "MT3 does not",
        ),
        (
            _set("decoder/token_embedder/embedding", inline(np.zeros((1000, 512)))),
            "t5x parameter 'decoder/token_embedder/embedding' has 1000 rows; the released MT3 "
            "vocabularies have 1536 (mt3), 1664 (ismir2021)",
        ),
        (
            _set("encoder/encoder_norm/scale", "a string"),
            "t5x parameter 'encoder/encoder_norm/scale' is a str",
        ),
    ],
    ids=["missing", "misshapen", "extra", "vocabulary", "not-an-array"],
)
def test_a_parameter_that_does_not_fit_is_a_one_line_error_naming_it(
    written, tmp_path, capsys, change, message
):
    source = _variant(written, tmp_path, change)
    with pytest.raises(checkpoints.CheckpointError) as raised:
        t5x_import.import_mt3_checkpoint(source, tmp_path / "out")
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not os.path.exists(tmp_path / "out")  # nothing written
    assert t5x_import.main([str(source), "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {raised.value}"


def test_an_absent_zarr_array_is_named(written, tmp_path):
    _, _, leaves = written["mt3"]
    write_msgpack(str(tmp_path / "bare"), leaves, step=1)  # the msgpack without the arrays
    with pytest.raises(t5x_import.T5xCheckpointError) as raised:
        t5x_import.import_mt3_checkpoint(tmp_path / "bare", tmp_path / "out")
    message = str(raised.value)
    assert message.startswith("t5x parameter '") and "no zarr array at" in message
    assert str(tmp_path / "bare" / "target.") in message and "\n" not in message


def test_mapping_checks_names_and_unflattens_attention_kernels():
    config = t5x_import.mt3_config_for("mt3")
    maps = t5x_import.parameter_maps(config)
    assert set(maps) == set(t5x_shapes(ROWS["mt3"]))
    query = maps["decoder/layers_7/encoder_decoder_attention/query/kernel"]
    assert query.amt_name == "decoder/layers/7/encoder_decoder_attention/query/kernel"
    assert (query.t5x_shape, query.amt_shape) == ((512, 384), (512, 6, 64))
    out = maps["encoder/layers_0/attention/out/kernel"]
    assert (out.t5x_shape, out.amt_shape) == ((384, 512), (6, 64, 512))
    head_major = np.arange(512 * 384, dtype=np.float32).reshape(512, 384)
    arrays = {name: np.zeros(entry.t5x_shape, np.float32) for name, entry in maps.items()}
    arrays[query.t5x_name] = head_major
    amt = t5x_import.to_amt_params(arrays, maps)
    # head h, feature d of the query is column h * 64 + d of t5x's kernel
    np.testing.assert_array_equal(amt[query.amt_name][:, 2, 5], head_major[:, 2 * 64 + 5])


def _stopping_at_first_token(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Changed weights with which the random decoder emits EOS at the first step (else it
    decodes all 1024 steps of each segment: minutes here). Its blocks add nothing to the
    residual stream, so step 0's output is the normalised start-token embedding (plus
    position 0), and the EOS column of the logits kernel points along it."""
    changed = {}
    for i in range(LAYERS):
        for block in ("self_attention/out", "encoder_decoder_attention/out", "mlp/wo"):
            name = f"decoder/layers_{i}/{block}/kernel"
            changed[name] = np.zeros_like(params[name])
    start = params["decoder/token_embedder/embedding"][0] + np_positions(1)[0]
    hidden = np_rms_norm(start, params["decoder/decoder_norm/scale"].astype(np.float64))
    logits = params["decoder/logits_dense/kernel"].copy()
    logits[:, EOS_ID] = 100.0 * hidden / np.linalg.norm(hidden)
    changed["decoder/logits_dense/kernel"] = logits
    return changed


def test_cli_transcribes_with_an_imported_checkpoint(written, tmp_path, monkeypatch, capsys):
    """tools/import_mt3.py on a run directory, then ``amt-jax piece.wav --model mt3
    --checkpoint OUT --plot --csv`` (random weights: no notes, but every file written)."""
    params, released, leaves = written["mt3"]
    step_dir = tmp_path / "mt3_run" / "checkpoint_1000"
    link_arrays(released, step_dir)
    leaves = dict(leaves)
    leaves.update({name: inline(a) for name, a in _stopping_at_first_token(params).items()})
    write_msgpack(str(step_dir), leaves, step=1000)

    model_dir = tmp_path / "mt3_amt"
    argv = ["import_mt3.py", str(tmp_path / "mt3_run"), "-o", str(model_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(os.path.join(ROOT, "tools", "import_mt3.py"), run_name="__main__")
    assert exited.value.code == 0
    assert "vocabulary 'mt3'" in capsys.readouterr().out
    with open(model_dir / "model.json") as handle:
        assert json.load(handle)["config"]["vocabulary"]["layout"] == "mt3"

    from amt_jax.infer import cli

    seconds = 2.0
    time_s = np.arange(int(16_000 * seconds)) / 16_000
    sf.write(tmp_path / "piece.wav", 0.3 * np.sin(2 * np.pi * 440.0 * time_s), 16_000)
    out = tmp_path / "out"
    argv = [str(tmp_path / "piece.wav"), "--model", "mt3", "--checkpoint", str(model_dir)]
    assert cli.main(argv + ["--plot", "--csv", "-o", str(out)]) == 0
    for suffix in (".mid", ".csv", ".png"):
        assert (out / f"piece{suffix}").stat().st_size > 0
    assert "transcribed 1 of 1 input(s)" in capsys.readouterr().err


def test_forward_names_what_it_cannot_use(tmp_path, capsys):
    np.savez(tmp_path / "x.npz", encoder_inputs=np.zeros((1, 4, 512), np.float32))
    argv = ["forward", os.path.join(ROOT, "reference_runs", "nmp"), "--inputs"]
    assert t5x_import.main(argv + [str(tmp_path / "x.npz"), "--output", "y.npz"]) == 1
    assert "lacks ['decoder_input_tokens']" in capsys.readouterr().err
    tokens_bl = np.zeros((1, 3), np.int32)
    np.savez(
        tmp_path / "x.npz", encoder_inputs=np.zeros((1, 4, 512)), decoder_input_tokens=tokens_bl
    )
    assert t5x_import.main(argv + [str(tmp_path / "x.npz"), "--output", "y.npz"]) == 1
    assert "holds a nmp model; forward runs MT3 only" in capsys.readouterr().err
