"""Import Magenta's released MT3 t5x checkpoints as amt_jax models, and a parity forward.

    gsutil -m cp -r gs://mt3/checkpoints .          # checkpoints/mt3/, checkpoints/ismir2021/
    python tools/import_mt3.py checkpoints/mt3 -o models/mt3
    amt-jax song.wav --model mt3 --checkpoint models/mt3 --plot --csv

    python tools/import_mt3.py forward models/mt3 --inputs X.npz --output Y.npz

The first form reads the t5x checkpoint (a directory holding ``checkpoint``, or a t5x run
directory with ``checkpoint_<step>/``; ``--step N`` picks one) without t5x, checks every
parameter's name and shape, tells the vocabulary (``mt3`` or ``ismir2021``) from the
embedding rows, and writes ``OUT/{model.json, params.npz}``.

``forward`` runs the imported model's encoder on ``encoder_inputs`` (float32 [batch,
frames, 512] log-mel) and its decoder teacher-forced on ``decoder_input_tokens`` (int32
[batch, length]), deterministically in float32 with matmul precision "highest", and writes
``encoder_output`` and ``logits``: compare them with another MT3 implementation's on the
same checkpoint. Library: ``amt_jax.models.t5x_import``.
"""

from __future__ import annotations

import sys

from amt_jax.models.t5x_import import main

if __name__ == "__main__":
    sys.exit(main(prog="python tools/import_mt3.py"))
