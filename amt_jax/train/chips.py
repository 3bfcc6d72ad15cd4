"""Datasheet peaks of accelerator chips: the roofline of AOT compiles and the MFU
denominator of training runs on devices whose peak is published.

MFU is reported against the dense bf16 matmul peak, the usual convention (PaLM's), also
for float32 runs. A device with no published peak here (CPUs, unlisted GPUs) falls back
to a timed matmul.
"""

from __future__ import annotations

import dataclasses

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Datasheet numbers of one accelerator chip (one JAX device)."""

    name: str
    peak_bf16_flops: float  # dense bf16 matmul FLOP/s, no sparsity
    hbm_bytes: float
    hbm_bytes_per_second: float


#: One JAX device = one chip for all of these.
CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("TPU v4", 275e12, 32 * GIB, 1228e9),
    "v5e": ChipSpec("TPU v5e", 197e12, 16 * GIB, 819e9),
    "v5p": ChipSpec("TPU v5p", 459e12, 95 * GIB, 2765e9),
    "v6e": ChipSpec("TPU v6e", 918e12, 32 * GIB, 1640e9),
    "h100": ChipSpec("NVIDIA H100 SXM", 989e12, 80e9, 3.35e12),
    "h100_pcie": ChipSpec("NVIDIA H100 PCIe", 756e12, 80e9, 2.0e12),
    "h200": ChipSpec("NVIDIA H200", 989e12, 141e9, 4.8e12),
    "a100": ChipSpec("NVIDIA A100", 312e12, 80e9, 2.039e12),
}

#: ``jax.Device.device_kind`` fragments (lower case) -> chip, most specific first
_DEVICE_KINDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("v5 lite",), "v5e"),
    (("v5e",), "v5e"),
    (("v5p",), "v5p"),
    (("tpu v5",), "v5p"),  # v5p reports itself as plain "TPU v5"
    (("v6 lite",), "v6e"),
    (("v6e",), "v6e"),
    (("tpu v4",), "v4"),
    (("h100", "pcie"), "h100_pcie"),
    (("h100",), "h100"),
    (("h200",), "h200"),
    (("a100",), "a100"),
)


def chip_for_device_kind(device_kind: str) -> ChipSpec | None:
    """The published chip of a ``jax.Device.device_kind`` string, or None if unknown."""
    kind = device_kind.lower()
    for fragments, key in _DEVICE_KINDS:
        if all(fragment in kind for fragment in fragments):
            return CHIPS[key]
    return None


__all__ = ["CHIPS", "GIB", "ChipSpec", "chip_for_device_kind"]
