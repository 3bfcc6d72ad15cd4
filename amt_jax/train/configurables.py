"""The one module that makes library code configurable from gin files.

Library code never imports gin; this module registers library classes and functions
under short names (``train``, ``mt3_adafactor``, ...) with ``gin.external_configurable``.
The entry point (``python -m amt_jax.train``) imports it before parsing gin files.
"""

from __future__ import annotations

import gin

from amt_jax.models import nmp, onsets_frames, t5
from amt_jax.partitioning import mesh as mesh_lib
from amt_jax.partitioning import rules as rules_lib
from amt_jax.train import inputs, loop, optimizers, trainer
from amt_jax.vocab import layouts


def _register(fn, name: str) -> None:
    gin.external_configurable(fn, name=name, module="amt_jax")


# training loop and optimizers
_register(loop.train, "train")
_register(optimizers.mt3_adafactor, "mt3_adafactor")
_register(optimizers.onsets_frames_adam, "onsets_frames_adam")
_register(optimizers.adam, "adam")
_register(trainer.model_factory, "model_factory")

# partitioning (mesh sizes and rules are arguments of ``train``; these are for overlays)
_register(mesh_lib.make_mesh, "make_mesh")
_register(rules_lib.get_rules, "logical_rules")

# MT3 vocabularies (part of MT3Config)
_register(layouts.VocabularyConfig, "VocabularyConfig")
_register(layouts.VocabularyConfig.named, "vocabulary_named")

# inputs
_register(inputs.task_batches, "task_batches")
_register(inputs.task_eval_tracks, "task_eval_tracks")

# model families: classes as constants, configs as configurables
gin.constant("amt_jax.MT3Model", t5.MT3Model)
_register(t5.MT3Config, "MT3Config")
_register(t5.MT3Config.tiny, "mt3_tiny_config")
_register(t5.MT3Config.for_vocabulary, "mt3_config_for_vocabulary")

gin.constant("amt_jax.NMP", nmp.NMP)
_register(nmp.NMPConfig, "NMPConfig")
gin.constant("amt_jax.NMP_TINY", nmp.NMP_TINY)

gin.constant("amt_jax.OnsetsFrames", onsets_frames.OnsetsFrames)
_register(onsets_frames.OnsetsFramesConfig, "OnsetsFramesConfig")
