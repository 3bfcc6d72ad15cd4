"""Library API: streamed windows equal whole-signal inference, audio reading, checkpoints."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from amt_jax import heap
from amt_jax.audio.io import AudioError
from amt_jax.infer import transcribe as tx
from amt_jax.models import nmp
from tests.infer.known_notes import harmonic_tones


@pytest.fixture(scope="module")
def nmp_transcriber():
    return tx.get_transcriber("nmp")


def test_nmp_streamed_windows_equal_basic_pitch_stitching_of_the_whole_signal(nmp_transcriber):
    audio = harmonic_tones(sample_rate=22050, seconds=5.0)  # 4 windows, last one zero-padded
    windows = nmp.window_audio(audio)  # all windows at once, cut as basic-pitch cuts them
    assert windows.shape[0] == math.ceil((audio.size + 3840) / 36164) == 4
    segments = nmp_transcriber.model.segment(audio)
    np.testing.assert_array_equal(segments.windows(audio, 0, len(segments)), windows)
    whole = nmp.unwrap_outputs(nmp_transcriber.predict_batch(windows), audio.size)
    streamed = nmp_transcriber.transcribe(audio, sample_rate=22050).posteriors
    # basic-pitch 0.4.0 keeps floor(n * 86 / 22050) frames
    assert streamed["note"].shape == (int(audio.size * 86 / 22050), 88)
    for name in ("note", "onset", "contour"):
        np.testing.assert_array_equal(streamed[name], whole[name])


def test_batch_sizes_cover_every_window_once_without_padding_rows():
    from amt_jax.models.base import Segments, power_of_two_batches, predict_segments

    assert power_of_two_batches(37, 8) == [8, 8, 8, 8, 4, 1]
    assert power_of_two_batches(16, 8) == [8, 8]
    assert power_of_two_batches(3, 8) == [2, 1]
    assert power_of_two_batches(0, 8) == []
    for count in range(40):
        for batch_size in (1, 3, 4, 8):
            sizes = power_of_two_batches(count, batch_size)
            assert sum(sizes) == count and max(sizes, default=1) <= batch_size
            assert len(set(sizes)) <= batch_size.bit_length() + 1
    starts = np.arange(5) * 10
    audio = np.arange(60, dtype=np.float32)
    segments = Segments(starts, 4, starts / 10)
    shapes = []

    def predict(batch):
        shapes.append(batch.shape)
        return {"first": batch[:, :1]}

    outputs = predict_segments(segments, audio, predict, 4)
    assert shapes == [(4, 4), (1, 4)]
    np.testing.assert_array_equal(outputs["first"][:, 0], starts)
    shapes.clear()
    predict_segments(segments, audio, predict, 4, pad_to_batch=True)
    assert shapes == [(4, 4), (4, 4)]


def test_array_and_file_inputs_agree_and_options_are_checked(nmp_transcriber, tmp_path):
    audio = harmonic_tones(sample_rate=44100, seconds=2.0)
    stereo = np.stack([audio, audio], axis=1)
    path = tmp_path / "x.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    from_file = nmp_transcriber.transcribe(str(path))
    from_array = nmp_transcriber.transcribe(stereo, sample_rate=44100)
    assert from_file.sample_rate == 22050 and from_file.num_samples == 44100
    assert len(from_file.sequence.notes) > 0
    assert [(n.pitch, n.start_time) for n in from_file.sequence.notes] == [
        (n.pitch, n.start_time) for n in from_array.sequence.notes
    ]
    high_only = nmp_transcriber.transcribe(str(path), min_freq=400.0, melodia_trick=False)
    assert all(n.pitch >= 67 for n in high_only.sequence.notes)
    with pytest.raises(ValueError, match="do not apply to the nmp model"):
        nmp_transcriber.transcribe(str(path), velocity_scale=2)
    with pytest.raises(ValueError, match="needs its sample_rate"):
        nmp_transcriber.transcribe(audio)


def test_read_mono_streams_blocks_mixes_and_resamples(tmp_path, monkeypatch):
    monkeypatch.setattr(tx, "_BLOCK_FRAMES", 1000)
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, size=(4500, 2)).astype(np.float32)
    path = tmp_path / "s.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(tx.read_mono(path, 16000), stereo.mean(axis=1))
    resampled = tx.read_mono(path, 22050)
    assert abs(resampled.size - 4500 * 22050 / 16000) <= 1
    stereo[2500, 1] = np.inf  # in the third block
    sf.write(path, stereo, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"s.wav' contains NaN/inf samples \(first at 0.156 s\)"):
        tx.read_mono(path, 16000)


def test_missing_weights_message_names_the_command(tmp_path, monkeypatch):
    from amt_jax.models import nmp_weights

    def no_network(dest_dir):
        raise nmp_weights.BasicPitchWeightsError(nmp_weights._fetch_help("no network"))

    monkeypatch.setattr(nmp_weights, "download_wheel", no_network)
    with pytest.raises(tx.TranscriptionError, match="tools/import_basic_pitch.py"):
        tx.pretrained_nmp(tmp_path / "absent.npz")
    assert not (tmp_path / "absent.npz").exists()


def test_untrained_families_need_a_checkpoint():
    with pytest.raises(tx.TranscriptionError, match="--checkpoint"):
        tx.Transcriber("mt3")
    with pytest.raises(ValueError, match="unknown model"):
        tx.Transcriber("crepe")


def test_onsets_frames_chunks_with_context_match_one_pass():
    from amt_jax.models.onsets_frames import ONSETS_FRAMES_TINY

    audio = harmonic_tones(sample_rate=16000, seconds=3.0)
    config = dataclasses.replace(ONSETS_FRAMES_TINY, chunk_frames=32, context_frames=16)
    chunked = tx.Transcriber("onsets_frames", random_weights=True, config=config, batch_size=2)
    total = ONSETS_FRAMES_TINY.num_frames(audio.size)
    result = chunked.transcribe(audio, sample_rate=16000)  # 3 chunks of 32 + 16 + 16 frames
    posteriors = result.posteriors
    assert posteriors["frame"].shape == (total, 88)
    # Chunk 1's core (frames 32..63) is what the model gives for its audio slice, which
    # starts 16 frames (of real audio) before the core.
    hop = ONSETS_FRAMES_TINY.mel.hop_length
    chunk_audio = audio[(32 - 16) * hop : (32 - 16) * hop + (32 + 2 * 16) * hop]
    direct = chunked.predict_batch(np.stack([chunk_audio, np.zeros_like(chunk_audio)]))
    for name in ("onset", "frame", "velocity"):
        np.testing.assert_array_equal(posteriors[name][32:64], direct[name][0, 16:48])
    assert result.sequence.total_time > 0


def test_mt3_segments_are_batched_and_stitched():
    from amt_jax.models.t5 import MT3Config

    config = MT3Config.tiny(vocab_size=1536)
    transcriber = tx.Transcriber(
        "mt3", random_weights=True, config=config, batch_size=2, max_decode_length=8
    )
    audio = np.zeros(int(2.5 * 32768), np.float32)  # 3 segments, the last one padded
    result = transcriber.transcribe(audio, sample_rate=16000)
    tokens = result.posteriors["tokens"]
    assert tokens.shape == (3, 8)
    # Segments are independent: each row equals decoding that segment on its own.
    lone = np.zeros((2, 32768), np.float32)
    lone[0] = audio[32768:65536]
    np.testing.assert_array_equal(transcriber.predict_batch(lone)["tokens"][0], tokens[1])
    assert result.stats["segments"] == 3


def test_batch_size_changes_memory_only_not_outputs():
    """The default batches were lowered for memory: notes and tokens must not change.

    XLA compiles each batch shape on its own, so O&F posteriors may differ in the last
    float32 bit between batch sizes (as the zero-padded last batch always could); notes
    and greedy tokens must be identical.
    """
    from amt_jax.models.onsets_frames import ONSETS_FRAMES_TINY
    from amt_jax.models.t5 import MT3Config

    audio = harmonic_tones(sample_rate=16000, seconds=3.0)
    config = dataclasses.replace(ONSETS_FRAMES_TINY, chunk_frames=32, context_frames=16)
    transcriber = tx.Transcriber("onsets_frames", random_weights=True, config=config)
    assert transcriber.batch_size == 1  # the default
    results = []
    for batch_size in (1, 2):  # same weights; the jitted function compiles per batch shape
        transcriber.batch_size = batch_size
        results.append(transcriber.transcribe(audio, sample_rate=16000, frame_threshold=0.45))
    for name in ("onset", "offset", "frame", "velocity"):
        np.testing.assert_allclose(
            results[0].posteriors[name], results[1].posteriors[name], rtol=0, atol=1e-6
        )
    notes = [
        [(n.pitch, n.start_time, n.end_time, n.velocity) for n in result.sequence.notes]
        for result in results
    ]
    assert len(notes[0]) > 0 and notes[0] == notes[1]
    transcriber = tx.Transcriber(
        "mt3", random_weights=True, config=MT3Config.tiny(vocab_size=1536), max_decode_length=16
    )
    tokens = []
    for batch_size in (1, 2):  # 3 segments: calls of 1 + 1 + 1, and of 2 + 1
        transcriber.batch_size = batch_size
        tokens.append(
            transcriber.transcribe(np.tile(audio, 2), sample_rate=16000).posteriors["tokens"]
        )
    assert tokens[0].shape == (3, 16)
    np.testing.assert_array_equal(tokens[0], tokens[1])


def _save_nmp_workdir(workdir, model, config):
    import optax

    from amt_jax.models import checkpoints
    from amt_jax.models.base import split_model
    from amt_jax.train.train_state import TrainState

    _, params, rest = split_model(model)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    state = TrainState(
        step=np.asarray(7, np.int32),
        params=params,
        model_state=rest,
        opt_state=optax.adam(1e-3).init(params),
    )
    saver = checkpoints.Checkpointer(str(workdir), async_save=False)
    saver.save(7, state, {"position": 1})
    saver.close()
    checkpoints.write_record(workdir, config)


def test_restore_model_from_a_training_workdir_and_its_export(tmp_path):
    from amt_jax.models import checkpoints

    trained = nmp.NMP(nmp.NMP_TINY, rngs=nnx.Rngs(3))
    _save_nmp_workdir(tmp_path / "run", trained, nmp.NMP_TINY)
    want = jax.tree.leaves_with_path(nnx.to_pure_dict(nnx.state(trained)))
    checkpoints.export_params(tmp_path / "run", tmp_path / "export")
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "export"):
        restored, step = checkpoints.restore_model(source)
        assert step == 7 and restored.config == nmp.NMP_TINY
        got = jax.tree.leaves_with_path(nnx.to_pure_dict(nnx.state(restored)))
        assert len(got) == len(want) == 24  # the 24 variables of the published model
        for (path, value), (_, expected) in zip(got, want):
            np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), str(path))
    # a transcriber needs nothing but the workdir: family and config come from model.json
    transcriber = tx.Transcriber(checkpoint=tmp_path / "export")
    assert transcriber.family == "nmp" and transcriber.config == nmp.NMP_TINY


def test_options_that_contradict_the_checkpoint_are_one_line_errors(tmp_path):
    from amt_jax.models import checkpoints
    from amt_jax.models.t5 import MT3Config

    _save_nmp_workdir(tmp_path, nmp.NMP(nmp.NMP_TINY, rngs=nnx.Rngs(3)), nmp.NMP_TINY)
    with pytest.raises(tx.TranscriptionError, match="holds a nmp model, not mt3"):
        tx.Transcriber("mt3", checkpoint=tmp_path)
    with pytest.raises(tx.TranscriptionError, match="contour_filters: recorded 4, given 8"):
        tx.Transcriber(checkpoint=tmp_path, config=nmp.NMP_CONFIG)
    with pytest.raises(checkpoints.CheckpointError, match="another config"):
        checkpoints.write_record(tmp_path, nmp.NMP_CONFIG)  # a workdir keeps its model
    mt3_dir = tmp_path / "mt3"
    checkpoints.write_record(mt3_dir, MT3Config.tiny())
    with pytest.raises(tx.TranscriptionError, match="contradicts the 'mt3' vocabulary"):
        tx.Transcriber(checkpoint=mt3_dir, vocabulary="seed")
    with pytest.raises(tx.TranscriptionError, match="no model.json"):
        tx.Transcriber(checkpoint=tmp_path / "checkpoints" / "7")


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's malloc_trim only")
def test_release_freed_heap_returns_freed_chunks_to_the_os():
    """Freed heap chunks below the top stay resident until release_freed_heap()."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    chunk = 64 * 1024  # below glibc's mmap threshold: served from the heap
    pointers = [libc.malloc(chunk) for _ in range(2400)]  # 150 MB
    for pointer in pointers:
        ctypes.memset(pointer, 1, chunk)
    before = _resident_mb()
    for pointer in pointers[:-1]:  # the last one pins the heap top, so free() cannot trim
        libc.free(pointer)
    freed_but_resident = _resident_mb()
    tx.release_freed_heap()
    after = _resident_mb()
    libc.free(pointers[-1])
    assert freed_but_resident > before - 50
    assert after < freed_but_resident - 100
