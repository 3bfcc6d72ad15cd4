"""The quickstart's main job: ``python -m amt_jax.demo [--outdir outputs/demo]``.

Three stages on the built-in default data (everything offline):

1. front end: times the jitted CQT, NMP front end and log-mel against librosa on
   synthetic polyphony and writes ``frontend.png`` (CQT and harmonic stack);
2. train: builds the tiny synthetic dataset (FluidSynth renders, ~1 min the first time)
   and trains the NMP with the tiny overlay's narrower heads on it with the real trainer
   (``python -m amt_jax.train --gin_file=nmp.gin --gin_file=tiny/nmp.gin``, 600 steps);
3. transcribe: takes a test piece rendered with a soundfont family never used in training
   and transcribes it through the CLI with the checkpoint trained in stage 2 and with NMP
   + Basic Pitch's published weights, writing MIDI, a note CSV and a piano roll with the
   reference overlaid; prints the note F1 of both beside an untrained copy of the model.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _median_time(fn, rounds: int = 3) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def frontend_demo(outdir: str, seconds: float = 30.0) -> dict[str, float]:
    """Print front-end throughput against librosa and write ``frontend.png``."""
    import jax
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from amt_jax.audio import cqt, harmonic, mel
    from amt_jax.audio.testsignals import polyphonic_signal

    audio22, notes = polyphonic_signal(seconds, 22050, seed=0)
    audio16 = librosa.resample(audio22, orig_sr=22050, target_sr=16000)
    batch22, batch16 = jax.numpy.asarray(audio22[None]), jax.numpy.asarray(audio16[None])
    config = cqt.CQTConfig()
    frontend = jax.jit(lambda a: harmonic.harmonic_stack(cqt.normalized_log(cqt.cqt(a, config))))
    logmel = jax.jit(lambda a: mel.log_mel(a, mel.MT3_MEL))

    timings = {
        "librosa.cqt": _median_time(
            lambda: librosa.cqt(
                audio22, sr=22050, hop_length=256, fmin=27.5, n_bins=309, bins_per_octave=36
            )
        ),
        "amt_jax.cqt": _median_time(lambda: jax.block_until_ready(cqt.cqt(batch22, config))),
        "amt_jax NMP front end": _median_time(lambda: jax.block_until_ready(frontend(batch22))),
        "librosa log-mel": _median_time(
            lambda: np.log(
                np.maximum(
                    librosa.feature.melspectrogram(
                        y=audio16,
                        sr=16000,
                        n_fft=2048,
                        hop_length=128,
                        n_mels=512,
                        fmin=20.0,
                        fmax=7600.0,
                        htk=True,
                        norm=None,
                        power=1.0,
                    ),
                    1e-5,
                )
            )
        ),
        "amt_jax log-mel (MT3)": _median_time(lambda: jax.block_until_ready(logmel(batch16))),
    }
    print(f"Front end on {seconds:.0f} s of synthetic polyphony ({len(notes)} notes):")
    for name, t in timings.items():
        peer = timings["librosa log-mel" if "mel" in name else "librosa.cqt"]
        print(
            f"  {name:24s} {t * 1000:8.1f} ms  {seconds / t:7.0f}x real time  "
            f"{peer / t:5.2f}x librosa"
        )

    mag = np.asarray(cqt.cqt(batch22[:, : 22050 * 6], config))[0]
    stack = np.asarray(frontend(batch22[:, : 22050 * 6]))[0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    axes[0].imshow(np.log1p(mag.T), origin="lower", aspect="auto", cmap="magma")
    axes[0].set(title="CQT (log1p magnitude), 36 bins/octave", xlabel="frame", ylabel="bin")
    for ax, channel, label in ((axes[1], 1, "h = 1"), (axes[2], 3, "h = 3 (aligned)")):
        ax.imshow(stack[:, :, channel].T, origin="lower", aspect="auto", cmap="magma")
        ax.set(title=f"Harmonic stack channel {label}", xlabel="frame", ylabel="bin")
    for t0, _, pitch in notes:
        if t0 < 6:
            axes[0].plot(t0 * 22050 / 256, 3 * (pitch - 21), "c.", markersize=4)
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "frontend.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"Wrote {path}")
    return timings


def train_demo(outdir: str, steps: int) -> int:
    """Train the NMP (tiny overlay: narrower heads) on the tiny synthetic dataset with the
    real trainer, as ``python -m amt_jax.train --gin_file=nmp.gin --gin_file=tiny/nmp.gin``."""
    from amt_jax.train.main import main as train_main

    workdir = os.path.join(outdir, "nmp_tiny")
    print(f"\nTraining the tiny NMP for {steps} steps in {workdir} (resumes if run again)")
    return train_main(
        [
            "--gin_file=nmp.gin",
            "--gin_file=tiny/nmp.gin",
            f"--gin.NUM_STEPS={steps}",
            "--gin.BATCH_SIZE=8",
            f"--gin.CHECKPOINT_EVERY={max(steps // 2, 1)}",
            f"--gin.LOG_EVERY={max(steps // 10, 1)}",
            f"--workdir={workdir}",
        ]
    )


def _held_out_piece(outdir: str):
    import note_seq

    from amt_jax.audio.io import write_audio
    from amt_jax.data import tasks
    from amt_jax.train.inputs import prepare_synthetic

    prepare_synthetic("tiny")
    track = next(
        iter(tasks.load_tracks(tasks.get_task("synthetic_tiny_nmp_test_unseen_soundfont")))
    )
    pieces = os.path.join(outdir, "pieces")
    os.makedirs(pieces, exist_ok=True)
    wav = os.path.join(pieces, f"{track.id}.wav")
    reference = os.path.join(pieces, f"{track.id}.mid")
    write_audio(wav, track.audio, 22050)
    note_seq.sequence_proto_to_midi_file(track.sequence, reference)
    return track, wav, reference


def transcribe_demo(outdir: str, trained: bool) -> int:
    """A test piece rendered with a soundfont family never used in training, through the
    CLI: with the model trained above (its workdir), an untrained copy of it, and NMP with
    Basic Pitch's published weights; note F1 of each against the piece's MIDI."""
    import note_seq

    from amt_jax.infer import transcribe as transcribe_lib
    from amt_jax.infer.cli import main as transcribe_main
    from amt_jax.metrics.transcription import track_metrics

    track, wav, reference = _held_out_piece(outdir)
    print(
        f"\nTranscribing the held-out piece {wav} ({len(track.audio) / 22050:.1f} s, "
        f"{len(track.sequence.notes)} reference notes)"
    )
    runs = {"Basic Pitch weights (NMP)": []}
    workdir = os.path.join(outdir, "nmp_tiny")
    if trained and os.path.isdir(os.path.join(workdir, "checkpoints")):
        runs = {"trained here (tiny NMP)": ["--checkpoint", workdir], **runs}
    results, code = {}, 0
    for name, extra in runs.items():
        out = os.path.join(outdir, "transcriptions", name.split(" ")[0].lower())
        status = transcribe_main(
            [wav, "-o", out, "--csv", "--plot", "--reference", reference, "--overwrite", *extra]
        )
        code |= status
        if status == 0:
            estimate = note_seq.midi_file_to_note_sequence(os.path.join(out, f"{track.id}.mid"))
            results[name] = track_metrics(track.sequence, estimate)
            print(f"Wrote {out}/{track.id}.mid, .csv and .png")
    if "trained here (tiny NMP)" in results:
        untrained = transcribe_lib.Transcriber(
            "nmp",
            random_weights=True,
            config=transcribe_lib.Transcriber(checkpoint=workdir).config,
        )
        estimate = untrained.transcribe(wav).sequence
        results["untrained (same config)"] = track_metrics(track.sequence, estimate)
    print(f"\n{'model':28s} {'onset F1':>9s} {'onset+offset F1':>16s} {'frame F1':>9s}")
    for name, scores in results.items():
        print(
            f"{name:28s} {scores['Onset F1']:9.3f} {scores['Onset + offset F1']:16.3f} "
            f"{scores['Frame F1']:9.3f}"
        )
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", default="outputs/demo")
    parser.add_argument("--seconds", type=float, default=30.0, help="front-end audio length")
    parser.add_argument("--train-steps", type=int, default=600, help="tiny NMP training steps")
    parser.add_argument(
        "--stages", default="frontend,train,transcribe", help="comma-separated stages to run"
    )
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    unknown = stages - {"frontend", "train", "transcribe"}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}")
    code = 0
    if "frontend" in stages:
        frontend_demo(args.outdir, args.seconds)
    if "train" in stages:
        code |= train_demo(args.outdir, args.train_steps)
    if "transcribe" in stages:
        code |= transcribe_demo(args.outdir, trained="train" in stages)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
