"""A workdir knows how to be read: the model record, orbax checkpoints, exported params.

One place that talks to orbax (``CheckpointManager`` + ``args``), used by the trainer (save
and resume the whole train state) and by evaluation / transcription (restore a model).

A training workdir holds

- ``model.json``: the model record (family + full model config, which includes the
  vocabulary of MT3 and the inference segmenting of O&F), written when training starts;
- ``checkpoints/<step>/{state,data}``: the train state and the input iterator position.

An *exported* model directory (``reference_runs/<family>/``) holds ``model.json`` and
``params.npz`` (parameters and model state only, no optimizer), and loads the same way.

Every directory may be a local path or a URL that :mod:`amt_jax.storage` can use (``gs://``
for everything; ``ram://`` and other tf.io.gfile-only schemes for records and exports but
not orbax checkpoints); anything else is a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from amt_jax import storage
from amt_jax.models import families

RECORD_FILE = "model.json"
PARAMS_FILE = "params.npz"
CHECKPOINT_DIR = "checkpoints"
RECORD_VERSION = 1


class CheckpointError(ValueError):
    """A workdir or checkpoint that cannot be used; the message says what to do."""


# --- where things are written ---------------------------------------------------------------


def _storage_errors(function):
    """Storage problems (unusable scheme, unreachable bucket) surface as CheckpointErrors."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except storage.StorageError as error:
            raise CheckpointError(str(error)) from None

    return wrapper


@_storage_errors
def directory(path: str | os.PathLike, what: str = "workdir", *, orbax: bool = False) -> str:
    """A local directory (``file://`` unwrapped) or a usable URL (see :mod:`amt_jax.storage`);
    ``orbax``: orbax checkpoints must be readable and writable there too."""
    return storage.resolve(path, what, checkpoints=orbax)


def local_directory(path: str | os.PathLike, what: str = "workdir") -> str:
    """A local or mounted directory path, for code that only works on local files;
    ``file://`` URLs are accepted and unwrapped.

    Any other URL (``gs://``, ``s3://``, ...) is a clear error: ``os.makedirs`` and ``open``
    would otherwise write it under the current directory as ``./gs:/bucket/...``.
    """
    text = os.fspath(path)
    if not storage.is_remote(text):
        return directory(text, what)
    raise CheckpointError(
        f"{what} '{text}': {storage.scheme(text)}:// storage is not supported by this command, "
        "which reads and writes local files; mount the bucket (e.g. with gcsfuse) and pass "
        "the mount path"
    )


# --- the model record -----------------------------------------------------------------------


@_storage_errors
def write_record(workdir: str | os.PathLike, config: Any) -> str:
    """Write ``model.json`` (family + config); an existing, different record is an error."""
    workdir = directory(workdir)
    family = families.of_config(config)
    record = {
        "version": RECORD_VERSION,
        "family": family.name,
        "config": families.config_to_dict(config),
    }
    path = storage.join(workdir, RECORD_FILE)
    if storage.exists(path):
        old_family, old_config = read_record(workdir)
        if old_family != family.name or old_config != config:
            diff = _config_difference(old_config, config) if old_family == family.name else ""
            raise CheckpointError(
                f"workdir '{workdir}' holds a {old_family} model trained with another config"
                f"{diff}; use a new --workdir or the config it was trained with"
            )
        return path
    storage.makedirs(workdir)
    storage.write_text(path, json.dumps(record, indent=2, sort_keys=True))
    return path


def _config_difference(old: Any, new: Any) -> str:
    old_d, new_d = families.config_to_dict(old), families.config_to_dict(new)
    changed = [k for k in sorted(set(old_d) | set(new_d)) if old_d.get(k) != new_d.get(k)]
    if not changed:
        return ""
    key = changed[0]
    return f" ({key}: recorded {old_d.get(key)!r}, given {new_d.get(key)!r})"


@_storage_errors
def read_record(model_dir: str | os.PathLike) -> tuple[str, Any]:
    """``(family name, config)`` from a workdir's or an export's ``model.json``."""
    model_dir = directory(model_dir, "checkpoint")
    path = storage.join(model_dir, RECORD_FILE)
    if not storage.isfile(path):
        raise CheckpointError(
            f"'{model_dir}' has no {RECORD_FILE}: not an amt_jax training workdir or exported "
            "model (train with python -m amt_jax.train, which writes it)"
        )
    try:
        record = json.loads(storage.read_text(path))
        family = families.get(record["family"])
        config = families.config_from_dict(family.config_class, record["config"])
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"'{path}' is not a valid model record: {error}") from None
    return family.name, config


@_storage_errors
def model_directory(path: str | os.PathLike) -> str:
    """A workdir, its ``checkpoints/`` or an export directory -> the directory of the record."""
    path = storage.absolute(directory(path, "checkpoint"))
    if not storage.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' is not a directory")
    if storage.basename(path) == CHECKPOINT_DIR and not storage.isfile(
        storage.join(path, RECORD_FILE)
    ):
        return storage.dirname(path)
    return path


# --- train-state checkpoints ----------------------------------------------------------------


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    data_state: dict[str, Any] | None


class Checkpointer:
    """Periodic, keep-N, optionally async checkpoints under ``<workdir>/checkpoints``.

    A step holds ``state`` (the train-state pytree, ``StandardSave``, restored straight
    into the trainer's shardings) and ``data`` (the JSON position of the input iterator,
    so a resumed run sees exactly the batches an uninterrupted run would have seen).
    """

    def __init__(
        self, workdir: str, *, save_every: int = 1000, keep: int = 3, async_save: bool = True
    ):
        workdir = storage.absolute(directory(workdir, orbax=True))
        self.directory = storage.join(workdir, CHECKPOINT_DIR)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,  # the loop decides when; force-saves are then not skipped
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            storage.orbax_path(self.directory), options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int, last_step: int) -> bool:
        return step % self.save_every == 0 or step == last_step

    def save(self, step: int, state: Any, data_state: dict[str, Any] | None) -> None:
        args = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_state or {})}
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> Restored | None:
        """Restore ``step`` (default: latest) into ``abstract_state``'s shapes and shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        logging.info("Restored checkpoint step %d from %s", step, self.directory)
        return Restored(step, restored.state, restored.data or None)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# --- models from a workdir or an export -----------------------------------------------------


def abstract_model(family: str, config: Any) -> nnx.Module:
    """The model's structure (shapes only, nothing allocated), in eval mode."""
    model_class = families.get(family).model_class
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: model_class.from_config(config, rngs=nnx.Rngs(0)))
    model.eval()
    return model


def _fresh_rng_state(template: nnx.State) -> nnx.State:
    """Concrete dropout keys / counters for an abstract model (unused in eval mode, and not
    worth restoring: typed PRNG keys have no host dtype)."""

    def fresh(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            count = int(np.prod(leaf.shape))
            return jax.random.split(jax.random.key(0), count).reshape(leaf.shape)
        return jax.numpy.zeros(leaf.shape, leaf.dtype)

    return jax.tree.map(fresh, template)


def _host_target(template: nnx.State) -> dict[str, Any]:
    return jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), nnx.to_pure_dict(template))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = np.asarray(value)
    return flat


def _unflatten_into(target: dict[str, Any], flat: dict[str, np.ndarray], prefix: str) -> Any:
    out = {}
    for key, value in target.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out[key] = _unflatten_into(value, flat, name)
        elif name not in flat:
            raise CheckpointError(f"exported parameters lack '{name}'")
        else:
            out[key] = flat[name]
    return out


def _orbax_manager(model_dir: str) -> ocp.CheckpointManager:
    """A read-only view of ``<model_dir>/checkpoints`` (remote: checked for orbax first)."""
    storage.check_usable(model_dir, "checkpoint", checkpoints=True)
    path = storage.orbax_path(storage.join(model_dir, CHECKPOINT_DIR))
    return ocp.CheckpointManager(path, item_names=("state", "data"))


def _restore_orbax(model_dir: str, target: dict[str, Any], step: int | None) -> tuple[int, dict]:
    checkpoints = storage.join(model_dir, CHECKPOINT_DIR)
    if not storage.isdir(checkpoints):
        raise CheckpointError(f"'{model_dir}' has neither {CHECKPOINT_DIR}/ nor {PARAMS_FILE}")
    manager = _orbax_manager(model_dir)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint steps under '{checkpoints}'")
        restore_args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray), target)
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=target, restore_args=restore_args, partial_restore=True
                    )
                ),
            ).state
        except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
            raise CheckpointError(
                f"checkpoint '{checkpoints}' step {step} does not fit the model in "
                f"{RECORD_FILE}. Orbax said: {str(error).splitlines()[0][:300]}"
            ) from error
    finally:
        manager.close()
    return step, restored


@_storage_errors
def checkpoint_steps(path: str | os.PathLike) -> list[int]:
    """The saved train-state steps of a workdir, oldest first (an export has none)."""
    model_dir = model_directory(path)
    if not storage.isdir(storage.join(model_dir, CHECKPOINT_DIR)):
        return []
    manager = _orbax_manager(model_dir)
    try:
        return sorted(int(step) for step in manager.all_steps())
    finally:
        manager.close()


@_storage_errors
def restore_model(path: str | os.PathLike, *, step: int | None = None) -> tuple[nnx.Module, int]:
    """The model recorded in a workdir (or export) with its trained parameters, in eval
    mode on the host, and the step it was saved at (exports: the step they record).

    Only ``params`` and ``model_state`` are read, so the optimizer and the training mesh do
    not matter.
    """
    model_dir = model_directory(path)
    family, config = read_record(model_dir)
    abstract = abstract_model(family, config)
    graphdef, params_template, rng_template, rest_template = nnx.split(
        abstract, nnx.Param, nnx.RngState, ...
    )
    target = {"params": _host_target(params_template), "model_state": _host_target(rest_template)}
    params_path = storage.join(model_dir, PARAMS_FILE)
    if storage.isfile(params_path):
        source = (
            io.BytesIO(storage.read_bytes(params_path))
            if storage.is_remote(params_path)
            else params_path
        )
        with np.load(source) as data:
            flat = {name: data[name] for name in data.files}
        restored = {part: _unflatten_into(target[part], flat, part) for part in target}
        step = int(flat.get("step", -1))
    else:
        # orbax cannot restore into an empty subtree (e.g. MT3 keeps no model state)
        present = {part: tree for part, tree in target.items() if jax.tree.leaves(tree)}
        step, restored = _restore_orbax(model_dir, present, step)
        restored = {part: restored.get(part, target[part]) for part in target}
    mismatched = [
        f"{jax.tree_util.keystr(p)}: saved {np.shape(saved)}, model {np.shape(wanted)}"
        for part in target
        for (p, saved), (_, wanted) in zip(
            jax.tree.leaves_with_path(restored[part]), jax.tree.leaves_with_path(target[part])
        )
        if np.shape(saved) != np.shape(wanted)
    ]
    if mismatched:
        raise CheckpointError(
            f"'{model_dir}' step {step} does not fit the {family} model in {RECORD_FILE}: "
            f"{'; '.join(mismatched[:3])}"
        )
    params_state = jax.tree.map(lambda x: x, params_template)
    nnx.replace_by_pure_dict(params_state, restored["params"])
    rest_state = jax.tree.map(lambda x: x, rest_template)
    nnx.replace_by_pure_dict(rest_state, restored["model_state"])
    model = nnx.merge(graphdef, params_state, _fresh_rng_state(rng_template), rest_state)
    model.eval()
    return model, step


@_storage_errors
def export_params(
    workdir: str | os.PathLike, outdir: str | os.PathLike, *, step: int | None = None
) -> str:
    """Write ``outdir/{model.json, params.npz}``: a workdir's model without the optimizer."""
    outdir = directory(outdir, "export directory")
    model, step = restore_model(workdir, step=step)
    _, params, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    flat = _flatten({"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(rest)})
    flat["step"] = np.asarray(step)
    storage.makedirs(outdir)
    write_record(outdir, model.config)
    path = storage.join(outdir, PARAMS_FILE)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **flat)
    storage.write_bytes(path, buffer.getvalue())
    return path


__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "Checkpointer",
    "RECORD_FILE",
    "Restored",
    "checkpoint_steps",
    "abstract_model",
    "directory",
    "export_params",
    "local_directory",
    "model_directory",
    "read_record",
    "restore_model",
    "write_record",
]
