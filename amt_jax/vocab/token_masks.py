"""jit-friendly views of token ids: type of each id and a mask of grammatical next ids.

Why: constrained decoding (and cheap sanity metrics on model output) must run inside the
jitted decode loop on ``jnp`` arrays. The mask is first-order: it knows the type of the
previous token and the last shift value of the current segment, which is enough to rule
out everything the encoder never emits (a shift after a shift, a shift that does not move
forward, EOS right after a shift, PAD/UNK/extra ids before EOS, a tie outside the
segment's start, program tokens in a ``flat`` layout ...). Every sequence that
``encode_note_sequence`` or MT3's own tokenizer produces is accepted (tested against an
independent statement of MT3's rule in tests/vocab/test_mt3_parity.py).

All functions take numpy arrays (and return numpy) or jax arrays / tracers (and return
jax arrays), so the same code serves the data pipeline and the jitted decoder.

Public API: ``TOKEN_TYPES``, ``token_types(ids, config)``, ``transition_table(config)``,
``next_token_mask(prev_ids, config, last_shift=None)``, ``last_shift_values(ids, config)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from amt_jax.vocab.layouts import (
    EOS_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    UNK_ID,
    VocabularyConfig,
    build_codec,
)

TOKEN_TYPES = ("pad", "eos", "unk", "shift", "pitch", "velocity", "tie", "program", "drum", "extra")
PAD, EOS, UNK, SHIFT, PITCH, VELOCITY, TIE, PROGRAM, DRUM, EXTRA = range(len(TOKEN_TYPES))


@functools.lru_cache(maxsize=16)
def _id_type_table(config: VocabularyConfig) -> np.ndarray:
    """Type code of every id in ``[0, num_embeddings)``."""
    codec = build_codec(config)
    table = np.full(config.num_embeddings, EXTRA, np.int32)
    table[PAD_ID], table[EOS_ID], table[UNK_ID] = PAD, EOS, UNK
    for name, code in (
        ("shift", SHIFT),
        ("pitch", PITCH),
        ("velocity", VELOCITY),
        ("tie", TIE),
        ("program", PROGRAM),
        ("drum", DRUM),
    ):
        lo, hi = codec.event_type_range(name)
        table[lo + NUM_SPECIAL_TOKENS : hi + NUM_SPECIAL_TOKENS + 1] = code
    return table


def _xp(*arrays):
    """jnp for jax arrays (and tracers inside jit), numpy otherwise (data pipeline)."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def token_types(ids, config: VocabularyConfig):
    """Type code (index into ``TOKEN_TYPES``) of each id; ids outside the table are EXTRA."""
    xp = _xp(ids)
    table = xp.asarray(_id_type_table(config))
    ids = xp.asarray(ids)
    inside = (ids >= 0) & (ids < table.shape[0])
    return xp.where(inside, table[xp.clip(ids, 0, table.shape[0] - 1)], EXTRA)


@functools.lru_cache(maxsize=16)
def transition_table(config: VocabularyConfig) -> np.ndarray:
    """bool [len(TOKEN_TYPES), num_embeddings]: ids allowed after a token of each type.

    The PAD row is the start of a sequence (decoder inputs start with PAD).
    """
    id_types = _id_type_table(config)
    follow = {
        SHIFT: {PROGRAM, VELOCITY, PITCH, DRUM},
        PITCH: {PROGRAM, VELOCITY, PITCH, DRUM, SHIFT, TIE, EOS},
        VELOCITY: {PITCH, DRUM},
        TIE: {SHIFT, PROGRAM, VELOCITY, EOS},
        PROGRAM: {PITCH, VELOCITY},
        # Inside a step MT3 orders events by exact time, so a pitched event can follow a
        # drum, with its program token or (program and velocity unchanged) its bare pitch.
        DRUM: {PROGRAM, VELOCITY, PITCH, DRUM, SHIFT, EOS},
        EOS: {PAD},
    }
    if config.include_ties:
        follow[PAD] = {PROGRAM, PITCH, TIE}
    else:
        follow[PAD] = {SHIFT, PROGRAM, VELOCITY, EOS}
    regular = {SHIFT, PITCH, VELOCITY, TIE, PROGRAM, DRUM, EOS}
    follow[UNK] = regular
    follow[EXTRA] = regular
    table = np.zeros((len(TOKEN_TYPES), config.num_embeddings), bool)
    for prev_type, allowed in follow.items():
        if not config.include_ties:
            allowed = allowed - {TIE}
        if not config.uses_program_tokens:
            allowed = allowed - {PROGRAM}
        table[prev_type] = np.isin(id_types, sorted(allowed))
    return table


def next_token_mask(prev_ids, config: VocabularyConfig, last_shift=None, max_shift=None):
    """bool [..., num_embeddings]: ids grammatical after ``prev_ids`` ([...] int).

    Args:
      last_shift: [...] int, the last shift value emitted in the current segment (0 if
        none); a new shift must be larger (shifts are absolute and strictly increase).
      max_shift: optional int cap, e.g. ``config.max_segment_shift_steps(segment_seconds)``.
    """
    xp = _xp(prev_ids, last_shift)
    table = xp.asarray(transition_table(config))
    mask = table[token_types(prev_ids, config)]
    if last_shift is None and max_shift is None:
        return mask
    shift_value = xp.arange(config.num_embeddings) - NUM_SPECIAL_TOKENS
    is_shift = xp.asarray(_id_type_table(config) == SHIFT)
    bad_shift = xp.zeros_like(is_shift)
    if last_shift is not None:
        bad_shift = shift_value <= xp.asarray(last_shift)[..., None]
    if max_shift is not None:
        bad_shift = bad_shift | (shift_value > max_shift)
    return mask & ~(is_shift & bad_shift)


def last_shift_values(ids, config: VocabularyConfig):
    """[..., L] ids -> [..., L] value of the latest shift at or before each position (0 if none)."""
    xp = _xp(ids)
    ids = xp.asarray(ids)
    is_shift = token_types(ids, config) == SHIFT
    values = xp.where(is_shift, ids - NUM_SPECIAL_TOKENS, 0)
    # Shifts strictly increase within a segment, so a running max is the latest one.
    if xp is np:
        return np.maximum.accumulate(values, axis=-1)
    return jax.lax.cummax(values, axis=values.ndim - 1)
