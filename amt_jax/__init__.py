"""amt_jax: automatic music transcription (MT3, Onsets and Frames, NMP) in JAX/Flax."""

import os

# TensorFlow only feeds the input pipeline; JAX owns the accelerators. Limiting TF's device
# factories to the CPU keeps it from calling cuInit (an E-level "failed call to cuInit" line on
# every machine without CUDA) and from reserving GPU memory that JAX needs. Level 2 drops TF's
# INFO and WARNING lines and keeps its errors. A value the user already set wins.
os.environ.setdefault("TF_ENABLED_DEVICE_TYPES", "CPU")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
