"""The README's front-end example runs as written and gives the shapes it promises."""

import math
import pathlib
import re

import numpy as np
import pytest

from amt_jax.audio import io
from amt_jax.audio.testsignals import polyphonic_signal

# XLA's -O passes would double the run time; the shapes and finiteness do not need them.
pytestmark = pytest.mark.usefixtures("fast_compile")

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Using the front end"
FILE_RATE = 44100  # neither model's rate, so both load_audio calls resample
FILE_SECONDS = 1.5


def section_code(markdown: str, heading: str) -> str:
    """The first ```python block between ``heading`` and the next ``## `` heading."""
    start = markdown.index(heading + "\n")
    end = markdown.find("\n## ", start + len(heading))
    section = markdown[start : end if end >= 0 else None]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    if not blocks:
        raise AssertionError(f"no python block under {heading!r} in {README}")
    return blocks[0]


def with_audio_path(code: str, path: pathlib.Path) -> str:
    """Point every audio file name in the snippet at ``path`` (there must be exactly one)."""
    names = set(re.findall(r"\"([^\"]+\.(?:flac|wav|mp3|ogg))\"", code))
    assert len(names) == 1, f"expected one audio file name in the snippet, found {names}"
    return code.replace(f'"{names.pop()}"', repr(str(path)))


def test_section_code_finds_only_its_own_block():
    markdown = "## A\n```python\na = 1\n```\n## B\n```python\nb = 2\n```\n"
    assert section_code(markdown, "## A") == "a = 1\n"
    assert section_code(markdown, "## B") == "b = 2\n"
    with pytest.raises(AssertionError):
        section_code("## A\ntext only\n## B\n```python\nb = 2\n```\n", "## A")


def test_front_end_snippet_runs_and_gives_the_documented_shapes(tmp_path):
    audio_s, _ = polyphonic_signal(FILE_SECONDS, FILE_RATE, seed=3)
    path = tmp_path / "short.wav"
    io.write_audio(path, audio_s, FILE_RATE)
    code = with_audio_path(section_code(README.read_text(), SECTION), path)

    namespace: dict = {}
    exec(compile(code, f"{README}:{SECTION}", "exec"), namespace)

    samples_22k = round(FILE_SECONDS * 22050)
    samples_16k = round(FILE_SECONDS * 16000)
    frames = 1 + samples_22k // 256  # centred CQT frames at Basic Pitch's hop
    assert namespace["audio22k_s"].shape == (samples_22k,)
    assert namespace["audio16k_s"].shape == (samples_16k,)
    assert namespace["cqt_btf"].shape == (1, frames, 309)
    assert namespace["stack_btfc"].shape == (1, frames, 264, 8)
    assert namespace["bp_stack_btfc"].shape == (1, frames, 264, 8)
    # MT3's tf.signal framing (pad_end): one frame per started hop
    assert namespace["logmel_btf"].shape == (1, math.ceil(samples_16k / 128), 512)
    for name in ("cqt_btf", "stack_btfc", "bp_stack_btfc", "logmel_btf"):
        values = np.asarray(namespace[name])
        assert np.all(np.isfinite(values)), name
        assert np.ptp(values) > 0, f"{name} is constant: the audio did not reach it"
