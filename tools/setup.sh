#!/usr/bin/env bash
# Installs everything amt_jax needs on a fresh Debian/Python 3.11 machine.
# Idempotent: a second run only checks. Used by `make install` (README quickstart) and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

# System packages (FluidSynth + General MIDI soundfonts for the synthetic dataset).
# fluidsynth: libfluidsynth3 for pyfluidsynth. Soundfonts: FluidR3_GM (training family),
# TimGM6mb + sf_GMbank (held-out family for test_unseen_soundfont). mma: backing grooves.
AMT_JAX_APT_PACKAGES=${AMT_JAX_APT_PACKAGES-"fluidsynth fluid-soundfont-gm timgm6mb-soundfont csound-soundfont mma time"}
APT_PACKAGES=(${AMT_JAX_APT_PACKAGES})
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# `test` only by default: the tpu-aot extra's libtpu makes every JAX start on a CPU machine
# probe for TPU workers (E0000 ... TPU_WORKER_HOSTNAMES); .ci/run adds it for its perf step.
AMT_JAX_EXTRAS=${AMT_JAX_EXTRAS-test}
"$PYTHON" -m pip install --disable-pip-version-check -q -e ".[${AMT_JAX_EXTRAS}]"

# Basic Pitch's published NMP weights (default transcription model), imported once.
"$PYTHON" -c "from amt_jax.models.nmp_weights import default_weights_path as p; raise SystemExit(not p().exists())" \
  || "$PYTHON" tools/import_basic_pitch.py \
  || echo "warning: Basic Pitch weights not imported; run: $PYTHON tools/import_basic_pitch.py" >&2
