"""The transcription path must not import TensorFlow, seqio or tfds (~700 MB of RSS)."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import sys
import numpy as np
from amt_jax.infer import transcribe as tx
from amt_jax.models.t5 import MT3Config

transcriber = tx.Transcriber(
    "mt3", random_weights=True, config=MT3Config.tiny(vocab_size=1536), max_decode_length=4
)
result = transcriber.transcribe(np.zeros(40000, np.float32), sample_rate=16000)
assert result.posteriors["tokens"].shape == (2, 4)
print(sorted(m for m in ("tensorflow", "seqio", "tensorflow_datasets") if m in sys.modules))
"""


def test_mt3_transcription_imports_no_tensorflow():
    run = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
