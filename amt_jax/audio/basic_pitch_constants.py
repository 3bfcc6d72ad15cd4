"""Basic Pitch's fixed sizes (``basic_pitch/constants.py`` of basic-pitch 0.4.0), in one place.

The CQT front end, the NMP model, its targets and its note creation all depend on these
numbers; they live here, in the lowest layer that needs them (the CQT), and every other
module imports them.
"""

from __future__ import annotations

#: audio sample rate (``AUDIO_SAMPLE_RATE``)
SAMPLE_RATE = 22050
#: CQT hop in samples (``FFT_HOP``): one model frame every 11.6 ms
HOP_SAMPLES = 256
#: the true frame rate, 86.13 fps (labels and note lengths use it)
FRAMES_PER_SECOND = SAMPLE_RATE / HOP_SAMPLES
#: basic-pitch's rounded frame rate (``ANNOTATIONS_FPS``; it sets the stitched length)
ANNOTATIONS_FPS = 86
#: model input window: 2 s minus one hop (``AUDIO_N_SAMPLES``)
WINDOW_SAMPLES = 2 * SAMPLE_RATE - HOP_SAMPLES  # 43844
#: output frames per window (``ANNOT_N_FRAMES`` = 86 fps x 2 s = 43844 // 256 + 1)
FRAMES_PER_WINDOW = 2 * ANNOTATIONS_FPS  # 172
#: frames shared by consecutive windows; half of it is trimmed at each window edge
OVERLAP_FRAMES = 30
OVERLAP_SAMPLES = OVERLAP_FRAMES * HOP_SAMPLES  # 7680
#: samples between window starts
WINDOW_HOP_SAMPLES = WINDOW_SAMPLES - OVERLAP_SAMPLES  # 36164

#: MIDI pitch of pitch index 0 (A0) and the number of pitches (the 88 piano keys)
MIDI_OFFSET = 21
N_PITCHES = 88
#: CQT / contour resolution (``CONTOURS_BINS_PER_SEMITONE``)
BINS_PER_SEMITONE = 3
BINS_PER_OCTAVE = 12 * BINS_PER_SEMITONE  # 36
#: contour output bins (``N_FREQ_BINS_CONTOURS``): bin 3k is MIDI 21 + k
N_CONTOUR_BINS = N_PITCHES * BINS_PER_SEMITONE  # 264
#: lowest CQT bin, A0 (``ANNOTATIONS_BASE_FREQUENCY``)
FMIN = 27.5
#: CQT bins: 103 semitones, capped by Nyquist (bin 308 is 10346.9 Hz)
N_CQT_BINS = 309
#: harmonic-stack channels (0.5 is the sub-harmonic)
HARMONICS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
