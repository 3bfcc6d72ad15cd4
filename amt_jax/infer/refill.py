"""MT3 transcription decoding with refilled rows: a batch never waits for its longest row.

MT3 decodes each 2.048 s segment into 1–1024 tokens, and the counts differ a lot between
segments (a quiet bar needs a handful, a dense one hundreds). Decoding a fixed batch of
segments until its longest row is done leaves the other rows idle. :class:`RefillDecoder`
keeps ``slots`` rows busy instead: a row that emits EOS is handed the next waiting
segment while the others go on (:func:`amt_jax.models.decoding.decode_slots`). Each
segment's tokens are exactly those of decoding it alone.

The encoder runs on batches of ``slots`` segments; the decode rows are split over the
given devices (one CPU device per core: :func:`amt_jax.infer.transcribe.use_cpu_cores`),
parameters replicated. The cache grows and shrinks in :func:`decoding.cache_buckets`
steps with the furthest live row, so a step attends over at most twice the tokens of
the longest segment in flight.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import numpy as np
from flax import nnx

from amt_jax.models import decoding

#: greedy steps per device call when no row is waiting for a refill
CHUNK_STEPS = 64


class RefillDecoder:
    """Greedy token decoding of any number of MT3 segments through ``slots`` rows.

    ``model``: an ``MT3Model``; ``devices``: the devices the rows are split over
    (``slots`` must be a multiple of their count); ``max_length``: tokens per segment.
    Calling it with audio windows [segments, samples] gives int32 tokens
    [segments, max_length], as ``model.predict`` does (EOS kept, PAD after it).
    """

    def __init__(
        self,
        model: nnx.Module,
        *,
        slots: int,
        devices: list[Any],
        max_length: int,
        chunk_steps: int = CHUNK_STEPS,
    ):
        if slots % len(devices):
            raise ValueError(f"slots={slots} is not a multiple of {len(devices)} devices")
        if not 0 < max_length <= model.config.max_position:
            raise ValueError(
                f"max_length must be in [1, {model.config.max_position}], got {max_length}"
            )
        self.slots = slots
        self.max_length = max_length
        self.chunk_steps = chunk_steps
        self.buckets = decoding.cache_buckets(max_length)
        self.eos_id = model.config.eos_id
        graphdef, state = nnx.split(model)
        mesh = jax.sharding.Mesh(np.array(devices), ("rows",))
        self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))
        self._state = jax.device_put(state, self._replicated)

        def merged(state):
            return nnx.merge(graphdef, state)

        def encode(state, audio_bs):
            model = merged(state)
            return model.encode(model.spectrogram({"audio_bs": audio_bs}), deterministic=True)

        def start(state, encoded_btd, live_b, cache_length):
            return decoding.start_slots(
                merged(state),
                encoded_btd,
                live_b,
                max_length=max_length,
                cache_length=cache_length,
            )

        def refill(state, slots, encoded_1td, slot):
            return decoding.refill_slot(merged(state), slots, encoded_1td, slot)

        def resize(state, slots, cache_length):
            return decoding.resize_slots(merged(state), slots, cache_length)

        def decode(state, slots, stop_on_finish):
            return decoding.decode_slots(
                merged(state),
                slots,
                steps=chunk_steps,
                eos_id=self.eos_id,
                stop_on_finish=stop_on_finish,
            )

        self._encode = jax.jit(encode, out_shardings=self._rows)
        # every Slots leaf is [rows, ...]: rows split over the devices
        rows = self._rows
        self._start = jax.jit(start, static_argnums=3, out_shardings=rows)
        self._refill = jax.jit(refill, donate_argnums=1, out_shardings=rows)
        self._resize = jax.jit(resize, static_argnums=2, out_shardings=rows)
        self._decode = jax.jit(decode, donate_argnums=1, out_shardings=rows)

    def _bucket(self, furthest: int) -> int:
        """The smallest cache that holds a row at position ``furthest`` for a chunk."""
        need = min(furthest + self.chunk_steps, self.max_length)
        return next(bucket for bucket in self.buckets if bucket >= need)

    def encode(self, audio_bs: np.ndarray) -> np.ndarray:
        """Encoder outputs [segments, frames, embed] (host), ``slots`` segments per call."""
        parts = []
        for first in range(0, len(audio_bs), self.slots):
            batch = audio_bs[first : first + self.slots]
            rows = len(batch)
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.slots - rows, axis=0)])
            encoded = self._encode(self._state, jax.device_put(batch, self._rows))
            parts.append(np.asarray(encoded)[:rows])
        return np.concatenate(parts)

    def __call__(self, audio_bs: np.ndarray) -> np.ndarray:
        audio_bs = np.asarray(audio_bs, np.float32)
        count = len(audio_bs)
        tokens_nl = np.zeros((count, self.max_length), np.int32)
        if count == 0:
            return tokens_nl
        encoded_ntd = self.encode(audio_bs)
        first = min(count, self.slots)
        owner = [i if i < first else None for i in range(self.slots)]  # segment of each row
        initial = np.concatenate(
            [encoded_ntd[:first], np.repeat(encoded_ntd[first - 1 :], self.slots - first, 0)]
        )
        cache_length = self._bucket(0)
        slots = self._start(
            self._state,
            jax.device_put(initial, self._rows),
            jax.device_put(np.arange(self.slots) < first, self._rows),
            cache_length,
        )
        waiting = collections.deque(range(first, count))
        position_b = np.zeros(self.slots, np.int64)
        while True:
            slots = self._decode(self._state, slots, np.asarray(bool(waiting)))
            live_b = np.asarray(slots.live_b)
            position_b = np.asarray(slots.position_b).astype(np.int64)
            finished = [row for row, seg in enumerate(owner) if seg is not None and not live_b[row]]
            if finished:
                tokens_bl = np.asarray(slots.tokens_bl)
                for row in finished:
                    tokens_nl[owner[row]] = tokens_bl[row]
                    owner[row] = None
                    if waiting:
                        owner[row] = waiting.popleft()
                        slots = self._refill(
                            self._state,
                            slots,
                            encoded_ntd[owner[row]][None],
                            np.asarray(row, np.int32),
                        )
                        position_b[row] = 0
            busy = [row for row, seg in enumerate(owner) if seg is not None]
            if not busy:
                return tokens_nl
            wanted = self._bucket(int(position_b[busy].max()))
            if wanted != cache_length:
                slots = self._resize(self._state, slots, wanted)
                cache_length = wanted
