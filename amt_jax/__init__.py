"""amt_jax: automatic music transcription (MT3, Onsets and Frames, NMP) in JAX/Flax."""

import os
import warnings

# TensorFlow only feeds the input pipeline; JAX owns the accelerators. Limiting TF's device
# factories to the CPU keeps it from calling cuInit (an E-level "failed call to cuInit" line on
# every machine without CUDA) and from reserving GPU memory that JAX needs. Level 2 drops TF's
# INFO and WARNING lines and keeps its errors. A value the user already set wins.
os.environ.setdefault("TF_ENABLED_DEVICE_TYPES", "CPU")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# note_seq imports pydub, which warns on import when ffmpeg is not on PATH. amt_jax reads
# audio with soundfile/librosa and never through pydub, so the warning is only noise.
warnings.filterwarnings("ignore", message="Couldn't find ffmpeg or avconv", category=RuntimeWarning)

__version__ = "0.1.0"
