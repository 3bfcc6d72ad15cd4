"""Import Magenta's released MT3 t5x checkpoints into amt_jax (no t5x, gin or TensorFlow).

Why: MT3's only published weights are t5x checkpoints (``gs://mt3/checkpoints/mt3/`` and
``gs://mt3/checkpoints/ismir2021/``). This module reads t5x's on-disk format with msgpack
and tensorstore, maps every parameter by name (with a shape check) onto amt_jax's NNX
tree, and writes a parameters-only amt_jax model directory (``model.json`` + ``params.npz``,
what :func:`amt_jax.models.checkpoints.export_params` writes), so that
``amt-jax x.wav --model mt3 --checkpoint OUT`` needs nothing more.

The format, as t5x's ``checkpoints.py`` (2021-22) writes it:

- A directory holds one msgpack file named ``checkpoint``:
  ``{version: 3, optimizer: {target: {encoder, decoder}, state: {step, param_states}}}``.
  Released checkpoints are such a directory; a training run writes ``checkpoint_<step>/``.
- Small arrays are inline, as flax serialises them: msgpack extension type 1 holding a
  msgpack of (shape, dtype name, raw C-order bytes); type 3 is a numpy scalar in the same
  encoding. Arrays over 1 GiB are split by flax into ``__msgpack_chunked_array__`` dicts.
- Other arrays are tensorstore zarr directories beside the file, named by the '.'-joined
  key path (``target.encoder.layers_0.attention.key.kernel``); the msgpack leaf is the
  tensorstore spec (``driver: zarr``, ``kvstore``, ``metadata``). The kvstore is
  ``file``, ``gfile`` or ``gcs`` (with the dummy bucket ``t5x-dummy-bucket``), or, in the
  form older tensorstore wrote, the path sits at the top level of the spec. t5x resolves
  every form relative to the checkpoint directory, and so does this module.
- Attention kernels are stored flattened: query/key/value (512, 384), head-major when
  reshaped to (512, 6, 64); ``out`` (384, 512). amt_jax keeps them as (512, 6, 64) and
  (6, 64, 512). The Adafactor state (``state/param_states``) is not read.

Command line (also ``tools/import_mt3.py``)::

    python -m amt_jax.models.t5x_import checkpoints/mt3 -o mt3_amt
    python -m amt_jax.models.t5x_import forward mt3_amt --inputs X.npz --output Y.npz
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import sys
import types
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from amt_jax.models import checkpoints, platform
from amt_jax.models.t5 import MT3Config
from amt_jax.vocab import layouts

CHECKPOINT_FILE = "checkpoint"
#: the msgpack extension codes of flax.serialization
EXT_NDARRAY = 1
EXT_COMPLEX = 2
EXT_NUMPY_SCALAR = 3
CHUNKED_ARRAY_KEY = "__msgpack_chunked_array__"
#: the prefix of leaves Orbax-era t5x writes for arrays stored beside the msgpack file
ORBAX_PLACEHOLDER = "PLACEHOLDER://"
KVSTORE_DRIVERS = ("file", "gfile", "gcs")
#: released layouts and the encoder frames per segment MT3's colab feeds each of them
LAYOUT_INPUTS_LENGTH = {"mt3": 256, "ismir2021": 512}
EMBEDDING_NAME = "decoder/token_embedder/embedding"
_STEP_DIR = re.compile(r"checkpoint_(\d+)")


class T5xCheckpointError(checkpoints.CheckpointError):
    """A t5x checkpoint that cannot be imported; the one-line message names the problem."""


# --- finding the msgpack file --------------------------------------------------------------


def find_checkpoint_file(path: str | os.PathLike, step: int | None = None) -> str:
    """The ``checkpoint`` msgpack file of a t5x checkpoint.

    ``path`` is the file itself, a directory holding it (the released MT3 checkpoints),
    or a t5x run directory with ``checkpoint_<step>/`` subdirectories: then ``step``, or
    the latest step. Unfinished ``checkpoint_<step>.tmp-*`` directories are ignored.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        if step is not None:
            raise T5xCheckpointError(f"a step applies to a t5x run directory, not to {path}")
        return path
    if not os.path.isdir(path):
        raise T5xCheckpointError(f"t5x checkpoint '{path}' does not exist")
    steps = checkpoint_steps(path)
    if step is not None:
        if step not in steps:
            have = ", ".join(map(str, sorted(steps))) or "none"
            raise T5xCheckpointError(
                f"'{path}' has no checkpoint_{step}/ with a '{CHECKPOINT_FILE}' file "
                f"(steps there: {have})"
            )
        return steps[step]
    direct = os.path.join(path, CHECKPOINT_FILE)
    if os.path.isfile(direct):
        return direct
    if steps:
        return steps[max(steps)]
    raise T5xCheckpointError(
        f"'{path}' holds no t5x checkpoint: expected a '{CHECKPOINT_FILE}' msgpack file or "
        "checkpoint_<step>/ directories (e.g. gsutil -m cp -r gs://mt3/checkpoints .)"
    )


def checkpoint_steps(run_dir: str) -> dict[int, str]:
    """``{step: path of its checkpoint file}`` for the ``checkpoint_<step>/`` of a run."""
    found = {}
    for entry in os.listdir(run_dir):
        match = _STEP_DIR.fullmatch(entry)
        candidate = os.path.join(run_dir, entry, CHECKPOINT_FILE)
        if match and os.path.isfile(candidate):
            found[int(match.group(1))] = candidate
    return found


# --- msgpack (flax serialisation) ------------------------------------------------------------


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _array_from_ext(data: bytes) -> np.ndarray:
    """Flax's inline array: a msgpack of (shape, dtype name, C-order bytes)."""
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    dtype = _dtype(dtype_name.decode() if isinstance(dtype_name, bytes) else dtype_name)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        return _array_from_ext(data)
    if code == EXT_NUMPY_SCALAR:
        return _array_from_ext(data)[()]
    if code == EXT_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    return msgpack.ExtType(code, data)


def _join_chunked_arrays(tree: Any) -> Any:
    """Flax splits arrays over 1 GiB into ``{__msgpack_chunked_array__, shape, chunks}``."""
    if not isinstance(tree, dict):
        return tree
    if tree.get(CHUNKED_ARRAY_KEY):
        shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        return np.concatenate([np.ravel(chunk) for chunk in chunks]).reshape(shape)
    return {key: _join_chunked_arrays(value) for key, value in tree.items()}


def decode_msgpack(raw: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """A t5x ``checkpoint`` file's bytes -> nested dicts of arrays and tensorstore specs."""
    if raw.startswith(b"model_checkpoint_path"):
        raise T5xCheckpointError(
            f"'{source}' is a TensorFlow checkpoint index, not a t5x msgpack checkpoint "
            "(MT3's released checkpoints are t5x ones: gs://mt3/checkpoints)"
        )
    try:
        contents = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise T5xCheckpointError(f"'{source}' is not a msgpack file: {error}") from None
    if not isinstance(contents, dict):
        raise T5xCheckpointError(
            f"'{source}' holds a msgpack {type(contents).__name__}, not a t5x state dict"
        )
    return _join_chunked_arrays(contents)


# --- the checkpoint's parameters --------------------------------------------------------------


def is_tensorstore_spec(value: Any) -> bool:
    return isinstance(value, dict) and "driver" in value and ("kvstore" in value or "path" in value)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) and value and not is_tensorstore_spec(value):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


@dataclasses.dataclass
class T5xCheckpoint:
    """The parameters of one t5x checkpoint, external arrays not read yet.

    ``leaves``: '/'-joined names under ``optimizer/target`` (``encoder/layers_0/...``) ->
    an inline ``np.ndarray``, a tensorstore spec dict, or an Orbax placeholder string.
    """

    path: str
    version: int
    step: int | None
    leaves: dict[str, Any]
    _stores: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)

    def shape(self, name: str) -> tuple[int, ...]:
        """A parameter's shape, from the inline array or the zarr array's metadata."""
        return tuple(self._array_source(name).shape)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self.shape(name) for name in self.leaves}

    def read(self) -> dict[str, np.ndarray]:
        """Every parameter as float32 (zarr arrays read concurrently by tensorstore)."""
        sources = {name: self._array_source(name) for name in self.leaves}
        pending = {
            name: source.read()
            for name, source in sources.items()
            if not isinstance(source, np.ndarray)
        }
        arrays = {}
        for name, source in sources.items():
            array = pending[name].result() if name in pending else source
            arrays[name] = _as_float32(name, np.asarray(array))
        return arrays

    def _array_source(self, name: str) -> Any:
        """The inline array, or the opened tensorstore (cached: opening reads .zarray)."""
        leaf = self.leaves[name]
        if isinstance(leaf, np.ndarray):
            return leaf
        if name not in self._stores:
            self._stores[name] = _open_zarr(leaf, self.directory, name)
        return self._stores[name]


def open_t5x_checkpoint(path: str | os.PathLike, step: int | None = None) -> T5xCheckpoint:
    """Read a t5x checkpoint's msgpack file (see :func:`find_checkpoint_file` for ``path``)."""
    file = find_checkpoint_file(path, step)
    with open(file, "rb") as handle:
        contents = decode_msgpack(handle.read(), file)
    version = contents.get("version", 0)
    # version 0 is a plain flax optimizer checkpoint; t5x wrote 2 and (from 2021-06) 3
    optimizer = contents.get("optimizer") if version else contents
    if not isinstance(version, int) or version == 1 or not isinstance(optimizer, dict):
        raise T5xCheckpointError(
            f"'{file}' is not a t5x checkpoint (version {version!r}, keys {sorted(contents)})"
        )
    target = optimizer.get("target")
    if not isinstance(target, dict) or not target:
        raise T5xCheckpointError(
            f"'{file}' has no optimizer/target parameters (keys: {sorted(optimizer)})"
        )
    leaves = _flatten(target)
    for name, leaf in leaves.items():
        is_placeholder = isinstance(leaf, str) and leaf.startswith(ORBAX_PLACEHOLDER)
        if not (isinstance(leaf, np.ndarray) or is_tensorstore_spec(leaf) or is_placeholder):
            raise T5xCheckpointError(
                f"t5x parameter '{name}' is a {type(leaf).__name__}, neither an array nor a "
                "tensorstore spec"
            )
    state = optimizer.get("state")
    step_value = state.get("step") if isinstance(state, dict) else None
    step_found = None if step_value is None else int(np.asarray(step_value).reshape(-1)[0])
    return T5xCheckpoint(file, version, step_found, leaves)


def _as_float32(name: str, array: np.ndarray) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        raise T5xCheckpointError(f"t5x parameter '{name}' has dtype {array.dtype}, not float")
    return array.astype(np.float32, copy=False)


# --- external (zarr) arrays -------------------------------------------------------------------


def _relative_paths(leaf: Any, name: str) -> list[str]:
    """Where an external array may lie, relative to the checkpoint directory, best first.

    A spec's path is in ``kvstore.path`` (tensorstore >= 0.1.14), at the top level (older
    tensorstore; relative to the kvstore's path), or in a kvstore URL; t5x wrote it
    relative, and names the directory by the '.'-joined key path in any case.
    """
    by_key = "target." + name.replace("/", ".")
    if isinstance(leaf, str):  # an Orbax placeholder
        return [leaf[len(ORBAX_PLACEHOLDER) :], by_key]
    kvstore = leaf.get("kvstore", {})
    if isinstance(kvstore, str):  # a kvstore URL: file:///dir/ or gs://bucket/dir/
        scheme, _, rest = kvstore.partition("://")
        kvstore = {"driver": {"gs": "gcs"}.get(scheme, scheme), "path": rest}
        if scheme == "gs":
            kvstore["path"] = rest.partition("/")[2]
    driver = kvstore.get("driver")
    if leaf.get("driver") != "zarr" or driver not in KVSTORE_DRIVERS:
        raise T5xCheckpointError(
            f"t5x parameter '{name}' is stored with tensorstore driver {leaf.get('driver')!r} "
            f"and kvstore {driver!r}; t5x writes zarr on one of {KVSTORE_DRIVERS}"
        )
    kv_path, top_path = str(kvstore.get("path", "")), str(leaf.get("path", ""))
    candidates = [os.path.join(kv_path, top_path), top_path, kv_path, by_key]
    written = os.path.normpath(os.path.join(kv_path, top_path)) if kv_path or top_path else ""
    if written:  # an absolute path of the machine that wrote it: keep the last component
        candidates.append(os.path.basename(written))
    return [c for i, c in enumerate(candidates) if c and c not in candidates[:i]]


def _open_zarr(leaf: Any, directory: str, name: str) -> Any:
    """The opened zarr array of an external parameter, resolved under ``directory``."""
    import tensorstore as ts

    tried = []
    for relative in _relative_paths(leaf, name):
        candidate = os.path.join(directory, relative.lstrip("/"))
        tried.append(candidate)
        if not os.path.isfile(os.path.join(candidate, ".zarray")):
            continue
        spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": candidate}}
        try:
            store = ts.open(spec, open=True, read=True).result()
        except ValueError as error:
            raise T5xCheckpointError(
                f"t5x parameter '{name}': tensorstore cannot open '{candidate}': "
                f"{str(error).splitlines()[0]}"
            ) from None
        if store.dtype.name == "uint16":
            raise T5xCheckpointError(
                f"t5x parameter '{name}' is stored as uint16 (t5x checkpoint version 2 "
                "bfloat16); t5x itself refuses these: re-save it with a current t5x"
            )
        declared = leaf.get("metadata", {}).get("shape") if isinstance(leaf, dict) else None
        if declared is not None and tuple(declared) != tuple(store.shape):
            raise T5xCheckpointError(
                f"t5x parameter '{name}': the msgpack spec says shape {tuple(declared)} but "
                f"'{candidate}' holds {tuple(store.shape)}"
            )
        return store
    raise T5xCheckpointError(
        f"t5x parameter '{name}' is stored outside the msgpack file, but there is no zarr "
        f"array at '{tried[0]}'" + (f" (nor at {len(tried) - 1} other places)" if tried[1:] else "")
    )


# --- mapping onto amt_jax's MT3 -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParameterMap:
    """One parameter: its t5x name and shape, and amt_jax's name and shape."""

    t5x_name: str
    t5x_shape: tuple[int, ...]
    amt_name: str
    amt_shape: tuple[int, ...]


def vocabulary_for_rows(rows: int) -> str:
    """The released layout with ``rows`` embedding rows (1536 ``mt3``, 1664 ``ismir2021``)."""
    for layout in LAYOUT_INPUTS_LENGTH:
        if layouts.VocabularyConfig.named(layout).num_embeddings == rows:
            return layout
    known = ", ".join(
        f"{layouts.VocabularyConfig.named(name).num_embeddings} ({name})"
        for name in LAYOUT_INPUTS_LENGTH
    )
    raise T5xCheckpointError(
        f"t5x parameter '{EMBEDDING_NAME}' has {rows} rows; the released MT3 vocabularies "
        f"have {known}"
    )


def mt3_config_for(layout: str) -> MT3Config:
    """T5.1.1-small with the layout's vocabulary and the segment length its colab used."""
    return MT3Config.for_vocabulary(layout, inputs_length=LAYOUT_INPUTS_LENGTH[layout])


def _t5x_name(amt_name: str) -> str:
    return re.sub(r"(^|/)layers/(\d+)/", r"\1layers_\2/", amt_name)


def _t5x_shape(amt_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """t5x's DenseGeneral stores kernels as 2-D (product of input axes, of output axes)."""
    if len(shape) != 3:
        return shape
    module = amt_name.split("/")[-2]
    if module in ("query", "key", "value"):
        return (shape[0], shape[1] * shape[2])
    if module == "out":
        return (shape[0] * shape[1], shape[2])
    raise ValueError(f"no t5x layout known for the 3-D parameter {amt_name} {shape}")


@functools.lru_cache(maxsize=4)
def parameter_maps(config: MT3Config) -> Mapping[str, ParameterMap]:
    """Every parameter of amt_jax's MT3 under ``config``, keyed by its t5x name (read-only;
    cached, as building the abstract model takes about a second)."""
    from flax import nnx

    model = checkpoints.abstract_model("mt3", config)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    maps = {}
    for amt_name, shape in _leaf_shapes(nnx.to_pure_dict(params)).items():
        t5x_name = _t5x_name(amt_name)
        maps[t5x_name] = ParameterMap(t5x_name, _t5x_shape(amt_name, shape), amt_name, shape)
    return types.MappingProxyType(maps)


def _leaf_shapes(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    shapes = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            shapes.update(_leaf_shapes(value, name))
        else:
            shapes[name] = tuple(value.shape)
    return shapes


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def check_names(names: Any, maps: Mapping[str, ParameterMap]) -> None:
    """One-line errors for a missing or an unexpected parameter (names only: no array is
    opened, so this fails fast)."""
    missing = sorted(set(maps) - set(names))
    if missing:
        first = maps[missing[0]]
        raise T5xCheckpointError(
            f"t5x checkpoint lacks parameter '{first.t5x_name}' (shape {first.t5x_shape})"
            f"{_more(missing)}"
        )
    extra = sorted(set(names) - set(maps))
    if extra:
        raise T5xCheckpointError(
            f"t5x checkpoint has parameter '{extra[0]}' that amt_jax's MT3 does not{_more(extra)}"
        )


def check_parameters(shapes: Mapping[str, tuple[int, ...]], maps: Mapping[str, ParameterMap]):
    """One-line errors for a missing, an unexpected or a misshapen parameter."""
    check_names(shapes, maps)
    misshapen = sorted(name for name, entry in maps.items() if shapes[name] != entry.t5x_shape)
    if misshapen:
        entry = maps[misshapen[0]]
        raise T5xCheckpointError(
            f"t5x parameter '{entry.t5x_name}' has shape {shapes[entry.t5x_name]}, amt_jax's "
            f"MT3 expects {entry.t5x_shape}{_more(misshapen)}"
        )


def to_amt_params(
    arrays: Mapping[str, np.ndarray], maps: Mapping[str, ParameterMap]
) -> dict[str, np.ndarray]:
    """t5x-named float32 arrays -> amt_jax names and shapes (attention kernels unflattened)."""
    check_parameters({name: tuple(np.shape(a)) for name, a in arrays.items()}, maps)
    return {
        entry.amt_name: np.asarray(arrays[name], np.float32).reshape(entry.amt_shape)
        for name, entry in maps.items()
    }


# --- the import -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImportResult:
    outdir: str
    source: str
    vocabulary: str
    step: int | None
    num_parameters: int


def import_mt3_checkpoint(
    source: str | os.PathLike, outdir: str | os.PathLike, *, step: int | None = None
) -> ImportResult:
    """Convert a t5x MT3 checkpoint into an amt_jax model directory ``outdir``.

    Names and shapes are all checked before any zarr array is read, so a checkpoint that
    does not fit fails fast with the name of the first parameter that does not.
    """
    checkpoint = open_t5x_checkpoint(source, step)
    if EMBEDDING_NAME not in checkpoint.leaves:
        raise T5xCheckpointError(
            f"t5x checkpoint lacks parameter '{EMBEDDING_NAME}' (needed to tell the vocabulary)"
        )
    layout = vocabulary_for_rows(checkpoint.shape(EMBEDDING_NAME)[0])
    config = mt3_config_for(layout)
    maps = parameter_maps(config)
    check_names(checkpoint.leaves, maps)
    check_parameters(checkpoint.shapes(), maps)
    params = to_amt_params(checkpoint.read(), maps)
    write_model_directory(outdir, config, params, step=checkpoint.step)
    return ImportResult(
        os.fspath(outdir),
        checkpoint.path,
        layout,
        checkpoint.step,
        sum(math.prod(a.shape) for a in params.values()),
    )


def write_model_directory(
    outdir: str | os.PathLike,
    config: MT3Config,
    params: Mapping[str, np.ndarray],
    *,
    step: int | None = None,
) -> str:
    """``outdir/{model.json, params.npz}`` as ``export_params`` writes them.

    The npz is not compressed: float weights barely compress, and zlib over 180 MB costs
    seconds on every import (``np.load`` reads either form).
    """
    outdir = os.fspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    checkpoints.write_record(outdir, config)
    flat = {f"params/{name}": np.asarray(array) for name, array in params.items()}
    flat["step"] = np.asarray(-1 if step is None else step)
    path = os.path.join(outdir, checkpoints.PARAMS_FILE)
    np.savez(path + ".tmp.npz", **flat)
    os.replace(path + ".tmp.npz", path)
    return path


# --- the parity forward -----------------------------------------------------------------------


def parity_forward(
    model: Any,
    encoder_inputs_btf: np.ndarray,
    decoder_input_tokens_bl: np.ndarray,
    decoder_target_tokens_bl: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Encoder output and teacher-forced logits, deterministic, float32, matmuls "highest".

    For comparing amt_jax with another MT3 implementation on the same weights: the encoder
    runs on log-mel frames [batch, frames, 512] (no mask, as MT3), the decoder on the given
    input tokens with a causal mask; ``decoder_target_tokens_bl`` adds t5x's padding masks
    (targets == 0 are padding), as MT3's ``Transformer.decode`` does.
    """
    import jax
    import jax.numpy as jnp

    config = model.config
    dtype = platform.resolve_dtype(config.dtype)
    if dtype != "float32" or config.param_dtype != "float32":
        raise ValueError(
            f"the parity forward needs a float32 model, this one computes in {dtype} "
            "(set MT3Config.dtype='float32')"
        )
    inputs_btf = np.asarray(encoder_inputs_btf)
    tokens_bl = np.asarray(decoder_input_tokens_bl)
    if inputs_btf.ndim != 3 or inputs_btf.shape[-1] != config.input_depth:
        raise ValueError(
            f"encoder_inputs must be [batch, frames, {config.input_depth}], got {inputs_btf.shape}"
        )
    if tokens_bl.ndim != 2 or tokens_bl.shape[0] != inputs_btf.shape[0]:
        raise ValueError(
            f"decoder_input_tokens must be [batch={inputs_btf.shape[0]}, length], got "
            f"{tokens_bl.shape}"
        )
    if not np.issubdtype(tokens_bl.dtype, np.integer):
        raise ValueError(f"decoder_input_tokens must be integers, got {tokens_bl.dtype}")
    if tokens_bl.size and not 0 <= tokens_bl.min() <= tokens_bl.max() < config.vocab_size:
        raise ValueError(f"decoder_input_tokens must lie in [0, {config.vocab_size})")
    longest = max(inputs_btf.shape[1], tokens_bl.shape[1])
    if longest > config.max_position:
        raise ValueError(f"sequences longer than the {config.max_position} positions MT3 has")
    targets_bl = None
    if decoder_target_tokens_bl is not None:
        targets_bl = jnp.asarray(np.asarray(decoder_target_tokens_bl), jnp.int32)
        if targets_bl.shape != tokens_bl.shape:
            raise ValueError(
                f"decoder_target_tokens {targets_bl.shape} must match decoder_input_tokens "
                f"{tokens_bl.shape}"
            )
    with jax.default_matmul_precision("highest"):
        encoded_btd = model.encode(jnp.asarray(inputs_btf, jnp.float32), deterministic=True)
        logits_blv = model.decode(
            jnp.asarray(tokens_bl, jnp.int32),
            encoded_btd,
            decoder_target_bl=targets_bl,
            deterministic=True,
        )
    return {
        "encoder_output": np.asarray(encoded_btd, np.float32),
        "logits": np.asarray(logits_blv, np.float32),
    }


def forward_files(model_dir: str, inputs_path: str, output_path: str) -> dict[str, np.ndarray]:
    """The ``forward`` subcommand: npz of ``encoder_inputs`` and ``decoder_input_tokens`` (and
    optionally ``decoder_target_tokens``) in, npz of ``encoder_output`` and ``logits`` out."""
    with np.load(inputs_path) as data:
        inputs = {name: data[name] for name in data.files}
    needed = ("encoder_inputs", "decoder_input_tokens")
    absent = [name for name in needed if name not in inputs]
    if absent:
        raise ValueError(f"'{inputs_path}' lacks {absent} (it has {sorted(inputs)})")
    model, _ = checkpoints.restore_model(model_dir)
    if model.family != "mt3":
        raise ValueError(f"'{model_dir}' holds a {model.family} model; forward runs MT3 only")
    outputs = parity_forward(
        model,
        inputs["encoder_inputs"],
        inputs["decoder_input_tokens"],
        inputs.get("decoder_target_tokens"),
    )
    np.savez(output_path, **outputs)
    return outputs


# --- command line -----------------------------------------------------------------------------

USAGE = """%(prog)s T5X_CHECKPOINT_DIR -o OUT [--step N]
       %(prog)s forward OUT --inputs X.npz --output Y.npz"""


def _import_parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=USAGE,
        description="Import a t5x MT3 checkpoint (gs://mt3/checkpoints/{mt3,ismir2021}) as an "
        "amt_jax model directory; then: amt-jax x.wav --model mt3 --checkpoint OUT",
    )
    parser.add_argument(
        "source",
        metavar="T5X_CHECKPOINT_DIR",
        help="a directory holding t5x's 'checkpoint' file (e.g. checkpoints/mt3), or a t5x "
        "run directory with checkpoint_<step>/ subdirectories",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="new model dir")
    parser.add_argument("--step", type=int, help="checkpoint_<step>/ of a run (default: latest)")
    return parser


def _forward_parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{prog or os.path.basename(sys.argv[0])} forward",
        description="Run an imported model's encoder on encoder_inputs (float32 [batch, "
        "frames, 512] log-mel) and its decoder teacher-forced on decoder_input_tokens (int32 "
        "[batch, length]; optional decoder_target_tokens add t5x's padding masks), float32, "
        "matmul precision 'highest'; writes encoder_output and logits.",
    )
    parser.add_argument("model_dir", metavar="OUT", help="an imported (or any MT3) model dir")
    parser.add_argument("--inputs", required=True, metavar="X.npz")
    parser.add_argument("--output", required=True, metavar="Y.npz")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["forward"]:
        args = _forward_parser(prog).parse_args(argv[1:])
        try:
            outputs = forward_files(args.model_dir, args.inputs, args.output)
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            print(f"error: {error}", file=sys.stderr)
            return 1
        shapes = ", ".join(f"{name} {value.shape}" for name, value in outputs.items())
        print(f"wrote {args.output}: {shapes}")
        return 0
    args = _import_parser(prog).parse_args(argv)
    try:
        result = import_mt3_checkpoint(args.source, args.output, step=args.step)
    except (checkpoints.CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    step = "" if result.step is None else f" step {result.step}"
    print(
        f"imported {result.source}{step}: {result.num_parameters:,} parameters, vocabulary "
        f"{result.vocabulary!r} -> {result.outdir}\n"
        f"transcribe: amt-jax AUDIO --model mt3 --checkpoint {result.outdir}"
    )
    return 0


__all__ = [
    "ImportResult",
    "ParameterMap",
    "T5xCheckpoint",
    "T5xCheckpointError",
    "check_names",
    "check_parameters",
    "decode_msgpack",
    "find_checkpoint_file",
    "import_mt3_checkpoint",
    "main",
    "mt3_config_for",
    "open_t5x_checkpoint",
    "parameter_maps",
    "parity_forward",
    "to_amt_params",
    "vocabulary_for_rows",
    "write_model_directory",
]

if __name__ == "__main__":
    sys.exit(main(prog="python -m amt_jax.models.t5x_import"))
