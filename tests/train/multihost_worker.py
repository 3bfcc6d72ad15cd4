"""One host of the 2-process CPU test (run by test_multihost.py, not collected by pytest).

Usage: python multihost_worker.py PORT PROCESS_ID NUM_PROCESSES GLOBAL_BATCH CHUNK_DIR
Prints one JSON line: this host's example ids (the chunk records the real training
pipeline read, one track per record) and what it sees of the global batch.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "2"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

port, process_id, num_processes, global_batch = map(int, sys.argv[1:5])
jax.distributed.initialize(
    coordinator_address=f"localhost:{port}",
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=120,
)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from amt_jax.data import pipeline  # noqa: E402
from amt_jax.partitioning import mesh as mesh_lib  # noqa: E402
from amt_jax.train import optimizers  # noqa: E402
from amt_jax.train.trainer import Trainer, model_factory  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_multihost import TASK, register_task, track_of  # noqa: E402
from tiny_model import TinyFrameModel  # noqa: E402

register_task(sys.argv[5])


def host_batch_of(iterator):
    """The pipeline's batch with each row's track (read from its audio) for the model."""
    batch = next(iterator)
    return {"audio_bs": batch["audio_bs"][:, :128], "track_index": track_of(batch["audio_bs"])}


mesh = mesh_lib.make_mesh(-1, 1)  # data axis over all 4 global devices
trainer = Trainer(
    model_factory(TinyFrameModel, {"hidden": 8, "dropout": 0.0}), optimizers.adam(), mesh
)
data = pipeline.TrainIterator(
    TASK, global_batch, seed=11, shard_index=jax.process_index(), num_shards=jax.process_count()
)
host_batch = host_batch_of(data)
one_host = host_batch_of(pipeline.TrainIterator(TASK, global_batch, seed=11))
global_batch_arrays = trainer.global_batch(host_batch)
tracks = global_batch_arrays["track_index"]
gathered = multihost_utils.process_allgather(tracks, tiled=True)
local_rows = sorted(
    int(v) for shard in tracks.addressable_shards for v in np.asarray(shard.data).ravel()
)
print(
    "RESULT "
    + json.dumps(
        {
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "global_devices": jax.device_count(),
            "example_ids": [f"track-{int(t):03d}" for t in host_batch["track_index"]],
            "global_shape": list(tracks.shape),
            "gathered": [int(v) for v in np.asarray(gathered)],
            "addressable": local_rows,
            "one_host": [int(t) for t in one_host["track_index"]],
        }
    ),
    flush=True,
)
jax.distributed.shutdown()
