"""AOT compilation for TPU topologies (needs libtpu: ``pip install -e .[tpu-aot]``).

The compile test uses tiny MT3 on v5e:2x2 to stay within the test budget; the full-size
figures (v5e:4x4, batch 256) come from ``tools/aot_compile.py`` and are recorded in
docs/benchmarks.md.
"""

import os
import re
import sys

import gin
import jax
import numpy as np
import pytest

from amt_jax.models.t5 import MT3Config, MT3Model
from amt_jax.train import aot, optimizers, precision
from amt_jax.train.trainer import model_factory
from tests.train.tiny_model import BINS, FRAMES, PITCHES, TinyFrameModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import aot_compile  # noqa: E402

# tests/conftest.py skips `tpu` tests, with the install command, where libtpu is absent
needs_libtpu = pytest.mark.tpu


@pytest.fixture(autouse=True)
def _full_optimisation():
    """Compile with XLA's normal passes (the conftest disables them for CPU speed)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
    gin.clear_config()


@pytest.fixture(scope="module")
def v5e_2x2():
    if not aot.libtpu_available():
        pytest.skip("libtpu not installed (pip install -e .[tpu-aot])")
    return aot.topology_devices("v5e:2x2")


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("name", ["v5e-4x4", "v5e:4", "tpu", "v5e:4x4:1"])
def test_malformed_topology_names(name):
    with pytest.raises(aot.AOTError, match="Bad topology name") as info:
        aot.topology_devices(name)
    assert "\n" not in str(info.value)


def test_unknown_generation():
    with pytest.raises(aot.AOTError, match="Unknown TPU generation 'v9z'"):
        aot.topology_devices("v9z:2x2")


def test_cli_bad_topology_is_one_line(capsys):
    code = aot_compile.main(["--gin_file=mt3.gin", "--topology=v5e:4x4x4x4"])
    assert code == 1
    assert "Bad topology name" in _one_line(capsys.readouterr().err)


@needs_libtpu
def test_topology_libtpu_rejects_is_one_line():
    with pytest.raises(aot.AOTError, match="libtpu does not know topology 'v5e:3x5'") as info:
        aot.topology_devices("v5e:3x5")
    assert "\n" not in str(info.value)


@needs_libtpu
def test_cli_mesh_that_does_not_fit_topology(capsys, v5e_2x2):
    code = aot_compile.main(
        [
            "--gin_file=mt3.gin",
            "--gin_file=tiny/mt3.gin",
            "--topology=v5e:2x2",
            "--gin.MESH_MODEL=3",
        ]
    )
    assert code == 1
    line = _one_line(capsys.readouterr().err)
    assert "does not divide the 4 devices" in line


def test_example_features_match_the_data_pipeline():
    from flax import nnx

    from amt_jax.data import tasks
    from amt_jax.data.preprocessors import MT3

    mt3 = nnx.eval_shape(lambda: MT3Model(MT3Config.tiny(targets_length=1024), rngs=nnx.Rngs(0)))
    features = aot.example_features(mt3)
    expected = tasks.output_shapes(MT3)
    assert {k: (v.shape, str(v.dtype)) for k, v in features.items()} == expected


@needs_libtpu
def test_compile_on_v5e_2x2_accounts_memory_and_flops(v5e_2x2):
    """Tiny model (compiles fast); full-size figures come from tools/aot_compile.py."""
    chip, devices = v5e_2x2
    assert chip.peak_bf16_flops == 197e12 and chip.hbm_bytes == 16 * 1024**3
    assert len(devices) == 4 and all(d.platform == "tpu" for d in devices)
    job = aot.TrainJob(
        model_factory(TinyFrameModel, {"hidden": 256, "dropout": 0.0}),
        optimizers.adam(),
        batch_size=64,
        mesh_data=2,
        mesh_model=2,
    )
    trainer = aot.build_trainer(job, devices)
    example = {
        "audio_bs": np.zeros(FRAMES * BINS, np.float32),
        "frames_btp": np.zeros((FRAMES, PITCHES), np.float32),
    }
    report = aot.compile_train_step(trainer, 64, chip, label="tiny", example=example)
    assert report.mesh_shape == {"data": 2, "model": 2}
    assert report.param_dtypes == ("float32",)
    assert report.param_count == BINS * 256 + 256 + 256 * PITCHES + PITCHES + 256

    # arguments = this device's shard of state + batch (TPU tiling may pad small arrays)
    state = trainer.abstract_state()
    batch = aot.abstract_batch(trainer, example, 64)
    logical = aot.state_bytes_per_device(state) + aot.state_bytes_per_device(batch)
    assert batch["audio_bs"].shape == (64, FRAMES * BINS)
    assert batch["audio_bs"].sharding.shard_shape((64, FRAMES * BINS)) == (32, FRAMES * BINS)
    assert logical <= report.argument_bytes <= 4 * logical
    # the donated state comes back in place
    assert report.alias_bytes >= aot.state_bytes_per_device(state)

    # XLA's per-device FLOPs vs an independent count of the traced matmuls (global / 4)
    matmuls = trainer.trace_train_step(precision.matmul_flops_by_dtype, state, batch)
    per_device_matmuls = sum(matmuls.values()) / 4
    assert 0.9 * per_device_matmuls <= report.flops_per_device <= 2.0 * per_device_matmuls

    report.check_fits()
    with pytest.raises(aot.AOTError, match="GiB per device but a TPU v5e has") as info:
        report.check_fits(hbm_bytes=report.peak_bytes - 1)
    assert "\n" not in str(info.value)
    text = report.format()
    assert "197 TFLOP/s" in text and "16 GiB HBM" in text

    v5e16, v5e64, h100 = aot.plan_rows(report, mfu=0.5)
    assert v5e16["steps_per_second"] * 4 == pytest.approx(v5e64["steps_per_second"], rel=1e-9)
    assert v5e16["days"] == pytest.approx(1e6 * v5e16["step_seconds"] / 86400)
    assert h100["peak_tflops"] == 989 and np.isfinite(h100["days"])
    assert (v5e16["examples_per_chip"], v5e64["examples_per_chip"]) == (4, 1)


# Golden shardings of the full-size MT3 train state on a 16-device topology (the CPU
# 8-device parameter table is in tests/models/test_t5.py). With 6 heads, a 4-way model
# axis cannot split the attention kernels: they stay replicated; 2-way splits them.
GOLDEN_16 = {
    (8, 2): {
        "encoder/layers/0/attention/query/kernel": (None, "model", None),
        "encoder/layers/0/attention/out/kernel": ("model", None, None),
        "decoder/layers/7/encoder_decoder_attention/key/kernel": (None, "model", None),
        "encoder/layers/0/mlp/wi_0/kernel": (None, "model"),
        "decoder/layers/3/mlp/wo/kernel": ("model", None),
        "decoder/token_embedder/embedding": ("model", None),
        "decoder/logits_dense/kernel": (None, "model"),
        "encoder/continuous_inputs_projection/kernel": (None, None),
        "decoder/decoder_norm/scale": (None,),
    },
    (4, 4): {
        "encoder/layers/0/attention/query/kernel": (None, None, None),
        "encoder/layers/0/attention/out/kernel": (None, None, None),
        "decoder/layers/7/encoder_decoder_attention/key/kernel": (None, None, None),
        "encoder/layers/0/mlp/wi_0/kernel": (None, "model"),
        "decoder/layers/3/mlp/wo/kernel": ("model", None),
        "decoder/token_embedder/embedding": ("model", None),
        "decoder/logits_dense/kernel": (None, "model"),
        "encoder/continuous_inputs_projection/kernel": (None, None),
        "decoder/decoder_norm/scale": (None,),
    },
}


def _bytes_per_device(config: MT3Config, model_axis: int) -> tuple[int, int]:
    """Hand count from the T5.1.1 shapes: (all parameters, attention kernels) per device."""
    d, inner, mlp = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
    enc, dec = config.num_encoder_layers, config.num_decoder_layers
    attention = (4 * enc + 8 * dec) * d * inner
    mlps = 3 * (enc + dec) * d * mlp
    vocab_tables = 2 * config.vocab_size * d
    replicated = d * config.input_depth + (2 * enc + 1 + 3 * dec + 1) * d
    if config.num_heads % model_axis == 0:
        attention //= model_axis
    per_device = replicated + (mlps + vocab_tables) // model_axis + attention
    return per_device * 4, attention * 4  # float32


@needs_libtpu
@pytest.mark.parametrize("mesh_shape", [(8, 2), (4, 4)])
def test_golden_full_mt3_state_shardings_on_16_devices(mesh_shape):
    from amt_jax.models.t5 import T5_SMALL

    chip, devices = aot.topology_devices("v5e:4x4")
    assert len(devices) == 16
    job = aot.TrainJob(
        model_factory(MT3Model, T5_SMALL),
        optimizers.mt3_adafactor(),
        batch_size=256,
        mesh_data=mesh_shape[0],
        mesh_model=mesh_shape[1],
    )
    trainer = aot.build_trainer(job, devices)
    state = trainer.abstract_state()
    specs = {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf.sharding.spec
        for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)) == 45_896_704
    for label, expected in GOLDEN_16[mesh_shape].items():
        assert tuple(specs[label]) + (None,) * (len(expected) - len(specs[label])) == expected, (
            f"{label}: {specs[label]} != {expected}"
        )
    param_bytes, attention_bytes = _bytes_per_device(T5_SMALL, mesh_shape[1])
    assert aot.state_bytes_per_device(state.params) == param_bytes
    # optax's Adafactor factors a kernel only if its two largest dims are >= 128: the
    # [512, 6, 64] attention kernels keep a full second moment (sharded like the kernel;
    # t5x factored its flattened [512, 384] kernels), everything else is factored.
    opt_bytes = aot.state_bytes_per_device(state.opt_state)
    assert attention_bytes <= opt_bytes <= attention_bytes + 0.01 * param_bytes
    assert precision.non_float32_leaves(state.opt_state) == []
    batch = aot.abstract_batch(trainer, aot.example_features(trainer.abstract_model), 256)
    assert batch["audio_bs"].sharding.shard_shape((256, 32768)) == (256 // mesh_shape[0], 32768)
    assert batch["targets_bl"].sharding.shard_shape((256, 1024)) == (256 // mesh_shape[0], 1024)


def _report(flops: float, traffic: float) -> aot.CompileReport:
    return aot.CompileReport(
        label="paper",
        chip=aot.CHIPS["v5e"],
        num_devices=16,
        mesh_shape={"data": 16, "model": 1},
        global_batch_size=256,
        microbatches=1,
        param_count=1,
        param_dtypes=("float32",),
        argument_bytes=0,
        output_bytes=0,
        alias_bytes=0,
        temp_bytes=0,
        code_bytes=0,
        flops_per_device=flops,
        bytes_accessed_per_device=traffic,
        lower_seconds=0.0,
        compile_seconds=0.0,
    )


def test_roofline_is_compute_over_the_bound_on_each_chips_peaks():
    # 3.67 TFLOP and 106.9 GiB per device: the fp32 MT3 step of the accelerator issue
    report = _report(3.67e12, 106.9 * aot.GIB)
    assert report.compute_seconds == pytest.approx(3.67e12 / 197e12)
    assert report.memory_seconds == pytest.approx(106.9 * aot.GIB / 819e9)
    assert report.bound_by == "HBM"
    assert report.roofline_mfu == pytest.approx(report.compute_seconds / report.memory_seconds)
    assert 0.12 < report.roofline_mfu < 0.14
    v6e = report.roofline_on(aot.CHIPS["v6e"])
    assert v6e["bound_seconds"] == pytest.approx(106.9 * aot.GIB / 1640e9)
    assert v6e["roofline_mfu"] == pytest.approx((3.67e12 / 918e12) / v6e["bound_seconds"])
    compute_bound = _report(3.67e12, 1 * aot.GIB)
    assert compute_bound.bound_by == "compute" and compute_bound.roofline_mfu == 1.0
    assert "roofline MFU       0.13 (HBM-bound" in report.format()


def test_plan_rows_say_what_bounds_them():
    memory_bound = aot.plan_rows(_report(3.67e12, 106.9 * aot.GIB), mfu=0.4)
    assert {row["bound_by"] for row in memory_bound} == {"HBM roofline"}
    compute_bound = aot.plan_rows(_report(3.67e12, 0.1 * aot.GIB), mfu=0.4)
    assert {row["bound_by"] for row in compute_bound} == {"compute at 40% MFU"}


@needs_libtpu
def test_cli_prints_the_roofline_and_compares_two_variants(capsys, v5e_2x2):
    code = aot_compile.main(
        [
            "--gin_file=mt3.gin",
            "--gin_file=tiny/mt3.gin",
            "--topology=v5e:2x2",
            "--compare",
            "MT3Config.dtype='bfloat16'",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    for chip in ("v5e", "v5p", "v6e"):
        assert sum(line.lstrip().startswith(chip + " ") for line in out.splitlines()) == 2
    assert len(re.findall(r"roofline MFU +\d\.\d\d \((compute|HBM)-bound", out)) == 2
    table = out[out.index("Side by side on TPU v5e") :]
    assert "HBM traffic per device (GiB)" in table and "ratio" in table
    assert "bound by" in out  # the plan says what bounds each row


@needs_libtpu
def test_mt3_compiled_for_tpu_runs_bf16_and_the_flash_kernel(v5e_2x2):
    """The trainer's path on TPU: dtype "auto" builds bf16 and kernels "auto" lowers the
    attention to the Pallas kernel (a Mosaic custom call), on a tiny MT3 whose 128 targets
    and 128 frames are the kernel's block size."""
    from amt_jax.train.main import parse_gin

    chip, devices = v5e_2x2
    parse_gin(
        ["mt3.gin", "tiny/mt3.gin"],
        ["MT3Config.targets_length = 128", "MT3Config.inputs_length = 128"],
        [],
    )
    job = aot.train_job_from_gin()
    trainer = aot.build_trainer(job, devices)
    report = aot.compile_train_step(trainer, job.batch_size, chip)
    attention = trainer.abstract_model.decoder.layers[0].self_attention
    assert str(attention.dtype) == "bfloat16"
    config = trainer.abstract_model.config
    attentions = config.num_encoder_layers + 2 * config.num_decoder_layers
    # per attention: the forward kernel and the backward's dq and dk/dv kernels
    kernels = report.hlo_text.count('custom_call_target="tpu_custom_call"')
    assert kernels == 3 * attentions
    top = aot.traffic_by_op(report.hlo_text, top=5)
    assert len(top) == 5 and top[0][0] >= top[-1][0] > 0
