"""Published chip peaks: device kinds map to their datasheet, unknown devices are timed."""

import types

import pytest

from amt_jax.train import chips, loop


@pytest.mark.parametrize(
    "device_kind, name",
    [
        ("TPU v4", "TPU v4"),
        ("TPU v5 lite", "TPU v5e"),
        ("TPU v5e", "TPU v5e"),
        ("TPU v5", "TPU v5p"),
        ("TPU v5p", "TPU v5p"),
        ("TPU v6 lite", "TPU v6e"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
        ("NVIDIA H200", "NVIDIA H200"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100"),
    ],
)
def test_device_kinds_map_to_their_datasheet(device_kind, name):
    assert chips.chip_for_device_kind(device_kind).name == name


@pytest.mark.parametrize("device_kind", ["cpu", "NVIDIA GeForce RTX 4090", "TPU v9 future"])
def test_unknown_devices_have_no_published_peak(device_kind):
    assert chips.chip_for_device_kind(device_kind) is None


def test_mfu_denominator_uses_the_published_peak_or_times_a_matmul(monkeypatch):
    h100 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(loop, "measure_matmul_peak", lambda: pytest.fail("must not time"))
    assert loop.mfu_denominator(h100) == 989e12
    cpu = types.SimpleNamespace(platform="cpu", device_kind="cpu")
    monkeypatch.setattr(loop, "measure_matmul_peak", lambda: 123e9)
    assert loop.mfu_denominator(cpu) == 123e9
