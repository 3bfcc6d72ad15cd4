"""Pieces of the synthetic dataset: what to generate, how to split it, how to render it.

Everything here is plain Python/numpy (no TensorFlow) so render workers stay light.
A piece is named by (source, key); its RNG seed is derived from that name and the dataset
seed, so any piece can be re-rendered alone and builds are reproducible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
from note_seq.protobuf import music_pb2

from amt_jax.data.synth import arrangements, mma, music21_corpus, render, soundfonts

log = logging.getLogger(__name__)
SOURCES = ("generated", "piano", "mma", "music21")


@dataclasses.dataclass(frozen=True)
class PieceSpec:
    source: str  # one of SOURCES
    key: str  # seed for generators, work name for music21
    group: str  # pieces of one group always land in one split
    target_seconds: float
    music21_path: str = ""

    @property
    def name(self) -> str:
        return f"{self.source}_{self.key}".replace("/", "_")


def stable_seed(*parts) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def list_pieces(
    seed: int,
    n_generated: int,
    n_piano: int,
    n_mma: int,
    music21_composers: tuple[str, ...],
    max_music21_works: int,
    seconds_range: tuple[float, float],
) -> list[PieceSpec]:
    rng = np.random.default_rng(seed)
    pieces = []
    for source, count in (("generated", n_generated), ("piano", n_piano), ("mma", n_mma)):
        if source == "mma" and count and not mma.mma_available():
            raise RuntimeError("the `mma` program is missing: `apt-get install mma`")
        for i in range(count):
            seconds = float(rng.uniform(*seconds_range))
            pieces.append(PieceSpec(source, str(i), f"{source}/{i}", seconds))
    if music21_composers and max_music21_works:
        works = music21_corpus.list_works(music21_composers)
        order = np.random.default_rng(stable_seed(seed, "music21")).permutation(len(works))
        for index in sorted(order[:max_music21_works]):
            work = works[index]
            seconds = float(rng.uniform(*seconds_range))
            pieces.append(PieceSpec("music21", work.name, work.group, seconds, work.path))
    return pieces


def split_by_group(
    pieces: list[PieceSpec], fractions: dict[str, float], seed: int
) -> dict[str, list[PieceSpec]]:
    """Assign whole groups to splits in the given proportions (every split gets ≥ 1 group
    when there are enough groups)."""
    groups = sorted({p.group for p in pieces})
    order = np.random.default_rng(stable_seed(seed, "split")).permutation(len(groups))
    shuffled = [groups[i] for i in order]
    names = list(fractions)
    counts = {name: int(np.floor(fractions[name] * len(groups))) for name in names}
    for name in names[1:]:  # held-out splits get at least one group
        if counts[name] == 0 and len(groups) > len(names):
            counts[name] = 1
    counts[names[0]] = len(groups) - sum(counts[n] for n in names[1:])
    assignment, start = {}, 0
    for name in names:
        for group in shuffled[start : start + counts[name]]:
            assignment[group] = name
        start += counts[name]
    out = {name: [] for name in names}
    for piece in pieces:
        out[assignment[piece.group]].append(piece)
    return out


def make_sequence(spec: PieceSpec, seed: int) -> tuple[music_pb2.NoteSequence, str]:
    """The piece's labels before rendering, and a note on where it came from."""
    rng_seed = stable_seed(seed, spec.source, spec.key)
    if spec.source == "generated":
        return arrangements.generate_song(rng_seed, spec.target_seconds), "generator"
    if spec.source == "piano":
        return arrangements.generate_song(rng_seed, spec.target_seconds, piano_only=True), "piano"
    if spec.source == "mma":
        seq, groove = mma.generate_mma_song(rng_seed, spec.target_seconds)
        return seq, f"mma:{groove}"
    if spec.source == "music21":
        composer = spec.key.split("/")[0]
        work = music21_corpus.Work(composer, spec.music21_path, spec.key, spec.group)
        source = music21_corpus.load_work(work)
        rng = np.random.default_rng(rng_seed)
        return music21_corpus.orchestrate(source, rng, spec.target_seconds), f"music21:{spec.key}"
    raise ValueError(f"unknown piece source {spec.source!r}")


def draw_mix(sequence: music_pb2.NoteSequence, rng: np.random.Generator) -> render.MixSettings:
    instruments = sorted({n.instrument for n in sequence.notes})
    return render.MixSettings(
        volume_cc={i: int(rng.integers(75, 121)) for i in instruments},
        pan_cc={i: int(rng.integers(24, 105)) for i in instruments},
        reverb_room=float(rng.uniform(0.1, 0.8)),
        reverb_damping=float(rng.uniform(0.0, 0.6)),
        reverb_width=float(rng.uniform(0.2, 1.0)),
        reverb_level=float(rng.uniform(0.0, 0.7)),
        peak_dbfs=float(rng.uniform(-6.0, -1.0)),
    )


@dataclasses.dataclass(frozen=True)
class RenderJob:
    spec: PieceSpec
    soundfont: str
    seed: int
    sample_rate: int


def _render_worker(jobs, worker_index, num_workers, queue):
    for index in range(worker_index, len(jobs), num_workers):
        queue.put((index, render_job(jobs[index])))


def render_jobs(jobs: list[RenderJob], num_workers: int = 1):
    """Results of `render_job` in job order.

    Worker k renders jobs k, k+n, k+2n, ...; since every piece gets a fresh synth, the
    results do not depend on the number of workers or on scheduling (nor on the runner:
    the Beam build calls `render_job` the same way).
    """
    if num_workers <= 1 or len(jobs) <= 1:
        yield from map(render_job, jobs)
        return
    import multiprocessing  # noqa: PLC0415
    import queue as queue_module  # noqa: PLC0415

    context = multiprocessing.get_context("spawn")  # the parent may hold TensorFlow
    queue = context.Queue(maxsize=8 * num_workers)
    workers = [
        context.Process(target=_render_worker, args=(jobs, k, num_workers, queue), daemon=True)
        for k in range(min(num_workers, len(jobs)))
    ]
    for worker in workers:
        worker.start()
    try:
        pending, next_index = {}, 0
        while next_index < len(jobs):
            while next_index not in pending:
                try:
                    index, result = queue.get(timeout=5)
                except queue_module.Empty:
                    dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"a render worker died (exit codes {dead})") from None
                    continue
                pending[index] = result
            yield pending.pop(next_index)
            next_index += 1
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()


def render_job(job: RenderJob) -> dict:
    """Render one piece with a fresh synth; returns plain data for `common.make_example`.

    FluidSynth's output depends on what the synth rendered before (voice slots keep state
    that `system_reset()` does not clear): measured, a piece rendered after others differs
    from the same piece rendered first in nearly every sample, by up to 1/3 of full scale
    with the build's reverb and chorus, and by up to ~1 % with both off. A fresh synth per
    piece makes each example a function of its job alone, whatever ran before it in the
    same process; it shares the process's loaded copy of the soundfont, so it costs only
    its warm-up.

    Returns {'error': message} instead of raising for a piece that cannot be made (e.g. a
    music21 score that fails to convert) so the builder can log and count it.
    """
    spec = job.spec
    try:
        sequence, origin = make_sequence(spec, job.seed)
        sequence.id = spec.name
        mix = draw_mix(sequence, np.random.default_rng(stable_seed(job.seed, spec.name, "mix")))
        with render.FluidSynthRenderer(
            soundfonts.resolve(job.soundfont), job.sample_rate, share_soundfont=True
        ) as renderer:
            rendered = renderer.render(sequence, mix)
    except Exception as e:  # noqa: BLE001  (reported per piece by the builder)
        return {"error": f"{type(e).__name__}: {e}", "name": spec.name}
    return {
        "id": f"{spec.name}__{job.soundfont}",
        "audio": rendered.audio,
        "sample_rate": rendered.sample_rate,
        "sequence": rendered.sequence,
        "tracks": [
            {"name": t.name, "program": t.program, "is_drum": t.is_drum} for t in rendered.tracks
        ],
        "source": spec.source,
        "piece": spec.group,
        "origin": origin,
        "soundfont": job.soundfont,
        "soundfont_family": soundfonts.family_of(job.soundfont),
    }
