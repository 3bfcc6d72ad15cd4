"""The training loop: init-or-restore, train, checkpoint, evaluate, log.

:func:`train` is what ``python -m amt_jax.train`` runs (gin binds its arguments). A run
in a workdir that already holds checkpoints resumes from the latest one, including the
input iterator position and the models' RNG state, so a killed run continues exactly as
if it had not stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
import tqdm

from amt_jax import storage
from amt_jax.models import checkpoints, families
from amt_jax.partitioning import axes
from amt_jax.partitioning import mesh as mesh_lib
from amt_jax.partitioning import rules as rules_lib
from amt_jax.train import evaluation, summaries, train_state
from amt_jax.train.chips import chip_for_device_kind
from amt_jax.train.optimizers import Optimizer
from amt_jax.train.trainer import ModelFactory, ParamProjection, Trainer, measure_matmul_peak


class ResumableIterator(Protocol):
    """Host batches (``dict[str, np.ndarray]``) whose position can be saved and restored."""

    def __next__(self) -> dict[str, np.ndarray]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


# (shard_index=, num_shards=) -> this host's iterator
DataFactory = Callable[..., ResumableIterator]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    losses: list[float]  # training loss of every step run in this call


def _host_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(np.asarray(value)) for name, value in jax.device_get(metrics).items()}


def _profile_window(profile_steps: Sequence[int] | None) -> tuple[int, int] | None:
    if profile_steps is None:
        return None
    window = tuple(int(x) for x in profile_steps)
    if len(window) != 2 or not 1 <= window[0] <= window[1]:
        raise ValueError(
            f"profile_steps must be (first, last) with 1 <= first <= last, got {profile_steps!r}"
        )
    return window


def mfu_denominator(device: jax.Device | None = None) -> float:
    """Peak FLOP/s of one device for MFU: the published dense bf16 peak of a known
    accelerator (a timed matmul on an H100 measures launch overhead, not the chip), else a
    timed 1024^3 float32 matmul (CPUs, unlisted devices)."""
    device = device or jax.local_devices()[0]
    chip = chip_for_device_kind(device.device_kind)
    if chip is not None:
        logging.info(
            "MFU against the %s's published dense bf16 peak, %.0f TFLOP/s",
            chip.name,
            chip.peak_bf16_flops / 1e12,
        )
        return chip.peak_bf16_flops
    peak = measure_matmul_peak()
    logging.info(
        "MFU against a timed 1024^3 float32 matmul on %s (%s, no published peak known): "
        "%.0f GFLOP/s",
        device.platform,
        device.device_kind,
        peak / 1e9,
    )
    return peak


def train(
    *,
    workdir: str,
    model_factory: ModelFactory,
    optimizer: Optimizer,
    train_data: DataFactory,
    num_steps: int,
    batch_size: int | None = None,
    eval_data: DataFactory | None = None,
    eval_tracks: Callable[..., Iterable[evaluation.EvalTrack]] | None = None,
    mesh_data: int = -1,
    mesh_model: int = 1,
    num_devices: int | None = None,
    rules: str | Sequence[Sequence[Any]] = "data_model_parallel",
    microbatches: int = 1,
    seed: int = 0,
    param_projection: ParamProjection | None = None,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    async_checkpoints: bool = True,
    log_every: int = 100,
    eval_every: int | None = None,
    eval_loss_batches: int = 4,
    eval_batch_size: int | None = None,
    max_eval_tracks: int | None = None,
    decode_options: Mapping[str, Any] | None = None,
    with_velocity: bool = False,
    program_granularities: Sequence[str] = (),
    frame_convention: str = "mt3",
    eval_scoring_workers: int = 1,
    distributed: bool = False,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    measure_mfu: bool = True,
    progress_bar: bool = True,
    tensorboard: bool = True,
    profile_steps: Sequence[int] | None = None,
) -> TrainResult:
    """Train ``num_steps`` optimizer steps (in total, counting restored ones) and evaluate.

    Args:
      workdir: checkpoints, TensorBoard logs and the gin config go here.
      model_factory: ``rngs -> model`` (see :func:`amt_jax.train.trainer.model_factory`).
      optimizer: an :class:`~amt_jax.train.optimizers.Optimizer`.
      train_data: ``(shard_index=, num_shards=) -> ResumableIterator`` of this host's
        batches (global batch = host batch x number of hosts).
      batch_size: the expected global batch size, checked against the mesh up front.
      eval_data: like ``train_data``, for the eval loss (``eval_loss_batches`` batches).
      eval_tracks: ``(shard_index=, num_shards=) -> iterator of EvalTrack`` over this
        host's share of the full tracks for transcription metrics (each host transcribes
        its own share, the metrics are averaged over all; see
        :mod:`amt_jax.train.evaluation`), or ``() -> iterable`` of all tracks, of which
        each host keeps every ``num_processes``-th.
      mesh_data, mesh_model: mesh axis sizes (-1 = all remaining devices).
      num_devices: use only the first ``num_devices`` devices (default: all).
      rules: a rule-set name from :mod:`amt_jax.partitioning.rules` or explicit pairs.
      microbatches: gradient accumulation steps per optimizer step.
      eval_every: steps between evaluations (default: at the end only).
      decode_options: note-creation options for the eval transcriptions (the model's
        ``decode_option_defaults`` otherwise).
      frame_convention: how eval frame F1 is counted (``metrics.transcription``).
      eval_scoring_workers: mir_eval processes per host scoring tracks while the next
        one is transcribed (0: score in the training thread). They are spawned, so a
        script calling ``train`` needs an ``if __name__ == "__main__":`` guard.
      profile_steps: ``(first, last)`` steps (1-based, inclusive) to trace with
        ``jax.profiler`` into ``WORKDIR/profile`` (TensorBoard's profile plugin, Perfetto).

    The workdir's ``model.json`` records the model family and config (vocabulary and
    inference segmenting included), so ``amt-jax --checkpoint WORKDIR`` rebuilds exactly
    the model and decoder evaluated here.
    """
    profile_window = _profile_window(profile_steps)
    workdir = checkpoints.directory(workdir, orbax=True)  # local, file:// or e.g. gs://
    if distributed:
        mesh_lib.initialize_distributed(coordinator_address, num_processes, process_id)
    storage.makedirs(workdir)
    devices = None if num_devices is None else jax.devices()[:num_devices]
    mesh = mesh_lib.make_mesh(mesh_data, mesh_model, devices=devices)
    logical_rules = rules_lib.get_rules(rules)
    if batch_size is not None:
        mesh_lib.check_batch_divides(batch_size, mesh, microbatches)
    trainer = Trainer(
        model_factory,
        optimizer,
        mesh,
        logical_rules,
        seed=seed,
        microbatches=microbatches,
        param_projection=param_projection,
    )
    if jax.process_index() == 0:
        if getattr(trainer.abstract_model, "family", None) in families.FAMILIES:
            checkpoints.write_record(workdir, trainer.abstract_model.config)
        else:  # e.g. a test model: nothing to transcribe with later
            logging.info(
                "%s is not a registered family; no model.json written",
                type(trainer.abstract_model).__name__,
            )
    num_shards, shard_index = jax.process_count(), jax.process_index()
    data_iter = train_data(shard_index=shard_index, num_shards=num_shards)
    checkpointer = checkpoints.Checkpointer(
        workdir, save_every=checkpoint_every, keep=keep_checkpoints, async_save=async_checkpoints
    )
    writer = summaries.SummaryWriter(
        storage.join(workdir, "tensorboard"), enabled=tensorboard and jax.process_index() == 0
    )
    logging.info("Mesh %s; rules %s", dict(mesh.shape), rules if isinstance(rules, str) else "")

    with jax.set_mesh(mesh), axes.axis_rules(logical_rules):
        restored = checkpointer.restore(trainer.abstract_state())
        if restored is None:
            state = trainer.init_state()
            start_step = 0
        else:
            state, start_step = restored.state, restored.step
            if restored.data_state:
                data_iter.restore(restored.data_state)
            logging.info("Resuming from step %d", start_step)
    logging.info(
        "%s: %s trainable parameters",
        type(trainer.abstract_model).__name__,
        f"{train_state.count_params(state.params):,}",
    )

    evaluator = None
    if eval_tracks is not None:
        evaluator = evaluation.Evaluator(
            trainer,
            batch_size=eval_batch_size or batch_size or mesh.shape["data"],
            decode_options=decode_options,
            with_velocity=with_velocity,
            program_granularities=program_granularities,
            frame_convention=frame_convention,
            scoring_workers=eval_scoring_workers,
        )

    def run_eval(step: int) -> dict[str, float]:
        results: dict[str, float] = {}
        if eval_data is not None:
            eval_iter = eval_data(shard_index=shard_index, num_shards=num_shards)
            sums: dict[str, float] = {}
            for _ in range(eval_loss_batches):
                try:
                    batch = next(eval_iter)
                except StopIteration:
                    break
                for name, value in _host_scalars(
                    trainer.eval_step(state, trainer.global_batch(batch))
                ).items():
                    sums[name] = sums.get(name, 0.0) + value / eval_loss_batches
            results.update(sums)
        if evaluator is not None:
            # this host's share of the tracks; the metrics come back averaged over all
            tracks = evaluation.host_share(eval_tracks, max_tracks=max_eval_tracks)
            metrics, pairs = evaluator.evaluate(state, tracks)
            results.update(metrics)
            if pairs:  # host 0's first track is the split's first: the image as before
                track, estimate = pairs[0]
                writer.images(
                    step,
                    {"eval/piano_roll": evaluation.piano_roll_image(track.reference, estimate)},
                )
        writer.scalars(step, {f"eval/{name}": value for name, value in results.items()})
        return results

    peak_flops = mfu_denominator() if measure_mfu else None
    step_flops = None
    losses: list[float] = []
    interval: dict[str, float] = {}
    interval_steps, interval_start = 0, time.perf_counter()
    last_train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    examples_per_step = None
    bar = tqdm.tqdm(
        total=num_steps,
        initial=start_step,
        disable=not progress_bar or jax.process_index() > 0,
        desc="train",
        dynamic_ncols=True,
    )
    step = start_step
    tracing = False
    try:
        if start_step < num_steps:
            batch = trainer.global_batch(next(data_iter))
            examples_per_step = next(iter(batch.values())).shape[0]
            if measure_mfu:
                step_flops = trainer.train_step_flops(state, batch)
        while step < num_steps:
            if profile_window and step + 1 == profile_window[0]:
                jax.profiler.start_trace(storage.join(workdir, "profile"))
                tracing = True
            state, metrics = trainer.train_step(state, batch)
            step += 1
            if tracing and step >= profile_window[1]:
                jax.block_until_ready(metrics)
                jax.profiler.stop_trace()
                tracing = False
                logging.info(
                    "Profile of steps %d-%d in %s",
                    *profile_window,
                    storage.join(workdir, "profile"),
                )
            data_state = data_iter.state()  # position after exactly ``step`` batches
            if step < num_steps:
                batch = trainer.global_batch(next(data_iter))  # overlaps the device step
            values = _host_scalars(metrics)
            if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
                checkpointer.wait()
                last_good = checkpointer.latest_step()
                raise NonFiniteLossError(
                    f"Non-finite training loss {values['loss']} (gradient norm "
                    f"{values['grad_norm']}) at step {step}; stopped without saving. "
                    f"Last good checkpoint: "
                    f"{'step ' + str(last_good) if last_good is not None else 'none'} in "
                    f"{checkpointer.directory}. Lower the learning rate or check the data."
                )
            losses.append(values["loss"])
            for name, value in values.items():
                interval[name] = interval.get(name, 0.0) + value
            interval_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
            if checkpointer.should_save(step, num_steps):
                checkpointer.save(step, state, data_state)
            if step % log_every == 0 or step == num_steps:
                elapsed = time.perf_counter() - interval_start
                summary = {f"train/{k}": v / interval_steps for k, v in interval.items()}
                summary["train/steps_per_second"] = interval_steps / elapsed
                summary["train/examples_per_second"] = interval_steps * examples_per_step / elapsed
                if step_flops and peak_flops:
                    summary["train/mfu"] = step_flops * interval_steps / elapsed / peak_flops
                writer.scalars(step, summary)
                last_train_metrics = summary
                interval, interval_steps, interval_start = {}, 0, time.perf_counter()
            if eval_every and step % eval_every == 0 and step != num_steps:
                eval_metrics = run_eval(step)
        if eval_data is not None or evaluator is not None:
            eval_metrics = run_eval(step)
            logging.info("Eval at step %d: %s", step, eval_metrics)
    finally:
        if tracing:  # stopped (or failed) inside the window: keep what was traced
            jax.profiler.stop_trace()
        bar.close()
        checkpointer.close()
        writer.close()
        if hasattr(data_iter, "close"):  # e.g. grain worker processes
            data_iter.close()
        if evaluator is not None:
            evaluator.close()
    return TrainResult(step, last_train_metrics, eval_metrics, losses)
