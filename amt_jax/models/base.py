"""The one Model protocol shared by MT3, Onsets and Frames and NMP.

The trainer, evaluator and transcriber only use what is declared here, so a new model
family plugs in by implementing it.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
from flax import nnx

Batch = dict[str, jax.Array]


class TranscriptionModel(nnx.Module, abc.ABC):
    """Base class: raw audio in (front end inside), loss / predictions out.

    Batches hold raw audio ``audio_bs`` (float32, [batch, samples] at
    ``sample_rate``) plus family-specific targets; the spectrogram front end runs
    inside ``__call__`` so it is jitted with the model.
    """

    #: sample rate of the raw audio this model consumes
    sample_rate: int
    #: number of audio samples in one training / inference segment
    segment_samples: int

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Any, *, rngs: nnx.Rngs) -> TranscriptionModel:
        """Build (and initialise) the model from its config dataclass."""

    @abc.abstractmethod
    def loss(self, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss and a dict of scalar metrics for logging."""

    @abc.abstractmethod
    def predict(self, batch: Batch) -> dict[str, jax.Array]:
        """Model outputs for a batch of segments (posteriors or token ids)."""

    @abc.abstractmethod
    def outputs_to_notes(self, outputs: dict[str, Any], **options: Any) -> Any:
        """Decode host-side outputs (numpy) of consecutive segments into a NoteSequence."""


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, params, model_state)`` with params = every ``nnx.Param``."""
    return nnx.split(model, nnx.Param, ...)


def merge_model(
    graphdef: nnx.GraphDef,
    params_template: nnx.State,
    model_state_template: nnx.State,
    params: dict[str, Any],
    model_state: dict[str, Any],
) -> nnx.Module:
    """Rebuild a module from pure dicts, using abstract States for the Variable types."""
    params_state = jax.tree.map(lambda x: x, params_template)
    nnx.replace_by_pure_dict(params_state, params)
    rest_state = jax.tree.map(lambda x: x, model_state_template)
    nnx.replace_by_pure_dict(rest_state, model_state)
    return nnx.merge(graphdef, params_state, rest_state)
