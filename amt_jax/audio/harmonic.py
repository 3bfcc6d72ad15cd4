"""Harmonic stacking (Bittner et al. 2022): align harmonics of a CQT in one column.

Channel h holds the CQT shifted down by ``round(bins_per_semitone * 12 * log2(h))`` bins,
so the h-th harmonic of a pitch lands on the pitch's own bin and a small conv kernel sees
the whole harmonic series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from amt_jax.audio import basic_pitch_constants as bp


def harmonic_shifts(harmonics: Sequence[float], bins_per_semitone: int) -> tuple[int, ...]:
    """Bin shift per harmonic: [-36, 0, 36, 57, 72, 84, 93, 101] for Basic Pitch."""
    return tuple(int(round(12 * bins_per_semitone * math.log2(h))) for h in harmonics)


def harmonic_stack(
    x_btf: jax.Array,
    harmonics: Sequence[float] = bp.HARMONICS,
    bins_per_semitone: int = bp.BINS_PER_SEMITONE,
    n_output_bins: int = bp.N_CONTOUR_BINS,
) -> jax.Array:
    """[batch, frames, bins] -> [batch, frames, n_output_bins, len(harmonics)].

    Output channel c at bin f is ``x[..., f + shift_c]``, zero where that index falls
    outside the input (above its top for harmonics, below bin 0 for sub-harmonics).
    Written as one gather from a zero-padded copy, so the [.., 264, 8] output is produced
    in a single pass (the step is memory-bound).
    """
    n_bins = x_btf.shape[-1]
    if n_bins == 0:
        raise ValueError("harmonic_stack needs at least one frequency bin")
    shifts = np.asarray(harmonic_shifts(harmonics, bins_per_semitone))
    low = max(0, -int(shifts.min()))
    high = max(0, int(shifts.max()) + n_output_bins - n_bins)
    padded = jnp.pad(x_btf, [(0, 0)] * (x_btf.ndim - 1) + [(low, high)])
    index_fc = np.arange(n_output_bins)[:, None] + shifts[None, :] + low
    return padded[..., index_fc]
