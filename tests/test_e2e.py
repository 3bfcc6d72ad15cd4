"""Train -> checkpoint -> ``amt-jax --checkpoint`` -> score, one test per family.

Each test trains a tiny model from scratch with the real loop (``amt_jax.train.loop``)
until it overfits one short piece rendered with FluidSynth, then transcribes the piece's
WAV with the transcription CLI reading only the workdir, and scores the CLI's MIDI
against the piece's notes. A break anywhere on that path (targets, vocabulary, model
record, restore, segmenting, stitching, decoding) fails the onset-F1 bar. For MT3 the
in-training eval F1 must also equal the CLI's F1 on the same track.

Run them alone with ``pytest -m e2e``.
"""

from __future__ import annotations

import dataclasses

import note_seq
import numpy as np
import pytest
import soundfile as sf
from note_seq.protobuf import music_pb2

from amt_jax.data import preprocessors
from amt_jax.infer import cli
from amt_jax.metrics import transcription
from amt_jax.models import checkpoints, nmp, onsets_frames, t5
from amt_jax.train import evaluation, loop, optimizers, trainer

pytestmark = pytest.mark.e2e

#: (onset s, offset s, MIDI pitch): a melody with a dyad, 3.2 s, piano
PIECE = (
    (0.10, 0.45, 60),
    (0.50, 0.85, 64),
    (0.90, 1.25, 67),
    (1.30, 1.90, 72),
    (1.30, 1.90, 55),
    (2.00, 2.35, 62),
    (2.40, 2.90, 69),
)
SECONDS = 3.2


def _piece(sample_rate: int) -> tuple[np.ndarray, music_pb2.NoteSequence]:
    from amt_jax.data.synth import render, soundfonts

    fonts = soundfonts.available_in_family("fluidr3")
    if not fonts:
        pytest.skip("FluidR3_GM soundfont not installed (tools/setup.sh installs it)")
    sequence = music_pb2.NoteSequence(id="e2e_piece", ticks_per_quarter=220)
    sequence.tempos.add(qpm=120)
    for onset, offset, pitch in PIECE:
        sequence.notes.add(
            pitch=pitch, velocity=90, start_time=onset, end_time=offset, program=0, instrument=0
        )
    sequence.total_time = SECONDS
    with render.FluidSynthRenderer(soundfonts.resolve(fonts[0]), sample_rate) as synth:
        rendered = synth.render(sequence, render.MixSettings(tail_seconds=0.2))
    audio = rendered.audio.astype(np.float32) / 32768.0
    return audio, rendered.sequence


class _Windows:
    """Training batches of the exact windows inference will see (the model's ``segment``),
    plus a little jitter so the model does not learn one alignment only."""

    def __init__(self, audio_s, sequence, model, spec, batch_size, jitter, seed=0):
        self.audio_s, self.sequence, self.spec = audio_s, sequence, spec
        self.starts = model.segment(audio_s).starts
        self.batch_size, self.jitter = batch_size, jitter
        self.step, self.seed = 0, seed

    def state(self):
        return {"step": self.step}

    def restore(self, state):
        self.step = int(state["step"])

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng((self.seed, self.step))
        self.step += 1
        rows = []
        for row in range(self.batch_size):
            start = int(self.starts[row % len(self.starts)])
            if self.jitter and row >= len(self.starts):
                start += int(rng.integers(-self.jitter, self.jitter + 1))
            rows.append(preprocessors.make_example(self.audio_s, self.sequence, start, self.spec))
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _train(tmp_path, config, spec, *, steps, batch_size, learning_rate, jitter, sequence=None):
    model_class = {
        t5.MT3Config: t5.MT3Model,
        nmp.NMPConfig: nmp.NMP,
        onsets_frames.OnsetsFramesConfig: onsets_frames.OnsetsFrames,
    }[type(config)]
    audio_s, rendered = _piece(model_class.sample_rate)
    sequence = rendered if sequence is None else sequence
    abstract = model_class.from_config(config, rngs=__import__("flax").nnx.Rngs(0))
    workdir = tmp_path / "workdir"
    result = loop.train(
        workdir=str(workdir),
        model_factory=trainer.model_factory(model_class, config),
        optimizer=optimizers.adam(learning_rate),
        train_data=lambda **_: _Windows(audio_s, sequence, abstract, spec, batch_size, jitter),
        num_steps=steps,
        batch_size=batch_size,
        eval_tracks=lambda: [evaluation.EvalTrack("piece", audio_s, rendered)],
        eval_batch_size=8,
        mesh_data=1,
        num_devices=1,
        checkpoint_every=steps,
        log_every=steps,
        async_checkpoints=False,
        measure_mfu=False,
        progress_bar=False,
        tensorboard=False,
    )
    wav = tmp_path / "piece.wav"
    sf.write(wav, audio_s, model_class.sample_rate, subtype="PCM_16")
    return workdir, wav, rendered, result


def _cli_f1(workdir, wav, reference, tmp_path, model: str) -> float:
    out = tmp_path / "out"
    status = cli.main([str(wav), "--model", model, "--checkpoint", str(workdir), "-o", str(out)])
    if status != 0:  # a broken path fails as an error, apart from the F1 bar
        raise RuntimeError(f"amt-jax --checkpoint {workdir} exited with {status}")
    estimate = note_seq.midi_file_to_note_sequence(str(out / "piece.mid"))
    return transcription.track_metrics(reference, estimate)["Onset F1"]


def test_nmp_trains_and_transcribes_through_the_cli(tmp_path):
    # BatchNorm momentum 0.9: the running statistics the CLI uses settle within the run
    config = dataclasses.replace(nmp.NMP_TINY, label_smoothing=0.0, batch_norm_momentum=0.9)
    workdir, wav, reference, result = _train(
        tmp_path, config, preprocessors.NMP, steps=250, batch_size=3, learning_rate=1e-2, jitter=0
    )
    assert checkpoints.read_record(workdir) == ("nmp", config)
    f1 = _cli_f1(workdir, wav, reference, tmp_path, "nmp")
    assert f1 >= 0.9, (f1, result.eval_metrics)


def test_onsets_frames_trains_and_transcribes_through_the_cli(tmp_path):
    config = dataclasses.replace(
        onsets_frames.ONSETS_FRAMES_TINY,
        # the class-prior output bias keeps the tiny BiLSTMs out of saturation (with zero
        # biases the onset posteriors stay < 0.04 after 300 steps); BatchNorm momentum 0.9
        # lets the running statistics the CLI uses settle within the run
        output_bias_prior=0.01,
        batch_norm_momentum=0.9,
        conv_dropout=(0.0, 0.0, 0.0),
        fc_dropout=0.0,
        chunk_frames=32,
        context_frames=8,
    )
    model = onsets_frames.OnsetsFrames(config, rngs=__import__("flax").nnx.Rngs(0))
    window = model.segment(np.zeros(16000)).length
    spec = dataclasses.replace(
        preprocessors.ONSETS_FRAMES, window_samples=window, num_frames=window // 512
    )
    workdir, wav, reference, result = _train(
        tmp_path, config, spec, steps=300, batch_size=8, learning_rate=1e-2, jitter=0
    )
    assert checkpoints.read_record(workdir) == ("onsets_frames", config)
    f1 = _cli_f1(workdir, wav, reference, tmp_path, "onsets_frames")
    assert result.eval_metrics["Onset F1"] == pytest.approx(f1)
    assert f1 >= 0.9, (f1, result.eval_metrics)


def test_mt3_trains_and_transcribes_through_the_cli_with_its_vocabulary(tmp_path):
    config = t5.MT3Config.tiny(dropout_rate=0.0, targets_length=128)
    spec = dataclasses.replace(preprocessors.MT3, target_length=128)
    workdir, wav, reference, result = _train(
        tmp_path, config, spec, steps=250, batch_size=8, learning_rate=3e-3, jitter=0
    )
    f1 = _cli_f1(workdir, wav, reference, tmp_path, "mt3")
    assert f1 >= 0.9, (f1, result.eval_metrics)
    assert result.eval_metrics["Onset F1"] == pytest.approx(f1)
