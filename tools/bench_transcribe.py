"""Transcription speed against basic-pitch 0.4.0 (same run), and peak memory on long audio.

    python tools/bench_transcribe.py speed                 # 60 s file, amt_jax vs basic-pitch TF
    python tools/bench_transcribe.py speed --bp-python /path/to/venv/bin/python
    python tools/bench_transcribe.py stages                # amt_jax's time per stage (60 s file)
    python tools/bench_transcribe.py memory                # 7 m 45 s file, every model family
    python tools/bench_transcribe.py mt3 --variants 4:1:float32,16:2:bfloat16  # 3-min MT3

speed: the same 60 s synthetic polyphonic wav (``amt_jax.audio.testsignals``) is
transcribed by amt_jax (NMP with Basic Pitch's imported weights, whole pipeline: file read,
resampling, windows, model, note creation) and by basic-pitch 0.4.0's ``predict()`` with
its TensorFlow backend, in a separate virtualenv (created on first use under
``$AMT_JAX_CACHE/basic_pitch_0.4.0_venv`` with ``python3 -m venv`` and
``pip install basic-pitch==0.4.0 "tensorflow<2.15.1"``; Python 3.11). basic-pitch runs in
a subprocess that times ``predict()`` itself. Both: one warm-up call, then ``--rounds``
interleaved rounds (one basic-pitch ``predict()``, then one amt_jax ``transcribe()``, so a
change of the machine's load hits both), and the medians. Notes are compared with mir_eval
(onset F1 and onset+offset F1 of amt_jax's notes against basic-pitch's).

stages: where amt_jax's time goes on the same 60 s file, stage by stage (file read and
resampling, window batches, the model per batch and its parts down to each conv, transfer
to the host, stitching, note creation, pitch bends, NoteSequence), median of ``--rounds``
interleaved rounds; the stages run separately, so their sum is close to but not exactly
one ``transcribe()``.

memory: peak RSS (``/usr/bin/time -v``, Debian package ``time``) of a fresh process that
transcribes a 7 m 45 s 44.1 kHz file with each family: NMP with the imported weights;
Onsets and Frames and MT3 at their published sizes with *random* weights (memory does
not depend on the weights). A random MT3 never emits EOS, so each segment would decode all
1024 greedy steps (hours for 227 segments on 2 cores); by default the random MT3 is made
to emit EOS at the first step (``make_mt3_stop_at_first_token``): the compiled program,
KV cache for 1024 tokens included, is the same, so the peak is too, and the whole file is
still read, resampled, encoded and decoded segment by segment. ``--mt3-full-decode`` runs
all 1024 steps (use it with a short ``--seconds 16.384`` and ``--trace-dir`` to see the
peak reached in the first batch and then flat). Each child also reports its peak after
the imports, after building the model and after transcribing, and whether TensorFlow got
imported; ``--trace-dir`` writes its RSS once a second.

mt3: wall time, real-time factor and peak RSS of MT3 (published size, random weights)
transcribing a 3-minute synthetic polyphonic piece (88 segments), one fresh process per
variant (batch size, CPU devices the rows are split over, weights dtype, refilled rows or
fixed batches), ``transcribe()`` called ``--repeat`` times (the first call compiles).
Random weights never emit EOS, so each segment is made to stop at a step in ``--tokens``
(default 200-400, what MT3 emits on real music), fixed by the segment's audio
(``make_mt3_stop_after``). With fixed batches a batch decodes until its longest row is
done; with refilled rows (the default) a finished row takes the next segment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASIC_PITCH_SCRIPT = r"""
import json, sys, time
path = sys.argv[1]
t0 = time.perf_counter()
from basic_pitch import ICASSP_2022_MODEL_PATH
from basic_pitch.inference import Model, predict
model = Model(ICASSP_2022_MODEL_PATH)
load_s = time.perf_counter() - t0
predict(path, model)  # warm-up (librosa / numba caches, TF graph)
print(json.dumps({"load_s": load_s, "backend": type(model.model).__module__}), flush=True)
for line in sys.stdin:  # one timed predict() per line, so rounds interleave with amt_jax's
    t, cpu = time.perf_counter(), time.process_time()
    _, _, events = predict(path, model)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(json.dumps({
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "notes": [[float(e[0]), float(e[1]), int(e[2]), float(e[3])] for e in events],
    }), flush=True)
"""


class BasicPitchProcess:
    """basic-pitch 0.4.0 in its own interpreter, timing one ``predict()`` per request."""

    def __init__(self, python: str, path: str):
        # stderr to a file: a pipe nobody reads could fill up and block TensorFlow.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [python, "-c", BASIC_PITCH_SCRIPT, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        )
        self.info = self._read()

    def _read(self) -> dict:
        """The next JSON line (basic-pitch prints progress messages on stdout too)."""
        while True:
            line = self.process.stdout.readline()
            if not line:
                self.process.kill()
                self.stderr.seek(0)
                raise SystemExit(f"basic-pitch failed:\n{self.stderr.read()[-3000:]}")
            if line.startswith("{"):
                return json.loads(line)

    def predict(self) -> dict:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.stderr.close()


def cache_dir() -> Path:
    return Path(os.environ.get("AMT_JAX_CACHE") or Path.home() / ".cache" / "amt_jax")


def ensure_basic_pitch_python(given: str | None) -> str:
    """The interpreter of a virtualenv with basic-pitch 0.4.0 + TF < 2.15.1 (created once)."""
    if given:
        return given
    venv = cache_dir() / "basic_pitch_0.4.0_venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import basic_pitch, tensorflow"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    print(f"creating {venv} (pip install basic-pitch==0.4.0, takes minutes)...", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "basic-pitch==0.4.0", "tensorflow<2.15.1"],
        check=True,
    )
    return str(python)


def write_test_file(path: str, seconds: float, sample_rate: int) -> None:
    import soundfile as sf

    from amt_jax.audio.testsignals import polyphonic_signal

    audio, _ = polyphonic_signal(seconds, sample_rate)
    sf.write(path, audio, sample_rate, subtype="PCM_16")


def sequence_from_events(events):
    from note_seq.protobuf import music_pb2

    sequence = music_pb2.NoteSequence()
    for start, end, pitch, amplitude in events:
        sequence.notes.add(
            start_time=start, end_time=end, pitch=pitch, velocity=int(round(127 * amplitude))
        )
    return sequence


def speed(args) -> dict:
    from amt_jax.infer.transcribe import Transcriber
    from amt_jax.metrics import transcription as metrics

    workdir = tempfile.mkdtemp(prefix="bench_transcribe_")
    path = os.path.join(workdir, "poly60.wav")
    write_test_file(path, args.seconds, 22050)

    bp_python = ensure_basic_pitch_python(args.bp_python)
    basic_pitch_process = BasicPitchProcess(bp_python, path)  # loads and warms up
    started = time.perf_counter()
    transcriber = Transcriber("nmp", batch_size=args.batch_size)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    transcriber.transcribe(path)  # warm-up: compiles the model once
    compile_s = time.perf_counter() - started
    times, bp_times, cpu_times, bp_cpu_times = [], [], [], []
    load_averages = [os.getloadavg()[0]]
    for _ in range(args.rounds):  # interleaved: the machine's load hits both alike
        bp_round = basic_pitch_process.predict()
        bp_times.append(bp_round["seconds"])
        bp_cpu_times.append(bp_round["cpu_seconds"])
        started, cpu_started = time.perf_counter(), time.process_time()
        result = transcriber.transcribe(path)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
        load_averages.append(os.getloadavg()[0])
    basic_pitch_process.close()
    basic_pitch = {**basic_pitch_process.info, "times": bp_times, "notes": bp_round["notes"]}

    reference = metrics.note_arrays(sequence_from_events(basic_pitch["notes"]))
    estimate = metrics.note_arrays(result.sequence)
    onset_f1 = metrics.note_scores(reference, estimate, with_offsets=False)[2]
    offset_f1 = metrics.note_scores(reference, estimate, with_offsets=True)[2]
    bp_median, ours_median = statistics.median(basic_pitch["times"]), statistics.median(times)
    report = {
        "audio_s": args.seconds,
        "basic_pitch_backend": basic_pitch["backend"],
        "basic_pitch_model_load_s": round(basic_pitch["load_s"], 2),
        "basic_pitch_predict_s": [round(t, 3) for t in basic_pitch["times"]],
        "amt_jax_setup_s": round(setup_s, 2),
        "amt_jax_first_call_s": round(compile_s, 2),
        "amt_jax_transcribe_s": [round(t, 3) for t in times],
        "speedup_median": round(bp_median / ours_median, 2),
        "notes_basic_pitch": len(basic_pitch["notes"]),
        "notes_amt_jax": len(result.sequence.notes),
        "note_f1_onset": round(onset_f1, 4),
        "note_f1_onset_offset": round(offset_f1, 4),
        "batch_size": transcriber.batch_size,
        "load_average_1min": [round(value, 2) for value in load_averages],
        "round_ratios": [round(b / a, 2) for b, a in zip(bp_times, times)],
        # CPU seconds (all threads of each process): less sensitive to other processes'
        # load than wall time, so a second view of the same rounds on a busy machine
        "basic_pitch_cpu_s": [round(t, 3) for t in bp_cpu_times],
        "amt_jax_cpu_s": [round(t, 3) for t in cpu_times],
        "cpu_ratio_median": round(
            statistics.median(bp_cpu_times) / statistics.median(cpu_times), 2
        ),
    }
    print(json.dumps(report, indent=1))
    print(
        f"60 s file: basic-pitch {bp_median:.3f} s, amt_jax {ours_median:.3f} s -> "
        f"amt_jax is {bp_median / ours_median:.2f}x basic-pitch (goal >= 2); note F1 "
        f"{onset_f1:.4f} (onset) / {offset_f1:.4f} (onset+offset), goal 1.0"
    )
    return report


def stages(args) -> dict:
    """amt_jax's NMP pipeline on the 60 s file, timed stage by stage (interleaved rounds)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from amt_jax.audio.harmonic import harmonic_shifts
    from amt_jax.infer.transcribe import Transcriber, batched, nmp_window_starts, read_mono
    from amt_jax.models import nmp
    from amt_jax.notes import basic_pitch as postprocess

    workdir = tempfile.mkdtemp(prefix="bench_transcribe_")
    path = os.path.join(workdir, "poly60.wav")
    write_test_file(path, args.seconds, 22050)
    transcriber = Transcriber("nmp", batch_size=args.batch_size)
    transcriber.transcribe(path)  # compiles
    model, state = transcriber.model, transcriber._state
    config = model.config
    graphdef = nnx.graphdef(model)

    def part(fn):
        return jax.jit(lambda state, x: fn(nnx.merge(graphdef, state), x))

    audio = read_mono(path, nmp.SAMPLE_RATE)
    starts = nmp_window_starts(audio.shape[0])
    batches = list(batched(starts, audio, nmp.WINDOW_SAMPLES, transcriber.batch_size))
    first = jnp.asarray(batches[0][0])
    frontend = part(lambda m, x: m.frontend(x, use_running_average=True))
    normed = frontend(state, first)
    shifts = harmonic_shifts(config.harmonics, config.bins_per_semitone)
    contour_conv = part(
        lambda m, x: nmp.harmonic_conv(
            x,
            *m.contour_conv.weights,
            shifts=shifts,
            n_out_bins=config.n_contour_bins,
            block=config.contour_block,
        )
    )
    hidden = jax.nn.relu(contour_conv(state, normed))
    contour_out = part(
        lambda m, x: nmp.toeplitz_conv(x, *m.contour_out.weights, block=config.contour_out_block)
    )
    contour = jax.nn.sigmoid(contour_out(state, hidden))
    note_conv = part(lambda m, x: m.note_conv(x))
    note_hidden = jax.nn.relu(note_conv(state, contour))
    note_out = part(lambda m, x: nmp.single_output_conv(x, *m.note_out.weights))
    stack_fn = part(lambda m, x: m._stack(x))
    stack = stack_fn(state, normed)
    onset_conv = part(lambda m, x: m.onset_conv(x))
    onset_in = jnp.concatenate(
        [jax.nn.sigmoid(note_out(state, note_hidden)), onset_conv(state, stack)], axis=-1
    )
    onset_out = part(lambda m, x: nmp.single_output_conv(x, *m.onset_out.weights))
    predict = transcriber._predict
    outputs = predict(state, first)
    posteriors = transcriber.nmp_posteriors(audio)
    frame_events = postprocess.note_events_in_frames(posteriors["note"], posteriors["onset"])
    events = postprocess.basic_pitch_note_events(posteriors)
    per_batch = {
        "model: CQT + NormalizedLog + input BN": (frontend, normed.shape, (state, first)),
        "model: contour conv 3x39x8->8 (harmonic_conv)": (contour_conv, None, (state, normed)),
        "model: contour out 5x5x8->1 (toeplitz_conv)": (contour_out, None, (state, hidden)),
        "model: note conv 7x7x1->32 /3 (XLA conv)": (note_conv, None, (state, contour)),
        "model: note out 7x3x32->1 (single_output_conv)": (note_out, None, (state, note_hidden)),
        "model: harmonic stack (onset input)": (stack_fn, None, (state, normed)),
        "model: onset conv 5x5x8->32 /3 (XLA conv)": (onset_conv, None, (state, stack)),
        "model: onset out 3x3x33->1 (single_output_conv)": (onset_out, None, (state, onset_in)),
        "model: whole predict (one jit)": (predict, None, (state, first)),
    }
    whole_file = {
        "file read + resample (read_mono)": lambda: read_mono(path, nmp.SAMPLE_RATE),
        "window batches (host)": lambda: list(
            batched(starts, audio, nmp.WINDOW_SAMPLES, transcriber.batch_size)
        ),
        "model outputs to host (np.asarray, per batch)": lambda: {
            k: np.asarray(v) for k, v in outputs.items()
        },
        "windows -> model -> stitched posteriors (nmp_posteriors)": lambda: (
            transcriber.nmp_posteriors(audio)
        ),
        "note creation (note_events_in_frames)": lambda: postprocess.note_events_in_frames(
            posteriors["note"], posteriors["onset"]
        ),
        "pitch bends + times (rest of basic_pitch_note_events)": lambda: (
            postprocess._pitch_bends_of_notes(posteriors["contour"], frame_events)
        ),
        "NoteSequence (note_events_to_sequence)": lambda: postprocess.note_events_to_sequence(
            events
        ),
        "whole transcribe(path)": lambda: transcriber.transcribe(path),
    }
    timings: dict[str, list[float]] = {name: [] for name in [*per_batch, *whole_file]}
    load_averages = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, (fn, _, fn_args) in per_batch.items():
            jax.block_until_ready(fn(*fn_args))
            started = time.perf_counter()
            jax.block_until_ready(fn(*fn_args))
            timings[name].append(time.perf_counter() - started)
        for name, fn in whole_file.items():
            started = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - started)
        load_averages.append(os.getloadavg()[0])
    n_batches = len(batches)
    report = {"batches": n_batches, "batch_size": transcriber.batch_size, "stages_s": {}}
    print(f"{len(starts)} windows in {n_batches} batches of {transcriber.batch_size}")
    for name, values in timings.items():
        median = statistics.median(values)
        if name in per_batch:
            report["stages_s"][name] = round(median * n_batches, 4)
            total = median * n_batches
            print(f"{name:58s} {median * 1000:8.1f} ms/batch x {n_batches} = {total:.3f} s")
        else:
            report["stages_s"][name] = round(median, 4)
            print(f"{name:58s} {median:8.3f} s")
    report["load_average_1min"] = [round(value, 2) for value in load_averages]
    print(json.dumps(report, indent=1))
    return report


def memory_status_mb() -> dict[str, int]:
    """This process's resident set now and its peak so far (``/proc/self/status``), MB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                values[name] = int(value.split()[0]) // 1024
    return {"rss": values["VmRSS"], "peak": values["VmHWM"]}


def start_memory_trace(path: str, interval_s: float = 1.0) -> None:
    """Append "seconds rss_mb peak_mb" to ``path`` every ``interval_s`` (daemon thread)."""
    import threading

    started = time.perf_counter()
    trace = open(path, "w")  # noqa: SIM115 - lives as long as the process

    def sample():
        while True:
            now = memory_status_mb()
            trace.write(f"{time.perf_counter() - started:.1f} {now['rss']} {now['peak']}\n")
            trace.flush()
            time.sleep(interval_s)

    threading.Thread(target=sample, daemon=True).start()


def make_mt3_stop_at_first_token(model) -> None:
    """Random MT3 weights that emit EOS at the first decoding step of every segment.

    A random MT3 never emits EOS, so each 2.048 s segment would decode all 1024 steps (hours
    for a 7 m 45 s file here). The compiled program, and with it every buffer XLA allocates
    (KV cache for 1024 tokens, cross-attention K/V, encoder), does not depend on when the
    ``while_loop`` stops, so this model has the same peak memory in a fraction of the time.
    Decoder blocks write nothing into the residual stream, so the first step's output is
    the normalised embedding of the start token, which the EOS column of the logits matches.
    """
    import jax.numpy as jnp

    decoder = model.decoder
    for layer in decoder.layers:
        for kernel in (
            layer.self_attention.out.kernel,
            layer.encoder_decoder_attention.out.kernel,
            layer.mlp.wo.kernel,
        ):
            kernel[...] = jnp.zeros_like(kernel[...])
    start = decoder.token_embedder.embedding[...][0]
    direction = start / jnp.sqrt(jnp.mean(start * start) + 1e-6)
    eos_id = 1
    logits_kernel = decoder.logits_dense.kernel
    logits_kernel[...] = logits_kernel[...].at[:, eos_id].set(100.0 * direction)


def make_mt3_stop_after(lowest: int, highest: int) -> None:
    """Random MT3 decoding a realistic number of tokens: each segment emits EOS at a step
    in [lowest, highest], fixed by its audio (a hash of its cross-attention keys).

    Random weights never emit EOS on their own; MT3 on real music emits ~200-400 tokens a
    segment. This patches ``Decoder.decode_step`` in this (benchmark) process only: the
    decoder runs unchanged and its EOS logit is overridden once a row reaches its step.
    """
    import jax.numpy as jnp

    from amt_jax.models import t5

    decode_step = t5.Decoder.decode_step
    span = highest - lowest + 1

    def decode_step_with_eos(self, token_b, position, cache, cross_kv):
        logits_bv, cache = decode_step(self, token_b, position, cache, cross_kv)
        # a count of positive keys, not a float hash: bf16 weights move it by a few steps
        # at most, so float32 and bf16 runs decode (nearly) the same number of tokens
        key_bhtd = cross_kv[0][0]
        digest_b = jnp.sum(key_bhtd > 0, axis=(1, 2, 3))
        stop_b = lowest + (digest_b % span).astype(jnp.int32)
        eos_bv = logits_bv.at[:, self.config.eos_id].set(1e9)
        return jnp.where((position >= stop_b)[:, None], eos_bv, logits_bv), cache

    t5.Decoder.decode_step = decode_step_with_eos


def transcribe_one(args) -> None:
    """Child process of the memory mode: one file, one model family."""
    if args.trace:
        start_memory_trace(args.trace)
    started = time.perf_counter()
    from amt_jax.infer.transcribe import Transcriber

    stages = {"imports": memory_status_mb()["peak"]}
    if args.compilation_cache:
        from amt_jax.infer.cli import enable_compilation_cache

        enable_compilation_cache(args.compilation_cache)
    kwargs = {"random_weights": args.model != "nmp"}
    if args.batch_size:
        kwargs["batch_size"] = args.batch_size
    if args.devices:
        from amt_jax.infer.transcribe import use_cpu_cores

        use_cpu_cores(args.devices)
        kwargs["devices"] = args.devices
    if args.weights_dtype:
        kwargs["weights_dtype"] = args.weights_dtype
    if args.fixed_batches:
        kwargs["refill_rows"] = False
    transcriber = Transcriber(args.model, **kwargs)
    if args.model == "mt3" and args.mt3_tokens:
        make_mt3_stop_after(*(int(x) for x in args.mt3_tokens.split(":")))
    elif args.model == "mt3" and not args.mt3_full_decode:
        make_mt3_stop_at_first_token(transcriber.model)
        transcriber.reload_weights()  # the weights the jit sees
    stages["model built"] = memory_status_mb()["peak"]
    call_seconds = []
    for _ in range(args.repeat):
        call_started = time.perf_counter()
        result = transcriber.transcribe(args.file)
        call_seconds.append(round(time.perf_counter() - call_started, 2))
    stages["transcribed"] = memory_status_mb()["peak"]
    report = {
        "model": args.model,
        "batch_size": transcriber.batch_size,
        "devices": len(transcriber.devices),
        "weights_dtype": args.weights_dtype or "float32",
        "rows": "fixed batches" if args.fixed_batches else "refilled",
        "notes": len(result.sequence.notes),
        "seconds": round(time.perf_counter() - started, 1),
        "transcribe_seconds": call_seconds,
        "peak_mb_after": stages,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    if args.model == "mt3":
        tokens_bl = result.posteriors["tokens"]
        report["segments"] = int(tokens_bl.shape[0])
        report["tokens_decoded"] = int((tokens_bl != 0).sum())
    print(json.dumps(report))


def mt3_speed(args) -> dict:
    """MT3 transcription wall time, real-time factor and peak RSS (fresh processes)."""
    time_binary = "/usr/bin/time"
    if not os.path.exists(time_binary):
        raise SystemExit("needs GNU time: apt-get install time (in AMT_JAX_APT_PACKAGES)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_transcribe_mt3_") as workdir:
        path = os.path.join(workdir, "piece.wav")
        write_test_file(path, args.seconds, 44100)
        for variant in args.variants.split(","):
            batch_size, devices, weights_dtype, *rows = variant.split(":")
            command = [time_binary, "-v", sys.executable, __file__, "one", "--model", "mt3"]
            command += ["--batch-size", batch_size, "--repeat", str(args.repeat)]
            command += ["--devices", devices, "--weights-dtype", weights_dtype]
            if rows == ["fixed"]:
                command += ["--fixed-batches"]
            command += ["--mt3-tokens", args.tokens, path]
            load = os.getloadavg()[0]
            run = subprocess.run(command, capture_output=True, text=True)
            match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
            if run.returncode != 0 or not match:
                print(f"{variant}: failed\n{run.stderr[-2000:]}", flush=True)
                continue
            child = json.loads(run.stdout.strip().splitlines()[-1])
            result = {
                "peak_rss_mb": round(int(match.group(1)) / 1024, 1),
                "load_before": round(load, 2),
                "load_after": round(os.getloadavg()[0], 2),
                "real_time_factor": [
                    round(s / args.seconds, 3) for s in child["transcribe_seconds"]
                ],
                **child,
            }
            results[variant] = result
            print(
                f"MT3, {args.seconds:.0f} s piece, batch {batch_size}, {devices} device(s), "
                f"{weights_dtype} weights, {child['rows']} rows: transcribe() "
                f"{result['transcribe_seconds']} s (first call compiles), real-time factor "
                f"{result['real_time_factor']}, {child['tokens_decoded']} tokens in "
                f"{child['segments']} segments, peak RSS {result['peak_rss_mb']} MB, load "
                f"{result['load_before']} -> {result['load_after']}",
                flush=True,
            )
    print(
        json.dumps({"audio_s": args.seconds, "tokens": args.tokens, "results": results}, indent=1)
    )
    return results


def memory(args) -> dict:
    time_binary = "/usr/bin/time"
    if not os.path.exists(time_binary):
        raise SystemExit("needs GNU time: apt-get install time (in AMT_JAX_APT_PACKAGES)")
    with tempfile.TemporaryDirectory(prefix="bench_transcribe_") as workdir:
        path = os.path.join(workdir, "long.wav")
        write_test_file(path, args.seconds, 44100)
        compile_cache = os.path.join(workdir, "jax_compilation_cache")  # starts empty
        results = {}
        # "cold": first run, XLA compiles in the process; "warm": the CLI's persistent
        # compilation cache holds the executables (every later run of the CLI).
        for model in args.models.split(","):
            for run_kind in args.runs.split(","):
                command = [time_binary, "-v", sys.executable, __file__, "one", "--model", model]
                command += ["--compilation-cache", compile_cache, path]
                if args.batch_size:
                    command += ["--batch-size", str(args.batch_size)]
                if args.mt3_full_decode:
                    command += ["--mt3-full-decode"]
                if args.trace_dir:
                    os.makedirs(args.trace_dir, exist_ok=True)
                    trace = os.path.join(args.trace_dir, f"{model}_{run_kind}.txt")
                    command += ["--trace", trace]
                load = os.getloadavg()[0]
                run = subprocess.run(command, capture_output=True, text=True)
                match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
                key = f"{model}/{run_kind}"
                if run.returncode != 0 or not match:
                    results[key] = {"error": run.stderr[-2000:]}
                    print(f"{key}: failed\n{run.stderr[-2000:]}", flush=True)
                    continue
                child = json.loads(run.stdout.strip().splitlines()[-1])
                peak_mb = round(int(match.group(1)) / 1024, 1)
                results[key] = {"peak_rss_mb": peak_mb, "load_before": round(load, 2), **child}
                print(f"{key}: peak RSS {peak_mb} MB ({results[key]})", flush=True)
    print(json.dumps({"audio_s": args.seconds, "results": results}, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    speed_parser = sub.add_parser("speed")
    speed_parser.add_argument("--seconds", type=float, default=60.0)
    speed_parser.add_argument("--rounds", type=int, default=5)
    speed_parser.add_argument("--batch-size", type=int, default=None)
    speed_parser.add_argument("--bp-python", help="python of an env with basic-pitch 0.4.0")
    stages_parser = sub.add_parser("stages")
    stages_parser.add_argument("--seconds", type=float, default=60.0)
    stages_parser.add_argument("--rounds", type=int, default=5)
    stages_parser.add_argument("--batch-size", type=int, default=None)
    memory_parser = sub.add_parser("memory")
    memory_parser.add_argument("--seconds", type=float, default=465.0)
    memory_parser.add_argument("--models", default="nmp,onsets_frames,mt3")
    memory_parser.add_argument("--runs", default="cold,warm", help="cold, warm or both")
    memory_parser.add_argument("--batch-size", type=int, help="default: the family's")
    memory_parser.add_argument("--trace-dir", help="write each run's RSS over time here")
    memory_parser.add_argument(
        "--mt3-full-decode",
        action="store_true",
        help="let random MT3 decode all 1024 steps of every segment (hours on a long file) "
        "instead of stopping at the first step (same compiled program, same peak memory)",
    )
    mt3_parser = sub.add_parser("mt3")
    mt3_parser.add_argument("--seconds", type=float, default=180.0)
    mt3_parser.add_argument(
        "--variants",
        default="4:1:float32:fixed,16:2:float32,16:2:bfloat16",
        help="BATCH:DEVICES:WEIGHTS_DTYPE[:fixed],... one fresh process each (DEVICES: CPU "
        "devices the rows are split over; fixed: batches decode to their longest row "
        "instead of refilling rows)",
    )
    mt3_parser.add_argument("--repeat", type=int, default=2, help="transcribe() calls")
    mt3_parser.add_argument(
        "--tokens", default="200:400", help="EOS at a step in LO:HI of each segment"
    )
    one_parser = sub.add_parser("one")
    one_parser.add_argument("--model", default="nmp")
    one_parser.add_argument("--batch-size", type=int, default=None)
    one_parser.add_argument("--compilation-cache", help="persistent XLA cache directory")
    one_parser.add_argument("--trace", help="file for the RSS trace (one line a second)")
    one_parser.add_argument("--mt3-full-decode", action="store_true")
    one_parser.add_argument("--mt3-tokens", help="random MT3 emits EOS at a step in LO:HI")
    one_parser.add_argument("--repeat", type=int, default=1)
    one_parser.add_argument("--devices", type=int, help="CPU devices to split rows over")
    one_parser.add_argument("--weights-dtype", choices=("float32", "bfloat16"))
    one_parser.add_argument(
        "--fixed-batches", action="store_true", help="MT3: no row refilling (as before)"
    )
    one_parser.add_argument("file")
    args = parser.parse_args()
    modes = {
        "speed": speed,
        "stages": stages,
        "memory": memory,
        "mt3": mt3_speed,
        "one": transcribe_one,
    }
    modes[args.mode](args)


if __name__ == "__main__":
    main()
