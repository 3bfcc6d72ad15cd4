"""A workdir knows how to be read: the model record, orbax checkpoints, exported params.

One place that talks to orbax (``CheckpointManager`` + ``args``), used by the trainer (save
and resume the whole train state) and by evaluation / transcription (restore a model).

A training workdir holds

- ``model.json``: the model record (family + full model config, which includes the
  vocabulary of MT3 and the inference segmenting of O&F), written when training starts;
- ``checkpoints/<step>/{state,data}``: the train state and the input iterator position.

An *exported* model directory (``reference_runs/<family>/``) holds ``model.json`` and
``params.npz`` (parameters and model state only, no optimizer), and loads the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import urllib.parse
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from amt_jax.models import families

RECORD_FILE = "model.json"
PARAMS_FILE = "params.npz"
CHECKPOINT_DIR = "checkpoints"
RECORD_VERSION = 1


class CheckpointError(ValueError):
    """A workdir or checkpoint that cannot be used; the message says what to do."""


# --- where things are written ---------------------------------------------------------------

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def local_directory(path: str | os.PathLike, what: str = "workdir") -> str:
    """A local or mounted directory path; ``file://`` URLs are accepted and unwrapped.

    Any other URL (``gs://``, ``s3://``, ...) is a clear error: ``os.makedirs`` and ``open``
    would otherwise write it under the current directory as ``./gs:/bucket/...`` and lose
    nothing loudly. Mount remote storage (e.g. gcsfuse) and pass the mount path.
    """
    text = os.fspath(path)
    match = _URL_SCHEME.match(text)
    if match is None:
        return text
    scheme = match.group(1).lower()
    if scheme == "file":
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise CheckpointError(f"{what} '{text}': file:// URLs must name a local path")
        return urllib.parse.unquote(parsed.path)
    raise CheckpointError(
        f"{what} '{text}': {scheme}:// storage is not supported; amt_jax writes checkpoints, "
        "configs and TensorBoard logs to a local or mounted filesystem (mount the bucket, "
        "e.g. with gcsfuse, and pass the mount path)"
    )


# --- the model record -----------------------------------------------------------------------


def write_record(workdir: str | os.PathLike, config: Any) -> str:
    """Write ``model.json`` (family + config); an existing, different record is an error."""
    workdir = local_directory(workdir)
    family = families.of_config(config)
    record = {
        "version": RECORD_VERSION,
        "family": family.name,
        "config": families.config_to_dict(config),
    }
    path = os.path.join(os.fspath(workdir), RECORD_FILE)
    if os.path.exists(path):
        old_family, old_config = read_record(workdir)
        if old_family != family.name or old_config != config:
            diff = _config_difference(old_config, config) if old_family == family.name else ""
            raise CheckpointError(
                f"workdir '{workdir}' holds a {old_family} model trained with another config"
                f"{diff}; use a new --workdir or the config it was trained with"
            )
        return path
    os.makedirs(os.fspath(workdir), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def _config_difference(old: Any, new: Any) -> str:
    old_d, new_d = families.config_to_dict(old), families.config_to_dict(new)
    changed = [k for k in sorted(set(old_d) | set(new_d)) if old_d.get(k) != new_d.get(k)]
    if not changed:
        return ""
    key = changed[0]
    return f" ({key}: recorded {old_d.get(key)!r}, given {new_d.get(key)!r})"


def read_record(directory: str | os.PathLike) -> tuple[str, Any]:
    """``(family name, config)`` from a workdir's or an export's ``model.json``."""
    directory = local_directory(directory, "checkpoint")
    path = os.path.join(directory, RECORD_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"'{directory}' has no {RECORD_FILE}: not an amt_jax training workdir or exported "
            "model (train with python -m amt_jax.train, which writes it)"
        )
    try:
        with open(path) as f:
            record = json.load(f)
        family = families.get(record["family"])
        config = families.config_from_dict(family.config_class, record["config"])
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"'{path}' is not a valid model record: {error}") from None
    return family.name, config


def model_directory(path: str | os.PathLike) -> str:
    """A workdir, its ``checkpoints/`` or an export directory -> the directory of the record."""
    path = os.path.abspath(local_directory(path, "checkpoint"))
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' is not a directory")
    if os.path.basename(path) == CHECKPOINT_DIR and not os.path.isfile(
        os.path.join(path, RECORD_FILE)
    ):
        return os.path.dirname(path)
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
        self.directory = os.path.join(os.path.abspath(local_directory(workdir)), CHECKPOINT_DIR)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,  # the loop decides when; force-saves are then not skipped
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
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


def _restore_orbax(directory: str, target: dict[str, Any], step: int | None) -> tuple[int, dict]:
    checkpoints = os.path.join(directory, CHECKPOINT_DIR)
    if not os.path.isdir(checkpoints):
        raise CheckpointError(f"'{directory}' has neither {CHECKPOINT_DIR}/ nor {PARAMS_FILE}")
    manager = ocp.CheckpointManager(checkpoints, item_names=("state", "data"))
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


def checkpoint_steps(path: str | os.PathLike) -> list[int]:
    """The saved train-state steps of a workdir, oldest first (an export has none)."""
    directory = os.path.join(model_directory(path), CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        return []
    manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
    try:
        return sorted(int(step) for step in manager.all_steps())
    finally:
        manager.close()


def restore_model(path: str | os.PathLike, *, step: int | None = None) -> tuple[nnx.Module, int]:
    """The model recorded in a workdir (or export) with its trained parameters, in eval
    mode on the host, and the step it was saved at (exports: the step they record).

    Only ``params`` and ``model_state`` are read, so the optimizer and the training mesh do
    not matter.
    """
    directory = model_directory(path)
    family, config = read_record(directory)
    abstract = abstract_model(family, config)
    graphdef, params_template, rng_template, rest_template = nnx.split(
        abstract, nnx.Param, nnx.RngState, ...
    )
    target = {"params": _host_target(params_template), "model_state": _host_target(rest_template)}
    params_path = os.path.join(directory, PARAMS_FILE)
    if os.path.isfile(params_path):
        with np.load(params_path) as data:
            flat = {name: data[name] for name in data.files}
        restored = {part: _unflatten_into(target[part], flat, part) for part in target}
        step = int(flat.get("step", -1))
    else:
        # orbax cannot restore into an empty subtree (e.g. MT3 keeps no model state)
        present = {part: tree for part, tree in target.items() if jax.tree.leaves(tree)}
        step, restored = _restore_orbax(directory, present, step)
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
            f"'{directory}' step {step} does not fit the {family} model in {RECORD_FILE}: "
            f"{'; '.join(mismatched[:3])}"
        )
    params_state = jax.tree.map(lambda x: x, params_template)
    nnx.replace_by_pure_dict(params_state, restored["params"])
    rest_state = jax.tree.map(lambda x: x, rest_template)
    nnx.replace_by_pure_dict(rest_state, restored["model_state"])
    model = nnx.merge(graphdef, params_state, _fresh_rng_state(rng_template), rest_state)
    model.eval()
    return model, step


def export_params(
    workdir: str | os.PathLike, outdir: str | os.PathLike, *, step: int | None = None
) -> str:
    """Write ``outdir/{model.json, params.npz}``: a workdir's model without the optimizer."""
    outdir = local_directory(outdir, "export directory")
    model, step = restore_model(workdir, step=step)
    _, params, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    flat = _flatten({"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(rest)})
    flat["step"] = np.asarray(step)
    os.makedirs(os.fspath(outdir), exist_ok=True)
    write_record(outdir, model.config)
    path = os.path.join(os.fspath(outdir), PARAMS_FILE)
    np.savez_compressed(path + ".tmp.npz", **flat)
    os.replace(path + ".tmp.npz", path)
    return path


__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "Checkpointer",
    "RECORD_FILE",
    "Restored",
    "checkpoint_steps",
    "abstract_model",
    "export_params",
    "local_directory",
    "model_directory",
    "read_record",
    "restore_model",
    "write_record",
]
