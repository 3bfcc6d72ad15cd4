"""``python -m amt_jax.transcribe`` / ``amt-jax``: audio files or directories → MIDI.

One bad file is reported (naming the file and the problem) and the others go on; the exit
status is non-zero only when nothing was transcribed. Outputs are written under temporary
names and renamed, so no partial file is left behind. Heavy imports (JAX, the models)
happen after the arguments are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

EXAMPLES = """\
examples:
  python -m amt_jax.transcribe song.wav -o out/            # NMP, Basic Pitch's weights
  python -m amt_jax.transcribe recordings/ -o out/ --csv --plot
  python -m amt_jax.transcribe song.wav --reference song.mid --plot
  python -m amt_jax.transcribe song.wav --model mt3 --checkpoint runs/mt3_slakh

Writes OUTDIR/<name>.mid (and <name>.csv, <name>.npz, <name>.png when asked); inputs
from a directory keep their sub-directory under OUTDIR. The first NMP run imports Basic
Pitch's published weights into ~/.cache/amt_jax (pip download of basic-pitch 0.4.0).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amt_jax.transcribe",
        description="Transcribe audio to MIDI with NMP (Basic Pitch), Onsets and Frames or MT3.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or directories")
    parser.add_argument(
        "-o",
        "--output-dir",
        default=".",
        help="where outputs go: a directory or a URL such as gs://bucket/out (default: .)",
    )
    parser.add_argument(
        "--model",
        choices=("nmp", "onsets_frames", "mt3"),
        help="model family (default: the checkpoint's, else nmp with Basic Pitch's weights)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="training workdir or exported model (e.g. reference_runs/nmp, or a URL such as "
        "gs://bucket/run) to load; its model.json gives the family and config; required for "
        "mt3/onsets_frames",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="windows per model call (default: nmp 4, mt3 4, O&F 1)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        help="devices a call's rows are split over (default: every CPU core for mt3, else 1)",
    )
    parser.add_argument(
        "--weights-dtype",
        choices=("float32", "bfloat16"),
        help="mt3: bfloat16 weights, float32 accumulation (faster on CPUs with bf16 units; "
        "tokens may differ where two logits are within bf16 rounding; default float32)",
    )
    parser.add_argument("--csv", action="store_true", help="also write a note CSV")
    parser.add_argument(
        "--save-posteriors", action="store_true", help="also write frame posteriors (npz)"
    )
    parser.add_argument("--plot", action="store_true", help="also write a piano-roll PNG")
    parser.add_argument(
        "--reference",
        metavar="MIDI",
        help="reference MIDI for --plot (a file for one input, or a directory of <name>.mid)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (default: skip)"
    )
    group = parser.add_argument_group("note creation (defaults: basic-pitch's / O&F's)")
    group.add_argument("--onset-threshold", type=float, help="onset peak threshold")
    group.add_argument("--frame-threshold", type=float, help="frame (note) threshold")
    group.add_argument(
        "--minimum-note-length", type=float, metavar="MS", help="NMP: shortest note (127.7 ms)"
    )
    group.add_argument("--minimum-frequency", type=float, metavar="HZ", help="NMP: lowest pitch")
    group.add_argument("--maximum-frequency", type=float, metavar="HZ", help="NMP: highest pitch")
    group.add_argument(
        "--no-melodia", action="store_true", help="NMP: no notes traced without an onset"
    )
    group.add_argument(
        "--multiple-pitch-bends",
        action="store_true",
        help="NMP: one instrument per pitch so overlapping notes keep their bends",
    )
    return parser


def note_options(args: argparse.Namespace, family: str) -> dict:
    options = {"onset_threshold": args.onset_threshold, "frame_threshold": args.frame_threshold}
    nmp_only = {
        "minimum_note_length_ms": args.minimum_note_length,
        "min_freq": args.minimum_frequency,
        "max_freq": args.maximum_frequency,
        "melodia_trick": False if args.no_melodia else None,
        "multiple_pitch_bends": True if args.multiple_pitch_bends else None,
    }
    given = [name for name, value in nmp_only.items() if value is not None]
    if family != "nmp" and given:
        raise ValueError(f"options {given} only apply to the nmp model, not {family}")
    thresholds = (args.onset_threshold, args.frame_threshold)
    if family == "mt3" and any(value is not None for value in thresholds):
        raise ValueError("--onset-threshold / --frame-threshold do not apply to --model mt3")
    options.update(nmp_only)
    return {name: value for name, value in options.items() if value is not None}


def collect_inputs(inputs: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(file, output stem relative to OUTDIR) pairs, and problems with the arguments."""
    from amt_jax.audio.io import iter_audio_files

    files, problems = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = list(iter_audio_files(item))
            if not found:
                problems.append(f"'{item}': no audio files found in this directory")
            for path in found:
                relative = os.path.relpath(path, item)
                files.append((path, os.path.splitext(relative)[0]))
        elif os.path.exists(item):
            files.append((item, os.path.splitext(os.path.basename(item))[0]))
        else:
            problems.append(f"'{item}' does not exist")
    return files, problems


def find_reference(reference: str | None, stem: str, n_files: int) -> str | None:
    if reference is None:
        return None
    if os.path.isdir(reference):
        for extension in (".mid", ".midi"):
            candidate = os.path.join(reference, stem + extension)
            if os.path.exists(candidate):
                return candidate
        return None
    if n_files > 1:
        raise ValueError("--reference FILE needs exactly one input; pass a directory instead")
    return reference


def enable_compilation_cache(directory: str | None = None) -> None:
    """Persist XLA compilations across runs: only the first run of a model pays the compile
    time and its memory (compiling Basic Pitch's CQT alone peaks at ~600 MB)."""
    import jax

    from amt_jax.models.nmp_weights import cache_dir

    directory = directory or str(cache_dir() / "jax_compilation_cache")
    try:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    except (AttributeError, ValueError):  # older/newer jax without these options
        pass


def transcribe_one(transcriber, path: str, stem: str, args, options, reference: str | None) -> str:
    """Transcribe one file and write its outputs; returns a one-line summary."""
    from amt_jax import storage
    from amt_jax.infer import outputs

    base = storage.join(args.output_dir, stem)
    midi_path = base + ".mid"
    if storage.exists(midi_path) and not args.overwrite:
        return f"'{path}': {midi_path} exists, skipped (use --overwrite)"
    started = time.perf_counter()
    result = transcriber.transcribe(path, **options)
    elapsed = time.perf_counter() - started
    sequence = result.sequence
    written = [midi_path]
    # Side outputs first, MIDI last: a MIDI on disk means the file is complete.
    if args.csv:
        outputs.write_csv(sequence, base + ".csv")
        written.append(base + ".csv")
    if args.save_posteriors:
        outputs.write_posteriors(result.posteriors, base + ".npz", sample_rate=result.sample_rate)
        written.append(base + ".npz")
    f1 = None
    if args.plot:
        reference_sequence = None
        if reference is not None:
            import note_seq

            try:
                reference_sequence = note_seq.midi_file_to_note_sequence(reference)
            except Exception as error:  # noqa: BLE001 - any MIDI parse failure
                raise ValueError(
                    f"reference '{reference}' is not a readable MIDI file: {error}"
                ) from None
        f1 = outputs.plot_piano_roll(
            sequence, base + ".png", reference=reference_sequence, title=os.path.basename(path)
        )
        written.append(base + ".png")
    outputs.write_midi(sequence, midi_path)
    summary = (
        f"'{path}': {len(sequence.notes)} notes in {result.duration_s:.1f} s of audio "
        f"({elapsed:.2f} s) -> {', '.join(written)}"
    )
    if not len(sequence.notes):
        summary += " [no notes found: silent or too quiet?]"
    if f1 is not None:
        summary += f" [onset F1 vs reference {f1:.3f}]"
    return summary


def main(argv: list[str] | None = None, *, compilation_cache: bool = False) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model not in (None, "nmp") and args.checkpoint is None:
        parser.error(f"--model {args.model} needs --checkpoint DIR (a trained model)")
    family = args.model or "nmp"
    if args.model is not None:
        try:
            note_options(args, args.model)
        except ValueError as error:
            parser.error(str(error))
    if "://" in args.output_dir:  # never os.makedirs a URL (it would become ./gs:/...)
        from amt_jax import storage

        try:
            args.output_dir = storage.resolve(args.output_dir, "output directory")
        except storage.StorageError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if args.checkpoint is not None:
        from amt_jax.models import checkpoints

        try:
            family, _ = checkpoints.read_record(checkpoints.model_directory(args.checkpoint))
        except checkpoints.CheckpointError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if args.model is not None and args.model != family:
            print(
                f"error: '{args.checkpoint}' holds a {family} model, not {args.model}; drop "
                f"--model or pass --model {family}",
                file=sys.stderr,
            )
            return 1
    try:
        options = note_options(args, family)
    except ValueError as error:
        parser.error(str(error))
    files, problems = collect_inputs(args.inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not files:
        print("error: nothing to transcribe", file=sys.stderr)
        return 1
    try:
        references = [find_reference(args.reference, stem, len(files)) for _, stem in files]
    except ValueError as error:
        parser.error(str(error))

    from tqdm import tqdm

    from amt_jax.audio.io import AudioError
    from amt_jax.infer import transcribe as transcribe_lib

    if compilation_cache:  # the entry points: this process is ours to set up
        enable_compilation_cache()
        transcribe_lib.use_cpu_cores()
    settings = {
        "batch_size": args.batch_size,
        "devices": args.devices,
        "weights_dtype": args.weights_dtype,
    }
    try:
        transcriber = transcribe_lib.get_transcriber(
            args.model,
            args.checkpoint,
            **{name: value for name, value in settings.items() if value is not None},
        )
    except transcribe_lib.TranscriptionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    done, failed = 0, 0
    progress = tqdm(files, unit="file", disable=len(files) < 2, file=sys.stderr)
    for (path, stem), reference in zip(progress, references):
        progress.set_postfix_str(os.path.basename(path))
        try:
            message = transcribe_one(transcriber, path, stem, args, options, reference)
        except (AudioError, ValueError, OSError) as error:
            failed += 1
            tqdm.write(f"error: {error}", file=sys.stderr)
            continue
        done += 1
        tqdm.write(message, file=sys.stderr)
    progress.close()
    total = len(files) + len(problems)
    failures = failed + len(problems)
    summary = f"transcribed {done} of {total} input(s)"
    print(summary + (f"; {failures} failed" if failures else ""), file=sys.stderr)
    return 0 if done else 1


def console_main() -> None:
    """Entry of the ``amt-jax`` console script."""
    sys.exit(main(compilation_cache=True))


__all__ = ["build_parser", "console_main", "main"]
