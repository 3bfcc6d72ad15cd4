"""Per-example feature dicts -> host batches (``Trainer.global_batch`` makes them global).

Batch keys are the ones the models read: MT3 `audio_bs` + `targets_bl`; O&F `audio_bs` +
`onset_btp`, `offset_btp`, `frame_btp`, `velocity_btp`; NMP `audio_bs` + `contour_btf`,
`note_btp`, `onset_btp`. Every process stacks only its own rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def stack_examples(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not examples:
        raise ValueError("cannot batch zero examples")
    keys = examples[0].keys()
    return {key: np.stack([np.asarray(ex[key]) for ex in examples]) for key in keys}
