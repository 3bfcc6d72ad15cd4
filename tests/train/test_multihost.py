"""Two CPU processes (jax.distributed, gloo collectives): per-host data, one global batch.

The hosts read through the real training pipeline (`pipeline.TrainIterator`) over a chunk
store of 64 one-chunk tracks whose audio is the track's number, so every row says which
record it came from.
"""

import json
import os
import socket
import subprocess
import sys

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
GLOBAL_BATCH = 8
NUM_TRACKS = 64
TASK = "multihost_numbered_tracks"


def _family():
    import dataclasses

    from amt_jax.data import preprocessors

    return dataclasses.replace(preprocessors.ONSETS_FRAMES, window_samples=512, num_frames=1)


def register_task(chunk_dir: str) -> None:
    from amt_jax.data import tasks

    spec = tasks.TaskSpec(TASK, "none/none", "train", _family(), chunk_dir=chunk_dir)
    tasks.register_task(spec, with_seqio=False)


def track_of(audio_bs):
    """Track numbers of a batch of crops (every sample of track k is (k + 1) / 32768)."""
    import numpy as np

    return np.rint(audio_bs[:, 0] * 32768).astype(np.int32) - 1


def write_numbered_tracks(directory: str) -> None:
    import note_seq
    import numpy as np

    from amt_jax.data import chunks, tasks

    tracks = []
    for k in range(NUM_TRACKS):
        ns = note_seq.NoteSequence()
        ns.notes.add(start_time=0.1, end_time=0.5, pitch=60, velocity=80)
        audio = np.full(16000, (k + 1) / 32768, np.float32)
        tracks.append(tasks.Track(f"track-{k:03d}", audio, ns))
    chunks.write_store(directory, tracks, 16000, records_per_file=16)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_hosts_read_disjoint_shards_of_one_global_batch(tmp_path):
    chunk_dir = str(tmp_path / "chunks")
    write_numbered_tracks(chunk_dir)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(port), str(i), "2", str(GLOBAL_BATCH), chunk_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-2000:]
            line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
            results.append(json.loads(line[len("RESULT ") :]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results.sort(key=lambda r: r["process_index"])
    first, second = results
    assert [r["process_count"] for r in results] == [2, 2]
    assert [r["global_devices"] for r in results] == [4, 4]
    ids_a, ids_b = set(first["example_ids"]), set(second["example_ids"])
    assert len(ids_a) == len(ids_b) == GLOBAL_BATCH // 2
    assert not ids_a & ids_b, "the two hosts read overlapping examples"
    # the global array is host 0's rows then host 1's, identical on both hosts, and the
    # same global batch one host would have read
    expected = first["one_host"]
    assert second["one_host"] == expected and len(set(expected)) == GLOBAL_BATCH
    assert first["global_shape"] == second["global_shape"] == [GLOBAL_BATCH]
    assert first["gathered"] == second["gathered"] == expected
    # and each host's devices hold exactly the rows it read
    assert first["addressable"] == sorted(int(i[6:]) for i in ids_a)
    assert second["addressable"] == sorted(int(i[6:]) for i in ids_b)
