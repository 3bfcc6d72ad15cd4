"""Write tf.signal's MT3 mel filterbank into the package, so transcription needs no TensorFlow.

    python tools/make_mel_filterbank_asset.py

The matrix is ``tf.signal.linear_to_mel_weight_matrix`` in float64 for ``mel.MT3_MEL``,
stored sparsely (it is > 99 % zeros). ``amt_jax.audio.mel`` loads it instead of importing
TensorFlow (~700 MB of resident memory); ``tests/audio/test_mel.py`` checks that it still
equals tf.signal's output bit for bit.
"""

from __future__ import annotations

import numpy as np

from amt_jax.audio import mel


def main() -> None:
    config = mel.MT3_MEL
    matrix = mel.tf_signal_filterbank(config)
    rows, cols = np.nonzero(matrix)
    path = mel.packaged_filterbank_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        shape=np.asarray(matrix.shape),
        rows=rows.astype(np.int32),
        cols=cols.astype(np.int32),
        values=matrix[rows, cols],
    )
    print(f"wrote {path} ({rows.size} non-zero weights of {matrix.size})")


if __name__ == "__main__":
    main()
