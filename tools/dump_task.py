"""Print a few decoded examples of a task: tokens as events, rolls as shapes and counts.

Usage:
  python tools/build_dataset.py amt_synthetic/tiny --data_dir /tmp/tfds
  python tools/dump_task.py synthetic_tiny_mt3_mt3_train --data_dir /tmp/tfds
  python tools/dump_task.py synthetic_tiny_onsets_frames_validation --data_dir /tmp/tfds -n 3
  python tools/dump_task.py synthetic_tiny_nmp_test_unseen_soundfont --data_dir /tmp/tfds
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def describe_tokens(tokens: np.ndarray, layout: str, max_events: int = 48) -> str:
    from amt_jax.vocab.layouts import EOS_ID, NUM_SPECIAL_TOKENS, VocabularyConfig, build_codec

    codec = build_codec(VocabularyConfig.named(layout))
    words = []
    for token in tokens.tolist():
        if token == 0:
            break
        if token == EOS_ID:
            words.append("EOS")
            break
        if token < NUM_SPECIAL_TOKENS or token - NUM_SPECIAL_TOKENS >= codec.num_classes:
            words.append(f"<{token}>")
            continue
        event = codec.decode_event_index(token - NUM_SPECIAL_TOKENS)
        words.append(f"{event.type}:{event.value}")
    shown = words if len(words) <= max_events else words[: max_events - 8] + ["..."] + words[-8:]
    return f"{len(words)} tokens: " + " ".join(shown)


def describe_example(example: dict, layout: str) -> list[str]:
    lines = []
    for key, value in example.items():
        if key == "targets_bl":
            lines.append(f"  {key}: {describe_tokens(value, layout)}")
        elif key == "audio_bs":
            rms = float(np.sqrt(np.mean(value**2)))
            lines.append(f"  {key}: {value.shape} {value.dtype} rms={rms:.4f}")
        else:
            active = value.sum(axis=0) > 0
            lines.append(
                f"  {key}: {value.shape} {value.dtype} ones={int((value > 0).sum())} "
                f"active_bins={int(active.sum())}"
            )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("-n", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np

    from amt_jax.data import chunks, tasks

    for config in ("tiny", "default"):
        tasks.register_synthetic_tasks(config, args.data_dir)
    spec = tasks.get_task(args.task)
    source = tasks.chunk_source(spec)
    rng = np.random.default_rng(args.seed)
    print(
        f"task {spec.name}: {spec.tfds_name} split {spec.split}, family {spec.family.name}, "
        f"{len(source)} chunks of {source.meta.num_tracks} tracks in {source.directory}"
    )
    for number in range(args.n):
        chunk = chunks.decode_chunk(source[int(rng.integers(len(source)))])
        start = chunks.random_start(rng, chunk, spec.family.window_samples)
        seconds = (chunk.start_sample + start) / spec.family.sample_rate
        print(
            f"example {number}: track {chunk.track_id} chunk {chunk.index} crop at {seconds:.3f} s"
        )
        example = chunks.crop_example(chunk, start, spec.family)
        print("\n".join(describe_example(example, spec.family.vocab_layout)))


if __name__ == "__main__":
    main()
