"""A small real NNX model implementing the Model protocol, and a resumable batch source.

Tests of the trainer use it so they do not depend on the (much larger) library models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from note_seq.protobuf import music_pb2

from amt_jax.models.base import TranscriptionModel, consecutive_segments
from amt_jax.partitioning import axes

FRAMES, BINS, PITCHES, LOWEST_PITCH = 8, 16, 8, 60


class TinyFrameModel(TranscriptionModel):
    """audio [B, 128] -> 8 frames x 16 'bins' -> MLP -> 8 pitch logits per frame."""

    family = "tiny"
    decode_option_defaults = {"threshold": 0.5}
    sample_rate = 512
    segment_samples = FRAMES * BINS

    def __init__(self, hidden: int, dropout: float, *, rngs: nnx.Rngs, unit_norm: bool = False):
        init = nnx.initializers.lecun_normal()
        self.dense_in = nnx.Linear(
            BINS, hidden, kernel_init=nnx.with_partitioning(init, ("freq", "mlp")), rngs=rngs
        )
        self.dense_out = nnx.Linear(
            hidden, PITCHES, kernel_init=nnx.with_partitioning(init, ("mlp", "pitch")), rngs=rngs
        )
        self.scale = nnx.Param(jnp.ones((hidden,)), out_sharding=("mlp",))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.unit_norm = unit_norm

    @classmethod
    def from_config(cls, config, *, rngs):
        return cls(rngs=rngs, **config)

    def __call__(self, audio_bs):
        frames_btf = audio_bs.reshape(audio_bs.shape[0], FRAMES, BINS)
        frames_btf = axes.constrain(frames_btf, ("batch", "time", "freq"))
        hidden_bth = jax.nn.relu(self.dense_in(frames_btf)) * self.scale[...]
        hidden_bth = axes.constrain(self.dropout(hidden_bth), ("batch", "time", "mlp"))
        return self.dense_out(hidden_bth)

    def loss(self, batch):
        logits_btp = self(batch["audio_bs"])
        loss = optax.sigmoid_binary_cross_entropy(logits_btp, batch["frames_btp"]).mean()
        accuracy = ((logits_btp > 0) == (batch["frames_btp"] > 0.5)).mean()
        return loss, {"frame_accuracy": accuracy}

    def predict(self, batch):
        return {"probs_btp": jax.nn.sigmoid(self(batch["audio_bs"]))}

    def project_constraints(self):
        if self.unit_norm:
            kernel = self.dense_out.kernel[...]
            self.dense_out.kernel[...] = kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)

    def segment(self, audio_s):
        return consecutive_segments(len(audio_s), self.segment_samples, self.sample_rate)

    def stitch(self, outputs, *, num_samples):
        return {"probs_tp": np.concatenate(list(outputs["probs_btp"]), axis=0)}

    def outputs_to_notes(self, outputs, *, num_samples, start_times, threshold=0.5):
        probs_tp = self.stitch(outputs, num_samples=num_samples)["probs_tp"]
        return roll_to_sequence(probs_tp > threshold, self.frame_seconds), {}

    @property
    def frame_seconds(self):
        return BINS / self.sample_rate


def roll_to_sequence(roll_tp: np.ndarray, frame_seconds: float) -> music_pb2.NoteSequence:
    sequence = music_pb2.NoteSequence()
    padded = np.pad(roll_tp.astype(np.int8), ((1, 1), (0, 0)))
    for pitch in range(roll_tp.shape[1]):
        change = np.diff(padded[:, pitch])
        for start, end in zip(np.flatnonzero(change == 1), np.flatnonzero(change == -1)):
            sequence.notes.add(
                pitch=LOWEST_PITCH + pitch,
                start_time=start * frame_seconds,
                end_time=end * frame_seconds,
                velocity=100,
            )
    return sequence


def targets_for(audio_bs: np.ndarray) -> np.ndarray:
    """A learnable target: pitch p sounds in a frame when bins 2p, 2p+1 sum above zero."""
    frames = audio_bs.reshape(audio_bs.shape[0], FRAMES, PITCHES, 2).sum(-1)
    return (frames > 0).astype(np.float32)


class SyntheticBatches:
    """Deterministic global batches (``batch_size`` rows) indexed by position.

    ``state`` / ``restore`` resume exactly; each of ``num_shards`` hosts takes its rows.
    """

    def __init__(self, batch_size: int, seed: int = 0, shard_index: int = 0, num_shards: int = 1):
        self.batch_size, self.seed = batch_size, seed
        self.shard_index, self.num_shards = shard_index, num_shards
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self):
        # the global batch depends only on (seed, position); each host takes its rows
        rng = np.random.default_rng([self.seed, self.position])
        self.position += 1
        audio = rng.normal(size=(self.batch_size, TinyFrameModel.segment_samples))
        per_host = self.batch_size // self.num_shards
        audio = audio[self.shard_index * per_host : (self.shard_index + 1) * per_host]
        audio = audio.astype(np.float32)
        return {"audio_bs": audio, "frames_btp": targets_for(audio), "id": np.array(["x"] * 2)}

    def state(self):
        return {"position": self.position}

    def restore(self, state):
        self.position = int(state["position"])


def tiny_factory(hidden: int = 16, dropout: float = 0.1, unit_norm: bool = False):
    config = {"hidden": hidden, "dropout": dropout, "unit_norm": unit_norm}
    return lambda rngs: TinyFrameModel.from_config(config, rngs=rngs)
