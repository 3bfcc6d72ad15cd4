"""Score a trained model on a synthetic test split through the transcription CLI.

    python tools/eval_reference.py --checkpoint WORKDIR [--config tiny] \
        [--split test_unseen_soundfont] [--outdir /tmp/eval]

Writes each track's audio and MIDI, runs ``python -m amt_jax.transcribe`` (in process)
with ``--checkpoint`` on the whole directory, scores every transcription against its
MIDI with :mod:`amt_jax.metrics.transcription` under the family's frame convention, and
prints the mean over tracks (pitched notes; drums are not scored, as MT3).
"""

from __future__ import annotations

import argparse
import json
import os

FRAME_CONVENTION = {"nmp": "basic_pitch", "onsets_frames": "onsets_frames", "mt3": "mt3"}
TASK_FAMILY = {"nmp": "nmp", "onsets_frames": "onsets_frames", "mt3": "mt3_mt3"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="workdir or exported model")
    parser.add_argument("--config", default="tiny", help="synthetic dataset config")
    parser.add_argument("--split", default="test_unseen_soundfont")
    parser.add_argument("--outdir", default="/tmp/amt_jax_eval")
    args = parser.parse_args(argv)

    import note_seq

    from amt_jax.audio.io import write_audio
    from amt_jax.data import tasks
    from amt_jax.infer import cli
    from amt_jax.metrics import transcription
    from amt_jax.models import checkpoints
    from amt_jax.train.inputs import prepare_synthetic

    family, config = checkpoints.read_record(checkpoints.model_directory(args.checkpoint))
    prepare_synthetic(args.config)
    task = tasks.get_task(f"synthetic_{args.config}_{TASK_FAMILY[family]}_{args.split}")
    audio_dir = os.path.join(args.outdir, "audio")
    out_dir = os.path.join(args.outdir, "transcriptions")
    os.makedirs(audio_dir, exist_ok=True)
    tracks = list(tasks.load_tracks(task))
    for track in tracks:
        write_audio(
            os.path.join(audio_dir, f"{track.id}.wav"), track.audio, task.family.sample_rate
        )
    status = cli.main([audio_dir, "-o", out_dir, "--checkpoint", args.checkpoint, "--overwrite"])
    if status:
        return status
    granularities = ("flat", "full") if family == "mt3" else ()
    per_track = []
    for track in tracks:
        estimate = note_seq.midi_file_to_note_sequence(os.path.join(out_dir, f"{track.id}.mid"))
        per_track.append(
            transcription.track_metrics(
                track.sequence,
                estimate,
                with_velocity=family == "onsets_frames",
                program_granularities=granularities,
                frame_convention=FRAME_CONVENTION[family],
            )
        )
    metrics = transcription.aggregate_track_metrics(per_track)
    shown = {k: round(v, 4) for k, v in metrics.items() if k.endswith("F1")}
    print(json.dumps({"family": family, "split": args.split, "tracks": len(tracks), **shown}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
