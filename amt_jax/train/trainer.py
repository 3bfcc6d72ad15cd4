"""One trainer for every model family: jitted, sharded train / eval / predict steps.

The trainer only knows the Model protocol (``amt_jax.models.base``): it builds the model
from a factory, splits it into a static graph definition plus array trees, shards those
trees from the parameters' logical-axis annotations through the rules in force, and jits

- ``train_step(state, batch) -> (state, metrics)`` with donated state,
- ``eval_step(state, batch) -> metrics`` (dropout off),
- ``predict(state, batch) -> outputs`` (dropout off),

each with explicit ``in_shardings`` / ``out_shardings`` on the ``data x model`` mesh.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from amt_jax.models import platform
from amt_jax.models.base import TranscriptionModel, merge_model, split_model
from amt_jax.partitioning import axes
from amt_jax.partitioning import mesh as mesh_lib
from amt_jax.partitioning import rules as rules_lib
from amt_jax.train.optimizers import Optimizer
from amt_jax.train.train_state import TrainState

ModelFactory = Callable[[nnx.Rngs], TranscriptionModel]
# A projection applied to the model after every update (e.g. NMP's unit-norm constraint).
ParamProjection = Callable[[TranscriptionModel], None]


def model_factory(model_class: type[TranscriptionModel], config: Any) -> ModelFactory:
    """``rngs -> model_class.from_config(config, rngs=rngs)``."""
    return functools.partial(_build, model_class, config)


def _build(model_class, config, rngs: nnx.Rngs) -> TranscriptionModel:
    return model_class.from_config(config, rngs=rngs)


def _default_projection(model: TranscriptionModel) -> ParamProjection | None:
    """Models with a constraint expose ``project_constraints()`` (in place, after each update)."""
    project = getattr(type(model), "project_constraints", None)
    return (lambda m: m.project_constraints()) if callable(project) else None


def numeric_batch(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The array entries of a host batch (ids and other strings stay on the host)."""
    out = {}
    for name, value in batch.items():
        array = np.asarray(value)
        if array.dtype.kind in "biuf":
            out[name] = array
    return out


class Trainer:
    """Builds the sharded train state and the jitted steps for one model + optimizer."""

    def __init__(
        self,
        model_factory: ModelFactory,
        optimizer: Optimizer,
        mesh: Mesh,
        rules: axes.LogicalRules = axes.DEFAULT_RULES,
        *,
        seed: int = 0,
        microbatches: int = 1,
        param_projection: ParamProjection | None = None,
    ):
        self.mesh = mesh
        self.rules = tuple(rules)
        self.optimizer = optimizer
        self.seed = seed
        self.microbatches = microbatches
        self._factory = model_factory

        # platform-dependent settings (``dtype="auto"``) follow the devices the steps are
        # compiled for, not the host
        with nnx.use_eager_sharding(False), platform.building_for(self.platform):
            abstract_model = nnx.eval_shape(lambda: model_factory(nnx.Rngs(seed)))
        self.abstract_model = abstract_model
        self.param_projection = param_projection or _default_projection(abstract_model)
        abstract_model.eval()
        self.graphdef_eval = nnx.graphdef(abstract_model)
        abstract_model.train()
        self.graphdef_train, self._params_template, self._rest_template = split_model(
            abstract_model
        )

        param_shardings = rules_lib.state_shardings(self._params_template, mesh, self.rules)
        rest_shardings = rules_lib.state_shardings(self._rest_template, mesh, self.rules)
        abstract_params = jax.tree.map(
            lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
            nnx.to_pure_dict(self._params_template),
            param_shardings,
        )
        abstract_opt_state = jax.eval_shape(optimizer.tx.init, abstract_params)
        replicated = rules_lib.replicated(mesh)

        def opt_leaf_sharding(leaf, param):
            # moments shaped like their parameter follow its sharding; factored rows /
            # columns and counters are small and replicated
            if hasattr(leaf, "shape") and tuple(leaf.shape) == tuple(param.shape):
                return param.sharding
            return replicated

        opt_shardings = optax.tree_map_params(
            optimizer.tx,
            opt_leaf_sharding,
            abstract_opt_state,
            abstract_params,
            transform_non_params=lambda _: replicated,
        )
        self.state_shardings = TrainState(
            step=replicated,
            params=param_shardings,
            model_state=rest_shardings,
            opt_state=opt_shardings,
        )
        self._jit_cache: dict[Any, Callable] = {}

    # ------------------------------------------------------------------ state
    @property
    def platform(self) -> str:
        """Platform of the mesh's devices (``"tpu"`` in an AOT compile from a CPU host)."""
        return self.mesh.devices.flat[0].platform

    def _context(self):
        return _MeshContext(self.mesh, self.rules)

    def _init(self) -> TrainState:
        with nnx.use_eager_sharding(False):
            model = self._factory(nnx.Rngs(self.seed))
        model.train()
        _, params, rest = split_model(model)
        params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=rest,
            opt_state=self.optimizer.tx.init(params),
        )

    def init_state(self) -> TrainState:
        """Initialise parameters and optimizer state directly into their shardings."""
        with self._context():
            return jax.jit(self._init, out_shardings=self.state_shardings)()

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state without computing it."""
        with self._context():
            shapes = jax.eval_shape(self._init)
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            shapes,
            self.state_shardings,
        )

    def model_from_state(self, state: TrainState, *, train: bool = False) -> TranscriptionModel:
        graphdef = self.graphdef_train if train else self.graphdef_eval
        return merge_model(
            graphdef, self._params_template, self._rest_template, state.params, state.model_state
        )

    # ------------------------------------------------------------------ batches
    def batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, NamedSharding]:
        return {
            name: rules_lib.batch_sharding(self.mesh, np.ndim(value), self.rules)
            for name, value in batch.items()
        }

    def global_batch(self, host_batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """This host's slice of the batch -> one global array per feature."""
        host_batch = numeric_batch(host_batch)
        sizes = {v.shape[0] for v in host_batch.values()}
        if len(sizes) != 1:
            raise ValueError(f"Batch features have different batch sizes: {sorted(sizes)}")
        mesh_lib.check_batch_divides(
            sizes.pop() * jax.process_count(), self.mesh, self.microbatches
        )
        shardings = self.batch_shardings(host_batch)
        return {
            name: jax.make_array_from_process_local_data(shardings[name], value)
            for name, value in host_batch.items()
        }

    # ------------------------------------------------------------------ steps
    def _loss_and_grads(self, params, model_state, batch):
        def loss_fn(params, model_state, batch):
            model = merge_model(
                self.graphdef_train, self._params_template, self._rest_template, params, model_state
            )
            loss, metrics = model.loss(batch)
            _, _, new_rest = split_model(model)
            return loss, (metrics, nnx.to_pure_dict(new_rest))

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if self.microbatches == 1:
            (loss, (metrics, model_state)), grads = grad_fn(params, model_state, batch)
            return loss, metrics, model_state, grads

        count = self.microbatches

        def split(x):
            x = x.reshape((count, x.shape[0] // count) + x.shape[1:])
            return axes.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

        micro = jax.tree.map(split, batch)

        def body(carry, microbatch):
            grad_sum, loss_sum, metric_sum, rest = carry
            (loss, (metrics, rest)), grads = grad_fn(params, rest, microbatch)
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            metric_sum = jax.tree.map(jnp.add, metric_sum, metrics)
            return (grad_sum, loss_sum + loss, metric_sum, rest), None

        first = jax.tree.map(lambda x: x[0], micro)
        metric_shapes = jax.eval_shape(grad_fn, params, model_state, first)[0][1][0]
        init = (
            jax.tree.map(jnp.zeros_like, params),
            jnp.zeros((), jnp.float32),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes),
            model_state,
        )
        (grad_sum, loss_sum, metric_sum, model_state), _ = jax.lax.scan(body, init, micro)
        # mean over equal-size microbatches == the full-batch value for mean-reduced losses
        grads = jax.tree.map(lambda g: g / count, grad_sum)
        metrics = jax.tree.map(lambda m: m / count, metric_sum)
        return loss_sum / count, metrics, model_state, grads

    def _train_step(self, state: TrainState, batch):
        loss, metrics, model_state, grads = self._loss_and_grads(
            state.params, state.model_state, batch
        )
        updates, opt_state = self.optimizer.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if self.param_projection is not None:
            model = merge_model(
                self.graphdef_train, self._params_template, self._rest_template, params, model_state
            )
            self.param_projection(model)
            _, new_params, _ = split_model(model)
            params = nnx.to_pure_dict(new_params)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = jnp.asarray(self.optimizer.learning_rate(state.step))
        new_state = TrainState(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)

    def _eval_step(self, state: TrainState, batch):
        model = self.model_from_state(state, train=False)
        loss, metrics = model.loss(batch)
        metrics = dict(metrics)
        metrics["loss"] = loss
        return jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)

    def _predict(self, state: TrainState, batch):
        return self.model_from_state(state, train=False).predict(batch)

    def _jitted(self, name: str, batch: Mapping[str, jax.Array]) -> Callable:
        key = (name, tuple(sorted((k, v.ndim) for k, v in batch.items())))
        if key not in self._jit_cache:
            batch_shardings = self.batch_shardings(batch)
            replicated = rules_lib.replicated(self.mesh)
            if name == "train":
                fn = jax.jit(
                    self._train_step,
                    in_shardings=(self.state_shardings, batch_shardings),
                    out_shardings=(self.state_shardings, replicated),
                    donate_argnums=(0,),
                )
            elif name == "eval":
                fn = jax.jit(
                    self._eval_step,
                    in_shardings=(self.state_shardings, batch_shardings),
                    out_shardings=replicated,
                )
            else:
                fn = jax.jit(self._predict, in_shardings=(self.state_shardings, batch_shardings))
            self._jit_cache[key] = fn
        return self._jit_cache[key]

    def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]):
        """One optimizer update; ``state`` is donated (do not reuse it)."""
        with self._context():
            return self._jitted("train", batch)(state, batch)

    def eval_step(self, state: TrainState, batch: Mapping[str, jax.Array]):
        with self._context():
            return self._jitted("eval", batch)(state, batch)

    def predict(self, state: TrainState, batch: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """Model outputs gathered to every host as numpy."""
        with self._context():
            outputs = self._jitted("predict", batch)(state, batch)
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(outputs, tiled=True))

    def lower_train_step(self, state: TrainState, batch: Mapping[str, jax.Array]):
        """The jitted train step lowered for ``state`` and ``batch`` (arrays or
        ``jax.ShapeDtypeStruct``s with shardings), e.g. to compile it ahead of time for
        another topology (``amt_jax.train.aot``) or read XLA's cost analysis."""
        with self._context():
            return self._jitted("train", batch).lower(state, batch)

    def trace_train_step(self, fn: Callable, state: TrainState, batch: Mapping[str, jax.Array]):
        """``fn(train_step, state, batch)`` inside the mesh and logical-rule context, e.g.
        ``jax.eval_shape`` or a jaxpr walk (``precision.matmul_flops_by_dtype``)."""
        with self._context():
            return fn(self._train_step, state, batch)

    def train_step_flops(self, state: TrainState, batch: Mapping[str, jax.Array]) -> float | None:
        """FLOPs of one train step (XLA's cost analysis of the lowered program), if known."""
        with self._context():
            analysis = self._jitted("train", batch).lower(state, batch).cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0] if analysis else None
        flops = (analysis or {}).get("flops")
        return float(flops) if flops and flops > 0 else None


class _MeshContext:
    """``jax.set_mesh`` + the logical rules, for tracing and running the steps."""

    def __init__(self, mesh: Mesh, rules: axes.LogicalRules):
        self._mesh_cm = jax.set_mesh(mesh)
        self._rules_cm = axes.axis_rules(rules)

    def __enter__(self):
        self._mesh_cm.__enter__()
        self._rules_cm.__enter__()
        return self

    def __exit__(self, *exc):
        self._rules_cm.__exit__(*exc)
        return self._mesh_cm.__exit__(*exc)


def measure_matmul_peak(size: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul FLOP/s of one local device, the denominator of MFU."""
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best
