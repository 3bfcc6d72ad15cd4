"""Ahead-of-time compilation of the real train step for accelerators this machine lacks.

With libtpu installed (``pip install -e .[tpu-aot]``),
``jax.experimental.topologies.get_topology_desc`` describes a TPU slice (e.g. ``v5e:4x4``)
on a CPU-only host. We build the exact :class:`~amt_jax.train.trainer.Trainer` the
training loop builds, with the mesh laid over those TPU devices, give it abstract state
and batch (``ShapeDtypeStruct`` with shardings; nothing is allocated), and lower and
compile its jitted train step. XLA then reports per-device memory and FLOPs, so a
full-size job is shown to compile, shard and fit before any accelerator is rented
(MaxText's ``train_compile`` does the same).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from amt_jax.partitioning import mesh as mesh_lib
from amt_jax.partitioning import rules as rules_lib
from amt_jax.train import loop
from amt_jax.train.chips import CHIPS, GIB, ChipSpec
from amt_jax.train.optimizers import Optimizer
from amt_jax.train.trainer import ModelFactory, Trainer


class AOTError(ValueError):
    """A one-line, user-facing problem: bad topology, mesh, batch, or a step that does not fit."""


_TOPOLOGY_RE = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$")


def _quiet_libtpu() -> None:
    """libtpu on a host without TPUs: no metadata-server probing, no lockfile contention
    (a second process may already hold /tmp/libtpu_lockfile), little log noise."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")


def libtpu_available() -> bool:
    """Whether the libtpu PyPI wheel (the ``tpu-aot`` extra) is importable."""
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str) -> tuple[ChipSpec, list[jax.Device]]:
    """The chip spec and the (non-addressable) TPU devices of a topology like ``v5e:4x4``."""
    match = _TOPOLOGY_RE.match(topology)
    if match is None:
        raise AOTError(
            f"Bad topology name {topology!r}; expected e.g. 'v5e:2x2', 'v5e:4x4', 'v4:2x2x2'."
        )
    generation = match.group(1)
    if generation not in CHIPS or not generation.startswith("v"):
        known = sorted(k for k in CHIPS if k.startswith("v"))
        raise AOTError(f"Unknown TPU generation {generation!r} in {topology!r}; known: {known}.")
    if not libtpu_available():
        raise AOTError(
            "libtpu is not installed, so TPU topologies cannot be described; "
            "run `pip install -e .[tpu-aot]`."
        )
    _quiet_libtpu()
    from jax.experimental import topologies

    try:
        description = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    except Exception as error:  # libtpu raises JaxRuntimeError / ValueError with long text
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise AOTError(f"libtpu does not know topology {topology!r}: {first_line}") from None
    return CHIPS[generation], list(description.devices)


# ------------------------------------------------------------------------------ the job


@dataclasses.dataclass
class TrainJob:
    """What ``amt_jax.train.loop.train`` needs to build its trainer (gin's bindings)."""

    model_factory: ModelFactory
    optimizer: Optimizer
    batch_size: int
    mesh_data: int = -1
    mesh_model: int = 1
    rules: str | Sequence[Sequence[Any]] = "data_model_parallel"
    microbatches: int = 1
    seed: int = 0
    param_projection: Callable | None = None


def train_job_from_gin() -> TrainJob:
    """The job the parsed gin config would train (call after parsing gin files).

    Reads the bindings of ``amt_jax.train`` (the loop), so the compiled step is the one
    ``python -m amt_jax.train`` with the same gin files would run.
    """
    import gin

    bindings = gin.get_bindings("amt_jax.train")
    defaults = {
        name: p.default
        for name, p in inspect.signature(loop.train).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    values = {**defaults, **bindings}
    for name in ("model_factory", "optimizer", "batch_size"):
        if values.get(name) is None:
            raise AOTError(f"The gin config does not bind train.{name}; use a full run config.")
    fields = {f.name for f in dataclasses.fields(TrainJob)}
    return TrainJob(**{k: v for k, v in values.items() if k in fields})


def build_trainer(job: TrainJob, devices: Sequence[jax.Device]) -> Trainer:
    """The loop's trainer on a mesh over ``devices`` (abstract model; nothing allocated)."""
    try:
        mesh = mesh_lib.make_mesh(job.mesh_data, job.mesh_model, devices=devices)
        mesh_lib.check_batch_divides(job.batch_size, mesh, job.microbatches)
        logical_rules = rules_lib.get_rules(job.rules)
    except ValueError as error:
        raise AOTError(str(error)) from None
    return Trainer(
        job.model_factory,
        job.optimizer,
        mesh,
        logical_rules,
        seed=job.seed,
        microbatches=job.microbatches,
        param_projection=job.param_projection,
    )


def example_features(model: Any) -> dict[str, np.ndarray]:
    """One training example of the model's family, built by the data pipeline's own code
    (raw audio window + targets of an empty NoteSequence), for its names/shapes/dtypes."""
    import dataclasses as dc

    import note_seq

    from amt_jax.data import preprocessors

    name = type(model).__name__
    if name == "MT3Model":
        spec = dc.replace(preprocessors.MT3, target_length=model.config.targets_length)
    elif name == "OnsetsFrames":
        spec = preprocessors.onsets_frames_spec(model.segment_samples / model.sample_rate)
    elif name == "NMP":
        spec = preprocessors.NMP
    else:
        raise AOTError(f"No input spec for model class {name}; add it to aot.example_features.")
    if spec.window_samples != model.segment_samples or spec.sample_rate != model.sample_rate:
        raise AOTError(
            f"{name} wants {model.segment_samples} samples at {model.sample_rate} Hz but the "
            f"data family gives {spec.window_samples} at {spec.sample_rate} Hz."
        )
    audio = np.zeros(spec.window_samples, np.float32)
    return preprocessors.make_example(audio, note_seq.NoteSequence(), 0, spec, "aot")


def abstract_batch(
    trainer: Trainer, example: Mapping[str, np.ndarray], global_batch_size: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """Global batch shapes with the trainer's batch shardings."""
    shapes = {k: np.zeros((1,) + np.shape(v), np.asarray(v).dtype) for k, v in example.items()}
    shardings = trainer.batch_shardings(shapes)
    return {
        k: jax.ShapeDtypeStruct((global_batch_size,) + v.shape[1:], v.dtype, sharding=shardings[k])
        for k, v in shapes.items()
    }


# ------------------------------------------------------------------------------ compile


@dataclasses.dataclass
class CompileReport:
    """Per-device memory and cost of one compiled train step."""

    label: str
    chip: ChipSpec
    num_devices: int
    mesh_shape: dict[str, int]
    global_batch_size: int
    microbatches: int
    param_count: int
    param_dtypes: tuple[str, ...]
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    flops_per_device: float
    bytes_accessed_per_device: float
    lower_seconds: float
    compile_seconds: float
    #: the compiled per-device program (``compiled.as_text()``), for :func:`traffic_by_op`
    hlo_text: str = dataclasses.field(default="", repr=False)

    @property
    def peak_bytes(self) -> int:
        """Live HBM during the step: inputs + outputs not aliased to donated inputs + temps."""
        return (
            self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
        ) + self.code_bytes

    @property
    def hbm_fraction(self) -> float:
        return self.peak_bytes / self.chip.hbm_bytes

    @property
    def compute_seconds(self) -> float:
        return self.flops_per_device / self.chip.peak_bf16_flops

    @property
    def memory_seconds(self) -> float:
        return self.bytes_accessed_per_device / self.chip.hbm_bytes_per_second

    @property
    def step_seconds_lower_bound(self) -> float:
        """Roofline bound: the step cannot be faster than its FLOPs or its HBM traffic."""
        return max(self.compute_seconds, self.memory_seconds)

    @property
    def bound_by(self) -> str:
        return "compute" if self.compute_seconds >= self.memory_seconds else "HBM"

    @property
    def roofline_mfu(self) -> float:
        """Compute time over the roofline bound: the MFU the step reaches at best."""
        return self.compute_seconds / self.step_seconds_lower_bound

    def roofline_on(self, chip: ChipSpec) -> dict[str, Any]:
        """The same per-device program against another chip's datasheet peaks (on paper:
        a compile for that chip would lay out and fuse differently)."""
        compute = self.flops_per_device / chip.peak_bf16_flops
        memory = self.bytes_accessed_per_device / chip.hbm_bytes_per_second
        bound = max(compute, memory)
        return {
            "chip": chip.name,
            "compute_seconds": compute,
            "memory_seconds": memory,
            "bound_seconds": bound,
            "bound_by": "compute" if compute >= memory else "HBM",
            "roofline_mfu": compute / bound,
        }

    @property
    def global_flops(self) -> float:
        return self.flops_per_device * self.num_devices

    def check_fits(self, hbm_bytes: float | None = None) -> None:
        limit = self.chip.hbm_bytes if hbm_bytes is None else hbm_bytes
        if self.peak_bytes > limit:
            raise AOTError(
                f"{self.label}: the train step needs {self.peak_bytes / GIB:.2f} GiB per device "
                f"but a {self.chip.name} has {limit / GIB:.2f} GiB; use more devices, "
                "MICROBATCHES, a smaller BATCH_SIZE or the 'fsdp' rules."
            )

    def format(self) -> str:
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh_shape.items())
        lines = [
            f"{self.label}",
            f"  devices            {self.num_devices} x {self.chip.name}, mesh {mesh}",
            f"  global batch       {self.global_batch_size} ({self.microbatches} microbatch(es))",
            f"  parameters         {self.param_count:,} ({', '.join(self.param_dtypes)})",
            "  per-device memory",
            f"    arguments        {_size(self.argument_bytes)} (state + batch shard)",
            f"    outputs          {_size(self.output_bytes)} "
            f"({_size(self.alias_bytes).strip()} aliased to donated inputs)",
            f"    temporaries      {_size(self.temp_bytes)}",
            f"    code             {_size(self.code_bytes)}",
            f"    peak             {_size(self.peak_bytes)} of "
            f"{self.chip.hbm_bytes / GIB:.0f} GiB HBM ({self.hbm_fraction:.0%})",
            f"  FLOPs per step     {self.flops_per_device:.4g} per device, "
            f"{self.global_flops:.4g} total",
            f"  HBM traffic        {_size(self.bytes_accessed_per_device).strip()} per device",
            f"  step time bound    {self.step_seconds_lower_bound * 1e3:.3g} ms "
            f"(compute {self.compute_seconds * 1e3:.3g} ms at "
            f"{self.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 peak, "
            f"HBM {self.memory_seconds * 1e3:.3g} ms at "
            f"{self.chip.hbm_bytes_per_second / 1e9:.0f} GB/s)",
            f"  roofline MFU       {self.roofline_mfu:.2f} ({self.bound_by}-bound: compute time "
            "/ the bound)",
            f"  lower / compile    {self.lower_seconds:.1f} s / {self.compile_seconds:.1f} s",
        ]
        return "\n".join(lines)


def _size(num_bytes: float) -> str:
    if num_bytes >= GIB:
        return f"{num_bytes / GIB:8.3f} GiB"
    return f"{num_bytes / 1024**2:8.3f} MiB"


def _first_cost(analysis: Any) -> dict[str, float]:
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    return dict(analysis or {})


def compile_train_step(
    trainer: Trainer,
    global_batch_size: int,
    chip: ChipSpec,
    *,
    label: str = "train step",
    example: Mapping[str, np.ndarray] | None = None,
) -> CompileReport:
    """Lower and compile the trainer's jitted train step for its mesh (abstract inputs).

    example: one example's features (no batch axis); default: the model family's, from
      :func:`example_features`.
    """
    state = trainer.abstract_state()
    if example is None:
        example = example_features(trainer.abstract_model)
    batch = abstract_batch(trainer, example, global_batch_size)
    start = time.perf_counter()
    # the very jit object ``Trainer.train_step`` runs, with the same mesh / rules context
    lowered = trainer.lower_train_step(state, batch)
    lowered_at = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as error:  # XLA reports HBM exhaustion as a long RESOURCE_EXHAUSTED
        text = str(error)
        if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text:
            detail = next((ln for ln in text.splitlines() if "memory" in ln.lower()), "")
            raise AOTError(
                f"{label}: does not fit {chip.name} HBM ({chip.hbm_bytes / GIB:.0f} GiB): "
                f"{detail.strip()[:200]}"
            ) from None
        raise
    compiled_at = time.perf_counter()
    memory = compiled.memory_analysis()
    cost = _first_cost(compiled.cost_analysis())
    params = jax.tree.leaves(state.params)
    return CompileReport(
        label=label,
        chip=chip,
        num_devices=trainer.mesh.size,
        mesh_shape=dict(trainer.mesh.shape),
        global_batch_size=global_batch_size,
        microbatches=trainer.microbatches,
        param_count=sum(int(np.prod(p.shape)) for p in params),
        param_dtypes=tuple(sorted({str(p.dtype) for p in params})),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes),
        flops_per_device=float(cost.get("flops", 0.0)),
        bytes_accessed_per_device=float(cost.get("bytes accessed", 0.0)),
        lower_seconds=lowered_at - start,
        compile_seconds=compiled_at - lowered_at,
        hlo_text=compiled.as_text() or "",
    )


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}  # fmt: skip
_ARRAY_RE = re.compile(r"\b(pred|[suf](?:8|16|32|64)|bf16)\[([0-9,]*)\](\{[^}]*\})?")
_INSTRUCTION_RE = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_OP_NAME_RE = re.compile(r'op_name="([^"]*)"')
#: instructions that move no data through HBM by themselves
_FREE_OPCODES = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast",
                 "after-all", "partition-id", "replica-id", "opt-barrier"}  # fmt: skip


def _array_bytes(text: str) -> int:
    total = 0
    for dtype, dims, layout in _ARRAY_RE.findall(text):
        if "S(1)" in layout:  # on-chip memory (VMEM), not HBM
            continue
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * _DTYPE_BYTES[dtype]
    return total


def traffic_by_op(hlo_text: str, top: int = 20) -> list[tuple[int, str, str]]:
    """The top-level instructions of a compiled program that move the most HBM data.

    An estimate from the program text: each instruction of the entry computation reads its
    operands and writes its result through HBM (fusions keep their insides on chip), so its
    traffic is the size of both. Returns (bytes, opcode, JAX op name) rows, largest first:
    what to look at when ``cost_analysis()``'s total is far above the activations' size.
    """
    rows: list[tuple[int, str, str]] = []
    in_entry = False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY "):
            in_entry = True
            continue
        if in_entry and line.startswith("}"):
            break
        match = _INSTRUCTION_RE.match(line) if in_entry else None
        if match is None or match.group(2) in _FREE_OPCODES:
            continue
        result_type, opcode, rest = match.groups()
        operands = rest.split("), ", 1)[0]
        if opcode.endswith("-done"):  # an async pair's traffic is counted at its start
            continue
        if opcode.endswith("-start"):  # (operands, destination, context): count the operands
            result_type = ""
        name = _OP_NAME_RE.search(rest)
        rows.append(
            (
                _array_bytes(result_type) + _array_bytes(operands),
                opcode,
                name.group(1) if name else "",
            )
        )
    rows.sort(key=lambda row: -row[0])
    return rows[:top]


def state_bytes_per_device(shapes: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(shapes):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard, dtype=np.int64)) * leaf.dtype.itemsize
    return total


# ------------------------------------------------------------------------------ planning


def plan_rows(
    report: CompileReport,
    targets: Sequence[tuple[str, str, int]] = (
        ("v5e-16", "v5e", 16),
        ("v5e-64", "v5e", 64),
        ("8x H100", "h100", 8),
    ),
    *,
    mfu: float = 0.4,
    steps: int = 1_000_000,
) -> list[dict[str, Any]]:
    """Steps/s and days to ``steps`` on other slices, from the compiled total FLOPs.

    On paper: the step's total FLOPs spread evenly over the chips at ``mfu`` of the dense
    bf16 peak, or the compiled HBM-traffic bound (scaled by chip count) where that is
    slower; ``bound_by`` says which set the row's step time.
    ``examples_per_chip`` below 1 flags a row the global batch cannot fill (e.g. O&F's
    batch 8 on 64 chips): its even spread is not reachable by data parallelism alone.
    """
    rows = []
    for name, chip_key, count in targets:
        chip = CHIPS[chip_key]
        compute = report.global_flops / (count * chip.peak_bf16_flops * mfu)
        traffic = report.bytes_accessed_per_device * report.num_devices / count
        memory = traffic / chip.hbm_bytes_per_second
        step = max(compute, memory)
        rows.append(
            {
                "system": name,
                "bound_by": f"compute at {mfu:.0%} MFU" if compute >= memory else "HBM roofline",
                "chip": chip.name,
                "peak_tflops": chip.peak_bf16_flops / 1e12,
                "step_seconds": step,
                "steps_per_second": 1.0 / step,
                "days": steps * step / 86400.0,
                "examples_per_chip": report.global_batch_size / count,
            }
        )
    return rows
